"""Where the train state lives: the device mesh, parameter sharding by rules, and its per-device memory.

The mesh has two axes, ``data`` and ``fsdp`` (``config.mesh``; -1 = the rest of the devices). Both are
data-parallel: every batch array is split on its first axis over ``("data", "fsdp")``, i.e. over every device.
Parameters and optimizer state are replicated over ``data`` and, FSDP-style (ZeRO-3), split over ``fsdp``:
each device keeps 1/fsdp of every sharded array, and XLA all-gathers a weight where the step uses it and
reduce-scatters its gradient, so the result is the replicated step's up to float32 summation order.

Which axis of which parameter is split is chosen by name, big_vision style: ``config.sharding_rules`` is a list
of ``(regex, spec)`` over the '/'-joined parameter names ("visual/transformer/blocks/mlp/c_fc/kernel"); the
first rule whose regex *fully* matches the name gives the array's PartitionSpec (one entry per array axis: a
mesh axis name or None; missing trailing entries are None; ``()`` replicates). A name no rule matches gets the
automatic rule, `auto_spec`: the largest axis divisible by the fsdp size among the array's own axes — never the
stacked layer axis (axis 0 under ``/blocks/``, which `jax.lax.scan` slices per layer) — for arrays with >= 2
axes per layer; others (LayerNorm, biases, logit_scale) are replicated. Divisibility: the automatic rule falls
back to the next largest axis, then to replication; an explicit rule whose axis does not divide the dimension
is refused (`ConfigError`, one line naming the rule and the parameter), as is a rule that matches no parameter
(a typo would otherwise be ignored).

Optimizer state is sharded like the parameter it mirrors (AdamW's mu and nu; matched by tree path through
`optax.tree_map_params`); its other leaves (the step count) are replicated.
"""

from __future__ import annotations

import re
from typing import Any, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from make_jax.train.config import ConfigError, check_mesh_sizes
from make_jax.train.optimizer import path_name

DATA_AXIS = "data"
FSDP_AXIS = "fsdp"
MESH_AXES = (DATA_AXIS, FSDP_AXIS)
BATCH_AXES = (DATA_AXIS, FSDP_AXIS)  # the batch is split over every device
# Parameters stacked on a leading layer axis (make_jax.models: blocks run by jax.lax.scan).
STACKED = re.compile(r".*/blocks/.*")


# ---- the mesh ----------------------------------------------------------------------------------------------

def mesh_shape(data: int, fsdp: int, device_count: int) -> tuple[int, int]:
    """`config.mesh` (data, fsdp) with a -1 resolved to the rest of the devices; `ConfigError` (one line) when
    the sizes are not positive or do not multiply to `device_count`."""
    check_mesh_sizes(data, fsdp)
    sizes = {DATA_AXIS: data, FSDP_AXIS: fsdp}
    free = [n for n, s in sizes.items() if s == -1]
    fixed = int(np.prod([s for s in sizes.values() if s != -1]))
    if free:
        if device_count % fixed:
            raise ConfigError(f"config.mesh.{free[0]}=-1: {device_count} device(s) are not divisible by the "
                              f"other axis ({fixed})")
        sizes[free[0]] = device_count // fixed
    if sizes[DATA_AXIS] * sizes[FSDP_AXIS] != device_count:
        raise ConfigError(f"config.mesh: data={sizes[DATA_AXIS]} x fsdp={sizes[FSDP_AXIS]} = "
                          f"{sizes[DATA_AXIS] * sizes[FSDP_AXIS]} devices, but there are {device_count}")
    return sizes[DATA_AXIS], sizes[FSDP_AXIS]


def make_mesh(devices=None, *, data: int = -1, fsdp: int = 1) -> Mesh:
    """A (data, fsdp) mesh over `devices` (default: every device of every process), in device order: fsdp is
    the inner axis, so an fsdp group is consecutive devices (one host's, when fsdp <= its device count)."""
    devices = np.asarray(jax.devices() if devices is None else devices).reshape(-1)
    data, fsdp = mesh_shape(data, fsdp, devices.size)
    return Mesh(devices.reshape(data, fsdp), MESH_AXES)


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Batch arrays (B, ...) split on their first axis over every device of the mesh."""
    return NamedSharding(mesh, PartitionSpec(BATCH_AXES))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def check_fsdp_within_processes(mesh: Mesh) -> None:
    """`ConfigError` when an fsdp group spans processes: the host copy of the parameters (export, evaluation
    on process 0) is assembled from one process's own shards, so each process must hold whole parameters."""
    for group in mesh.devices.reshape(-1, mesh.shape[FSDP_AXIS]):
        if len({d.process_index for d in group}) > 1:
            raise ConfigError(f"config.mesh.fsdp={mesh.shape[FSDP_AXIS]} spans processes (each has "
                              f"{jax.local_device_count()} devices): use fsdp <= the devices of one process")


def persistent_cache_dir() -> str | None:
    """The directory of JAX's persistent compilation cache while it is on (as JAX decides: a directory set, by
    `JAX_COMPILATION_CACHE_DIR` or `jax.config.update`, and `jax_enable_compilation_cache` true, its default);
    None while it is off. JAX fixes its own use of the cache at a process's first compile, so the settings must be
    made before then (the environment variables always are)."""
    on = jax.config.jax_enable_compilation_cache and jax.config.jax_compilation_cache_dir
    return jax.config.jax_compilation_cache_dir if on else None


def cpu_cache_conflict(platform: str, fsdp: int, process_count: int, cache_dir: str | None) -> str | None:
    """Why a run on `platform` with `fsdp` and `process_count` must not use the persistent compilation cache at
    `cache_dir` (None: the cache is off); None when it may. Both conflicts are on CPU and were observed with jax
    0.10.2 (docs/training.md), not documented by XLA:

    * fsdp > 1: an fsdp step loaded from the cache deadlocked on 8 simulated devices in 4 runs of 4 (some
      devices waited in the gradients' all-reduce, the others in a layer scan's all-gather, until XLA aborted
      the process); freshly compiled ones never did.
    * several processes: JAX writes cache entries from process 0 only, and on CPU the other processes' programs
      have other cache keys, so process 0 loads what the others compile. It reaches each new collective first,
      and gloo's set-up of a collective gives up after 30 s: on a loaded machine the job fails at its first step.
    """
    if platform != "cpu" or cache_dir is None:
        return None
    if fsdp > 1:  # (fsdp=1 is a way out only for one process)
        return (f"config.mesh.fsdp={fsdp} on CPU devices with JAX's persistent compilation cache on ({cache_dir}): "
                "XLA:CPU programs loaded from it deadlock in the fsdp step's collectives (docs/training.md); set "
                "JAX_ENABLE_COMPILATION_CACHE=false" + (", or fsdp=1" if process_count == 1 else ""))
    if process_count > 1:
        return (f"{process_count} processes on CPU devices with JAX's persistent compilation cache on ({cache_dir}): "
                "only process 0 finds its programs there (on CPU the others' cache keys differ), so it reaches "
                "each collective far ahead of them and gloo gives up after 30 s (docs/training.md); set "
                "JAX_ENABLE_COMPILATION_CACHE=false for every process")
    return None


def check_cpu_compilation_cache(mesh: Mesh) -> None:
    """`ConfigError` when the run's mesh (its platform, fsdp size and processes) conflicts with the persistent
    compilation cache (`cpu_cache_conflict`)."""
    reason = cpu_cache_conflict(mesh.devices.flat[0].platform, mesh.shape[FSDP_AXIS],
                                len({d.process_index for d in mesh.devices.flat}), persistent_cache_dir())
    if reason is not None:
        raise ConfigError(reason)


# ---- rules → PartitionSpecs --------------------------------------------------------------------------------

def check_rules(rules: Sequence) -> tuple[tuple[re.Pattern, tuple], ...]:
    """`config.sharding_rules` ((regex, spec), ...) compiled; `ConfigError` naming the rule for a bad regex, a
    spec entry that is not a mesh axis name or None, or a mesh axis used twice in one spec."""
    compiled = []
    for i, rule in enumerate(rules):
        where = f"config.sharding_rules[{i}]"
        if not (isinstance(rule, (tuple, list)) and len(rule) == 2 and isinstance(rule[0], str)
                and isinstance(rule[1], (tuple, list))):
            raise ConfigError(f"{where} must be (regex, (axis or None, ...)), got {rule!r}")
        regex, spec = rule
        try:
            pattern = re.compile(regex)
        except re.error as e:
            raise ConfigError(f"{where}: bad regex {regex!r} ({e})") from None
        for entry in spec:
            if entry is not None and entry not in MESH_AXES:
                raise ConfigError(f"{where}: {entry!r} is not a mesh axis ({', '.join(MESH_AXES)}) or None")
        named = [e for e in spec if e is not None]
        if len(named) != len(set(named)):
            raise ConfigError(f"{where}: a mesh axis may shard one array axis only, got {tuple(spec)}")
        compiled.append((pattern, tuple(spec)))
    return tuple(compiled)


def auto_spec(name: str, shape: tuple[int, ...], fsdp: int) -> PartitionSpec:
    """The automatic rule: `fsdp` on the largest axis of `shape` divisible by `fsdp` (the first of equals),
    skipping the stacked layer axis of `/blocks/` parameters; replicated below 2 axes per layer or when no axis
    divides. E.g. ("visual/transformer/blocks/mlp/c_fc/kernel", (L, D, 4D), 4) → P(None, None, 'fsdp')."""
    skip = 1 if STACKED.fullmatch(name) else 0
    if len(shape) - skip < 2:
        return PartitionSpec()
    axes = [a for a in range(skip, len(shape)) if shape[a] % fsdp == 0]
    if not axes:
        return PartitionSpec()
    best = max(axes, key=lambda a: (shape[a], -a))
    return PartitionSpec(*([None] * best + [FSDP_AXIS]))


def spec_for(name: str, shape: tuple[int, ...], rules, axis_sizes: dict[str, int]) -> tuple[PartitionSpec, int]:
    """(PartitionSpec of the parameter `name` of `shape`, index of the rule that chose it or -1 for the
    automatic rule). `rules` from `check_rules`; `axis_sizes` the mesh's {axis: size}. `ConfigError` when the
    matching rule's spec has more entries than the array has axes or an axis size does not divide."""
    for i, (pattern, spec) in enumerate(rules):
        if pattern.fullmatch(name):
            where = f"config.sharding_rules[{i}] ({pattern.pattern!r} -> {spec})"
            if len(spec) > len(shape):
                raise ConfigError(f"{where}: {name} has {len(shape)} axes {tuple(shape)}, the spec {len(spec)}")
            for axis, entry in enumerate(spec):
                if entry is not None and shape[axis] % axis_sizes[entry]:
                    raise ConfigError(f"{where}: axis {axis} of {name} {tuple(shape)} is not divisible by "
                                      f"{entry}={axis_sizes[entry]}")
            return PartitionSpec(*spec), i
    return auto_spec(name, tuple(shape), axis_sizes[FSDP_AXIS]), -1


def param_shardings(params, mesh: Mesh, rules: Sequence = ()):
    """A NamedSharding for every parameter (`params`: arrays or ShapeDtypeStructs), chosen by `rules` (raw
    `config.sharding_rules`) then the automatic rule. `ConfigError` for a rule that matches no parameter."""
    compiled = check_rules(rules)
    sizes = dict(mesh.shape)
    used = set()

    def one(path, leaf):
        spec, rule = spec_for(path_name(path), tuple(leaf.shape), compiled, sizes)
        used.add(rule)
        return NamedSharding(mesh, spec)

    out = jax.tree_util.tree_map_with_path(one, params)
    unused = [i for i in range(len(compiled)) if i not in used]
    if unused:
        i = unused[0]
        raise ConfigError(f"config.sharding_rules[{i}] ({compiled[i][0].pattern!r}) matches no parameter (or only "
                          "parameters an earlier rule took): fix or remove it")
    return out


def state_shardings(state, mesh: Mesh, optimizer, rules: Sequence = ()):
    """Shardings of a `TrainState` (arrays or ShapeDtypeStructs): the step replicated, the parameters by rule,
    the optimizer state like the parameters it mirrors (`optax.tree_map_params`), its other leaves replicated."""
    import optax

    params = param_shardings(state.params, mesh, rules)
    opt = optax.tree_map_params(optimizer, lambda _, sh: sh, state.opt_state, params,
                                transform_non_params=lambda _: replicated(mesh))
    return type(state)(step=replicated(mesh), params=params, opt_state=opt)


# ---- memory ------------------------------------------------------------------------------------------------

def bytes_per_device(tree, shardings) -> int:
    """Bytes one device holds of `tree` (arrays or ShapeDtypeStructs) laid out by `shardings` (same structure):
    Σ prod(shard shape) × itemsize — full size for a replicated array, size / fsdp for one split over fsdp."""
    leaves = jax.tree.leaves(tree)
    shs = jax.tree.leaves(shardings, is_leaf=lambda x: isinstance(x, jax.sharding.Sharding))
    if len(leaves) != len(shs):
        raise ValueError(f"{len(leaves)} arrays but {len(shs)} shardings")
    return int(sum(np.prod(s.shard_shape(tuple(x.shape)), dtype=np.int64) * np.dtype(x.dtype).itemsize
                   for x, s in zip(leaves, shs)))


def total_bytes(tree) -> int:
    """Bytes of `tree` unsharded (what every device holds when it is replicated)."""
    return int(sum(np.prod(x.shape, dtype=np.int64) * np.dtype(x.dtype).itemsize for x in jax.tree.leaves(tree)))


def memory_report(state, shardings, mesh: Mesh) -> str:
    """One line: parameters + optimizer state per device under `shardings`, and replicated."""
    mib = 2 ** 20
    return (f"parameters + optimizer state: {bytes_per_device(state, shardings) / mib:.1f} MiB per device "
            f"({total_bytes(state) / mib:.1f} MiB replicated; mesh data={mesh.shape[DATA_AXIS]} x "
            f"fsdp={mesh.shape[FSDP_AXIS]})")


# ---- host copies -------------------------------------------------------------------------------------------

def host_copy(tree) -> Any:
    """numpy copies of `tree`'s arrays, each assembled from this process's own shards (no collective, so
    process 0 alone may call it; the export and the evaluations read parameters this way). ValueError when this
    process does not hold all of an array (an fsdp group across processes; `check_fsdp_within_processes`
    refuses that layout before training)."""

    def one(x):
        if not isinstance(x, jax.Array):
            return np.asarray(x)
        out = np.empty(x.shape, x.dtype)
        seen = np.zeros(x.shape, bool)
        for shard in x.addressable_shards:
            if seen[shard.index].all():  # a replica of a piece already copied
                continue
            out[shard.index] = np.asarray(shard.data)
            seen[shard.index] = True
        if not seen.all():
            raise ValueError(f"this process holds only part of an array of shape {x.shape} ({x.sharding})")
        return out

    return jax.tree.map(one, tree)
