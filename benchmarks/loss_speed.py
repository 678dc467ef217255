"""CPU micro-benchmark of the MAKE loss: forward + backward, jitted, paper and official modes.

    python benchmarks/loss_speed.py                      # B=256, N=11 (M=2816), P=196, D=512
    python benchmarks/loss_speed.py --memory             # also: compiled memory at B=2048 (no run)

Times are the median over --iters steps after --warmup steps, each ended by block_until_ready.
The gradient is taken w.r.t. image and text embeddings, logit_scale and, when SLRA is on, the patch
embeddings (what training needs).
"""

from __future__ import annotations

import argparse
import math
import platform
import statistics
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing
from make_jax.losses import LossConfig, LossInputs, dense_layout, make_loss


def make_inputs(b, n, p, d, seed=0):
    rng = np.random.default_rng(seed)

    def unit(x):
        return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)

    img = unit(rng.normal(size=(b, d)))
    txt = unit(rng.normal(size=(b * n, d)))
    patch = unit(rng.normal(size=(b, p, d)) + 0.5 * txt.reshape(b, n, d)[:, :1])
    valid = np.zeros((b, n), bool)
    valid[:, 0] = True
    valid[:, 1] = rng.random(b) < 0.95
    valid[:, 2] = rng.random(b) < 0.8
    n_sub = rng.integers(0, n - 2, size=b)  # 0..8 subtexts
    for i in range(b):
        valid[i, 3:3 + n_sub[i]] = True
    owner, slot = dense_layout(b, n)
    return (jnp.asarray(img), jnp.asarray(patch), jnp.asarray(txt), owner, slot,
            jnp.asarray(valid.reshape(-1)), jnp.asarray(math.log(1 / 0.07), jnp.float32))


def step_fn(cfg):
    def f(img, patch, txt, owner, slot, valid, ls):
        return make_loss(LossInputs(img, patch, txt, owner, slot, valid, ls), cfg)

    # the patch gradient only when the objective uses the patches (SLRA)
    argnums = (0, 1, 2, 6) if cfg.slra else (0, 2, 6)
    return jax.jit(jax.value_and_grad(f, argnums=argnums, has_aux=True))


def bench(cfg, inputs, warmup, iters):
    fn = step_fn(cfg)
    t0 = time.perf_counter()
    jax.block_until_ready(fn(*inputs))
    compile_s = time.perf_counter() - t0
    for _ in range(warmup):
        jax.block_until_ready(fn(*inputs))
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*inputs))
        times.append(time.perf_counter() - t0)
    return compile_s, statistics.median(times) * 1e3, min(times) * 1e3


def memory(cfg, b, n, p, d):
    f32 = jnp.float32
    shapes = (jax.ShapeDtypeStruct((b, d), f32), jax.ShapeDtypeStruct((b, p, d), f32),
              jax.ShapeDtypeStruct((b * n, d), f32), jax.ShapeDtypeStruct((b * n,), jnp.int32),
              jax.ShapeDtypeStruct((b * n,), jnp.int32), jax.ShapeDtypeStruct((b * n,), bool),
              jax.ShapeDtypeStruct((), f32))
    compiled = step_fn(cfg).lower(*shapes).compile()
    return compiled.memory_analysis()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--slots", type=int, default=11)
    ap.add_argument("--patches", type=int, default=196)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--memory", action="store_true", help="compiled memory analysis at B=2048 (no execution)")
    args = ap.parse_args()

    b, n, p, d = args.batch, args.slots, args.patches, args.dim
    print(f"jax {jax.__version__} on {jax.devices()[0].platform} ({platform.processor() or platform.machine()}), "
          f"B={b} N={n} M={b * n} P={p} D={d}, float32, forward+backward, jitted")
    inputs = make_inputs(b, n, p, d)
    configs = {"paper (MAKE: mkcl+slra+dkw)": LossConfig(),
               "paper (mkcl only)": LossConfig(slra=False, dkw=False),
               "official (MAKE)": LossConfig(mode="official")}
    for name, cfg in configs.items():
        compile_s, med, best = bench(cfg, inputs, args.warmup, args.iters)
        print(f"{name:30s} median {med:8.1f} ms/step   min {best:8.1f} ms   (compile {compile_s:.1f} s)")

    if args.memory:
        bb, nn = 2048, 11
        print(f"\ncompiled memory, B={bb} M={bb * nn} P={p} D={d} (XLA buffer assignment on this backend):")
        for name, cfg in configs.items():
            ma = memory(cfg, bb, nn, p, d)
            mib = 1 << 20
            print(f"{name:30s} temp {ma.temp_size_in_bytes / mib:8.1f} MiB   args {ma.argument_size_in_bytes / mib:7.1f} MiB"
                  f"   outputs {ma.output_size_in_bytes / mib:7.1f} MiB")


if __name__ == "__main__":
    main()
