"""The rows of the paper's Table 3 and its baselines, plus the public code's official loss as one more row.

    python launch.py --config configs/ablation.py:row=mkcl_slra --workdir runs/mkcl_slra
    python launch.py --config configs/ablation.py --sweep --workdir runs/sweep          # every row in turn
    python launch.py --config configs/ablation.py:rows=clip,make --sweep --workdir runs/sweep

The base is the demo setting (small model, SynthDerm) unless `base=paper` is given
(`configs/ablation.py:row=make,base=paper`): then it is the full recipe of configs/make_vit_b16.py.
"""

import dataclasses

from configs import demo
from configs.common import base_config
from make_jax.losses import SIGLIP_ROWS, TABLE3, LossConfig

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


def _parse(arg: str | None) -> dict:
    out = {}
    for part in (arg or "").split(","):
        if "=" in part:
            k, v = part.split("=", 1)
            out[k.strip()] = v.strip()
        elif out.get("rows") is not None and part.strip():  # rows=clip,make continues past the first comma
            out["rows"] += "," + part.strip()
    return out


def apply_row(config, row: str):
    if row not in ROWS:
        raise ValueError(f"unknown ablation row {row!r}; known: {sorted(ROWS)}")
    loss = ROWS[row]
    for k, v in dataclasses.asdict(loss).items():
        if k in config.loss:
            config.loss[k] = v
    config.data.slot0 = "dagger" if loss.positives == "clip_dagger" else "raw"
    config.row = row
    return config


def get_config(arg: str | None = None):
    args = _parse(arg)
    if args.get("base") == "paper":
        config = base_config()
    else:
        config = demo.get_config()
        # 600 steps a row keeps the 7-row sweep well under an hour on 2 CPU cores.
        config.total_steps = 600
        config.optim.warmup_steps = 60
        config.checkpoint_every = 300
    rows = args.get("rows") or ",".join(ROWS)
    config.sweep_rows = rows
    config.row = ""
    return apply_row(config, args.get("row", "make"))
