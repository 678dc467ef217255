"""The record of the run a workdir holds: WORKDIR/config.json, written once, and the check against drift.

A rerun in a used workdir resumes from its checkpoint, so it must describe the same run: `claim_workdir` compares
the new resolved config with the saved one before anything is written, and refuses a difference (naming each
changed field) unless the caller allows it. An allowed change is appended to WORKDIR/config_changes.jsonl;
config.json keeps the record of the run as it started. A different model is refused even when changes are
allowed (its parameters cannot be restored from the checkpoint).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from make_jax.train.config import ConfigError

CONFIG_FILE = "config.json"
CHANGES_FILE = "config_changes.jsonl"
# Fields that change only what is shown, never what is computed: not drift.
DISPLAY_ONLY = frozenset({"progress"})
# Fields whose change makes the checkpoint unusable: refused even with allow_change.
STRUCTURAL = ("model.name",)


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": 1}} → {"a.b": 1}; lists and tuples are values (compared whole)."""
    if isinstance(tree, dict):
        out = {}
        for k, v in tree.items():
            out.update(flatten(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: list(tree) if isinstance(tree, tuple) else tree}


def config_changes(saved: dict, new: dict) -> dict[str, tuple[Any, Any]]:
    """Field → (saved value, new value) for every field that differs (missing: None), display-only ones aside."""
    a, b = flatten(saved), flatten(new)
    return {k: (a.get(k), b.get(k)) for k in sorted(set(a) | set(b))
            if k not in DISPLAY_ONLY and a.get(k) != b.get(k)}


def claim_workdir(workdir: Path, config: dict, *, allow_change: bool = False, step: int | None = None,
                  write: bool = True) -> dict[str, tuple[Any, Any]]:
    """Records `config` as the run of `workdir`, or checks it against the run already recorded there.

    Returns the allowed changes (empty for a new or identical run). Raises ConfigError naming every changed
    field when they are not allowed, and for a structural change in any case; nothing is written then.
    `step` (the checkpoint the run resumes from) goes into the change log; `write` False: check only (other
    processes of a multi-process job).
    """
    path = workdir / CONFIG_FILE
    if not path.is_file():
        if write:
            _write_atomic(path, json.dumps(config, indent=2, sort_keys=True) + "\n")
        return {}
    try:
        saved = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ConfigError(f"{path}: the record of the run in this workdir is unreadable ({e}); "
                          "use another --workdir") from None
    changes = config_changes(saved, config)
    if not changes:
        return {}
    listing = ", ".join(f"{k}: {_short(old)} -> {_short(new)}" for k, (old, new) in changes.items())
    structural = [k for k in STRUCTURAL if k in changes]
    if structural:
        raise ConfigError(f"{workdir} holds a run of another model ({listing}); its checkpoints cannot be "
                          "restored into this one: use another --workdir")
    if not allow_change:
        raise ConfigError(f"{workdir} holds a run with another config ({listing}); use another --workdir, or "
                          "pass --allow_config_change to continue that run under the new values")
    if write:
        with open(workdir / CHANGES_FILE, "a") as f:
            f.write(json.dumps({"resumed_at_step": step, "changes": {k: list(v) for k, v in changes.items()}},
                               sort_keys=True) + "\n")
    return changes


def _short(value: Any) -> str:
    text = json.dumps(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
