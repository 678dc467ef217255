"""The per-image predictions file people share: one row per test image with every class's probability, in the
layout of DermFM-Zero's per-image reference files (e.g. `statistic_reproduce/examples/zero_shot/PAD/MAKE.csv`):

    image_path,true_label,predicted_label,probability_class_0,probability_class_1,...

(labels are class indices; the prediction is the first maximum of the row). The class names go beside it in
`FILE.classnames.json` (a JSON list), since that layout has no place for them. Written atomically, UTF-8.
`read_predictions_csv` also reads DermFM-Zero's own files.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Sequence

import numpy as np

from make_jax.atomic_io import write_text_atomic

__all__ = ["read_predictions_csv", "share", "write_predictions_csv"]

FIXED = ("image_path", "true_label", "predicted_label")
PROB = "probability_class_"


def _names_file(path: Path) -> Path:
    return path.with_name(path.name + ".classnames.json")


def _atomic_text(path: Path, write) -> None:
    f = io.StringIO(newline="")
    write(f)
    write_text_atomic(path, f.getvalue())


def write_predictions_csv(path: str | Path, filenames: Sequence[str], labels: np.ndarray, probs: np.ndarray,
                          classnames: Sequence[str]) -> Path:
    """probs (N, K) float, labels (N,) int → the CSV at `path` (probabilities with 8 significant digits) and
    `path.classnames.json`."""
    probs = np.asarray(probs, np.float64)
    labels = np.asarray(labels, np.int64)
    if probs.shape != (len(filenames), len(classnames)) or labels.shape != (len(filenames),):
        raise ValueError(f"predictions: {len(filenames)} files, labels {labels.shape}, probs {probs.shape}, "
                         f"{len(classnames)} classes do not match")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    preds = probs.argmax(axis=1)

    def rows(f):
        w = csv.writer(f)
        w.writerow([*FIXED, *(f"{PROB}{i}" for i in range(len(classnames)))])
        for i, fn in enumerate(filenames):
            w.writerow([fn, int(labels[i]), int(preds[i]), *(f"{p:.8g}" for p in probs[i])])

    _atomic_text(path, rows)
    _atomic_text(_names_file(path), lambda f: f.write(json.dumps(list(classnames), ensure_ascii=False) + "\n"))
    return path


def read_predictions_csv(path: str | Path) -> tuple[list[str], np.ndarray, np.ndarray, list[str]]:
    """(image paths, labels (N,), probs (N, K), class names — from `FILE.classnames.json`, else "class i")."""
    path = Path(path)
    with open(path, newline="", encoding="utf-8-sig") as f:
        rows = list(csv.reader(f))
    head = rows[0] if rows else []
    k = len(head) - len(FIXED)
    if tuple(head[:len(FIXED)]) != FIXED or k < 1 or head[len(FIXED):] != [f"{PROB}{i}" for i in range(k)]:
        raise ValueError(f"{path}: not a predictions CSV (header must be {','.join(FIXED)},{PROB}0,...)")
    body = rows[1:]
    try:
        labels = np.array([int(r[1]) for r in body], np.int64)
        probs = np.array([[float(x) for x in r[len(FIXED):]] for r in body], np.float64).reshape(len(body), k)
    except (ValueError, IndexError) as e:
        raise ValueError(f"{path}: malformed row ({e})") from None
    names_file = _names_file(path)
    names = json.loads(names_file.read_text(encoding="utf-8")) if names_file.is_file() else []
    if len(names) != k:
        names = [f"class {i}" for i in range(k)]
    return [r[0] for r in body], labels, probs, names


def share(result: dict, *, filenames: Sequence[str], labels: np.ndarray, probs: np.ndarray,
          classnames: Sequence[str], predictions_csv: str | None = None, bootstrap: int = 0,
          bootstrap_seed: int = 0) -> dict:
    """Adds what a classification result is shared with: the per-image CSV (`result["predictions_csv"]`) and
    seeded bootstrap 95 % intervals of every metric of `metrics.classification_metrics` (`result["ci95"]`)."""
    from make_jax.evaluate.bootstrap import bootstrap_ci
    from make_jax.evaluate.metrics import classification_metrics

    if predictions_csv:
        result["predictions_csv"] = str(write_predictions_csv(predictions_csv, filenames, labels, probs, classnames))
    if bootstrap:
        k = len(classnames)
        result["ci95"] = bootstrap_ci(lambda p, y: classification_metrics(p, y, k), labels, probs, n=int(bootstrap),
                                      seed=int(bootstrap_seed))
        result["ci95_protocol"] = {"replicates": int(bootstrap), "seed": int(bootstrap_seed),
                                   "method": "percentile bootstrap over test images"}
    return result
