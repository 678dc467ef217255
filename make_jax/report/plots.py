"""PNG plots of evaluation and training results (matplotlib, Agg backend: no display needed).

Every function takes plain arrays or file paths, writes one PNG and returns its path:

- `roc_curves`: one-vs-rest ROC curve per class (every class drawn; the 8 with the most test images named in
  the legend) with the macro AUROC in the title;
- `confusion_matrix`: row-normalised (each true class sums to 1), counts in the cells for ≤ 15 classes;
- `per_class_accuracy`: recall of each class, sorted, with its support;
- `training_curves`: every numeric series of `metrics.jsonl` against the step, one panel per quantity, train and
  eval splits as separate lines;
- `sweep_chart`: the ablation sweep table (`sweep.csv`) as grouped bars, one group per metric.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Sequence

import numpy as np

__all__ = ["confusion_matrix", "per_class_accuracy", "roc_curve", "roc_curves", "sweep_chart", "training_curves"]


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _save(fig, out: str | Path) -> Path:
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110, bbox_inches="tight")
    _plt().close(fig)
    return out


def roc_curve(positive: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(fpr, tpr) of a binary problem: one point per distinct score threshold (descending), from (0, 0) to
    (1, 1); tied scores move both rates at once, so the area under the steps equals the tie-aware AUROC."""
    positive = np.asarray(positive, bool)
    s = np.asarray(scores, np.float64)
    order = np.argsort(-s, kind="stable")
    s, positive = s[order], positive[order]
    last = np.r_[np.flatnonzero(np.diff(s)), len(s) - 1]  # the end of each run of equal scores
    tp = np.cumsum(positive)[last]
    fp = np.cumsum(~positive)[last]
    p, n = max(positive.sum(), 1), max((~positive).sum(), 1)
    return np.r_[0.0, fp / n], np.r_[0.0, tp / p]


def roc_curves(labels: np.ndarray, probs: np.ndarray, classnames: Sequence[str], out: str | Path,
               title: str = "") -> Path:
    from make_jax.evaluate.metrics import macro_ovr_auroc

    plt = _plt()
    labels = np.asarray(labels)
    k = len(classnames)
    auc, per = macro_ovr_auroc(labels, probs, k)
    support = np.bincount(labels, minlength=k)
    named = set(np.argsort(-support, kind="stable")[:8].tolist())
    fig, ax = plt.subplots(figsize=(6, 5.5))
    for c in range(k):
        if support[c] == 0 or support[c] == len(labels):
            continue  # ROC undefined without both positives and negatives
        fpr, tpr = roc_curve(labels == c, probs[:, c])
        if c in named:
            ax.plot(fpr, tpr, lw=1.6, label=f"{classnames[c]} (AUC {per[c]:.3f}, n={support[c]})")
        else:
            ax.plot(fpr, tpr, lw=0.7, color="0.7")
    ax.plot([0, 1], [0, 1], ls="--", color="k", lw=0.8)
    ax.set(xlabel="false positive rate", ylabel="true positive rate", xlim=(0, 1), ylim=(0, 1.01),
           title=f"{title + ': ' if title else ''}one-vs-rest ROC, macro AUROC {auc:.3f}")
    ax.legend(fontsize=7, loc="lower right")
    return _save(fig, out)


def confusion_matrix(cm: np.ndarray, classnames: Sequence[str], out: str | Path, title: str = "") -> Path:
    plt = _plt()
    cm = np.asarray(cm, np.float64)
    k = len(classnames)
    with np.errstate(invalid="ignore", divide="ignore"):
        norm = np.nan_to_num(cm / cm.sum(axis=1, keepdims=True))
    size = min(4 + 0.45 * k, 14)
    fig, ax = plt.subplots(figsize=(size, size * 0.9))
    im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(im, ax=ax, fraction=0.046, label="fraction of the true class")
    if k <= 40:
        ax.set_xticks(range(k), classnames, rotation=60, ha="right", fontsize=7 if k > 15 else 9)
        ax.set_yticks(range(k), classnames, fontsize=7 if k > 15 else 9)
    if k <= 15:
        for i in range(k):
            for j in range(k):
                ax.text(j, i, int(cm[i, j]), ha="center", va="center", fontsize=8,
                        color="white" if norm[i, j] > 0.5 else "black")
    ax.set(xlabel="predicted class", ylabel="true class", title=f"{title + ': ' if title else ''}confusion matrix")
    return _save(fig, out)


def per_class_accuracy(accuracy: np.ndarray, support: np.ndarray, classnames: Sequence[str], out: str | Path,
                       title: str = "", limit: int = 40) -> Path:
    """Horizontal bars of per-class recall (NaN classes left out); with more than `limit` classes, the `limit`
    worst are shown."""
    plt = _plt()
    acc = np.asarray(accuracy, np.float64)
    keep = [i for i in np.argsort(acc, kind="stable") if not math.isnan(acc[i])][:limit]
    fig, ax = plt.subplots(figsize=(6.5, 1.2 + 0.28 * len(keep)))
    ax.barh(range(len(keep)), acc[keep], color="tab:blue")
    ax.set_yticks(range(len(keep)), [f"{classnames[i]} (n={int(support[i])})" for i in keep], fontsize=8)
    ax.invert_yaxis()
    ax.set(xlim=(0, 1), xlabel="accuracy (recall) of the class",
           title=f"{title + ': ' if title else ''}per-class accuracy" + (f" ({limit} worst)" if len(acc) > limit
                                                                          else ""))
    return _save(fig, out)


def read_metrics_jsonl(path: str | Path) -> dict[tuple[str, str], tuple[list[int], list[float]]]:
    """(split, key) → (steps, values) of the finite numeric entries of a metrics.jsonl."""
    series: dict[tuple[str, str], tuple[list[int], list[float]]] = {}
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}, line {n}: not JSON ({e.msg})") from None
            step, split = rec.get("step"), rec.get("split", "train")
            for k, v in rec.items():
                if k in ("step", "split") or isinstance(v, bool) or not isinstance(v, (int, float)):
                    continue
                if math.isfinite(v):
                    s = series.setdefault((split, k), ([], []))
                    s[0].append(int(step))
                    s[1].append(float(v))
    return series


def training_curves(metrics_jsonl: str | Path, out: str | Path, keys: Sequence[str] | None = None) -> Path:
    """One panel per quantity (default: every numeric key), the splits (train, eval, ...) overlaid."""
    plt = _plt()
    series = read_metrics_jsonl(metrics_jsonl)
    names = sorted({k for _, k in series} if keys is None else set(keys))
    if not names:
        raise ValueError(f"{metrics_jsonl}: no numeric series")
    cols = min(3, len(names))
    rows = math.ceil(len(names) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 2.8 * rows), squeeze=False)
    for ax, name in zip(axes.flat, names):
        for (split, k), (x, y) in sorted(series.items()):
            if k == name:
                ax.plot(x, y, marker="o" if len(x) < 30 else None, ms=3, lw=1.2, label=split)
        ax.set_title(name, fontsize=10)
        ax.set_xlabel("step", fontsize=8)
        ax.tick_params(labelsize=8)
        if len({s for s, k in series if k == name}) > 1:
            ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(names):]:
        ax.axis("off")
    fig.suptitle(f"training curves ({Path(metrics_jsonl).parent.name or metrics_jsonl})", fontsize=11)
    fig.tight_layout()
    return _save(fig, out)


def sweep_chart(sweep_csv: str | Path, out: str | Path) -> Path:
    """Grouped bars: one group per metric column of sweep.csv (empty cells skipped), one bar per row."""
    plt = _plt()
    with open(sweep_csv, newline="", encoding="utf-8") as f:
        table = list(csv.DictReader(f))
    if not table:
        raise ValueError(f"{sweep_csv}: no rows")
    metrics = [k for k in table[0] if k != "row" and any(r[k] not in ("", None) for r in table)]
    cols = min(4, len(metrics))
    rows = math.ceil(len(metrics) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols + 0.5, 3.3 * rows), squeeze=False)
    for ax in list(axes.flat)[len(metrics):]:
        ax.axis("off")
    colors = plt.get_cmap("tab10").colors
    for ax, m in zip(axes.flat, metrics):
        vals = [float(r[m]) if r[m] not in ("", None) else np.nan for r in table]
        ax.bar(range(len(table)), vals, color=[colors[i % 10] for i in range(len(table))])
        for i, v in enumerate(vals):
            ax.text(i, 0 if np.isnan(v) else v, "n/a" if np.isnan(v) else f"{v:.3g}", ha="center", va="bottom",
                    fontsize=7)
        ax.set_xticks(range(len(table)), [r["row"] for r in table], rotation=60, ha="right", fontsize=8)
        ax.set_title(m, fontsize=9)
        ax.tick_params(axis="y", labelsize=8)
    fig.suptitle("ablation sweep", fontsize=11)
    fig.tight_layout()
    return _save(fig, out)
