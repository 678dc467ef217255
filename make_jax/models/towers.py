"""The image tower (ViT) and the CLIP text tower (causal transformer), as open_clip builds them; the text-tower
choice (`text_tower_class`: this causal one, or the BERT tower of models/bert.py)."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from make_jax.models.bert import BertTextTower
from make_jax.models.config import ModelConfig, TextConfig
from make_jax.models.keys import ParamKeys
from make_jax.models.transformer import LayerNorm, Transformer


def l2_normalize(x: jax.Array, axis: int = -1, eps: float = 1e-12) -> jax.Array:
    """x / max(‖x‖, eps) in float32 (torch.nn.functional.normalize's convention)."""
    x = x.astype(jnp.float32)
    norm = jnp.sqrt(jnp.sum(jnp.square(x), axis=axis, keepdims=True))
    return x / jnp.maximum(norm, eps)


class VisionTower(nnx.Module):
    """ViT: conv patchify (no bias) → [CLS; patches] + positions → ln_pre → blocks → ln_post → proj.

    images: (B, H, W, 3) float, already normalised with the CLIP mean/std.
    Returns un-normalised (pooled (B, E), patches (B, P, E)) — every patch token goes through the same ln_post and
    proj as CLS (MAKE's patch embeddings).
    """

    def __init__(self, cfg: ModelConfig, rngs: ParamKeys):
        v = cfg.vision
        self.dtype = jnp.dtype(cfg.dtype)
        scale = v.width ** -0.5
        # Conv2d(3, width, patch, stride=patch, bias=False): torch's default kaiming-uniform(a=√5) = U(±1/√fan_in).
        fan_in = 3 * v.patch_size * v.patch_size
        bound = 1.0 / math.sqrt(fan_in)
        self.conv1 = nnx.Param(jax.random.uniform(rngs.params(), (v.patch_size, v.patch_size, 3, v.width),
                                                  jnp.float32, -bound, bound))  # HWIO
        self.class_embedding = nnx.Param(scale * jax.random.normal(rngs.params(), (v.width,), jnp.float32))
        self.positional_embedding = nnx.Param(
            scale * jax.random.normal(rngs.params(), (v.num_patches + 1, v.width), jnp.float32))
        self.ln_pre = LayerNorm(v.width, cfg.ln_eps)
        self.transformer = Transformer(v.width, v.layers, v.heads, v.mlp_width, causal=False, init_stds={},
                                       cfg=cfg, rngs=rngs, remat=cfg.remat_tower("vision"))
        self.ln_post = LayerNorm(v.width, cfg.ln_eps)
        self.proj = nnx.Param(scale * jax.random.normal(rngs.params(), (v.width, cfg.embed_dim), jnp.float32))
        self.patch_size = v.patch_size

    def __call__(self, images: jax.Array) -> tuple[jax.Array, jax.Array]:
        p = self.patch_size
        x = jax.lax.conv_general_dilated(
            images.astype(self.dtype), self.conv1[...].astype(self.dtype), window_strides=(p, p), padding="VALID",
            dimension_numbers=("NHWC", "HWIO", "NHWC"))
        b, gh, gw, w = x.shape
        x = x.reshape(b, gh * gw, w)  # row-major over the grid, as torch's flatten(2) of (B, W, gh, gw)
        cls = jnp.broadcast_to(self.class_embedding[...].astype(self.dtype), (b, 1, w))
        x = jnp.concatenate([cls, x], axis=1) + self.positional_embedding[...].astype(self.dtype)
        x = self.ln_pre(x)
        x = self.transformer(x)
        x = self.ln_post(x)
        tokens = x @ self.proj[...].astype(self.dtype)  # (B, 1 + P, E)
        return tokens[:, 0], tokens[:, 1:]


class TextTower(nnx.Module):
    """Causal transformer: token embedding + positions → blocks → ln_final → end-of-text token @ projection.

    ids: (M, L) int with L ≤ context_length, lengths: (M,) tokens up to and including the end-of-text token;
    returns un-normalised (M, E), read at position lengths - 1. Since attention is causal and pooling reads the
    end-of-text position, trailing padding never changes the result: texts may run at any L that holds them.
    """

    trailing_padding_invariant = True

    def __init__(self, cfg: ModelConfig, rngs: ParamKeys):
        t = cfg.text
        self.dtype = jnp.dtype(cfg.dtype)
        # open_clip TextTransformer.init_parameters.
        self.token_embedding = nnx.Param(0.02 * jax.random.normal(rngs.params(), (t.vocab_size, t.width),
                                                                  jnp.float32))
        self.positional_embedding = nnx.Param(0.01 * jax.random.normal(rngs.params(), (t.context_length, t.width),
                                                                       jnp.float32))
        proj_std = (t.width ** -0.5) * ((2 * t.layers) ** -0.5)
        attn_std = t.width ** -0.5
        fc_std = (2 * t.width) ** -0.5
        init_stds = {"in_proj": attn_std, "out_proj": proj_std, "c_fc": fc_std, "c_proj": proj_std}
        self.transformer = Transformer(t.width, t.layers, t.heads, t.mlp_width, causal=True, init_stds=init_stds,
                                       cfg=cfg, rngs=rngs, remat=cfg.remat_tower("text"))
        self.ln_final = LayerNorm(t.width, cfg.ln_eps)
        self.text_projection = nnx.Param(attn_std * jax.random.normal(rngs.params(), (t.width, cfg.embed_dim),
                                                                      jnp.float32))
        self.context_length = t.context_length
        self.pad_id = t.pad_id

    @staticmethod
    def token_lengths(ids, pad_id: int = 0):
        """(M, L) → (M,) int32: tokens up to and including the end-of-text token, for ids of the CLIP tokenizer
        (whose EOT, 49407, is the largest id of every row; padding is 0, which is also the id of "!", so the
        pad id cannot tell). Works on numpy arrays (host-side packing) and jax arrays alike."""
        return (ids.argmax(axis=-1) + 1).astype(np.int32)

    def __call__(self, ids: jax.Array, lengths: jax.Array | None = None) -> jax.Array:
        m, length = ids.shape
        if length > self.context_length:
            raise ValueError(f"token ids have length {length} > context_length {self.context_length}")
        lengths = self.token_lengths(ids, self.pad_id) if lengths is None else lengths
        x = jnp.take(self.token_embedding[...], ids, axis=0).astype(self.dtype)
        x = x + self.positional_embedding[:length].astype(self.dtype)
        x = self.transformer(x)
        x = self.ln_final(x)
        eot = jnp.clip(lengths - 1, 0, length - 1)
        pooled = jnp.take_along_axis(x, eot[:, None, None], axis=1)[:, 0]
        return pooled @ self.text_projection[...].astype(self.dtype)


def text_tower_class(text: TextConfig):
    """The text tower class `text.tower` names: "clip" (this module's causal tower) or "bert".

    What the rest of the code may ask of it without building one: ``trailing_padding_invariant`` (whether its
    output ignores everything after a text's last token, so packing may cut texts to shorter context buckets)
    and ``token_lengths(ids, pad_id)`` (the non-padding tokens of each row of its tokenizer's ids, numpy or jax).
    """
    return BertTextTower if text.tower == "bert" else TextTower
