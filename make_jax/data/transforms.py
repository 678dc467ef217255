"""The train image transform of docs/data.md, in NumPy/PIL, with torchvision's semantics.

Train (one image, one ``numpy.random.Generator``)::

    RandomResizedCrop(S, scale=(0.4, 1), ratio=(3/4, 4/3), bicubic)   # 10 tries, then the centre-crop fallback
    RandomApply([ColorJitter(0.32, 0.32, 0.32, 0.08)], p=0.8)          # the 4 ops in a random order
    RandomGrayscale(p=0.2)                                             # 3 equal channels
    (no flip)

Eval (the pipeline's validation split and inference alike): ``make_jax.preprocess.eval_crop``.

Each step follows torchvision's PIL code path (``torchvision.transforms.functional_pil``): the crop box is sampled
as ``RandomResizedCrop.get_params`` does, the crop is ``img.crop`` then ``img.resize((S, S), BICUBIC)``, the four
jitter ops are ``PIL.ImageEnhance`` Brightness / Contrast / Color and torchvision's HSV hue shift, grayscale is
``convert("L")`` repeated on 3 channels. Random numbers come from NumPy, not torch: the distributions are
torchvision's, the draws are not bit-identical to a torch run.

Every random decision is returned by ``train_transform(..., return_params=True)`` (the crop box and whether it
came from the fallback, the jitter order and factors, the grayscale coin) so tests can check the sampler against
its definition. Output is (S, S, 3) uint8; normalisation is ``make_jax.preprocess.normalize_uint8`` (on device in
``make_jax.train.forward.normalize_images``, or in the pipeline with ``output="float32"``).
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageEnhance


BICUBIC = Image.Resampling.BICUBIC
JITTER_OPS = ("brightness", "contrast", "saturation", "hue")


@dataclass(frozen=True)
class TrainTransformConfig:
    """Parameters of the train transform (defaults: docs/data.md)."""

    size: int = 224
    scale: tuple[float, float] = (0.4, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    max_attempts: int = 10
    jitter_prob: float = 0.8
    brightness: float = 0.32
    contrast: float = 0.32
    saturation: float = 0.32
    hue: float = 0.08
    grayscale_prob: float = 0.2

    def __post_init__(self):
        if not 0 < self.scale[0] <= self.scale[1]:
            raise ValueError(f"scale must satisfy 0 < min <= max, got {self.scale}")
        if not 0 < self.ratio[0] <= self.ratio[1]:
            raise ValueError(f"ratio must satisfy 0 < min <= max, got {self.ratio}")
        if not 0 <= self.hue <= 0.5:
            raise ValueError(f"hue must be in [0, 0.5], got {self.hue}")
        for name in ("brightness", "contrast", "saturation"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0")


# --- decoding ---------------------------------------------------------------------------------------------------
def decode_image(data: bytes) -> Image.Image:
    """Encoded bytes → fully decoded RGB PIL image (raises on a truncated or non-image payload)."""
    img = Image.open(io.BytesIO(data))
    img.load()
    return img if img.mode == "RGB" else img.convert("RGB")


# --- RandomResizedCrop ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class CropBox:
    """A crop (top, left, height, width) and how it was chosen: ``attempt`` in [0, max_attempts) or -1 (fallback)."""

    top: int
    left: int
    height: int
    width: int
    attempt: int

    @property
    def fallback(self) -> bool:
        return self.attempt < 0


def sample_crop_box(
    rng: np.random.Generator,
    width: int,
    height: int,
    scale: tuple[float, float] = (0.4, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    max_attempts: int = 10,
) -> CropBox:
    """``torchvision.transforms.RandomResizedCrop.get_params``: up to ``max_attempts`` draws of an area fraction
    uniform in ``scale`` and an aspect ratio (w/h) log-uniform in ``ratio``; the first box that fits is placed
    uniformly at random. If none fits: the whole image, clipped to the nearest allowed ratio, centred."""
    area = height * width
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    for attempt in range(max_attempts):
        target_area = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(log_lo, log_hi))
        w = int(round(math.sqrt(target_area * aspect)))
        h = int(round(math.sqrt(target_area / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = int(rng.integers(0, height - h + 1))
            left = int(rng.integers(0, width - w + 1))
            return CropBox(top, left, h, w, attempt)
    in_ratio = width / height
    if in_ratio < min(ratio):
        w = width
        h = int(round(w / min(ratio)))
    elif in_ratio > max(ratio):
        h = height
        w = int(round(h * max(ratio)))
    else:
        w, h = width, height
    return CropBox((height - h) // 2, (width - w) // 2, h, w, -1)


def resized_crop(img: Image.Image, box: CropBox, size: int) -> Image.Image:
    """Crop ``box`` then resize to (size, size) bicubic (torchvision ``F.resized_crop`` on a PIL image)."""
    cropped = img.crop((box.left, box.top, box.left + box.width, box.top + box.height))
    return cropped.resize((size, size), BICUBIC)


# --- ColorJitter ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class JitterParams:
    """One draw of ``ColorJitter.get_params``: the op order and the factor of each op (None = op disabled)."""

    order: tuple[int, ...]
    brightness: float | None
    contrast: float | None
    saturation: float | None
    hue: float | None

    def factor(self, op: int) -> float | None:
        return getattr(self, JITTER_OPS[op])


def _factor_range(strength: float, center: float = 1.0) -> tuple[float, float] | None:
    if strength == 0:
        return None
    return max(0.0, center - strength), center + strength


def sample_jitter(
    rng: np.random.Generator, brightness: float, contrast: float, saturation: float, hue: float
) -> JitterParams:
    """``ColorJitter.get_params``: a random permutation of the 4 ops, then brightness, contrast and saturation
    factors uniform in [max(0, 1 - s), 1 + s] and a hue shift uniform in [-hue, hue] (a zero strength disables
    its op)."""
    order = tuple(int(i) for i in rng.permutation(4))
    factors = []
    for strength in (brightness, contrast, saturation):
        r = _factor_range(strength)
        factors.append(None if r is None else float(rng.uniform(*r)))
    h = None if hue == 0 else float(rng.uniform(-hue, hue))
    return JitterParams(order, *factors, h)


def adjust_brightness(img: Image.Image, factor: float) -> Image.Image:
    """Blend with black: clip(factor · x)."""
    return ImageEnhance.Brightness(img).enhance(factor)


def adjust_contrast(img: Image.Image, factor: float) -> Image.Image:
    """Blend with the mean grey level of the image's luma: clip(m + factor · (x - m))."""
    return ImageEnhance.Contrast(img).enhance(factor)


def adjust_saturation(img: Image.Image, factor: float) -> Image.Image:
    """Blend with the image's own luma (grey) version: clip(g + factor · (x - g))."""
    return ImageEnhance.Color(img).enhance(factor)


def adjust_hue(img: Image.Image, hue_factor: float) -> Image.Image:
    """torchvision's PIL hue shift: to 8-bit HSV, add int8(hue_factor · 255) to H modulo 256, back to RGB."""
    if not -0.5 <= hue_factor <= 0.5:
        raise ValueError(f"hue_factor must be in [-0.5, 0.5], got {hue_factor}")
    if img.mode in {"L", "1", "I", "F"}:
        return img
    h, s, v = img.convert("HSV").split()
    shift = int(np.int8(hue_factor * 255))  # truncation toward zero, as np.int8(...) does in torchvision
    np_h = ((np.asarray(h, dtype=np.int16) + shift) % 256).astype(np.uint8)
    return Image.merge("HSV", (Image.fromarray(np_h, "L"), s, v)).convert(img.mode)


_ADJUST = (adjust_brightness, adjust_contrast, adjust_saturation, adjust_hue)


def apply_jitter(img: Image.Image, params: JitterParams) -> Image.Image:
    for op in params.order:
        f = params.factor(op)
        if f is not None:
            img = _ADJUST[op](img, f)
    return img


def to_grayscale3(img: Image.Image) -> Image.Image:
    """ITU-R 601-2 luma (PIL ``convert('L')``) repeated on 3 channels."""
    return img.convert("L").convert("RGB")


# --- full transforms --------------------------------------------------------------------------------------------
@dataclass
class TrainParams:
    """Every random decision of one ``train_transform`` call."""

    box: CropBox
    jitter: JitterParams | None  # None: the p=0.8 coin said no
    grayscale: bool
    extra: dict = field(default_factory=dict)


def sample_train_params(rng: np.random.Generator, width: int, height: int, cfg: TrainTransformConfig) -> TrainParams:
    """The random decisions in torchvision's order: crop box, jitter coin (+ jitter draw), grayscale coin."""
    box = sample_crop_box(rng, width, height, cfg.scale, cfg.ratio, cfg.max_attempts)
    jitter = None
    # torchvision RandomApply: skipped when p < rand, so applied with probability p.
    if not cfg.jitter_prob < rng.random():
        jitter = sample_jitter(rng, cfg.brightness, cfg.contrast, cfg.saturation, cfg.hue)
    gray = bool(rng.random() < cfg.grayscale_prob)
    return TrainParams(box, jitter, gray)


def apply_train_params(img: Image.Image, params: TrainParams, size: int) -> np.ndarray:
    out = resized_crop(img, params.box, size)
    if params.jitter is not None:
        out = apply_jitter(out, params.jitter)
    if params.grayscale:
        out = to_grayscale3(out)
    return np.asarray(out, dtype=np.uint8)


def train_transform(
    img: Image.Image,
    rng: np.random.Generator,
    cfg: TrainTransformConfig = TrainTransformConfig(),
    return_params: bool = False,
):
    """RGB PIL image → (size, size, 3) uint8 (and the ``TrainParams`` used, if ``return_params``)."""
    params = sample_train_params(rng, img.width, img.height, cfg)
    out = apply_train_params(img, params, cfg.size)
    return (out, params) if return_params else out
