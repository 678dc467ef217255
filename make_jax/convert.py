"""Convert a pretrained PyTorch CLIP (open_clip dir, bare state dict / OpenAI .pt, Hugging Face CLIPModel dir) into
a make_jax checkpoint directory, or export one back to open_clip.

    python -m make_jax.convert SRC OUT [--format auto|open_clip|hf|state_dict] [--activation quick_gelu|gelu]
    python -m make_jax.convert CKPT_DIR OUT --to open_clip

The first form writes OUT/{model_config.json, preprocess_cfg.json, params/} (see make_jax.checkpoint.orbax_io);
the second writes OUT/{open_clip_model.safetensors, open_clip_config.json} — the layout of MAKE/DermLIP's
Hugging Face repos, so `hf-hub:` loads it after upload, and locally
`open_clip.model.CLIP(**cfg["model_cfg"]).load_state_dict(safetensors.torch.load_file(...))` does. Both write
atomically: on any error nothing exists at OUT.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from make_jax.atomic_io import check_writable
from make_jax.checkpoint import orbax_io, readers
from make_jax.checkpoint.open_clip_layout import CheckpointError, open_clip_to_params, params_to_open_clip
from make_jax.errors import InputError, one_line

logger = logging.getLogger("make_jax.convert")


def convert(src: str | Path, out: str | Path, *, format: str = "auto", activation: str | None = None,
            overwrite: bool = False, allow_torchscript: bool = False) -> Path:
    """Reads `src` (see make_jax.checkpoint.readers) and writes the make_jax checkpoint directory `out`.
    `allow_torchscript`: load `src` even if it is a TorchScript archive (runs its code; standalone files only)."""
    source = readers.read_source(src, format=format, activation=activation, allow_torchscript=allow_torchscript)
    params = open_clip_to_params(source.state_dict, source.config)
    meta = {"converted_from": str(Path(src).absolute()), "source_format": source.format,
            "weights_file": source.weights_file.name}
    out = orbax_io.save_checkpoint(out, params, source.config, preprocess_cfg=source.preprocess_cfg,
                                   metadata=meta, overwrite=overwrite)
    logger.info("converted %s (%s, activation %s) → %s", src, source.format, source.config.activation, out)
    return out


def open_clip_config(cfg, preprocess_cfg: dict | None = None) -> dict:
    """open_clip's `open_clip_config.json` for `cfg`: `model_cfg` (with `quick_gelu`), `quick_gelu` and
    `preprocess_cfg`."""
    model_cfg = cfg.to_open_clip()
    pp = {**readers.DEFAULT_PREPROCESS_CFG, **(preprocess_cfg or {})}
    return {
        "model_cfg": model_cfg,
        "quick_gelu": model_cfg["quick_gelu"],
        "preprocess_cfg": {"mean": list(pp["mean"]), "std": list(pp["std"]), "interpolation": pp["interpolation"],
                           "resize_mode": pp["resize_mode"]},
    }


def export_open_clip(ckpt: str | Path, out: str | Path, *, overwrite: bool = False) -> Path:
    """make_jax checkpoint directory → open_clip directory (safetensors + open_clip_config.json)."""
    from safetensors.numpy import save_file

    cfg = orbax_io.read_config(ckpt)
    if cfg.text.tower != "clip":  # before reading any weights
        raise CheckpointError(f"{ckpt}: its text tower is {cfg.text.tower!r}; the open_clip layout holds the CLIP "
                              "text tower only (keep the make_jax checkpoint; make_jax.load reads it)")
    params = orbax_io.load_params(ckpt, cfg, as_numpy=True)
    sd = params_to_open_clip(params, cfg)
    config = open_clip_config(cfg, orbax_io.read_preprocess_cfg(ckpt))
    with orbax_io.atomic_directory(out, overwrite=overwrite) as tmp:
        save_file(sd, str(tmp / readers.OPEN_CLIP_WEIGHTS[0]), metadata={"format": "pt"})
        (tmp / readers.OPEN_CLIP_CONFIG).write_text(json.dumps(config, indent=2) + "\n")
    logger.info("exported %s → %s (open_clip layout)", ckpt, out)
    return Path(out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m make_jax.convert", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("src", help="source checkpoint (dir or file), or a make_jax checkpoint dir with --to open_clip")
    p.add_argument("out", help="output directory (must not exist unless --overwrite)")
    p.add_argument("--format", choices=readers.FORMATS, default="auto", help="source format (default: auto)")
    p.add_argument("--activation", choices=("quick_gelu", "gelu"), default=None,
                   help="override the activation (default: from the source's config; QuickGELU for bare state "
                        "dicts, as open_clip does for OpenAI weights)")
    p.add_argument("--to", choices=("make_jax", "open_clip"), default="make_jax",
                   help="open_clip: export a make_jax checkpoint dir back to open_clip's layout")
    p.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    p.add_argument("--allow-torchscript", action="store_true",
                   help="SRC may be a TorchScript archive (e.g. OpenAI's original ViT-B-16.pt); loading one runs "
                        "the code it contains, so only for a standalone file you trust (never inside a directory)")
    args = p.parse_args(argv)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    pkg_logger = logging.getLogger("make_jax")
    saved = pkg_logger.level, pkg_logger.propagate
    pkg_logger.addHandler(handler)
    pkg_logger.setLevel(logging.INFO)
    pkg_logger.propagate = False
    try:
        check_writable(Path(args.out).absolute().parent, f"the folder of OUT {args.out}", create=False)  # first
        if args.to == "open_clip":
            if args.format != "auto" or args.activation:
                p.error("--format/--activation apply to imports, not to --to open_clip")
            export_open_clip(args.src, args.out, overwrite=args.overwrite)
        else:
            convert(args.src, args.out, format=args.format, activation=args.activation, overwrite=args.overwrite,
                    allow_torchscript=args.allow_torchscript)
    except (InputError, FileExistsError) as e:  # CheckpointError is an InputError
        print(f"error: {one_line(str(e))}", file=sys.stderr)
        return 1
    finally:
        pkg_logger.removeHandler(handler)
        pkg_logger.level, pkg_logger.propagate = saved
    return 0


if __name__ == "__main__":
    sys.exit(main())
