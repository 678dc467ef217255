"""Where a run starts: the recipe refuses an empty init_from; `scratch` asks for random initialisation; a SigLIP
row started from a softmax CLIP checkpoint gets SigLIP's (t, b) and trains its bias; checkpoints carry the bias."""

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import tiny_train_config
from make_jax.models import create_model, get_model_config

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("config", ["configs/make_vit_b16.py", "configs/ablation.py:row=siglip,base=paper"])
def test_recipe_refuses_an_empty_init_from_in_one_line(config, tmp_path):
    out = subprocess.run([sys.executable, "launch.py", f"--config={config}", f"--workdir={tmp_path / 'run'}",
                          "--config.data.records=/nonexistent"],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode != 0
    lines = [l for l in out.stderr.strip().splitlines() if l.strip()]
    assert len(lines) == 1, out.stderr
    assert "config.init_from is empty" in lines[0] and "make_jax.convert" in lines[0] and "scratch" in lines[0]
    assert not (tmp_path / "run").exists()  # refused before any work


def test_demo_and_its_ablation_rows_start_from_scratch_explicitly():
    from configs import ablation, demo

    assert demo.get_config().init_from == "scratch"
    assert ablation.get_config("row=siglip").init_from == "scratch"
    assert ablation.get_config("row=make,base=paper").init_from == ""


def test_siglip_row_from_a_clip_checkpoint_trains_its_bias(synthderm_small, tmp_path):
    from make_jax.train.sweep import apply_row
    from make_jax.checkpoint import load_params, read_config, save_checkpoint
    from make_jax.train.loop import train

    _, records = synthderm_small
    source = create_model(get_model_config("tiny"), seed=11)  # a softmax CLIP: logit_scale ln(1/0.07), no bias
    save_checkpoint(tmp_path / "init", source, get_model_config("tiny"))
    c = apply_row(tiny_train_config(records, total_steps=2, log_every=1, init_from=str(tmp_path / "init")),
                  "siglip")
    result = train(c, tmp_path / "run")
    lines = [json.loads(l) for l in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    train_lines = [l for l in lines if l["split"] == "train"]
    assert len(train_lines) == 2
    # after one AdamW step of lr 1e-4 ... the pair starts at SigLIP's (log 10, -10), not at the checkpoint's scale
    first = train_lines[0]
    assert first["logit_scale"] == pytest.approx(10.0, rel=1e-2)
    assert first["logit_bias"] == pytest.approx(-10.0, abs=0.05) and first["logit_bias"] != -10.0
    # the export carries the bias and its config says so; the towers came from the checkpoint
    assert read_config(result["export"]).init_logit_bias == -10.0
    got = load_params(result["export"], as_numpy=True)
    assert got["logit_bias"].shape == () and float(got["logit_bias"]) == pytest.approx(train_lines[-1]["logit_bias"])
    want = load_params(tmp_path / "init", as_numpy=True)
    assert np.abs(got["visual"]["proj"] - want["visual"]["proj"]).max() < 0.05


def test_siglip_bias_survives_export_to_open_clip_and_back(tmp_path):
    from make_jax.checkpoint import load_params, save_checkpoint
    from make_jax.convert import convert, export_open_clip

    cfg = get_model_config("tiny", init_logit_scale=math.log(10.0), init_logit_bias=-10.0)
    model = create_model(cfg, seed=3)
    model.logit_bias[...] = np.float32(-7.25)
    save_checkpoint(tmp_path / "ckpt", model, cfg)
    export_open_clip(tmp_path / "ckpt", tmp_path / "oc")
    oc_cfg = json.loads((tmp_path / "oc" / "open_clip_config.json").read_text())
    assert oc_cfg["model_cfg"]["init_logit_bias"] == -10.0  # open_clip's CLIP(**model_cfg) then has logit_bias
    convert(tmp_path / "oc", tmp_path / "back")
    assert float(load_params(tmp_path / "back", as_numpy=True)["logit_bias"]) == -7.25
    plain = get_model_config("tiny")
    save_checkpoint(tmp_path / "plain", create_model(plain), plain)
    assert "logit_bias" not in load_params(tmp_path / "plain", as_numpy=True)
