"""What `launch.py` runs: the config's data preparation steps, training, the final evaluation, and ablation sweeps."""

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


# ---- evaluation of the export -------------------------------------------------------------------------------

def final_evaluation(config, export_dir: str, out_json: Path) -> dict:
    """Zero-shot / concepts / retrieval on SynthDerm's held-out sets (the demo), written to `out_json`."""
    import make_jax
    from make_jax.evaluate import concepts, retrieval, zero_shot
    from make_jax.evaluate.cli import headline, write_json

    fe = config.get("final_eval")  # an optional section (demo configs)
    if not fe or "synthderm" not in config.prepare:
        return {}
    root = Path(config.prepare.synthderm.out)
    encoder = make_jax.load(export_dir, batch_size=config.eval.batch_size)
    progress = config.progress
    results = {}
    if fe.zero_shot:
        results["zero_shot"] = zero_shot.run(encoder, csv=str(root / "zeroshot" / "test.csv"),
                                             classes=str(root / "zeroshot" / "classnames.json"), progress=progress)
    if fe.concepts:
        results["concepts"] = concepts.run(encoder, data_dir=str(root / "skincon"), progress=progress)
    if fe.retrieval:
        results["retrieval"] = retrieval.run(encoder, csv=str(root / "retrieval" / "retrieval.csv"),
                                             progress=progress)
    write_json(out_json, {"checkpoint": export_dir, "results": results})
    summary = {task: headline(r) for task, r in results.items()}
    for task, h in summary.items():
        logger.info("%s: %s", task, ", ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}"
                                             for k, v in h.items()))
    return summary


# ---- entry points -------------------------------------------------------------------------------------------

def run(config, workdir: str | Path, *, allow_config_change: bool = False) -> dict:
    workdir = Path(workdir)
    check_config(config)  # before the data preparation steps
    run_prepare(config)
    result = train(config, workdir, allow_config_change=allow_config_change)
    if result.get("export"):
        result["eval"] = final_evaluation(config, result["export"], workdir / "eval.json")
        print(json.dumps({"workdir": str(workdir), "step": result["step"], "export": result["export"],
                          "final": {k: round(v, 5) for k, v in result["metrics"].items()},
                          "eval": result["eval"]}, indent=2, default=str))
    return result


def run_sweep(config, workdir: str | Path, *, allow_config_change: bool = False) -> list[dict]:
    """The ablation rows of `config.sweep_rows` in turn (make_jax.train.sweep), each through `run` (whose data
    preparation finds the data already made after the first row)."""
    return sweep.run_sweep(config, workdir, functools.partial(run, allow_config_change=allow_config_change))
