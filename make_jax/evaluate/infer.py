"""Zero-shot inference on one image or a folder: the top-k classes with probabilities softmax(100·cos)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np

from make_jax.evaluate import metrics as M
from make_jax.evaluate.common import l2n, skipped_block
from make_jax.evaluate.datasets import IMAGE_SUFFIXES
from make_jax.evaluate.images import encode_image_files
from make_jax.evaluate.presets import load_classnames, load_templates
from make_jax.evaluate.registry import register
from make_jax.evaluate.zero_shot import ZERO_SHOT_SCALE, class_embeddings

__all__ = ["format_infer", "list_images", "predict", "run"]


def list_images(path: str | Path, recursive: bool = False) -> list[Path]:
    """An image file → [it]; a folder → its image files (by suffix), sorted."""
    p = Path(path)
    if p.is_file():
        return [p]
    if not p.is_dir():
        raise FileNotFoundError(f"{p}: no such image or folder")
    it = p.rglob("*") if recursive else p.iterdir()
    files = sorted(f for f in it if f.is_file() and f.suffix in IMAGE_SUFFIXES)
    if not files:
        raise FileNotFoundError(f"{p}: no image files ({', '.join(sorted(set(s.lower() for s in IMAGE_SUFFIXES)))})")
    return files


def predict(encoder: Any, paths: Sequence[str | Path], classnames: Sequence[str],
            templates: Sequence[str] | None = None, *, topk: int = 5, workers: int | None = None,
            progress: bool = True) -> tuple[list[dict], list]:
    """([{"path", "top": [{"class", "name", "prob"}...]}...], bad images)."""
    templates = load_templates(templates)
    cls = class_embeddings(encoder, classnames, templates, progress=progress)
    enc = encode_image_files(encoder, paths, workers=workers, progress=progress, desc="images")
    probs = M.softmax(ZERO_SHOT_SCALE * (l2n(enc.embeddings) @ cls.T))
    k = min(topk, len(classnames))
    order = np.argsort(-probs, axis=1, kind="stable")[:, :k]
    out = [{"path": str(paths[i]), "top": [{"class": int(j), "name": classnames[j], "prob": float(probs[r, j])}
                                           for j in order[r]]}
           for r, i in enumerate(enc.indices)]
    return out, enc.bad


def format_infer(r: dict) -> str:
    lines = []
    for p in r["predictions"]:
        tops = "  ".join(f"{t['name']} {t['prob']:.3f}" for t in p["top"])
        lines.append(f"{Path(p['path']).name}: {tops}")
    if r["skipped_images"]["count"]:
        lines += [f"skipped {b['path']}: {b['reason']}" for b in r["skipped_images"]["files"]]
    return "\n".join(lines)


@register("infer", summary="top-k classes of one image or a folder of images", table=format_infer)
def run(encoder: Any, *, images: str, classes: str, templates: Any = None, topk: int = 5, recursive: bool = False,
        workers: int | None = None, progress: bool = True) -> dict:
    """top-k zero-shot classes with probabilities for one image or every image in a folder."""
    classnames = load_classnames(classes)
    paths = list_images(images, recursive)
    tmpl = load_templates(templates)
    preds, bad = predict(encoder, paths, classnames, tmpl, topk=topk, workers=workers, progress=progress)
    return {"task": "infer", "dataset": {"images": str(images), "files": len(paths), "evaluated": len(preds),
                                         "class_list": classnames.source, "num_classes": len(classnames)},
            "skipped_images": skipped_block(bad), "predictions": preds,
            "prompts": {"templates": tmpl, "classnames": list(classnames), "logit_scale": ZERO_SHOT_SCALE}}
