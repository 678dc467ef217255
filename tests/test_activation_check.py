"""The activation check of docs/checkpoints.md on a tiny converted checkpoint: the command prints the notebook's
PAD probabilities under both activations, each equal to an independent torch float64 forward."""

import json

import numpy as np
import pytest
from PIL import Image

from torch_reference import (open_clip_model_cfg, openclip_image, openclip_text, random_open_clip_state_dict,
                             write_open_clip_dir)

GEOM = dict(image_size=32, patch_size=8, v_width=64, v_layers=2, v_heads=1, v_mlp=128, t_width=64, t_layers=2,
            t_heads=1, t_mlp=128, embed_dim=16)


def test_activation_check_prints_both_activations(tmp_path, capsys):
    from make_jax.checkpoint.activation_check import main
    from make_jax.convert import convert
    from make_jax.preprocess import preprocess
    from make_jax.tokenizer import tokenize

    sd = random_open_clip_state_dict(**GEOM, seed=4)
    model_cfg = open_clip_model_cfg(**{k: v for k, v in GEOM.items()})
    # MAKE-like: the repository config says nothing about QuickGELU (open_clip's plain ViT-B-16 config)
    src = write_open_clip_dir(tmp_path / "src", sd, model_cfg, quick_gelu=False)
    convert(src, tmp_path / "ckpt")
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (45, 60, 3), dtype=np.uint8)).save(tmp_path / "PAT_8_15_820.png")

    classes = ["nevus", "basal cell carcinoma", "actinic keratosis", "seborrheic keratosis",
               "squamous cell carcinoma", "melanoma"]  # the notebook's PAD_CLASSNAMES, written out here
    pixels = preprocess(Image.open(tmp_path / "PAT_8_15_820.png"), 32)[None]
    ids = tokenize([f"This is a skin image of {c}" for c in classes])
    wants = {}  # the torch float64 reference under each activation (computed once: it does not depend on MODEL)
    for act in ("quick_gelu", "gelu"):
        img, _ = openclip_image(sd, pixels, heads=1, activation=act)
        txt = openclip_text(sd, ids, heads=1, activation=act)
        logits = 100.0 * txt @ img[0]
        wants[act] = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
    for model in (str(src), str(tmp_path / "ckpt")):  # a source directory and a converted make_jax checkpoint
        out = tmp_path / "result.json"
        assert main([model, str(tmp_path / "PAT_8_15_820.png"), "--json", str(out)]) == 0
        printed = capsys.readouterr().out
        assert "quick_gelu" in printed and "gelu" in printed and "basal cell carcinoma" in printed
        r = json.loads(out.read_text())
        for act in ("quick_gelu", "gelu"):
            want = wants[act]
            np.testing.assert_allclose(r["probs"][act], want, atol=2e-5)
            notebook = np.array([2.1105e-05, 6.4341e-01, 6.7238e-03, 8.3324e-05, 3.3436e-01, 1.5401e-02])
            assert r["max_abs_diff"][act] == pytest.approx(np.abs(want - notebook).max(), abs=2e-5)
        assert np.abs(np.subtract(r["probs"]["quick_gelu"], r["probs"]["gelu"])).max() > 1e-4


def test_activation_check_fails_in_one_line(tmp_path, capsys):
    from make_jax.checkpoint.activation_check import main

    assert main([str(tmp_path / "nothing"), str(tmp_path / "nothing.png")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "nothing.png" in err[0]
    Image.new("RGB", (8, 8)).save(tmp_path / "x.png")
    assert main([str(tmp_path / "nothing"), str(tmp_path / "x.png")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "nothing" in err[0]
