"""Seeded percentile-bootstrap 95 % confidence intervals of classification metrics over the test images.

Each of `n` replicates draws len(labels) images with replacement (numpy `default_rng(seed)`, one
`integers(0, n_images, n_images)` draw per replicate, in order) and recomputes the metric; the interval is the
2.5th and 97.5th percentiles (numpy's default linear interpolation) of the replicate values that are finite (a
replicate can miss a class, which makes AUROC undefined for it). Pure numpy.
"""

from __future__ import annotations

from typing import Callable, Mapping

import numpy as np

__all__ = ["bootstrap_ci"]


def bootstrap_ci(metric_fn: Callable[[np.ndarray, np.ndarray], Mapping[str, float]], labels: np.ndarray,
                 probs: np.ndarray, *, n: int = 1000, seed: int = 0, level: float = 0.95) -> dict:
    """{name: {"low", "high", "replicates", "level"}} for each metric of `metric_fn(probs (m, K), labels (m,))`."""
    if n < 1:
        raise ValueError(f"bootstrap replicates must be ≥ 1, got {n}")
    labels = np.asarray(labels)
    probs = np.asarray(probs)
    rng = np.random.default_rng(seed)
    values: dict[str, list[float]] = {}
    for _ in range(n):
        idx = rng.integers(0, len(labels), len(labels))
        for k, v in metric_fn(probs[idx], labels[idx]).items():
            values.setdefault(k, []).append(v)
    tail = 100 * (1 - level) / 2
    out = {}
    for k, v in values.items():
        v = np.asarray(v, np.float64)
        v = v[np.isfinite(v)]
        lo, hi = (np.percentile(v, [tail, 100 - tail]) if v.size else (np.nan, np.nan))
        out[k] = {"low": float(lo), "high": float(hi), "replicates": int(v.size), "level": level}
    return out
