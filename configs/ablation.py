"""The rows of the paper's Table 3 and its baselines, plus the public code's official loss as one more row.

    python launch.py --config configs/ablation.py:row=mkcl_slra --workdir runs/mkcl_slra
    python launch.py --config configs/ablation.py --sweep --workdir runs/sweep          # every row in turn
    python launch.py --config configs/ablation.py:rows=clip,make --sweep --workdir runs/sweep

The base is the demo setting (small model, SynthDerm) unless `base=paper` is given
(`configs/ablation.py:row=make,base=paper`): then it is the full recipe of configs/make_vit_b16.py.
"""

from configs import demo
from configs.common import base_config

# Row name → LossConfig fields (and the text put in slot 0). `clip_dagger` trains on the Derm1M† text (raw
# caption + disease + concept texts in one) as its single positive.
ROWS = {
    "clip": dict(positives="clip_raw", slra=False, dkw=False),
    "clip_dagger": dict(positives="clip_dagger", slra=False, dkw=False),
    "mkcl_knowledge": dict(positives="knowledge", slra=False, dkw=False),
    "mkcl": dict(positives="all", slra=False, dkw=False),
    "mkcl_slra": dict(positives="all", slra=True, dkw=False),
    "make": dict(positives="all", slra=True, dkw=True),
    "official": dict(mode="official", positives="all", slra=True, dkw=True, dkw_norm="softmax"),
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
    fields = ROWS[row]
    for k, v in fields.items():
        config.loss[k] = v
    config.data.slot0 = "dagger" if fields["positives"] == "clip_dagger" else "raw"
    config.row = row
    return config


def get_config(arg: str | None = None):
    args = _parse(arg)
    config = base_config() if args.get("base") == "paper" else demo.get_config()
    rows = args.get("rows") or ",".join(ROWS)
    config.sweep_rows = rows
    config.row = ""
    return apply_row(config, args.get("row", "make"))
