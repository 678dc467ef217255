"""Official mode (docs/objectives.md §5) against the public PyTorch code's outputs (golden file) and an
independent loop-based numpy transcription of what that code computes."""

import math
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import central_difference
from make_jax.losses import (
    LossConfig,
    LossInputs,
    dense_layout,
    make_loss,
    official_dkw_weights,
    official_knowledge_embedding,
    official_loss_from_ek,
)

GOLDEN = Path(__file__).parent / "golden" / "make_official_golden.npz"


@pytest.fixture(autouse=True, scope="module")
def _x64():
    with jax.enable_x64(True):  # float64 for this module only (jax >= 0.10 context manager)
        yield


@pytest.fixture(scope="module")
def golden():
    with np.load(GOLDEN) as d:
        return {k: d[k] for k in d.files}


# ----------------------------------------------------------------------------- golden file
@pytest.mark.parametrize("dkw,prefix", [(True, "loss_w"), (False, "loss_now")])
def test_official_loss_reproduces_public_code(golden, dkw, prefix):
    assert float(golden["loss_lambda_m"]) == 1.0
    out = official_loss_from_ek(golden["loss_ek"], golden["loss_img"], golden["loss_txt_sample_major"],
                                golden["loss_mask"], golden["loss_scale"], lambda_m=float(golden["loss_lambda_m"]),
                                lambda_s=float(golden["loss_lambda_s"]), dkw=dkw)
    assert out["mkcl_times_lambda_m"].dtype == jnp.float64
    assert abs(float(out["mkcl_times_lambda_m"]) - float(golden[f"{prefix}_mkcl_times_lambda_m"])) < 1e-10
    assert abs(float(out["slra_times_lambda_s"]) - float(golden[f"{prefix}_slra_times_lambda_s"])) < 1e-10


def test_official_knowledge_embedding_reproduces_public_code(golden):
    assert int(golden["fwd_B"]) == 3 and int(golden["fwd_N"]) == 5 and float(golden["fwd_sigma"]) == 0.0
    ek = official_knowledge_embedding(golden["fwd_patch_embeddings_normalized"],
                                      golden["fwd_text_features_sample_major"], sigma=float(golden["fwd_sigma"]))
    assert ek.shape == golden["fwd_ek"].shape
    np.testing.assert_allclose(np.asarray(ek), golden["fwd_ek"], rtol=0, atol=1e-10)


def test_golden_weights_differ_from_paper_pairing(golden):
    """The public weights pair rows B+i with (3+k)B+i (docs/objectives.md §5), not image i's own texts."""
    txt, mask = golden["loss_txt_sample_major"], golden["loss_mask"]
    b, n = mask.shape
    w = np.asarray(official_dkw_weights(txt, mask))
    i = 2  # every text of image 2 is valid
    g_quirk = np.array([txt[b + i] @ txt[(3 + k) * b + i] for k in range(n - 3)])
    np.testing.assert_allclose(w[i, 3:], np.exp(g_quirk - g_quirk.max()), rtol=1e-12)
    g_own = np.array([txt[i * n + 1] @ txt[i * n + 3 + k] for k in range(n - 3)])
    assert not np.allclose(w[i, 3:], np.exp(g_own - g_own.max()))
    assert np.all(w[:, :3] == 1.0) and np.all(w[4, 3:] == 1.0)  # image 4: disease text masked


# ----------------------------------------------------------------------------- numpy transcription
def ref_official_ek(patch, txt, sigma):
    """weighted_patch_embeddings_sum: image i weighted by text ROW i, L2-normalised weights."""
    out = []
    for i in range(patch.shape[0]):
        z = [float(patch[i, p] @ txt[i]) for p in range(patch.shape[1])]
        z = [zz if zz >= sigma else 0.0 for zz in z]
        norm = max(math.sqrt(sum(zz * zz for zz in z)), 1e-12)
        out.append(sum(z[p] / norm * patch[i, p] for p in range(patch.shape[1])))
    return np.stack(out)


def ref_official_weights(txt, mask):
    b, n = mask.shape
    w = np.ones(b * n)
    for i in range(b):
        ks = [k for k in range(n - 3) if mask[i, 3 + k]]
        if not mask[i, 1] or not ks:
            continue  # disease masked: 1; no valid subtext: only ignored rows carry the weight
        g = {k: float(txt[b + i] @ txt[(3 + k) * b + i]) for k in ks}
        z = sum(math.exp(v) for v in g.values())
        p = {k: math.exp(g[k]) / z for k in ks}
        pmax = max(p.values())
        for k in range(n - 3):
            w[i * n + 3 + k] = p[k] / pmax if k in ks else 0.0
    return w


def _lse(xs):
    m = max(xs)
    return m + math.log(sum(math.exp(x - m) for x in xs))


def ref_official_loss(img, txt, ek, mask, s, dkw, lambda_s=0.7, w=None):
    b, n = mask.shape
    t = b * n
    if w is None:
        w = ref_official_weights(txt, mask) if dkw else np.ones(t)
    rows = [r for r in range(t) if mask[r // n, r % n]]
    num = den = 0.0
    for r in rows:  # every text, valid or not, is a column of the softmax
        i = r // n
        num += w[r] * (_lse([s * float(img[i] @ txt[c]) for c in range(t)]) - s * float(img[i] @ txt[r]))
        den += w[r]
    i2t = num / den
    num = den = 0.0
    for r in rows:
        if r < b:  # label_sgl[:B] = -100
            continue
        i = r // n
        num += w[r] * (_lse([s * float(ek[i] @ txt[c]) for c in range(t)]) - s * float(ek[i] @ txt[r]))
        den += w[r]
    slra = num / den if den > 0 else 0.0
    t2i = np.mean([_lse([s * float(txt[r] @ img[j]) for j in range(b)]) - s * float(txt[r] @ img[r // n])
                   for r in rows])
    mkcl = 0.5 * (i2t + t2i)
    return {"mkcl": mkcl, "slra": slra, "i2t": i2t, "t2i": t2i, "loss": mkcl + lambda_s * slra}


def test_numpy_transcription_reproduces_golden(golden):
    """The loop transcription used below is itself checked against the public code's numbers."""
    for dkw, prefix in [(True, "loss_w"), (False, "loss_now")]:
        r = ref_official_loss(golden["loss_img"], golden["loss_txt_sample_major"], golden["loss_ek"],
                              golden["loss_mask"], 100.0, dkw)
        assert abs(r["mkcl"] - golden[f"{prefix}_mkcl_times_lambda_m"]) < 1e-10
        assert abs(0.7 * r["slra"] - golden[f"{prefix}_slra_times_lambda_s"]) < 1e-10
    ek = ref_official_ek(golden["fwd_patch_embeddings_normalized"], golden["fwd_text_features_sample_major"], 0.0)
    np.testing.assert_allclose(ek, golden["fwd_ek"], atol=1e-10)


FWD_MASK = np.array([[1, 1, 1, 1, 1], [1, 0, 1, 1, 1], [1, 1, 0, 0, 1]])


@pytest.mark.parametrize("dkw", [True, False])
def test_make_loss_official_mode_on_forward_example(golden, dkw):
    patch = golden["fwd_patch_embeddings_normalized"]
    txt = golden["fwd_text_features_sample_major"]
    img = golden["fwd_image_features"]
    b, n = 3, 5
    owner, slot = dense_layout(b, n)
    cfg = LossConfig(mode="official", dkw=dkw)
    valid = jnp.asarray(FWD_MASK.reshape(-1).astype(bool))
    loss, terms = make_loss(LossInputs(img, patch, txt, owner, slot, valid, jnp.log(100.0)), cfg)
    want = ref_official_loss(img, txt, golden["fwd_ek"], FWD_MASK, 100.0, dkw)
    for k in ("loss", "mkcl", "slra", "i2t", "t2i"):
        assert abs(float(terms[k]) - want[k]) < 1e-10, k
    if dkw:
        w = ref_official_weights(txt, FWD_MASK).reshape(b, n)
        sub = w[:, 3:][FWD_MASK[:, 3:] > 0]
        np.testing.assert_allclose([float(terms["dkw_mean"]), float(terms["dkw_std"])], [sub.mean(), sub.std()],
                                   rtol=1e-12)
        assert sub.std() > 0


def test_official_knowledge_positives_drop_subtext_slots(golden):
    """positives='knowledge' in official mode = the public code run on a 3-slot layout."""
    patch = golden["fwd_patch_embeddings_normalized"]
    txt = golden["fwd_text_features_sample_major"]
    img = golden["fwd_image_features"]
    owner, slot = dense_layout(3, 5)
    valid = jnp.asarray(FWD_MASK.reshape(-1).astype(bool))
    loss, terms = make_loss(LossInputs(img, patch, txt, owner, slot, valid, jnp.log(50.0)),
                            LossConfig(mode="official", positives="knowledge", dkw=False))
    txt3 = txt.reshape(3, 5, -1)[:, :3].reshape(9, -1)
    want = ref_official_loss(img, txt3, ref_official_ek(patch, txt3, 0.0), FWD_MASK[:, :3], 50.0, False)
    assert abs(float(loss) - want["loss"]) < 1e-10
    with pytest.raises(ValueError):
        make_loss(LossInputs(img, patch, txt, owner, slot, valid, jnp.log(50.0)),
                  LossConfig(mode="official", positives="knowledge"))
    with pytest.raises(ValueError):  # official mode refuses a non-dense layout it can see
        make_loss(LossInputs(img, patch, txt, owner[::-1], slot[::-1], valid, jnp.log(50.0)),
                  LossConfig(mode="official"))


# ----------------------------------------------------------------------------- gradients
GRAD_MASK = np.array([
    [1] * 11,
    [1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0],
    [1, 1, 0, 1, 1, 1, 0, 0, 0, 0, 0],
    [0, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0],
    [1, 0, 1, 1, 1, 1, 0, 0, 0, 0, 0],
    [1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0],
])



@pytest.mark.parametrize("sigma", [0.0, 0.2])
def test_official_gradients_match_finite_differences(sigma):
    """Central differences of the numpy transcription (weights frozen: detached in the public code),
    on 12 random coordinates per argument and along random directions."""
    rng = np.random.default_rng(21)
    b, n, p, d = 6, 11, 5, 8
    unit = lambda x: x / np.linalg.norm(x, axis=-1, keepdims=True)  # noqa: E731
    img = unit(rng.normal(size=(b, d)))
    txt = unit(rng.normal(size=(b * n, d)))
    patch = unit(rng.normal(size=(b, p, d)) + 0.7 * txt[:b, None, :])
    ls = np.array(math.log(8.0))
    mask = GRAD_MASK
    for i in range(b):  # finite differences need z away from the threshold
        assert np.min(np.abs(patch[i] @ txt[i] - sigma)) > 1e-3
    cfg = LossConfig(mode="official", sigma=sigma)
    w0 = ref_official_weights(txt, mask)
    assert np.unique(np.round(w0, 12)).size > 3  # non-trivial weights
    args = [img, patch, txt, ls]

    def f(k, x):
        a = list(args)
        a[k] = x
        ek = ref_official_ek(a[1], a[2], sigma)
        return ref_official_loss(a[0], a[2], ek, mask, math.exp(float(a[3])), True, w=w0)["loss"]

    owner, slot = dense_layout(b, n)
    valid = jnp.asarray(mask.reshape(-1).astype(bool))
    # jitted: one program instead of op-by-op compilations (float64 either way)
    grads = jax.jit(jax.grad(lambda a, pp, t, l: make_loss(LossInputs(a, pp, t, owner, slot, valid, l), cfg)[0],
                             argnums=(0, 1, 2, 3)))(
        *(jnp.asarray(x) for x in args))
    grads = [np.asarray(g) for g in grads]
    for k, name in enumerate(["image", "patch", "text", "logit_scale"]):
        x = args[k]
        coords = list(np.ndindex(x.shape))
        if len(coords) > 12:
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
    assert np.abs(grads[1]).max() > 1e-3
    # invalid texts stay in the public code's denominators: they get gradient there
    assert np.abs(grads[2][~mask.reshape(-1).astype(bool)]).max() > 1e-6
