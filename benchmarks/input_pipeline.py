"""Throughput of the Grain input pipeline (make_jax.data.pipeline): decode + train augment + batch, at 224 px from
records stored at a given shorter side (default: the converter's, 355) — the train transform of docs/data.md, images/s
per CPU core — and the records' size on disk.

Usage:
    python benchmarks/input_pipeline.py [--images 256] [--batch 64] [--batches 24] [--size 224] [--keep DIR]
        [--shorter-side 355]

1. Builds a synthetic MAKE CSV (texts from tests/golden/MAKE_training_example.csv) and photo-like source images
   (640x480 and 480x640 JPEGs: smooth shading, blotches, fine texture and sensor noise), and converts them with
   ``make_jax.records.convert`` (``--shorter-side``, JPEG q95, all cores) — conversion speed is printed too.
2. Runs ``train_dataset`` in one process with no worker processes and no threads (read_threads=0,
   prefetch=0): every image is read, its record parsed, the JPEG decoded, RandomResizedCrop + colour
   jitter (p=0.8) + grayscale (p=0.2) applied and the batch stacked on one core. Reported: wall images/s and
   images per CPU-second of this process (``time.process_time``; on a shared, loaded machine this is the closer
   figure to one dedicated core).
3. The same with 2 read threads (PIL/NumPy release the GIL), and a per-stage breakdown (µs per image).
"""

from __future__ import annotations

import argparse
import csv
import os
import platform
import shutil
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from make_jax.records import convert as C  # noqa: E402
from make_jax.data import pipeline as P  # noqa: E402
from make_jax.data import records as R  # noqa: E402
from make_jax.data import transforms as T  # noqa: E402

GOLDEN = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "golden", "MAKE_training_example.csv")


def photo_like(w: int, h: int, rng: np.random.Generator) -> np.ndarray:
    """A skin-photo-like RGB image: smooth shading, a few reddish blotches, fine texture, sensor noise."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    base = np.array([200, 150, 130], np.float32) + rng.normal(0, 15, 3)
    shade = 1 + 0.15 * np.sin(xx / w * rng.uniform(2, 5) + rng.uniform(0, 6)) * np.cos(yy / h * rng.uniform(2, 5))
    img = base * shade[..., None]
    for _ in range(rng.integers(2, 6)):
        cx, cy, r = rng.uniform(0, w), rng.uniform(0, h), rng.uniform(20, 120)
        blob = np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * r * r))
        img += blob[..., None] * np.array([-10, -60, -50], np.float32) * rng.uniform(0.5, 1.2)
    small = rng.normal(0, 1, (h // 8 + 1, w // 8 + 1, 3)).astype(np.float32)
    texture = np.kron(small, np.ones((8, 8, 1), np.float32))[:h, :w]
    img += 6 * texture + rng.normal(0, 4, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def build(tmp: str, n: int, workers: int, shorter_side: int) -> tuple[str, float]:
    from PIL import Image

    with open(GOLDEN, newline="", encoding="utf-8") as fh:
        golden = list(csv.DictReader(fh))
    rng = np.random.default_rng(0)
    rows = []
    for i in range(n):
        r = dict(golden[i % len(golden)])
        r["filename"] = f"img/{i:05d}.jpg"
        w, h = (640, 480) if i % 2 else (480, 640)
        p = os.path.join(tmp, "images", r["filename"])
        os.makedirs(os.path.dirname(p), exist_ok=True)
        Image.fromarray(photo_like(w, h, rng)).save(p, quality=92)
        rows.append(r)
    with open(os.path.join(tmp, "train.csv"), "w", newline="", encoding="utf-8") as fh:
        wr = csv.DictWriter(fh, list(rows[0]))
        wr.writeheader()
        wr.writerows(rows)
    t0 = time.perf_counter()
    res = C.convert(os.path.join(tmp, "train.csv"), os.path.join(tmp, "images"), os.path.join(tmp, "out"),
                    workers=workers, shard_size=128, shorter_side=shorter_side, progress=False, log=lambda s: None)
    return res.directory, n / (time.perf_counter() - t0)


def run_pipeline(path: str, batch: int, batches: int, size: int, threads: int) -> tuple[float, float]:
    cfg = P.PipelineConfig(image_size=size, read_threads=threads, prefetch=0, seed=0)
    it = iter(P.train_dataset(path, batch, cfg, shard_options=__import__("grain").sharding.NoSharding()))
    next(it)  # warm-up (imports, tokenizer-free path, permutation)
    w0, c0 = time.perf_counter(), time.process_time()
    for _ in range(batches):
        b = next(it)
        assert b["images"].shape == (batch, size, size, 3)
    w, c = time.perf_counter() - w0, time.process_time() - c0
    return batch * batches / w, batch * batches / c


def stages(path: str, size: int, n: int = 256, batch: int = 64) -> dict[str, float]:
    """CPU µs per image of each stage, timed inside one loop over the images as the pipeline runs them."""
    src = R.RecordSource(path, "train")
    T.decode_image(R.decode_record(src[0], R.PIPELINE_FIELDS)["image"])  # open the files, imports
    cfg = T.TrainTransformConfig(size=size)
    names = ["read + parse record", "decode JPEG", "crop + bicubic resize", "colour jitter (p=0.8)",
             "grayscale (p=0.2) + to array", "stack batch"]
    acc = dict.fromkeys(names, 0.0)
    rng = np.random.default_rng(0)
    clock = time.process_time
    arrs = []
    for i in range(n):
        t0 = clock()
        rec = R.decode_record(src[i % len(src)], R.PIPELINE_FIELDS)
        t1 = clock()
        img = T.decode_image(rec["image"])
        t2 = clock()
        p = T.sample_train_params(rng, img.width, img.height, cfg)
        out = T.resized_crop(img, p.box, size)
        t3 = clock()
        if p.jitter is not None:
            out = T.apply_jitter(out, p.jitter)
        t4 = clock()
        arrs.append(np.asarray(T.to_grayscale3(out) if p.grayscale else out))
        t5 = clock()
        for k, a, b in zip(names, (t0, t1, t2, t3, t4), (t1, t2, t3, t4, t5)):
            acc[k] += b - a
        if len(arrs) == batch:
            t6 = clock()
            np.stack(arrs)
            acc["stack batch"] += clock() - t6
            arrs = []
    return {k: v / n * 1e6 for k, v in acc.items()}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=256)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--batches", type=int, default=24)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--keep", help="reuse/keep the synthetic dataset in this folder")
    ap.add_argument("--shorter-side", type=int, default=C.DEFAULT_SHORTER_SIDE, help="stored shorter side of the records")
    args = ap.parse_args()

    tmp = args.keep or tempfile.mkdtemp(prefix="make_pipe_bench_")
    try:
        t0 = time.perf_counter()
        path, conv_rate = build(tmp, args.images, workers=os.cpu_count() or 1, shorter_side=args.shorter_side)
        info = R.read_info(path)
        nbytes = sum(int(s.get("numBytes", 0)) for s in info["splits"])
        print(f"machine: {platform.machine()} {platform.processor() or ''} cores={os.cpu_count()} "
              f"python={platform.python_version()} load={os.getloadavg()}")
        print(f"dataset: {args.images} records at shorter side {args.shorter_side}, mean record {nbytes / args.images / 1024:.1f} KiB, "
              f"built in {time.perf_counter() - t0:.1f} s (convert: {conv_rate:.0f} images/s on "
              f"{os.cpu_count()} processes)")
        for threads in (0, 2):
            rates = [run_pipeline(path, args.batch, args.batches, args.size, threads) for _ in range(args.repeats)]
            wall = [r[0] for r in rates]
            cpu = [r[1] for r in rates]
            print(f"threads={threads}: wall {min(wall):.0f}-{max(wall):.0f} images/s; "
                  f"per CPU-second {min(cpu):.0f}-{max(cpu):.0f} images")
        st = stages(path, args.size)
        print("per-image CPU time by stage (µs): " + ", ".join(f"{k} {v:.0f}" for k, v in st.items())
              + f"; total {sum(st.values()):.0f} µs = {1e6 / sum(st.values()):.0f} images/s per core")
    finally:
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
