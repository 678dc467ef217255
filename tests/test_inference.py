"""The inference API (`make_jax.load`) and the eval preprocessing (`make_jax.preprocess`)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import make_jax
from make_jax import preprocess as pp
from make_jax.checkpoint import CheckpointError

MEAN = np.array([0.48145466, 0.4578275, 0.40821073])
STD = np.array([0.26862954, 0.26130258, 0.27577711])


def random_image(width, height, mode="RGB", seed=0) -> Image.Image:
    channels = {"RGB": 3, "RGBA": 4, "L": 1}[mode]
    a = np.random.default_rng(seed).integers(0, 256, (height, width, channels), dtype=np.uint8)
    return Image.fromarray(a[..., 0] if channels == 1 else a, mode)


# ---- preprocessing: geometry written out by hand -------------------------------------------------------------

# (width, height, size) → resized (w, h) with the long side truncated (int), crop box with Python's round
# (half to even) of the centred offset.
GEOMETRY = [
    ((301, 163, 224), (413, 224), (94, 0, 318, 224)),   # 224*301/163 = 413.64 → 413; (413-224)/2 = 94.5 → 94
    ((302, 163, 224), (415, 224), (96, 0, 320, 224)),   # 415.02 → 415; 95.5 → 96
    ((163, 301, 224), (224, 413), (0, 94, 224, 318)),   # portrait
    ((225, 227, 224), (224, 225), (0, 0, 224, 224)),    # 225.99 → 225; 0.5 → 0
    ((224, 227, 224), (224, 227), (0, 2, 224, 226)),    # no resize; 1.5 → 2
    ((97, 61, 32), (50, 32), (9, 0, 41, 32)),           # 50.89 → 50
    ((255, 131, 64), (124, 64), (30, 0, 94, 64)),       # 124.58 → 124
    ((21, 17, 32), (39, 32), (4, 0, 36, 32)),           # upsampling: 32*21/17 = 39.53 → 39; 3.5 → 4
]


@pytest.mark.parametrize("src, resized, box", GEOMETRY)
def test_resize_and_crop_geometry(src, resized, box):
    w, h, size = src
    assert pp.resized_size(w, h, size) == resized
    assert pp.center_crop_box(*resized, size, size) == box


@pytest.mark.parametrize("src, resized, box", GEOMETRY)
def test_preprocess_equals_explicit_pil_pipeline(src, resized, box):
    w, h, size = src
    img = random_image(w, h, seed=w * h)
    resized_img = img if resized == (w, h) else img.resize(resized, Image.Resampling.BICUBIC)
    crop = np.asarray(resized_img.crop(box), dtype=np.float32) / np.float32(255)
    expected = (crop - MEAN.astype(np.float32)) / STD.astype(np.float32)
    got = pp.preprocess(img, size)
    assert got.shape == (size, size, 3) and got.dtype == np.float32
    np.testing.assert_array_equal(got, expected)


def test_normalisation_values():
    img = Image.new("RGB", (40, 30), (255, 0, 128))
    got = pp.preprocess(img, 16)
    expected = (np.array([255, 0, 128]) / 255.0 - MEAN) / STD  # float64
    np.testing.assert_allclose(got, np.broadcast_to(expected, got.shape), rtol=0, atol=1e-6)
    assert got[0, 0, 0] == pytest.approx(1.9303, abs=1e-4)  # (1 - 0.48145466) / 0.26862954


def test_normalisation_is_torchvision_arithmetic_bit_for_bit():
    """Every uint8 value in every channel through torchvision's float32 steps, in torch: ToTensor
    (`.float().div(255)`), then Normalize (`.sub(mean).div(std)`). The same constants in the other order,
    (x - 255·mean) / (255·std), differ from it in the last bit for 70 % of the values (up to 2.4e-7)."""
    import jax
    import torch

    from make_jax.train.forward import normalize_images

    x = np.repeat(np.arange(256, dtype=np.uint8)[:, None], 3, axis=1)[None, None]  # (1, 1, 256, 3)
    ref = (torch.from_numpy(x).to(torch.float32).div(255).sub(torch.tensor(MEAN, dtype=torch.float32))
           .div(torch.tensor(STD, dtype=torch.float32)).numpy())
    np.testing.assert_array_equal(pp.normalize_uint8(x), ref)  # the host: eval transform and float32 batches
    # On device XLA rewrites x / c as x · (1 / c), so the training forward's normalisation (the same function)
    # agrees to a couple of float32 ulps, not bit for bit.
    np.testing.assert_allclose(np.asarray(jax.jit(normalize_images)(x)), ref, rtol=0, atol=1e-6)


def test_rgb_conversion_happens_after_the_crop():
    """open_clip resizes the image in its own mode and converts to RGB last; for RGBA (PIL premultiplies alpha
    when resampling) the order changes the pixels."""
    img = random_image(61, 47, "RGBA", seed=3)
    size = 24
    resized, box = (31, 24), (4, 0, 28, 24)  # 24*61/47 = 31.15 → 31; (31-24)/2 = 3.5 → 4
    assert pp.resized_size(61, 47, size) == resized and pp.center_crop_box(*resized, size, size) == box
    late = img.resize(resized, Image.Resampling.BICUBIC).crop(box).convert("RGB")
    early = img.convert("RGB").resize(resized, Image.Resampling.BICUBIC).crop(box)
    assert not np.array_equal(np.asarray(late), np.asarray(early))  # the test can tell the two orders apart
    expected = (np.asarray(late, np.float32) / np.float32(255) - MEAN.astype(np.float32)) / STD.astype(np.float32)
    np.testing.assert_array_equal(pp.preprocess(img, size), expected)


def test_grayscale_becomes_three_equal_channels():
    x = pp.preprocess(random_image(50, 40, "L", seed=5), 32)
    raw = x * STD.astype(np.float32) + MEAN.astype(np.float32)
    np.testing.assert_allclose(raw[..., 0], raw[..., 1], atol=1e-6)
    np.testing.assert_allclose(raw[..., 0], raw[..., 2], atol=1e-6)


# ---- the loaded model -----------------------------------------------------------------------------------------

GEOM = dict(image_size=32, patch_size=8, v_width=128, v_layers=2, v_heads=4, v_mlp=512, t_width=64, t_layers=2,
            t_heads=2, t_mlp=256, embed_dim=32)
TEXTS = ["melanoma", "a photo of basal cell carcinoma", "eczema on the hands of an adult", "", "psoriasis",
         "a close-up photo of a pigmented lesion with irregular borders " * 6, "acne", "tinea corporis",
         "urticaria", "vitiligo"]


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    import torch_reference as tr
    from make_jax.convert import convert

    root = tmp_path_factory.mktemp("inference")
    sd = tr.random_open_clip_state_dict(**GEOM, seed=21)
    tr.write_open_clip_dir(root / "oc", sd, tr.open_clip_model_cfg(**GEOM), quick_gelu=True)
    return convert(root / "oc", root / "ckpt"), sd


@pytest.fixture(scope="module")
def enc(ckpt):
    return make_jax.load(ckpt[0], batch_size=3, text_batch_size=4)


@pytest.fixture(scope="module")
def pil_images():
    return [random_image(40 + 7 * i, 33 + 3 * i, seed=i) for i in range(7)]


def test_load_exposes_model_config_and_logit_scale(enc, ckpt):
    assert enc.config.vision.image_size == 32 and enc.config.embed_dim == 32
    assert enc.model.config == enc.config
    assert enc.logit_scale == float(ckpt[1]["logit_scale"])  # 2.5, stored as float32


def test_encode_text_strings_equal_encode_of_token_ids(enc):
    from make_jax.tokenizer import tokenize

    ids = tokenize(TEXTS)
    np.testing.assert_array_equal(enc.tokenize(TEXTS), ids)
    by_text, by_ids = enc.encode_text(TEXTS), enc.encode_text(ids)
    np.testing.assert_array_equal(by_text, by_ids)
    assert by_text.shape == (len(TEXTS), 32) and by_text.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(by_text, axis=-1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(enc.encode_text(TEXTS[1]), by_text[1:2])  # a single str
    short = ids[:, :24]  # trailing padding cut off (long text truncated: different ids, skip it)
    keep = [i for i in range(len(TEXTS)) if ids[i, 24:].max() == 0]
    np.testing.assert_array_equal(enc.encode_text(short[keep]), by_text[keep])
    # and the embeddings are those of the model itself
    direct = np.asarray(enc.model.encode_text(ids))
    np.testing.assert_allclose(by_text, direct, rtol=0, atol=1e-6)


def test_batching_is_invisible_and_compiles_once(ckpt, enc, pil_images):
    x = np.stack([enc.preprocess(im) for im in pil_images])  # 7 images, batch size 3
    big = make_jax.load(ckpt[0], batch_size=8, text_batch_size=16)  # one batch holds everything
    for got, ref in [(enc.encode_image(x), big.encode_image(x)), (enc.encode_patches(x), big.encode_patches(x)),
                     (enc.encode_text(TEXTS), big.encode_text(TEXTS))]:
        np.testing.assert_allclose(got, ref, rtol=0, atol=2e-6)
    for n in (1, 2, 3, 4, 6):  # arbitrary sizes reuse the one compiled function
        np.testing.assert_allclose(enc.encode_image(x[:n]), big.encode_image(x)[:n], rtol=0, atol=2e-6)
        np.testing.assert_allclose(enc.encode_text(TEXTS[:n]), big.encode_text(TEXTS)[:n], rtol=0, atol=2e-6)
    assert enc.trace_counts["image"] == 1 and enc.trace_counts["text"] == 1 and enc.trace_counts["patches"] == 1


def test_image_inputs_and_outputs(enc, pil_images):
    x = np.stack([enc.preprocess(im) for im in pil_images])
    emb = enc.encode_image(x)
    np.testing.assert_array_equal(enc.encode_image(pil_images), emb)  # PIL images are preprocessed
    np.testing.assert_array_equal(enc.encode_image(pil_images[2]), emb[2:3])
    pooled, patches = enc.encode_image_and_patches(x)
    np.testing.assert_allclose(pooled, emb, rtol=0, atol=1e-6)
    np.testing.assert_allclose(patches, enc.encode_patches(x), rtol=0, atol=1e-6)
    assert patches.shape == (7, 16, 32)
    np.testing.assert_allclose(np.linalg.norm(patches, axis=-1), 1.0, atol=1e-5)
    direct = enc.model.encode_image_and_patches(x)
    np.testing.assert_allclose(pooled, np.asarray(direct.embedding), rtol=0, atol=1e-6)
    np.testing.assert_allclose(patches, np.asarray(direct.patches), rtol=0, atol=1e-6)
    assert enc.encode_image([]).shape == (0, 32) and enc.encode_text([]).shape == (0, 32)
    with pytest.raises(ValueError, match="NHWC"):
        enc.encode_image(x.transpose(0, 3, 1, 2))


def test_bfloat16_compute(ckpt, enc, pil_images):
    low = make_jax.load(ckpt[0], dtype="bfloat16", batch_size=8, text_batch_size=16)
    assert low.config.dtype == "bfloat16" and enc.config.dtype == "float32"
    x = np.stack([enc.preprocess(im) for im in pil_images])
    for a, b in [(low.encode_image(x), enc.encode_image(x)), (low.encode_text(TEXTS), enc.encode_text(TEXTS))]:
        assert a.dtype == np.float32
        assert np.linalg.norm(a - b) / np.linalg.norm(b) < 5e-2


def test_load_rejects_other_directories(tmp_path):
    with pytest.raises(CheckpointError, match="not a make_jax checkpoint"):
        make_jax.load(tmp_path)


def test_import_make_jax_is_light():
    code = ("import sys, make_jax; assert 'jax' not in sys.modules and 'torch' not in sys.modules; "
            "f = make_jax.load; assert f.__module__ == 'make_jax.inference'; print('ok')")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       cwd=Path(__file__).resolve().parents[1])
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr
