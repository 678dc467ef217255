"""LossInputs: the one pytree every MAKE objective reads, and that every train step builds (or caches).

The loss sees texts in the flat representation (docs/objectives.md, "flat text rows"): M text rows in any
order, each with the image that owns it, its slot and whether it is a text at all. A dense batch of B images
with N slots each is the trivial layout (row r = i·N + n, see :func:`dense_layout`); a packed batch keeps only
valid rows (`make_jax.train.packing`). A new loss term reads what it needs from here; a new model output
becomes a new field (and the one forward in `make_jax.train.forward` fills it).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np


class LossInputs(NamedTuple):
    """What the loss sees (a NamedTuple, hence a pytree: jit, vjp and tree.map treat it as a tuple).

    image:       (B, D) L2-normalised image (CLS) embeddings.
    patches:     (B, P, D) L2-normalised patch embeddings, or None when the configured loss does not use them
                 (``slra`` off, or ``positives`` other than 'all').
    text:        (M, D) L2-normalised text embeddings, one per text row.
    owner:       (M,) int, image index of each row (in [0, B) for valid rows).
    slot:        (M,) int, 0 raw, 1 disease, 2 concept, 3.. subtexts.
    valid:       (M,) bool, whether the row is a text.
    logit_scale: () the LOG scale (s = exp(logit_scale)).
    logit_bias:  () SigLIP's learnable bias b, or None for a model without one (read only by the sigmoid
                 objective).
    """

    image: jax.Array
    patches: jax.Array | None
    text: jax.Array
    owner: jax.Array
    slot: jax.Array
    valid: jax.Array
    logit_scale: jax.Array
    logit_bias: jax.Array | None = None


def dense_layout(num_images: int, num_slots: int):
    """owner and slot of the dense sample-major layout (M = B*N, row r = i*N + n), as int32 arrays."""
    r = np.arange(num_images * num_slots)
    return jnp.asarray(r // num_slots, jnp.int32), jnp.asarray(r % num_slots, jnp.int32)
