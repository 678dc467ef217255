"""Zero-shot classification (docs/evaluation.md): class embeddings from prompt templates, logits 100·image·classes.

Per class: encode every template filled with the class name, L2-normalise each, average, re-normalise. Every
metric is computed over the WHOLE test set after all batches are encoded (one version of the public MAKE code
computed and returned its metrics inside the batch loop, i.e. on the first batch only).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from make_jax.evaluate import metrics as M
from make_jax.evaluate.common import encode_texts, l2n, skipped_block, skipped_lines
from make_jax.evaluate.datasets import ZeroShotSet, read_zero_shot_csv
from make_jax.evaluate.images import encode_image_files
from make_jax.evaluate.per_image import share
from make_jax.evaluate.presets import load_classnames, load_templates
from make_jax.evaluate.registry import register

__all__ = ["ZERO_SHOT_SCALE", "class_embeddings", "evaluate_zero_shot", "format_zero_shot", "run",
           "zero_shot_metrics"]

ZERO_SHOT_SCALE = 100.0


def class_embeddings(encoder: Any, classnames: Sequence[str], templates: Sequence[str], *,
                     progress: bool = False) -> np.ndarray:
    """(C, E): per class, the re-normalised mean of its L2-normalised template embeddings."""
    texts = [t.format(c) for c in classnames for t in templates]
    emb, _ = encode_texts(encoder, texts, progress=progress, desc="class prompts")
    emb = emb.reshape(len(classnames), len(templates), -1)  # already L2-normalised per prompt
    return l2n(emb.mean(axis=1))


def zero_shot_metrics(logits: np.ndarray, labels: np.ndarray, classnames: Sequence[str],
                      topk: Sequence[int] = (1, 5)) -> dict:
    """Top-k accuracy, balanced accuracy, macro one-vs-rest AUROC (on softmax probabilities), per-class accuracy
    and the confusion matrix of a whole set."""
    c = len(classnames)
    probs = M.softmax(logits)
    preds = np.argmax(logits, axis=1)
    out: dict[str, Any] = {f"top{k}": M.topk_accuracy(logits, labels, k) for k in topk}
    out["balanced_accuracy"] = M.balanced_accuracy(labels, preds, c)
    f1 = M.f1_scores(labels, preds, c)
    out["macro_f1"], out["weighted_f1"] = f1["macro"], f1["weighted"]
    auc, per_auc = M.macro_ovr_auroc(labels, probs, c)
    out["macro_auroc_ovr"] = auc
    out["auroc_classes_scored"] = int(np.sum(~np.isnan(per_auc)))
    cm = M.confusion_matrix(labels, preds, c)
    acc = M.per_class_accuracy(labels, preds, c)
    out["num_correct"] = int(np.trace(cm))
    out["per_class"] = [{"class": i, "name": classnames[i], "support": int(cm[i].sum()), "accuracy": acc[i],
                         "auroc": per_auc[i]} for i in range(c)]
    out["confusion_matrix"] = cm
    return out


def evaluate_zero_shot(encoder: Any, dataset: ZeroShotSet, templates: Sequence[str] | None = None, *,
                       topk: Sequence[int] = (1, 5), workers: int | None = None, progress: bool = True,
                       strict: bool = False, save_predictions: bool = False, predictions_csv: str | None = None,
                       bootstrap: int = 0, bootstrap_seed: int = 0) -> dict:
    templates = load_templates(templates)
    t0 = time.perf_counter()
    cls = class_embeddings(encoder, dataset.classnames, templates, progress=progress)
    text_s = time.perf_counter() - t0
    enc = encode_image_files(encoder, dataset.paths, workers=workers, progress=progress, desc="zero-shot images",
                             strict=strict)
    img = l2n(enc.embeddings)
    logits = ZERO_SHOT_SCALE * (img @ cls.T)
    labels = dataset.labels[enc.indices]
    result = {
        "task": "zero_shot",
        "dataset": {
            "csv": str(dataset.csv_path), "image_root": str(dataset.image_root), "rows": len(dataset),
            "evaluated": int(len(enc.indices)), "num_classes": dataset.num_classes,
            "class_list": getattr(dataset.classnames, "source", None),
            "classes_without_images": np.flatnonzero(np.bincount(labels, minlength=dataset.num_classes) == 0),
        },
        "skipped_images": skipped_block(enc.bad, dataset.lines),
        "metrics": zero_shot_metrics(logits, labels, dataset.classnames, topk),
        "prompts": {"templates": list(templates), "classnames": list(dataset.classnames),
                    "logit_scale": ZERO_SHOT_SCALE},
        "timing": {**enc.timing(), "text_seconds": text_s},
    }
    share(result, filenames=[dataset.filenames[i] for i in enc.indices], labels=labels, probs=M.softmax(logits),
          classnames=list(dataset.classnames), predictions_csv=predictions_csv, bootstrap=bootstrap,
          bootstrap_seed=bootstrap_seed)
    if save_predictions:
        k = min(max(topk), dataset.num_classes)
        order = np.argsort(-logits, axis=1, kind="stable")[:, :k]
        probs = M.softmax(logits)
        result["predictions"] = [
            {"filename": dataset.filenames[i], "label": int(dataset.labels[i]),
             "topk": [int(j) for j in order[r]], "probs": [float(probs[r, j]) for j in order[r]]}
            for r, i in enumerate(enc.indices)]
    return result


def format_zero_shot(r: dict) -> str:
    m, d = r["metrics"], r["dataset"]
    tops = "  ".join(f"{k} {m[k]:.4f}" for k in m if k.startswith("top") and m[k] is not None)
    auc = m["macro_auroc_ovr"]
    return (f"zero-shot {r.get('name') or Path(d['csv']).name}: {d['evaluated']}/{d['rows']} images, "
            f"{d['num_classes']} classes | {tops}  balanced {m['balanced_accuracy']:.4f}  "
            f"AUROC(ovr) {'n/a' if auc is None or auc != auc else f'{auc:.4f}'}"
            + (f" | skipped {r['skipped_images']['count']}" if r["skipped_images"]["count"] else "")
            + skipped_lines(r))


def headline_zero_shot(r: dict) -> dict:
    m = r["metrics"]
    return {"top1": m.get("top1"), "top5": m.get("top5"), "balanced_acc": m.get("balanced_accuracy"),
            "auroc": m.get("macro_auroc_ovr")}


@register("zero_shot", summary="zero-shot classification: CSV filename,label + class list + templates",
          table=format_zero_shot, headline=headline_zero_shot)
def run(encoder: Any, *, csv: str, classes: str, image_root: str | None = None, templates: Any = None,
        topk: Sequence[int] = (1, 5), filename_column: str = "filename", label_column: str = "label",
        workers: int | None = None, progress: bool = True, strict: bool = False,
        save_predictions: bool = False, predictions_csv: str | None = None, bootstrap: int = 0,
        bootstrap_seed: int = 0) -> dict:
    """zero-shot classification of a `filename,label` CSV against a class list (preset or file)."""
    classnames = load_classnames(classes)
    ds = read_zero_shot_csv(csv, classnames, image_root, filename_column, label_column)
    ds.classnames = classnames  # keep the ClassList (its `source`)
    return evaluate_zero_shot(encoder, ds, templates, topk=tuple(topk), workers=workers, progress=progress,
                              strict=strict, save_predictions=save_predictions, predictions_csv=predictions_csv,
                              bootstrap=bootstrap, bootstrap_seed=bootstrap_seed)
