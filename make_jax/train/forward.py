"""The one forward of training: a batch in the flat-row layout → `LossInputs` (the loss's pytree).

Every train step goes through here: the one-pass step (`train.step`) differentiates `forward` directly, and
GradCache (`train.gradcache`) encodes in micro-batches and calls `loss_inputs` on the cached embeddings.

Flat-row layout (what `forward` reads; `train.packing` writes the packed form on the host):
  images     (B, H, W, 3)  float32 normalised, or uint8 (normalised here: 4× less host→device traffic)
  texts to encode: one or more groups of ids (E_g, L_g), each at its own context length, concatenated in order
  loss rows: row_text (M,) index of each row's encoding (absent: row r is encoding r), row_owner, row_slot,
             row_valid (M,)
A dense batch (``text_ids`` (B, N, L), ``text_valid`` (B, N)) is the trivial layout: one group of the B·n
leading slots the loss can use, row r = i·n + s, owner = r // n, slot = r % n.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from make_jax.losses import LossConfig, LossInputs
from make_jax.models import CLIP
from make_jax.models.clip import ImageOutputs
from make_jax.preprocess import normalize_uint8
from make_jax.train.packing import is_packed, text_groups


class TextRows(NamedTuple):
    """The texts to encode and the loss rows of one batch (shapes in the module docstring)."""

    groups: tuple  # of ids arrays (E_g, L_g)
    row_text: jax.Array | None  # None: row r is encoding r
    owner: jax.Array
    slot: jax.Array
    valid: jax.Array


def normalize_images(images: jax.Array, dtype=jnp.float32) -> jax.Array:
    """uint8 (B, H, W, 3) → CLIP-normalised float; float input is taken as already normalised."""
    if images.dtype == jnp.uint8:
        return normalize_uint8(images).astype(dtype)
    return images


def text_rows(batch: dict, loss_config: LossConfig) -> TextRows:
    """The flat rows of a packed batch, or of a dense batch read as the trivial layout."""
    if is_packed(batch):
        groups = tuple(batch[f"text_ids_{g}"] for g in range(text_groups(batch)))
        return TextRows(groups, batch["row_text"], batch["row_owner"], batch["row_slot"], batch["row_valid"])
    n_used = loss_config.slots_used(batch["text_ids"].shape[1])
    ids = batch["text_ids"][:, :n_used]
    b, n, length = ids.shape
    rows = jnp.arange(b * n, dtype=jnp.int32)
    valid = batch["text_valid"][:, :n_used].reshape(b * n)
    return TextRows((ids.reshape(b * n, length),), None, rows // n, rows % n, valid)


def encode_text_groups(model: CLIP, groups) -> jax.Array:
    """Each group at its own context length, concatenated: (Σ E_g, D)."""
    return concat_rows([model.encode_text(ids) for ids in groups])


def concat_rows(parts: list):
    """Concatenates per-group encodings (arrays, or pytrees of arrays) along their first axis."""
    return parts[0] if len(parts) == 1 else jax.tree.map(lambda *xs: jnp.concatenate(xs, axis=0), *parts)


def gather_rows(encoded, row_text):
    """Embeddings of the loss rows from the encoded texts (a gather; its gradient is the scatter-add, so a text
    encoded once for several rows receives the sum of their gradients)."""
    return encoded if row_text is None else jax.tree.map(lambda e: jnp.take(e, row_text, axis=0), encoded)


def loss_inputs(image_out: ImageOutputs, encoded_text, logit_scale, rows: TextRows,
                logit_bias=None) -> LossInputs:
    """The loss's pytree from the model's outputs: image_out (embedding (B, D), patches (B, P, D)), the encoded
    texts (E, D), logit_scale and (SigLIP models) logit_bias. The only place that maps model outputs to loss
    fields (GradCache pulls its cached gradient back through this function)."""
    return LossInputs(image_out.embedding, image_out.patches, gather_rows(encoded_text, rows.row_text), rows.owner,
                      rows.slot, rows.valid, logit_scale, logit_bias)


def forward(model: CLIP, batch: dict, loss_config: LossConfig) -> LossInputs:
    """Encodes a dense or packed batch: the `LossInputs` of `make_jax.losses.make_loss`."""
    rows = text_rows(batch, loss_config)
    image_out = model.encode_image_and_patches(normalize_images(batch["images"]))
    logit_bias = model.logit_bias[...] if hasattr(model, "logit_bias") else None  # SigLIP models only
    return loss_inputs(image_out, encode_text_groups(model, rows.groups), model.logit_scale[...], rows, logit_bias)


__all__ = ["TextRows", "concat_rows", "encode_text_groups", "forward", "gather_rows", "loss_inputs", "normalize_images",
           "text_rows"]
