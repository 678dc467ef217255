"""`python launch.py --config configs/<name>.py[:arg] --workdir DIR [--config.field=value ...]`: the training
command of a checkout, the same as `make-jax-train` (make_jax/train/cli.py, where the flags and their help live;
`--help` lists them and every config field with its default)."""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # make_jax and configs importable from any cwd

from make_jax.train.cli import main  # noqa: E402

if __name__ == "__main__":
    main()
