"""The numerics users train with: configs/common.py defaults to bfloat16 compute with rematerialisation. One train
step of the tiny model in that setting (one pass, and GradCache with 2 microbatches) against the float32 step
without remat on the same parameters and batch.

Tolerance (stated, not fitted): bfloat16 keeps 8 significant bits (relative rounding 2^-8 ≈ 0.4 %). Through
two tiny transformer towers and the loss, the loss is expected within 2 % and the gradient within 10 % in
relative L2 norm of the whole gradient vector (and every tensor's gradient pointing the same way: cosine > 0.95).
A float32 compute path (dtype ignored) would give differences near 1e-6 and is caught by the lower bound.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from make_jax.losses import LossConfig
from make_jax.models import create_model, get_model_config
from make_jax.train.gradcache import select_train_step
from make_jax.train.step import ModelFunctions, TrainState, jit_train_step, make_mesh
from test_train_step import _batch


def _recording_sgd(lr):
    """SGD whose state is the last gradient it was given (the step's gradient, read back after the step)."""
    return optax.GradientTransformation(lambda p: jax.tree.map(jnp.zeros_like, p),
                                        lambda g, state, params=None: (jax.tree.map(lambda x: -lr * x, g), g))


def _one_step(model_cfg, params, batch, microbatches):
    model = create_model(model_cfg, seed=0)
    fns = ModelFunctions(model)
    opt = _recording_sgd(1e-3)
    state = TrainState(step=jnp.zeros((), jnp.int32), params=jax.tree.map(jnp.copy, params),
                       opt_state=opt.init(params))
    step = jit_train_step(select_train_step(fns, opt, LossConfig(), microbatches=microbatches),
                          make_mesh(jax.devices()[:1]), state)
    new_state, metrics = step(state, batch)
    return float(metrics["loss"]), new_state.opt_state


def _flat(tree):
    return np.concatenate([np.asarray(x, np.float64).ravel() for x in jax.tree.leaves(tree)])


@pytest.fixture(scope="module")
def float32_step():
    cfg = get_model_config("tiny")
    params = ModelFunctions(create_model(cfg, seed=11)).params(create_model(cfg, seed=11))
    batch = _batch(seed=4)
    loss, grads = _one_step(cfg, params, batch, 1)
    return cfg, params, batch, loss, grads


@pytest.mark.parametrize("microbatches", [1, 2])
def test_bfloat16_remat_step_matches_float32_within_bf16_tolerance(float32_step, microbatches):
    cfg, params, batch, loss32, grads32 = float32_step
    shipped = cfg.replace(dtype="bfloat16", remat=True)
    loss16, grads16 = _one_step(shipped, params, batch, microbatches)
    assert abs(loss16 - loss32) / abs(loss32) < 2e-2
    g32, g16 = _flat(grads32), _flat(grads16)
    rel = np.linalg.norm(g16 - g32) / np.linalg.norm(g32)
    assert 1e-4 < rel < 0.1, rel  # bf16 really ran (not ~1e-6), and stays close
    for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(grads32), jax.tree.leaves(grads16)):
        a, b = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
        if np.linalg.norm(a) > 0:
            assert a @ b / (np.linalg.norm(a) * np.linalg.norm(b)) > 0.95, jax.tree_util.keystr(path)
        assert b.dtype == np.float64 and np.all(np.isfinite(b))
    for leaf in jax.tree.leaves(grads16):
        assert leaf.dtype == jnp.float32  # parameters and their gradients stay float32
