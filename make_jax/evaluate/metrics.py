"""Evaluation metrics, pure numpy (no jax, no sklearn).

Conventions (all documented in docs/evaluation.md):

- **Ranks and ties.** Everywhere a score row is ranked (top-k accuracy, retrieval), candidates are ordered by
  descending score with ties broken by index — the order of ``np.argsort(-scores, kind="stable")``. So the
  0-based rank of candidate ``p`` in row ``s`` is ``#{j : s[j] > s[p]} + #{j < p : s[j] == s[p]}``, and the
  top-1 prediction is ``np.argmax`` (first maximum). Ties are vanishingly rare with float embeddings; the rule
  only makes results deterministic and the metrics mutually consistent (top-1 accuracy == the confusion
  matrix's trace / n).
- **AUROC** is the Mann–Whitney statistic: the probability that a random positive scores above a random
  negative, ties counting 1/2 — computed from mid-ranks in O(n log n). It is NaN when either class is absent.
- **Balanced accuracy** is the mean recall over the classes present in the labels (sklearn's definition);
  classes absent from the labels have NaN per-class accuracy and are left out of the mean.
"""

from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np

__all__ = [
    "CLASSIFICATION_METRICS", "auroc", "balanced_accuracy", "classification_metrics", "confusion_matrix",
    "f1_scores", "label_ranks", "macro_ovr_auroc", "per_class_accuracy",
    "rank_of_positives", "rank_summary", "recall_at_k", "retrieval_metrics", "softmax", "topk_accuracy",
]


# ---------------------------------------------------------------------------------------------- basics


def softmax(logits: np.ndarray, axis: int = -1) -> np.ndarray:
    """Numerically stable softmax in float64."""
    x = np.asarray(logits, np.float64)
    x = x - np.max(x, axis=axis, keepdims=True)
    e = np.exp(x)
    return e / np.sum(e, axis=axis, keepdims=True)


def _labels(labels: np.ndarray, num_classes: int | None = None) -> np.ndarray:
    y = np.asarray(labels)
    if y.ndim != 1:
        raise ValueError(f"labels must be 1-D, got shape {y.shape}")
    if y.size and y.dtype.kind not in "iu":
        raise TypeError(f"labels must be integers, got dtype {y.dtype}")
    y = y.astype(np.int64)
    if num_classes is not None and y.size and (y.min() < 0 or y.max() >= num_classes):
        raise ValueError(f"labels must lie in [0, {num_classes}); got min {y.min()}, max {y.max()}")
    return y


def _scores(scores: np.ndarray, n: int) -> np.ndarray:
    s = np.asarray(scores, np.float64)
    if s.ndim != 2 or s.shape[0] != n:
        raise ValueError(f"scores must be (n={n}, num_classes), got shape {s.shape}")
    return s


# ---------------------------------------------------------------------------------------------- classification


def label_ranks(scores: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """0-based rank of each row's true label among the classes (descending score, ties broken by index)."""
    y = _labels(labels)
    s = _scores(scores, y.shape[0])
    if y.size and (y.min() < 0 or y.max() >= s.shape[1]):
        raise ValueError(f"labels must lie in [0, {s.shape[1]}); got min {y.min()}, max {y.max()}")
    own = s[np.arange(y.shape[0]), y][:, None]
    idx = np.arange(s.shape[1])[None, :]
    return (np.sum(s > own, axis=1) + np.sum((s == own) & (idx < y[:, None]), axis=1)).astype(np.int64)


def topk_accuracy(scores: np.ndarray, labels: np.ndarray, k: int = 1) -> float:
    """Fraction of rows whose true label is among the k best-scoring classes. k is capped at num_classes."""
    if k < 1:
        raise ValueError(f"k must be ≥ 1, got {k}")
    ranks = label_ranks(scores, labels)
    return float(np.mean(ranks < k)) if ranks.size else float("nan")


def confusion_matrix(labels: np.ndarray, predictions: np.ndarray, num_classes: int) -> np.ndarray:
    """(num_classes, num_classes) int64 counts; row = true class, column = predicted class."""
    y = _labels(labels, num_classes)
    p = _labels(predictions, num_classes)
    if y.shape != p.shape:
        raise ValueError(f"labels {y.shape} and predictions {p.shape} differ in length")
    cm = np.zeros((num_classes, num_classes), np.int64)
    np.add.at(cm, (y, p), 1)
    return cm


def per_class_accuracy(labels: np.ndarray, predictions: np.ndarray, num_classes: int) -> np.ndarray:
    """Recall of each class (correct / support); NaN for classes without samples."""
    cm = confusion_matrix(labels, predictions, num_classes)
    support = cm.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(support > 0, np.diag(cm) / np.maximum(support, 1), np.nan)


def balanced_accuracy(labels: np.ndarray, predictions: np.ndarray, num_classes: int) -> float:
    """Mean per-class recall over the classes that occur in `labels`."""
    acc = per_class_accuracy(labels, predictions, num_classes)
    present = ~np.isnan(acc)
    return float(np.mean(acc[present])) if present.any() else float("nan")


def f1_scores(labels: np.ndarray, predictions: np.ndarray, num_classes: int) -> dict:
    """Per-class F1 = 2·TP / (2·TP + FP + FN) (0 where TP = 0), and its macro mean and support-weighted mean
    over the classes that occur in `labels` or `predictions` — scikit-learn's `f1_score(average="macro" /
    "weighted")` with its default `zero_division`. Per-class values of classes in neither are NaN."""
    cm = confusion_matrix(labels, predictions, num_classes)
    tp = np.diag(cm).astype(np.float64)
    support, predicted = cm.sum(axis=1), cm.sum(axis=0)
    present = (support + predicted) > 0
    denom = 2 * tp + (predicted - tp) + (support - tp)
    with np.errstate(invalid="ignore", divide="ignore"):
        f1 = np.where(present, 2 * tp / np.maximum(denom, 1), np.nan)
    macro = float(np.mean(f1[present])) if present.any() else float("nan")
    weighted = float(np.sum(f1[present] * support[present]) / support.sum()) if support.sum() else float("nan")
    return {"macro": macro, "weighted": weighted, "per_class": f1}


# ---------------------------------------------------------------------------------------------- AUROC




def _midranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks of x ascending, tied values sharing the mean of their ranks."""
    order = np.argsort(x, kind="mergesort")
    xs = x[order]
    n = x.shape[0]
    # boundaries of runs of equal values
    starts = np.flatnonzero(np.concatenate([[True], xs[1:] != xs[:-1]]))
    ends = np.concatenate([starts[1:], [n]])
    avg = (starts + ends + 1) / 2.0  # mean of 1-based ranks starts+1 .. ends
    ranks_sorted = np.repeat(avg, ends - starts)
    ranks = np.empty(n, np.float64)
    ranks[order] = ranks_sorted
    return ranks


def auroc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Binary AUROC = P(score of a random positive > that of a random negative) + ½·P(equal).

    `labels`: 0/1 (or bool) per sample; `scores`: real per sample. NaN if either class is absent. NaN scores
    are an error (they have no order)."""
    y = np.asarray(labels)
    s = np.asarray(scores, np.float64)
    if y.ndim != 1 or s.shape != y.shape:
        raise ValueError(f"labels and scores must be 1-D of equal length; got {y.shape} and {s.shape}")
    if y.dtype == bool:
        y = y.astype(np.int64)
    if y.size and not np.all((y == 0) | (y == 1)):
        raise ValueError(f"binary labels must be 0/1, got values {sorted(set(np.unique(y).tolist()))[:10]}")
    if np.isnan(s).any():
        raise ValueError("scores contain NaN")
    pos = y == 1
    n_pos = int(pos.sum())
    n_neg = int(y.size - n_pos)
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    r = _midranks(s)
    u = r[pos].sum() - n_pos * (n_pos + 1) / 2.0  # Mann–Whitney U of the positives
    return float(u / (n_pos * n_neg))


def macro_ovr_auroc(labels: np.ndarray, scores: np.ndarray, num_classes: int | None = None
                    ) -> tuple[float, np.ndarray]:
    """Macro one-vs-rest AUROC: per class c, AUROC of (label == c) against scores[:, c]; the mean over classes
    that have both positives and negatives. Returns (mean, per-class array with NaN for skipped classes).

    With `scores` = softmax probabilities this is sklearn's `roc_auc_score(..., multi_class="ovr",
    average="macro")` (which instead refuses to run when a class is absent)."""
    y = _labels(labels)
    s = _scores(scores, y.shape[0])
    c = s.shape[1] if num_classes is None else num_classes
    if s.shape[1] != c:
        raise ValueError(f"scores have {s.shape[1]} columns, expected {c}")
    per = np.array([auroc((y == k).astype(np.int64), s[:, k]) for k in range(c)], np.float64)
    valid = ~np.isnan(per)
    return (float(np.mean(per[valid])) if valid.any() else float("nan")), per


# ---------------------------------------------------------------------------------------------- retrieval


def rank_of_positives(scores: np.ndarray, positive: np.ndarray) -> np.ndarray:
    """0-based rank of the best-ranked positive in each row.

    scores (Q, G); positive (Q, G) bool, at least one True per row. Order: descending score, ties by index;
    the best-ranked positive is the positive with the highest score (lowest index among equal ones)."""
    s = np.asarray(scores, np.float64)
    pos = np.asarray(positive, bool)
    if s.shape != pos.shape or s.ndim != 2:
        raise ValueError(f"scores {s.shape} and positive {pos.shape} must be equal 2-D shapes")
    if not pos.any(axis=1).all():
        raise ValueError(f"rows without a positive: {np.flatnonzero(~pos.any(axis=1))[:10].tolist()}")
    best = np.argmax(np.where(pos, s, -np.inf), axis=1)  # first index of the highest-scoring positive
    own = s[np.arange(s.shape[0]), best][:, None]
    idx = np.arange(s.shape[1])[None, :]
    return (np.sum(s > own, axis=1) + np.sum((s == own) & (idx < best[:, None]), axis=1)).astype(np.int64)


def recall_at_k(ranks: np.ndarray, k: int) -> float:
    """Fraction of queries whose (0-based) rank is < k."""
    r = np.asarray(ranks)
    return float(np.mean(r < k)) if r.size else float("nan")


def rank_summary(ranks: np.ndarray, ks: Iterable[int] = (1, 5, 10, 50, 100)) -> dict:
    """{"R@k": ..., "mean_rank", "median_rank"} with 1-based mean / median ranks (as reported in papers)."""
    r = np.asarray(ranks, np.int64)
    out = {f"R@{k}": recall_at_k(r, k) for k in ks}
    out["mean_rank"] = float(np.mean(r + 1)) if r.size else float("nan")
    out["median_rank"] = float(np.median(r + 1)) if r.size else float("nan")
    return out


def retrieval_metrics(image_emb: np.ndarray, text_emb: np.ndarray, text_to_image: Sequence[int] | np.ndarray,
                      ks: Iterable[int] = (1, 5, 10, 50, 100), chunk: int = 1024,
                      return_ranks: bool = False) -> dict:
    """Recall@K both ways, mean and median rank, from embeddings (similarity = dot product).

    image_emb (N, E), text_emb (T, E), text_to_image (T,): the image each text describes (every image needs at
    least one text). Image→text: a hit at K if ANY of the image's texts is in its top K. Text→image: its one
    image. Computed in row chunks of `chunk` queries, so memory stays O(chunk · max(N, T))."""
    img = np.asarray(image_emb, np.float32)
    txt = np.asarray(text_emb, np.float32)
    t2i = np.asarray(text_to_image, np.int64)
    n, t = img.shape[0], txt.shape[0]
    if img.ndim != 2 or txt.ndim != 2 or img.shape[1] != txt.shape[1]:
        raise ValueError(f"embeddings must be (N, E) and (T, E); got {img.shape} and {txt.shape}")
    if t2i.shape != (t,):
        raise ValueError(f"text_to_image must have one entry per text ({t}), got shape {t2i.shape}")
    if t and (t2i.min() < 0 or t2i.max() >= n):
        raise ValueError(f"text_to_image must index the {n} images")
    counts = np.bincount(t2i, minlength=n)
    if n and counts.min() == 0:
        raise ValueError(f"images without any text: {np.flatnonzero(counts == 0)[:10].tolist()}")
    ks = tuple(int(k) for k in ks)
    i2t = np.empty(n, np.int64)
    for a in range(0, n, chunk):
        b = min(a + chunk, n)
        sims = img[a:b] @ txt.T  # (q, T)
        pos = t2i[None, :] == np.arange(a, b)[:, None]
        i2t[a:b] = rank_of_positives(sims, pos)
    t2i_ranks = np.empty(t, np.int64)
    for a in range(0, t, chunk):
        b = min(a + chunk, t)
        sims = txt[a:b] @ img.T  # (q, N)
        pos = np.arange(n)[None, :] == t2i[a:b, None]
        t2i_ranks[a:b] = rank_of_positives(sims, pos)
    out = {"image_to_text": rank_summary(i2t, ks), "text_to_image": rank_summary(t2i_ranks, ks),
           "num_images": n, "num_texts": t}
    if return_ranks:
        out["ranks"] = {"image_to_text": i2t, "text_to_image": t2i_ranks}
    return out


# ---------------------------------------------------------------------------------------------- summaries

CLASSIFICATION_METRICS = ("accuracy", "balanced_accuracy", "macro_f1", "weighted_f1", "macro_auroc_ovr")


def classification_metrics(probs: np.ndarray, labels: np.ndarray, num_classes: int) -> dict:
    """probs (N, K), labels (N,) → accuracy, balanced accuracy, macro/weighted F1, macro OvR AUROC (the
    prediction is the first maximum of each row)."""
    preds = np.argmax(probs, axis=1)
    f1 = f1_scores(labels, preds, num_classes)
    return {"accuracy": float(np.mean(preds == labels)),
            "balanced_accuracy": balanced_accuracy(labels, preds, num_classes),
            "macro_f1": f1["macro"], "weighted_f1": f1["weighted"],
            "macro_auroc_ovr": macro_ovr_auroc(labels, probs, num_classes)[0]}
