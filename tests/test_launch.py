"""Configs, command-line overrides, FLOP counts and the ablation sweep."""

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import synthderm_small_prepare
from make_jax.losses import LossConfig
from make_jax.models import get_model_config
from make_jax.train.flops import image_forward_flops, text_forward_flops, train_flops_per_image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def test_flops_match_the_spec():
    # docs/training.md: ViT-B/16 image tower 35.13 GFLOP, text tower 5.96 GFLOP per 77-token text, 302 GFLOP per
    # training image with 11 texts.
    cfg = get_model_config("ViT-B-16")
    assert round(image_forward_flops(cfg) / 1e9, 2) == 35.13
    assert round(text_forward_flops(cfg) / 1e9, 2) == 5.96
    assert round(train_flops_per_image(cfg, 11) / 1e9) == 302


# The paper's Table 3 (docs/objectives.md §3), written out here rather than read from the code:
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


def test_overrides_without_config_take_the_demo_from_any_directory(tmp_path):
    # No --config: the demo config, found by name, not as configs/demo.py under the working directory.
    proc = subprocess.run([sys.executable, str(REPO / "launch.py"), "--config.batch_size=3",
                           "--config.loss.slra=False", "--print_config"],
                          capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    cfg = json.loads(proc.stdout)
    assert cfg["batch_size"] == 3 and cfg["loss"]["slra"] is False and cfg["model"]["name"] == "tiny"


def test_sweep_orchestration_with_training_stubbed(tmp_path):
    # The sweep's own job — rows in order, each row's switches on an otherwise identical copy of the config, one
    # work directory per row, one table — checked with training replaced by a stub (the real row is below).
    from configs.ablation import get_config
    from make_jax.train.sweep import run_sweep

    config = get_config("rows=clip,clip_dagger,make")
    before = config.to_dict()
    calls = []

    def fake_run(cfg, workdir):
        calls.append((cfg, Path(workdir)))
        k = len(calls)
        return {"metrics": {"loss": 1.0 * k, "mkcl": 0.5 * k, "slra": 0.25 * k},
                "eval": [{"name": "zs", "task": "zero_shot", "top1": 0.1 * k},
                         {"name": "sc", "task": "concepts", "mean_auroc": 0.2 * k},
                         {"name": "rt", "task": "retrieval", "i2t_R@10": 0.3 * k, "t2i_R@10": 0.4 * k}]}

    table = run_sweep(config, tmp_path / "sweep", fake_run)
    rows = ["clip", "clip_dagger", "make"]
    assert [c.row for c, _ in calls] == rows
    assert [w for _, w in calls] == [tmp_path / "sweep" / r for r in rows]
    for cfg, _ in calls:
        slot0, trained, slra, dkw = PAPER_TABLE3[cfg.row]
        assert (cfg.loss.slra, cfg.loss.dkw, cfg.data.slot0) == (slra, dkw, slot0), cfg.row
    # Same data order and seeds: the rows' configs differ only in the loss switches, the row name and, for the
    # dagger row, the slot-0 text; and the caller's config is left as it was.
    flat = [c.to_dict() for c, _ in calls]
    assert {k for k in flat[0] if flat[0][k] != flat[2][k]} == {"loss", "row"}
    assert {k for k in flat[0]["data"] if flat[0]["data"][k] != flat[1]["data"][k]} == {"slot0"}
    assert config.to_dict() == before
    assert table == [{"row": r, "loss": 1.0 * k, "mkcl": 0.5 * k, "slra": 0.25 * k, "zero_shot_top1": 0.1 * k,
                      "concept_auroc": 0.2 * k, "retrieval_r10_i2t": 0.3 * k, "retrieval_r10_t2i": 0.4 * k}
                     for k, r in enumerate(rows, start=1)]
    with open(tmp_path / "sweep" / "sweep.csv") as f:
        written = list(csv.DictReader(f))
    assert [(r["row"], float(r["loss"]), float(r["retrieval_r10_t2i"])) for r in written] == \
        [(r, 1.0 * k, 0.4 * k) for k, r in enumerate(rows, start=1)]
    md = (tmp_path / "sweep" / "sweep.md").read_text().splitlines()
    assert md[0].startswith("| row | loss |") and md[4].startswith("| make | 3.0000 | 1.5000 | 0.7500 |")
    config.sweep_rows = ""
    with pytest.raises(ValueError, match="sweep_rows is empty"):
        run_sweep(config, tmp_path / "none", fake_run)


def test_sweep_trains_and_evaluates_one_real_row(synthderm_small, tmp_path):
    # One row, one step, through launch's real run (training, export, final evaluation): the table holds what
    # the run measured.
    from configs.ablation import get_config
    from configs.eval_synthderm import synthderm_evals
    from make_jax.train.run import run_sweep

    root, records = synthderm_small
    config = get_config("rows=make")
    config.prepare.synthderm.update(synthderm_small_prepare(root))
    config.evals = synthderm_evals(str(root))
    config.model.name = "tiny"
    config.data.image_size = 32
    config.data.context_length = 16
    config.data.prefetch = 0
    config.batch_size = 8
    config.total_steps = 1
    config.checkpoint_every = 1
    config.progress = False
    config.tensorboard = False
    config.eval_batch_size = 16
    (row,) = run_sweep(config, tmp_path / "sweep")
    final = {r["task"]: r for r in json.loads((tmp_path / "sweep" / "make" / "eval.json").read_text())["results"]}
    assert row["row"] == "make" and row["loss"] > 0 and row["slra"] > 0  # the make row has an slra term
    assert row["zero_shot_top1"] == final["zero_shot"]["metrics"]["top1"]
    assert row["concept_auroc"] == final["concepts"]["metrics"]["mean_auroc"]
    assert row["retrieval_r10_i2t"] == final["retrieval"]["metrics"]["image_to_text"]["R@10"]
    assert row["retrieval_r10_t2i"] == final["retrieval"]["metrics"]["text_to_image"]["R@10"]
    saved = json.loads((tmp_path / "sweep" / "make" / "config.json").read_text())
    assert saved["data"]["records"] == records and saved["row"] == "make"
    assert (tmp_path / "sweep" / "make" / "export" / "model_config.json").is_file()
