"""Structural properties of the MAKE losses: permutation invariance, invalid rows are inert,
no NaN/inf for any mask pattern, the clip switch is standard CLIP, slra_grad_to_raw, jit."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from make_jax.losses import TABLE3, TERM_NAMES, LossConfig, LossInputs, dense_layout, make_loss

# One worker runs the module (`--dist loadgroup`, pyproject.toml): its first test compiles the loss's eager float64
# ops, which the rest reuse (26 s of the module's 81 s on an idle machine with a cold compilation cache; 75 s and
# 54 s when both workers compiled them at once in a loaded run).
pytestmark = pytest.mark.xdist_group("losses_properties")


@pytest.fixture(autouse=True, scope="module")
def _x64():
    with jax.enable_x64(True):  # float64 for this module only (jax >= 0.10 context manager)
        yield


def _unit(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def dense_batch(seed, masks, n_patch=5, dim=8):
    """Dense sample-major batch (M = B*N) with the given (B, N) validity mask."""
    rng = np.random.default_rng(seed)
    masks = np.asarray(masks, bool)
    b, n = masks.shape
    img = _unit(rng.normal(size=(b, dim)))
    txt = _unit(rng.normal(size=(b * n, dim)))
    patch = _unit(rng.normal(size=(b, n_patch, dim)) + 0.8 * txt.reshape(b, n, dim)[:, :1])
    owner, slot = dense_layout(b, n)
    return (jnp.asarray(img), jnp.asarray(patch), jnp.asarray(txt), owner, slot,
            jnp.asarray(masks.reshape(-1)), jnp.asarray(math.log(12.0)))


MIXED = np.array([
    [1] * 11,
    [1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0],
    [1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0],
    [0, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0],
    [1, 0, 1, 1, 1, 1, 0, 0, 0, 0, 0],
    [0] * 11,
])


def _vg(img, patch, txt, owner, slot, valid, ls, cfg):
    def f(a, p, t, l):
        return make_loss(LossInputs(a, p, t, owner, slot, valid, l), cfg)

    return jax.value_and_grad(f, argnums=(0, 1, 2, 3), has_aux=True)(img, patch, txt, ls)


def _value_and_grads(batch, cfg):
    (loss, terms), grads = _vg(*batch, cfg)  # eager: op caches are shared across configs
    return loss, terms, grads


@pytest.mark.parametrize("cfg", [LossConfig(), LossConfig(dkw_norm="softmax", sigma=0.3),
                                 LossConfig(positives="knowledge", slra=False)], ids=str)
def test_invariant_to_permuting_images(cfg):
    batch = dense_batch(0, MIXED)
    img, patch, txt, owner, slot, valid, ls = batch
    loss, terms, grads = _value_and_grads(batch, cfg)
    perm = np.random.default_rng(1).permutation(img.shape[0])
    inv = np.argsort(perm)  # new image k is old image perm[k]; old image i is new inv[i]
    pbatch = (img[perm], patch[perm], txt, jnp.asarray(inv)[owner], slot, valid, ls)
    ploss, pterms, pgrads = _value_and_grads(pbatch, cfg)
    for k in TERM_NAMES:
        np.testing.assert_allclose(float(pterms[k]), float(terms[k]), rtol=1e-12, atol=1e-12, err_msg=k)
    np.testing.assert_allclose(pgrads[0], grads[0][perm], rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(pgrads[1], grads[1][perm], rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(pgrads[2], grads[2], rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(pgrads[3], grads[3], rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("cfg", [LossConfig(), LossConfig(dkw_norm="softmax", sigma=0.3)], ids=str)
def test_invariant_to_permuting_text_rows(cfg):
    batch = dense_batch(2, MIXED)
    img, patch, txt, owner, slot, valid, ls = batch
    loss, terms, grads = _value_and_grads(batch, cfg)
    perm = np.random.default_rng(3).permutation(txt.shape[0])
    pbatch = (img, patch, txt[perm], owner[perm], slot[perm], valid[perm], ls)
    ploss, pterms, pgrads = _value_and_grads(pbatch, cfg)
    for k in TERM_NAMES:
        np.testing.assert_allclose(float(pterms[k]), float(terms[k]), rtol=1e-12, atol=1e-12, err_msg=k)
    np.testing.assert_allclose(pgrads[2], grads[2][perm], rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(pgrads[0], grads[0], rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(pgrads[1], grads[1], rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("cfg", [LossConfig(), LossConfig(dkw_norm="softmax", sigma=0.3),
                                 LossConfig(positives="knowledge"), LossConfig(positives="clip_raw")], ids=str)
@pytest.mark.parametrize("garbage", ["large", "nan", "inf"])
def test_invalid_rows_have_no_effect(cfg, garbage):
    batch = dense_batch(4, MIXED)
    img, patch, txt, owner, slot, valid, ls = batch
    loss, terms, grads = _value_and_grads(batch, cfg)
    bad = ~np.asarray(valid)
    noise = np.random.default_rng(5).normal(size=txt.shape) * 100.0
    fill = {"large": noise, "nan": np.full(txt.shape, np.nan), "inf": np.full(txt.shape, np.inf)}[garbage]
    txt2 = jnp.where(jnp.asarray(bad)[:, None], jnp.asarray(fill), txt)
    loss2, terms2, grads2 = _value_and_grads((img, patch, txt2, owner, slot, valid, ls), cfg)
    for k in TERM_NAMES:
        assert float(terms2[k]) == float(terms[k]), k
    for g, g2 in zip(grads, grads2):
        np.testing.assert_array_equal(np.asarray(g2), np.asarray(g))
    assert np.all(np.asarray(grads2[2])[bad] == 0.0)
    assert np.abs(np.asarray(grads[2])[~bad]).max() > 0


def _pad(rows, b=6):
    rows = [list(r) for r in rows]
    return np.array(rows + [[1] * 11] * (b - len(rows)))  # filler images with every text valid


EDGE_MASKS = {  # all (6, 11), like MIXED
    "mixed": MIXED,
    "no_valid_subtext": np.array([[1, 1, 1] + [0] * 8] * 6),
    "image_without_any_text": _pad([[0] * 11, [1, 1, 0, 1, 0, 0, 0, 0, 0, 0, 0], [0] * 11]),
    "nothing_valid": np.zeros((6, 11), int),
    "no_raw_anywhere": np.array([[0] + [1] * 10] * 6),
    "no_disease_anywhere": np.array([[1, 0] + [1] * 9] * 6),
    "only_subtexts": np.array([[0, 0, 0, 1, 1, 0, 0, 0, 0, 0, 0]] * 6),
    "one_image_with_texts": np.array([[1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0]] + [[0] * 11] * 5),
}
# each code path that can meet an empty set: both dkw formulas, sigma 0 / 0.3 / 0.99 (no patch passes,
# so no image has an e^k), mkcl alone, dkw without slra, slra without dkw, the raw-gradient switch, and
# the positives filters
NAN_CONFIGS = [
    LossConfig(),
    LossConfig(dkw_norm="softmax", sigma=0.3),
    LossConfig(sigma=0.99),
    LossConfig(dkw_norm="softmax", sigma=0.99),
    LossConfig(slra=False, dkw=False),
    LossConfig(slra=False),
    LossConfig(dkw=False, sigma=0.3),
    LossConfig(slra_grad_to_raw=False),
    LossConfig(positives="knowledge"),
    LossConfig(positives="clip_raw"),
]


@pytest.mark.parametrize("name", sorted(EDGE_MASKS))
def test_no_nan_or_inf_for_any_mask_pattern(name):
    batch = dense_batch(6, EDGE_MASKS[name])
    for cfg in NAN_CONFIGS:
        loss, terms, grads = _value_and_grads(batch, cfg)
        for k in TERM_NAMES:
            assert np.isfinite(float(terms[k])), (cfg, k)
        for g in grads:
            assert np.all(np.isfinite(np.asarray(g))), cfg
        top = {"all": 10, "knowledge": 2, "clip_raw": 0}[cfg.positives]
        if not EDGE_MASKS[name][:, : top + 1].any():  # no text at all: every term and gradient is exactly 0
            assert all(float(terms[k]) == 0.0 for k in ("loss", "i2t", "t2i", "slra"))
            assert all(not np.any(np.asarray(g)) for g in grads)
        else:  # not vacuous: there is something to align
            assert float(terms["loss"]) > 0


def test_no_nan_single_image():
    batch = dense_batch(6, np.array([[1] * 11]))
    for cfg in (LossConfig(dkw_norm="softmax"),):
        (loss, terms), grads = jax.jit(_vg, static_argnames="cfg")(*batch, cfg=cfg)
        assert all(np.isfinite(float(terms[k])) for k in TERM_NAMES)
        assert all(np.all(np.isfinite(np.asarray(g))) for g in grads)
        # one image: every softmax over images has one entry, so t2i and slra vanish
        assert abs(float(terms["t2i"])) < 1e-12 and abs(float(terms["slra"])) < 1e-12
        assert float(terms["i2t"]) > 0


def _standard_clip(img, txt, s):
    """Symmetric CLIP (InfoNCE) with image i <-> text i, written directly."""
    logits = s * img @ txt.T
    n = len(img)
    i2t = -np.mean([logits[i, i] - np.log(np.sum(np.exp(logits[i]))) for i in range(n)])
    t2i = -np.mean([logits[i, i] - np.log(np.sum(np.exp(logits[:, i]))) for i in range(n)])
    return 0.5 * (i2t + t2i)


@pytest.mark.parametrize("positives", ["clip_raw", "clip_dagger"])
@pytest.mark.parametrize("mode", ["paper", "official"])
def test_clip_switch_is_standard_clip(positives, mode):
    masks = np.array([[1] * 11, [1, 1, 0, 1, 1, 0, 0, 0, 0, 0, 0], [1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0],
                      [1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0], [1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0], [1] * 11])
    img, patch, txt, owner, slot, valid, ls = dense_batch(8, masks)
    raw = np.asarray(txt).reshape(6, 11, -1)[:, 0]
    want = _standard_clip(np.asarray(img), raw, math.exp(float(ls)))
    for slra, dkw in [(False, False), (True, True)]:  # no subtext rows exist under clip positives
        cfg = LossConfig(mode=mode, positives=positives, slra=slra, dkw=dkw)
        loss, terms = make_loss(LossInputs(img, patch, txt, owner, slot, valid, ls), cfg)
        np.testing.assert_allclose(float(loss), want, rtol=1e-12)
        assert float(terms["slra"]) == 0.0
    if mode == "paper":  # any row order gives the same value; no patch embeddings are needed
        perm = np.random.default_rng(9).permutation(txt.shape[0])
        loss, _ = make_loss(LossInputs(img, None, txt[perm], owner[perm], slot[perm], valid[perm], ls),
                            LossConfig(positives=positives))
        np.testing.assert_allclose(float(loss), want, rtol=1e-12)


def test_slra_grad_to_raw_switch():
    batch = dense_batch(10, MIXED)
    img, patch, txt, owner, slot, valid, ls = batch
    raw_rows = np.asarray((slot == 0) & valid)
    other = ~raw_rows
    g_mkcl = _value_and_grads(batch, LossConfig(slra=False))[2][2]
    g_on = _value_and_grads(batch, LossConfig(slra_grad_to_raw=True))[2][2]
    g_off = _value_and_grads(batch, LossConfig(slra_grad_to_raw=False))[2][2]
    # off: the raw rows get exactly the MKCL gradient (slra reaches them only via the patch weights)
    np.testing.assert_allclose(np.asarray(g_off)[raw_rows], np.asarray(g_mkcl)[raw_rows], rtol=1e-12, atol=1e-14)
    # on: the slra path adds to the raw rows
    assert np.abs(np.asarray(g_on - g_mkcl)[raw_rows]).max() > 1e-4
    # the subtext rows' gradients are unaffected by the switch
    np.testing.assert_allclose(np.asarray(g_off)[other], np.asarray(g_on)[other], rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("mode", ["paper", "official"])
def test_jit_matches_eager(mode):
    batch = dense_batch(11, MIXED)
    cfg = LossConfig(mode=mode, sigma=0.0 if mode == "official" else 0.3)
    img, patch, txt, owner, slot, valid, ls = batch

    def f(a, p, t, o, s_, v, l):
        return make_loss(LossInputs(a, p, t, o, s_, v, l), cfg)

    eager = jax.value_and_grad(f, argnums=(0, 1, 2, 6), has_aux=True)(*batch)
    # loss and gradients as one ahead-of-time compiled XLA executable
    compiled = jax.jit(jax.value_and_grad(f, argnums=(0, 1, 2, 6), has_aux=True)).lower(*batch).compile()
    jitted = compiled(*batch)
    (l1, t1), g1 = eager
    (l2, t2), g2 = jitted
    for k in TERM_NAMES:
        np.testing.assert_allclose(float(t2[k]), float(t1[k]), rtol=1e-12, atol=1e-14, err_msg=k)
    for a, b in zip(g1, g2):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-10, atol=1e-13)


def test_table3_rows_are_ordered_configs():
    assert TABLE3["make"] == LossConfig()
    assert not TABLE3["mkcl"].slra and TABLE3["mkcl+slra"].slra and not TABLE3["mkcl+slra"].dkw
    with pytest.raises(ValueError):
        LossConfig(positives="everything")
    with pytest.raises(ValueError):
        LossConfig(sigma=-0.1)
