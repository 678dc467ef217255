"""Ablation sweeps: the rows of the paper's Table 3 (plus the public code's official loss), trained in turn with
identical data order and seeds, summarised in one table. configs/ablation.py selects rows; launch.py --sweep
runs them."""

from __future__ import annotations

import copy
import csv
import dataclasses
import logging
from pathlib import Path

from make_jax.losses import SIGLIP_ROWS, TABLE3, LossConfig
from make_jax.train.config import ConfigError

logger = logging.getLogger("make_jax.train")

# Row name → LossConfig (the paper's Table 3 rows as make_jax.losses.TABLE3 defines them, and the SigLIP baselines
# of its Tables 1-2). `clip_dagger` / `siglip_dagger` train on the Derm1M† text (raw caption + disease + concept
# texts in one) as their single positive.
ROWS = {
    "clip": TABLE3["clip"],
    "clip_dagger": TABLE3["clip_dagger"],
    "mkcl_knowledge": TABLE3["mkcl#"],
    "mkcl": TABLE3["mkcl"],
    "mkcl_slra": TABLE3["mkcl+slra"],
    "make": TABLE3["make"],
    "siglip": SIGLIP_ROWS["siglip"],
    "siglip_dagger": SIGLIP_ROWS["siglip_dagger"],
    "official": LossConfig(mode="official", positives="all", slra=True, dkw=True, dkw_norm="softmax"),
}


def apply_row(config, row: str):
    """`config` with the loss switches (and slot-0 text) of ablation row `row`; `config.row` records it."""
    if row not in ROWS:
        raise ConfigError(f"unknown ablation row {row!r}; known: {sorted(ROWS)}")
    loss = ROWS[row]
    for k, v in dataclasses.asdict(loss).items():
        if k in config.loss:
            config.loss[k] = v
    config.data.slot0 = "dagger" if loss.positives == "clip_dagger" else "raw"
    config.row = row
    return config


def run_sweep(config, workdir: str | Path, run) -> list[dict]:
    """Every row of `config.sweep_rows`, each trained by `run(config, workdir)` in WORKDIR/<row>; then one table
    (WORKDIR/sweep.md and sweep.csv): row, final loss terms, zero-shot accuracy, concept AUROC, R@10."""
    workdir = Path(workdir)
    rows = [r for r in str(config.get("sweep_rows", "")).split(",") if r]
    if not rows:
        raise ValueError("config.sweep_rows is empty: use configs/ablation.py (rows=clip,make,...)")
    table = []
    for row in rows:
        cfg = apply_row(copy.deepcopy(config), row)
        logger.info("sweep row %s", row)
        result = run(cfg, workdir / row)
        ev = {}
        for summary in result.get("eval", []):  # the first evaluation of each task (config.evals order)
            ev.setdefault(summary["task"], summary)
        m = result.get("metrics", {})
        table.append({
            "row": row, "loss": m.get("loss"), "mkcl": m.get("mkcl"), "slra": m.get("slra"),
            "zero_shot_top1": ev.get("zero_shot", {}).get("top1"),
            "concept_auroc": ev.get("concepts", {}).get("mean_auroc"),
            "retrieval_r10_i2t": ev.get("retrieval", {}).get("i2t_R@10"),
            "retrieval_r10_t2i": ev.get("retrieval", {}).get("t2i_R@10"),
        })
    import jax

    if jax.process_index() == 0:  # the evaluation results exist on process 0 only
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
