"""Times the two checksums of make_jax/checkpoint/integrity.py side by side on one file: CRC-32 (what
`write_checksums` records) and SHA-256 (what older records hold and `verify_checksums` still checks).

    python benchmarks/checksum_speed.py --mib 512 --repeats 3

The file is read once before timing, so both read it from the page cache: the figures are the hashing's own
cost, what a save or a load adds on top of writing or reading the checkpoint. A ViT-B/16 training checkpoint
(parameters and AdamW's two moments, float32) is about 1.8 GB; an export about 0.6 GB.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from make_jax.checkpoint.integrity import crc32_file, sha256_file  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mib", type=int, default=512, help="file size in MiB")
    ap.add_argument("--repeats", type=int, default=3, help="timed passes of each checksum, alternated")
    args = ap.parse_args(argv)
    if args.mib < 1 or args.repeats < 1:
        ap.error("--mib and --repeats must be >= 1")
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "blob")
        with open(path, "wb") as f:
            for _ in range(args.mib):
                f.write(os.urandom(1 << 20))
        crc32_file(path)  # into the page cache
        times = {"crc32": [], "sha256": []}
        for _ in range(args.repeats):
            for name, fn in (("crc32", crc32_file), ("sha256", sha256_file)):
                t0 = time.perf_counter()
                fn(path)
                times[name].append(time.perf_counter() - t0)
    gb = args.mib * (1 << 20) / 1e9
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}; "
          f"{args.mib} MiB, median of {args.repeats}")
    rate = {name: gb / statistics.median(t) for name, t in times.items()}
    for name, t in times.items():
        print(f"{name:7s} {rate[name]:6.2f} GB/s  ({', '.join(f'{x:.2f}' for x in t)} s)")
    print(f"crc32 / sha256: {rate['crc32'] / rate['sha256']:.1f}x the rate")
    return 0


if __name__ == "__main__":
    sys.exit(main())
