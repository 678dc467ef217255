"""Entry point: `python launch.py --config configs/<name>.py[:arg] --workdir DIR [--config.field=value ...]`
(or `--config <name>[:arg]`; installed: `make-jax-train ...`). `--help` lists every config field and its default.

Every config field can be overridden on the command line (`--config.batch_size=256`,
`--config.loss.slra=False`). The resolved config is saved as WORKDIR/config.json. `--sweep` runs the rows of an
ablation config one after another (see configs/ablation.py) and writes WORKDIR/sweep.{md,csv}.
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


def main(argv):
    del argv
    config = _CONFIG.value
    if _PRINT.value:
        print(config.to_json_best_effort(indent=2, sort_keys=True))
        return
    # Our progress and summaries at INFO; Orbax's and Grain's per-operation absl logs only from WARNING up.
    from absl import logging as absl_logging

    absl_logging.set_verbosity(absl_logging.WARNING)
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
    logging.getLogger("make_jax").setLevel(logging.INFO)
    logging.getLogger("make_jax").addHandler(handler)
    logging.getLogger("make_jax").propagate = False
    from make_jax.train.loop import InitFromError, check_init_from
    from make_jax.train.run import run, run_sweep

    config_path = flags.FLAGS["config"].config_filename
    workdir = _WORKDIR.value or os.path.join("runs", os.path.splitext(os.path.basename(config_path))[0])
    try:
        check_init_from(config)
    except InitFromError as e:
        sys.exit(f"error: {e}")
    if _SWEEP.value:
        run_sweep(config, workdir)
    else:
        run(config, workdir)


if __name__ == "__main__":
    from make_jax.train.cli import prepare_argv  # config names; --help lists the config fields (exit 0)

    app.run(main, argv=prepare_argv(sys.argv, __doc__))
