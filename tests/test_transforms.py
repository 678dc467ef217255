"""Train/eval image transforms (make_jax.data.transforms) checked against their definitions (docs/data.md, torchvision).

Expected values are derived in the tests from the definitions (the ±0.5 px rounding of the crop size, binomial
bounds on the coin flips, colour ops written out with NumPy/colorsys, the eval geometry written out by hand), not
copied from the code's output.
"""

import colorsys
import math

import numpy as np
import pytest
from PIL import Image

from make_jax.data import transforms as T
from make_jax import preprocess as pp
from make_jax.preprocess import CLIP_MEAN, CLIP_STD


def smooth_image(w, h, seed=0):
    """A smooth colourful test image (gradients + a few blobs), deterministic."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    img = np.stack(
        [128 + 100 * np.sin(xx / (7 + 5 * rng.random()) + c) * np.cos(yy / (9 + 5 * rng.random())) for c in range(3)],
        -1,
    )
    img += rng.normal(0, 6, img.shape)
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))


def binomial_ok(k, n, p, z=5.0):
    return abs(k / n - p) <= z * math.sqrt(p * (1 - p) / n)


# --- RandomResizedCrop --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("size", [(341, 256), (256, 256), (200, 311)])
def test_crop_boxes_within_area_and_ratio_ranges(size):
    W, H = size
    A = W * H
    rng = np.random.default_rng(1)
    boxes = [T.sample_crop_box(rng, W, H) for _ in range(3000)]
    sampled = [b for b in boxes if not b.fallback]
    assert len(sampled) > 2900  # with these sizes the 10 tries practically never all fail
    fr, ar = [], []
    for b in sampled:
        assert 0 <= b.top and b.top + b.height <= H and 0 <= b.left and b.left + b.width <= W
        assert 0 <= b.attempt < 10
        # w = round(sqrt(A s r)), h = round(sqrt(A s / r)) with s in [0.4, 1], r in [3/4, 4/3]: undo the ±0.5 rounding
        assert (b.width + 0.5) * (b.height + 0.5) >= 0.4 * A
        assert (b.width - 0.5) * (b.height - 0.5) <= 1.0 * A
        assert (b.width + 0.5) / (b.height - 0.5) >= 3 / 4
        assert (b.width - 0.5) / (b.height + 0.5) <= 4 / 3
        fr.append(b.width * b.height / A)
        ar.append(b.width / b.height)
    # the draws cover the ranges (not a degenerate sampler); the largest box with a ratio in [3/4, 4/3] bounds
    # the area fraction from above (0.857 for 200x311)
    max_fr = min(W, H * 4 / 3) * min(H, W * 4 / 3) / A
    assert min(fr) < 0.43 and max(fr) > 0.95 * max_fr
    assert min(ar) < 0.78 and max(ar) > 1.28
    # the position is uniform over the free range: both extremes are reached for small crops
    assert any(b.top == 0 for b in sampled) and any(b.top + b.height == H for b in sampled)
    assert any(b.left == 0 for b in sampled) and any(b.left + b.width == W for b in sampled)


def test_log_ratio_is_uniform_on_a_large_square():
    # On a big square image a try fails only when s·r > 1 or s/r > 1; for s <= 3/4 every try is accepted at once,
    # so among first-try boxes with area fraction < 0.7 the log aspect ratio is uniform on [log 3/4, log 4/3].
    rng = np.random.default_rng(2)
    logs = []
    for _ in range(6000):
        b = T.sample_crop_box(rng, 2000, 2000)
        if b.attempt == 0 and b.width * b.height / 4e6 < 0.7:
            logs.append(math.log(b.width / b.height))
    logs = np.asarray(logs)
    lo, hi = math.log(3 / 4), math.log(4 / 3)
    hist, _ = np.histogram(logs, bins=4, range=(lo, hi))
    n = len(logs)
    for k in hist:  # each quarter of the log range holds 1/4 of the draws
        assert binomial_ok(k, n, 0.25)


@pytest.mark.parametrize(
    "size,expected",
    [
        # wide 1000x50: ratio 20 > 4/3 -> h = 50, w = round(50 * 4/3) = 67, centred: left = (1000 - 67) // 2 = 466
        ((1000, 50), (0, 466, 50, 67)),
        # tall 50x1000: ratio 0.05 < 3/4 -> w = 50, h = round(50 / (3/4)) = 67, top = (1000 - 67) // 2 = 466
        ((50, 1000), (466, 0, 67, 50)),
    ],
)
def test_fallback_centre_crop(size, expected):
    W, H = size
    rng = np.random.default_rng(3)
    for _ in range(20):
        b = T.sample_crop_box(rng, W, H)
        # every try needs h (or w) >= sqrt(0.4 * A * 3/4) = 122 > 50, so all 10 fail
        assert b.fallback and b.attempt == -1
        assert (b.top, b.left, b.height, b.width) == expected


def test_fallback_whole_image_when_ratio_allowed():
    # scale (2, 3) can never fit, the image ratio 1.2 is within [3/4, 4/3]: the fallback is the whole image.
    b = T.sample_crop_box(np.random.default_rng(0), 120, 100, scale=(2.0, 3.0))
    assert b.fallback and (b.top, b.left, b.height, b.width) == (0, 0, 100, 120)


def test_resized_crop_is_crop_then_bicubic_resize():
    img = smooth_image(97, 71)
    box = T.CropBox(top=5, left=11, height=40, width=53, attempt=0)
    out = np.asarray(T.resized_crop(img, box, 32))
    ref = np.asarray(img.crop((11, 5, 64, 45)).resize((32, 32), Image.Resampling.BICUBIC))
    assert out.shape == (32, 32, 3)
    np.testing.assert_array_equal(out, ref)


# --- colour jitter --------------------------------------------------------------------------------------------------
def test_jitter_factors_in_ranges_and_order_random():
    rng = np.random.default_rng(4)
    draws = [T.sample_jitter(rng, 0.32, 0.32, 0.32, 0.08) for _ in range(4800)]
    for d in draws:
        assert sorted(d.order) == [0, 1, 2, 3]
        for f in (d.brightness, d.contrast, d.saturation):
            assert 0.68 <= f <= 1.32
        assert -0.08 <= d.hue <= 0.08
    b = np.array([d.brightness for d in draws])
    h = np.array([d.hue for d in draws])
    assert b.min() < 0.70 and b.max() > 1.30 and abs(b.mean() - 1.0) < 0.02  # uniform on [0.68, 1.32]
    assert h.min() < -0.078 and h.max() > 0.078 and abs(h.mean()) < 0.005
    orders = {}
    for d in draws:
        orders[d.order] = orders.get(d.order, 0) + 1
    assert len(orders) == 24  # every permutation of the 4 ops occurs
    for k in orders.values():
        assert binomial_ok(k, len(draws), 1 / 24)


def test_zero_strength_disables_an_op():
    d = T.sample_jitter(np.random.default_rng(0), 0.0, 0.5, 0.0, 0.0)
    assert d.brightness is None and d.saturation is None and d.hue is None
    assert 0.5 <= d.contrast <= 1.5


def luma(x):
    x = x.astype(np.float64)
    return (x[..., 0] * 299 + x[..., 1] * 587 + x[..., 2] * 114) / 1000


@pytest.mark.parametrize("f", [0.68, 0.9, 1.32])
def test_brightness_contrast_saturation_definitions(f):
    img = smooth_image(40, 30, seed=5)
    x = np.asarray(img).astype(np.float64)
    # brightness: blend with black
    out = np.asarray(T.adjust_brightness(img, f)).astype(np.float64)
    assert np.abs(out - np.clip(f * x, 0, 255)).max() <= 1
    # contrast: blend with the (rounded) mean grey level of the luma image
    m = int(np.asarray(img.convert("L")).astype(np.float64).mean() + 0.5)
    out = np.asarray(T.adjust_contrast(img, f)).astype(np.float64)
    assert np.abs(out - np.clip(m + f * (x - m), 0, 255)).max() <= 1
    # saturation: blend with the per-pixel luma
    g = np.round(luma(x))[..., None]
    out = np.asarray(T.adjust_saturation(img, f)).astype(np.float64)
    assert np.abs(out - np.clip(g + f * (x - g), 0, 255)).max() <= 1.5


@pytest.mark.parametrize("h", [0.08, -0.08, 0.03, 0.5])
def test_hue_shift_definition(h):
    img = smooth_image(30, 20, seed=6)
    x = np.asarray(img) / 255.0
    out = np.asarray(T.adjust_hue(img, h)).astype(np.float64)
    shift = math.trunc(h * 255) / 256  # torchvision adds int8(h * 255) to an 8-bit hue channel
    ref = np.zeros_like(x)
    for i in range(x.shape[0]):
        for j in range(x.shape[1]):
            hh, s, v = colorsys.rgb_to_hsv(*x[i, j])
            ref[i, j] = colorsys.hsv_to_rgb((hh + shift) % 1.0, s, v)
    diff = np.abs(out - np.round(ref * 255))
    assert diff.mean() < 1.0 and diff.max() <= 10  # 8-bit HSV quantisation only
    assert np.abs(out - np.asarray(img)).mean() > 30 * abs(h)  # and it did change the image


def test_grayscale_is_luma_on_three_equal_channels():
    img = smooth_image(33, 21, seed=7)
    out = np.asarray(T.to_grayscale3(img)).astype(np.float64)
    assert out.shape == (21, 33, 3)
    np.testing.assert_array_equal(out[..., 0], out[..., 1])
    np.testing.assert_array_equal(out[..., 0], out[..., 2])
    assert np.abs(out[..., 0] - luma(np.asarray(img))).max() <= 1


# --- the composed train transform ----------------------------------------------------------------------------------
def test_coin_probabilities():
    rng = np.random.default_rng(8)
    cfg = T.TrainTransformConfig()
    n = 5000
    params = [T.sample_train_params(rng, 256, 341, cfg) for _ in range(n)]
    assert binomial_ok(sum(p.grayscale for p in params), n, 0.2)
    assert binomial_ok(sum(p.jitter is not None for p in params), n, 0.8)
    # the two coins are independent: P(gray and jitter) = 0.16
    assert binomial_ok(sum(p.grayscale and p.jitter is not None for p in params), n, 0.16)


def test_train_transform_applies_its_params_in_order():
    img = smooth_image(341, 256, seed=9)
    cfg = T.TrainTransformConfig(size=48, grayscale_prob=0.5)
    seen_gray = seen_jitter = 0
    for seed in range(12):
        out, p = T.train_transform(img, np.random.default_rng(seed), cfg, return_params=True)
        assert out.shape == (48, 48, 3) and out.dtype == np.uint8
        # rebuild with PIL directly: crop -> bicubic resize -> the 4 ops in p.jitter.order -> grayscale
        b = p.box
        ref = img.crop((b.left, b.top, b.left + b.width, b.top + b.height)).resize((48, 48), Image.Resampling.BICUBIC)
        if p.jitter is not None:
            seen_jitter += 1
            ops = {
                0: lambda im: T.ImageEnhance.Brightness(im).enhance(p.jitter.brightness),
                1: lambda im: T.ImageEnhance.Contrast(im).enhance(p.jitter.contrast),
                2: lambda im: T.ImageEnhance.Color(im).enhance(p.jitter.saturation),
                3: lambda im: T.adjust_hue(im, p.jitter.hue),
            }
            for k in p.jitter.order:
                ref = ops[k](ref)
        if p.grayscale:
            seen_gray += 1
            ref = ref.convert("L").convert("RGB")
            assert (out[..., 0] == out[..., 1]).all() and (out[..., 1] == out[..., 2]).all()
        np.testing.assert_array_equal(out, np.asarray(ref))
        # same generator seed -> same output
        np.testing.assert_array_equal(out, T.train_transform(img, np.random.default_rng(seed), cfg))
    assert seen_gray and seen_jitter


def test_jitter_order_matters():
    img = smooth_image(40, 40, seed=10)
    a = T.JitterParams((0, 1, 2, 3), 1.3, 0.7, 1.3, 0.08)
    b = T.JitterParams((3, 2, 1, 0), 1.3, 0.7, 1.3, 0.08)
    assert np.abs(np.asarray(T.apply_jitter(img, a)).astype(int) - np.asarray(T.apply_jitter(img, b))).max() > 2


# --- eval transform ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "size,resized,corner",
    [
        # written out by hand: shorter side -> 224, longer -> int(224 * long / short); offsets round((L - 224) / 2)
        ((301, 457), (224, 340), (58, 0)),  # 224*457/301 = 340.09; (340-224)/2 = 58
        ((457, 301), (340, 224), (0, 58)),
        ((225, 1001), (224, 996), (386, 0)),  # 224*1001/225 = 996.55 -> 996; (996-224)/2 = 386
        ((333, 227), (328, 224), (0, 52)),  # 224*333/227 = 328.6 -> 328; 104/2 = 52
        ((231, 225), (229, 224), (0, 2)),  # 224*231/225 = 229.97 -> 229; 5/2 = 2.5 -> round half to even = 2
        ((224, 224), (224, 224), (0, 0)),
    ],
)
def test_eval_geometry(size, resized, corner):
    img = smooth_image(*size, seed=11)
    assert pp.resized_size(*size, 224) == resized
    assert pp.center_crop_box(*resized, 224, 224)[:2] == corner[::-1]
    out = np.asarray(pp.eval_crop(img, 224), np.uint8)
    top, left = corner
    ref = img.resize(resized, Image.Resampling.BICUBIC) if resized != size else img
    ref = np.asarray(ref.crop((left, top, left + 224, top + 224)))
    assert out.shape == (224, 224, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(out, ref)


def test_normalize_matches_clip_constants():
    x = np.array([[[0, 128, 255]]], np.uint8)
    expect = [(0 / 255 - CLIP_MEAN[0]) / CLIP_STD[0], (128 / 255 - CLIP_MEAN[1]) / CLIP_STD[1],
              (255 / 255 - CLIP_MEAN[2]) / CLIP_STD[2]]
    np.testing.assert_allclose(pp.normalize_uint8(x)[0, 0], expect, rtol=1e-5)
