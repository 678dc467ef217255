"""What `launch.py` runs: the config's data preparation steps, training (with its evaluations), and ablation sweeps."""

from __future__ import annotations

import functools
import json
import logging
from pathlib import Path

from make_jax.train import sweep
from make_jax.train.config import check_config
from make_jax.train.distributed import barrier, broadcast_json, initialize_from_environment
from make_jax.train.loop import train
from make_jax.train.prepare import run_prepare
from make_jax.train.text_tower import text_config_from

logger = logging.getLogger("make_jax.train")


def prepare_data_once(config) -> None:
    """`config.prepare`'s steps by process 0 alone (the others would race it on the same files); every process
    then takes process 0's `config.data.records`."""
    import jax

    if jax.process_index() == 0:
        run_prepare(config)
    config.data.records = broadcast_json(config.data.records)


# ---- entry points -------------------------------------------------------------------------------------------

def run(config, workdir: str | Path, *, allow_config_change: bool = False) -> dict:
    """Prepare the data, train (with its evaluations), report. In a multi-process job every process calls this;
    process 0 alone prepares the data, evaluates and writes the results, and the others wait for it at the end."""
    initialize_from_environment()
    workdir = Path(workdir)
    options = check_config(config)  # before the data preparation steps, as is the text tower's BERT directory or
    text_config_from(options)         # vocabulary (and its max_position_embeddings): neither needs the records
    prepare_data_once(config)
    result = train(config, workdir, allow_config_change=allow_config_change)
    if result.get("export"):
        for row in result.get("eval", []):
            logger.info("%s (%s): %s", row["name"], row["task"], ", ".join(
                f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()
                if k not in ("name", "task")))
        print(json.dumps({"workdir": str(workdir), "step": result["step"], "export": result["export"],
                          "final": {k: round(v, 5) for k, v in result["metrics"].items()},
                          "eval": result.get("eval", [])}, indent=2, default=str))
    barrier("make_jax.train.run_done")
    return result


def run_sweep(config, workdir: str | Path, *, allow_config_change: bool = False) -> list[dict]:
    """The ablation rows of `config.sweep_rows` in turn (make_jax.train.sweep), each through `run` (whose data
    preparation finds the data already made after the first row)."""
    return sweep.run_sweep(config, workdir, functools.partial(run, allow_config_change=allow_config_change))
