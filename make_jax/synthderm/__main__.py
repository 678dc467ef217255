"""CLI: python -m make_jax.synthderm --out DIR [options]  (see docs/synthderm.md)."""

from __future__ import annotations

import argparse
import sys
import time

from .generate import SynthDermConfig, generate


def main(argv: list[str] | None = None) -> int:
    d = SynthDermConfig()
    p = argparse.ArgumentParser(
        prog="python -m make_jax.synthderm",
        description="Generate SynthDerm, a seeded synthetic dermatology dataset in the MAKE / Derm1M / "
        "zero-shot / SkinCon / retrieval layouts.",
    )
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--num-train", type=int, default=d.num_train, help="MAKE training CSV rows (images)")
    p.add_argument("--num-val", type=int, default=d.num_val, help="held-out validation rows (new images)")
    p.add_argument("--num-zeroshot", type=int, default=d.num_zeroshot, help="zero-shot test images (balanced)")
    p.add_argument("--num-concepts", type=int, default=d.num_concepts, help="SkinCon-layout concept images")
    p.add_argument("--num-retrieval", type=int, default=d.num_retrieval, help="retrieval images")
    p.add_argument("--captions-per-image", type=int, default=d.captions_per_image, help="retrieval captions per image")
    p.add_argument("--image-size", type=int, default=d.image_size, help="image side in pixels")
    p.add_argument("--format", choices=("png", "jpg"), default=d.image_format, help="image file format")
    p.add_argument("--workers", type=int, default=1, help="processes drawing images (output is identical)")
    p.add_argument("--overwrite", action="store_true", help="replace SynthDerm output already in --out")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    a = p.parse_args(argv)
    for name in ("num_train", "num_val", "num_zeroshot", "num_concepts", "num_retrieval"):
        if getattr(a, name) < 0:
            p.error(f"--{name.replace('_', '-')} must be >= 0")
    if a.captions_per_image < 1:
        p.error("--captions-per-image must be >= 1")
    t0 = time.perf_counter()
    try:
        cfg = SynthDermConfig(
            seed=a.seed,
            num_train=a.num_train,
            num_val=a.num_val,
            num_zeroshot=a.num_zeroshot,
            num_concepts=a.num_concepts,
            num_retrieval=a.num_retrieval,
            captions_per_image=a.captions_per_image,
            image_size=a.image_size,
            image_format=a.format,
        )
        generate(a.out, cfg, workers=max(1, a.workers), progress=not a.quiet, overwrite=a.overwrite)
    except (FileExistsError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    n = cfg.num_train + cfg.num_val + cfg.num_zeroshot + cfg.num_concepts + cfg.num_retrieval
    if not a.quiet:
        print(f"SynthDerm: {n} images in {time.perf_counter() - t0:.1f} s -> {a.out} (manifest: synthderm.json)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
