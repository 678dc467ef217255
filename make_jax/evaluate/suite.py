"""The one evaluation path: ``evals = {name: dict(task=..., every=..., **options)}`` → registry tasks → results.

Training runs it on the current parameters (``make_jax.train.loop``: entries with ``every > 0`` every that many
steps, and every entry at the final step, written to WORKDIR/eval.json); ``python -m make_jax.evaluate`` runs it
on a checkpoint (``--config FILE``, or ``--task ...`` as a one-entry set). ``task`` is a registry name
(``make_jax.evaluate.registry``); the other keys are that task's keyword options; ``every`` matters only in
training (0: only at the end). Each task's ``headline`` gives the few numbers logged and summarised.

Keep the entries' order with ``ml_collections.ConfigDict({...}, sort_keys=False)`` (a plain ConfigDict sorts).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from make_jax.atomic_io import write_text_atomic
from make_jax.evaluate import registry
from make_jax.evaluate.common import to_jsonable
from make_jax.evaluate.datasets import DatasetError

__all__ = ["EvalEntry", "headline", "parse_evals", "run_evals", "summarize", "write_json"]


@dataclass(frozen=True)
class EvalEntry:
    name: str
    task: str  # registry name (aliases resolved)
    every: int = 0  # training: every this many steps (0: only at the final step); ignored on the command line
    options: dict = field(default_factory=dict)


def parse_evals(evals: Any, where: str = "evals") -> list[EvalEntry]:
    """Checks every entry before any work: a known task, its accepted options, its required ones, `every` ≥ 0.
    ValueError names the entry and the field."""
    if hasattr(evals, "to_dict"):
        evals = evals.to_dict()
    if not isinstance(evals, Mapping) or not evals:
        raise ValueError(f"{where}: needs a dict name → dict(task=..., every=..., **options), got {evals!r}")
    entries = []
    for name, entry in evals.items():
        opts = dict(entry.to_dict() if hasattr(entry, "to_dict") else entry)
        if "task" not in opts:
            raise ValueError(f"{where}.{name}: has no 'task' (known: {', '.join(registry.names())})")
        try:
            task = registry.get(str(opts.pop("task")))
        except KeyError as e:
            raise ValueError(f"{where}.{name}: {e.args[0]}") from None
        every = opts.pop("every", 0)
        if isinstance(every, bool) or not isinstance(every, int) or every < 0:
            raise ValueError(f"{where}.{name}.every: must be an integer ≥ 0, got {every!r}")
        unknown = sorted(set(opts) - set(task.options))
        if unknown:
            raise ValueError(f"{where}.{name}: unknown option(s) {unknown} for task {task.name}; "
                             f"accepted: {', '.join(task.options)}")
        missing = [o for o in task.required if opts.get(o) is None]
        if missing:
            raise ValueError(f"{where}.{name}: task {task.name} needs option(s) {missing}")
        entries.append(EvalEntry(str(name), task.name, every, opts))
    return entries


def run_evals(encoder: Any, entries: list[EvalEntry], *, defaults: Mapping[str, Any] | None = None,
              echo: Callable[[str], None] | None = None, raise_errors: bool = False) -> list[dict]:
    """Each entry's result (with its `name`), in order. `defaults` (e.g. workers, progress, strict) fill the
    options a task accepts and the entry does not set. A failing entry gives {task, name, error} and the others
    still run, unless `raise_errors`. `echo` receives each task's printed table."""
    results = []
    for e in entries:
        task = registry.get(e.task)
        opts = {k: v for k, v in (defaults or {}).items() if k in task.options and v is not None}
        opts.update(e.options)
        try:
            res = registry.run_task(encoder, e.task, **opts)
        except (DatasetError, FileNotFoundError, OSError, ValueError, TypeError, KeyError) as err:
            if raise_errors:
                raise
            res = {"task": e.task, "name": e.name, "error": str(err)}
        else:
            res["name"] = e.name
            if echo is not None:
                echo(task.table(res))
        results.append(res)
    return results


def headline(result: dict) -> dict:
    """The task's headline numbers of one result (or its error)."""
    if "error" in result:
        return {"error": result["error"]}
    return registry.get(result["task"]).headline(result)


def summarize(results: list[dict], published: Mapping[str, Mapping] | None = None) -> list[dict]:
    """One row per result: name, task, headline numbers, and the published numbers of that name if given."""
    rows = []
    for r in results:
        row = {"name": r.get("name"), "task": r.get("task"), **headline(r)}
        if published and r.get("name") in published:
            row["published"] = dict(published[r.get("name")])
        rows.append(row)
    return rows


def write_json(path: str | Path, obj: Any) -> Path:
    """Strict JSON (NaN → null), written atomically."""
    return write_text_atomic(path, json.dumps(to_jsonable(obj), indent=1, allow_nan=False) + "\n")
