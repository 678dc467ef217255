"""Optimizer rules, schedule, and the jitted train step (single device and 8 simulated CPU devices)."""

import json
import math
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from conftest import xla_flags
from make_jax.losses import LossConfig, LossInputs, make_loss
from make_jax.models import create_model, get_model_config
from make_jax.models.clip import LOGIT_SCALE_MAX
from make_jax.train.optimizer import decay_mask, make_optimizer, path_name, warmup_cosine
from make_jax.train.step import (ModelFunctions, forward_loss, init_train_state, jit_train_step, make_mesh,
                                 make_train_step)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# CLIP's normalisation (docs/data.md), in torchvision's float32 order: x / 255, then (x - mean) / std.
CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]


def _params(size="tiny"):
    model = create_model(get_model_config(size))
    return model, ModelFunctions(model).params(model)


def test_decay_mask_is_the_spec_rank_rule():
    # docs/training.md: decay every tensor with >= 2 dims *per layer* (blocks are stacked on a leading layer axis here),
    # none on LayerNorm, biases, class embedding, logit_scale.
    _, params = _params()
    mask = decay_mask(params)
    seen = 0
    for (path, leaf), (_, m) in zip(jax.tree_util.tree_leaves_with_path(params),
                                    jax.tree_util.tree_leaves_with_path(mask)):
        name = path_name(path)
        per_layer_ndim = leaf.ndim - (1 if "/blocks/" in name else 0)
        assert m == (per_layer_ndim >= 2), name
        seen += 1
    assert seen == 38
    names = {path_name(p) for p, m in jax.tree_util.tree_leaves_with_path(mask) if m}
    for must in ("visual/conv1", "visual/positional_embedding", "text/positional_embedding",
                 "text/token_embedding", "visual/proj", "text/text_projection"):
        assert must in names


def test_schedule_matches_open_clip_cosine_lr():
    lr, warm, total = 1e-4, 10, 110
    sched = warmup_cosine(lr, warm, total)
    for step in range(total + 5):
        if step < warm:
            want = lr * (step + 1) / warm
        else:
            e = min(step - warm, total - warm)
            want = 0.5 * (1 + math.cos(math.pi * e / (total - warm))) * lr
        assert float(sched(step)) == pytest.approx(want, rel=1e-5, abs=1e-6 * lr)
    assert float(sched(warm + (total - warm) // 2)) == pytest.approx(lr / 2, rel=1e-5)
    assert float(sched(total)) == pytest.approx(0.0, abs=1e-12)


def test_adamw_decays_only_masked_parameters():
    _, params = _params()
    opt, _ = make_optimizer(params, lr=1e-2, warmup_steps=1, total_steps=10, weight_decay=0.1)
    zero = jax.tree.map(jnp.zeros_like, params)
    # one jitted program rather than optax op by op: the same update, compiled once
    updates = jax.jit(lambda g, p: opt.update(g, opt.init(p), p)[0])(zero, params)
    mask = decay_mask(params)
    lr0 = 1e-2 * 1 / 1  # schedule(0) with warmup 1
    for (path, u), p, m in zip(jax.tree_util.tree_leaves_with_path(updates), jax.tree.leaves(params),
                               jax.tree.leaves(mask)):
        if m:  # decoupled decay: -lr * wd * p
            np.testing.assert_allclose(u, -lr0 * 0.1 * np.asarray(p), rtol=1e-5, atol=1e-12,
                                       err_msg=path_name(path))
        else:
            assert not np.any(np.asarray(u)), path_name(path)


def _batch(b=8, n=11, length=12, size=32, seed=0):
    rng = np.random.default_rng(seed)
    ids = np.zeros((b, n, length), np.int32)
    ids[:, :, 0] = 49406
    ids[:, :, 1:6] = rng.integers(1, 4000, (b, n, 5))
    ids[:, :, 6] = 49407
    valid = rng.random((b, n)) < 0.6
    valid[:, 0] = True
    valid[1, 3:] = False  # an image without subtexts
    valid[2, 1] = False   # an image without disease text
    return {"images": rng.integers(0, 256, (b, size, size, 3)).astype(np.uint8), "text_ids": ids,
            "text_valid": valid}


def test_train_step_matches_manual_update_and_clamps_logit_scale():
    model = create_model(get_model_config("tiny"), seed=5)
    fns = ModelFunctions(model)
    params0 = fns.params(model)
    params0["logit_scale"] = jnp.asarray(LOGIT_SCALE_MAX + 0.5, jnp.float32)  # one Adam step (±lr) stays past it
    # Plain SGD: the update is linear in the gradient, so jit-vs-eager rounding stays at float32 level (Adam's
    # first step, g/|g|, would amplify it for near-zero gradients). AdamW's own wiring is tested above.
    sched = optax.constant_schedule(1e-2)
    opt = optax.sgd(sched)
    state = init_train_state(model, opt)[1]
    state.params = params0
    state.opt_state = opt.init(params0)
    batch = _batch()
    loss_config = LossConfig()

    # Manual reference of one step, not through the step's own batch reader (train/forward.py): images
    # normalised with the CLIP constants written here, every (image, slot) text encoded, the loss given the
    # dense layout's owners and slots built here; then the SGD update and the clamp.
    b, n, length = batch["text_ids"].shape
    images = (batch["images"].astype(np.float32) / np.float32(255) - np.float32(CLIP_MEAN)) / np.float32(CLIP_STD)
    owner = np.repeat(np.arange(b), n).astype(np.int32)  # row r = i * n + slot
    slot = np.tile(np.arange(n), b).astype(np.int32)

    def reference_loss(p):
        m = fns.merge(p)
        out = m.encode_image_and_patches(jnp.asarray(images))
        text = m.encode_text(jnp.asarray(batch["text_ids"].reshape(b * n, length)))
        inputs = LossInputs(out.embedding, out.patches, text, jnp.asarray(owner), jnp.asarray(slot),
                            jnp.asarray(batch["text_valid"].reshape(b * n)), m.logit_scale[...])
        return make_loss(inputs, loss_config)[0]

    loss_ref, grads = jax.jit(jax.value_and_grad(reference_loss))(params0)
    updates, _ = opt.update(grads, opt.init(params0), params0)
    want = optax.apply_updates(params0, updates)
    assert float(want["logit_scale"]) > LOGIT_SCALE_MAX  # so the clamp is exercised
    loss_ref = float(loss_ref)  # before the step donates params0

    step = jit_train_step(make_train_step(fns, opt, loss_config, sched), make_mesh(), state)
    new_state, metrics = step(state, batch)  # the step's own program
    assert int(new_state.step) == 1
    assert float(new_state.params["logit_scale"]) == pytest.approx(LOGIT_SCALE_MAX, abs=1e-6)
    # Two programs' float32 rounding, times lr: at most 2.9e-6 apart under the suite's XLA flags (1.6e-6 under
    # XLA's defaults), measured.
    for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(new_state.params), jax.tree.leaves(want)):
        if path_name(path) != "logit_scale":
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=4e-6, err_msg=path_name(path))
    assert float(metrics["loss"]) == pytest.approx(loss_ref, rel=1e-5)
    assert float(metrics["lr"]) == pytest.approx(1e-2, rel=1e-6)
    assert np.isfinite(float(metrics["grad_norm"])) and float(metrics["grad_norm"]) > 0


def test_clip_positives_encode_only_slot_zero():
    # The clip rows must give the same loss whether or not the unused slots hold garbage.
    model = create_model(get_model_config("tiny"), seed=6)
    batch = _batch()
    cfg = LossConfig(positives="clip_raw", slra=False, dkw=False)
    loss = nnx.jit(forward_loss, static_argnums=2)  # one program for both batches (eager: op by op)
    a = loss(model, batch, cfg)[0]
    noisy = dict(batch, text_ids=batch["text_ids"].copy())
    noisy["text_ids"][:, 1:, 1:6] = 7
    b = loss(model, noisy, cfg)[0]
    assert float(a) == pytest.approx(float(b), rel=1e-7)
    # and it is the standard symmetric CLIP loss over slot 0.
    image = nnx.jit(lambda m, x: m.encode_image_and_patches(x).embedding)(model, _norm(batch["images"]))
    t = nnx.jit(lambda m, ids: m.encode_text(ids))(model, batch["text_ids"][:, 0])
    logits = np.exp(float(model.logit_scale[...])) * np.asarray(image, np.float64) @ np.asarray(t, np.float64).T
    ls = lambda x: x - np.log(np.exp(x - x.max(1, keepdims=True)).sum(1, keepdims=True)) - x.max(1, keepdims=True)
    want = -0.5 * (np.mean(np.diag(ls(logits))) + np.mean(np.diag(ls(logits.T))))
    assert float(a) == pytest.approx(want, rel=1e-4)


def _norm(images):
    return (images.astype(np.float32) / np.float32(255) - np.float32(CLIP_MEAN)) / np.float32(CLIP_STD)


_SHARDED = textwrap.dedent("""
    import json, sys
    import jax, numpy as np
    sys.path[:0] = [{repo!r}, {repo!r} + "/tests"]  # tests/ for the conftest that test_train_step imports
    from tests.test_train_step import _batch
    from make_jax.losses import LossConfig, LossInputs, make_loss
    from make_jax.models import create_model, get_model_config
    from make_jax.train.step import init_train_state, jit_train_step, make_mesh, make_train_step, replicated
    import optax
    for ndev in (1, 8):
        model = create_model(get_model_config("tiny"), seed=7)
        # SGD: updates linear in the gradient, so a different reduction order across devices stays at float32
        # rounding (Adam's first step, g/|g|, would amplify it on near-zero gradients).
        sched = optax.constant_schedule(1e-2)
        opt = optax.sgd(sched)
        fns, state = init_train_state(model, opt)
        mesh = make_mesh(jax.devices()[:ndev])
        # Placed as the step returns it (replicated on the mesh), as the training loop does: otherwise the second
        # call sees differently-sharded inputs and compiles the step a second time.
        state = jax.device_put(state, jax.tree.map(lambda _: replicated(mesh), state))
        step = jit_train_step(make_train_step(fns, opt, LossConfig(), sched), mesh, state)
        losses = []
        for i in range(2):
            state, m = step(state, _batch(seed=i))
            losses.append(float(m["loss"]))
        flat = [np.asarray(x).ravel() for x in jax.tree.leaves(state.params)]
        np.save({out!r} + f"/params_{{ndev}}.npy", np.concatenate(flat))
        print(json.dumps({{"n": mesh.devices.size, "losses": losses, "compiled": step._cache_size()}}))
""")


def test_eight_simulated_devices_match_one(tmp_path):
    # One process, both meshes: 8 simulated devices (and the suite's XLA flags: both runs compile alike).
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=xla_flags(8))
    proc = subprocess.run([sys.executable, "-c", _SHARDED.format(repo=REPO, out=str(tmp_path))],
                          capture_output=True, text=True, env=env, cwd=REPO, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = {}
    for line in proc.stdout.strip().splitlines()[-2:]:
        info = json.loads(line)
        assert info["compiled"] == 1  # one compilation for both steps
        results[info["n"]] = (info["losses"], np.load(tmp_path / f"params_{info['n']}.npy"))
    assert sorted(results) == [1, 8]
    np.testing.assert_allclose(results[8][0], results[1][0], rtol=1e-5)
    np.testing.assert_allclose(results[8][1], results[1][1], rtol=1e-5, atol=1e-6)
    assert not np.allclose(results[1][0][0], results[1][0][1])  # two different batches, two different losses
