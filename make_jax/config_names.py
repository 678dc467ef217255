"""Configs by name: `--config eval_paper:/data/eval` finds `configs/eval_paper.py`, in a checkout or installed.

The project's configs live in the top-level `configs/` package (shipped in the wheel too). The library never
imports it: it only locates its files. A `--config` value whose file part is an existing file is used as is; otherwise
`NAME`, `NAME.py` or `configs/NAME.py` is looked up as the module `configs.NAME`.
"""

from __future__ import annotations

import importlib.util
import os
import pkgutil
from pathlib import Path

__all__ = ["available", "config_path", "resolve_spec"]


def available() -> list[str]:
    """Names of the configs of the importable `configs` package (empty if there is none)."""
    spec = importlib.util.find_spec("configs")
    if spec is None or not spec.submodule_search_locations:
        return []
    return sorted(m.name for m in pkgutil.iter_modules(spec.submodule_search_locations) if m.name != "common")


def config_path(name_or_path: str) -> Path:
    """A config file for `name_or_path` (a path, or a name as the module docstring says); ValueError if none."""
    if os.path.isfile(name_or_path):
        return Path(name_or_path)
    name = name_or_path[:-3] if name_or_path.endswith(".py") else name_or_path
    name = name.removeprefix("configs/").removeprefix("configs.")
    spec = None
    if name and all(part.isidentifier() for part in name.split(".")) and "/" not in name:
        try:
            spec = importlib.util.find_spec(f"configs.{name}")
        except ImportError:
            spec = None
    if spec is None or not spec.origin:
        known = ", ".join(available()) or "none: the configs package is not importable"
        raise ValueError(f"config {name_or_path}: no such file and no packaged config of that name (known: {known})")
    return Path(spec.origin)


def resolve_spec(spec: str) -> str:
    """'NAME_OR_PATH[:ARG]' → 'FILE[:ARG]' (the argument after the first colon is kept as given)."""
    path, sep, arg = spec.partition(":")
    return f"{config_path(path)}{sep}{arg}"
