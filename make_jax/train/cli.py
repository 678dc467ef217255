"""The training command: `python launch.py` in a checkout, `make-jax-train` when installed (the same flags).

Usage: `launch.py --config configs/<name>.py[:arg] --workdir DIR [--config.field=value ...]` (or `--config
<name>[:arg]`, found from any folder; installed: `make-jax-train ...`). `--help` lists every config field and its
default.

Every config field can be overridden on the command line (`--config.batch_size=256`,
`--config.loss.slra=False`). The resolved config is saved as WORKDIR/config.json. `--sweep` runs the rows of an
ablation config one after another (see configs/ablation.py) and writes WORKDIR/sweep.{md,csv}.

Bad input (an unknown or out-of-range field, a missing path, an unwritable workdir, a workdir that holds another
run) ends the command before any work with one line on stderr and exit status 2; Ctrl-C during training saves
the current step and exits with 130 (docs/training.md, "Failure behaviour").

Multi-process (several GPU hosts): start this same command once per process with JAX_COORDINATOR_ADDRESS,
JAX_NUM_PROCESSES and JAX_PROCESS_ID set, or under SLURM `srun` / `mpirun` (detected); every process must see the
same WORKDIR. `--local_processes=N` starts N such processes on this machine (see docs/training.md).
"""

from __future__ import annotations

import logging
import os
import sys
import types
from typing import Sequence

__all__ = ["config_fields", "main", "parse_flags", "prepare_argv"]

DEFAULT_CONFIG = "demo"

_flags: types.SimpleNamespace | None = None


def prog() -> str:
    """The name errors are reported under (`NAME: error: ...`): the program as invoked — `launch.py` in a
    checkout, `make-jax-train` when installed, `python -m make_jax.train.cli`."""
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    if spec is not None and spec.name:
        return f"python -m {spec.name}"
    return os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else "make-jax-train"


def define_flags() -> types.SimpleNamespace:
    """The command's absl flags (defined once, on first use, so that importing this module defines none)."""
    global _flags
    if _flags is None:
        from absl import flags
        from ml_collections import config_flags

        _flags = types.SimpleNamespace(
            # no default here: prepare_argv always passes --config (the demo's path when none is given); a
            # default is loaded from the cwd, which fails outside the checkout, and a loadable one is parsed twice
            config=config_flags.DEFINE_config_file("config", None, "Training config file (get_config()); "
                                                   f"default: {DEFAULT_CONFIG}."),
            workdir=flags.DEFINE_string("workdir", None, "Run directory: checkpoints, metrics, export. "
                                        "Default: runs/<config name>."),
            sweep=flags.DEFINE_bool("sweep", False, "Run every row of an ablation config and tabulate them."),
            print_config=flags.DEFINE_bool("print_config", False, "Print the resolved config as JSON and exit."),
            local_processes=flags.DEFINE_integer(
                "local_processes", 0, "Start this command as N processes of one multi-process job on this "
                "machine (127.0.0.1, a free port); their output is prefixed [p<i>].", lower_bound=0),
            allow_config_change=flags.DEFINE_bool(
                "allow_config_change", False, "Continue the run in a used workdir although its config differs "
                "(the changes are logged in WORKDIR/config_changes.jsonl)."),
        )
    return _flags


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
        # The flags are defined here, not in the script that was run: list this module's (if defined).
        print("flags:\n" + flags.FLAGS.module_help(__name__) if _flags is not None else "")
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
    """`python launch.py ...` / `make-jax-train ...`: resolve config names, parse the flags, train."""
    from absl import app

    define_flags()
    app.run(_app_main, argv=prepare_argv(sys.argv, __doc__), flags_parser=parse_flags)


def parse_flags(argv):
    """absl's flag parsing, with a bad flag or config override reported in one line (exit status 2)."""
    from absl import flags

    try:
        return flags.FLAGS(argv)
    except flags.Error as e:  # when a get_config() raised, absl puts its traceback in the message: keep the error
        lines = [line for line in str(e).splitlines() if line.strip()]
        _fail(f"{lines[0]} {lines[-1]}" if len(lines) > 1 and "Traceback" in str(e) else str(e))
    except (AttributeError, KeyError) as e:  # ml_collections: an override of a field the config does not have
        _fail(f"unknown config field {str(e).strip(chr(34) + chr(39))!r} on the command line "
              "(--print_config lists the fields)")


def _fail(message: str):
    from make_jax.errors import one_line

    print(f"{prog()}: error: {one_line(message)}", file=sys.stderr)
    raise SystemExit(2)


def _app_main(argv):
    del argv
    from make_jax.errors import exit_on_input_error

    try:
        with exit_on_input_error(prog()):
            _train()
    except BaseException as e:
        _leave_at_once_if_multiprocess(e)
        raise


def _leave_at_once_if_multiprocess(error: BaseException) -> None:
    """In a multi-process job a normal exit would wait (up to JAX's shutdown timeout) for processes blocked in a
    collective with this one: report and leave at once, so that the launcher and the coordination service stop
    the others."""
    import jax

    if not jax.distributed.is_initialized():
        return
    if isinstance(error, SystemExit):
        code = error.code if isinstance(error.code, int) else (0 if error.code is None else 1)
        if error.code is not None and not isinstance(error.code, int):
            print(error.code, file=sys.stderr)
    else:
        from make_jax.train.distributed import lost_peer_message

        lost = lost_peer_message(error, jax.process_index(), jax.process_count())
        if lost:  # a consequence of another process's end, not a bug here: one line, no traceback
            print(f"{prog()}: error: {lost}", file=sys.stderr)
        else:
            import traceback

            traceback.print_exc()
        code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    if code == 2:  # an input error: every process checks the same input, so the others are about to report it too
        from make_jax.train.distributed import meet_before_exit

        meet_before_exit()
    os._exit(code)


def _self_command() -> list[str]:
    """The command line that started this process, without its arguments (`--local_processes` reruns it)."""
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    if spec is not None and spec.name:  # python -m make_jax.train.cli
        return [sys.executable, "-m", spec.name.removesuffix(".__main__")]
    return [sys.executable, os.path.abspath(sys.argv[0])]  # launch.py, or the make-jax-train script


def _train():
    import ml_collections
    from absl import flags

    from make_jax.train.config import check_config

    f = define_flags()
    config = f.config.value
    if not isinstance(config, ml_collections.ConfigDict):  # absl's stand-in for a file that failed to load
        try:
            config.to_dict()
        except OSError as e:
            name = flags.FLAGS["config"].config_filename
            _fail(f"no config file {name}" if not os.path.isfile(name) else f"cannot load config file {name}: {e}")
    check_config(config)
    if f.print_config.value:
        print(config.to_json_best_effort(indent=2, sort_keys=True))
        return
    if f.local_processes.value:
        from make_jax.train.local_job import run_local_job, strip_flag

        command = _self_command() + strip_flag(sys.argv[1:], "local_processes")
        sys.exit(run_local_job(command, f.local_processes.value))
    # Our progress and summaries at INFO; Orbax's and Grain's per-operation absl logs only from WARNING up.
    from absl import logging as absl_logging

    absl_logging.set_verbosity(absl_logging.WARNING)
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
    logging.getLogger("make_jax").setLevel(logging.INFO)
    logging.getLogger("make_jax").addHandler(handler)
    logging.getLogger("make_jax").propagate = False
    from make_jax.train.distributed import initialize_from_environment
    from make_jax.train.loop import check_init_from
    from make_jax.train.run import run, run_sweep

    initialize_from_environment()  # before anything starts a JAX backend

    config_path = flags.FLAGS["config"].config_filename
    workdir = f.workdir.value or os.path.join("runs", os.path.splitext(os.path.basename(config_path))[0])
    check_init_from(config)
    if f.sweep.value:
        run_sweep(config, workdir, allow_config_change=f.allow_config_change.value)
    else:
        run(config, workdir, allow_config_change=f.allow_config_change.value)


if __name__ == "__main__":
    main()
