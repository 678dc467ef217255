"""`launch.py --local_processes=N`: N copies of a command on this machine, joined as one multi-process JAX job.

Each copy gets JAX_COORDINATOR_ADDRESS=127.0.0.1:<free port>, JAX_NUM_PROCESSES=N and JAX_PROCESS_ID=i — the
variables a multi-host launcher sets — so the multi-host code path (coordination, cross-process collectives,
per-process input shards, process-0-only outputs) can be tried on one machine. On CPU give each process its own
simulated devices with XLA_FLAGS=--xla_force_host_platform_device_count=K (inherited by the copies).

Every line a copy prints is forwarded prefixed with `[p<i>] `. When one copy fails (non-zero exit, or killed),
the launcher says which (`[launch] process 1 of 2 was killed by SIGKILL; stopping the others`), stops the others
(`settle_s` for them to end by themselves, then SIGTERM, then SIGKILL after `grace_s`) and exits with the failed
copy's status.
"""

from __future__ import annotations

import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now (the OS picks it; a small window remains before the coordinator binds)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def strip_flag(argv: list[str], name: str) -> list[str]:
    """`argv` without `--name=value` / `--name value` (the copies must not spawn copies)."""
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a in (f"--{name}", f"-{name}"):
            skip = True
        elif not a.startswith((f"--{name}=", f"-{name}=")):
            out.append(a)
    return out


def _forward(stream, prefix: str, lock: threading.Lock) -> None:
    for line in iter(stream.readline, b""):
        with lock:
            sys.stdout.buffer.write(prefix.encode() + line)
            sys.stdout.buffer.flush()
    stream.close()


def _stop(procs: list[subprocess.Popen], grace_s: float, settle_s: float = 0.0) -> None:
    """Ends the copies still running: `settle_s` for them to end by themselves (when one copy dies, the others'
    collectives fail at once and they say so in their own words), then SIGTERM, then SIGKILL after `grace_s`."""
    settle = time.monotonic() + settle_s
    for p in procs:
        try:
            p.wait(timeout=max(0.0, settle - time.monotonic()))
        except subprocess.TimeoutExpired:
            pass
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    for p in procs:
        try:
            p.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def _reap(index: int, proc: subprocess.Popen, ended: queue.Queue) -> None:
    proc.wait()
    ended.put(index)


def run_local_job(command: list[str], num_processes: int, *, grace_s: float = 10.0, settle_s: float = 3.0) -> int:
    """Runs `command` as processes 0..N-1 of one job; returns 0 when all succeed, else the first failure's status
    (128 + signal number for a copy killed by a signal).

    "First" is the order in which the copies end (one thread waits for each): when one copy is killed, the
    others' collectives fail a moment later, and the report names the killed one, not the lowest index. As the
    reaper threads may wake in either order, a copy killed by a signal within CAUSE_WINDOW_S of the first
    failure is named before one that exited with a status."""
    if num_processes < 1:
        raise ValueError(f"--local_processes must be at least 1, got {num_processes}")
    address = f"127.0.0.1:{free_port()}"
    lock = threading.Lock()
    ended: queue.Queue = queue.Queue()
    procs, threads = [], []
    for i in range(num_processes):
        env = dict(os.environ, JAX_COORDINATOR_ADDRESS=address, JAX_NUM_PROCESSES=str(num_processes),
                   JAX_PROCESS_ID=str(i), PYTHONUNBUFFERED="1")
        p = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        t = threading.Thread(target=_forward, args=(p.stdout, f"[p{i}] ", lock), daemon=True)
        t.start()
        threading.Thread(target=_reap, args=(i, p, ended), daemon=True).start()
        procs.append(p)
        threads.append(t)

    def interrupted(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupted)  # `kill` of this launcher stops the copies too
    first_failed = None
    try:
        remaining = num_processes
        while remaining:
            i = _next_ended(ended)
            remaining -= 1
            if procs[i].returncode != 0 and first_failed is None:
                # A copy that fails because another died can be reaped first (both end within milliseconds and
                # the reaper threads wake in any order): among the failures that end within a short window, a
                # copy killed by a signal is the cause, one that exited with a status the consequence.
                failed = [i]
                for j in _ended_within(ended, CAUSE_WINDOW_S):
                    remaining -= 1
                    if procs[j].returncode != 0:
                        failed.append(j)
                i = next((j for j in failed if procs[j].returncode < 0), i)
                first_failed = i
                running = any(p.poll() is None for p in procs)
                with lock:
                    print(f"[launch] process {i} of {num_processes} {_describe(procs[i].returncode)}; "
                          f"{'stopping the others' if running else 'the others have ended'}", flush=True)
                if running:
                    _stop(procs, grace_s, settle_s)
    except KeyboardInterrupt:
        _stop(procs, grace_s)
        first_failed = next((i for i, p in enumerate(procs) if p.returncode != 0), None)
    for t in threads:
        t.join(timeout=5)
    if first_failed is None:
        return 0
    code = procs[first_failed].returncode
    return 128 - code if code < 0 else code


# How long after the first failure other ended copies still count as candidates for its cause (seconds).
CAUSE_WINDOW_S = 0.5


def _ended_within(ended: queue.Queue, window_s: float) -> list[int]:
    """Indices of the copies that end within `window_s` seconds from now."""
    out, deadline = [], time.monotonic() + window_s
    while (left := deadline - time.monotonic()) > 0:
        try:
            out.append(ended.get(timeout=left))
        except queue.Empty:
            break
    return out


def _next_ended(ended: queue.Queue) -> int:
    """The index of the next copy to end (waits in short slices, so that SIGTERM and Ctrl-C get through)."""
    while True:
        try:
            return ended.get(timeout=0.5)
        except queue.Empty:
            pass


def _describe(code: int) -> str:
    if code < 0:
        return f"was killed by {signal.Signals(-code).name}"
    return f"exited with status {code}"
