"""Joining a multi-process job (several GPU hosts, or several local CPU processes) before JAX starts a backend.

    initialize_from_environment()   # first thing a training process does; a no-op for a single process

What describes the job, in the order looked at:
  * JAX_COORDINATOR_ADDRESS (host:port of process 0), JAX_NUM_PROCESSES, JAX_PROCESS_ID — read here and passed
    explicitly, because jax 0.10 reads only the address from the environment;
  * a cluster manager JAX detects itself (SLURM `srun`, Open MPI `mpirun`), when it reports more than one task.

On CPU the processes exchange data through gloo (`jax_cpu_collectives_implementation`); it is set explicitly, as
older and newer jax releases differ in their default. The heartbeat timeout bounds how long the survivors of a
vanished process wait before they stop (`MAKE_JAX_HEARTBEAT_TIMEOUT`, seconds; default 60): the coordination
service then ends every process with an error naming the task it lost. A process that dies with its host up
(SIGKILL, a crash) closes its connections, and the others' next collective fails at once
(`lost_peer_message` turns that error into one line).

Host-side agreement (`barrier`, `broadcast_json`) goes through the coordination service's barriers and
key-value store, not device collectives: a process may wait there for hours (process 0 preparing the data or
evaluating), while gloo gives up on setting up a collective when a peer is 30 s late. A process that dies is
found by the heartbeat, not by those waits' timeout.

Nothing here may touch a JAX backend: `jax.process_count()` before `jax.distributed.initialize()` would start
one and make the join impossible.
"""

from __future__ import annotations

import itertools
import logging
import os

logger = logging.getLogger("make_jax.train")

JOB_VARIABLES = ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID")
HEARTBEAT_VARIABLE = "MAKE_JAX_HEARTBEAT_TIMEOUT"
DEFAULT_HEARTBEAT_TIMEOUT_S = 60
HOST_WAIT_TIMEOUT_MS = 24 * 3600 * 1000  # `barrier` and `broadcast_json`: a day (data preparation may take hours)


class DistributedSetupError(ValueError):
    """The environment describes a multi-process job inconsistently (one line naming the variable)."""


def job_from_environment(env=None) -> dict | None:
    """The `jax.distributed.initialize` arguments the environment asks for; None for a single process.

    {'coordinator_address', 'num_processes', 'process_id'} from the JAX_* variables (all three or none), or {}
    (JAX's own cluster detection) under SLURM / Open MPI with more than one task.
    """
    env = os.environ if env is None else env
    given = [v for v in JOB_VARIABLES if env.get(v)]
    if given:
        missing = [v for v in JOB_VARIABLES if not env.get(v)]
        if missing:
            raise DistributedSetupError(f"{', '.join(given)} set but {', '.join(missing)} missing: a multi-process "
                                        f"job needs all of {', '.join(JOB_VARIABLES)}")
        try:
            count, index = int(env["JAX_NUM_PROCESSES"]), int(env["JAX_PROCESS_ID"])
        except ValueError:
            raise DistributedSetupError(f"JAX_NUM_PROCESSES={env['JAX_NUM_PROCESSES']!r} and JAX_PROCESS_ID="
                                        f"{env['JAX_PROCESS_ID']!r} must be integers") from None
        if count < 1 or not 0 <= index < count:
            raise DistributedSetupError(f"JAX_PROCESS_ID={index} is not in [0, JAX_NUM_PROCESSES={count})")
        if count == 1:
            return None
        return {"coordinator_address": env["JAX_COORDINATOR_ADDRESS"], "num_processes": count,
                "process_id": index}
    for tasks in ("SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE"):
        if int(env.get(tasks, "1") or "1") > 1:
            return {}
    return None


def heartbeat_timeout_s(env=None) -> int:
    env = os.environ if env is None else env
    raw = env.get(HEARTBEAT_VARIABLE, str(DEFAULT_HEARTBEAT_TIMEOUT_S))
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if value < 1:
        raise DistributedSetupError(f"{HEARTBEAT_VARIABLE}={raw!r} must be a positive number of seconds")
    return value


def initialize_from_environment() -> bool:
    """Joins the job the environment describes (see the module docstring); True when it is multi-process.

    Idempotent: a second call (e.g. `run` then `train` in one process) does nothing.
    """
    import jax

    if jax.distributed.is_initialized():
        return True
    job = job_from_environment()
    if job is None:
        return False
    if "jax_cpu_collectives_implementation" in jax.config.values:
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(**job, heartbeat_timeout_seconds=heartbeat_timeout_s())
    logger.info("process %d of %d joined (%d local devices, %d in all)", jax.process_index(), jax.process_count(),
                jax.local_device_count(), jax.device_count())
    return True


# The errors of a cross-process collective (gloo on CPU, NCCL on GPUs) carry their library's name.
_COLLECTIVE_LIBRARIES = ("gloo", "nccl")


def lost_peer_message(error: BaseException, process_index: int, process_count: int) -> str | None:
    """One line for a collective that failed because another process of the job is gone (SIGKILLed, crashed, its
    host unreachable) or did not come in time (gloo waits 30 s for the others to set up a collective: a
    DEADLINE_EXCEEDED error): the others then stop at once instead of waiting. None for any other error.

    A process cannot tell which peer vanished (the error names a socket address); with two processes it is the
    other one. The launcher (`--local_processes`) and the coordination service name the lost process too.
    """
    text = str(error)
    if process_count < 2 or not any(lib in text.lower() for lib in _COLLECTIVE_LIBRARIES):
        return None
    summary = (text.strip().splitlines() or [""])[0]
    if len(summary) > 300:
        summary = summary[:300] + "..."
    who = (f"process {1 - process_index} (the other process of the job)" if process_count == 2
           else "another process of the job")
    if "DEADLINE_EXCEEDED" in text:  # gloo waited 30 s for a peer to set up a collective: gone, or just late
        what = (f"{who} did not reach the collective in time: it stopped, cannot be reached, or is far behind "
                "(still compiling, say; its own log says whether it failed)")
    else:
        what = (f"{who} stopped or cannot be reached (killed, crashed, or its host is down; its own log says "
                "which)")
    return (f"process {process_index} of {process_count}: a collective with the other processes failed "
            f"({type(error).__name__}: {summary}): {what}. The checkpoints already committed in the workdir are "
            "whole: rerun the same command on every process to resume from the last one")


def _coordination_client():
    """JAX's client of the coordination service (the one Orbax's barriers use; jax has no public handle to it)."""
    from jax._src import distributed

    return distributed.global_state.client


_barriers = itertools.count()  # every process passes the same barriers and broadcasts in the same order
_broadcasts = itertools.count()


def barrier(name: str, timeout_ms: int = HOST_WAIT_TIMEOUT_MS) -> None:
    """Every process waits here until all arrive (no-op for one process). `name` must match across processes."""
    import jax

    if jax.process_count() > 1:
        _coordination_client().wait_at_barrier(f"make_jax/barrier/{next(_barriers)}/{name}", timeout_ms)


def meet_before_exit(timeout_ms: int = 10_000) -> None:
    """Waits (at most `timeout_ms`) for the other processes to reach this point too, before this one ends. When
    every process refuses the same input, process 0's end takes the coordination service down and JAX aborts the
    others at once, often before they printed their own line; a process that is busy elsewhere (in a collective
    waiting for this one) never comes, and the wait just ends."""
    import jax

    try:
        barrier("exit", timeout_ms)
    except jax.errors.JaxRuntimeError:  # DEADLINE_EXCEEDED, or the service is gone: this process ends regardless
        return


def broadcast_json(value):
    """Process 0's JSON-serialisable `value`, on every process, as JSON gives it back (the value itself for one
    process): how the processes agree on host-side decisions (prepared data paths, packing budgets) before they
    act on them. The others wait for it as long as process 0 takes."""
    import json

    import jax

    if jax.process_count() == 1:
        return value
    key = f"make_jax/broadcast/{next(_broadcasts)}"
    if jax.process_index() == 0:
        text = json.dumps(value)
        _coordination_client().key_value_set(key, text)
    else:
        text = _coordination_client().blocking_key_value_get(key, HOST_WAIT_TIMEOUT_MS)
    return json.loads(text)


def allgather_host(value):
    """Every process's small host array `value` (the same shape and dtype on all), stacked: (P, ...) — how the
    processes agree on a per-step host decision (the packing tier and buckets; `train.packing.agree_pack` is
    symmetric, so the order of the rows does not matter). One process: value[None], no device work."""
    import jax
    import numpy as np

    value = np.asarray(value)
    if jax.process_count() == 1:
        return value[None]
    from jax.experimental import multihost_utils

    return np.asarray(multihost_utils.process_allgather(value))


def process_block(sharding) -> tuple[int, int]:
    """(k, P): the rows this process gives a batch-sharded global array (`jax.make_array_from_process_local_data`)
    are block k of its P equal blocks (P the process count). Read from the sharding, not assumed to be the
    process index: the devices of a mesh need not be in process order. Raises when this process's devices do not
    hold one contiguous block (a mesh this layout cannot describe)."""
    import jax

    count = jax.process_count()
    if count == 1:
        return 0, 1
    n = jax.device_count()  # a local block of n rows: every data-axis size divides the global n·P
    held = set()
    for index in sharding.addressable_devices_indices_map((n * count,)).values():
        held.update(range(*index[0].indices(n * count)))
    k = min(held) // n
    if held != set(range(k * n, (k + 1) * n)):
        raise ValueError(f"process {jax.process_index()}'s devices do not hold one contiguous block of the batch; "
                         "packed rows cannot be indexed globally with this mesh")
    return k, count
