"""GradCache: the full-batch contrastive step in two passes, so batch 2048 fits a smaller GPU.

The MAKE loss couples every image with every text of the batch, so it cannot be split into independent
micro-batches. But it depends on the parameters only through the embeddings, which are cheap to keep
(B×D + B×P×D + E×D floats) while the towers' activations are not. GradCache (Gao et al., 2021) therefore runs:

1. **Pass 1 (no activations kept).** Encode the images and the texts in ``k`` micro-batches, forward only
   (`jax.lax.map`; nothing is differentiated, so nothing is stored), giving the full-batch embeddings. Compute
   the full-batch loss and its gradient with respect to the embeddings only: image_emb (B, D), patch_emb
   (B, P, D), the encoded texts (E, D) and logit_scale. This part is small.
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

from make_jax.losses import LossConfig
from make_jax.train.packing import apply_gradients, loss_from_embeddings, make_packed_train_step, text_layout
from make_jax.train.step import ModelFunctions, TrainState, normalize_images

_PARAM_GROUPS = ("logit_scale", "text", "visual")


def _chunks(x: jax.Array, k: int, what: str) -> jax.Array:
    if x.shape[0] % k:
        raise ValueError(f"{what}: {x.shape[0]} rows are not a multiple of microbatches={k}")
    return x.reshape((k, x.shape[0] // k) + x.shape[1:])


def _unchunk(x: jax.Array) -> jax.Array:
    return x.reshape((x.shape[0] * x.shape[1],) + x.shape[2:])


def gradcache_loss_and_grads(fns: ModelFunctions, params: dict, batch: dict, loss_config: LossConfig,
                             microbatches: int):
    """((loss, terms), grads) of the one-pass `value_and_grad`, computed in two passes over ``microbatches``."""
    if tuple(sorted(params)) != _PARAM_GROUPS:
        raise ValueError(f"GradCache expects parameter groups {_PARAM_GROUPS}, got {tuple(sorted(params))}")
    k = int(microbatches)
    if k < 1:
        raise ValueError(f"microbatches must be >= 1, got {k}")
    groups = text_layout(batch, loss_config)[0]
    images = _chunks(batch["images"], k, "images")
    texts = [_chunks(ids, k, f"text group {g}") for g, ids in enumerate(groups)]

    def encode_images(visual, x):
        out = fns.merge(dict(params, visual=visual)).encode_image_and_patches(normalize_images(x))
        return out.embedding, out.patches

    def encode_texts(text, t):
        return fns.merge(dict(params, text=text)).encode_text(t)

    # Pass 1: forward only, micro-batch by micro-batch.
    image_emb, patch_emb = jax.lax.map(lambda x: encode_images(params["visual"], x), images)
    text_emb = [_unchunk(jax.lax.map(lambda t: encode_texts(params["text"], t), chunks)) for chunks in texts]
    sizes = [t.shape[0] for t in text_emb]
    text_emb = text_emb[0] if len(text_emb) == 1 else jnp.concatenate(text_emb, axis=0)
    image_emb, patch_emb = _unchunk(image_emb), _unchunk(patch_emb)

    def loss_of_embeddings(ie, pe, te, ls):
        return loss_from_embeddings(ie, pe, te, ls, batch, loss_config)

    (loss, terms), (g_img, g_patch, g_text, g_scale) = jax.value_and_grad(
        loss_of_embeddings, argnums=(0, 1, 2, 3), has_aux=True)(image_emb, patch_emb, text_emb,
                                                              params["logit_scale"])

    # Pass 2: re-encode each micro-batch under vjp and accumulate the parameter gradients.
    def image_body(acc, xs):
        x, gi, gp = xs
        _, pull = jax.vjp(lambda v: encode_images(v, x), params["visual"])
        (g,) = pull((gi, gp))
        return jax.tree.map(jnp.add, acc, g), None

    def text_body(acc, xs):
        t, gt = xs
        _, pull = jax.vjp(lambda p: encode_texts(p, t), params["text"])
        (g,) = pull(gt)
        return jax.tree.map(jnp.add, acc, g), None

    g_visual, _ = jax.lax.scan(image_body, jax.tree.map(jnp.zeros_like, params["visual"]),
                               (images, _chunks(g_img, k, "image grads"), _chunks(g_patch, k, "patch grads")))
    g_textp = jax.tree.map(jnp.zeros_like, params["text"])
    offsets = [0]
    for size in sizes:
        offsets.append(offsets[-1] + size)
    for g, chunks in enumerate(texts):  # one scan per length group (each at its own context length)
        g_group = _chunks(g_text[offsets[g]:offsets[g + 1]], k, "text grads")
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
    return make_packed_train_step(fns, optimizer, loss_config, schedule)


__all__ = ["gradcache_loss_and_grads", "make_gradcache_train_step", "select_train_step"]
