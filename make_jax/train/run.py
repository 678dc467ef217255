"""What `launch.py` runs: data preparation for the demo, training, the final evaluation, and ablation sweeps."""

from __future__ import annotations

import copy
import csv
import json
import logging
from pathlib import Path

from make_jax.train.loop import train

logger = logging.getLogger("make_jax.train")


# ---- SynthDerm preparation (demo configs) -------------------------------------------------------------------

def prepare_synthderm(config) -> None:
    """Generates SynthDerm and its records when absent, and points `config.data.records` at them."""
    if "synthderm" not in config or not config.synthderm:
        return
    from make_jax.data.convert import convert
    from make_jax.data.synthderm import SynthDermConfig, generate

    sd = config.synthderm
    out = Path(sd.out)
    if not (out / "synthderm.json").is_file():
        logger.info("generating SynthDerm in %s", out)
        generate(out, SynthDermConfig(seed=sd.seed, num_train=sd.num_train, num_val=sd.num_val,
                                      image_size=sd.image_size), workers=1, progress=config.get("progress", True))
    records_root = Path(sd.get("records", str(out / "records")))
    result = convert(str(out / "make" / "train.csv"), str(out / "make"), str(records_root),
                     val_csv=str(out / "make" / "val.csv"), shorter_side=config.data.get("shorter_side", 256),
                     workers=config.data.get("convert_workers", None), progress=config.get("progress", True),
                     log=logger.info)
    if not result.complete:
        raise RuntimeError(f"record conversion of {out} did not complete; rerun to resume")
    config.data.records = result.directory
    if config.eval.get("every") and not config.eval.get("csv"):
        config.eval.csv = str(out / "zeroshot" / "test.csv")
        config.eval.classnames = str(out / "zeroshot" / "classnames.json")


# ---- evaluation of the export -------------------------------------------------------------------------------

def final_evaluation(config, export_dir: str, out_json: Path) -> dict:
    """Zero-shot / concepts / retrieval on SynthDerm's held-out sets (the demo), written to `out_json`."""
    import make_jax
    from make_jax.evaluate import concepts, retrieval, zero_shot
    from make_jax.evaluate.cli import headline, write_json

    fe = config.get("final_eval") or {}
    if not fe or "synthderm" not in config:
        return {}
    root = Path(config.synthderm.out)
    encoder = make_jax.load(export_dir, batch_size=config.eval.get("batch_size", 64))
    progress = config.get("progress", True)
    results = {}
    if fe.get("zero_shot"):
        results["zero_shot"] = zero_shot.run(encoder, csv=str(root / "zeroshot" / "test.csv"),
                                             classes=str(root / "zeroshot" / "classnames.json"), progress=progress)
    if fe.get("concepts"):
        results["concepts"] = concepts.run(encoder, data_dir=str(root / "skincon"), progress=progress)
    if fe.get("retrieval"):
        results["retrieval"] = retrieval.run(encoder, csv=str(root / "retrieval" / "retrieval.csv"),
                                             progress=progress)
    write_json(out_json, {"checkpoint": export_dir, "results": results})
    summary = {task: headline(r) for task, r in results.items()}
    for task, h in summary.items():
        logger.info("%s: %s", task, ", ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}"
                                             for k, v in h.items()))
    return summary


# ---- entry points -------------------------------------------------------------------------------------------

def run(config, workdir: str | Path) -> dict:
    workdir = Path(workdir)
    prepare_synthderm(config)
    result = train(config, workdir)
    if result.get("export"):
        result["eval"] = final_evaluation(config, result["export"], workdir / "eval.json")
        print(json.dumps({"workdir": str(workdir), "step": result["step"], "export": result["export"],
                          "final": {k: round(v, 5) for k, v in result["metrics"].items()},
                          "eval": result["eval"]}, indent=2, default=str))
    return result


def run_sweep(config, workdir: str | Path) -> list[dict]:
    """Every row of `config.sweep_rows`, with identical data order and seeds, each in WORKDIR/<row>; then one
    table (WORKDIR/sweep.md and sweep.csv): row, final loss terms, zero-shot accuracy, concept AUROC, R@10."""
    from configs.ablation import apply_row

    workdir = Path(workdir)
    prepare_synthderm(config)
    rows = [r for r in str(config.get("sweep_rows", "")).split(",") if r]
    if not rows:
        raise ValueError("config.sweep_rows is empty: use configs/ablation.py (rows=clip,make,...)")
    table = []
    for row in rows:
        cfg = apply_row(copy.deepcopy(config), row)
        logger.info("sweep row %s", row)
        result = run(cfg, workdir / row)
        ev = result.get("eval", {})
        m = result.get("metrics", {})
        table.append({
            "row": row, "loss": m.get("loss"), "mkcl": m.get("mkcl"), "slra": m.get("slra"),
            "zero_shot_top1": ev.get("zero_shot", {}).get("top1"),
            "concept_auroc": ev.get("concepts", {}).get("mean_auroc"),
            "retrieval_r10_i2t": ev.get("retrieval", {}).get("i2t_R@10"),
            "retrieval_r10_t2i": ev.get("retrieval", {}).get("t2i_R@10"),
        })
    write_sweep_table(table, workdir)
    return table


def write_sweep_table(table: list[dict], workdir: Path) -> None:
    workdir.mkdir(parents=True, exist_ok=True)
    keys = list(table[0])
    with open(workdir / "sweep.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        w.writerows(table)
    fmt = lambda v: "" if v is None else (f"{v:.4f}" if isinstance(v, float) else str(v))  # noqa: E731
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    lines += ["| " + " | ".join(fmt(r[k]) for k in keys) + " |" for r in table]
    (workdir / "sweep.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
