"""AdamW with the spec's weight-decay rules and open_clip's warm-up + cosine schedule (docs/training.md).

Weight decay is chosen by regular expressions on parameter paths ("visual/transformer/blocks/mlp/c_fc/kernel"),
big_vision style, not by tensor rank: the blocks' parameters are stacked on a layer axis, so a LayerNorm scale
is 2-D here although it is 1-D in PyTorch.
"""

from __future__ import annotations

import math
import re
from typing import Sequence

import jax
import jax.numpy as jnp
import optax

# Decayed: every matrix — linear kernels, the patch conv, both positional embeddings, the token embedding,
# and the two output projections. Not decayed: LayerNorm scale/bias, biases, class embedding, logit_scale.
DEFAULT_DECAY_RULES: tuple[str, ...] = (
    r".*/kernel$",
    r"^visual/conv1$",
    r".*positional_embedding$",
    r"^text/token_embedding$",
    r"^visual/proj$",
    r"^text/text_projection$",
)


def path_name(path: Sequence) -> str:
    """A pytree key path as "a/b/c"."""
    parts = []
    for key in path:
        for attr in ("key", "name", "idx"):
            if hasattr(key, attr):
                parts.append(str(getattr(key, attr)))
                break
        else:
            parts.append(str(key))
    if parts and parts[-1] == "value":  # an nnx.Variable's payload, when given nnx.State rather than a pure dict
        parts.pop()
    return "/".join(parts)


def decay_mask(params, rules: Sequence[str] = DEFAULT_DECAY_RULES):
    """A pytree of bools like `params`: True where a rule matches the parameter's path."""
    compiled = [re.compile(r) for r in rules]
    return jax.tree_util.tree_map_with_path(
        lambda path, _: any(r.match(path_name(path)) for r in compiled), params)


def warmup_cosine(base_lr: float, warmup_steps: int, total_steps: int):
    """open_clip's `cosine_lr`: lr·(step+1)/warmup during warm-up, then ½(1+cos(π·e/es))·lr down to 0.

    e = step − warmup, es = total − warmup. A pure function of the (integer) step, usable inside jit.
    """

    def schedule(step):
        step = jnp.asarray(step, jnp.float32)
        warm = base_lr * (step + 1.0) / max(warmup_steps, 1)
        decay_steps = max(total_steps - warmup_steps, 1)
        progress = jnp.clip((step - warmup_steps) / decay_steps, 0.0, 1.0)
        cosine = 0.5 * (1.0 + jnp.cos(math.pi * progress)) * base_lr
        return jnp.where(step < warmup_steps, warm, cosine)

    return schedule


def make_optimizer(params, *, lr: float, warmup_steps: int, total_steps: int, b1: float = 0.9, b2: float = 0.98,
                   eps: float = 1e-6, weight_decay: float = 0.1, grad_clip_norm: float | None = None,
                   decay_rules: Sequence[str] = DEFAULT_DECAY_RULES) -> tuple[optax.GradientTransformation, callable]:
    """AdamW (decoupled decay on the masked parameters) with optional global-norm clipping.

    Returns (optimizer, schedule); `params` only shapes the decay mask.
    """
    schedule = warmup_cosine(lr, warmup_steps, total_steps)
    chain = []
    if grad_clip_norm:
        chain.append(optax.clip_by_global_norm(grad_clip_norm))
    chain.append(optax.adamw(schedule, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay,
                             mask=decay_mask(params, decay_rules)))
    return optax.chain(*chain), schedule
