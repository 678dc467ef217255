"""The optimizer's maths against a float64 AdamW written here from the update rule (no optax), plus the
logit_scale clamp and the epochs → steps count."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from make_jax.models.clip import LOGIT_SCALE_MAX
from make_jax.train.config import check_config, check_steps
from make_jax.train.optimizer import make_optimizer
from make_jax.train.step import TrainState, apply_gradients

# A parameter tree with the model's path names. Decayed by the spec's rule (matrices, conv, projections):
# written out by hand, not taken from the code's decay rules.
SHAPES = {
    "visual": {"conv1": (2, 3), "ln_pre": {"scale": (3,)}, "proj": (3, 2)},
    "text": {"transformer": {"blocks": {"mlp": {"c_fc": {"kernel": (2, 3, 4), "bias": (2, 4)}}}}},
    "logit_scale": (),
}
DECAYED = {"visual/conv1", "visual/proj", "text/transformer/blocks/mlp/c_fc/kernel"}


def _flat(tree, prefix=""):
    out = {}
    for k, v in tree.items():
        name = f"{prefix}{k}"
        out.update(_flat(v, name + "/") if isinstance(v, dict) else {name: v})
    return out


def _unflat(flat):
    tree = {}
    for name, v in flat.items():
        node = tree
        *parents, leaf = name.split("/")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = v
    return tree


def reference_adamw(params, grads_per_step, *, lr, warmup, total, b1, b2, eps, wd, clip):
    """AdamW in float64 from the update rule (Loshchilov & Hutter, decoupled decay; bias-corrected moments),
    with open_clip's warm-up + cosine learning rate and optional global-norm clipping of the raw gradient."""
    p = {k: np.asarray(v, np.float64) for k, v in params.items()}
    m = {k: np.zeros_like(v) for k, v in p.items()}
    v2 = {k: np.zeros_like(v) for k, v in p.items()}
    for t, g in enumerate(grads_per_step):  # t = 0, 1, ...: the step counter the schedule sees
        g = {k: np.asarray(x, np.float64) for k, x in g.items()}
        if clip:
            norm = math.sqrt(sum(float(np.sum(x * x)) for x in g.values()))
            if norm > clip:
                g = {k: x * clip / norm for k, x in g.items()}
        rate = lr * (t + 1) / warmup if t < warmup else \
            0.5 * (1 + math.cos(math.pi * (t - warmup) / (total - warmup))) * lr
        for k in p:
            m[k] = b1 * m[k] + (1 - b1) * g[k]
            v2[k] = b2 * v2[k] + (1 - b2) * g[k] ** 2
            m_hat = m[k] / (1 - b1 ** (t + 1))
            v_hat = v2[k] / (1 - b2 ** (t + 1))
            step = m_hat / (np.sqrt(v_hat) + eps)
            if k in DECAYED:
                step = step + wd * p[k]
            p[k] = p[k] - rate * step
    return p


@pytest.mark.parametrize("clip", [None, 0.5])
def test_adamw_matches_a_float64_reference_on_nonzero_gradients(clip):
    rng = np.random.default_rng(0)
    params = {k: rng.normal(size=s).astype(np.float32) for k, s in _flat(SHAPES).items()}
    # Gradients of a few units each: global norm ~ 5, so clip = 0.5 really rescales every step.
    grads = [{k: rng.normal(size=v.shape).astype(np.float32) for k, v in params.items()} for _ in range(4)]
    hyper = dict(lr=0.1, warmup=2, total=6, b1=0.9, b2=0.98, eps=1e-6, wd=0.1)
    want = reference_adamw(params, grads, clip=clip, **hyper)

    opt, _ = make_optimizer(_unflat({k: jnp.asarray(v) for k, v in params.items()}), lr=hyper["lr"],
                            warmup_steps=hyper["warmup"], total_steps=hyper["total"], b1=hyper["b1"], b2=hyper["b2"],
                            eps=hyper["eps"], weight_decay=hyper["wd"], grad_clip_norm=clip)
    p = _unflat({k: jnp.asarray(v) for k, v in params.items()})
    state = opt.init(p)

    @jax.jit  # one compilation instead of op-by-op dispatch of every optax primitive
    def step(g, state, p):
        updates, state = opt.update(g, state, p)
        return optax.apply_updates(p, updates), state

    for g in grads:
        p, state = step(_unflat({k: jnp.asarray(v) for k, v in g.items()}), state, p)
    got = _flat(p)
    for k in params:
        np.testing.assert_allclose(np.asarray(got[k], np.float64), want[k], rtol=2e-5, atol=2e-6, err_msg=k)
    # The step moved every parameter (the decay-free ones by Adam alone), so none of this compared zeros.
    assert all(np.min(np.abs(want[k] - params[k])) > 1e-3 for k in params)


def _state(logit_scale):
    params = {"w": jnp.ones((2,), jnp.float32), "logit_scale": jnp.asarray(logit_scale, jnp.float32)}
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=optax.sgd(1.0).init(params))


@pytest.mark.parametrize("start, grad, want", [
    (0.25, 1.0, 0.0),  # 0.25 - 1.0 = -0.75 -> clamped up to 0 (s = exp(0) = 1, never below)
    (0.25, -0.5, 0.75),  # inside [0, ln 100]: untouched
    (LOGIT_SCALE_MAX - 0.25, -1.0, LOGIT_SCALE_MAX),  # past ln 100 -> clamped down
])
def test_logit_scale_is_clamped_to_zero_and_ln_100_after_the_update(start, grad, want):
    state = _state(start)
    grads = {"w": jnp.zeros((2,), jnp.float32), "logit_scale": jnp.asarray(grad, jnp.float32)}
    new, metrics = apply_gradients(state, grads, {"loss": jnp.asarray(0.0)}, optax.sgd(1.0), None)
    assert float(new.params["logit_scale"]) == pytest.approx(want, abs=1e-6)
    assert float(metrics["logit_scale"]) == pytest.approx(math.exp(want), rel=1e-6)
    assert LOGIT_SCALE_MAX == pytest.approx(math.log(100.0), abs=1e-7)


def test_epochs_become_whole_steps_and_total_steps_wins():
    from configs.common import base_config

    def steps(c, n):
        return check_steps(check_config(c), n, device_count=1)

    c = base_config()
    c.total_steps, c.epochs, c.batch_size = 0, 2.5, 8
    assert steps(c, 100) == 31  # 2.5 epochs x 100 examples = 250 examples = 31 full batches of 8
    c.epochs = 15.0
    c.batch_size = 2048
    assert steps(c, 403_563) == 2955  # docs/training.md: 15 epochs of 403,563 pairs at 2048 ≈ 2,955 steps
    c.total_steps = 7
    assert steps(c, 100) == 7
    c.total_steps = 0
    with pytest.raises(ValueError, match="total_steps"):
        steps(c, None)

