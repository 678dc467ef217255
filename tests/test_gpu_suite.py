"""The GPU suite cannot rot: its PyTorch peer computes our official loss, and its CPU dry run (the same code
path as on the GPU, tiny model, 2 steps a part) writes a complete, sane results.json that render.py reads."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import torch_peer  # noqa: E402

from make_jax.losses import (LossConfig, LossInputs, dense_layout, make_loss,  # noqa: E402
                             official_knowledge_embedding)

# One worker runs the whole module: its module-scoped `dry_run` (minutes) is then computed once, not once per
# xdist worker that gets one of its tests (`--dist loadgroup`, pyproject.toml).
pytestmark = pytest.mark.xdist_group("gpu_suite")

RUN_FIELDS = ("name", "framework", "mode", "model", "batch", "dtype", "images_per_s", "step_ms", "mfu",
              "peak_bytes", "compile_s", "steps", "error")


def _unit(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _random_batch(seed: int, b: int = 5, n: int = 11, p: int = 6, d: int = 16):
    rng = np.random.default_rng(seed)
    image = _unit(rng.normal(size=(b, d)))
    patches = _unit(rng.normal(size=(b, p, d)))
    text = _unit(rng.normal(size=(b * n, d)))
    mask = (rng.random((b, n)) < 0.7).astype(np.float64)
    mask[:, 0] = 1.0
    mask[0, 1] = 0.0  # an image whose disease text is missing: its subtext weights are 1
    mask[1, 1], mask[1, 3:] = 1.0, 0.0  # an image with a disease text and no valid subtext
    mask[2, 1], mask[2, 3:6] = 1.0, 1.0  # an image with distinct subtext weights
    return image, patches, text, mask


@pytest.mark.parametrize("seed,dkw", [(0, True), (1, True), (2, False)])
def test_peer_loss_equals_official_mode(seed, dkw):
    """The peer's loss (its e^k, expanded logits, host-built labels, class weights) equals make_loss in
    official mode on the same embeddings, float64."""
    image, patches, text, mask = _random_batch(seed)
    scale = 37.0
    t = lambda a: torch.from_numpy(np.asarray(a))  # noqa: E731
    ek = torch_peer.knowledge_embedding(t(patches), t(text))
    got = torch_peer.official_make_loss(ek, t(image), t(text), t(mask), torch.tensor(scale, dtype=torch.float64),
                                        dkw=dkw, host_loops=True)
    fast = torch_peer.official_make_loss(ek, t(image), t(text), t(mask), torch.tensor(scale, dtype=torch.float64),
                                         dkw=dkw, host_loops=False)
    b, n = mask.shape
    owner, slot = dense_layout(b, n)
    with jax.enable_x64(True):
        np.testing.assert_allclose(ek.numpy(), np.asarray(official_knowledge_embedding(patches, text)), atol=1e-12)
        inputs = LossInputs(image=image, patches=patches, text=text, owner=owner, slot=slot,
                            valid=jnp.asarray(mask.reshape(-1) > 0), logit_scale=jnp.log(scale))
        loss, terms = make_loss(inputs, LossConfig(mode="official", dkw=dkw))
        want = {"loss": float(loss), "mkcl": float(terms["mkcl"]), "slra": 0.7 * float(terms["slra"])}
    for k, v in want.items():
        assert abs(float(got[k]) - v) < 1e-10, (k, float(got[k]), v)
        assert abs(float(fast[k]) - v) < 1e-10, (k, float(fast[k]), v)


def test_peer_step_runs_and_learns_on_cpu():
    """The peer's training step (MiniCLIP, autocast bf16 on CPU, AdamW) lowers its own loss on a fixed batch."""
    torch.manual_seed(0)
    model = torch_peer.MiniCLIP()
    step = torch_peer.make_peer_step(model, "float32", "cpu", lr=1e-3, host_loops=False)
    rng = np.random.default_rng(0)
    images = torch.from_numpy(rng.normal(size=(4, 3, 32, 32)).astype(np.float32))
    ids = np.zeros((4, 11, 77), np.int64)
    ids[..., 0], ids[..., 1:6] = 49406, rng.integers(1, 49000, (4, 11, 5))
    ids[..., 6] = 49407
    mask = torch.from_numpy((rng.random((4, 11)) < 0.8).astype(np.float32))
    mask[:, :2] = 1
    losses = [float(step(images, torch.from_numpy(ids), mask)) for _ in range(6)]
    assert all(np.isfinite(losses)) and losses[-1] < losses[0] - 0.1, losses


# ---- the dry run ----------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("suite")
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONUNBUFFERED": "1"}
    # its own process group, so that a timeout also ends the part running under the orchestrator
    proc = subprocess.Popen([sys.executable, str(ROOT / "benchmarks" / "gpu_suite.py"), "--dry-run", "--out", str(out)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        output, _ = proc.communicate(timeout=3600)  # the dry run's own budget; minutes on an idle 2-core machine
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 0, output[-3000:]
    return out, json.loads((out / "results.json").read_text())


def test_dry_run_results_complete(dry_run):
    _, res = dry_run
    dev = res["device"]
    for key in ("platform", "device_kind", "jax", "torch", "cpus", "matmul_tflops", "date", "command"):
        assert key in dev, key
    assert dev["matmul_tflops"] > 0
    names = [r["name"] for r in res["runs"]]
    assert names == ["jax_packed", "jax_dense", "jax_gradcache", "torch_peer", "input_pipeline", "eval"], names
    for r in res["runs"]:
        assert set(RUN_FIELDS) <= set(r), (r["name"], set(RUN_FIELDS) - set(r))
        assert r["error"] is None, (r["name"], r["error"])
        assert r["images_per_s"] > 0 and r["steps"] >= 2, r
        assert r["framework"] in ("jax", "torch")
    steps = {r["name"]: r for r in res["runs"][:4]}
    for r in steps.values():
        assert r["step_ms"] > 0 and r["compile_s"] >= 0 and r["model"] == "tiny"
        # images/s and step time are one measurement: batch / step time
        assert abs(r["images_per_s"] * r["step_ms"] / 1e3 - r["batch"]) < 1e-6 * r["batch"]
        assert np.isfinite(r["final_loss"]) and r["final_loss"] > 0
    assert steps["jax_gradcache"]["microbatches"] == 2
    assert steps["torch_peer"]["framework"] == "torch"
    # the same synthetic batches, same model size: the packed step encodes fewer text FLOPs than the dense one
    assert steps["jax_packed"]["gflop_per_image"] < steps["jax_dense"]["gflop_per_image"]
    assert res["runs"][4]["mode"] == "input_pipeline" and res["runs"][4]["records"] > 0
    assert res["runs"][4]["prep_workers"] == 1  # the dry profile's SynthDerm is made in the part's own process
    assert res["runs"][5]["mode"] == "eval" and res["runs"][5]["images"] > 0


def test_render_rows(dry_run):
    out, res = dry_run
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "render.py"), str(out / "results.json")],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    text = proc.stdout
    assert res["device"]["device_kind"] in text and res["device"]["command"] in text
    for name in ("jax_packed", "jax_dense", "jax_gradcache", "torch_peer", "input_pipeline", "eval"):
        assert f"| {name} |" in text, name
    peer = next(r for r in res["runs"] if r["name"] == "torch_peer")["images_per_s"]
    packed = res["runs"][0]["images_per_s"]
    row = next(line for line in text.splitlines() if line.startswith("| jax_packed |"))
    assert f"| {packed / peer:.2f}× |" in row, row  # the packed row's ratio to the peer
