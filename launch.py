"""Entry point: `python launch.py --config configs/<name>.py[:arg] --workdir DIR [--config.field=value ...]`
(or `--config <name>[:arg]`; installed: `make-jax-train ...`). `--help` lists every config field and its default.

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

import logging
import os
import sys

from absl import app, flags
from ml_collections import config_flags

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # `configs` importable from any cwd

_CONFIG = config_flags.DEFINE_config_file("config", "configs/demo.py", "Training config file (get_config()).")
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory: checkpoints, metrics, export. "
                               "Default: runs/<config name>.")
_SWEEP = flags.DEFINE_bool("sweep", False, "Run every row of an ablation config and tabulate them.")
_PRINT = flags.DEFINE_bool("print_config", False, "Print the resolved config as JSON and exit.")
_LOCAL = flags.DEFINE_integer("local_processes", 0, "Start this command as N processes of one multi-process job "
                              "on this machine (127.0.0.1, a free port); their output is prefixed [p<i>].")
_ALLOW_CHANGE = flags.DEFINE_bool("allow_config_change", False,
                                  "Continue the run in a used workdir although its config differs (the changes "
                                  "are logged in WORKDIR/config_changes.jsonl).")


def parse_flags(argv):
    """absl's flag parsing, with a bad flag or config override reported in one line (exit status 2)."""
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

    print(f"launch.py: error: {one_line(message)}", file=sys.stderr)
    raise SystemExit(2)


def main(argv):
    del argv
    from make_jax.errors import exit_on_input_error

    try:
        with exit_on_input_error("launch.py"):
            _main()
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
        import traceback

        traceback.print_exc()
        code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _main():
    from make_jax.train.config import check_config

    import ml_collections

    config = _CONFIG.value
    if not isinstance(config, ml_collections.ConfigDict):  # absl's stand-in for a file that failed to load
        try:
            config.to_dict()
        except OSError as e:
            name = flags.FLAGS["config"].config_filename
            _fail(f"no config file {name}" if not os.path.isfile(name) else f"cannot load config file {name}: {e}")
    check_config(config)
    if _PRINT.value:
        print(config.to_json_best_effort(indent=2, sort_keys=True))
        return
    if _LOCAL.value:
        from make_jax.train.local_job import run_local_job, strip_flag

        command = [sys.executable, os.path.abspath(__file__)] + strip_flag(sys.argv[1:], "local_processes")
        sys.exit(run_local_job(command, _LOCAL.value))
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
    workdir = _WORKDIR.value or os.path.join("runs", os.path.splitext(os.path.basename(config_path))[0])
    check_init_from(config)
    if _SWEEP.value:
        run_sweep(config, workdir, allow_config_change=_ALLOW_CHANGE.value)
    else:
        run(config, workdir, allow_config_change=_ALLOW_CHANGE.value)


if __name__ == "__main__":
    from make_jax.train.cli import prepare_argv  # config names; --help lists the config fields (exit 0)

    app.run(main, argv=prepare_argv(sys.argv, __doc__), flags_parser=parse_flags)
