"""The keys that initialise a model's parameters, one per draw."""

from __future__ import annotations

import jax


class ParamKeys:
    """`params()` gives the i-th key of a seed's sequence, fold_in(key(seed), i) for i = 0, 1, 2, ...: the keys
    `nnx.Rngs(params=seed).params()` gives, in the same order, so a model initialises to the same values.

    The count is a Python int. nnx.Rngs keeps it in a Variable, and under a trace (`abstract_model`'s eval_shape,
    a jitted initialisation) every draw then costs time that grows with the trace so far: flax 0.12.8's
    `Variable.set_value` reads the traced count's `sharding`, and the tracer's AttributeError message walks and
    prints every equation traced until then. With nnx.Rngs, `abstract_model` of ViT-B/16 took about 2.6 s on a
    2-core CPU, against 0.6 s with ParamKeys (BENCHMARKS.md, "Building a model").
    """

    def __init__(self, seed: int):
        self._key = jax.random.key(seed)
        self._count = 0

    def params(self) -> jax.Array:
        key = jax.random.fold_in(self._key, self._count)
        self._count += 1
        return key
