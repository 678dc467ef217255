"""The SigLIP objective (Zhai et al., "Sigmoid Loss for Language Image Pre-Training", ICCV 2023, Eq. 1).

The baselines "SigLIP" of the paper's Tables 1-2 train a CLIP model with this loss instead of the softmax one.
Every (image, text) pair of the batch is an independent binary problem:

  z_ij = exp(t) * e_i . t_j + b,   label_ij = +1 if text j belongs to image i else -1,
  L = -(1/B) sum_i sum_j log sigmoid(label_ij * z_ij),

with a learnable log temperature t (the model's ``logit_scale``) and bias b (the model's ``logit_bias``),
initialised as in the SigLIP paper to t = log 10, b = -10 (``SIGLIP_LOGIT_SCALE_INIT``, ``SIGLIP_LOGIT_BIAS_INIT``).
The normalisation by B (not B^2) is the paper's and open_clip's ``SigLipLoss``.

Over the flat text rows (docs/objectives.md §1) text j is a row r and "belongs to" means owner(r) = i; rows that are not
texts (``valid`` False) are no pair at all. With one valid text per image — the ``siglip`` / ``siglip_dagger``
rows, slot 0 only — this is exactly the loss above.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from .common import compute_dtype

SIGLIP_LOGIT_SCALE_INIT = math.log(10.0)
SIGLIP_LOGIT_BIAS_INIT = -10.0


def siglip_loss(image_emb, text_emb, owner, valid, logit_scale, logit_bias) -> jax.Array:
    """Pairwise sigmoid loss, a scalar in float32 (or wider when given wider inputs).

    Args:
      image_emb: (B, D) L2-normalised image embeddings.
      text_emb: (M, D) L2-normalised text embeddings.
      owner: (M,) int, the image each row belongs to.
      valid: (M,) bool, which rows are texts (others take no part, neither value nor gradient).
      logit_scale: () the LOG temperature t (logits use exp(t)).
      logit_bias: () the bias b.
    """
    ct = compute_dtype(image_emb, text_emb, logit_scale, logit_bias)
    img = jnp.asarray(image_emb).astype(ct)
    txt = jnp.where(valid[:, None], jnp.asarray(text_emb).astype(ct), 0.0)  # garbage in invalid rows stays out
    b = img.shape[0]
    logits = jnp.exp(jnp.asarray(logit_scale).astype(ct)) * (img @ txt.T) + jnp.asarray(logit_bias).astype(ct)
    labels = jnp.where(owner[None, :] == jnp.arange(b)[:, None], 1.0, -1.0).astype(ct)  # (B, M)
    pair_loss = -jax.nn.log_sigmoid(labels * logits)
    return jnp.sum(jnp.where(valid[None, :], pair_loss, 0.0)) / b
