"""The SigLIP objective (Zhai et al. 2023, Eq. 1) against an independent float64 numpy reference, gradients by
central finite differences, and the model's learnable bias (init t = log 10, b = -10)."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from make_jax.losses import SIGLIP_ROWS, LossConfig, LossInputs, make_loss
from conftest import central_difference


@pytest.fixture(autouse=True, scope="module")
def _x64():
    with jax.enable_x64(True):
        yield


def ref_siglip(img, txt, owner, slot, valid, t, b, allowed=(0,)):
    """-1/B sum_i sum_j log sigmoid(label_ij (e^t x_i.y_j + b)), written with plain loops over pairs."""
    n_images = img.shape[0]
    texts = [r for r in range(len(owner)) if valid[r] and slot[r] in allowed]
    total = 0.0
    for i in range(n_images):
        for r in texts:
            z = math.exp(t) * float(np.dot(img[i], txt[r])) + b
            label = 1.0 if owner[r] == i else -1.0
            total += math.log1p(math.exp(-label * z))  # -log sigmoid(label z)
    return total / n_images


def _unit(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def make_batch(seed, n_images=5, n_slots=3, dim=6):
    """A shuffled flat batch: some images without a valid slot-0 text, garbage (NaN) in invalid rows."""
    rng = np.random.default_rng(seed)
    img = _unit(rng.normal(size=(n_images, dim)))
    owner = np.repeat(np.arange(n_images), n_slots)
    slot = np.tile(np.arange(n_slots), n_images)
    valid = rng.random(owner.size) < 0.7
    valid[slot == 0] = True
    valid[(owner == 1) & (slot == 0)] = False  # an image with no raw text: only a negative
    txt = _unit(rng.normal(size=(owner.size, dim)))
    perm = rng.permutation(owner.size)
    owner, slot, valid, txt = owner[perm], slot[perm], valid[perm], txt[perm]
    txt_garbage = np.where(valid[:, None], txt, np.nan)
    return img, txt, txt_garbage, owner, slot, valid


def _jax_loss(img, txt, owner, slot, valid, t, b, cfg):
    return make_loss(LossInputs(jnp.asarray(img), None, jnp.asarray(txt), jnp.asarray(owner), jnp.asarray(slot),
                                jnp.asarray(valid), jnp.asarray(t), logit_bias=jnp.asarray(b)), cfg)


@pytest.mark.parametrize("row", sorted(SIGLIP_ROWS))
@pytest.mark.parametrize("t,b", [(math.log(10.0), -10.0), (2.7, 1.3)])
def test_siglip_matches_reference(row, t, b):
    img, txt, garbage, owner, slot, valid = make_batch(0)
    cfg = SIGLIP_ROWS[row]
    expected = ref_siglip(img, txt, owner, slot, valid, t, b)
    loss, terms = _jax_loss(img, garbage, owner, slot, valid, t, b, cfg)
    assert float(loss) == pytest.approx(expected, rel=1e-12, abs=1e-12)
    assert float(terms["loss"]) == float(loss) and float(terms["slra"]) == 0.0


def test_siglip_with_one_text_per_image_is_the_paper_formula():
    """Dense B x B case against the paper's matrix form (labels 2I - 1), in numpy."""
    rng = np.random.default_rng(1)
    img, txt = _unit(rng.normal(size=(4, 5))), _unit(rng.normal(size=(4, 5)))
    t, b = 1.1, -2.0
    logits = np.exp(t) * img @ txt.T + b
    labels = 2 * np.eye(4) - 1
    expected = -np.sum(np.log(1 / (1 + np.exp(-labels * logits)))) / 4
    loss, _ = _jax_loss(img, txt, np.arange(4), np.zeros(4, int), np.ones(4, bool), t, b, SIGLIP_ROWS["siglip"])
    assert float(loss) == pytest.approx(expected, rel=1e-12)



def test_siglip_gradients_match_finite_differences():
    img, _, txt, owner, slot, valid = make_batch(2)  # NaN in the invalid rows: they must not leak anywhere
    t, b = 0.9, -1.5
    cfg = SIGLIP_ROWS["siglip"]
    grads = jax.grad(lambda a, x, tt, bb: _jax_loss(a, x, owner, slot, valid, tt, bb, cfg)[0],
                     argnums=(0, 1, 2, 3))(jnp.asarray(img), jnp.asarray(txt), jnp.asarray(t), jnp.asarray(b))
    txt = np.where(np.isnan(txt), 0.0, txt)  # the reference never reads those rows
    rng = np.random.default_rng(3)
    for k, x in enumerate((img, txt, np.asarray(t), np.asarray(b))):
        u = rng.normal(size=np.shape(x))
        args = [img, txt, t, b]

        def f(v, k=k):
            a = list(args)
            a[k] = v
            return ref_siglip(a[0], a[1], owner, slot, valid, float(a[2]), float(a[3]))

        fd = central_difference(f, np.asarray(x, np.float64), u)
        assert float(np.sum(np.asarray(grads[k]) * u)) == pytest.approx(fd, rel=1e-6, abs=1e-8), k
    # rows that are not texts (invalid, or slots other than 0) get exactly no gradient
    assert np.all(np.asarray(grads[1])[~(valid & (slot == 0))] == 0.0)


def test_sigmoid_objective_is_refused_outside_the_clip_rows():
    with pytest.raises(ValueError, match="sigmoid"):
        LossConfig(objective="sigmoid", positives="all", slra=False, dkw=False)
    with pytest.raises(ValueError, match="sigmoid"):
        LossConfig(objective="sigmoid", positives="clip_raw", slra=False, dkw=False, mode="official")
    img, txt, _, owner, slot, valid = make_batch(0)
    with pytest.raises(ValueError, match="logit_bias"):
        make_loss(LossInputs(jnp.asarray(img), None, jnp.asarray(txt), jnp.asarray(owner), jnp.asarray(slot),
                             jnp.asarray(valid), jnp.asarray(1.0)), SIGLIP_ROWS["siglip"])


def test_model_bias_exists_only_for_siglip_and_starts_at_siglip_init():
    from make_jax.models import create_model, get_model_config
    from make_jax.train.loop import model_config_from
    from configs.ablation import get_config

    plain = create_model(get_model_config("tiny"))
    assert not hasattr(plain, "logit_bias")
    cfg = model_config_from(get_config("row=siglip"))
    model = create_model(cfg)
    assert float(model.logit_scale[...]) == pytest.approx(math.log(10.0))
    assert float(model.logit_bias[...]) == -10.0
    assert model_config_from(get_config("row=clip")).init_logit_bias is None
