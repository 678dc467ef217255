"""The per-image predictions file people share: one row per test image with every class's probability.

    filename,label,label_name,prediction,prediction_name,<class 0>,<class 1>,...

(`label`/`prediction` are class indices; the class columns hold the probabilities, named by the class names —
the layout of per-image reference files such as DermFM-Zero's `PAD/MAKE.csv`.) Written atomically, UTF-8.
"""

from __future__ import annotations

import csv
import os
import tempfile
from pathlib import Path
from typing import Sequence

import numpy as np

__all__ = ["read_predictions_csv", "share", "write_predictions_csv"]

FIXED = ("filename", "label", "label_name", "prediction", "prediction_name")


def write_predictions_csv(path: str | Path, filenames: Sequence[str], labels: np.ndarray, probs: np.ndarray,
                          classnames: Sequence[str]) -> Path:
    """probs (N, K) float, labels (N,) int → the CSV at `path` (probabilities with 6 significant digits)."""
    probs = np.asarray(probs, np.float64)
    labels = np.asarray(labels, np.int64)
    if probs.shape != (len(filenames), len(classnames)) or labels.shape != (len(filenames),):
        raise ValueError(f"predictions: {len(filenames)} files, labels {labels.shape}, probs {probs.shape}, "
                         f"{len(classnames)} classes do not match")
    dup = sorted({c for c in classnames if list(classnames).count(c) > 1 or c in FIXED})
    if dup:
        raise ValueError(f"predictions: class names {dup} repeat or clash with the fixed columns {FIXED}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    preds = probs.argmax(axis=1)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow([*FIXED, *classnames])
        for i, fn in enumerate(filenames):
            w.writerow([fn, int(labels[i]), classnames[labels[i]], int(preds[i]), classnames[preds[i]],
                        *(f"{p:.6g}" for p in probs[i])])
    os.replace(tmp, path)
    return path


def read_predictions_csv(path: str | Path) -> tuple[list[str], np.ndarray, np.ndarray, list[str]]:
    """(filenames, labels (N,), probs (N, K), classnames) of a file `write_predictions_csv` wrote."""
    with open(path, newline="", encoding="utf-8-sig") as f:
        rows = list(csv.reader(f))
    if not rows or tuple(rows[0][:len(FIXED)]) != FIXED:
        raise ValueError(f"{path}: not a predictions CSV (header must start with {','.join(FIXED)})")
    classnames = rows[0][len(FIXED):]
    body = rows[1:]
    try:
        labels = np.array([int(r[1]) for r in body], np.int64)
        probs = np.array([[float(x) for x in r[len(FIXED):]] for r in body], np.float64).reshape(len(body), -1)
    except (ValueError, IndexError) as e:
        raise ValueError(f"{path}: malformed row ({e})") from None
    return [r[0] for r in body], labels, probs, classnames


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
