"""CLIP's evaluation image transform, reproduced exactly without torchvision.

open_clip's eval transform (resize_mode "shortest", interpolation "bicubic") on a PIL image is
`Resize(size, BICUBIC) → CenterCrop(size) → convert("RGB") → ToTensor() → Normalize(mean, std)`. Here:

- resize: the shorter side becomes `size`, the longer side `int(size * long / short)` (truncated, as
  torchvision's `_compute_resized_output_size`), resampled by PIL `Image.resize(..., BICUBIC)` — the call
  torchvision makes for PIL inputs;
- centre crop: box left = `int(round((w - size) / 2.0))`, top = `int(round((h - size) / 2.0))` (Python's round,
  half to even, as torchvision's `center_crop`);
- RGB conversion after the crop (order matters for RGBA / palette images, as in open_clip);
- uint8 → float32 / 255, then (x - mean) / std in float32 (`normalize_uint8`, torchvision's ToTensor + Normalize
  in that order: the one normalisation of every image, at evaluation and in training).

A checkpoint's `preprocess_cfg` may ask for open_clip's other eval modes, honoured here as open_clip does them:
`interpolation` "bilinear" (or "bicubic"; "random" means bicubic at evaluation), `resize_mode` "squash" (resize
both sides to `size`, aspect ratio not kept) or "longest" (the longer side becomes `size`, each side
`round(side / ratio)`, then padded with `fill_color` — left/top get the floor half — and centre-cropped).

Output: (H, W, 3) float32, channels last (NHWC once batched), ready for `CLIP.encode_image`.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from PIL import Image

# CLIP image normalisation constants (OpenAI CLIP; used by MAKE and open_clip for these models).
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def resized_size(width: int, height: int, size: int) -> tuple[int, int]:
    """(new_width, new_height) of torchvision `Resize(size)` (an int: match the shorter side)."""
    short, long = (width, height) if width <= height else (height, width)
    new_short, new_long = size, int(size * long / short)
    return (new_short, new_long) if width <= height else (new_long, new_short)


def center_crop_box(width: int, height: int, crop_width: int, crop_height: int) -> tuple[int, int, int, int]:
    """(left, top, right, bottom) of torchvision `CenterCrop((crop_height, crop_width))` on a width×height image."""
    if crop_width > width or crop_height > height:
        raise ValueError(f"crop {crop_width}x{crop_height} is larger than the image {width}x{height}")
    top = int(round((height - crop_height) / 2.0))
    left = int(round((width - crop_width) / 2.0))
    return left, top, left + crop_width, top + crop_height


INTERPOLATIONS = {"bicubic": Image.Resampling.BICUBIC, "bilinear": Image.Resampling.BILINEAR,
                  "random": Image.Resampling.BICUBIC}
RESIZE_MODES = ("shortest", "longest", "squash")


def check_preprocess_cfg(interpolation: str, resize_mode: str) -> None:
    if interpolation not in INTERPOLATIONS:
        raise ValueError(f"preprocess_cfg.interpolation {interpolation!r}: one of {sorted(INTERPOLATIONS)}")
    if resize_mode not in RESIZE_MODES:
        raise ValueError(f"preprocess_cfg.resize_mode {resize_mode!r}: one of {list(RESIZE_MODES)}")


def resize_shorter(image: Image.Image, size: int, interpolation: str = "bicubic") -> Image.Image:
    new = resized_size(image.width, image.height, size)
    if new == image.size:
        return image
    return image.resize(new, INTERPOLATIONS[interpolation])


def resize_longest_and_pad(image: Image.Image, size: int, interpolation: str = "bicubic",
                           fill_color: int = 0) -> Image.Image:
    """open_clip's "longest": ResizeKeepRatio(size, longest=1) then CenterCropOrPad(size, fill)."""
    ratio = max(image.width / size, image.height / size)
    new = (round(image.width / ratio), round(image.height / ratio))
    if new != image.size:
        image = image.resize(new, INTERPOLATIONS[interpolation])
    pad_w, pad_h = max(size - image.width, 0), max(size - image.height, 0)
    if pad_w or pad_h:
        from PIL import ImageOps

        image = ImageOps.expand(image, (pad_w // 2, pad_h // 2, (pad_w + 1) // 2, (pad_h + 1) // 2), fill=fill_color)
    return center_crop(image, size)


def center_crop(image: Image.Image, size: int) -> Image.Image:
    return image.crop(center_crop_box(image.width, image.height, size, size))


def to_normalized_array(image: Image.Image, mean: Sequence[float] = CLIP_MEAN,
                        std: Sequence[float] = CLIP_STD) -> np.ndarray:
    """RGB PIL image → (H, W, 3) float32, `normalize_uint8` of its pixels."""
    return normalize_uint8(np.asarray(image.convert("RGB"), dtype=np.uint8), mean, std)


def preprocess(image: Image.Image, image_size: int = 224, mean: Sequence[float] = CLIP_MEAN,
               std: Sequence[float] = CLIP_STD, interpolation: str = "bicubic", resize_mode: str = "shortest",
               fill_color: int = 0) -> np.ndarray:
    """PIL image → (image_size, image_size, 3) float32, normalised (open_clip's eval transform)."""
    if not isinstance(image, Image.Image):
        raise TypeError(f"preprocess expects a PIL.Image.Image, got {type(image).__name__}")
    return to_normalized_array(eval_crop(image, image_size, interpolation, resize_mode, fill_color), mean, std)


def eval_crop(image: Image.Image, image_size: int = 224, interpolation: str = "bicubic", resize_mode: str = "shortest",
              fill_color: int = 0) -> Image.Image:
    """The geometric half of the eval transform (resize, crop or pad): image_size × image_size PIL image. The
    input pipeline's eval split stores `np.asarray(eval_crop(img, S), np.uint8)`."""
    check_preprocess_cfg(interpolation, resize_mode)
    if resize_mode == "squash":
        if image.size != (image_size, image_size):
            image = image.resize((image_size, image_size), INTERPOLATIONS[interpolation])
        return image
    if resize_mode == "longest":
        return resize_longest_and_pad(image, image_size, interpolation, fill_color)
    return center_crop(resize_shorter(image, image_size, interpolation), image_size)


def normalize_uint8(images, mean: Sequence[float] = CLIP_MEAN, std: Sequence[float] = CLIP_STD):
    """uint8 (..., 3) images (numpy or jax) → float32 (x / 255 − mean) / std: the one image normalisation — of the
    eval transform (`preprocess`), of training batches on the host (pipeline `output="float32"`) and on device
    (`train.forward.normalize_images`). The float32 operations are torchvision's (`ToTensor` divides by 255,
    `Normalize` subtracts the mean, then divides by the std), so the result equals open_clip's preprocessing bit
    for bit; (x − 255·mean) / (255·std) would differ from it in the last bit (up to ~2.4e-7)."""
    x = images.astype(np.float32) / np.float32(255.0)
    return (x - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
