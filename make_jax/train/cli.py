"""The training command line around `launch.py`: config names, a `--help` that lists the config's fields, and
the `make-jax-train` console command of an installed package (the same flags as `python launch.py`)."""

from __future__ import annotations

import sys
from typing import Sequence

__all__ = ["config_fields", "main", "prepare_argv"]

DEFAULT_CONFIG = "demo"


def config_fields(spec: str) -> list[str]:
    """'field = default' lines (dotted names, sorted) of the config `spec` (NAME_OR_PATH[:ARG])."""
    import importlib.util

    from make_jax.config_names import config_path

    path, _, arg = spec.partition(":")
    file = config_path(path)
    mod_spec = importlib.util.spec_from_file_location(f"_make_config_{file.stem}", file)
    mod = importlib.util.module_from_spec(mod_spec)
    mod_spec.loader.exec_module(mod)
    cfg = mod.get_config(arg) if arg else mod.get_config()
    lines: list[str] = []

    def walk(node, prefix):
        for k in sorted(node.keys()):
            v = node[k]
            if hasattr(v, "keys") and len(v):  # a section: list its fields
                walk(v, f"{prefix}{k}.")
            else:
                lines.append(f"  {prefix}{k} = {v!r}")

    walk(cfg, "")
    return lines


def _config_arg(argv: Sequence[str]) -> tuple[int, str] | None:
    """(index, value) of the last --config (absl keeps the last one)."""
    found = None
    for i, a in enumerate(argv):
        if a == "--config" and i + 1 < len(argv):
            found = i + 1, argv[i + 1]
        elif a.startswith("--config="):
            found = i, a[len("--config="):]
    return found


def prepare_argv(argv: Sequence[str], doc: str = "") -> list[str]:
    """`--config NAME[:ARG]` → the config file's path; `--help`/`-h`: usage, flags and every config field with
    its default printed to stdout, then exit 0."""
    from make_jax.config_names import resolve_spec

    argv = list(argv)
    found = _config_arg(argv)
    spec = found[1] if found else DEFAULT_CONFIG
    try:
        resolved = resolve_spec(spec)
    except ValueError:  # not a file and not a packaged name: launch.py's own check reports it in one line
        resolved = spec
    if found:
        i = found[0]
        argv[i] = resolved if argv[i] == spec else f"--config={resolved}"
    else:
        argv[1:1] = [f"--config={resolved}"]
    if any(a in ("--help", "-h", "-?") for a in argv[1:]):
        from absl import flags

        print(doc.strip() + "\n" if doc else "")
        print("flags:\n" + flags.FLAGS.main_module_help() if hasattr(flags.FLAGS, "main_module_help") else "")
        try:
            fields = config_fields(spec)
        except Exception as e:  # noqa: BLE001 - help must still print; say why the fields are missing
            fields = [f"  (could not load {spec}: {e})"]
        print(f"\nconfig fields of {spec} with their defaults (override any with --config.FIELD=VALUE; "
              f"--print_config shows the resolved config as JSON):")
        print("\n".join(fields))
        raise SystemExit(0)
    return argv


def main() -> None:
    """`make-jax-train`: `python launch.py` of an installed package."""
    from absl import app

    import launch

    argv = prepare_argv(sys.argv, launch.__doc__ or "")
    app.run(launch.main, argv=argv, **({"flags_parser": launch.parse_flags} if hasattr(launch, "parse_flags")
                                        else {}))
