"""Parity with PyTorch: random CLIPs built in torch, converted with `make_jax.convert`, loaded with `make_jax.load`.

References (tests/torch_reference.py): transformers' own `CLIPModel` forward, and an independent torch
implementation of open_clip's forward run on open_clip-layout tensors that the test derives from the HF model by
itself (not with make_jax's HF mapping). Embeddings must agree to a relative error ‖a−b‖/‖b‖ ≤ 1e-5 (float32),
for both activations, at tiny sizes and at the full ViT-B/16 + 12×512 geometry.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import make_jax
import torch_reference as tr
from make_jax.convert import main as convert_main

TOL = 1e-5
ACTIVATIONS = ("quick_gelu", "gelu")

# Heads not derivable from widths (head width 32), MLP ratio 3 in the image tower.
TINY = dict(image_size=32, patch_size=8, v_width=128, v_layers=2, v_heads=4, v_mlp=384, t_width=64, t_layers=2,
            t_heads=2, t_mlp=256, embed_dim=32)
# Bare state dicts: heads are inferred as width // 64 (open_clip's rule), so head width 64 here.
TINY_SD = dict(image_size=32, patch_size=8, v_width=128, v_layers=2, v_heads=2, v_mlp=512, t_width=128, t_layers=3,
               t_heads=2, t_mlp=384, embed_dim=48)
FULL = dict(image_size=224, patch_size=16, v_width=768, v_layers=12, v_heads=12, v_mlp=3072, t_width=512,
            t_layers=12, t_heads=8, t_mlp=2048, embed_dim=512)

TEXTS = [
    "a dermoscopic photo of melanoma",
    "psoriasis: well-demarcated erythematous plaques with silvery scale on the extensor elbow",
    " ".join(["itchy red scaly patch on the flexural skin of a child with atopic dermatitis"] * 8),  # > 77 tokens
    "",
]


def images(n: int, size: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, size, size, 3)).astype(np.float32)


def compare(enc, imgs, texts, ref_image, ref_patches, ref_text, label):
    # One pass of the image tower for both outputs (encode_image / encode_patches are checked against it in
    # test_inference.py), so each model compiles two functions here.
    (got_i, got_p), got_t = enc.encode_image_and_patches(imgs), enc.encode_text(texts)
    errs = {"image": tr.rel_err(got_i, ref_image), "patches": tr.rel_err(got_p, ref_patches),
            "text": tr.rel_err(got_t, ref_text)}
    assert got_i.shape == ref_image.shape and got_p.shape == ref_patches.shape and got_t.shape == ref_text.shape
    assert max(errs.values()) <= TOL, f"{label}: {errs}"
    return errs


@pytest.fixture(scope="module", params=ACTIVATIONS)
def tiny_hf(request, tmp_path_factory):
    act = request.param
    root = tmp_path_factory.mktemp(f"tiny_{act}")
    model = tr.make_hf_clip(**TINY, activation=act, seed=1)
    model.save_pretrained(root / "hf")
    sd = tr.hf_to_open_clip_state_dict(model)
    cfg = tr.open_clip_model_cfg(**TINY)
    tr.write_open_clip_dir(root / "oc", sd, cfg, quick_gelu=act == "quick_gelu")
    return act, root, model, sd


def test_reference_forward_matches_transformers(tiny_hf):
    """The test's own open_clip-layout tensors + torch forward reproduce HF's CLIPModel (validates the reference)."""
    act, _, model, sd = tiny_hf
    imgs = images(3, TINY["image_size"])
    from make_jax.tokenizer import tokenize

    ids = tokenize(TEXTS)
    ref = tr.openclip_image(sd, imgs, TINY["v_heads"], act) + (tr.openclip_text(sd, ids, TINY["t_heads"], act),)
    hf = tr.hf_features(model, imgs, ids)
    for r, h in zip(ref, hf):
        assert tr.rel_err(h, r) <= TOL
    # ... and the reference is sensitive to the activation (so the parity tests below can tell them apart).
    other = "gelu" if act == "quick_gelu" else "quick_gelu"
    assert tr.rel_err(tr.openclip_text(sd, ids, TINY["t_heads"], other), ref[2]) > 1e-3


@pytest.mark.parametrize("fmt", ["hf", "oc"])
def test_tiny_parity(tiny_hf, fmt, tmp_path):
    act, root, model, sd = tiny_hf
    out = tmp_path / "jax"
    assert convert_main([str(root / fmt), str(out)]) == 0
    enc = make_jax.load(out, batch_size=2, text_batch_size=3)  # 3 images, 4 texts: partial last batches
    assert enc.config.activation == act
    imgs = images(3, TINY["image_size"], seed=2)
    ids = enc.tokenize(TEXTS)
    assert ids[2, 76] == 49407 and ids[3, :2].tolist() == [49406, 49407]  # truncated long text; empty text
    ref_i, ref_p = tr.openclip_image(sd, imgs, TINY["v_heads"], act)
    ref_t = tr.openclip_text(sd, ids, TINY["t_heads"], act)
    compare(enc, imgs, TEXTS, ref_i, ref_p, ref_t, f"{fmt}/{act} vs open_clip reference")
    hf_i, hf_p, hf_t = tr.hf_features(model, imgs, ids)
    compare(enc, imgs, TEXTS, hf_i, hf_p, hf_t, f"{fmt}/{act} vs transformers")
    assert enc.logit_scale == float(model.logit_scale.detach())


def _bare_sd(seed=3):
    model = tr.make_hf_clip(**TINY_SD, activation="quick_gelu", seed=seed)
    return tr.hf_to_open_clip_state_dict(model)


@pytest.mark.parametrize("fmt", ["bin", "wrapped_pt", "torchscript_fp16", "bin_gelu"])
def test_tiny_parity_bare_state_dict(fmt, tmp_path):
    """Bare state dicts: config inferred from shapes; pickles via torch.load(weights_only=True); open_clip training
    checkpoints ({'state_dict': ...} with 'module.' prefixes); OpenAI-style TorchScript archives in float16."""
    sd = _bare_sd()
    act = "gelu" if fmt == "bin_gelu" else "quick_gelu"
    extra = []
    if fmt in ("bin", "bin_gelu"):
        src = tmp_path / "model.bin"
        torch.save(sd, src)
        if fmt == "bin_gelu":
            extra = ["--activation", "gelu"]
    elif fmt == "wrapped_pt":
        src = tmp_path / "epoch_3.pt"
        torch.save({"epoch": 3, "name": "run", "state_dict": {f"module.{k}": v for k, v in sd.items()},
                    "optimizer": {"state": {}, "param_groups": [{"lr": 1e-4}]}}, src)
    else:
        src = tmp_path / "ViT-tiny.pt"
        sd = {k: v.half() for k, v in sd.items()}
        tr.save_torchscript_state_dict(src, {**sd, "input_resolution": torch.tensor(32),
                                             "context_length": torch.tensor(77), "vocab_size": torch.tensor(49408)})
        sd = {k: v.float() for k, v in sd.items()}  # the reference uses the same (fp16-rounded) weights
        extra = ["--allow-torchscript"]  # a TorchScript file runs code: refused unless named and allowed
    out = tmp_path / "jax"
    assert convert_main([str(src), str(out), *extra]) == 0
    enc = make_jax.load(out, batch_size=4)
    cfg = enc.config
    assert (cfg.vision.width, cfg.vision.heads, cfg.vision.layers, cfg.vision.mlp_width, cfg.vision.image_size) == \
        (128, 2, 2, 512, 32)
    assert (cfg.text.width, cfg.text.heads, cfg.text.layers, cfg.text.mlp_width, cfg.embed_dim) == (128, 2, 3, 384, 48)
    assert cfg.activation == act
    imgs = images(2, 32, seed=4)
    ids = enc.tokenize(TEXTS)
    ref_i, ref_p = tr.openclip_image(sd, imgs, 2, act)
    ref_t = tr.openclip_text(sd, ids, 2, act)
    compare(enc, imgs, TEXTS, ref_i, ref_p, ref_t, fmt)


def test_full_size_parity_both_activations(tmp_path):
    """ViT-B/16 + 12×512 text tower: an HF dir (QuickGELU) and an open_clip dir (exact GELU) of the same random
    weights, each converted and compared with the independent torch forward of open_clip."""
    model = tr.make_hf_clip(**FULL, activation="quick_gelu", seed=5, fast_init=True)
    model.save_pretrained(tmp_path / "hf")
    sd = tr.hf_to_open_clip_state_dict(model)
    del model
    tr.write_open_clip_dir(tmp_path / "oc", sd, tr.open_clip_model_cfg(**FULL), quick_gelu=False)
    imgs = images(2, 224, seed=6)
    texts = TEXTS[:3]
    measured = {}
    for src, act in (("hf", "quick_gelu"), ("oc", "gelu")):
        out = tmp_path / f"jax_{src}"
        assert convert_main([str(tmp_path / src), str(out)]) == 0
        enc = make_jax.load(out, batch_size=2, text_batch_size=3)
        assert enc.config.activation == act and enc.config.vision.num_patches == 196
        ids = enc.tokenize(texts)
        ref_i, ref_p = tr.openclip_image(sd, imgs, FULL["v_heads"], act, dtype=torch.float32)
        ref_t = tr.openclip_text(sd, ids, FULL["t_heads"], act, dtype=torch.float32)
        measured[act] = compare(enc, imgs, texts, ref_i, ref_p, ref_t, f"full size {src}/{act}")
        del enc
    print("full-size relative errors:", json.dumps(measured))
