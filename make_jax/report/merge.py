"""Merge evaluation results JSON files into one table (Markdown + CSV), as clip_benchmark's `build` does.

    python -m make_jax.report.merge results/*.json --out results/table      # → table.md, table.csv
    make-jax-merge results/*.json --out results/table

Each input is a file `python -m make_jax.evaluate --out` wrote: a single task result, or a config run with a
`results` list. One row per (file, set): model (the `checkpoint` / `random_init` of the file), set name, task,
then every scalar metric (retrieval's nested directions flattened as `image_to_text.R@10`; few-shot means as
`16shot.accuracy` with `16shot.accuracy_std`; bootstrap intervals as `accuracy_ci_low` / `accuracy_ci_high`).
Columns are the union over rows, in first-seen order; a metric a row lacks is an empty cell.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
from pathlib import Path
from typing import Any, Iterable

__all__ = ["main", "markdown_table", "merge", "summary_rows"]

_SKIP = {"num_correct", "auroc_classes_scored", "num_concepts"}


def _scalar(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _metrics_of(r: dict) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in (r.get("metrics") or {}).items():
        if _scalar(v) and k not in _SKIP:
            out[k] = v
        elif isinstance(v, dict):  # retrieval: image_to_text / text_to_image
            out.update({f"{k}.{kk}": vv for kk, vv in v.items() if _scalar(vv)})
    for shots, v in (r.get("few_shot") or {}).items():
        for k, m in v["mean"].items():
            out[f"{shots}shot.{k}"] = m
            out[f"{shots}shot.{k}_std"] = v["std"][k]
    if "mean" in r and "std" in r:  # percent-data runs
        for k, m in r["mean"].items():
            out[k], out[f"{k}_std"] = m, r["std"][k]
    for k, ci in (r.get("ci95") or {}).items():
        out[f"{k}_ci_low"], out[f"{k}_ci_high"] = ci["low"], ci["high"]
    return out


def summary_rows(obj: dict, source: str = "") -> list[dict]:
    """The table rows of one results JSON object (see the module docstring)."""
    model = obj.get("checkpoint") or (f"random:{obj['random_init']}" if obj.get("random_init") else "")
    results = obj["results"] if isinstance(obj.get("results"), list) else [obj]
    rows = []
    for r in results:
        row = {"file": source, "model": model, "name": r.get("name") or r.get("task"), "task": r.get("task")}
        if "error" in r:
            row["error"] = r["error"]
        row.update(_metrics_of(r))
        rows.append(row)
    return rows


def merge(paths: Iterable[str | Path]) -> list[dict]:
    rows = []
    for p in paths:
        p = Path(p)
        try:
            obj = json.loads(p.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ValueError(f"{p}: file not found") from None
        except json.JSONDecodeError as e:
            raise ValueError(f"{p}: not JSON ({e.msg}, line {e.lineno})") from None
        if not isinstance(obj, dict) or not ("task" in obj or isinstance(obj.get("results"), list)):
            raise ValueError(f"{p}: not an evaluation result (no 'task' and no 'results' list)")
        rows.extend(summary_rows(obj, p.name))
    return rows


def _columns(rows: list[dict]) -> list[str]:
    cols: list[str] = []
    for r in rows:
        cols.extend(k for k in r if k not in cols)
    return cols


def _fmt(v: Any) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return ""
    return f"{v:.4f}" if isinstance(v, float) else str(v)


def markdown_table(rows: list[dict]) -> str:
    cols = _columns(rows)
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(_fmt(r.get(c)).replace("|", "\\|") for c in cols) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def write_tables(rows: list[dict], out: str | Path) -> tuple[Path, Path]:
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    md, cs = out.with_suffix(".md"), out.with_suffix(".csv")
    md.write_text(markdown_table(rows), encoding="utf-8")
    with open(cs, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=_columns(rows))
        w.writeheader()
        w.writerows([{c: ("" if r.get(c) is None else r.get(c)) for c in _columns(rows)} for r in rows])
    return md, cs


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m make_jax.report.merge", description=__doc__.split("\n")[0])
    p.add_argument("results", nargs="+", help="results JSON files written by python -m make_jax.evaluate --out")
    p.add_argument("--out", required=True, help="output path without suffix: writes OUT.md and OUT.csv")
    args = p.parse_args(argv)
    try:
        rows = merge(args.results)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    md, cs = write_tables(rows, args.out)
    print(markdown_table(rows), end="")
    print(f"wrote {md} and {cs}", file=sys.stderr)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
