"""Official mode: what the public MAKE PyTorch code computes (docs/objectives.md §5), quirks included.

Transcribed from github.com/SiyuanYan1/MAKE (commit a7af1dbc): ``CLIP.forward`` in
src/open_clip/model.py (the patch weighting that builds ``weighted_patch_embeddings_sum``) and
``MKCLLoss.forward`` in src/open_clip/loss.py (run with --local-loss, world size 1, lambda_m = 1,
lambda_s = 0.7, --use_disease_specific_weight). docs/objectives.md maps every line.

Layout: dense and sample-major, T = B*N text rows, row r = i*N + n is slot n of image i;
``mask`` is (B, N) (the public ``caption_mask``). ``scale`` is s itself (the public code receives
``logit_scale.exp()``), not its log.

Memory: the public code builds (B*N) x (B*N) "expanded" logits twice and a B x P x (B*N)
patch-text tensor; this transcription computes the same numbers from (B, T) logits and a (B, P)
similarity, gathering instead of expanding.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from .common import compute_dtype, masked_mean_std, masked_weighted_mean
from make_jax.data.schema import FIRST_SUBTEXT, NUM_KNOWLEDGE

_F_NORMALIZE_EPS = 1e-12  # torch.nn.functional.normalize default eps


def official_knowledge_embedding(patch_emb, text_emb, sigma: float = 0.0, grad_to_text: bool = True):
    """``weighted_patch_embeddings_sum`` of the public ``CLIP.forward`` -> (B, D).

    similarity_matrix = patch_embeddings @ text_features.T        # (B, P, T) there; here only the
    embedding_weight = (similarity_matrix >= sigma) * similarity   #   diagonal [i, :, i] is computed
    visual_token_weights = embedding_weight[arange(B), :, arange(B)]   # text ROW i for image i
    visual_token_weights = F.normalize(visual_token_weights, dim=-1)   # L2 over patches, eps 1e-12
    weighted_patch_embeddings_sum = (w[..., None] * patch_embeddings).sum(1)   # not re-normalised
    """
    ct = compute_dtype(patch_emb, text_emb)
    patch = jnp.asarray(patch_emb).astype(ct)
    b = patch.shape[0]
    t = jnp.asarray(text_emb).astype(ct)[:b]  # row i (slot i mod N of image i // N): the quirk
    if not grad_to_text:
        t = jax.lax.stop_gradient(t)
    z = jnp.einsum("bpd,bd->bp", patch, t)
    z = jnp.where(z >= sigma, z, 0.0)
    sq = jnp.sum(z * z, axis=-1, keepdims=True)
    # ||z|| with a zero (not NaN) gradient at 0, as torch's norm backward; then clamp_min(eps).
    norm = jnp.where(sq > 0, jnp.sqrt(jnp.where(sq > 0, sq, 1.0)), 0.0)
    w = z / jnp.maximum(norm, _F_NORMALIZE_EPS)
    return jnp.einsum("bp,bpd->bd", w, patch)


def official_dkw_weights(text_emb, mask):
    """``subcaption_similarity_1d`` of the public ``MKCLLoss.forward`` -> (B, N), detached.

    chunks = torch.chunk(text_features, N)                  # read as if CAPTION-major
    ontology = chunks[1]                                    # rows B .. 2B-1
    subcaption = cat(chunks[3:])                            # rows 3B .. NB-1
    sim = (ontology @ subcaption.T).reshape(B, N-3, B)[i, :, i]   # g[i,k] = t[B+i] . t[(3+k)B+i]
    sim = masked_fill(sim, mask[:, 3:] == 0, -inf); softmax over k; / max over k
    sim = masked_fill(sim, mask[:, 1] == 0, 1); prepend ones for slots 0-2; flatten; detach
    Images with a valid disease text and no valid subtext get NaN in PyTorch (softmax of all -inf);
    those weights only ever multiply ignored rows. Here they are 0.
    """
    t = jax.lax.stop_gradient(jnp.asarray(text_emb))
    b, n = mask.shape
    k = n - NUM_KNOWLEDGE
    if k < 1:
        raise ValueError("diagnosis weights need subtext slots (N > 3); the public code fails there too")
    if t.shape[0] != b * n:
        raise ValueError(f"text_emb has {t.shape[0]} rows, expected B*N = {b * n}")
    ct = compute_dtype(t)
    t = t.astype(ct)
    ontology = t[b : 2 * b]  # (B, D)
    sub = t[NUM_KNOWLEDGE * b :].reshape(k, b, -1)  # (K, B, D): chunk 3+k, position i
    g = jnp.einsum("bd,kbd->bk", ontology, sub)  # (B, K) the diagonal of the (B, K, B) reshape
    sub_ok = mask[:, NUM_KNOWLEDGE:] > 0.5
    gmax = jnp.max(jnp.where(sub_ok, g, -jnp.inf), axis=1, keepdims=True)
    has = jnp.isfinite(gmax)
    gmax = jnp.where(has, gmax, 0.0)
    e = jnp.where(sub_ok, jnp.exp(jnp.where(sub_ok, g, gmax) - gmax), 0.0)
    den = jnp.sum(e, axis=1, keepdims=True)
    p = jnp.where(has, e / jnp.where(has, den, 1.0), 0.0)  # F.softmax(dim=-1)
    scaler = jnp.max(p, axis=1, keepdims=True)
    p = jnp.where(has, p / jnp.where(has, scaler, 1.0), 0.0)  # / torch.max(dim=1)
    p = jnp.where(mask[:, 1:2] > 0.5, p, 1.0)  # ontology masked -> 1
    w = jnp.concatenate([jnp.ones((b, NUM_KNOWLEDGE), ct), p], axis=1)
    return jax.lax.stop_gradient(w)


def official_loss_from_ek(ek, image_emb, text_emb, mask, scale, *, lambda_m: float = 1.0,
                          lambda_s: float = 0.7, dkw: bool = True):
    """``MKCLLoss.forward`` (local_loss=True, world_size=1) given e^k (= weighted_patch_embeddings_sum).

    Returns a dict: ``mkcl_times_lambda_m`` and ``slra_times_lambda_s`` (the two values the public
    code returns with output_dict=True; their sum is its total loss), and ``i2t``, ``t2i``,
    ``mkcl``, ``slra``, ``weights`` (B, N), ``dkw_mean``, ``dkw_std`` (over valid subtext rows).
    """
    ct = compute_dtype(ek, image_emb, text_emb)
    img = jnp.asarray(image_emb).astype(ct)
    txt = jnp.asarray(text_emb).astype(ct)
    ek = jnp.asarray(ek).astype(ct)
    s = jnp.asarray(scale).astype(ct)
    mask = jnp.asarray(mask)
    b, n = mask.shape
    t = b * n
    if txt.shape[0] != t:
        raise ValueError(f"text_emb has {txt.shape[0]} rows, expected B*N = {t}")
    rows = jnp.arange(t)
    own = rows // n  # expanded row r = i*N + n repeats image i's logits
    valid = mask.reshape(t) > 0.5  # labels_i2t[r] = r, or -100 where caption_mask is 0

    w = official_dkw_weights(txt, mask).reshape(t) if dkw else jnp.ones((t,), ct)

    logits_per_image = s * (img @ txt.T)  # (B, T)
    logits_sgl = s * (ek @ txt.T)  # (B, T)
    # logits_per_text = s * txt @ img.T is logits_per_image.T (same products).

    # (A) image -> text: row r of expanded_i2t is logits_per_image[r // N], target column r; every
    # one of the T texts (invalid ones included) is in the softmax.
    pos_i = s * jnp.sum(img[own] * txt, axis=-1)  # logits_per_image[r // N, r], as a (T, D) gather
    l_i2t = jax.nn.logsumexp(logits_per_image, axis=1)[own] - pos_i
    loss_i2t = masked_weighted_mean(l_i2t, w, valid)

    # SLRA: same expansion with e^k; label_sgl[:B] = -100 switches off rows 0..B-1 (not a slot).
    slra_rows = valid & (rows >= b)
    l_sgl = jax.nn.logsumexp(logits_sgl, axis=1)[own] - s * jnp.sum(ek[own] * txt, axis=-1)
    slra = masked_weighted_mean(l_sgl, w, slra_rows)

    # (B) text -> image: labels_t2i[r] = r // N (or -100), softmax over the B images, unweighted.
    l_t2i = jax.nn.logsumexp(logits_per_image, axis=0) - pos_i
    loss_t2i = masked_weighted_mean(l_t2i, jnp.ones_like(l_t2i), valid)

    mkcl = 0.5 * (loss_i2t + loss_t2i)
    is_sub = valid & (rows % n >= FIRST_SUBTEXT)
    dkw_mean, dkw_std = masked_mean_std(w, is_sub)
    return {
        "mkcl_times_lambda_m": lambda_m * mkcl,
        "slra_times_lambda_s": lambda_s * slra,
        "i2t": loss_i2t,
        "t2i": loss_t2i,
        "mkcl": mkcl,
        "slra": slra,
        "weights": w.reshape(b, n),
        "dkw_mean": dkw_mean,
        "dkw_std": dkw_std,
    }


def official_clip_loss(image_emb, text_emb, scale):
    """open_clip ``ClipLoss`` (world size 1): one positive per image, text i <-> image i, no masks."""
    ct = compute_dtype(image_emb, text_emb)
    img = jnp.asarray(image_emb).astype(ct)
    txt = jnp.asarray(text_emb).astype(ct)
    s = jnp.asarray(scale).astype(ct)
    logits = s * (img @ txt.T)  # (B, B)
    diag = jnp.diagonal(logits)
    i2t = jnp.mean(jax.nn.logsumexp(logits, axis=1) - diag)
    t2i = jnp.mean(jax.nn.logsumexp(logits, axis=0) - diag)
    return i2t, t2i
