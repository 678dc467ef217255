"""make_loss: the single entry point of the MAKE objectives, dispatching on LossConfig.mode."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from .common import compute_dtype
from make_jax.data.schema import NUM_KNOWLEDGE, SLOT_RAW

from .config import LossConfig
from .inputs import LossInputs
from .official import official_clip_loss, official_knowledge_embedding, official_loss_from_ek
from .paper import paper_loss, text_mask
from .siglip import siglip_loss

TERM_NAMES = ("loss", "i2t", "t2i", "mkcl", "slra", "dkw_mean", "dkw_std")


def _check_dense(owner, slot, num_images: int, num_slots: int) -> None:
    """Host-side check of the dense layout when owner/slot are concrete (skipped under tracing)."""
    try:
        o = np.asarray(owner)
        sl = np.asarray(slot)
    except jax.errors.TracerArrayConversionError:
        return
    r = np.arange(num_images * num_slots)
    if o.shape != r.shape or not (np.array_equal(o, r // num_slots) and np.array_equal(sl, r % num_slots)):
        raise ValueError("official mode needs the dense sample-major layout: owner = r // N, slot = r % N")


def _official(inputs: LossInputs, config: LossConfig):
    image_emb, patch_emb, text_emb = inputs.image, inputs.patches, inputs.text
    owner, slot, valid, logit_scale = inputs.owner, inputs.slot, inputs.valid, inputs.logit_scale
    b = image_emb.shape[0]
    m, d = text_emb.shape
    if m % b:
        raise ValueError(f"official mode needs M = B*N text rows; got M={m}, B={b}")
    n = m // b
    _check_dense(owner, slot, b, n)
    ct = compute_dtype(image_emb, text_emb, patch_emb if (config.slra and not config.is_clip) else None)
    s = jnp.exp(jnp.asarray(logit_scale).astype(ct))
    zero = jnp.zeros((), ct)
    if config.is_clip:  # the public code trains its CLIP baselines with open_clip's ClipLoss
        t0 = jnp.asarray(text_emb).reshape(b, n, d)[:, SLOT_RAW]
        i2t, t2i = official_clip_loss(image_emb, t0, s)
        mkcl = 0.5 * (i2t + t2i)
        return mkcl, {"loss": mkcl, "i2t": i2t, "t2i": t2i, "mkcl": mkcl, "slra": zero,
                      "dkw_mean": zero + 1.0, "dkw_std": zero}
    text = jnp.asarray(text_emb)
    mask = jnp.asarray(valid).reshape(b, n)
    if config.positives == "knowledge":  # the public code run without --subcaptions: N = 3 slots
        if config.dkw:
            raise ValueError("official mode: dkw needs subtext slots (positives='all'); "
                             "the public code fails with --use_disease_specific_weight and no subcaptions")
        k = NUM_KNOWLEDGE
        text = text.reshape(b, n, d)[:, :k].reshape(b * k, d)
        mask = mask[:, :k]
    elif config.dkw and n <= NUM_KNOWLEDGE:
        raise ValueError("official mode: dkw needs N > 3 text slots")
    if config.slra:
        ek = official_knowledge_embedding(patch_emb, text, config.sigma, config.slra_grad_to_raw)
    else:  # slra term not used: e^k only feeds the (discarded) slra value
        ek = jnp.zeros((b, d), ct)
    out = official_loss_from_ek(ek, image_emb, text, mask, s, lambda_m=1.0,
                                lambda_s=config.slra_lambda, dkw=config.dkw)
    slra = out["slra"] if config.slra else zero
    loss = out["mkcl"] + config.slra_lambda * slra if config.slra else out["mkcl"]
    terms = {"loss": loss, "i2t": out["i2t"], "t2i": out["t2i"], "mkcl": out["mkcl"], "slra": slra,
             "dkw_mean": out["dkw_mean"], "dkw_std": out["dkw_std"]}
    return loss, terms


def _siglip(inputs: LossInputs, config: LossConfig):
    if inputs.logit_bias is None:
        raise ValueError("objective='sigmoid' needs the model's logit_bias (a model with init_logit_bias set)")
    v = text_mask(inputs.owner, inputs.slot, inputs.valid, inputs.image.shape[0], config)
    loss = siglip_loss(inputs.image, inputs.text, inputs.owner, v, inputs.logit_scale, inputs.logit_bias)
    zero = jnp.zeros_like(loss)
    # SigLIP has no direction and no second term: i2t, t2i and mkcl all report the one sigmoid loss.
    return loss, {"loss": loss, "i2t": loss, "t2i": loss, "mkcl": loss, "slra": zero,
                  "dkw_mean": zero + 1.0, "dkw_std": zero}


def make_loss(inputs: LossInputs, config: LossConfig = LossConfig()):
    """The MAKE training objective over the flat text rows of ``inputs`` (docs/objectives.md).

    Args:
      inputs: a :class:`LossInputs` (image, patches, text, owner, slot, valid, logit_scale; shapes there).
        ``patches`` may be None when ``config.slra`` is False or ``config.positives`` is not 'all' (SLRA then
        has no subtext row to act on).
      config: a :class:`LossConfig` (static under jit). ``config.objective == 'sigmoid'`` (SigLIP) also reads
        ``inputs.logit_bias``.

    Maths runs in float32 (or float64 when given float64 with x64 enabled), whatever the input dtype.
    Paper mode accepts rows in any order (packed or dense). Official mode needs the dense
    sample-major layout (owner = r // N, slot = r % N; see :func:`dense_layout`).

    Returns:
      (loss, terms) with terms ``loss``, ``i2t``, ``t2i``, ``mkcl``, ``slra`` (unweighted by lambda),
      ``dkw_mean``, ``dkw_std`` (of the weights over valid subtext rows).
    """
    if not isinstance(inputs, LossInputs):
        raise TypeError(f"make_loss takes a LossInputs, got {type(inputs).__name__}")
    if config.objective == "sigmoid":
        return _siglip(inputs, config)
    if config.mode == "paper":
        return paper_loss(inputs, config)
    return _official(inputs, config)
