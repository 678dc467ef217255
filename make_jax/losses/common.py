"""Masked, NaN-safe numerical helpers shared by the paper and official losses.

Rule used throughout: mask BEFORE arithmetic. A masked-out value is replaced with a harmless constant
by ``jnp.where`` before it enters exp/log/division, and results are selected with ``jnp.where`` again,
so neither the value nor the gradient (whose VJP through ``where`` is a select, not a product) can
carry an inf or NaN from a masked position.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def compute_dtype(*arrays) -> jnp.dtype:
    """float32, or wider when an input is wider (float64 under jax x64); bfloat16/float16 -> float32."""
    dts = [jnp.asarray(a).dtype for a in arrays if a is not None]
    return jnp.result_type(jnp.float32, *dts)


def masked_logsumexp(x: jax.Array, mask: jax.Array, axis: int) -> jax.Array:
    """log sum_{mask} exp(x) along ``axis``; 0 (not -inf) where the mask is empty. mask broadcasts to x."""
    mask = jnp.broadcast_to(mask, x.shape)
    m = jnp.max(jnp.where(mask, x, -jnp.inf), axis=axis, keepdims=True)
    m = jax.lax.stop_gradient(jnp.where(jnp.isfinite(m), m, 0.0))
    e = jnp.where(mask, jnp.exp(jnp.where(mask, x, m) - m), 0.0)
    total = jnp.sum(e, axis=axis)
    has = jnp.any(mask, axis=axis)
    return jnp.where(has, jnp.log(jnp.where(has, total, 1.0)) + jnp.squeeze(m, axis), 0.0)


def safe_divide(num: jax.Array, den: jax.Array, ok: jax.Array | None = None) -> jax.Array:
    """num / den where ok (default den > 0), else 0; no inf/NaN in value or gradient."""
    if ok is None:
        ok = den > 0
    return jnp.where(ok, num / jnp.where(ok, den, 1.0), 0.0)


def masked_weighted_mean(values: jax.Array, weights: jax.Array, mask: jax.Array) -> jax.Array:
    """sum_{mask} w * l / sum_{mask} w (PyTorch cross_entropy(weight=...) reduction); 0 when empty."""
    v = jnp.where(mask, values, 0.0)
    w = jnp.where(mask, weights, 0.0)
    return safe_divide(jnp.sum(w * v), jnp.sum(w))


def masked_mean_std(values: jax.Array, mask: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Mean and (population) standard deviation of ``values`` over ``mask``; (0, 0) when empty."""
    n = jnp.sum(mask.astype(values.dtype))
    v = jnp.where(mask, values, 0.0)
    mean = safe_divide(jnp.sum(v), n)
    d = jnp.where(mask, v - mean, 0.0)
    var = safe_divide(jnp.sum(d * d), n)
    return mean, jnp.sqrt(var)


def safe_l2_normalize(x: jax.Array, ok: jax.Array | None = None) -> jax.Array:
    """x / ||x|| along the last axis; rows that are zero (or not ``ok``) become 0 with a 0 gradient."""
    sq = jnp.sum(x * x, axis=-1, keepdims=True)
    good = sq > 0
    if ok is not None:
        good = good & ok[..., None]
    return jnp.where(good, x / jnp.sqrt(jnp.where(good, sq, 1.0)), 0.0)


def row_of_slot(row_mask: jax.Array, owner: jax.Array, num_images: int) -> jax.Array:
    """For each image, the index of its row where ``row_mask`` holds (the highest such index if
    several), or -1 if none. ``owner`` must be in [0, num_images) wherever row_mask holds."""
    m = row_mask.shape[0]
    idx = jnp.where(row_mask, jnp.arange(m, dtype=jnp.int32), -1)
    seg = jax.ops.segment_max(idx, jnp.where(row_mask, owner, 0), num_segments=num_images)
    return jnp.maximum(seg, -1)  # empty segments give INT_MIN
