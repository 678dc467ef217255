"""GradCache: the full-batch contrastive step in two passes, so batch 2048 fits a smaller GPU.

The MAKE loss couples every image with every text of the batch, so it cannot be split into independent
micro-batches. But it depends on the parameters only through the embeddings, which are cheap to keep
(B×D + B×P×D + E×D floats) while the towers' activations are not. GradCache (Gao et al., 2021) therefore runs:

1. **Pass 1 (no activations kept).** Encode the images and the texts in ``k`` micro-batches, forward only
   (`jax.lax.map`; nothing is differentiated, so nothing is stored), giving the full-batch embeddings as the
   loss's own pytree, `LossInputs` — the cache. Compute the full-batch loss and its gradient with respect to the
   cache's float fields only (image (B, D), patches (B, P, D), text rows (M, D), logit_scale), and pull it back
   through `forward.loss_inputs` to the towers' outputs (the text rows' gather becomes a scatter-add onto the E
   encoded texts). This part is small.
2. **Pass 2 (one micro-batch of activations at a time).** For each micro-batch, re-encode it under `jax.vjp`
   and pull the cached embedding gradient back to the tower's parameters; accumulate over micro-batches in a
   `jax.lax.scan`. By the chain rule the sum is exactly dL/dθ of the one-pass step (float32 summation order
   aside), at the cost of one extra forward of both towers (≈ 4/3 of the one-pass FLOPs).

Images and texts are split independently (the towers do not interact before the loss): image chunks of B/k,
text chunks of E/k rows, for dense batches (E = B·n, official mode included) and packed batches
(`make_jax.train.packing`) alike; a packed batch's length groups are each split into k chunks. B and every
group size must be multiples of k (pack with ``PackConfig(multiple_of=k × devices)``).

Peak memory ≈ parameters + optimizer state + the full-batch embeddings and their gradients + the activations of
ONE micro-batch of each tower (with ``remat``, one block's). The step has the signature of
`train.step.make_train_step`'s step_fn and the same metrics.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import optax

from make_jax.losses import LossConfig, LossInputs, make_loss
from make_jax.train.forward import concat_rows, loss_inputs, normalize_images, text_rows
from make_jax.train.step import ModelFunctions, TrainState, apply_gradients, make_train_step

_PARAM_GROUPS = ("logit_scale", "text", "visual")


def _chunks(x: jax.Array, k: int, what: str) -> jax.Array:
    if x.shape[0] % k:
        raise ValueError(f"{what}: {x.shape[0]} rows are not a multiple of microbatches={k}")
    return x.reshape((k, x.shape[0] // k) + x.shape[1:])


def _unchunk(x: jax.Array) -> jax.Array:
    return x.reshape((x.shape[0] * x.shape[1],) + x.shape[2:])


def _is_float(x) -> bool:
    return x is not None and jnp.issubdtype(x.dtype, jnp.inexact)


def float_fields(inputs: LossInputs) -> LossInputs:
    """The differentiable fields of a LossInputs (the others, the row layout, set to None)."""
    return LossInputs(*(x if _is_float(x) else None for x in inputs))


def cached_loss_and_grads(cached: LossInputs, loss_config: LossConfig):
    """((loss, terms), gradient) of the loss at the cached `LossInputs`, with respect to every float field (a
    LossInputs whose integer and boolean fields are None)."""

    def loss_of(floats: LossInputs):
        return make_loss(LossInputs(*(f if _is_float(c) else c for f, c in zip(floats, cached))), loss_config)

    return jax.value_and_grad(loss_of, has_aux=True)(float_fields(cached))


def gradcache_loss_and_grads(fns: ModelFunctions, params: dict, batch: dict, loss_config: LossConfig,
                             microbatches: int):
    """((loss, terms), grads) of the one-pass `value_and_grad`, computed in two passes over ``microbatches``."""
    if tuple(sorted(params)) != _PARAM_GROUPS:
        raise ValueError(f"GradCache expects parameter groups {_PARAM_GROUPS}, got {tuple(sorted(params))}")
    k = int(microbatches)
    if k < 1:
        raise ValueError(f"microbatches must be >= 1, got {k}")
    rows = text_rows(batch, loss_config)
    images = _chunks(batch["images"], k, "images")
    texts = [_chunks(ids, k, f"text group {g}") for g, ids in enumerate(rows.groups)]

    def encode_images(visual, x):
        return fns.merge(dict(params, visual=visual)).encode_image_and_patches(normalize_images(x))

    def encode_texts(text, t):
        return fns.merge(dict(params, text=text)).encode_text(t)

    def unchunk(tree):
        return jax.tree.map(_unchunk, tree)

    # Pass 1: forward only, micro-batch by micro-batch, into the loss's pytree (the cache).
    image_out = unchunk(jax.lax.map(lambda x: encode_images(params["visual"], x), images))
    encoded = [unchunk(jax.lax.map(lambda t: encode_texts(params["text"], t), chunks)) for chunks in texts]
    sizes = [jax.tree.leaves(t)[0].shape[0] for t in encoded]
    encoded = concat_rows(encoded)
    _, pull_cache = jax.vjp(lambda io, e, ls: float_fields(loss_inputs(io, e, ls, rows)),
                                 image_out, encoded, params["logit_scale"])
    cached = loss_inputs(image_out, encoded, params["logit_scale"], rows)
    (loss, terms), g_cache = cached_loss_and_grads(cached, loss_config)
    # back through the towers' outputs → loss fields map (the rows' gather becomes a scatter-add)
    g_image, g_encoded, g_scale = pull_cache(g_cache)

    # Pass 2: re-encode each micro-batch under vjp and accumulate the parameter gradients.
    def image_body(acc, xs):
        x, g_out = xs
        _, pull = jax.vjp(lambda v: encode_images(v, x), params["visual"])
        (gv,) = pull(g_out)
        return jax.tree.map(jnp.add, acc, gv), None

    def text_body(acc, xs):
        t, gt = xs
        _, pull = jax.vjp(lambda p: encode_texts(p, t), params["text"])
        (gp,) = pull(gt)
        return jax.tree.map(jnp.add, acc, gp), None

    g_image = jax.tree.map(lambda g: _chunks(g, k, "image grads"), g_image)
    g_visual, _ = jax.lax.scan(image_body, jax.tree.map(jnp.zeros_like, params["visual"]), (images, g_image))
    g_textp = jax.tree.map(jnp.zeros_like, params["text"])
    offsets = [0]
    for size in sizes:
        offsets.append(offsets[-1] + size)
    for i, chunks in enumerate(texts):  # one scan per length group (each at its own context length)
        g_group = jax.tree.map(lambda g: _chunks(g[offsets[i]:offsets[i + 1]], k, "text grads"), g_encoded)
        g_textp, _ = jax.lax.scan(text_body, g_textp, (chunks, g_group))
    grads = {"logit_scale": g_scale.astype(params["logit_scale"].dtype), "text": g_textp, "visual": g_visual}
    return (loss, terms), grads


def make_gradcache_train_step(fns: ModelFunctions, optimizer: optax.GradientTransformation,
                              loss_config: LossConfig, schedule: Callable | None = None, microbatches: int = 1):
    """The two-pass step: same signature, update and metrics as `train.step.make_train_step`'s step_fn, for dense
    or packed batches. Jit it with `train.step.jit_train_step`."""

    def step_fn(state: TrainState, batch: dict) -> tuple[TrainState, dict]:
        (_, terms), grads = gradcache_loss_and_grads(fns, state.params, batch, loss_config, microbatches)
        return apply_gradients(state, grads, terms, optimizer, schedule)

    return step_fn


def select_train_step(fns: ModelFunctions, optimizer: optax.GradientTransformation, loss_config: LossConfig,
                      schedule: Callable | None = None, microbatches: int = 1):
    """The config switch: ``microbatches`` ≤ 1 → the one-pass step (dense or packed batches); > 1 → GradCache."""
    if microbatches and microbatches > 1:
        return make_gradcache_train_step(fns, optimizer, loss_config, schedule, microbatches)
    return make_train_step(fns, optimizer, loss_config, schedule)


__all__ = ["cached_loss_and_grads", "float_fields", "gradcache_loss_and_grads", "make_gradcache_train_step", "select_train_step"]
