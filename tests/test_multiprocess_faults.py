"""2-process training jobs: 2 JAX processes x 2 simulated CPU devices on 127.0.0.1 (gloo), the tiny model.

* The uninterrupted job trains like one process with 4 devices (and its final evaluations, on process 0 alone,
  agree).
* SIGKILL of every process mid-run, then the same command again → the job resumes from its last checkpoint and
  ends with the parameters of the uninterrupted job, bit for bit.
* SIGKILL (or a freeze, SIGSTOP: a host that vanished without closing its connections) of one process → the
  other stops within a bounded time with a message saying what happened, and the kept checkpoint is intact.

Every process compiles every program, so a job takes about a minute of both cores: the uninterrupted job is run
once (`uninterrupted`) and compared twice.

Faults are placed deterministically by a `sitecustomize` module on the training processes' PYTHONPATH (the
HOOK below): before step N+1's batch (`<action>@step:N`) or at the commit rename of step N's checkpoint
(`<action>@save:N`), the chosen processes write a marker file and then pause (the test SIGKILLs them), SIGKILL
themselves, or SIGSTOP themselves. Nothing in make_jax knows about it. The processes are started either by
`launch.py --local_processes=2` or directly with the JAX_* variables (the path of SLURM or several hosts).
"""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import exported_params, job_env
from make_jax.train.distributed import lost_peer_message
from make_jax.train.local_job import free_port, run_local_job

# The multi-process modules run on one worker, one training job at a time (`--dist loadgroup`, pyproject.toml): two
# 2-process training jobs at once would give each process about half a core of this 2-core machine, stretching the
# time a process waits for the other at a collective towards gloo's 30 s set-up limit. This module's uninterrupted
# job is also computed once.
pytestmark = pytest.mark.xdist_group("multiprocess")

REPO = Path(__file__).resolve().parents[1]

HEARTBEAT_S = 10  # MAKE_JAX_HEARTBEAT_TIMEOUT of these jobs
# How long the survivors of a fault may take to stop: the heartbeat timeout (the coordination service's
# detection of a silent process) plus a margin for a loaded 2-core machine. Measured with a load of ~9 on 2 cores:
# 0.2-1.0 s after a SIGKILL (the peer's sockets close, the next collective fails), 8.8-10.4 s after a SIGSTOP.
STOP_BOUND_S = HEARTBEAT_S + 50
START_TIMEOUT_S = 600  # for a fault point to be reached (startup and compilation on a loaded machine)

HOOK = textwrap.dedent('''
    """Test fault injection for tests/test_multiprocess_faults.py (inert unless MAKE_JAX_TEST_FAULT is set)."""
    import os

    FAULT = os.environ.get("MAKE_JAX_TEST_FAULT")
    ME = os.environ.get("JAX_PROCESS_ID")
    if FAULT and ME is not None and ME in os.environ.get("MAKE_JAX_TEST_FAULT_PROCESSES", "").split(","):
        import importlib.abc
        import importlib.util
        import signal
        import sys
        import time

        action, where = FAULT.split("@")
        kind, n = where.split(":")
        n = int(n)

        def fault():
            open(os.path.join(os.environ["MAKE_JAX_TEST_FAULT_DIR"], "p" + ME), "w").close()
            if action == "kill":
                os.kill(os.getpid(), signal.SIGKILL)
            elif action == "stop":
                os.kill(os.getpid(), signal.SIGSTOP)
            time.sleep(3600)  # "pause": the test kills us

        if kind == "save":  # Orbax commits a step by renaming its temporary directory
            target, real_rename = "/%d.orbax-checkpoint-tmp" % n, os.rename

            def rename(src, dst, *a, **k):
                if str(src).endswith(target):
                    fault()
                return real_rename(src, dst, *a, **k)

            os.rename = rename
        else:  # before the batch of step n + 1 (this run starts from scratch)
            class Finder(importlib.abc.MetaPathFinder):
                def find_spec(self, name, path, target=None):
                    if name != "make_jax.train.loop":
                        return None
                    sys.meta_path.remove(self)
                    spec = importlib.util.find_spec(name)
                    exec_module = spec.loader.exec_module

                    def patched(module):
                        exec_module(module)
                        real, calls = module._global_batch, [0]

                        def global_batch(batch, sharding):
                            calls[0] += 1
                            if calls[0] > n:
                                fault()
                            return real(batch, sharding)

                        module._global_batch = global_batch

                    spec.loader.exec_module = patched
                    return spec

            sys.meta_path.insert(0, Finder())
''')

CONFIG = textwrap.dedent('''
    from configs.demo import get_config as demo_config
    from configs.eval_synthderm import synthderm_evals


    def get_config():
        c = demo_config()
        del c.prepare["synthderm"]
        c.data.records = {records!r}
        c.data.image_size = 32
        c.data.context_length = 16
        c.data.prefetch = 0
        c.batch_size = 8
        c.total_steps = 6
        c.checkpoint_every = 2
        c.keep_checkpoints = 10
        c.log_every = 1
        c.optim.warmup_steps = 2
        # A small learning rate: the one-process comparison's tolerance (below) scales with it.
        c.optim.lr = 2e-5
        c.progress = False
        c.tensorboard = False
        c.evals = synthderm_evals({root!r})  # at the end only
        return c
''')


@pytest.fixture(scope="module")
def setup(synthderm_small, tmp_path_factory):
    """(config file, directory of the sitecustomize hook)."""
    base = tmp_path_factory.mktemp("faults")
    config = base / "faults_config.py"
    config.write_text(CONFIG.format(records=str(synthderm_small[1]), root=str(synthderm_small[0])))
    hook = base / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(HOOK)
    return config, hook


_STARTED: list = []  # every Job of the current test, stopped at its end whatever happened


@pytest.fixture(autouse=True)
def _no_job_outlives_its_test():
    yield
    while _STARTED:
        _STARTED.pop().kill_all()


class Job:
    """One run of the 2-process job, started in the background; each process's output goes to a file (a pipe
    nobody reads could fill and block it). Every started process leads its own process group."""

    def __init__(self, setup, workdir: Path, logs: Path, *, launcher: bool, fault: str = "", faulty=()):
        config, hook = setup
        self.markers = logs / "markers"
        self.markers.mkdir(parents=True)
        env = job_env(2, MAKE_JAX_HEARTBEAT_TIMEOUT=str(HEARTBEAT_S), PYTHONUNBUFFERED="1",
                      PYTHONPATH=os.pathsep.join([str(hook)] + [p for p in [os.environ.get("PYTHONPATH")] if p]),
                      MAKE_JAX_TEST_FAULT=fault, MAKE_JAX_TEST_FAULT_PROCESSES=",".join(map(str, faulty)),
                      MAKE_JAX_TEST_FAULT_DIR=str(self.markers))
        cmd = [sys.executable, "launch.py", "--config", str(config), "--workdir", str(workdir)]
        if launcher:
            jobs = [(cmd + ["--local_processes=2"], env)]
        else:
            address = f"127.0.0.1:{free_port()}"
            jobs = [(cmd, dict(env, JAX_COORDINATOR_ADDRESS=address, JAX_NUM_PROCESSES="2", JAX_PROCESS_ID=str(i)))
                    for i in range(2)]
        self.logs = [logs / f"out{i}.txt" for i in range(len(jobs))]
        self.procs = []
        for (c, e), log in zip(jobs, self.logs):
            with open(log, "wb") as f:
                self.procs.append(subprocess.Popen(c, cwd=REPO, env=e, stdout=f, stderr=subprocess.STDOUT,
                                                   start_new_session=True))
        _STARTED.append(self)

    def output(self, i: int = 0) -> str:
        return self.logs[i].read_text(errors="replace")

    def tail(self) -> str:
        return "\n".join(f"--- {log.name}\n{self.output(i)[-3000:]}" for i, log in enumerate(self.logs))

    def wait_for_markers(self, names) -> float:
        """Waits until the processes `names` ('p0', ...) reached the fault; the time it happened."""
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            ended = [p for p in self.procs if p.poll() is not None]  # before looking: a faulty one may end
            if all((self.markers / n).exists() for n in names):
                return time.monotonic()
            assert not ended, f"a process ended before the fault point\n{self.tail()}"
            assert time.monotonic() < deadline, f"the fault point was not reached\n{self.tail()}"
            time.sleep(0.05)

    def wait(self, timeout: float) -> list[int]:
        deadline = time.monotonic() + timeout
        for p in self.procs:
            try:
                p.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                self.kill_all()
                pytest.fail(f"still running {timeout:.0f} s after the fault (hang)\n{self.tail()}")
        return [p.returncode for p in self.procs]

    def kill_all(self) -> None:
        """SIGKILL to every process of the job at once: the group of each started process still running (the
        launcher and its copies, or one directly started process). A reaped leader's group is left alone: its
        number may belong to someone else by now."""
        for p in self.procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
        for p in self.procs:
            p.wait()


def _committed(workdir: Path) -> list[int]:
    d = workdir / "checkpoints"
    return sorted(int(p.name) for p in d.iterdir() if p.name.isdigit()) if d.is_dir() else []


def _check_intact(step_dir: Path) -> dict:
    """The checkpoint's files match its checksums, and its train state loads (as numpy arrays: this process has
    one device, the job had four)."""
    import jax
    import orbax.checkpoint as ocp

    from make_jax.checkpoint.integrity import CHECKSUM_FILE, verify_checksums

    assert verify_checksums(step_dir, step_dir / CHECKSUM_FILE), f"{step_dir}: no checksum record"
    checkpointer = ocp.StandardCheckpointer()
    saved = checkpointer.metadata(step_dir / "state").item_metadata
    state = checkpointer.restore(step_dir / "state", jax.tree.map(lambda m: np.empty(m.shape, m.dtype), saved))
    assert int(state["step"]) == int(step_dir.name)
    return state


# ---- the uninterrupted job ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def uninterrupted(setup, tmp_path_factory):
    """(workdir, launcher output) of the uninterrupted 2-process job (`launch.py --local_processes=2`)."""
    base = tmp_path_factory.mktemp("uninterrupted")
    job = Job(setup, base / "run", base / "logs", launcher=True)
    try:
        assert job.wait(START_TIMEOUT_S) == [0], job.tail()
    finally:
        _STARTED.remove(job)  # ended (Job.wait kills it on a timeout): not the test's to stop
    return base / "run", job.output()


def _train_rows(workdir: Path) -> list[dict]:
    rows = [json.loads(x) for x in (workdir / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if r["split"] == "train"]


def test_two_processes_train_like_one(setup, uninterrupted, tmp_path):
    multi, out = uninterrupted
    assert "process 1 of 2 joined (2 local devices, 4 in all)" in out and "[p1]" in out, out[-3000:]
    config, _ = setup
    single = tmp_path / "single"
    proc = subprocess.run([sys.executable, "launch.py", "--config", str(config), "--workdir", str(single)],
                          cwd=REPO, env=job_env(4, cache_off=False), capture_output=True, text=True,
                          timeout=START_TIMEOUT_S)
    assert proc.returncode == 0, proc.stderr[-4000:]

    # Not bit-identical: the float32 sums over the batch (logits' log-sum-exp, the gradient all-reduce) are split
    # differently when two of the four devices sit in another process (gloo), so the losses differ in their last
    # bits (1.7e-7 relative measured) and, after 6 AdamW steps at lr <= 2e-5, parameters by up to 1.3e-6 (measured,
    # both under the suite's XLA flags, tests/conftest.py: AdamW's normalised update turns rounding on a near-zero
    # gradient into a fraction of lr). A wrong row split changes every gradient: with both processes reading the
    # same rows (planted) parameters moved by 6e-5, and it fails.
    a, b = exported_params(multi / "export"), exported_params(single / "export")
    assert a.keys() == b.keys() and len(a) == 38
    for k in a:
        np.testing.assert_allclose(a[k], b[k], rtol=0, atol=5e-6, err_msg=k)
    # Process 0 alone writes the metrics: one line per step, the one-process run's losses.
    lines, ref = _train_rows(multi), _train_rows(single)
    assert [m["step"] for m in lines] == [1, 2, 3, 4, 5, 6]
    np.testing.assert_allclose([m["loss"] for m in lines], [m["loss"] for m in ref], rtol=1e-6)
    assert not (multi / ".export.tmp-collective").exists()
    # The final evaluations: process 0 alone, on the same parameters.
    ev_multi = json.loads((multi / "eval.json").read_text())["summary"]
    ev_single = json.loads((single / "eval.json").read_text())["summary"]
    assert [r["name"] for r in ev_multi] == [r["name"] for r in ev_single] == ["zeroshot", "concepts", "retrieval"]
    # Rank metrics of the same images under parameters 1e-6 apart: the same values (measured equal).
    assert ev_multi == ev_single


# ---- SIGKILL of every process, then the same command ------------------------------------------------------

def test_sigkill_of_every_process_then_resume_is_bit_identical(setup, uninterrupted, tmp_path):
    ref, _ = uninterrupted
    run = tmp_path / "interrupted"
    # 1. After checkpoint 2 and steps 3 and 4, while step 4's checkpoint is being committed (process 0 renames
    #    it, process 1 waits for it), every process is SIGKILLed together with the launcher.
    job = Job(setup, run, tmp_path / "logs-1", launcher=True, fault="pause@save:4", faulty=(0,))
    job.wait_for_markers(["p0"])
    job.kill_all()
    assert _committed(run) == [2] and not (run / "export").exists()
    assert any(p.name.startswith("4.orbax-checkpoint-tmp") for p in (run / "checkpoints").iterdir())
    # 2. The same command resumes from 2 (the torn save is discarded) and finishes.
    job = Job(setup, run, tmp_path / "logs-2", launcher=True)
    assert job.wait(START_TIMEOUT_S) == [0], job.tail()
    resumed = f"resumed from {run / 'checkpoints' / '2'} at step 2"
    assert sorted(ln[:4] for ln in job.output().splitlines() if resumed in ln) == ["[p0]", "[p1]"], job.tail()
    assert _committed(run) == [2, 4, 6]

    a, b = exported_params(ref / "export"), exported_params(run / "export")
    assert a.keys() == b.keys() and len(a) == 38
    for k in a:
        assert np.array_equal(a[k], b[k]), k  # bit-identical
    # Training moved the parameters: the comparison is not between two copies of the initialisation.
    first = _check_intact(ref / "checkpoints" / "2")["params"]["visual"]["proj"]
    assert not np.array_equal(first, a["['visual']['proj']"])


# ---- one process lost: the other stops within a bound, saying what happened ------------------------------

def test_lost_peer_message():
    gloo = RuntimeError("UNKNOWN: Gloo all-reduce failed: [external/gloo/gloo/transport/tcp/pair.cc:538] Read error "
                        "[127.0.0.1]:34221: Connection reset by peer\nmore")
    line = lost_peer_message(gloo, 0, 2)
    assert "\n" not in line and line.startswith("process 0 of 2: a collective with the other processes failed "
                                                "(RuntimeError: UNKNOWN: Gloo all-reduce failed")
    assert "process 1 (the other process of the job) stopped" in line and "resume" in line
    assert "process 0 (the other process of the job)" in lost_peer_message(gloo, 1, 2)
    assert "another process of the job stopped" in lost_peer_message(gloo, 2, 4)
    assert lost_peer_message(RuntimeError("NCCL error: remote process exited"), 0, 8) is not None
    assert lost_peer_message(ValueError("a bug"), 0, 2) is None  # other errors keep their traceback
    assert lost_peer_message(gloo, 0, 1) is None
    # The peer did not set up a collective within gloo's 30 s (the error jax 0.10.2 gave in CI, process 1 still
    # compiling): not claimed to be gone.
    late = RuntimeError("UNKNOWN: Gloo context initialization failed: DEADLINE_EXCEEDED: GetKeyValue() timed out "
                        "with key: cpu:gloo/0,1,2048,2049/2 and duration: 29.999999851s")
    line = lost_peer_message(late, 0, 2)
    assert "process 1 (the other process of the job) did not reach the collective in time: it stopped, cannot be " \
           "reached, or is far behind (still compiling, say" in line and "stopped or cannot be reached" not in line


# Two copies joined by a socket (process 0 serves, process 1 connects); each side's ending is filled in below.
_PAIR = textwrap.dedent("""
    import os, signal, socket, sys, time
    port_file = sys.argv[1]
    if os.environ["JAX_PROCESS_ID"] == "0":
        server = socket.create_server(("127.0.0.1", 0))
        with open(port_file + ".tmp", "w") as f:
            f.write(str(server.getsockname()[1]))
        os.rename(port_file + ".tmp", port_file)
        peer, _ = server.accept()
        {p0_end}
        sys.exit(1)
    while not os.path.exists(port_file):
        time.sleep(0.01)
    conn = socket.create_connection(("127.0.0.1", int(open(port_file).read())))
    {p1_end}
    os.kill(os.getpid(), signal.SIGKILL)
""")


@pytest.mark.parametrize("p0_end,p1_end", [
    # Process 1 is SIGKILLed; process 0 (the lower index) sees its connection close and fails a few milliseconds
    # later, as a collective would.
    ("peer.recv(1)  # returns when process 1 dies", "time.sleep(0.3)"),
    # Reaper threads wake in any order, so two copies ending milliseconds apart are reported in either order:
    # here process 0 exits with status 1 first and process 1 is SIGKILLed 0.1 s later (inside the 0.5 s window).
    ("time.sleep(0.3)", "conn.recv(1)  # returns when process 0 has exited\ntime.sleep(0.1)"),
], ids=["killed-first", "killed-just-after"])
def test_launcher_names_the_killed_process_not_the_one_that_exited(capfd, tmp_path, p0_end, p1_end):
    script = _PAIR.format(p0_end=p0_end, p1_end=p1_end)
    status = run_local_job([sys.executable, "-c", script, str(tmp_path / "port")], 2, grace_s=2.0)
    out = capfd.readouterr().out
    assert status == 128 + signal.SIGKILL, out
    assert "[launch] process 1 of 2 was killed by SIGKILL" in out


@pytest.mark.parametrize("fault,victim,launcher", [("kill", 1, True), ("kill", 0, False), ("stop", 1, False)],
                         ids=["sigkill-p1-launcher", "sigkill-p0-direct", "sigstop-p1-direct"])
def test_one_process_lost_the_other_stops_in_bounded_time(setup, tmp_path, fault, victim, launcher):
    """Process `victim` dies (SIGKILL) or freezes (SIGSTOP: like a host that vanished, its sockets stay open)
    after step 3 (checkpoint 2 is committed). The survivor must stop within STOP_BOUND_S, non-zero, with a message
    naming what happened; checkpoint 2 stays intact."""
    work = tmp_path / "run"
    job = Job(setup, work, tmp_path / "logs", launcher=launcher, fault=f"{fault}@step:3", faulty=(victim,))
    t_fault = job.wait_for_markers([f"p{victim}"])
    survivor = 1 - victim
    if launcher:
        codes = job.wait(STOP_BOUND_S)
        elapsed = time.monotonic() - t_fault
        out = job.output()
        assert codes == [128 + signal.SIGKILL], out[-3000:]
        assert "[launch] process 1 of 2 was killed by SIGKILL;" in out, out[-3000:]
        # The survivor's own line, not a traceback: its collective failed because process 1 is gone.
        assert ("[p0] launch.py: error: process 0 of 2: a collective with the other processes failed" in out
                and "process 1 (the other process of the job) stopped" in out), out[-3000:]
        assert "Traceback" not in out
    else:
        proc = job.procs[survivor]
        try:
            proc.wait(timeout=STOP_BOUND_S)
        except subprocess.TimeoutExpired:
            job.kill_all()
            pytest.fail(f"process {survivor} still running {STOP_BOUND_S} s after process {victim} was lost")
        elapsed = time.monotonic() - t_fault
        job.kill_all()  # the frozen victim
        out = job.output(survivor)
        assert proc.returncode != 0, out[-3000:]
        if fault == "kill":  # the coordinator is gone: the survivor's collective or its coordination client says so
            assert ("process 0 (the other process of the job) stopped" in out
                    or "the leader task was preempted/died" in out), out[-3000:]
        else:  # no error on any socket: the coordination service's heartbeat check names the silent task
            assert "The following tasks are unhealthy (stopped sending heartbeats):\n1\n" in out, out[-3000:]
            # Not at once: nothing failed on a socket (the last heartbeat may predate the freeze by an interval).
            assert elapsed >= HEARTBEAT_S / 2, f"stopped after {elapsed:.1f} s: not by the heartbeat timeout"
    print(f"{fault} of process {victim}: the survivor stopped {elapsed:.1f} s later")
    assert elapsed <= STOP_BOUND_S
    assert _committed(work) == [2]
    assert not [p for p in (work / "checkpoints").iterdir() if "tmp" in p.name]
    _check_intact(work / "checkpoints" / "2")
