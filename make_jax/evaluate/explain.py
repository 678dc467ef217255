"""Explanations (`--task explain`): where in the image each text is found, on the patch grid, as MAKE sees it.

For an image with L2-normalised patch embeddings v_n (P = g × g patches, 14 × 14 for ViT-B/16 at 224 px) and a
text embedding t:

- similarity map: z_n = v_n · t, the cosine of every patch with the text;
- SLRA knowledge weighting (docs/objectives.md §2, Eq. 5): z_n is kept where z_n ≥ σ (else 0) and normalised to
  w_n = z_n / Σ z — each patch's share of the knowledge-enhanced embedding e^k = Σ w_n v_n (L2-normalised); its
  cosine with the text, e^k · t, is reported next to the global image–text cosine.

Each (image, text) pair gives one PNG: the image as the model saw it (resized and centre-cropped), the
similarity map and the SLRA weights, each upsampled bilinearly to the image and overlaid; plus an .npz of the
raw grids. Pure numpy for the maths.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from make_jax.evaluate.registry import register

__all__ = ["overlay_png", "run", "similarity_grid", "slra_weights"]


def similarity_grid(patches: np.ndarray, text: np.ndarray) -> np.ndarray:
    """patches (P, E), text (E,) → (g, g) cosines (inputs L2-normalised; P must be a square)."""
    z = np.asarray(patches, np.float64) @ np.asarray(text, np.float64)
    g = int(round(np.sqrt(z.size)))
    if g * g != z.size:
        raise ValueError(f"{z.size} patches do not form a square grid")
    return z.reshape(g, g)


def slra_weights(patches: np.ndarray, text: np.ndarray, sigma: float = 0.0, eps: float = 1e-8
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Eq. 5 for one image: (w (P,) = thresholded z / (Σ z + eps), e^k (E,) L2-normalised; zeros if no patch
    reaches sigma)."""
    v = np.asarray(patches, np.float64)
    z = v @ np.asarray(text, np.float64)
    z = np.where(z >= sigma, z, 0.0)
    den = z.sum()
    if den <= 0:
        return np.zeros_like(z), np.zeros(v.shape[1])
    w = z / (den + eps)
    e = w @ v
    return w, e / np.linalg.norm(e)


def _upsample(grid: np.ndarray, size: int) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.fromarray(grid.astype(np.float32), mode="F").resize((size, size),
                                                                                Image.Resampling.BILINEAR))


def overlay_png(image: np.ndarray, maps: Sequence[tuple[str, np.ndarray]], title: str, out: str | Path) -> Path:
    """image (S, S, 3) in [0, 1]; maps: (panel title, (g, g) grid) each upsampled and overlaid (jet, α 0.5)."""
    from make_jax.report.plots import _plt, _save

    plt = _plt()
    s = image.shape[0]
    fig, axes = plt.subplots(1, 1 + len(maps), figsize=(3.3 * (1 + len(maps)), 3.6))
    axes[0].imshow(image)
    axes[0].set_title("input (as the model sees it)", fontsize=9)
    for ax, (name, grid) in zip(axes[1:], maps):
        ax.imshow(image)
        im = ax.imshow(_upsample(grid, s), cmap="jet", alpha=0.5)
        ax.set_title(f"{name}\n(grid {grid.shape[0]}×{grid.shape[1]}, range {grid.min():.3f}…{grid.max():.3f})",
                     fontsize=8)
        fig.colorbar(im, ax=ax, fraction=0.046)
    for ax in axes:
        ax.axis("off")
    fig.suptitle(title, fontsize=10)
    return _save(fig, out)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-")[:40] or "text"


@register("explain", summary="patch-text similarity maps and SLRA weights of images, overlaid as PNG",
          table=lambda r: "\n".join(f"explain {p['image']} | {p['text']!r}: cosine {p['cosine']:.4f}  "
                                    f"knowledge cosine {p['knowledge_cosine']:.4f} → {p['png']}"
                                    for p in r["pairs"]))
def run(encoder: Any, *, images: str, texts: Sequence[str], explain_dir: str, sigma: float = 0.0,
        recursive: bool = False) -> dict:
    """maps of every image (a file or a folder) against every text, written under `explain_dir`."""
    from PIL import Image

    from make_jax.evaluate.infer import list_images

    if isinstance(texts, str):
        texts = [texts]
    if not texts:
        raise ValueError("explain: needs at least one text (--texts)")
    if sigma < 0:
        raise ValueError(f"explain: sigma must be ≥ 0, got {sigma}")
    paths = list_images(images, recursive=recursive)
    out = Path(explain_dir)
    out.mkdir(parents=True, exist_ok=True)
    t = encoder.encode_text(list(texts))
    mean, std = np.asarray(encoder.mean), np.asarray(encoder.std)
    pairs = []
    for p in paths:
        x = encoder.preprocess(Image.open(p))
        emb, patches = encoder.encode_image_and_patches(x[None])
        shown = np.clip(x * std + mean, 0, 1)
        grids = {}
        for j, text in enumerate(texts):
            sim = similarity_grid(patches[0], t[j])
            w, ek = slra_weights(patches[0], t[j], sigma)
            g = sim.shape[0]
            cos, kcos = float(emb[0] @ t[j]), float(ek @ t[j])
            stem = f"{Path(p).stem}__{j:02d}_{_slug(text)}"
            wname = f"SLRA weight (σ={sigma:g})" + ("" if w.any() else ": no patch reaches σ")
            png = overlay_png(shown, [("patch–text cosine", sim), (wname, w.reshape(g, g))],
                              f"{Path(p).name} | {text!r}\nimage cosine {cos:.3f}, knowledge-embedding cosine "
                              f"{kcos:.3f}", out / f"{stem}.png")
            grids[f"similarity_{j}"], grids[f"slra_weight_{j}"] = sim, w.reshape(g, g)
            pairs.append({"image": str(p), "text": text, "cosine": cos, "knowledge_cosine": kcos, "png": str(png),
                          "argmax_patch": [int(i) for i in np.unravel_index(np.argmax(sim), sim.shape)]})
        np.savez(out / f"{Path(p).stem}.npz", texts=np.asarray(texts), **grids)
    return {"task": "explain", "images": len(paths), "texts": list(texts), "sigma": sigma, "pairs": pairs,
            "explain_dir": str(out)}
