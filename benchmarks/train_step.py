"""Times the real jitted train step (model + MAKE loss + AdamW) on batches shaped like Derm1M†.

    python benchmarks/train_step.py --model tiny --batch 64 --mode dense
    python benchmarks/train_step.py --model tiny --batch 64 --mode packed                  # + buckets + dedup
    python benchmarks/train_step.py --model tiny --batch 64 --mode packed --no-dedup --no-buckets
    python benchmarks/train_step.py --model tiny --batch 64 --mode packed --groups 0.6,0.2,0.2
    python benchmarks/train_step.py --model tiny --batch 64 --mode gradcache --microbatches 4
    python benchmarks/train_step.py --model ViT-B-16 --batch 2048 --input-only            # host side + FLOPs
    python benchmarks/train_step.py --input-only --data DATA/make_derm/1.0.0 --batch 256   # the Grain pipeline

Batches are synthetic (numpy), with the slot validity and token lengths given by the options (defaults: the
assumed Derm1M distribution written in docs/performance.md): raw caption always valid, ~N(40, 15) tokens;
disease text valid 0.98, ~N(15, 3) tokens, one of 390 fixed texts drawn Zipf-like (so texts repeat within a
batch); concept text valid 0.8, ~N(15, 4) tokens, one of 2,000 fixed texts, Zipf-like; subtext k valid with a
decaying probability (0.92 ... 0.05, mean 2.9 subtexts), ~N(12, 5) tokens. Lengths count SOT and EOT.

Reported after warm-up (every compiled variant run once), with `block_until_ready`: images/s, step time, model
FLOPs per image counting the texts actually encoded at their actual context (make_jax/train/flops.py; GradCache's
extra forward is not counted), MFU (where the device's peak is known), peak device memory
(`memory_stats()`, else 'n/a'; the process's peak RSS is printed too), compile time, and the host time to pack.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

SOT, EOT, N_SLOTS, CONTEXT = 49406, 49407, 11, 77
SUBTEXT_P = (0.92, 0.72, 0.50, 0.33, 0.21, 0.13, 0.08, 0.05)


# ---- synthetic Derm1M-shaped batches ----------------------------------------------------------------------

class Derm1MLike:
    """Dense batches {'images' uint8, 'text_ids' (B, 11, 77), 'text_valid' (B, 11)} with the given statistics."""

    def __init__(self, image_size: int, seed: int = 0, p_disease: float = 0.98, p_concept: float = 0.8,
                 subtext_p=SUBTEXT_P, raw_len=(40, 15), disease_len=(15, 3), concept_len=(15, 4),
                 subtext_len=(12, 5), n_diseases: int = 390, n_concepts: int = 2000, zipf: float = 1.1):
        self.rng = np.random.default_rng(seed)
        self.image_size = image_size
        self.p_disease, self.p_concept, self.subtext_p = p_disease, p_concept, np.asarray(subtext_p)
        self.raw_len, self.subtext_len = raw_len, subtext_len
        self.diseases = self._texts(self._lengths(disease_len, n_diseases))
        self.concepts = self._texts(self._lengths(concept_len, n_concepts))
        self.p_dis = self._zipf(n_diseases, zipf)
        self.p_con = self._zipf(n_concepts, zipf)

    @staticmethod
    def _zipf(n, s):
        w = 1.0 / np.arange(1, n + 1) ** s
        return w / w.sum()

    def _lengths(self, mean_std, shape):
        return np.clip(np.rint(self.rng.normal(mean_std[0], mean_std[1], shape)), 4, CONTEXT).astype(np.int32)

    def _texts(self, lengths):
        pos = np.arange(CONTEXT)
        body = self.rng.integers(1, SOT, lengths.shape + (CONTEXT,), dtype=np.int32)
        ids = np.where(pos < lengths[..., None] - 1, body, 0)
        ids[..., 0] = SOT
        np.put_along_axis(ids, (lengths - 1)[..., None], EOT, axis=-1)
        return ids.astype(np.int32)

    def batch(self, b: int) -> dict:
        r = self.rng
        ids = np.empty((b, N_SLOTS, CONTEXT), np.int32)
        ids[:, 0] = self._texts(self._lengths(self.raw_len, b))
        ids[:, 1] = self.diseases[r.choice(len(self.diseases), b, p=self.p_dis)]
        ids[:, 2] = self.concepts[r.choice(len(self.concepts), b, p=self.p_con)]
        ids[:, 3:] = self._texts(self._lengths(self.subtext_len, (b, N_SLOTS - 3)))
        valid = np.zeros((b, N_SLOTS), bool)
        valid[:, 0] = True
        valid[:, 1] = r.random(b) < self.p_disease
        valid[:, 2] = r.random(b) < self.p_concept
        u = r.random(b)[:, None]  # subtext k valid iff k <= count, P(count >= k) = subtext_p[k-1]
        valid[:, 3:] = u < self.subtext_p[None, :]
        images = r.integers(0, 256, (b, self.image_size, self.image_size, 3), dtype=np.uint8)
        return {"images": images, "text_ids": ids, "text_valid": valid}


# ---- helpers -------------------------------------------------------------------------------------------

def pack_config_for(args, gen: Derm1MLike, loss_config, multiple_of: int, samples=None):
    from make_jax.train.packing import DEFAULT_BUCKETS, suggest_pack_config

    groups = tuple(float(x) for x in args.groups.split(",")) if args.groups else (1.0,)
    if samples is None:
        # budgets from other batches than the timed ones (a separate stream): every mode times the same batches
        sampler = Derm1MLike(gen.image_size, seed=args.seed + 1000)
        samples = [sampler.batch(args.batch) for _ in range(args.budget_samples)]
    cfg = suggest_pack_config(samples, quantile=args.quantile, multiple_of=multiple_of, dedup=not args.no_dedup,
                              buckets=None if args.no_buckets else DEFAULT_BUCKETS, groups=groups,
                              loss_config=loss_config)
    return cfg


def text_flops_of(model_cfg, shapes) -> float:
    """Forward FLOPs of encoding texts in groups of (count, context)."""
    from make_jax.train.flops import text_forward_flops

    return sum(n * text_forward_flops(model_cfg, length) for n, length in shapes)


def text_shapes(batch: dict, loss_config) -> list[tuple[int, int]]:
    from make_jax.train.packing import is_packed, text_groups

    if is_packed(batch):
        return [tuple(batch[f"text_ids_{g}"].shape) for g in range(text_groups(batch))]
    b, n, length = batch["text_ids"].shape
    return [(b * loss_config.slots_used(n), length)]


def memory_peak() -> str:
    import jax

    try:
        stats = jax.devices()[0].memory_stats()
    except Exception:  # noqa: BLE001 - backends without memory stats
        stats = None
    if stats and "peak_bytes_in_use" in stats:
        return f"{stats['peak_bytes_in_use'] / 2**30:.2f} GiB"
    return "n/a"


def rss_peak_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # kB on Linux


def header(args) -> dict:
    import jax

    return {"date": datetime.date.today().isoformat(), "device": jax.devices()[0].device_kind,
            "platform": platform.platform(), "cpus": os.cpu_count(), "jax": jax.__version__,
            "command": "python benchmarks/train_step.py " + " ".join(sys.argv[1:])}


# ---- --input-only ---------------------------------------------------------------------------------------

def input_only(args) -> dict:
    from make_jax.losses import LossConfig
    from make_jax.models import get_model_config
    from make_jax.train.flops import image_forward_flops, train_flops_per_image
    from make_jax.train.packing import pack_batch

    model_cfg = get_model_config(args.model)
    loss_config = LossConfig()
    size = model_cfg.vision.image_size
    gen = Derm1MLike(size, seed=args.seed)
    multiple = max(1, args.microbatches) * args.devices
    pack = not (args.mode == "dense" or args.no_pack)
    cfg = samples = None
    if args.data:
        from make_jax.data.pipeline import PipelineConfig, train_dataset

        source = f"Grain pipeline over {args.data}"
        ds = train_dataset(args.data, args.batch, PipelineConfig(image_size=size, workers=args.workers,
                                                                 read_threads=args.threads, seed=args.seed))
        if pack:  # budgets from the data's own statistics (the text fields of the first batches of another seed)
            sample_it = iter(train_dataset(args.data, args.batch, PipelineConfig(image_size=size,
                                                                                seed=args.seed + 1000)))
            samples = [{k: v for k, v in next(sample_it).items() if k.startswith("text")}
                       for _ in range(args.budget_samples)]
        it = iter(ds)
        next(it)
        make = lambda: next(it)  # noqa: E731
    else:
        source = "synthetic numpy batches (no dataset given: --data DIR times the Grain pipeline)"
        make = lambda: gen.batch(args.batch)  # noqa: E731
    if pack:
        cfg = pack_config_for(args, gen, loss_config, multiple, samples)
    out = {"mode": "input-only", "model": args.model, "batch": args.batch, "pack_config": repr(cfg)}
    t_make = t_pack = 0.0
    stats, flops = [], []
    for _ in range(args.steps):
        t0 = time.perf_counter()
        batch = make()
        t1 = time.perf_counter()
        if cfg is not None:
            batch, st = pack_batch(batch, cfg, loss_config)
            stats.append(st)
        t2 = time.perf_counter()
        t_make += t1 - t0
        t_pack += t2 - t1
        flops.append(3 * (args.batch * image_forward_flops(model_cfg)
                          + text_flops_of(model_cfg, text_shapes(batch, loss_config))) / args.batch)
    dense = train_flops_per_image(model_cfg, N_SLOTS, CONTEXT)
    out.update(source=source, batch_ms=1e3 * t_make / args.steps, pack_ms=1e3 * t_pack / args.steps,
               host_images_per_s=args.batch * args.steps / (t_make + t_pack),
               train_gflop_per_image=float(np.mean(flops)) / 1e9, dense_gflop_per_image=dense / 1e9,
               image_gflop_per_image=3 * image_forward_flops(model_cfg) / 1e9)
    if stats:
        for k in ("valid", "unique", "dropped", "encoded", "text_tokens"):
            out[f"mean_{k}_per_image"] = float(np.mean([s[k] for s in stats])) / args.batch
        out["buckets_seen"] = sorted({s["buckets"] for s in stats})
        out["tiers_seen"] = sorted({s["tier"] for s in stats})
    return out


# ---- the step ------------------------------------------------------------------------------------------

def run_step(args) -> dict:
    import jax
    import jax.numpy as jnp

    from make_jax.losses import LossConfig
    from make_jax.models import create_model, get_model_config
    from make_jax.train.flops import image_forward_flops, peak_flops
    from make_jax.train.gradcache import make_gradcache_train_step
    from make_jax.train.optimizer import make_optimizer
    from make_jax.train.packing import pack_batch
    from make_jax.train.step import (TrainState, ModelFunctions, batch_sharding, jit_train_step, make_mesh,
                                     make_train_step)

    model_cfg = get_model_config(args.model, dtype=args.dtype, remat=args.remat)
    loss_config = LossConfig()
    model = create_model(model_cfg, seed=args.seed)
    fns = ModelFunctions(model)
    params = fns.params(model)
    del model
    optimizer, schedule = make_optimizer(params, lr=1e-4, warmup_steps=10, total_steps=1000)
    state = TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=optimizer.init(params))
    mesh = make_mesh()
    ndev = len(mesh.devices.ravel())
    k = max(1, args.microbatches)
    use_pack = args.mode == "packed" or (args.mode == "gradcache" and not args.no_pack)
    gen = Derm1MLike(model_cfg.vision.image_size, seed=args.seed)
    cfg = pack_config_for(args, gen, loss_config, k * ndev) if use_pack else None
    if args.mode in ("dense", "packed"):  # one step for both layouts
        step_fn = make_train_step(fns, optimizer, loss_config, schedule)
    else:
        step_fn = make_gradcache_train_step(fns, optimizer, loss_config, schedule, microbatches=k)
    jitted = jit_train_step(step_fn, mesh, state)

    batches, stats, t_pack = [], [], 0.0
    for _ in range(args.distinct):
        batch = gen.batch(args.batch)
        if use_pack:
            t0 = time.perf_counter()
            batch, st = pack_batch(batch, cfg, loss_config)
            t_pack += time.perf_counter() - t0
            stats.append(st)
        batches.append(jax.device_put(batch, batch_sharding(mesh)))
    state = jax.device_put(state, jax.tree.map(lambda _: jax.sharding.NamedSharding(
        mesh, jax.sharding.PartitionSpec()), state))

    # compile every variant (shape signature) once, then warm up
    compiled, t_compile = {}, 0.0
    sig = lambda b: tuple((key, v.shape) for key, v in sorted(b.items()))  # noqa: E731
    for b in batches:
        if sig(b) not in compiled:
            t0 = time.perf_counter()
            compiled[sig(b)] = jitted.lower(state, b).compile()
            t_compile += time.perf_counter() - t0
    for i in range(args.warmup):
        b = batches[i % len(batches)]
        state, metrics = compiled[sig(b)](state, b)
    jax.block_until_ready(state)

    t0 = time.perf_counter()
    for i in range(args.steps):
        b = batches[i % len(batches)]
        state, metrics = compiled[sig(b)](state, b)
    jax.block_until_ready((state, metrics))
    elapsed = time.perf_counter() - t0

    flops = [3 * (args.batch * image_forward_flops(model_cfg) + text_flops_of(model_cfg, text_shapes(
        batches[i % len(batches)], loss_config))) for i in range(args.steps)]
    step_s = elapsed / args.steps
    achieved = sum(flops) / elapsed
    peak = peak_flops(jax.devices()[0].device_kind)
    out = {"mode": args.mode, "model": args.model, "batch": args.batch, "dtype": args.dtype, "remat": args.remat,
           "microbatches": k if args.mode == "gradcache" else None, "devices": ndev,
           "pack_config": repr(cfg), "variants_compiled": len(compiled),
           "compile_s": t_compile, "step_s": step_s, "images_per_s": args.batch / step_s,
           "train_gflop_per_image": sum(flops) / args.steps / args.batch / 1e9,
           "achieved_tflop_s": achieved / 1e12,
           "mfu": (achieved / (peak * ndev)) if peak else "n/a",
           "peak_device_memory": memory_peak(), "peak_rss_gib": rss_peak_gib(),
           "pack_ms_per_batch": 1e3 * t_pack / len(batches) if use_pack else None,
           "final_loss": float(metrics["loss"])}
    if stats:
        for key in ("valid", "unique", "dropped", "encoded", "text_tokens"):
            out[f"mean_{key}_per_image"] = float(np.mean([s[key] for s in stats])) / args.batch
        out["buckets_seen"] = sorted({s["buckets"] for s in stats})
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="tiny", choices=["tiny", "small", "ViT-B-16"])
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    ap.add_argument("--remat", action="store_true")
    ap.add_argument("--mode", default="dense", choices=["dense", "packed", "gradcache"])
    ap.add_argument("--microbatches", type=int, default=1)
    ap.add_argument("--no-pack", action="store_true", help="gradcache on dense batches")
    ap.add_argument("--no-dedup", action="store_true")
    ap.add_argument("--no-buckets", action="store_true")
    ap.add_argument("--groups", default="", help="length-group fractions, e.g. 0.6,0.2,0.2 (default one group)")
    ap.add_argument("--quantile", type=float, default=0.99, help="budget quantile of valid/unique texts")
    ap.add_argument("--budget-samples", type=int, default=16, help="sample batches to choose budgets from")
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--distinct", type=int, default=2, help="distinct batches cycled through")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--input-only", action="store_true", help="time the input side only (and count FLOPs)")
    ap.add_argument("--data", help="converted MAKE records for --input-only (default: synthetic batches)")
    ap.add_argument("--workers", type=int, default=0)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--devices", type=int, default=1, help="--input-only: devices the budgets must divide by")
    ap.add_argument("--json", help="append the result as one JSON line to this file")
    args = ap.parse_args()

    result = header(args)
    result.update(input_only(args) if args.input_only else run_step(args))
    for key, value in result.items():
        if isinstance(value, float):
            value = f"{value:.4g}"
        print(f"{key:>26}: {value}")
    if args.json:
        with open(args.json, "a") as f:
            f.write(json.dumps(result, default=str) + "\n")


if __name__ == "__main__":
    main()
