"""The training loop end to end on tiny SynthDerm records: resume after SIGKILL is bit-identical, a non-finite
loss stops the run naming the last good checkpoint, and the export opens with make_jax.load.

Kills are made deterministic by a driver that SIGKILLs its own process at a chosen point: after a given step,
or in the middle of a checkpoint save (at Orbax's commit rename, when every file of the step is written to its
temporary directory but the step is not committed).
"""

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]

DRIVER = textwrap.dedent("""
    import json, os, signal, sys
    sys.path.insert(0, {repo!r})
    kill = os.environ.get("KILL", "")
    if kill.startswith("save:"):
        # SIGKILL at the commit of step N's checkpoint: its files are written, the step is not yet committed.
        target = "/" + kill.split(":")[1] + ".orbax-checkpoint-tmp"
        real_rename = os.rename
        def rename(src, dst, *a, **k):
            if str(src).endswith(target):
                os.kill(os.getpid(), signal.SIGKILL)
            return real_rename(src, dst, *a, **k)
        os.rename = rename
    import numpy as np
    import jax
    from make_jax.train import loop
    if kill.startswith("step:"):
        n = int(kill.split(":")[1])
        real_batch, calls = loop._global_batch, [0]
        def global_batch(batch, sharding):
            calls[0] += 1
            if calls[0] > n - START:
                os.kill(os.getpid(), signal.SIGKILL)
            return real_batch(batch, sharding)
        loop._global_batch = global_batch
    from configs.demo import get_config
    config = get_config()
    config.update_from_flattened_dict(json.loads(os.environ["OVERRIDES"]))
    del config.prepare["synthderm"]
    config.evals = {{}}
    START = 0
    ckdir = os.path.join(sys.argv[1], "checkpoints")
    if os.path.isdir(ckdir):
        steps = [int(d) for d in os.listdir(ckdir) if d.isdigit()]
        START = max(steps) if steps else 0
    result = loop.train(config, sys.argv[1])
    flat = {{"/".join(str(getattr(k, "key", k)) for k in path): np.asarray(v)
            for path, v in jax.tree_util.tree_leaves_with_path(jax.device_get(result["final_params"]))}}
    np.savez(os.path.join(sys.argv[1], "final_params.npz"), **flat)
    print(json.dumps({{"step": result["step"], "export": result.get("export")}}))
""")


@pytest.fixture(scope="module")
def records(synthderm_small):
    return synthderm_small[1]


def _overrides(records, **extra):
    o = {"model.name": "tiny", "data.records": records, "data.image_size": 32, "data.context_length": 16,
         "data.workers": 0, "data.prefetch": 0, "batch_size": 8, "total_steps": 9, "checkpoint_every": 3,
         "log_every": 1, "progress": False, "tensorboard": False, "optim.warmup_steps": 2, "optim.lr": 1e-3,
         "keep_checkpoints": 10}
    o.update(extra)
    return o


def _run(workdir, overrides, kill=""):
    env = dict(os.environ, JAX_PLATFORMS="cpu", OVERRIDES=json.dumps(overrides), KILL=kill)
    driver = Path(workdir).parent / "driver.py"
    driver.write_text(DRIVER.format(repo=str(REPO)))
    return subprocess.run([sys.executable, str(driver), str(workdir)], capture_output=True, text=True, env=env,
                          cwd=REPO, timeout=900)


def _committed(workdir):
    d = Path(workdir) / "checkpoints"
    return sorted(int(p.name) for p in d.iterdir() if p.name.isdigit()) if d.is_dir() else []


def test_sigkill_anywhere_then_resume_is_bit_identical(records, tmp_path):
    overrides = _overrides(records)
    ref = tmp_path / "reference"
    proc = _run(ref, overrides)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1])["step"] == 9

    run = tmp_path / "interrupted"
    # 1. killed between checkpoints, after step 4 (checkpoint 3 is the last one).
    proc = _run(run, overrides, kill="step:4")
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-4000:]
    assert _committed(run) == [3]
    # 2. resumes from 3, killed in the middle of saving step 6: step 6 must not be committed.
    proc = _run(run, overrides, kill="save:6")
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-4000:]
    assert _committed(run) == [3]
    assert any(p.name.startswith("6.orbax-checkpoint-tmp") for p in (run / "checkpoints").iterdir())
    # 3. resumes from 3 again (the torn save is discarded), killed after step 8.
    proc = _run(run, overrides, kill="step:8")
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-4000:]
    assert _committed(run) == [3, 6]
    # 4. resumes from 6 and finishes.
    proc = _run(run, overrides)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert _committed(run) == [3, 6, 9]

    a = np.load(ref / "final_params.npz")
    b = np.load(run / "final_params.npz")
    assert sorted(a.files) == sorted(b.files) and len(a.files) == 38
    for k in a.files:
        assert np.array_equal(a[k], b[k]), k  # bit-identical
    # Training moved the parameters (the comparison is not between two untouched initialisations).
    from make_jax.models import create_model, get_model_config
    from make_jax.train.step import ModelFunctions
    model = create_model(get_model_config("tiny"), seed=0)
    init = ModelFunctions(model).params(model)
    assert not np.array_equal(np.asarray(init["visual"]["proj"]), a["visual/proj"])

    # The metrics log has one line per step of the uninterrupted run, and the export opens with make_jax.load.
    lines = [json.loads(l) for l in (ref / "metrics.jsonl").read_text().splitlines()]
    assert [l["step"] for l in lines] == list(range(1, 10))
    assert {"loss", "mkcl", "slra", "lr", "logit_scale", "images_per_s"} <= set(lines[-1])
    import make_jax
    enc = make_jax.load(ref / "export")
    np.testing.assert_allclose(enc.model.visual.proj[...], a["visual/proj"], rtol=0, atol=0)


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(records, tmp_path):
    work = tmp_path / "nan"
    proc = _run(work, _overrides(records, **{"optim.lr": 1e30, "optim.warmup_steps": 1, "checkpoint_every": 1,
                                              "total_steps": 6}))
    assert proc.returncode != 0
    assert "NonFiniteLossError" in proc.stderr and "non-finite loss at or before step" in proc.stderr
    kept = _committed(work)
    assert kept, proc.stderr[-3000:]
    assert f"checkpoints/{max(kept)}" in proc.stderr  # the message names the last good checkpoint, kept on disk
    assert not (work / "export").exists()
