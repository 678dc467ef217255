"""`python -m make_jax.report DIR`: one static HTML page (DIR/report.html) of a run's or a sweep's results.

It gathers, recursively under DIR:

- evaluation results JSON (`python -m make_jax.evaluate --out`): one table, as `make_jax.report.merge` builds it;
- per-image predictions CSVs (`--predictions-csv`, see make_jax.evaluate.per_image): their metrics with seeded
  bootstrap 95 % intervals, ROC curves, confusion matrix and per-class accuracy;
- `metrics.jsonl` (training): the training curves;
- `sweep.csv` (`launch.py --sweep`): the ablation table and chart.

Plots are written as PNG under DIR/report_files/ and embedded in the page (base64), so the page needs no
network and no other file to be viewed or mailed.
"""

from __future__ import annotations

import base64
import csv
import html
import json
from pathlib import Path

__all__ = ["build_report"]

_CSS = ("body{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}"
        "table{border-collapse:collapse;font-size:13px;margin:1em 0}td,th{border:1px solid #ccc;padding:3px 7px}"
        "th{background:#f3f3f3}img{max-width:100%;border:1px solid #eee;margin:4px}h2{border-bottom:1px solid #ddd}"
        ".fig{display:inline-block;vertical-align:top;max-width:49%}")


def _table(rows: list[dict]) -> str:
    from make_jax.report.merge import _columns, _fmt

    cols = _columns(rows)
    head = "".join(f"<th>{html.escape(c)}</th>" for c in cols)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(_fmt(r.get(c)))}</td>" for c in cols) + "</tr>"
                   for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _img(path: Path, alt: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<div class="fig"><img alt="{html.escape(alt)}" src="data:image/png;base64,{data}"></div>'


def _slug(path: Path, root: Path) -> str:
    rel = path.relative_to(root).with_suffix("")
    return "_".join(rel.parts).replace(" ", "_") or path.stem


def _is_result(obj) -> bool:
    return isinstance(obj, dict) and ("task" in obj or isinstance(obj.get("results"), list))


def build_report(root: str | Path, out: str | Path | None = None, *, bootstrap: int = 1000, seed: int = 0) -> Path:
    """Writes the page (default ROOT/report.html) and its PNGs; returns the page's path."""
    from make_jax.evaluate import metrics as M
    from make_jax.evaluate.bootstrap import bootstrap_ci
    from make_jax.evaluate.per_image import read_predictions_csv
    from make_jax.report import plots
    from make_jax.report.merge import summary_rows

    root = Path(root)
    if not root.is_dir():
        raise ValueError(f"{root}: not a directory")
    out = Path(out) if out else root / "report.html"
    figs = root / "report_files"
    parts = [f"<h1>make_jax report: {html.escape(str(root.resolve().name))}</h1>"]
    files = sorted(p for p in root.rglob("*") if p.is_file() and figs not in p.parents)

    rows = []
    for p in (f for f in files if f.suffix == ".json"):
        try:
            obj = json.loads(p.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError):
            continue  # not every JSON under a run directory is a result (config.json, ...)
        if _is_result(obj):
            rows.extend(summary_rows(obj, str(p.relative_to(root))))
    if rows:
        parts += ["<h2>Evaluation results</h2>", _table(rows)]

    for p in (f for f in files if f.suffix == ".csv" and f.name != "sweep.csv"):
        try:
            _, labels, probs, classnames = read_predictions_csv(p)
        except (ValueError, UnicodeDecodeError):
            continue  # another kind of CSV
        k = len(classnames)
        m = M.classification_metrics(probs, labels, k)
        ci = bootstrap_ci(lambda q, y: M.classification_metrics(q, y, k), labels, probs, n=bootstrap, seed=seed)
        preds = probs.argmax(1)
        cm = M.confusion_matrix(labels, preds, k)
        slug = _slug(p, root)
        t = [{"metric": key, "value": m[key], "95% CI low": ci[key]["low"], "95% CI high": ci[key]["high"]}
             for key in M.CLASSIFICATION_METRICS]
        parts += [f"<h2>Per-image predictions: {html.escape(str(p.relative_to(root)))}</h2>",
                  f"<p>{len(labels)} images, {k} classes; intervals: percentile bootstrap, {bootstrap} replicates, "
                  f"seed {seed}.</p>", _table(t),
                  _img(plots.roc_curves(labels, probs, classnames, figs / f"{slug}_roc.png", title=p.stem), "ROC"),
                  _img(plots.confusion_matrix(cm, classnames, figs / f"{slug}_confusion.png", title=p.stem),
                       "confusion matrix"),
                  _img(plots.per_class_accuracy(M.per_class_accuracy(labels, preds, k), cm.sum(1), classnames,
                                                figs / f"{slug}_per_class.png", title=p.stem), "per-class accuracy")]

    for p in (f for f in files if f.name == "metrics.jsonl"):
        parts += [f"<h2>Training curves: {html.escape(str(p.parent.relative_to(root)) or '.')}</h2>",
                  _img(plots.training_curves(p, figs / f"{_slug(p.parent, root) or 'run'}_training.png"),
                       "training curves")]

    for p in (f for f in files if f.name == "sweep.csv"):
        with open(p, newline="", encoding="utf-8") as f:
            table = list(csv.DictReader(f))
        parts += [f"<h2>Ablation sweep: {html.escape(str(p.relative_to(root)))}</h2>", _table(table),
                  _img(plots.sweep_chart(p, figs / f"{_slug(p, root)}_chart.png"), "sweep chart")]

    if len(parts) == 1:
        raise ValueError(f"{root}: found no results JSON, predictions CSV, metrics.jsonl or sweep.csv")
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>make_jax report</title>"
            f"<style>{_CSS}</style></head><body>{''.join(parts)}</body></html>\n")
    out.write_text(page, encoding="utf-8")
    return out
