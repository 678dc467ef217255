"""What `launch.py` runs: the config's data preparation steps, training (with its evaluations), and ablation sweeps."""

from __future__ import annotations

import functools
import json
import logging
from pathlib import Path

from make_jax.train import sweep
from make_jax.train.config import check_config
from make_jax.train.loop import train
from make_jax.train.prepare import run_prepare

logger = logging.getLogger("make_jax.train")


# ---- entry points -------------------------------------------------------------------------------------------

def run(config, workdir: str | Path, *, allow_config_change: bool = False) -> dict:
    workdir = Path(workdir)
    check_config(config)  # before the data preparation steps
    run_prepare(config)
    result = train(config, workdir, allow_config_change=allow_config_change)
    if result.get("export"):
        for row in result.get("eval", []):
            logger.info("%s (%s): %s", row["name"], row["task"], ", ".join(
                f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()
                if k not in ("name", "task")))
        print(json.dumps({"workdir": str(workdir), "step": result["step"], "export": result["export"],
                          "final": {k: round(v, 5) for k, v in result["metrics"].items()},
                          "eval": result.get("eval", [])}, indent=2, default=str))
    return result


def run_sweep(config, workdir: str | Path, *, allow_config_change: bool = False) -> list[dict]:
    """The ablation rows of `config.sweep_rows` in turn (make_jax.train.sweep), each through `run` (whose data
    preparation finds the data already made after the first row)."""
    return sweep.run_sweep(config, workdir, functools.partial(run, allow_config_change=allow_config_change))
