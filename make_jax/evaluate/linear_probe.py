"""Linear probe and few-shot classification on frozen image features (`--task linear_probe`).

Protocol (as CLIP's linear probes and the Derm1M/DermLIP few-shot evaluation):

1. Splits: one CSV with a split column (`train` / `val` (or `valid`, `validation`) / `test`), or separate
   train / val / test CSVs; each row `filename,label` (label an index into `--classes` or a class name; without
   `--classes` the classes are the sorted distinct labels). Without a validation split, a seeded, stratified 20 %
   of the training split is held out as validation (and never trained on).
2. Frozen, L2-normalised image embeddings of every image, computed once.
3. For each run: a training subset — all of it, a seeded stratified `percent_data` % (at least one image per
   class), or `shots` = K images per class (seeded; a class with fewer has all of its images) — then the L2
   strength C chosen on the validation split (`logreg.select_c`: best validation accuracy over a log grid), the
   classifier refitted with that C on the same training subset, and test metrics: accuracy, balanced accuracy,
   macro and weighted F1, macro one-vs-rest AUROC on the predicted probabilities.
4. Several seeds (default 0, 1, 2) for few-shot and percent runs; the result gives each run and the mean ± std
   (population std, ddof 0) over seeds, per shot count.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from make_jax.evaluate import logreg
from make_jax.evaluate import metrics as M
from make_jax.evaluate.common import l2n, skipped_block
from make_jax.evaluate.datasets import DatasetError, read_csv_table, read_zero_shot_csv
from make_jax.evaluate.images import encode_image_files
from make_jax.evaluate.per_image import share
from make_jax.evaluate.presets import load_classnames
from make_jax.evaluate.registry import register

__all__ = ["METRICS", "few_shot_indices", "percent_indices", "probe", "run"]

SPLIT_NAMES = {"train": "train", "val": "val", "valid": "val", "validation": "val", "test": "test"}
METRICS = M.CLASSIFICATION_METRICS


@dataclass
class Split:
    paths: list[Path]
    labels: np.ndarray
    source: str


def few_shot_indices(labels: np.ndarray, shots: int, seed: int) -> np.ndarray:
    """Sorted indices of `shots` random items per class (all items of a class that has fewer)."""
    rng = np.random.default_rng(seed)
    out = [rng.permutation(np.flatnonzero(labels == c))[:shots] for c in np.unique(labels)]
    return np.sort(np.concatenate(out))


def percent_indices(labels: np.ndarray, percent: float, seed: int) -> np.ndarray:
    """Sorted indices of a stratified `percent` % of the items: round(percent/100 · n_c), at least 1, per class."""
    rng = np.random.default_rng(seed)
    out = []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        out.append(rng.permutation(idx)[:max(1, int(round(percent / 100.0 * len(idx))))])
    return np.sort(np.concatenate(out))


def _holdout(labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train, val) indices: a stratified `fraction` of each class with ≥ 2 items goes to val."""
    rng = np.random.default_rng(seed)
    val = []
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        if len(idx) >= 2:
            val.extend(idx[:max(1, int(round(fraction * len(idx))))])
    val = np.sort(np.asarray(val, np.int64))
    return np.setdiff1d(np.arange(len(labels)), val), val


def probe(train_x, train_y, val_x, val_y, test_x, test_y, num_classes: int,
          grid: Sequence[float] = logreg.C_GRID) -> dict:
    """One run: choose C on val, fit on train, metrics on test (features (N, D), labels (N,))."""
    c, path = logreg.select_c(train_x, train_y, val_x, val_y, num_classes, grid)
    clf = logreg.fit(train_x, train_y, num_classes, c)
    probs = clf.predict_proba(test_x)
    return {"C": c, "converged": clf.converged, "train_size": int(len(train_y)),
            "metrics": M.classification_metrics(probs, test_y, num_classes), "c_search": path, "probs": probs}


def _summary(runs: list[dict]) -> dict:
    vals = {k: np.array([r["metrics"][k] for r in runs], np.float64) for k in METRICS}
    return {"mean": {k: float(np.mean(v)) for k, v in vals.items()},
            "std": {k: float(np.std(v)) for k, v in vals.items()}}


def _read_splits(csv, train_csv, val_csv, test_csv, classes, image_root, filename_column, label_column,
                 split_column) -> tuple[dict[str, Split], list[str]]:
    if csv and (train_csv or val_csv or test_csv):
        raise DatasetError("linear_probe: give either --csv (with a split column) or --train-csv/--test-csv, not both")
    if not csv and not (train_csv and test_csv):
        raise DatasetError("linear_probe: needs --csv with a split column, or --train-csv and --test-csv")
    files = {"all": csv} if csv else {n: p for n, p in (("train", train_csv), ("val", val_csv), ("test", test_csv))
                                       if p}
    tables = {n: read_csv_table(p, (filename_column, label_column) + ((split_column,) if csv else ()),
                                what="linear-probe CSV") for n, p in files.items()}
    if classes:
        classnames = list(load_classnames(classes))
    else:  # the sorted distinct labels; integer labels 0..max without a class list
        raw = sorted({r[label_column].strip() for t in tables.values() for r in t.rows})
        ints = all(x.isdigit() for x in raw)
        classnames = [str(i) for i in range(max(int(x) for x in raw) + 1)] if ints else raw
    splits: dict[str, Split] = {}
    for n, p in files.items():
        # the zero-shot reader parses and checks the labels (index or name, errors naming the line)
        ds = read_zero_shot_csv(p, classnames, image_root, filename_column, label_column)
        if not csv:
            splits[n] = Split(ds.paths, ds.labels, str(ds.csv_path))
            continue
        t, parts = tables[n], {}
        for i, (row, line) in enumerate(zip(t.rows, t.lines)):
            name = SPLIT_NAMES.get(row[split_column].strip().lower())
            if name is None:
                raise DatasetError(f"linear-probe CSV {t.path}, line {line}: {split_column} "
                                   f"{row[split_column]!r} is none of {', '.join(sorted(SPLIT_NAMES))}")
            parts.setdefault(name, []).append(i)
        for name, idx in parts.items():
            splits[name] = Split([ds.paths[i] for i in idx], ds.labels[np.asarray(idx)], f"{t.path} ({name})")
    for need in ("train", "test"):
        if need not in splits:
            raise DatasetError(f"linear-probe CSV {csv}: no {need!r} rows in column {split_column!r}")
    return splits, classnames


@register("linear_probe", summary="linear probe / few-shot logistic regression on frozen image features",
          table=lambda r: format_linear_probe(r), headline=lambda r: headline_linear_probe(r))
def run(encoder: Any, *, csv: str | None = None, train_csv: str | None = None, val_csv: str | None = None,
        test_csv: str | None = None, classes: str | None = None, image_root: str | None = None,
        filename_column: str = "filename", label_column: str = "label", split_column: str = "split",
        shots: Sequence[int] | None = None, percent_data: float | None = None, seeds: Sequence[int] = (0, 1, 2),
        val_fraction: float = 0.2, workers: int | None = None, progress: bool = True, strict: bool = False,
        save_predictions: bool = False, predictions_csv: str | None = None, bootstrap: int = 0,
        bootstrap_seed: int = 0) -> dict:
    """linear probe (all data, --percent-data P or --shots K ...) with C chosen on the validation split."""
    if shots is not None and percent_data is not None:
        raise ValueError("linear_probe: --shots and --percent-data are exclusive")
    if percent_data is not None and not 0 < float(percent_data) <= 100:
        raise ValueError(f"linear_probe: --percent-data must be in (0, 100], got {percent_data}")
    shots = [int(s) for s in (shots or [])]
    if any(s < 1 for s in shots):
        raise ValueError(f"linear_probe: --shots must be ≥ 1, got {shots}")
    if not seeds:
        raise ValueError("linear_probe: needs at least one seed")
    if not 0 < val_fraction < 1:
        raise ValueError(f"linear_probe: val_fraction must be in (0, 1), got {val_fraction}")
    if (shots or percent_data is not None) and (save_predictions or predictions_csv or bootstrap):
        raise ValueError("linear_probe: per-image predictions and bootstrap intervals are for the full-data probe; "
                         "--shots / --percent-data runs report mean ± std over seeds")
    splits, classnames = _read_splits(csv, train_csv, val_csv, test_csv, classes, image_root, filename_column,
                                      label_column, split_column)
    k = len(classnames)
    # The images of every split in one pass of the encoder (one row of a split = one image).
    order = [(n, i) for n in splits for i in range(len(splits[n].paths))]
    paths = [splits[n].paths[i] for n, i in order]
    enc = encode_image_files(encoder, paths, workers=workers, progress=progress, desc="linear-probe images",
                             strict=strict)
    feats = {n: ([], []) for n in splits}
    emb = l2n(enc.embeddings)
    for row, pos in enumerate(enc.indices):
        n, i = order[pos]
        feats[n][0].append(emb[row])
        feats[n][1].append(i)
    x = {n: np.stack(v[0]) if v[0] else np.zeros((0, emb.shape[1]), np.float32) for n, v in feats.items()}
    y = {n: splits[n].labels[np.asarray(v[1], np.int64)] for n, v in feats.items()}
    kept = {n: np.asarray(v[1], np.int64) for n, v in feats.items()}
    holdout = "val" not in x
    if holdout:
        tr, va = _holdout(y["train"], val_fraction, seed=0)
        x["val"], y["val"] = x["train"][va], y["train"][va]
        x["train"], y["train"] = x["train"][tr], y["train"][tr]
        kept["val"], kept["train"] = kept["train"][va], kept["train"][tr]
    for n in ("train", "val", "test"):
        if len(y[n]) == 0:
            raise DatasetError(f"linear_probe: the {n} split has no readable image")
    absent = sorted(set(range(k)) - set(np.unique(y["train"]).tolist()))
    if absent:
        raise DatasetError(f"linear_probe: class(es) {', '.join(classnames[c] for c in absent[:10])} have no "
                           "training image (a linear probe cannot learn them)")

    def one(idx):
        return probe(x["train"][idx], y["train"][idx], x["val"], y["val"], x["test"], y["test"], k)

    result: dict[str, Any] = {
        "task": "linear_probe",
        "dataset": {"splits": {n: {"source": splits[n].source if n in splits else "held out of train",
                                   "rows": len(splits[n].paths) if n in splits else None,
                                   "evaluated": int(len(y[n]))} for n in ("train", "val", "test")},
                    "num_classes": k, "validation": "held out of train (seed 0, stratified, "
                                                    f"{val_fraction:.0%})" if holdout else "given"},
        "classnames": classnames,
        "skipped_images": skipped_block(enc.bad),
        "timing": enc.timing(),
    }
    if shots:
        result["protocol"] = {"kind": "few_shot", "shots": shots, "seeds": list(seeds)}
        result["few_shot"] = {}
        for s in shots:
            runs = [{"seed": int(sd), **one(few_shot_indices(y["train"], s, int(sd)))} for sd in seeds]
            result["few_shot"][str(s)] = {**_summary(runs), "runs": [_public(r) for r in runs]}
    elif percent_data is not None:
        result["protocol"] = {"kind": "percent", "percent_data": float(percent_data), "seeds": list(seeds)}
        runs = [{"seed": int(sd), **one(percent_indices(y["train"], float(percent_data), int(sd)))} for sd in seeds]
        result.update(_summary(runs))
        result["runs"] = [_public(r) for r in runs]
    else:
        result["protocol"] = {"kind": "full"}
        r = one(np.arange(len(y["train"])))
        result.update({"metrics": r["metrics"], "C": r["C"], "converged": r["converged"], "c_search": r["c_search"]})
        test_files = [str(splits["test"].paths[i]) for i in kept["test"]]
        share(result, filenames=test_files, labels=y["test"], probs=r["probs"], classnames=classnames,
              predictions_csv=predictions_csv, bootstrap=bootstrap, bootstrap_seed=bootstrap_seed)
        if save_predictions:
            result["predictions"] = {"filenames": test_files, "labels": y["test"], "probs": r["probs"],
                                     "classnames": classnames}
    return result


def _public(r: dict) -> dict:
    return {k: v for k, v in r.items() if k not in ("probs", "c_search")}


def format_linear_probe(r: dict) -> str:
    head = f"linear probe {r.get('name') or ''}: {r['dataset']['num_classes']} classes"
    if "few_shot" in r:
        lines = [head + f" | few-shot, seeds {r['protocol']['seeds']}"]
        for s, v in r["few_shot"].items():
            lines.append(f"  {s:>3}-shot  " + "  ".join(f"{k} {v['mean'][k]:.4f}±{v['std'][k]:.4f}" for k in METRICS))
        return "\n".join(lines)
    if "mean" in r:
        return (head + f" | {r['protocol']['percent_data']}% of train, seeds {r['protocol']['seeds']}\n  "
                + "  ".join(f"{k} {r['mean'][k]:.4f}±{r['std'][k]:.4f}" for k in METRICS))
    return head + f" | C {r['C']:.3g}\n  " + "  ".join(f"{k} {r['metrics'][k]:.4f}" for k in METRICS)


def headline_linear_probe(r: dict) -> dict:
    """Full / percent runs: the classification metrics (means over seeds); few-shot: the first metric per K."""
    if "few_shot" in r:
        return {f"{s}-shot_{METRICS[0]}": v["mean"][METRICS[0]] for s, v in r["few_shot"].items()}
    src = r["mean"] if "mean" in r else r["metrics"]
    return {k: src[k] for k in METRICS}
