"""The rows of the paper's Table 3 and its baselines, plus the public code's official loss as one more row.

    python launch.py --config configs/ablation.py:row=mkcl_slra --workdir runs/mkcl_slra
    python launch.py --config configs/ablation.py --sweep --workdir runs/sweep          # every row in turn
    python launch.py --config configs/ablation.py:rows=clip,make --sweep --workdir runs/sweep

The base is the demo setting (small model, SynthDerm) unless `base=paper` is given
(`configs/ablation.py:row=make,base=paper`): then it is the full recipe of configs/make_vit_b16.py.
"""

from configs import demo
from configs.common import base_config
from make_jax.train.sweep import ROWS, apply_row


def _parse(arg: str | None) -> dict:
    out = {}
    for part in (arg or "").split(","):
        if "=" in part:
            k, v = part.split("=", 1)
            out[k.strip()] = v.strip()
        elif out.get("rows") is not None and part.strip():  # rows=clip,make continues past the first comma
            out["rows"] += "," + part.strip()
    return out


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
