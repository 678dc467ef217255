"""Shared test setup: a persistent XLA compilation cache, and a tiny SynthDerm set made once per session."""

import os
import tempfile

import pytest

# Compiled programs are cached on disk and shared by every process of the run: the xdist workers and the
# subprocesses that tests start (they inherit these variables; fsdp runs and multi-process jobs turn the cache off,
# see `job_env` and make_jax/train/sharding.py cpu_cache_conflict). A train step compiled by one test is then
# loaded, not recompiled, by the next test or subprocess that builds the same program (22.5 s → 5 s for a recompiled
# step, measured under XLA's default flags, before TEST_XLA_FLAGS). Cache keys cover the program, the compile
# options, the jax/jaxlib version and the device, so a stale entry is never loaded. No size limit (JAX's default,
# -1): with one, JAX takes a lock on the whole cache for every read and write and, at every write, reads the size
# and access time of every entry to pick evictions (jax/_src/lru_cache.py). At the end of a suite run that scan took
# 334 ms for 1,638 entries, and the suite writes about as many, mostly small eager ops: minutes under one lock that
# every test process waits on. Without the lock a process may read an entry another is still writing; decompressing
# the truncated entry then fails, and JAX warns ("Error reading persistent compilation cache entry") and compiles
# the program itself. Entries written without a limit have no access-time files, which a checkout older than 583d619
# (a 4 GiB limit) cannot write beside: give such a checkout its own cache (MAKE_JAX_TEST_JAX_CACHE).
# MAKE_JAX_TEST_JAX_CACHE overrides the location; "off" disables the cache.
JAX_CACHE_ENV = "MAKE_JAX_TEST_JAX_CACHE"

# XLA flags of every test process and of the subprocesses tests start (they inherit XLA_FLAGS; `xla_flags` adds a
# simulated device count): compile fast, run slower (1.7-4.5x a step, BENCHMARKS.md). The suite's programs are
# small, compiled once and run a few times, so compilation is most of their CPU time. Measured on the tiny model's
# train step (jax 0.10.2, 2 cores, cache off): compile 16.2 s by default, 8.9 s at backend optimisation level 0,
# 3.3 s with XLA:CPU's MLIR fusion emitters off as well (LLVM's own loops instead); 3 steps 0.8 → 1.3 s; the eager
# initialisation of the tiny model 12.2 → 4.5 s. Both flags change code generation, not the program: results move by
# float32 rounding (the loss of that step: 4.617163 → 4.617157), and every comparison in the suite is between values
# computed under the same flags or against a tolerance. Flags set in XLA_FLAGS by the caller come after these (XLA
# takes the last), MAKE_JAX_TEST_XLA_FLAGS replaces them ("" compiles as users do). Checked with jaxlib 0.10.2
# (requirements-test.txt); a jaxlib without one of them stops at start-up naming it ("Unknown flags").
TEST_XLA_FLAGS = os.environ.get("MAKE_JAX_TEST_XLA_FLAGS",
                                "--xla_backend_optimization_level=0 --xla_cpu_use_fusion_emitters=false")
if not os.environ.get("XLA_FLAGS", "").startswith(TEST_XLA_FLAGS):  # xdist workers inherit the controller's
    os.environ["XLA_FLAGS"] = " ".join(f for f in (TEST_XLA_FLAGS, os.environ.get("XLA_FLAGS", "")) if f)


def xla_flags(devices: int) -> str:
    """XLA_FLAGS for a subprocess with `devices` simulated CPU devices: this process's flags (TEST_XLA_FLAGS)
    with the device count."""
    return f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count={devices}".strip()


def job_env(devices: int, *, cache_off: bool = True, **extra: str) -> dict:
    """The environment of a test's multi-process job: `devices` simulated CPU devices per process (`xla_flags`),
    the persistent compilation cache off (`cache_off`; else as inherited), no job variables inherited
    (JAX_COORDINATOR_ADDRESS, ...), then `extra`.

    With the cache on, process 0 would load the programs the others compile (JAX writes entries from process 0
    only; on CPU the other processes' keys differ) and wait for them at each new collective, which gloo gives up
    after 30 s; the training loop refuses it (make_jax/train/sharding.py cpu_cache_conflict)."""
    from make_jax.train.distributed import JOB_VARIABLES

    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=xla_flags(devices))
    if cache_off:
        env["JAX_ENABLE_COMPILATION_CACHE"] = "false"
    for k in JOB_VARIABLES:
        env.pop(k, None)
    return {**env, **extra}


def _jax_cache_dir(config) -> str | None:
    where = os.environ.get(JAX_CACHE_ENV)
    if where == "off":
        return None
    if where:
        return where
    cache = getattr(config, "cache", None)  # absent under `-p no:cacheprovider`
    if cache is not None:
        return str(cache.mkdir("jax-compilation-cache"))
    return os.path.join(tempfile.gettempdir(), "make_jax-test-jax-cache")


def pytest_configure(config):
    _check_xdist_grouping(config)
    path = _jax_cache_dir(config)
    if path is None:
        return
    settings = {
        "JAX_COMPILATION_CACHE_DIR": path,
        "JAX_COMPILATION_CACHE_MAX_SIZE": "-1",
        # Cache every program, not only those that took over 1 s to compile: the suite's many small jitted
        # functions recur across tests and subprocesses too.
        "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
    }
    os.environ.update(settings)  # for subprocesses, and for jax if it is imported after this point
    import jax  # and for this process if jax was imported already (its config read the environment then)

    jax.config.update("jax_compilation_cache_dir", path)
    jax.config.update("jax_compilation_cache_max_size", -1)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)


def _check_xdist_grouping(config) -> None:
    """Refuses `--dist loadgroup` (pyproject addopts) where it silently groups nothing: pytest-xdist <= 3.8 marks a
    grouped test by rewriting its node id, which pytest >= 9.2 ignores (pytest-dev/pytest-xdist#1386). The
    grouped modules' tests would spread over the workers, and each would compute the module's fixture of minutes
    (test_fsdp.py, test_gpu_suite.py) and run multi-process jobs side by side."""
    if config.getoption("dist", None) != "loadgroup":
        return
    from importlib.metadata import version

    def major_minor(name):
        return tuple(int(x) for x in version(name).split(".")[:2])

    if major_minor("pytest") >= (9, 2) and major_minor("pytest-xdist") <= (3, 8):
        raise pytest.UsageError(
            f"pytest {version('pytest')} with pytest-xdist {version('pytest-xdist')}: --dist loadgroup would give no "
            "test its xdist_group (pytest-dev/pytest-xdist#1386); install requirements-test.txt's pins")


# synthderm_small's generator config: a config whose prepare.synthderm.out is that folder must ask for the same one
# (make_jax/synthderm/prepare.py refuses another), so tests set these fields (synthderm_small_prepare).
SYNTHDERM_SMALL = dict(seed=3, num_train=48, num_val=8, num_zeroshot=32, num_concepts=24, num_retrieval=8,
                       image_size=40)


def synthderm_small_prepare(root) -> dict:
    """`config.prepare.synthderm` fields that reuse synthderm_small at `root` (its generator config, its records)."""
    return dict(SYNTHDERM_SMALL, out=str(root), records=str(root / "records"), shorter_side=36)


@pytest.fixture(scope="session")
def synthderm_small(tmp_path_factory):
    """(SynthDerm root, records dataset directory) — 48 training images of 40 px, shorter side 36 in records."""
    from make_jax.records.convert import convert
    from make_jax.synthderm import SynthDermConfig, generate

    root = tmp_path_factory.mktemp("synthderm")
    generate(root, SynthDermConfig(**SYNTHDERM_SMALL), workers=1, progress=False)
    res = convert(str(root / "make" / "train.csv"), str(root / "make"), str(root / "records"),
                  val_csv=str(root / "make" / "val.csv"), shorter_side=36, workers=0, progress=False,
                  log=lambda *_: None)
    assert res.complete and res.splits["train"] == 48
    return root, res.directory


def tiny_train_config(records: str, **overrides):
    """The demo config shrunk to the tiny model on `records` (a few seconds a step on CPU), without SynthDerm
    preparation, periodic evaluation, progress bar or TensorBoard; `overrides` set top-level fields."""
    from configs.demo import get_config

    c = get_config()
    del c.prepare["synthderm"]
    c.model.name = "tiny"
    c.data.records = records
    c.data.image_size = 32
    c.data.context_length = 16
    c.data.prefetch = 0
    c.batch_size = 8
    c.progress = False
    c.tensorboard = False
    c.evals = {}
    for k, v in overrides.items():
        c[k] = v
    return c


def random_tiny_encoder(seed: int = 0, batch_size: int = 8):
    """An Encoder around the tiny preset holding random values drawn with numpy (cheaper than the model's own
    initialisation on a busy CPU): for tests of the evaluation plumbing, not of what a model learns."""
    import jax
    import numpy as np
    from flax import nnx

    from make_jax.inference import Encoder
    from make_jax.models import abstract_model, get_model_config

    rng = np.random.default_rng(seed)
    graphdef, state = nnx.split(abstract_model(get_model_config("tiny")))
    nnx.replace_by_pure_dict(state, jax.tree.map(lambda s: 0.2 * rng.standard_normal(s.shape).astype(np.float32),
                                                 nnx.to_pure_dict(state)))
    return Encoder(nnx.merge(graphdef, state), batch_size=batch_size)


def exported_params(export) -> dict:
    """{keystr path: numpy array} of an export's parameters (`make_jax.checkpoint.orbax_io.load_params`)."""
    import jax
    import numpy as np

    from make_jax.checkpoint.orbax_io import load_params

    flat = jax.tree_util.tree_leaves_with_path(load_params(export, as_numpy=True))
    return {jax.tree_util.keystr(k): np.asarray(v) for k, v in flat}


def central_difference(f, x, u, h=1e-6):
    """(f(x + h·u) − f(x − h·u)) / 2h: the directional derivative of f at x along u, for gradient checks
    (float64 inputs; error O(h²))."""
    return (f(x + h * u) - f(x - h * u)) / (2 * h)
