"""Zero-shot evaluation during training, and re-pointing an Encoder at new parameters."""

import json

import numpy as np
import pytest

from conftest import tiny_train_config
from make_jax.models import create_model, get_model_config


def test_encoder_set_params_equals_a_fresh_encoder():
    from make_jax.inference import Encoder
    from make_jax.train.step import ModelFunctions

    cfg = get_model_config("tiny")
    a, b = create_model(cfg, seed=1), create_model(cfg, seed=2)
    images = np.random.default_rng(0).normal(size=(5, 32, 32, 3)).astype(np.float32)
    enc = Encoder(a, batch_size=4)
    before = enc.encode_image(images)
    enc.set_params(ModelFunctions(b).params(b))
    np.testing.assert_allclose(enc.encode_image(images), Encoder(b, batch_size=4).encode_image(images), atol=1e-6)
    np.testing.assert_allclose(enc.encode_text(["a red plaque"]), Encoder(b, batch_size=4).encode_text(["a red plaque"]),
                               atol=1e-6)
    assert np.abs(before - enc.encode_image(images)).max() > 1e-3


def test_periodic_zero_shot_is_logged_and_matches_the_export(synthderm_small, tmp_path, monkeypatch):
    import jax

    import make_jax
    from make_jax.evaluate import zero_shot
    from make_jax.train import loop
    from make_jax.train.loop import train

    # Pretend the CPU has a known peak (1 TFLOP/s) so that the loop logs MFU: checks its wiring below.
    monkeypatch.setattr(loop, "peak_flops", lambda kind: 1e12)
    root, records = synthderm_small
    c = tiny_train_config(records, total_steps=4, checkpoint_every=4)
    csv, classes = str(root / "zeroshot" / "test.csv"), str(root / "zeroshot" / "classnames.json")
    c.evals = {"zs": dict(task="zero_shot", every=2, csv=csv, classes=classes)}
    result = train(c, tmp_path / "run")
    lines = [json.loads(l) for l in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    evals = [l for l in lines if l["split"] == "eval"]
    assert [l["step"] for l in evals] == [2, 4]
    # The last periodic evaluation saw the final parameters: it equals an independent run on the export.
    ref = zero_shot.run(make_jax.load(result["export"]), csv=csv, classes=classes, progress=False)
    assert evals[-1]["zs/top1"] == ref["metrics"]["top1"]
    assert 0.0 <= evals[0]["zs/top1"] <= 1.0 and 0.0 <= evals[0]["zs/auroc"] <= 1.0
    # MFU = images/s x FLOPs per training image / (peak x devices). The tiny preset (tests/test_model.py) at the
    # demo's 32 px and 16 tokens, all 11 text slots encoded, counted by hand as in tests/test_metrics.py:
    # image: 32/8 = 4x4 = 16 patches + CLS = 17 tokens, width 64, MLP 256, 2 layers: per layer
    #   12·64²·17 + 2·17²·64 = 835,584 + 36,992 = 872,576 MACs; x 2 = 1,745,152; patch conv 16·(3·8·8)·64 =
    #   196,608 MACs -> 1,941,760 MACs = 3,883,520 FLOPs
    # text: 16 tokens, width 64, MLP 256, 2 layers: per layer 12·64²·16 + 2·16²·64 = 786,432 + 32,768 = 819,200
    #   MACs; x 2 = 1,638,400 MACs = 3,276,800 FLOPs
    # training: 3·(3,883,520 + 11·3,276,800) = 3·39,928,320 = 119,784,960 FLOPs per image
    train_rows = [l for l in lines if l["split"] == "train"]
    assert train_rows
    for row in train_rows:
        assert row["mfu"] == pytest.approx(row["images_per_s"] * 119_784_960 / (1e12 * jax.device_count()),
                                           rel=1e-9)


def test_microbatched_training_matches_one_pass(synthderm_small, tmp_path):
    from make_jax.train.loop import train

    _, records = synthderm_small
    losses = {}
    for mb in (1, 2):
        c = tiny_train_config(records, total_steps=2, log_every=1, microbatches=mb)
        train(c, tmp_path / f"mb{mb}")
        lines = [json.loads(l) for l in (tmp_path / f"mb{mb}" / "metrics.jsonl").read_text().splitlines()]
        losses[mb] = [l["loss"] for l in lines if l["split"] == "train"]
    assert len(losses[1]) == 2
    np.testing.assert_allclose(losses[2], losses[1], rtol=2e-5)


def test_packed_training_matches_dense(synthderm_small, tmp_path):
    from make_jax.train.loop import train

    _, records = synthderm_small
    losses = {}
    for packed in (False, True):
        c = tiny_train_config(records, total_steps=2, log_every=1)
        c.packing.enabled = packed
        c.packing.sample_batches = 2
        train(c, tmp_path / f"packed{packed}")
        lines = [json.loads(l) for l in (tmp_path / f"packed{packed}" / "metrics.jsonl").read_text().splitlines()]
        losses[packed] = [l["loss"] for l in lines if l["split"] == "train"]
        if packed:
            assert all(l["packing_dropped_texts"] == 0 for l in lines if l["split"] == "train")
    assert len(losses[False]) == 2
    np.testing.assert_allclose(losses[True], losses[False], rtol=2e-5)


def test_init_from_a_converted_checkpoint(synthderm_small, tmp_path):
    import pytest

    from make_jax.checkpoint import load_params, save_checkpoint
    from make_jax.train.loop import train

    _, records = synthderm_small
    source = create_model(get_model_config("tiny"), seed=11)
    save_checkpoint(tmp_path / "init", source, get_model_config("tiny"))
    c = tiny_train_config(records, total_steps=1, init_from=str(tmp_path / "init"))
    c.optim.lr = 0.0  # no update: the export must be the initial checkpoint, not the seed-0 initialisation
    result = train(c, tmp_path / "run")
    got = load_params(result["export"], as_numpy=True)
    want = load_params(tmp_path / "init", as_numpy=True)
    np.testing.assert_array_equal(got["visual"]["proj"], want["visual"]["proj"])
    np.testing.assert_array_equal(got["text"]["token_embedding"], want["text"]["token_embedding"])
    other = create_model(get_model_config("small"), seed=0)
    save_checkpoint(tmp_path / "small", other, get_model_config("small"))
    with pytest.raises(ValueError, match="geometry differs"):
        train(tiny_train_config(records, total_steps=1, init_from=str(tmp_path / "small")), tmp_path / "run2")
