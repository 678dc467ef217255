"""Paper-mode MAKE objectives (docs/objectives.md §2): MKCL (Eq. 3-4), SLRA (Eq. 5-6), DKW (Eq. 7), total (Eq. 8).

Flat text representation (docs/objectives.md §1): M text rows in any order, each with ``owner`` (its image,
in [0, B)), ``slot`` (0 raw, 1 disease, 2 concept, 3.. subtexts) and ``valid``. At most one valid row
per (image, slot) is expected for slots 0 and 1 (if several, the highest row index is used).

Memory: the only O(B*M) tensors are the image-text logits (B, M), computed once and gathered for both
directions, and the subtext-to-e^k logits (M, B). Nothing of size M*M or B*P*M is built.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from .common import (
    compute_dtype,
    masked_logsumexp,
    masked_mean_std,
    masked_weighted_mean,
    row_of_slot,
    safe_divide,
    safe_l2_normalize,
)
from make_jax.data.schema import FIRST_SUBTEXT, SLOT_DISEASE, SLOT_RAW

from .config import LossConfig
from .inputs import LossInputs


def text_mask(owner, slot, valid, num_images: int, config: LossConfig) -> jax.Array:
    """Rows that are texts under ``config.positives`` (valid, owned by a real image, allowed slot)."""
    v = valid.astype(bool) & (owner >= 0) & (owner < num_images) & (slot >= 0)
    if config.max_slot is not None:
        v = v & (slot <= config.max_slot)
    return v


def dkw_weights(text, own, slot, v, num_images: int, config: LossConfig) -> jax.Array:
    """Eq. 7: weight of every row (1 on non-subtext rows), treated as a constant (stop-gradient).

    For image i with a valid disease text t_d and valid subtexts S(i): g_r = t_d . t_r, and
    ratio: w_r = max(g_r, 0) / max_S g  (all 1 if max_S g <= 0);  softmax: w_r = exp(g_r - max_S g).
    No valid disease text: all of the image's weights are 1.
    """
    text = jax.lax.stop_gradient(text)
    is_sub = v & (slot >= FIRST_SUBTEXT)
    if not config.dkw:
        return jnp.ones(text.shape[:1], text.dtype)
    dis_row = row_of_slot(v & (slot == SLOT_DISEASE), own, num_images)  # (B,)
    has_dis = dis_row >= 0
    t_dis = jnp.where(has_dis[:, None], text[jnp.maximum(dis_row, 0)], 0.0)  # (B, D)
    g = jnp.sum(text * t_dis[own], axis=-1)  # (M,) each row against its own image's disease text
    g = jnp.where(is_sub, g, -jnp.inf)
    gmax = jax.ops.segment_max(g, own, num_segments=num_images)[own]  # (M,), -inf if no subtext
    if config.dkw_norm == "ratio":
        ok = is_sub & (gmax > 0)
        w_sub = jnp.where(ok, safe_divide(jnp.maximum(jnp.where(ok, g, 0.0), 0.0), gmax, ok), 1.0)
    else:  # softmax over the image's subtexts divided by its max == exp(g - max g)
        ok = is_sub & jnp.isfinite(gmax)
        w_sub = jnp.where(ok, jnp.exp(jnp.where(ok, g - jnp.where(ok, gmax, 0.0), 0.0)), 1.0)
    w_sub = jnp.where(has_dis[own], w_sub, 1.0)
    return jax.lax.stop_gradient(jnp.where(is_sub, w_sub, 1.0))


def knowledge_embedding(patch, text, own, slot, v, num_images: int, config: LossConfig):
    """Eq. 5: e^k_i from image i's OWN raw-text row. Returns (e^k (B, D) L2-normalised, has_ek (B,)).

    z_in = v_in . t_raw(i); z <- z if z >= sigma else 0; e = sum_n v_in z_in / (sum_n z_in + eps);
    e^k = e / ||e||. has_ek is False only when image i has no valid raw text (then it is neither a target nor
    a negative of L_slra). When no patch passes sigma (sum_n z_in = 0) the formula gives e = 0 and e^k = 0: the
    image stays in the softmax with logit 0 as target and as negative. Dropping such images instead would let
    the model zero L_slra by pushing every patch below sigma (seen in training before this was settled).
    """
    raw_row = row_of_slot(v & (slot == SLOT_RAW), own, num_images)
    has_raw = raw_row >= 0
    t_raw = jnp.where(has_raw[:, None], text[jnp.maximum(raw_row, 0)], 0.0)  # (B, D)
    if not config.slra_grad_to_raw:
        t_raw = jax.lax.stop_gradient(t_raw)
    z = jnp.einsum("bpd,bd->bp", patch, t_raw)  # (B, P): only each image's own raw text
    z = jnp.where(z >= config.sigma, z, 0.0)
    den = jnp.sum(z, axis=-1)  # >= 0 because sigma >= 0
    has_mass = has_raw & (den > 0)
    e = jnp.einsum("bp,bpd->bd", z, patch)  # exactly 0 where den == 0 (every z is 0 there)
    e = e / jnp.where(has_mass, den + config.eps, 1.0)[:, None]
    return safe_l2_normalize(e, has_mass), has_raw


def paper_loss(inputs: LossInputs, config: LossConfig):
    """Paper-mode loss. See :func:`make_jax.losses.make_loss` for the argument contract."""
    image_emb, patch_emb, text_emb = inputs.image, inputs.patches, inputs.text
    owner, slot, valid, logit_scale = inputs.owner, inputs.slot, inputs.valid, inputs.logit_scale
    # SLRA acts on subtext rows only: with positives other than 'all' there are none (term = 0, and
    # patch_emb is not needed).
    use_slra = config.slra and config.max_slot is None
    ct = compute_dtype(image_emb, text_emb, patch_emb if use_slra else None)
    img = jnp.asarray(image_emb).astype(ct)
    b = img.shape[0]
    owner = jnp.asarray(owner).astype(jnp.int32)
    slot = jnp.asarray(slot).astype(jnp.int32)
    v = text_mask(owner, slot, jnp.asarray(valid), b, config)
    own = jnp.where(v, owner, 0)  # safe gather index; invalid rows are masked everywhere below
    txt = jnp.where(v[:, None], jnp.asarray(text_emb).astype(ct), 0.0)  # mask before arithmetic
    s = jnp.exp(jnp.asarray(logit_scale).astype(ct))

    # MKCL (Eq. 3-4): one (B, M) logit matrix, both directions gathered from it.
    logits = s * (img @ txt.T)  # (B, M)
    pos = s * jnp.sum(img[own] * txt, axis=-1)  # (M,) s * e_owner(r) . t_r  (an (M, D) gather)
    lse_img = masked_logsumexp(logits, v[None, :], axis=1)  # (B,) softmax over all valid texts
    l_i2t = lse_img[own] - pos
    lse_txt = jax.nn.logsumexp(logits, axis=0)  # (M,) softmax over all B images
    l_t2i = lse_txt - pos

    is_sub = v & (slot >= FIRST_SUBTEXT)
    w = dkw_weights(txt, own, slot, v, b, config)
    i2t = masked_weighted_mean(l_i2t, w, v)
    t2i = masked_weighted_mean(l_t2i, jnp.ones_like(l_t2i), v)
    mkcl = 0.5 * (i2t + t2i)

    # SLRA (Eq. 5-6): subtext rows -> images' knowledge-enhanced embeddings, (M, B) logits.
    if use_slra:
        patch = jnp.asarray(patch_emb).astype(ct)
        ek, has_ek = knowledge_embedding(patch, txt, own, slot, v, b, config)
        logits_k = s * (txt @ ek.T)  # (M, B)
        lse_k = masked_logsumexp(logits_k, has_ek[None, :], axis=1)
        l_slra = lse_k - s * jnp.sum(txt * ek[own], axis=-1)
        slra_rows = is_sub & has_ek[own]
        slra = masked_weighted_mean(l_slra, w, slra_rows)
        loss = mkcl + config.slra_lambda * slra
    else:
        slra = jnp.zeros((), ct)
        loss = mkcl

    dkw_mean, dkw_std = masked_mean_std(w, is_sub)
    terms = {
        "loss": loss,
        "i2t": i2t,
        "t2i": t2i,
        "mkcl": mkcl,
        "slra": slra,
        "dkw_mean": dkw_mean,
        "dkw_std": dkw_std,
    }
    return loss, terms
