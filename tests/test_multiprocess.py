"""Multi-process training on one machine: several JAX processes with simulated CPU devices, joined by
jax.distributed on 127.0.0.1 and exchanging data through gloo — the code path of several GPU hosts.

The training jobs themselves (2 processes x 2 devices trains like 1 process x 4 devices; faults) are in
tests/test_multiprocess_faults.py.
"""

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import job_env, synthderm_small_prepare
from make_jax.train.distributed import DistributedSetupError, heartbeat_timeout_s, job_from_environment
from make_jax.train.local_job import run_local_job, strip_flag

# The multi-process modules run on one worker, one training job at a time (`--dist loadgroup`;
# tests/test_multiprocess_faults.py says why).
pytestmark = pytest.mark.xdist_group("multiprocess")

REPO = Path(__file__).resolve().parents[1]


# ---- the job description from the environment (no JAX backend involved) ----------------------------------------

def test_job_from_environment():
    full = {"JAX_COORDINATOR_ADDRESS": "10.0.0.1:1234", "JAX_NUM_PROCESSES": "4", "JAX_PROCESS_ID": "3"}
    assert job_from_environment(full) == {"coordinator_address": "10.0.0.1:1234", "num_processes": 4,
                                          "process_id": 3}
    assert job_from_environment({}) is None
    assert job_from_environment({**full, "JAX_NUM_PROCESSES": "1", "JAX_PROCESS_ID": "0"}) is None
    assert job_from_environment({"SLURM_NTASKS": "8"}) == {}  # JAX's own SLURM detection
    assert job_from_environment({"SLURM_NTASKS": "1"}) is None  # a one-task allocation: nothing to join
    assert job_from_environment({"OMPI_COMM_WORLD_SIZE": "2"}) == {}
    with pytest.raises(DistributedSetupError, match="JAX_PROCESS_ID missing"):
        job_from_environment({k: v for k, v in full.items() if k != "JAX_PROCESS_ID"})
    with pytest.raises(DistributedSetupError, match=r"JAX_PROCESS_ID=4 is not in \[0, JAX_NUM_PROCESSES=4\)"):
        job_from_environment({**full, "JAX_PROCESS_ID": "4"})
    with pytest.raises(DistributedSetupError, match="must be integers"):
        job_from_environment({**full, "JAX_NUM_PROCESSES": "four"})
    assert heartbeat_timeout_s({}) == 60 and heartbeat_timeout_s({"MAKE_JAX_HEARTBEAT_TIMEOUT": "7"}) == 7
    with pytest.raises(DistributedSetupError, match="MAKE_JAX_HEARTBEAT_TIMEOUT"):
        heartbeat_timeout_s({"MAKE_JAX_HEARTBEAT_TIMEOUT": "0"})


def test_strip_flag():
    argv = ["--config", "configs/demo.py", "--local_processes=2", "--workdir", "w", "--local_processes", "3",
            "--config.batch_size=8"]
    assert strip_flag(argv, "local_processes") == ["--config", "configs/demo.py", "--workdir", "w",
                                                   "--config.batch_size=8"]


# ---- per-process input shards ---------------------------------------------------------------------------------

@pytest.mark.parametrize("count", [2, 4])
def test_process_shards_read_every_record_once_per_epoch(count):
    from make_jax.data.pipeline import Sampler

    n, global_batch, epochs = 37, 8, 3
    spe = n // global_batch
    local = global_batch // count
    shards = [Sampler(n, global_batch, p, count, True, 5, True) for p in range(count)]
    one = Sampler(n, global_batch, 0, 1, True, 5, True)
    cache = [{} for _ in range(count + 1)]
    for epoch in range(epochs):
        seen = []
        for step in range(epoch * spe, (epoch + 1) * spe):
            rows = []
            for p, s in enumerate(shards):
                got = [s.locate(step * local + r, cache[p]) for r in range(local)]
                assert all(e == epoch for e, _ in got)
                rows += [i for _, i in got]
            # The processes' batches, concatenated in process order, are the one-process global batch.
            assert rows == [one.locate(step * global_batch + r, cache[count])[1] for r in range(global_batch)]
            seen += rows
        # Each record at most once per epoch, and exactly the epoch's first spe*G records of its permutation.
        assert len(seen) == len(set(seen)) == spe * global_batch
        perm = np.random.default_rng([5, epoch, 0x5EED_0001]).permutation(n)  # the documented epoch order
        assert sorted(seen) == sorted(perm[:spe * global_batch].tolist())


# ---- the local launcher -------------------------------------------------------------------------------------

def test_local_job_passes_the_job_variables_and_stops_the_others_when_one_fails(capfd):
    script = textwrap.dedent("""
        import os, sys, time
        i = int(os.environ["JAX_PROCESS_ID"])
        print("job", os.environ["JAX_COORDINATOR_ADDRESS"], os.environ["JAX_NUM_PROCESSES"], i, os.getpid(),
              flush=True)
        if i == 1:
            time.sleep(0.5)
            sys.exit(3)
        time.sleep(120)
    """)
    t0 = time.monotonic()
    status = run_local_job([sys.executable, "-c", script], 3, grace_s=2.0)
    elapsed = time.monotonic() - t0
    out = capfd.readouterr().out
    assert status == 3
    assert elapsed < 30, f"the other processes were not stopped ({elapsed:.0f} s)"
    lines = [ln for ln in out.splitlines() if " job " in ln]
    assert sorted(ln.split()[0] for ln in lines) == ["[p0]", "[p1]", "[p2]"]
    addresses = {ln.split()[2] for ln in lines}
    assert len(addresses) == 1 and next(iter(addresses)).startswith("127.0.0.1:")
    assert all(ln.split()[3] == "3" and ln.split()[4] == ln.split()[0][2] for ln in lines)
    assert "[launch] process 1 of 3 exited with status 3; stopping the others" in out
    for ln in lines:  # stopped and reaped: no such process any more
        with pytest.raises(ProcessLookupError):
            os.kill(int(ln.split()[5]), 0)


def test_local_job_succeeds_when_all_succeed(capfd):
    assert run_local_job([sys.executable, "-c", "print('hi')"], 2) == 0
    assert sorted(capfd.readouterr().out.split()) == ["[p0]", "[p1]", "hi", "hi"]


def test_host_agreement_waits_longer_than_gloo_would():
    """`broadcast_json` and `barrier` wait for a process more than 30 s behind: process 0 preparing the data, or
    evaluating while the others wait at the end. Through device collectives (gloo) process 1 would fail after
    30 s (`Gloo context initialization failed: DEADLINE_EXCEEDED`); through the coordination service it waits.
    The two cases are two 2-process jobs run side by side (they mostly sleep)."""
    script = textwrap.dedent("""
        import json, sys, time
        from make_jax.train.distributed import barrier, broadcast_json, initialize_from_environment
        initialize_from_environment()
        import jax
        me = jax.process_index()
        if sys.argv[1] == "broadcast":  # process 1 waits in both calls while process 0 sleeps
            if me == 0:
                time.sleep(35)
            value = broadcast_json({"records": "/data/derm1m", "sizes": [3, 4]} if me == 0 else None)
            second = broadcast_json(7 if me == 0 else None)
            print("agreed", json.dumps([value, second]), flush=True)
        else:  # process 0 waits at the barrier while process 1 sleeps
            if me == 1:
                time.sleep(35)
            t0 = time.monotonic()
            barrier("end")
            print("met after", "more" if time.monotonic() - t0 > 30 else "less", "than 30 s", flush=True)
    """)
    launcher = ("import sys; from make_jax.train.local_job import run_local_job; "
                "sys.exit(run_local_job(sys.argv[1:], 2))")
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO))
    jobs = {case: subprocess.Popen([sys.executable, "-c", launcher, sys.executable, "-c", script, case], env=env,
                                   stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                   start_new_session=True)  # its own group: a hang is ended with its processes
            for case in ("broadcast", "barrier")}
    deadline = time.monotonic() + 300
    try:
        out = {case: job.communicate(timeout=max(1.0, deadline - time.monotonic()))[0] for case, job in jobs.items()}
    finally:
        for job in jobs.values():
            if job.poll() is None:
                os.killpg(job.pid, signal.SIGKILL)
                job.wait()
    for case, job in jobs.items():
        assert job.returncode == 0, out[case][-3000:]
    lines = sorted(ln for ln in out["broadcast"].splitlines() if " agreed " in ln)
    assert lines == ['[p0] agreed [{"records": "/data/derm1m", "sizes": [3, 4]}, 7]',
                     '[p1] agreed [{"records": "/data/derm1m", "sizes": [3, 4]}, 7]']
    assert "[p0] met after more than 30 s" in out["barrier"].splitlines(), out["barrier"][-3000:]
    assert "[p1] met after less than 30 s" in out["barrier"].splitlines(), out["barrier"][-3000:]


# ---- a 2-process training command refused: the persistent compilation cache on CPU -------------------------

def _launch(workdir: Path, root: Path, *, env_extra: dict):
    """`launch.py --local_processes=2` on the demo config, 1 step, SynthDerm prepared at `root` (process 0 prepares,
    the others wait for it), 1 simulated device per process."""
    env = job_env(1, MAKE_JAX_HEARTBEAT_TIMEOUT="20", **env_extra)
    cmd = [sys.executable, "launch.py", "--config", "configs/demo.py", "--workdir", str(workdir),
           *(f"--config.prepare.synthderm.{k}={v}" for k, v in synthderm_small_prepare(root).items()),
           "--config.total_steps=1", "--config.batch_size=8", "--config.data.context_length=16",
           "--config.evals.zeroshot.every=0", f"--config.evals.zeroshot.csv={root / 'zeroshot' / 'test.csv'}",
           f"--config.evals.zeroshot.classes={root / 'zeroshot' / 'classnames.json'}",
           f"--config.evals.concepts.data_dir={root / 'skincon'}",
           f"--config.evals.retrieval.csv={root / 'retrieval' / 'retrieval.csv'}",
           "--config.progress=False", "--config.tensorboard=False", "--local_processes=2"]
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


def test_cpu_cache_conflict_by_platform_fsdp_processes_and_cache():
    from make_jax.train.sharding import cpu_cache_conflict

    fsdp = ("config.mesh.fsdp=4 on CPU devices with JAX's persistent compilation cache on (/c): XLA:CPU programs "
            "loaded from it deadlock in the fsdp step's collectives (docs/training.md); set "
            "JAX_ENABLE_COMPILATION_CACHE=false, or fsdp=1")
    procs = "3 processes on CPU devices with JAX's persistent compilation cache on (/c): only process 0 finds"
    assert cpu_cache_conflict("cpu", 4, 1, "/c") == fsdp
    # one reason at a time, the fsdp one first; fsdp=1 would not help several processes
    assert cpu_cache_conflict("cpu", 4, 3, "/c") == fsdp.removesuffix(", or fsdp=1")
    assert cpu_cache_conflict("cpu", 1, 3, "/c").startswith(procs)
    assert cpu_cache_conflict("cpu", 1, 1, "/c") is None
    for platform, f, n in (("gpu", 4, 3), ("tpu", 1, 2)):
        assert cpu_cache_conflict(platform, f, n, "/c") is None
    for f, n in ((4, 1), (1, 3), (4, 3)):
        assert cpu_cache_conflict("cpu", f, n, None) is None  # the cache is off


def test_several_cpu_processes_with_the_compilation_cache_are_refused(synthderm_small, tmp_path):
    """Process 0 would load from the cache what the others compile, and gloo gives up on them after 30 s
    (make_jax/train/sharding.py cpu_cache_conflict): every process refuses, in one line, before training."""
    cache = tmp_path / "jax-cache"
    proc = _launch(tmp_path / "run", synthderm_small[0],
                   env_extra={"JAX_ENABLE_COMPILATION_CACHE": "true", "JAX_COMPILATION_CACHE_DIR": str(cache)})
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2, out[-4000:]  # launch.py's status for a refused config
    line = (f"launch.py: error: 2 processes on CPU devices with JAX's persistent compilation cache on ({cache}): "
            "only process 0 finds its programs there (on CPU the others' cache keys differ), so it reaches each "
            "collective far ahead of them and gloo gives up after 30 s (docs/training.md); set "
            "JAX_ENABLE_COMPILATION_CACHE=false for every process")
    assert f"[p0] {line}" in out.splitlines() and f"[p1] {line}" in out.splitlines(), out[-4000:]
    assert "Traceback" not in out
    assert not (tmp_path / "run" / "checkpoints").exists()
