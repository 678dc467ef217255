"""Configs, command-line overrides, FLOP counts and the ablation sweep."""

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest

from make_jax.losses import LossConfig
from make_jax.models import get_model_config
from make_jax.train.flops import image_forward_flops, text_forward_flops, train_flops_per_image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def test_flops_match_the_spec():
    # Spec §7: ViT-B/16 image tower 35.13 GFLOP, text tower 5.96 GFLOP per 77-token text, 302 GFLOP per
    # training image with 11 texts.
    cfg = get_model_config("ViT-B-16")
    assert round(image_forward_flops(cfg) / 1e9, 2) == 35.13
    assert round(text_forward_flops(cfg) / 1e9, 2) == 5.96
    assert round(train_flops_per_image(cfg, 11) / 1e9) == 302


# The paper's Table 3 (MAKE_SPEC §2 "Ablation switches"), written out here rather than read from the code:
# row -> (what slot 0 holds, the slots whose texts are trained on, SLRA on, DKW on).
ALL_SLOTS = frozenset(range(11))  # raw, disease, concept, 8 subtexts
PAPER_TABLE3 = {
    "clip": ("raw", frozenset({0}), False, False),  # CLIP: the raw caption, one positive
    "clip_dagger": ("dagger", frozenset({0}), False, False),  # CLIP on Derm1M† (raw + aspects in one text)
    "mkcl_knowledge": ("raw", frozenset({0, 1, 2}), False, False),  # mkcl#: the knowledge set only
    "mkcl": ("raw", ALL_SLOTS, False, False),  # mkcl: knowledge set + subtexts
    "mkcl_slra": ("raw", ALL_SLOTS, True, False),  # + SLRA
    "make": ("raw", ALL_SLOTS, True, True),  # MAKE: mkcl + SLRA + DKW
}


def test_ablation_rows_are_table3():
    import jax.numpy as jnp

    from configs.ablation import ROWS, get_config
    from make_jax.losses.paper import text_mask

    slots = jnp.arange(11)
    for row, (slot0, trained, slra, dkw) in PAPER_TABLE3.items():
        config = get_config(f"row={row}")
        loss = LossConfig(**dict(config.loss))
        # Which slots count as texts is asked of the loss's own row mask, one valid row per slot of image 0.
        mask = text_mask(jnp.zeros(11, jnp.int32), slots, jnp.ones(11, bool), 1, loss)
        assert frozenset(int(i) for i in jnp.flatnonzero(mask)) == trained, row
        assert (loss.slra, loss.dkw) == (slra, dkw), row
        assert config.data.slot0 == slot0, row
        # Every row is the paper's maths with the paper's constants (lambda = 0.7, sigma = 0, ratio weights).
        assert (loss.mode, loss.slra_lambda, loss.sigma, loss.dkw_norm) == ("paper", 0.7, 0.0, "ratio"), row
    official = LossConfig(**dict(get_config("row=official").loss))
    assert official.mode == "official" and official.slra and official.dkw
    for row, slot0 in (("siglip", "raw"), ("siglip_dagger", "dagger")):  # the SigLIP baselines of Tables 1-2
        config = get_config(f"row={row}")
        loss = LossConfig(**dict(config.loss))
        assert loss.objective == "sigmoid" and not (loss.slra or loss.dkw) and config.data.slot0 == slot0
        assert loss.positives == ("clip_raw" if row == "siglip" else "clip_dagger")
    assert set(ROWS) == set(PAPER_TABLE3) | {"official", "siglip", "siglip_dagger"}
    assert set(get_config().sweep_rows.split(",")) == set(ROWS)  # the default sweep runs every row
    assert get_config("rows=clip,make").sweep_rows == "clip,make"
    with pytest.raises(ValueError, match="unknown ablation row"):
        get_config("row=nope")


def test_paper_config_is_the_spec_recipe():
    from configs.make_vit_b16 import get_config

    c = get_config()
    assert (c.batch_size, c.epochs, c.optim.lr, c.optim.warmup_steps) == (2048, 15.0, 1e-4, 1500)
    assert (c.optim.b1, c.optim.b2, c.optim.eps, c.optim.weight_decay) == (0.9, 0.98, 1e-6, 0.1)
    assert LossConfig(**dict(c.loss)) == LossConfig()  # the MAKE row, paper mode
    assert c.model.name == "ViT-B-16" and c.model.dtype == "bfloat16" and c.model.remat
    assert (c.data.augment.scale, c.data.augment.jitter_prob, c.data.augment.grayscale_prob) == ((0.4, 1.0), 0.8, 0.2)


def test_command_line_overrides_reach_the_resolved_config():
    proc = subprocess.run(
        [sys.executable, "launch.py", "--config", "configs/ablation.py:row=mkcl", "--config.batch_size=256",
         "--config.loss.slra_lambda=0.5", "--config.model.name=tiny", "--print_config"],
        capture_output=True, text=True, cwd=REPO, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    cfg = json.loads(proc.stdout)
    assert cfg["batch_size"] == 256 and cfg["loss"]["slra_lambda"] == 0.5 and cfg["model"]["name"] == "tiny"
    assert cfg["loss"]["positives"] == "all" and cfg["loss"]["slra"] is False and cfg["row"] == "mkcl"
    bad = subprocess.run([sys.executable, "launch.py", "--config", "configs/demo.py", "--config.no_such_field=1",
                          "--print_config"], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert bad.returncode != 0 and "no_such_field" in bad.stderr


def test_sweep_runs_rows_with_identical_data_and_writes_one_table(synthderm_small, tmp_path):
    from configs.ablation import get_config
    from make_jax.train.run import run_sweep

    root, records = synthderm_small
    config = get_config("rows=clip,siglip,make")
    config.prepare.synthderm.out = str(root)
    config.prepare.synthderm.records = str(root / "records")
    config.prepare.synthderm.shorter_side = 36
    config.eval.csv = str(root / "zeroshot" / "test.csv")
    config.eval.classnames = str(root / "zeroshot" / "classnames.json")
    config.model.name = "tiny"
    config.data.image_size = 32
    config.data.context_length = 16
    config.data.prefetch = 0
    config.batch_size = 8
    config.total_steps = 3
    config.checkpoint_every = 3
    config.progress = False
    config.tensorboard = False
    config.eval.batch_size = 16
    table = run_sweep(config, tmp_path / "sweep")
    assert [r["row"] for r in table] == ["clip", "siglip", "make"]
    # clip and siglip have no slra term; make does.
    assert table[0]["slra"] == 0.0 and table[1]["slra"] == 0.0 and table[2]["slra"] > 0
    assert table[1]["loss"] != table[0]["loss"]
    for r in table:
        assert 0.0 <= r["zero_shot_top1"] <= 1.0 and 0.0 <= r["concept_auroc"] <= 1.0
        assert 0.0 <= r["retrieval_r10_i2t"] <= 1.0
    with open(tmp_path / "sweep" / "sweep.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["row"] for r in rows] == ["clip", "siglip", "make"]
    assert (tmp_path / "sweep" / "sweep.md").read_text().startswith("| row |")
    # Identical data order and seeds: the two runs' resolved configs differ only in the loss switches and the
    # row name (same seed, same records, same pipeline settings).
    saved = {row: json.loads((tmp_path / "sweep" / row / "config.json").read_text()) for row in ("clip", "make")}
    diff = {k for k in saved["clip"] if saved["clip"][k] != saved["make"][k]}
    assert diff == {"loss", "row"}
    assert saved["clip"]["data"]["records"] == records and saved["clip"]["seed"] == saved["make"]["seed"]
    for row in ("clip", "make"):
        assert (tmp_path / "sweep" / row / "export" / "model_config.json").is_file()
