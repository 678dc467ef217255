"""The H200 proof (issue #10): one unattended command that measures make_jax's full MAKE step on one GPU, side by
side with the public PyTorch code, and keeps every figure it got when it is cut short.

    bash benchmarks/gpu_suite.sh --out $OUT                        # on the GPU machine (installs .whl/ first)
    python benchmarks/gpu_suite.py --out DIR [--budget-s 480] [--only torch_peer,eval] [--no-trace]
    python benchmarks/gpu_suite.py --dry-run --out DIR             # CPU, tiny model, 2 steps a part (a test runs it)

Parts, in this order (a part is skipped when less budget is left than it needs to produce a figure, and is cut
off when it runs past what is left):
  device          nvidia-smi name/memory, jax/torch versions, a measured bf16 matmul ceiling (jax, 8192³)
  jax_packed      make_jax step, ViT-B/16, batch 2048, bf16: packed texts + dedup + length groups (0.6, 0.2, 0.2)
  jax_dense       the same on dense 77-token texts (B·11 rows), rematerialised
  jax_gradcache   GradCache, k = 4 micro-batches, on packed batches
  torch_peer      the public MAKE step (benchmarks/torch_peer.py): open_clip ViT-B-16, B·11 dense texts, fp16
                  autocast + GradScaler, AdamW; batch 2048, halved on OOM
  input_pipeline  SynthDerm generated at 256 px, converted, read through Grain with workers at 224 px
  eval            make_jax.load + encode_image on JPEG files
Each part runs in its own process (a crash or an OOM never kills the rest; jax and torch never share a GPU
process). `DIR/results.json` = {"device": {...}, "runs": [...]} is rewritten after every run. A run that failed
carries `error` (an OOM is a result: "OOM: ..."). With the trace on, `DIR/trace.xplane.pb.gz` holds a jax
profiler trace of 3 packed steps (open it with xprof / TensorBoard's profile plugin).

The batches are synthetic and shaped like Derm1M (benchmarks/train_step.py `Derm1MLike`): the same batches for
the jax and torch steps. FLOPs: make_jax/train/flops.py (texts counted at the length actually encoded); MFU
against the datasheet (989 TFLOP/s) and against the bf16 matmul measured in the `device` part.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import glob
import gzip
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, ".."))
sys.path.insert(0, HERE)

PARTS = ("device", "jax_packed", "jax_dense", "jax_gradcache", "torch_peer", "input_pipeline", "eval")
DATASHEET_BF16 = 989e12  # H100/H200 SXM dense bf16, vendor datasheet
LENGTH_GROUPS = (0.6, 0.2, 0.2)  # configs/common.py packing.groups

# Sizes of the two profiles. `need_s`: the least budget a part needs to produce a figure (else it is skipped).
PROFILES = {
    "gpu": dict(model="ViT-B-16", batch=2048, dtype="bfloat16", peer_dtype="float16", steps=8, warmup=2, distinct=2,
                microbatches=4, matmul=8192, pipeline_images=4096, pipeline_batch=256, pipeline_batches=12,
                pipeline_workers=14, prep_workers=None, generate_size=256, crop=224, eval_images=1024,
                eval_batch=256,
                need_s=dict(device=15, jax_packed=90, jax_dense=90, jax_gradcache=90, torch_peer=60,
                            input_pipeline=45, eval=40)),
    # The dry run checks that the code runs, not its speed: the smallest sizes that still take every branch
    # (2 micro-batches of 2, 2 timed steps and no warm-up step: the warm-up calls the same step function, 2
    # pipeline and 2 eval batches; SynthDerm's 16 images generated and converted in the part's own process, not
    # by a pool of worker processes that would each import the libraries again).
    "dry": dict(model="tiny", batch=4, dtype="float32", peer_dtype="bfloat16", steps=2, warmup=0, distinct=1,
                microbatches=2, matmul=256, pipeline_images=16, pipeline_batch=4, pipeline_batches=2,
                pipeline_workers=1, prep_workers=1, generate_size=40, crop=32, eval_images=8, eval_batch=4,
                need_s=dict.fromkeys(PARTS, 1)),
}


# ---- results.json -------------------------------------------------------------------------------------------

def _load(out: str) -> dict:
    path = os.path.join(out, "results.json")
    if os.path.exists(path):
        with open(path) as f:
            return json.load(f)
    return {"device": {}, "runs": []}


def _save(out: str, res: dict) -> None:
    tmp = os.path.join(out, "results.json.tmp")
    with open(tmp, "w") as f:
        json.dump(res, f, indent=1, default=_jsonable)
    os.replace(tmp, os.path.join(out, "results.json"))  # atomic: a cut run never leaves half a file


def _jsonable(x):
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, (np.floating,)):
        return float(x)
    return str(x)


def record(out: str, run: dict) -> None:
    """Appends one run (all fields present, None where not measured) and rewrites results.json."""
    full = dict.fromkeys(("name", "framework", "mode", "model", "batch", "dtype", "images_per_s", "step_ms", "mfu",
                          "mfu_measured", "peak_bytes", "compile_s", "steps", "error"))
    full.update(run)
    res = _load(out)
    res["runs"].append(full)
    _save(out, res)
    status = full["error"] or f"{full['images_per_s']:.1f} images/s"
    print(f"[suite] {full['name']}: {status}", flush=True)


def set_device(out: str, facts: dict) -> None:
    res = _load(out)
    res["device"].update(facts)
    _save(out, res)


def one_line(exc: BaseException) -> str:
    """An error as one line; out-of-memory errors start with 'OOM:' (they are results, not crashes)."""
    text = f"{type(exc).__name__}: {exc}".strip().splitlines()
    line = text[0] if text else type(exc).__name__
    oom = ("RESOURCE_EXHAUSTED", "out of memory", "OutOfMemory", "Out of memory")
    full = f"{type(exc).__name__}: {exc}"
    return ("OOM: " + line)[:500] if any(s in full for s in oom) else line[:500]


# ---- part: device facts --------------------------------------------------------------------------------------

def part_device(args, prof) -> None:
    import jax
    import jax.numpy as jnp

    facts = {"date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
             "command": args.command, "platform": platform.platform(), "python": platform.python_version(),
             "cpus": os.cpu_count(), "jax": jax.__version__, "device_kind": jax.devices()[0].device_kind,
             "backend": jax.default_backend(), "device_count": jax.device_count()}
    try:
        smi = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version,clocks.max.sm",
                              "--format=csv,noheader"], capture_output=True, text=True, timeout=30)
        facts["nvidia_smi"] = smi.stdout.strip() or smi.stderr.strip()
    except (OSError, subprocess.SubprocessError) as e:
        facts["nvidia_smi"] = f"unavailable ({type(e).__name__})"
    try:
        import torch

        facts["torch"] = torch.__version__
        facts["torch_cuda"] = torch.version.cuda
    except ImportError:
        facts["torch"] = None
    set_device(args.out, facts)
    # the bf16 matmul ceiling: n³ products on random data (never zeros), median of timed repeats after warm-up
    n = prof["matmul"]
    dtype = jnp.bfloat16 if jax.default_backend() == "gpu" else jnp.float32
    ka, kb = jax.random.split(jax.random.PRNGKey(0))
    a = jax.random.normal(ka, (n, n), dtype)
    b = jax.random.normal(kb, (n, n), dtype)
    mm = jax.jit(lambda x, y: x @ y)
    jax.block_until_ready(mm(a, b))
    times = []
    for _ in range(10):
        t0 = time.perf_counter()
        jax.block_until_ready(mm(a, b))
        times.append(time.perf_counter() - t0)
    tflops = 2 * n ** 3 / float(np.median(times)) / 1e12
    set_device(args.out, {"matmul_n": n, "matmul_dtype": str(np.dtype(dtype)), "matmul_tflops": tflops,
                          "datasheet_tflops": DATASHEET_BF16 / 1e12 if jax.default_backend() == "gpu" else None})
    print(f"[suite] device: {facts['device_kind']}, matmul {tflops:.1f} TFLOP/s", flush=True)


# ---- the make_jax step: the one place that calls make_jax's train-step API ---------------------------------

def build_jax_step(model_cfg, loss_config, mode: str, microbatches: int, sample_batches: list):
    """(init state, jitted step, prepare) for `mode` in {'packed', 'dense', 'gradcache'}.

    prepare(dense numpy batch) → (batch for the step, dict of pack stats or None). The train-step API is being
    redesigned (one loss-input pytree); adapt this function, and only it, when it changes."""
    import jax
    from flax import nnx

    from make_jax.models import create_model
    from make_jax.train.gradcache import select_train_step
    from make_jax.train.optimizer import make_optimizer
    from make_jax.train.packing import DEFAULT_BUCKETS, pack_batch, suggest_pack_config
    from make_jax.train.step import init_train_state, jit_train_step, make_mesh

    model = create_model(model_cfg, seed=0)
    optimizer, schedule = make_optimizer(nnx.to_pure_dict(nnx.state(model, nnx.Param)), lr=1e-4, warmup_steps=10,
                                         total_steps=1000)
    fns, state = init_train_state(model, optimizer)
    del model
    mesh = make_mesh()
    k = microbatches if mode == "gradcache" else 1
    pack = None if mode == "dense" else suggest_pack_config(
        sample_batches, quantile=0.99, multiple_of=k * jax.device_count(), dedup=True, buckets=DEFAULT_BUCKETS,
        groups=LENGTH_GROUPS, loss_config=loss_config)
    step_fn = select_train_step(fns, optimizer, loss_config, schedule, microbatches=k)  # one-pass or GradCache
    jitted = jit_train_step(step_fn, mesh, state)
    state = jax.device_put(state, jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec()))

    def prepare(batch):
        return (batch, None) if pack is None else pack_batch(batch, pack, loss_config)

    return state, jitted, prepare, mesh


def _signature(batch: dict):
    return tuple((key, tuple(v.shape), str(v.dtype)) for key, v in sorted(batch.items()))


def _peak_bytes(device) -> int | None:
    try:
        stats = device.memory_stats()
    except Exception:  # noqa: BLE001 - backends without memory stats (CPU)
        return None
    return int(stats["peak_bytes_in_use"]) if stats and "peak_bytes_in_use" in stats else None


def _bytes_limit(device) -> int | None:
    try:
        stats = device.memory_stats()
    except Exception:  # noqa: BLE001
        return None
    return int(stats["bytes_limit"]) if stats and "bytes_limit" in stats else None


def _mfu(flops_per_s: float, out: str) -> tuple[float | None, float | None]:
    dev = _load(out)["device"]
    sheet = dev.get("datasheet_tflops")
    measured = dev.get("matmul_tflops")
    return (flops_per_s / (sheet * 1e12) if sheet else None,
            flops_per_s / (measured * 1e12) if measured else None)


def time_jax(args, prof, name: str, mode: str, remat, microbatches: int = 1, trace: bool = False) -> dict:
    """Compiles and times one make_jax step configuration; returns its run record (raises on failure)."""
    import jax

    from make_jax.losses import LossConfig
    from make_jax.models import get_model_config
    from make_jax.train.flops import image_forward_flops
    from train_step import Derm1MLike, text_flops_of, text_shapes

    model_cfg = get_model_config(prof["model"], dtype=prof["dtype"], remat=remat)
    loss_config = LossConfig()  # paper mode, mkcl + slra + dkw
    b = prof["batch"]
    size = model_cfg.vision.image_size
    sampler = Derm1MLike(size, seed=1000)  # budgets from other batches than the timed ones
    samples = [{k: v for k, v in sampler.batch(b).items() if k != "images"} for _ in range(8)]
    state, jitted, prepare, mesh = build_jax_step(model_cfg, loss_config, mode, microbatches, samples)
    gen = Derm1MLike(size, seed=0)
    sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
    batches, t_pack = [], 0.0
    for _ in range(prof["distinct"]):
        t0 = time.perf_counter()
        batch, _ = prepare(gen.batch(b))
        t_pack += time.perf_counter() - t0
        batches.append(jax.device_put(batch, sharding))
    compiled, t_compile, mem_estimate = {}, 0.0, None
    device = jax.devices()[0]
    for batch in batches:
        if _signature(batch) not in compiled:
            t0 = time.perf_counter()
            exe = jitted.lower(state, batch).compile()
            t_compile += time.perf_counter() - t0
            compiled[_signature(batch)] = exe
            try:  # XLA's own estimate; refuse to run what cannot fit (an OOM found without a crash)
                ma = exe.memory_analysis()
                est = int(ma.temp_size_in_bytes + ma.argument_size_in_bytes + ma.output_size_in_bytes
                          - ma.alias_size_in_bytes)
                mem_estimate = max(mem_estimate or 0, est)
            except Exception:  # noqa: BLE001 - not every backend reports it
                pass
    limit = _bytes_limit(device)
    if mem_estimate and limit and mem_estimate > limit:
        raise MemoryError(f"Out of memory: XLA needs {mem_estimate / 2**30:.1f} GiB, the device has "
                          f"{limit / 2**30:.1f} GiB (compile_s {t_compile:.1f})")

    def run(n):
        nonlocal state
        metrics = None
        for i in range(n):
            bt = batches[i % len(batches)]
            state, metrics = compiled[_signature(bt)](state, bt)
        jax.block_until_ready((state, metrics))
        return metrics

    run(prof["warmup"])
    t0 = time.perf_counter()
    metrics = run(prof["steps"])
    elapsed = time.perf_counter() - t0
    flops = sum(3 * (b * image_forward_flops(model_cfg) + text_flops_of(model_cfg, text_shapes(
        batches[i % len(batches)], loss_config))) for i in range(prof["steps"]))
    step_s = elapsed / prof["steps"]
    mfu, mfu_measured = _mfu(flops / elapsed, args.out)
    out = {"name": name, "framework": "jax", "mode": mode, "model": prof["model"], "batch": b,
           "dtype": prof["dtype"], "remat": remat, "microbatches": microbatches if mode == "gradcache" else None,
           "images_per_s": b / step_s, "step_ms": 1e3 * step_s, "tflops": flops / elapsed / 1e12,
           "gflop_per_image": flops / prof["steps"] / b / 1e9, "mfu": mfu, "mfu_measured": mfu_measured,
           "peak_bytes": _peak_bytes(device), "xla_memory_estimate_bytes": mem_estimate, "compile_s": t_compile,
           "variants_compiled": len(compiled), "steps": prof["steps"], "pack_ms": 1e3 * t_pack / len(batches),
           "final_loss": float(metrics["loss"]), "error": None}
    if trace:
        out["trace"] = write_trace(args.out, lambda: run(3))
    return out


def write_trace(out: str, steps) -> str:
    """A jax profiler trace of `steps()` copied to OUT/trace.xplane.pb.gz (the device tool returns only files at
    most 2 folders deep and 16 MiB each: the trace's own folder tree is deeper)."""
    import jax

    tmp = tempfile.mkdtemp(prefix="suite_trace_")
    try:
        jax.profiler.start_trace(tmp)
        steps()
        jax.profiler.stop_trace()
        found = sorted(glob.glob(os.path.join(tmp, "**", "*.xplane.pb"), recursive=True))
        if not found:
            return "no trace written"
        dest = os.path.join(out, "trace.xplane.pb.gz")
        with open(found[0], "rb") as src, gzip.open(dest, "wb", compresslevel=6) as dst:
            shutil.copyfileobj(src, dst)
        size = os.path.getsize(dest)
        if size > 15 * 2**20:
            os.remove(dest)
            return f"trace too large to return ({size / 2**20:.0f} MiB gzipped); removed"
        return f"trace.xplane.pb.gz ({size / 2**20:.1f} MiB)"
    except Exception as e:  # noqa: BLE001 - the trace is optional; never lose the run's figures for it
        return f"trace failed: {one_line(e)}"
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _jax_attempts(args, prof, name, mode, remats, microbatches=1, trace=False) -> None:
    """Tries each remat setting in turn until one runs; every OOM on the way is recorded as a result."""
    for i, remat in enumerate(remats):
        base = {"name": name, "framework": "jax", "mode": mode, "model": prof["model"], "batch": prof["batch"],
                "dtype": prof["dtype"], "remat": remat, "steps": 0}
        try:
            record(args.out, time_jax(args, prof, name, mode, remat, microbatches, trace))
            return
        except Exception as e:  # noqa: BLE001 - an OOM or a failure is a result
            err = one_line(e)
            traceback.print_exc()
            record(args.out, {**base, "error": err})
            if not err.startswith("OOM") or i == len(remats) - 1:
                return
        _free_jax()


def _free_jax() -> None:
    import jax

    gc.collect()
    jax.clear_caches()


def part_jax_packed(args, prof):
    _jax_attempts(args, prof, "jax_packed", "packed", _remats(args.packed_remat), trace=args.trace)


def part_jax_dense(args, prof):
    _jax_attempts(args, prof, "jax_dense", "dense", _remats(args.dense_remat))


def part_jax_gradcache(args, prof):
    _jax_attempts(args, prof, "jax_gradcache", "gradcache", _remats(args.gradcache_remat),
                  microbatches=prof["microbatches"])


def _remats(spec: str) -> list:
    table = {"none": False, "vision": "vision", "text": "text", "full": True}
    return [table[s] for s in spec.split(",")]


# ---- the PyTorch peer ---------------------------------------------------------------------------------------

def part_torch_peer(args, prof):
    import torch

    import torch_peer
    from make_jax.models import get_model_config
    from make_jax.train.flops import train_flops_per_image
    from train_step import CONTEXT, N_SLOTS, Derm1MLike

    device = "cuda" if torch.cuda.is_available() else "cpu"
    model_cfg = get_model_config(prof["model"])
    size = model_cfg.vision.image_size
    flops_per_image = train_flops_per_image(model_cfg, N_SLOTS, CONTEXT)  # dense: every slot at 77 tokens
    batch = prof["batch"]
    while batch >= 1:
        base = {"name": "torch_peer", "framework": "torch", "mode": "official_dense", "model": prof["model"],
                "batch": batch, "dtype": prof["peer_dtype"], "steps": 0}
        try:
            torch.manual_seed(0)
            model, what = torch_peer.make_peer_model(prof["model"])
            model = model.to(device).train()
            step = torch_peer.make_peer_step(model, prof["peer_dtype"], device, host_loops=True)
            gen = Derm1MLike(size, seed=0)
            mean = torch.tensor([0.48145466, 0.4578275, 0.40821073], device=device).view(1, 3, 1, 1) * 255
            std = torch.tensor([0.26862954, 0.26130258, 0.27577711], device=device).view(1, 3, 1, 1) * 255
            batches = []
            for _ in range(prof["distinct"]):
                bt = gen.batch(batch)
                images = torch.from_numpy(bt["images"]).to(device).permute(0, 3, 1, 2).float()
                batches.append(((images - mean) / std, torch.from_numpy(bt["text_ids"]).long().to(device),
                                torch.from_numpy(bt["text_valid"]).float().to(device)))
            if device == "cuda":
                torch.cuda.reset_peak_memory_stats()
            t0 = time.perf_counter()
            loss = None
            for i in range(prof["warmup"]):
                loss = step(*batches[i % len(batches)])
            _sync(device)
            warm_s = time.perf_counter() - t0
            t0 = time.perf_counter()
            for i in range(prof["steps"]):
                loss = step(*batches[i % len(batches)])
            _sync(device)
            elapsed = time.perf_counter() - t0
            step_s = elapsed / prof["steps"]
            mfu, mfu_measured = _mfu(flops_per_image * batch / step_s, args.out)
            record(args.out, {**base, "images_per_s": batch / step_s, "step_ms": 1e3 * step_s,
                              "tflops": flops_per_image * batch / step_s / 1e12,
                              "gflop_per_image": flops_per_image / 1e9, "mfu": mfu, "mfu_measured": mfu_measured,
                              "peak_bytes": torch.cuda.max_memory_allocated() if device == "cuda" else None,
                              "compile_s": warm_s, "steps": prof["steps"], "final_loss": float(loss),
                              "peer_model": what, "host_loops": True, "error": None})
            return
        except Exception as e:  # noqa: BLE001 - OOM: record it, halve the batch
            err = one_line(e)
            traceback.print_exc()
            record(args.out, {**base, "error": err})
            if not err.startswith("OOM"):
                return
        # out of the except block: the exception's frames no longer hold the failed batch's tensors
        model = step = batches = None
        gc.collect()
        if device == "cuda":
            torch.cuda.empty_cache()
        batch //= 2


def _sync(device: str) -> None:
    if device == "cuda":
        import torch

        torch.cuda.synchronize()


# ---- the input pipeline -------------------------------------------------------------------------------------

def part_input_pipeline(args, prof):
    import grain

    from make_jax.records import convert as C
    from make_jax.data import pipeline as P
    from make_jax.synthderm.generate import SynthDermConfig, generate

    work = os.path.join(args.work, "pipeline")
    shutil.rmtree(work, ignore_errors=True)
    n, workers = prof["pipeline_images"], prof["pipeline_workers"]
    cores = os.cpu_count() or 1
    prep_workers = prof["prep_workers"] or cores  # SynthDerm generation and conversion (None: every core)
    t0 = time.perf_counter()
    cfg = SynthDermConfig(num_train=n, num_val=0, num_zeroshot=0, num_concepts=0, num_retrieval=0,
                          image_size=prof["generate_size"])
    generate(os.path.join(work, "synthderm"), cfg, workers=prep_workers, progress=False)
    gen_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    res = C.convert(os.path.join(work, "synthderm", "make", "train.csv"), os.path.join(work, "synthderm", "make"),
                    os.path.join(work, "records"), shorter_side=prof["generate_size"], workers=prep_workers,
                    shard_size=512, progress=False, log=lambda s: None)
    conv_s = time.perf_counter() - t0
    pcfg = P.PipelineConfig(image_size=prof["crop"], workers=workers, seed=0)
    b = prof["pipeline_batch"]
    it = iter(P.train_dataset(res.directory, b, pcfg, shard_options=grain.sharding.NoSharding()))
    t0 = time.perf_counter()
    first = next(it)  # worker start-up
    startup_s = time.perf_counter() - t0
    assert first["images"].shape == (b, prof["crop"], prof["crop"], 3)
    t0 = time.perf_counter()
    for _ in range(prof["pipeline_batches"]):
        next(it)
    elapsed = time.perf_counter() - t0
    steps = prof["pipeline_batches"]
    record(args.out, {"name": "input_pipeline", "framework": "jax", "mode": "input_pipeline", "model": None,
                      "batch": b, "dtype": "uint8", "images_per_s": b * steps / elapsed,
                      "step_ms": 1e3 * elapsed / steps, "compile_s": startup_s, "steps": steps, "records": n,
                      "workers": workers, "cores": cores, "prep_workers": prep_workers,
                      "generate_size": prof["generate_size"],
                      "crop": prof["crop"], "generate_images_per_s": n / gen_s,
                      "convert_images_per_s": n / conv_s, "error": None})


# ---- evaluation ---------------------------------------------------------------------------------------------

def part_eval(args, prof):
    from PIL import Image

    import jax
    from flax import nnx

    import make_jax
    from make_jax.checkpoint.orbax_io import model_with_params, save_checkpoint
    from make_jax.models import abstract_model, get_model_config

    work = os.path.join(args.work, "eval")
    shutil.rmtree(work, ignore_errors=True)
    os.makedirs(os.path.join(work, "images"))
    cfg = get_model_config(prof["model"])
    rng = np.random.default_rng(0)
    # Random parameters drawn on the host: what is timed is loading and encoding, not the initialisation (whose
    # many small eager programs took longer to compile on CPU than the part's measurement itself).
    shapes = nnx.to_pure_dict(nnx.state(abstract_model(cfg), nnx.Param))
    params = jax.tree.map(lambda s: (0.02 * rng.standard_normal(s.shape)).astype(np.float32), shapes)
    save_checkpoint(os.path.join(work, "ckpt"), model_with_params(cfg, params), cfg)
    paths = []
    side = prof["generate_size"]
    for i in range(prof["eval_images"]):  # smooth colour fields + noise: JPEGs of realistic size and cost
        base = rng.uniform(60, 220, (4, 4, 3))
        img = np.kron(base, np.ones((side // 4 + 1, side // 4 + 1, 1)))[:side, :side]
        img = np.clip(img + rng.normal(0, 12, img.shape), 0, 255).astype(np.uint8)
        paths.append(os.path.join(work, "images", f"{i:05d}.jpg"))
        Image.fromarray(img).save(paths[-1], quality=92)
    t0 = time.perf_counter()
    enc = make_jax.load(os.path.join(work, "ckpt"), dtype=prof["dtype"], batch_size=prof["eval_batch"])
    load_s = time.perf_counter() - t0

    def encode(files):
        images = []
        for p in files:
            with Image.open(p) as im:
                images.append(im.convert("RGB"))
        return enc.encode_image(images)

    eb = prof["eval_batch"]
    t0 = time.perf_counter()
    encode(paths[:eb])  # compile
    warm_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    emb = np.concatenate([encode(paths[i:i + eb]) for i in range(0, len(paths), eb)])
    elapsed = time.perf_counter() - t0
    assert emb.shape[0] == len(paths) and np.all(np.isfinite(emb))
    steps = -(-len(paths) // eb)
    record(args.out, {"name": "eval", "framework": "jax", "mode": "eval", "model": prof["model"], "batch": eb,
                      "dtype": prof["dtype"], "images_per_s": len(paths) / elapsed, "step_ms": 1e3 * elapsed / steps,
                      "compile_s": warm_s, "load_s": load_s, "steps": steps, "images": len(paths),
                      "image_side": side, "error": None})


# ---- the orchestrator ---------------------------------------------------------------------------------------

PART_FUNCS = {"device": part_device, "jax_packed": part_jax_packed, "jax_dense": part_jax_dense,
              "jax_gradcache": part_jax_gradcache, "torch_peer": part_torch_peer,
              "input_pipeline": part_input_pipeline, "eval": part_eval}
PART_META = {"jax_packed": ("jax", "packed"), "jax_dense": ("jax", "dense"), "jax_gradcache": ("jax", "gradcache"),
             "torch_peer": ("torch", "official_dense"), "input_pipeline": ("jax", "input_pipeline"),
             "eval": ("jax", "eval")}


def child(args) -> int:
    """One part, in this process (started by the orchestrator)."""
    prof = PROFILES["dry" if args.dry_run else "gpu"]
    if args.dry_run:  # the same code path at CPU sizes; the peer runs on CPU too
        os.environ.setdefault("JAX_PLATFORMS", "cpu")
        # compile fast, run slowly: the dry run checks the code, not the speed (about 2× less CPU time)
        os.environ.setdefault("XLA_FLAGS", "--xla_backend_optimization_level=0")
    if args.part == "torch_peer":  # jax is imported (FLOP counts) but must never take the GPU's memory here
        os.environ["JAX_PLATFORMS"] = "cpu"
    else:  # jax parts: room for batch 2048 (the default preallocation is 75 % of the device)
        os.environ.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", "0.92")
    PART_FUNCS[args.part](args, prof)
    return 0


def _runs_of(out: str, name: str) -> int:
    return sum(r["name"] == name for r in _load(out)["runs"])


def orchestrate(args) -> int:
    prof = PROFILES["dry" if args.dry_run else "gpu"]
    os.makedirs(args.out, exist_ok=True)
    res = {"device": {"command": args.command, "budget_s": args.budget_s, "profile": "dry" if args.dry_run else "gpu"},
           "runs": []}
    _save(args.out, res)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # run the `finally` that ends the running part
    parts = [p for p in PARTS if not args.only or p in args.only.split(",")]
    start = time.monotonic()
    log = open(os.path.join(args.out, "suite.log"), "a")
    for part in parts:
        left = args.budget_s - (time.monotonic() - start)
        if left < prof["need_s"][part]:
            print(f"[suite] {part}: skipped ({left:.0f} s left, needs {prof['need_s'][part]} s)", flush=True)
            if part != "device":
                fw, mode = PART_META[part]
                record(args.out, {"name": part, "framework": fw, "mode": mode, "model": prof["model"],
                                  "steps": 0, "error": f"skipped: {left:.0f} s of budget left"})
            continue
        before = _runs_of(args.out, part)
        cmd = [sys.executable, "-u", os.path.abspath(__file__), "--child", "--part", part, "--out", args.out,
               "--work", args.work, "--command", args.command, "--packed-remat", args.packed_remat,
               "--dense-remat", args.dense_remat, "--gradcache-remat", args.gradcache_remat]
        cmd += ["--dry-run"] if args.dry_run else []
        cmd += [] if args.trace else ["--no-trace"]
        t0 = time.monotonic()
        print(f"[suite] {part}: start ({left:.0f} s left)", flush=True)
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            output, _ = proc.communicate(timeout=left)
            rc = proc.returncode
        except subprocess.TimeoutExpired:
            proc.kill()
            output, _ = proc.communicate()
            rc = "timeout"
        finally:
            if proc.poll() is None:  # the orchestrator itself is being stopped: never leave a part running
                proc.kill()
        log.write(f"==== {part} (rc {rc}, {time.monotonic() - t0:.1f} s)\n{output}\n")
        log.flush()
        if args.verbose or rc != 0:
            print(output[-4000:], flush=True)
        if part != "device" and _runs_of(args.out, part) == before:  # crashed or cut before any figure
            fw, mode = PART_META[part]
            tail = [ln for ln in output.strip().splitlines() if ln.strip()][-1:] or [""]
            why = "cut at the budget" if rc == "timeout" else f"crashed (rc {rc})"
            record(args.out, {"name": part, "framework": fw, "mode": mode, "model": prof["model"], "steps": 0,
                              "error": f"{why}: {tail[0][:300]}"})
    res = _load(args.out)
    res["device"]["suite_s"] = time.monotonic() - start
    _save(args.out, res)
    log.close()
    print(f"[suite] done in {time.monotonic() - start:.0f} s: {args.out}/results.json", flush=True)
    return 0


def main(argv=None) -> int:
    import wheel_check

    wheel_check.guard_from_env()  # GPU_SUITE_IMAGE_ONLY: refuse imports the GPU machine would not have
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="folder for results.json, suite.log and the trace")
    ap.add_argument("--budget-s", type=float, default=None,
                    help="wall-clock budget of the whole suite (default 480; 3600 with --dry-run, which only checks "
                         "that the code runs, on whatever CPU the tests have)")
    ap.add_argument("--dry-run", action="store_true", help="CPU, tiny model, small batches, 2 steps a part")
    ap.add_argument("--only", default="", help=f"comma-separated parts (default all): {','.join(PARTS)}")
    ap.add_argument("--no-trace", dest="trace", action="store_false", help="no jax profiler trace of the packed step")
    ap.add_argument("--packed-remat", default="vision,full", help="remat settings tried in turn on OOM")
    ap.add_argument("--dense-remat", default="full")
    ap.add_argument("--gradcache-remat", default="none,vision")
    ap.add_argument("--work", default=None, help="scratch folder (default: a temporary folder)")
    ap.add_argument("--verbose", action="store_true", help="print every part's output")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--part", choices=PARTS, help=argparse.SUPPRESS)
    ap.add_argument("--command", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    for spec in (args.packed_remat, args.dense_remat, args.gradcache_remat):
        bad = [s for s in spec.split(",") if s not in ("none", "vision", "text", "full")]
        if bad:
            ap.error(f"remat settings are none, vision, text or full; got {bad}")
    unknown = [p for p in args.only.split(",") if p and p not in PARTS]
    if unknown:
        ap.error(f"--only: unknown parts {unknown}; known: {', '.join(PARTS)}")
    if args.budget_s is None:
        args.budget_s = 3600.0 if args.dry_run else 480.0
    args.out = os.path.abspath(args.out)
    if args.command is None:
        args.command = "python benchmarks/gpu_suite.py " + " ".join(sys.argv[1:] if argv is None else argv)
    if args.child:
        return child(args)
    work = args.work
    args.work = work or tempfile.mkdtemp(prefix="gpu_suite_")
    try:
        return orchestrate(args)
    finally:
        if work is None:
            shutil.rmtree(args.work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
