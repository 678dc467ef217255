"""Task name → evaluator (big_vision style): each task module registers a function

    @register("zero_shot", summary=..., table=format_fn, headline=headline_fn)
    def run(encoder, *, csv, classes, ..., progress=True) -> dict

taking an `EmbeddingModel` and keyword options (the same keys as a config entry or the CLI flags) and returning
the JSON-ready result. `table(result)` is the text the CLI prints; `headline(result)` the few numbers a summary
table, the training log and the sweep table show. `get(name)` imports the built-in task modules on first use.

Adding a task is a one-file change: a module with a registered `run`, listed in `_BUILTIN` below (or imported
by the caller before use). docs/architecture.md, "Add an evaluation task".
"""

from __future__ import annotations

import importlib
import inspect
from dataclasses import dataclass
from typing import Any, Callable

__all__ = ["Task", "get", "names", "register", "run_task"]

_BUILTIN = ("make_jax.evaluate.zero_shot", "make_jax.evaluate.concepts", "make_jax.evaluate.retrieval",
            "make_jax.evaluate.infer", "make_jax.evaluate.linear_probe", "make_jax.evaluate.embed",
            "make_jax.evaluate.explain")
_TASKS: dict[str, "Task"] = {}
_ALIASES = {"zeroshot": "zero_shot", "zero-shot": "zero_shot", "concept": "concepts",
            "concept_annotation": "concepts", "retrieve": "retrieval"}


@dataclass(frozen=True)
class Task:
    name: str
    fn: Callable[..., dict]
    summary: str
    table: Callable[[dict], str]
    headline: Callable[[dict], dict]

    @property
    def options(self) -> list[str]:
        params = inspect.signature(self.fn).parameters
        return [p for p, v in params.items() if v.kind == v.KEYWORD_ONLY]

    @property
    def required(self) -> list[str]:
        params = inspect.signature(self.fn).parameters
        return [p for p, v in params.items() if v.kind == v.KEYWORD_ONLY and v.default is inspect.Parameter.empty]


def register(name: str, summary: str = "", table: Callable[[dict], str] | None = None,
             headline: Callable[[dict], dict] | None = None):
    def deco(fn):
        if name in _TASKS and _TASKS[name].fn is not fn:
            raise ValueError(f"task {name!r} is already registered")
        _TASKS[name] = Task(name, fn, summary or (fn.__doc__ or "").strip().split("\n")[0],
                            table or (lambda r: ""), headline or (lambda r: {}))
        return fn

    return deco


def _load_builtin() -> None:
    for m in _BUILTIN:
        importlib.import_module(m)


def names() -> list[str]:
    _load_builtin()
    return sorted(_TASKS)


def get(name: str) -> Task:
    _load_builtin()
    key = _ALIASES.get(name, name)
    if key not in _TASKS:
        raise KeyError(f"unknown evaluation task {name!r}; known: {', '.join(sorted(_TASKS))}")
    return _TASKS[key]


def run_task(encoder: Any, task: str, **options: Any) -> dict:
    """Runs one task with options; unknown or missing options are an error naming the accepted ones."""
    t = get(task)
    unknown = sorted(set(options) - set(t.options))
    if unknown:
        raise TypeError(f"task {t.name!r}: unknown option(s) {unknown}; accepted: {', '.join(t.options)}")
    missing = [o for o in t.required if options.get(o) is None]
    if missing:
        raise TypeError(f"task {t.name!r}: missing required option(s) {missing}")
    return t.fn(encoder, **options)
