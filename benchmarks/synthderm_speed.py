"""Throughput of the SynthDerm generator (make_jax.synthderm).

Usage:
    python benchmarks/synthderm_speed.py [--n 10000] [--image-size 96] [--format png] [--workers 1 2] [--seed 0]

Scenarios, each on the same n training items (case + caption + knowledge + image; the MAKE CSV, the Derm1M-like
table and the ground truth written at the end):
  draw            draw_case only, in this process (no captions, no files): the drawing cost per image
  draw+encode     draw_case and the image encoder (PNG: the package's zlib level-1 writer; JPEG: Pillow q95)
  generate/wN     the whole `generate` call with N worker processes, files written to a temporary directory

For each: images/s over wall-clock time and over this process's CPU time (children included for generate),
and the extrapolated seconds for 10,000 images. The machine's 1-minute load average is printed before and after,
because on a shared machine the wall-clock numbers depend on what else runs.
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import shutil
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import numpy as np  # noqa: E402

from make_jax.synthderm import SynthDermConfig, draw_case, generate, make_item  # noqa: E402
from make_jax.synthderm.layouts import encode_image  # noqa: E402


def cpu_seconds(children: bool = False) -> float:
    s = resource.getrusage(resource.RUSAGE_SELF)
    t = s.ru_utime + s.ru_stime
    if children:
        c = resource.getrusage(resource.RUSAGE_CHILDREN)
        t += c.ru_utime + c.ru_stime
    return t


def report(name: str, n: int, wall: float, cpu: float) -> None:
    print(
        f"{name:16s} {n:6d} img  wall {wall:7.2f} s  {n / wall:7.1f} img/s  |  cpu {cpu:7.2f} s  "
        f"{n / cpu:7.1f} img/s per core  |  10k images: {1e4 * wall / n:5.1f} s wall, {1e4 * cpu / n:5.1f} s cpu"
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=10000)
    p.add_argument("--image-size", type=int, default=96)
    p.add_argument("--format", choices=("png", "jpg"), default="png")
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--skip-inprocess", action="store_true", help="only the generate scenarios")
    a = p.parse_args()

    print(
        f"python {platform.python_version()} numpy {np.__version__} on {platform.machine()}, "
        f"{os.cpu_count()} CPUs; load average (1 min) {os.getloadavg()[0]:.2f}"
    )
    print(f"n={a.n} image_size={a.image_size} format={a.format} seed={a.seed}")
    cfg = SynthDermConfig(seed=a.seed, num_train=a.n, num_val=0, num_zeroshot=0, num_concepts=0, num_retrieval=0,
                          image_size=a.image_size, image_format=a.format)  # fmt: skip

    if not a.skip_inprocess:
        cases = [make_item(cfg, "train", i, i % 16, None)["case"] for i in range(a.n)]
        t, c = time.perf_counter(), cpu_seconds()
        for case in cases:
            draw_case(case, a.image_size)
        report("draw", a.n, time.perf_counter() - t, cpu_seconds() - c)
        t, c = time.perf_counter(), cpu_seconds()
        for case in cases:
            encode_image(draw_case(case, a.image_size), a.format)
        report("draw+encode", a.n, time.perf_counter() - t, cpu_seconds() - c)

    for w in a.workers:
        out = tempfile.mkdtemp(prefix="synthderm_bench_")
        try:
            t, c = time.perf_counter(), cpu_seconds(children=True)
            generate(out, cfg, workers=w, progress=False)
            report(f"generate/w{w}", a.n, time.perf_counter() - t, cpu_seconds(children=True) - c)
        finally:
            shutil.rmtree(out, ignore_errors=True)
    print(f"load average (1 min) after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
