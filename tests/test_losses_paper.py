"""Paper-mode MAKE loss (docs/objectives.md §2) against an independent float64 numpy reference.

The reference below is written straight from the equations with explicit Python loops over images
and text rows (no masks, no gathers, no segment ops): a row set V, per-image lists, and plain sums.
"""

import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from make_jax.losses import LossConfig, LossInputs, make_loss
from conftest import central_difference


@pytest.fixture(autouse=True, scope="module")
def _x64():
    with jax.enable_x64(True):  # float64 for this module only (jax >= 0.10 context manager)
        yield


# ----------------------------------------------------------------------------- numpy reference
ALLOWED = {"clip_raw": {0}, "clip_dagger": {0}, "knowledge": {0, 1, 2}, "all": set(range(11))}


def _lse(xs):
    m = max(xs)
    return m + math.log(sum(math.exp(x - m) for x in xs))


def ref_text_rows(owner, slot, valid, n_images, cfg):
    return [r for r in range(len(owner))
            if valid[r] and 0 <= owner[r] < n_images and slot[r] in ALLOWED[cfg.positives]]


def ref_weights(txt, owner, slot, rows, n_images, cfg):
    """Eq. 7, per image, with plain Python."""
    w = {r: 1.0 for r in rows}
    if not cfg.dkw:
        return w
    for i in range(n_images):
        subs = [r for r in rows if owner[r] == i and slot[r] >= 3]
        dis = [r for r in rows if owner[r] == i and slot[r] == 1]
        if not subs or not dis:
            continue
        td = txt[dis[0]]
        g = {r: float(txt[r] @ td) for r in subs}
        if cfg.dkw_norm == "ratio":
            gmax = max(g.values())
            for r in subs:
                w[r] = max(g[r], 0.0) / gmax if gmax > 0 else 1.0
        else:  # softmax over the image's subtexts, divided by its largest entry
            z = sum(math.exp(g[q]) for q in subs)
            p = {r: math.exp(g[r]) / z for r in subs}
            pmax = max(p.values())
            for r in subs:
                w[r] = p[r] / pmax
    return w


def ref_raw_texts(txt, owner, slot, rows, n_images):
    out = {}
    for i in range(n_images):
        raws = [r for r in rows if owner[r] == i and slot[r] == 0]
        if raws:
            out[i] = np.array(txt[raws[0]])
    return out


def ref_loss(img, patch, txt, owner, slot, valid, logit_scale, cfg, w=None, traw=None):
    """MAKE paper loss in float64 from the equations. ``w`` / ``traw`` freeze the dkw weights and
    the raw texts of the patch weighting (for finite differences of stop-gradient quantities)."""
    n_images = img.shape[0]
    s = math.exp(logit_scale)
    V = ref_text_rows(owner, slot, valid, n_images, cfg)
    if w is None:
        w = ref_weights(txt, owner, slot, V, n_images, cfg)
    # MKCL image -> text: per (image, own text) pair, softmax over all valid texts of the batch
    num = den = 0.0
    for r in V:
        i = owner[r]
        lr = _lse([s * float(img[i] @ txt[c]) for c in V]) - s * float(img[i] @ txt[r])
        num += w[r] * lr
        den += w[r]
    i2t = num / den if den > 0 else 0.0
    # MKCL text -> image: softmax over all images
    t2i_terms = [_lse([s * float(txt[r] @ img[j]) for j in range(n_images)]) - s * float(txt[r] @ img[owner[r]])
                 for r in V]
    t2i = sum(t2i_terms) / len(t2i_terms) if t2i_terms else 0.0
    mkcl = 0.5 * (i2t + t2i)
    slra = 0.0
    if cfg.slra:
        if traw is None:
            traw = ref_raw_texts(txt, owner, slot, V, n_images)
        ek = {}
        for i in range(n_images):
            if i not in traw:
                continue
            z = []
            for p in range(patch.shape[1]):
                zz = float(patch[i, p] @ traw[i])
                z.append(zz if zz >= cfg.sigma else 0.0)
            if sum(z) <= 0:  # Eq. 5 with every z = 0: e = 0, and sim<., 0> = 0 (the image stays in the softmax)
                ek[i] = np.zeros(patch.shape[2])
                continue
            e = sum(z[p] * patch[i, p] for p in range(patch.shape[1])) / (sum(z) + cfg.eps)
            ek[i] = e / math.sqrt(float(e @ e))
        num = den = 0.0
        for r in V:
            if slot[r] < 3 or owner[r] not in ek:
                continue
            lr = _lse([s * float(txt[r] @ ek[j]) for j in ek]) - s * float(txt[r] @ ek[owner[r]])
            num += w[r] * lr
            den += w[r]
        slra = num / den if den > 0 else 0.0
    loss = mkcl + (cfg.slra_lambda * slra if cfg.slra else 0.0)
    sub_w = [w[r] for r in V if slot[r] >= 3]
    return {"loss": loss, "i2t": i2t, "t2i": t2i, "mkcl": mkcl, "slra": slra,
            "dkw_mean": float(np.mean(sub_w)) if sub_w else 0.0,
            "dkw_std": float(np.std(sub_w)) if sub_w else 0.0}


# ----------------------------------------------------------------------------- random batches
def _unit(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


# valid slots per image: 8 subtexts; 1; 0; no raw; no disease; no text at all; no concept + gaps
PATTERNS = [
    set(range(11)),
    {0, 1, 2, 3},
    {0, 1, 2},
    {1, 2, 3, 4},
    {0, 2, 3, 4, 5},
    set(),
    {0, 1, 3, 5, 7, 9},
]


def make_batch(seed, patterns=PATTERNS, n_slots=11, n_patch=6, dim=8, keep_invalid=0.5):
    """Packed, shuffled rows with random masks, garbage in invalid rows, and duplicated texts."""
    rng = np.random.default_rng(seed)
    n_images = len(patterns)
    img = _unit(rng.normal(size=(n_images, dim)))
    rows = []  # (owner, slot, valid, emb)
    for i, pat in enumerate(patterns):
        for n in range(n_slots):
            if n in pat:
                rows.append((i, n, True, _unit(rng.normal(size=dim))))
            elif (i + n) % round(1 / keep_invalid) == 0:  # an invalid row present in the packed set
                rows.append((i, n, False, 10.0 * rng.normal(size=dim)))
    # duplicated texts across images: image 1's disease = image 0's; image 6's slot 3 = image 0's
    def find(i, n):
        return next(k for k, r in enumerate(rows) if r[0] == i and r[1] == n and r[2])
    if n_images > 6:
        rows[find(1, 1)] = (1, 1, True, rows[find(0, 1)][3].copy())
        rows[find(6, 3)] = (6, 3, True, rows[find(0, 3)][3].copy())
    order = rng.permutation(len(rows))
    rows = [rows[k] for k in order]
    owner = np.array([r[0] for r in rows], np.int32)
    slot = np.array([r[1] for r in rows], np.int32)
    valid = np.array([r[2] for r in rows], bool)
    txt = np.stack([r[3] for r in rows])
    # patches correlated with the image's raw caption, so z takes both signs and crosses sigma
    patch = np.empty((n_images, n_patch, dim))
    for i in range(n_images):
        raw = [k for k in range(len(rows)) if owner[k] == i and slot[k] == 0]
        base = txt[raw[0]] if raw else rng.normal(size=dim)
        patch[i] = _unit(rng.uniform(-1.5, 1.5, size=(n_patch, 1)) * _unit(base) + 0.6 * rng.normal(size=(n_patch, dim)))
    logit_scale = math.log(rng.uniform(5.0, 20.0))
    return img, patch, txt, owner, slot, valid, logit_scale


def run_jax(batch, cfg, dtype=jnp.float64):
    img, patch, txt, owner, slot, valid, ls = batch
    inputs = LossInputs(jnp.asarray(img, dtype), jnp.asarray(patch, dtype), jnp.asarray(txt, dtype),
                        jnp.asarray(owner), jnp.asarray(slot), jnp.asarray(valid), jnp.asarray(ls, dtype))
    loss, terms = make_loss(inputs, cfg)
    return loss, terms


CONFIGS = [LossConfig(positives=p, slra=sl, dkw=dk, dkw_norm=nm, sigma=sg)
           for p, sl, dk, nm, sg in itertools.product(["clip_raw", "knowledge", "all"], [False, True],
                                                      [False, True], ["ratio", "softmax"], [0.0, 0.3])]


@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: f"{c.positives}-slra{int(c.slra)}-dkw{int(c.dkw)}-{c.dkw_norm}-s{c.sigma}")
def test_paper_matches_reference_all_switches(cfg):
    for seed in (0, 1):
        batch = make_batch(seed)
        want = ref_loss(*batch, cfg)
        loss, terms = run_jax(batch, cfg)
        assert terms["loss"].dtype == jnp.float64
        for k, v in want.items():
            np.testing.assert_allclose(float(terms[k]), v, rtol=1e-9, atol=1e-9, err_msg=k)
        assert float(loss) == float(terms["loss"])


def test_reference_batch_exercises_the_edge_cases():
    """The random batch really contains what the switch test claims to cover."""
    img, patch, txt, owner, slot, valid, ls = make_batch(0)
    n_sub = [int(np.sum(valid & (owner == i) & (slot >= 3))) for i in range(len(img))]
    assert {0, 1, 8} <= set(n_sub)
    assert not np.any(valid & (owner == 3) & (slot == 0))  # no raw
    assert not np.any(valid & (owner == 4) & (slot == 1))  # no disease
    assert not np.any(valid & (owner == 5))  # no text at all
    assert np.any(~valid)  # invalid rows present (with garbage embeddings)
    assert not np.array_equal(owner, np.sort(owner))  # not in dense order
    # duplicated embeddings across images
    v = txt[valid]
    dup = [(a, b) for a in range(len(v)) for b in range(a + 1, len(v)) if np.array_equal(v[a], v[b])]
    assert len(dup) >= 2
    # with sigma = 0.3 some images keep some patches and drop others
    cfg = LossConfig(sigma=0.3)
    V = ref_text_rows(owner, slot, valid, len(img), cfg)
    raws = ref_raw_texts(txt, owner, slot, V, len(img))
    z = np.array([patch[i] @ t for i, t in raws.items()])
    assert np.any(z >= 0.3) and np.any((z > 0) & (z < 0.3)) and np.any(z < 0)


def test_float32_and_bfloat16_inputs_compute_in_float32():
    batch = make_batch(3)
    cfg = LossConfig()
    want = ref_loss(*batch, cfg)["loss"]
    img, patch, txt, owner, slot, valid, ls = batch
    fn = jax.jit(lambda a, p, t, l: make_loss(LossInputs(a, p, t, owner, slot, valid, l), cfg))
    loss32, _ = fn(*(jnp.asarray(x, jnp.float32) for x in (img, patch, txt, ls)))
    assert loss32.dtype == jnp.float32
    np.testing.assert_allclose(float(loss32), want, rtol=2e-5)
    bf = [jnp.asarray(x, jnp.bfloat16) for x in (img, patch, txt, ls)]
    loss_bf, terms_bf = fn(*bf)
    assert loss_bf.dtype == jnp.float32 and terms_bf["slra"].dtype == jnp.float32
    # identical to upcasting the bfloat16 values first, i.e. no arithmetic happened in bfloat16
    loss_up, _ = fn(*(x.astype(jnp.float32) for x in bf))
    assert float(loss_bf) == float(loss_up)
    assert float(loss_bf) != float(loss32)  # the inputs really were rounded to bfloat16


# ----------------------------------------------------------------------------- gradients
# 6 images x 11 slots, every row present (invalid ones with garbage), shuffled: M = 66, P = 5, D = 8
GRAD_PATTERNS = [set(range(11)), {0, 1, 2, 3}, {0, 1, 2}, {1, 2, 3, 4}, {0, 2, 3, 4, 5, 6}, {0, 1, 3, 5, 7, 9}]
GRAD_CONFIGS = [
    LossConfig(),  # MAKE: mkcl + slra + dkw (ratio)
    LossConfig(dkw_norm="softmax", sigma=0.3),
    LossConfig(slra_grad_to_raw=False),
    LossConfig(positives="knowledge", slra=False, dkw=False),
    LossConfig(positives="clip_raw", slra=False, dkw=False),
]



@pytest.mark.parametrize("cfg", GRAD_CONFIGS, ids=lambda c: f"{c.positives}-slra{int(c.slra)}-dkw{int(c.dkw)}-{c.dkw_norm}-s{c.sigma}-raw{int(c.slra_grad_to_raw)}")
def test_paper_gradients_match_finite_differences(cfg):
    """Central differences of the numpy reference, coordinate by coordinate (every coordinate for the
    MAKE config, 12 random ones per argument otherwise) and along random directions."""
    img, patch, txt, owner, slot, valid, ls = make_batch(11, GRAD_PATTERNS, n_patch=5, dim=8, keep_invalid=1.0)
    n_images = len(img)
    V = ref_text_rows(owner, slot, valid, n_images, cfg)
    w0 = ref_weights(txt, owner, slot, V, n_images, cfg)  # stop-gradient: weights are constants
    traw0 = ref_raw_texts(txt, owner, slot, V, n_images)
    for i, t in traw0.items():  # finite differences need every z away from the threshold
        assert np.min(np.abs(patch[i] @ t - cfg.sigma)) > 1e-3

    args = [img, patch, txt, np.array(ls)]

    def f(k, x):
        a = list(args)
        a[k] = x
        traw = None if cfg.slra_grad_to_raw else traw0
        return ref_loss(a[0], a[1], a[2], owner, slot, valid, float(a[3]), cfg, w=w0, traw=traw)["loss"]

    def jloss(a, p, t, l):
        return make_loss(LossInputs(a, p, t, owner, slot, valid, l), cfg)[0]

    # jitted: one program instead of ~200 op-by-op compilations (float64 either way)
    grads = [np.asarray(g) for g in jax.jit(jax.grad(jloss, argnums=(0, 1, 2, 3)))(*(jnp.asarray(a) for a in args))]
    rng = np.random.default_rng(0)
    full = cfg == LossConfig()
    for k, name in enumerate(["image", "patch", "text", "logit_scale"]):
        x = args[k]
        coords = list(np.ndindex(x.shape))
        if not full and len(coords) > 12:
            coords = [coords[j] for j in rng.choice(len(coords), 12, replace=False)]
        for idx in coords:
            u = np.zeros_like(x)
            u[idx] = 1.0
            np.testing.assert_allclose(grads[k][idx], central_difference(lambda y: f(k, y), x, u), rtol=1e-5, atol=1e-7,
                                       err_msg=f"{name}{idx}")
        for _ in range(3):
            u = rng.normal(size=x.shape)
            np.testing.assert_allclose(np.sum(grads[k] * u), central_difference(lambda y: f(k, y), x, u), rtol=1e-6,
                                       atol=1e-7, err_msg=f"{name} direction")
    # invalid rows get exactly zero gradient; the check is not vacuous
    assert np.all(grads[2][~valid] == 0.0)
    assert np.abs(grads[0]).max() > 1e-3 and np.abs(grads[2]).max() > 1e-3
    assert (np.abs(grads[1]).max() > 1e-3) == cfg.slra


def test_images_whose_patches_all_fall_below_sigma_stay_in_slra():
    """Eq. 5 with every z below sigma gives e = 0: the image keeps a zero e^k (logit 0), as target and as
    negative. If such images were dropped, pushing every patch below sigma would zero L_slra — a loophole the
    MAKE row found in training. With sigma above every possible cosine, every valid subtext row's loss is
    log(#images with a raw text), whatever the embeddings."""
    batch = make_batch(3)
    img, patch, txt, owner, slot, valid, ls = batch
    cfg = LossConfig(sigma=1.01, dkw=False)  # no cosine reaches 1.01
    _, terms = run_jax(batch, cfg)
    with_raw = {int(o) for o, s_, v in zip(owner, slot, valid) if v and s_ == 0}
    subtexts = [r for r in range(len(owner)) if valid[r] and slot[r] >= 3 and int(owner[r]) in with_raw]
    assert subtexts and len(with_raw) > 1
    np.testing.assert_allclose(float(terms["slra"]), math.log(len(with_raw)), rtol=1e-12)
    assert float(terms["slra"]) > 0
    # and the reference (loops straight from the equations) agrees
    np.testing.assert_allclose(ref_loss(*batch, cfg)["slra"], math.log(len(with_raw)), rtol=1e-12)
