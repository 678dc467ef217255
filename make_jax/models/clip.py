"""The two-tower CLIP model that MAKE trains: image tower, text tower and the learned `logit_scale`."""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from make_jax.models.config import ModelConfig
from make_jax.models.keys import ParamKeys
from make_jax.models.towers import VisionTower, l2_normalize, text_tower_class

LOGIT_SCALE_MAX = math.log(100.0)


class ImageOutputs(NamedTuple):
    """L2-normalised float32 image embeddings: pooled (B, E) and per-patch (B, P, E)."""

    embedding: jax.Array
    patches: jax.Array


class CLIP(nnx.Module):
    """`visual`, `text` and `logit_scale` (the log of s; logits are exp(logit_scale)·cosine), plus `logit_bias`
    when the config has an `init_logit_bias` (SigLIP: logits are exp(logit_scale)·cosine + logit_bias).

    Every `encode_*` returns L2-normalised float32 embeddings.
    """

    def __init__(self, cfg: ModelConfig, *, rngs: ParamKeys):
        self.config = cfg
        self.visual = VisionTower(cfg, rngs)
        self.text = text_tower_class(cfg.text)(cfg, rngs)
        self.logit_scale = nnx.Param(jnp.asarray(cfg.init_logit_scale, jnp.float32))
        if cfg.init_logit_bias is not None:
            self.logit_bias = nnx.Param(jnp.asarray(cfg.init_logit_bias, jnp.float32))

    def encode_image_and_patches(self, images: jax.Array) -> ImageOutputs:
        """images (B, H, W, 3) → ImageOutputs(embedding (B, E), patches (B, P, E))."""
        pooled, patches = self.visual(images)
        return ImageOutputs(l2_normalize(pooled), l2_normalize(patches))

    def encode_image(self, images: jax.Array) -> jax.Array:
        """images (B, H, W, 3) → (B, E)."""
        pooled, _ = self.visual(images)
        return l2_normalize(pooled)

    def encode_text(self, ids: jax.Array, lengths: jax.Array | None = None) -> jax.Array:
        """ids (M, L), lengths (M,) non-pad tokens (None: the text tower reads them off its tokenizer's ids)
        → (M, E)."""
        return l2_normalize(self.text(ids, lengths))

    def __call__(self, images: jax.Array, ids: jax.Array) -> tuple[ImageOutputs, jax.Array]:
        return self.encode_image_and_patches(images), self.encode_text(ids)


def create_model(cfg: ModelConfig, seed: int = 0) -> CLIP:
    """A freshly initialised model (open_clip's initialisation scheme)."""
    return CLIP(cfg, rngs=ParamKeys(seed))


def abstract_model(cfg: ModelConfig) -> CLIP:
    """The model's structure with shape-only leaves (no memory, no compute): the target for checkpoint restore."""
    return nnx.eval_shape(lambda: create_model(cfg))


def count_params(model: nnx.Module) -> int:
    state = nnx.state(model, nnx.Param)
    return sum(x.size for x in jax.tree.leaves(state))
