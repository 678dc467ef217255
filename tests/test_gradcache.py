"""GradCache (make_jax.train.gradcache): the two-pass step gives the one-pass loss and parameter gradients for
1, 2 and 4 micro-batches, on dense and packed batches, and its step function is a drop-in for the dense step's.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from make_jax.losses import LossConfig
from make_jax.models.clip import LOGIT_SCALE_MAX
from make_jax.train.gradcache import gradcache_loss_and_grads, select_train_step
from make_jax.train.packing import PackConfig, pack_batch
from make_jax.train.step import TrainState, jit_train_step, make_mesh
from test_packing import (assert_same_grads, assert_same_terms, compiled, dense_value_and_grad, make_batch,
                          model_fns)


def gradcache_value_and_grad(batch, microbatches, loss_config=LossConfig()):
    fns, params = model_fns()
    f = lambda p, b: gradcache_loss_and_grads(fns, p, b, loss_config, microbatches)  # noqa: E731
    (loss, terms), grads = compiled(("gradcache", microbatches, loss_config), f, params, batch)(params, batch)
    return loss, terms, grads


def test_gradcache_with_one_microbatch_equals_one_pass():
    # (2 micro-batches: the packed and official-mode tests below; 4: the step test)
    batch = make_batch(7)
    loss, terms, grads = dense_value_and_grad(batch)
    g_loss, g_terms, g_grads = gradcache_value_and_grad(batch, 1)
    assert float(g_loss) == pytest.approx(float(loss), rel=1e-5)
    assert_same_terms(terms, g_terms)
    assert_same_grads(grads, g_grads)


def test_gradcache_equals_one_pass_on_packed_batches():
    # packed + dedup + two length groups at their own buckets, each group in two micro-batches, 4 images per
    # micro-batch; compared with the DENSE one-pass step
    batch = make_batch(8)
    config = PackConfig(row_budgets=(64,), unique_budgets=(64,), groups=(0.5, 0.5), multiple_of=2)
    packed, stats = pack_batch(batch, config)
    assert stats["dropped"] == 0 and stats["unique"] < stats["valid"]
    assert stats["buckets"][0] < stats["buckets"][1] == 32
    loss, terms, grads = dense_value_and_grad(batch)
    g_loss, g_terms, g_grads = gradcache_value_and_grad(packed, 2)
    assert float(g_loss) == pytest.approx(float(loss), rel=1e-5)
    assert_same_terms(terms, g_terms)
    assert_same_grads(grads, g_grads)


def recording_sgd(lr):
    """SGD whose state is the last gradient it received (so a test can read the step's gradients)."""
    return optax.GradientTransformation(
        lambda params: jax.tree.map(jnp.zeros_like, params),
        lambda g, state, params=None: (jax.tree.map(lambda x: -lr * x, g), g))


@pytest.mark.parametrize("microbatches,packed", [(4, False), (1, True)])
def test_selected_step_is_a_drop_in_for_the_dense_step(microbatches, packed):
    # select_train_step(microbatches=4) is GradCache on a dense batch; microbatches=1 the one-pass step, here on a
    # packed batch. Both jitted exactly as the loop jits the dense step.
    fns, params = model_fns()
    batch = make_batch(9)
    params = dict(params, logit_scale=jnp.asarray(LOGIT_SCALE_MAX + 0.5, jnp.float32))  # the clamp acts
    loss, terms, grads = dense_value_and_grad(batch, params=params)
    lr = 1e-3
    opt = recording_sgd(lr)
    # the step donates its state: give it copies, not the cached parameters other tests use
    state = TrainState(step=jnp.zeros((), jnp.int32), params=jax.tree.map(jnp.copy, params),
                       opt_state=opt.init(params))
    step_fn = select_train_step(fns, opt, LossConfig(), optax.constant_schedule(lr), microbatches=microbatches)
    config = PackConfig(row_budgets=(64,), unique_budgets=(48,), groups=(0.5, 0.25, 0.25), multiple_of=4)
    feed = pack_batch(batch, config)[0] if packed else batch
    step = jit_train_step(step_fn, make_mesh(jax.devices()[:1]), state)
    new_state, metrics = step(state, feed)
    assert int(new_state.step) == 1
    assert_same_grads(grads, new_state.opt_state)
    # the update is p - lr * (the step's own gradient), then the clamp
    for (path, a), g, p in zip(jax.tree_util.tree_leaves_with_path(new_state.params),
                               jax.tree.leaves(new_state.opt_state), jax.tree.leaves(params)):
        want = np.asarray(p) - lr * np.asarray(g)
        if jax.tree_util.keystr(path) == "['logit_scale']":
            want = np.clip(want, 0.0, LOGIT_SCALE_MAX)
        np.testing.assert_allclose(a, want, rtol=1e-6, atol=1e-6 * np.abs(want).max() + 1e-7)
    assert float(new_state.params["logit_scale"]) == pytest.approx(LOGIT_SCALE_MAX, abs=1e-6)
    assert_same_terms(terms, metrics)
    assert float(metrics["lr"]) == pytest.approx(lr)
    gnorm = np.sqrt(sum(np.sum(np.square(np.asarray(g, np.float64))) for g in jax.tree.leaves(grads)))
    assert float(metrics["grad_norm"]) == pytest.approx(gnorm, rel=1e-4)


def test_gradcache_official_mode_on_dense_batches():
    cfg = LossConfig(mode="official")
    batch = make_batch(10)
    loss, terms, grads = dense_value_and_grad(batch, cfg)
    g_loss, g_terms, g_grads = gradcache_value_and_grad(batch, 2, cfg)
    assert float(g_loss) == pytest.approx(float(loss), rel=1e-5)
    assert_same_terms(terms, g_terms)
    assert_same_grads(grads, g_grads)


def test_microbatches_must_divide_the_batch():
    fns, params = model_fns()
    with pytest.raises(ValueError, match="multiple of microbatches=3"):
        jax.eval_shape(lambda p, b: gradcache_loss_and_grads(fns, p, b, LossConfig(), 3), params, make_batch(0))
