"""A BERT text tower (BiomedBERT / PubMedBERT layout, as Hugging Face `BertModel`), pooled at [CLS].

Layout and maths of `transformers.BertModel` (post-LN encoder):

    x = LayerNorm(word_embeddings[ids] + position_embeddings[0..L-1] + token_type_embeddings[0])
    per layer:  a = LayerNorm(x + attention(x) @ W_o + b_o)       (bidirectional; keys past `lengths` masked)
                x = LayerNorm(a + gelu(a @ W_i + b_i) @ W_out + b_out)
    pooled = x[:, 0] @ projection                                  ([CLS] hidden state, linear projection)

BertModel's own `pooler` (dense + tanh) is not used, as in open_clip's HF text towers with the
``cls_last_hidden_state_pooler``. The projection to the joint space has no bias (open_clip's ``linear``
projection). Padding is masked out of attention through the lengths, so no key past a text's [SEP] is read; a
padded query position still computes (its output is never pooled).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from make_jax.models.config import ModelConfig
from make_jax.models.keys import ParamKeys
from make_jax.models.transformer import Dense, LayerNorm, ScannedBlocks, activation_fn


class BertSelfAttention(nnx.Module):
    """Separate q/k/v projections (BERT's `query`, `key`, `value`), softmax over keys < length, output dense.

    x: (B, T, D), lengths: (B,) → (B, T, D) (before the residual and LayerNorm).
    """

    def __init__(self, width: int, heads: int, *, std: float, cfg: ModelConfig, rngs: ParamKeys):
        dtype = jnp.dtype(cfg.dtype)
        self.query = Dense(width, width, init=std, rngs=rngs, dtype=dtype)
        self.key = Dense(width, width, init=std, rngs=rngs, dtype=dtype)
        self.value = Dense(width, width, init=std, rngs=rngs, dtype=dtype)
        self.output = Dense(width, width, init=std, rngs=rngs, dtype=dtype)
        self.heads = heads
        self.implementation = None if cfg.attention == "auto" else cfg.attention

    def __call__(self, x: jax.Array, lengths: jax.Array) -> jax.Array:
        b, t, d = x.shape
        split = lambda y: y.reshape(b, t, self.heads, d // self.heads)  # noqa: E731
        out = jax.nn.dot_product_attention(split(self.query(x)), split(self.key(x)), split(self.value(x)),
                                           key_value_seq_lengths=lengths.astype(jnp.int32),
                                           implementation=self.implementation)
        return self.output(out.reshape(b, t, d))


class BertLayer(nnx.Module):
    """One post-LN BERT layer.  x: (B, T, D), lengths (B,) → (B, T, D)."""

    def __init__(self, width: int, heads: int, hidden: int, *, eps: float, activation: str, std: float,
                 cfg: ModelConfig, rngs: ParamKeys):
        dtype = jnp.dtype(cfg.dtype)
        self.attention = BertSelfAttention(width, heads, std=std, cfg=cfg, rngs=rngs)
        self.attention_ln = LayerNorm(width, eps)
        self.intermediate = Dense(width, hidden, init=std, rngs=rngs, dtype=dtype)
        self.output = Dense(hidden, width, init=std, rngs=rngs, dtype=dtype)
        self.output_ln = LayerNorm(width, eps)
        self.act = activation_fn(activation)

    def __call__(self, x: jax.Array, lengths: jax.Array) -> jax.Array:
        a = self.attention_ln(x + self.attention(x, lengths))
        return self.output_ln(a + self.output(self.act(self.intermediate(a))))


class BertTextTower(nnx.Module):
    """BERT encoder + [CLS] pooling + linear projection.

    ids: (M, L) int, lengths: (M,) tokens up to and including [SEP]; returns un-normalised (M, E). Bidirectional
    attention reads every key below the length, so the output does not depend on what follows — but unlike the
    causal tower that rests on the mask alone, and this tower does not declare itself trailing-padding invariant
    (packing then keeps every text at the batch's full context length).
    """

    trailing_padding_invariant = False

    def __init__(self, cfg: ModelConfig, rngs: ParamKeys):
        t = cfg.text
        self.dtype = jnp.dtype(cfg.dtype)
        std = 0.02  # BertConfig.initializer_range
        eps = t.ln_eps if t.ln_eps is not None else cfg.ln_eps
        activation = t.activation or cfg.activation
        normal = lambda shape: std * jax.random.normal(rngs.params(), shape, jnp.float32)  # noqa: E731
        self.word_embeddings = nnx.Param(normal((t.vocab_size, t.width)))
        self.position_embeddings = nnx.Param(normal((t.context_length, t.width)))
        self.token_type_embedding = nnx.Param(normal((t.width,)))  # type 0: every text is a single segment
        self.embeddings_ln = LayerNorm(t.width, eps)
        self.encoder = ScannedBlocks(
            lambda: BertLayer(t.width, t.heads, t.mlp_width, eps=eps, activation=activation, std=std, cfg=cfg,
                              rngs=rngs), t.layers, remat=cfg.remat_tower("text"))
        self.text_projection = nnx.Param(t.width ** -0.5 * jax.random.normal(rngs.params(), (t.width, cfg.embed_dim),
                                                                               jnp.float32))
        self.context_length = t.context_length
        self.pad_id = t.pad_id

    @staticmethod
    def token_lengths(ids, pad_id: int = 0):
        """(M, L) → (M,) int32: the non-[PAD] tokens (a WordPiece row is [CLS] body [SEP] then [PAD] only; no
        piece has the pad id). Works on numpy and jax arrays alike."""
        return (ids != pad_id).sum(axis=-1).astype(np.int32)

    def hidden_states(self, ids: jax.Array, lengths: jax.Array | None = None) -> jax.Array:
        """The encoder's last hidden states (M, L, W) (BertModel's ``last_hidden_state``)."""
        m, length = ids.shape
        if length > self.context_length:
            raise ValueError(f"token ids have length {length} > context_length {self.context_length}")
        lengths = self.token_lengths(ids, self.pad_id) if lengths is None else lengths
        x = jnp.take(self.word_embeddings[...], ids, axis=0)
        x = x + self.position_embeddings[:length] + self.token_type_embedding[...]
        x = self.embeddings_ln(x.astype(self.dtype))
        return self.encoder(x, lengths)

    def __call__(self, ids: jax.Array, lengths: jax.Array | None = None) -> jax.Array:
        cls = self.hidden_states(ids, lengths)[:, 0]
        return cls @ self.text_projection[...].astype(self.dtype)


__all__ = ["BertLayer", "BertSelfAttention", "BertTextTower"]
