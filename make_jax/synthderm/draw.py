"""Procedural skin-patch images for SynthDerm cases (vectorised numpy; no per-pixel Python loops).

`draw_case(case, size)` renders a case (cases.sample_case) as an (S, S, 3) uint8 RGB image:

1. skin: a Fitzpatrick-like base tone, low-frequency mottling, pores and fine grain;
2. each lesion component: a normalised distance field D over its blobs (D < 1 inside a blob; irregular
   outlines by angular harmonics, ill-defined borders by perturbing D with low-frequency noise), from which
   come its coverage, its height (papule/nodule/vesicle/pustule domes, flat-topped plaques, a sunken ulcer
   with a raised rim) and painted colour layers (one per colour concept, variegated when there are several);
3. secondary changes as layers: scale (white flakes: high local variance), crust (yellow-brown irregular
   islands), telangiectasia (thin red vessel lines);
4. shading from the height field (light from the top left, specular highlights on vesicles and pustules),
   hairs, an illumination gradient, a colour cast and sensor noise.

With `return_masks=True` it also returns what was drawn where: `lesion` (union coverage), `coverage` (per
morphology type) and `visible` (per concept layer: its alpha times the transparency of everything painted over
it), so tests can check the pixels against the labels.
"""

from __future__ import annotations

import functools
import math

import numpy as np

from . import vocab

F32 = np.float32


def smoothstep(e0: float, e1: float, x: np.ndarray) -> np.ndarray:
    """Hermite step from 0 at e0 to 1 at e1 (e0 > e1 gives a falling step)."""
    t = (x - F32(e0)) * F32(1.0 / (e1 - e0))
    np.clip(t, 0.0, 1.0, out=t)
    return t * t * (F32(3.0) - F32(2.0) * t)


@functools.lru_cache(maxsize=16)
def _axis(size: int) -> np.ndarray:
    a = (np.arange(size, dtype=F32) + F32(0.5)) / F32(size)
    a.setflags(write=False)
    return a


@functools.lru_cache(maxsize=64)
def _upsample_matrix(g: int, size: int) -> np.ndarray:
    """(size, g) bilinear interpolation weights from a g-node grid spanning the image to `size` pixels."""
    pos = _axis(size) * (g - 1)
    i0 = np.clip(np.floor(pos).astype(np.int64), 0, g - 2)
    f = pos - i0
    f = f * f * (3.0 - 2.0 * f)  # Hermite weights: no creases in the shading of a field built from it
    m = np.zeros((size, g), F32)
    m[np.arange(size), i0] = 1.0 - f
    m[np.arange(size), i0 + 1] += f
    m.setflags(write=False)
    return m


def lowfreq(rng: np.random.Generator, g: int, size: int) -> np.ndarray:
    """Smooth random field (unit std) with about g−1 cells across the image."""
    g = max(2, int(g))
    u = _upsample_matrix(g, size)
    n = rng.standard_normal((g, g), dtype=F32)
    flat = n.ravel()
    flat -= flat.sum() / flat.size
    n *= F32(1.0 / (math.sqrt(float(flat @ flat) / flat.size) + 1e-6))  # unit std at the nodes (less in between)
    return u @ n @ u.T


def colour_rgb(concept: str, lightness: float) -> np.ndarray:
    """(3, 1, 1) colour of a concept on skin of the given lightness (1 lightest, 0 darkest)."""
    light, dark = vocab.COLOUR_RGB[concept]
    c = np.asarray(dark, F32) + F32(lightness) * (np.asarray(light, F32) - np.asarray(dark, F32))
    return c.astype(F32)[:, None, None]


def _rgb(r: float, g: float, b: float) -> np.ndarray:
    return np.asarray([r, g, b], F32)[:, None, None]


def _distance_field(blobs: list[dict], size: int, margin: float = 1.9) -> np.ndarray:
    """min over blobs of the normalised elliptical distance (1 on a blob's outline); 9 far from every blob."""
    ax = _axis(size)
    d_all = np.full((size, size), 9.0, F32)
    for b in blobs:
        rx, ry = b["r"], b["r"] * b["aspect"]
        amp = sum(abs(h[1]) for h in b["harmonics"])
        ext = margin * max(rx, ry) * (1.0 + amp)
        x0, x1 = max(0, int((b["cx"] - ext) * size)), min(size, int(math.ceil((b["cx"] + ext) * size)))
        y0, y1 = max(0, int((b["cy"] - ext) * size)), min(size, int(math.ceil((b["cy"] + ext) * size)))
        if x0 >= x1 or y0 >= y1:
            continue
        dx = ax[x0:x1][None, :] - F32(b["cx"])
        dy = ax[y0:y1][:, None] - F32(b["cy"])
        c, s = F32(math.cos(b["angle"])), F32(math.sin(b["angle"]))
        u = dx * c + dy * s
        v = dy * c - dx * s
        d = np.sqrt((u * F32(1.0 / rx)) ** 2 + (v * F32(1.0 / ry)) ** 2)
        if b["harmonics"]:
            th = np.arctan2(v, u)
            scale = np.ones_like(d)
            for k, a, ph in b["harmonics"]:
                scale += F32(a) * np.cos(F32(k) * th + F32(ph))
            d = d / scale
        np.minimum(d_all[y0:y1, x0:x1], d, out=d_all[y0:y1, x0:x1])
    return d_all


class _Canvas:
    """A planar (3, S, S) float image and its painted layers in order: (key or None, alpha (S, S)).

    Channel-first keeps numpy's inner loops long (a trailing axis of 3 makes every broadcast op slow).
    """

    def __init__(self, base: np.ndarray):
        self.img = base
        self.layers: list[tuple[str | None, np.ndarray]] = []
        self.keep_layers = False

    def paint(self, key: str | None, alpha: np.ndarray, colour: np.ndarray) -> None:
        """img ← img + alpha·(colour − img); colour (3, 1, 1) or (3, S, S)."""
        self.img += alpha[None] * (colour - self.img)
        if self.keep_layers:
            self.layers.append((key, alpha))

    def visible(self) -> dict[str, np.ndarray]:
        out: dict[str, np.ndarray] = {}
        cover = np.ones_like(self.layers[0][1]) if self.layers else None
        for key, alpha in reversed(self.layers):
            if key is not None:
                v = alpha * cover
                out[key] = np.maximum(out[key], v) if key in out else v
            cover = cover * (F32(1.0) - alpha)
        return out


def _skin(rng: np.random.Generator, case: dict, size: int) -> tuple[np.ndarray, float]:
    f = case["fitzpatrick"] - 1
    tone = (np.asarray(vocab.SKIN_TONES[f], F32) * rng.uniform(0.95, 1.05, 3).astype(F32))[:, None, None]
    lightness = float(np.clip(1.0 - f / 5.0 + rng.normal(0, 0.04), 0.0, 1.0))
    shade = F32(1.0) + F32(0.05) * lowfreq(rng, 4, size) + F32(0.025) * lowfreq(rng, max(6, size // 6), size)
    img = tone * shade[None]
    # a faint redness variation (blood flow) independent of brightness
    img[1:] *= (F32(1.0) - F32(0.02) * np.abs(lowfreq(rng, 5, size)))[None]
    # pores: sparse dark dots softened over 2x2 pixels, and fine grain
    pores = (rng.random((size, size), dtype=F32) < F32(0.012)).astype(F32)
    pores = F32(0.5) * pores + F32(0.25) * (np.roll(pores, 1, 0) + np.roll(pores, 1, 1))
    grain = F32(1.0) + F32(0.015) * rng.standard_normal((size, size), dtype=F32) - F32(0.18) * pores
    img *= grain[None]
    return img, lightness


def _component(rng, canvas: _Canvas, comp: dict, size: int, lightness: float, height: np.ndarray, gloss: np.ndarray):
    """Paint one lesion component; returns its coverage."""
    t = comp["type"]
    d = d0 = _distance_field(comp["blobs"], size)
    r_px = comp["radius"] * size
    if comp["border"] == "ill-defined":
        d = d + F32(0.22) * lowfreq(rng, 7, size)
        edge = 0.32
    else:
        edge = 0.06
    edge = edge + 1.2 / max(r_px, 1.0)  # about one pixel of anti-aliasing
    inside = smoothstep(1.0 + edge, 1.0 - edge, d)
    if comp["shape"] == "annular":
        ring = np.exp(-(((d - F32(0.8)) * F32(1.0 / 0.17)) ** 2)).astype(F32)
        cover = np.maximum(ring, F32(0.22) * smoothstep(0.9, 0.6, d))
        core = ring
    else:
        cover = inside
        core = smoothstep(1.0, 0.7, d)

    # height field (pixels), from the unperturbed outline
    dd = np.minimum(d0, F32(1.0))
    if t == "papule":
        height += F32(0.55 * r_px) * np.sqrt(F32(1.0) - dd * dd)
        gloss += F32(0.12) * inside
    elif t == "plaque":
        height += F32(min(0.12 * r_px, 3.0)) * smoothstep(1.05, 0.8, d0)
    elif t == "nodule":
        height += F32(0.75 * r_px) * (F32(1.0) - dd * dd) ** F32(0.7)
        gloss += F32(0.3) * inside
    elif t == "vesicle":
        height += F32(0.9 * r_px) * np.sqrt(F32(1.0) - dd * dd)
        gloss += F32(1.0) * inside
    elif t == "pustule":
        height += F32(0.7 * r_px) * np.sqrt(F32(1.0) - dd * dd)
        gloss += F32(0.5) * inside
    elif t == "ulcer":
        height += F32(-0.22 * r_px) * smoothstep(0.8, 0.55, d0) + F32(0.12 * r_px) * np.exp(
            -(((d0 - F32(0.88)) * F32(1.0 / 0.12)) ** 2)
        )

    # colour layers
    colours = comp["colours"]
    if colours and t != "ulcer":  # an ulcer's colour is that of its bed (slough), painted below
        op_lo, op_hi = (0.5, 0.7) if t == "base" else (0.72, 0.92)
        if t == "pustule":
            region = smoothstep(1.75, 1.05, d)  # red halo around the pustule
        else:
            region = cover
        tex = F32(1.0) + F32(0.05) * lowfreq(rng, 9, size)
        mix = smoothstep(-0.35, 0.35, lowfreq(rng, 5, size))
        for i, c in enumerate(colours):
            alpha = region * F32(rng.uniform(op_lo, op_hi))
            if i == 1:
                alpha = alpha * mix
            elif i >= 2:
                alpha = alpha * smoothstep(0.5, 1.2, lowfreq(rng, 6, size))
            col = colour_rgb(c, lightness) * tex[None]
            canvas.paint(c, alpha, col)

    base_col = canvas.img  # the current pixels, for tints relative to the skin
    if t == "vesicle":
        tint = _rgb(232.0, 236.0, 240.0)
        canvas.paint(None, inside * F32(0.3), tint)
        canvas.paint(None, F32(0.35) * np.exp(-(((d - F32(0.95)) * F32(1.0 / 0.12)) ** 2)), base_col * F32(0.8))
    elif t == "pustule":
        centre = smoothstep(0.7, 0.3, d) * F32(0.92)
        canvas.paint(None, centre, _rgb(246.0, 236.0, 176.0))
    elif t == "ulcer":
        bed = smoothstep(0.82, 0.58, d)
        bed_col = _rgb(130.0, 36.0, 34.0) * F32(0.55 + 0.45 * lightness)
        rim = np.exp(-(((d - F32(0.88)) * F32(1.0 / 0.1)) ** 2)).astype(F32) * F32(0.5)
        canvas.paint(None, rim, colour_rgb("erythema", lightness))
        canvas.paint("ulcer_bed", bed * F32(0.95), bed_col * (F32(1.0) + F32(0.08) * lowfreq(rng, 12, size))[None])
        if "yellow" in colours:  # fibrinous slough: the yellow of an ulcer lies in its bed
            slough = smoothstep(0.62, 0.4, d) * smoothstep(-0.2, 0.5, lowfreq(rng, 8, size)) * F32(0.9)
            canvas.paint("yellow", slough, colour_rgb("yellow", lightness))

    sec = comp["secondary"]
    if "scale" in sec:
        density = float(rng.uniform(0.25, 0.42))
        f = rng.random((size, size), dtype=F32)
        flakes = smoothstep(1.0 - density, 1.0 - density + 0.12, f)
        flakes = np.maximum(flakes, F32(0.7) * np.roll(flakes, 1, axis=1))
        alpha = core * (flakes * F32(rng.uniform(0.65, 0.9)) + F32(0.06))
        col = _rgb(240.0, 236.0, 229.0) * F32(0.88 + 0.12 * lightness)
        canvas.paint("scale", alpha, col)
    if "crust" in sec:
        islands = smoothstep(0.1, 0.6, lowfreq(rng, max(6, size // 10), size)) * core
        grain = F32(1.0) + F32(0.12) * rng.standard_normal((size, size), dtype=F32)
        mix = smoothstep(-0.5, 0.5, lowfreq(rng, 6, size))[None]
        honey = _rgb(200.0, 146.0, 58.0)
        brown = _rgb(118.0, 74.0, 36.0)
        col = (honey + mix * (brown - honey)) * grain[None]
        canvas.paint("crust", islands * F32(0.9), col)
        height += F32(0.05 * r_px) * islands
    if "telangiectasia" in sec:
        n = lowfreq(rng, 7, size)
        lines = np.clip(F32(1.0) - np.abs(n) * F32(1.0 / 0.09), 0.0, 1.0)
        canvas.paint("telangiectasia", lines * core * F32(0.8), _rgb(196.0, 38.0, 62.0))
    return inside if comp["shape"] != "annular" else cover


def _hairs(rng, canvas: _Canvas, n: int, size: int) -> None:
    if n <= 0:
        return
    ax = _axis(size)
    xs, ys = ax[None, :], ax[:, None]
    theta0 = rng.uniform(0, math.pi)
    colour = _rgb(44.0, 34.0, 28.0) * F32(rng.uniform(0.7, 1.3))
    for _ in range(n):
        th = theta0 + rng.normal(0, 0.25)
        px, py = rng.uniform(0, 1), rng.uniform(0, 1)
        c, s = F32(math.cos(th)), F32(math.sin(th))
        along = (xs - F32(px)) * c + (ys - F32(py)) * s
        across = (ys - F32(py)) * c - (xs - F32(px)) * s
        bend = F32(rng.normal(0, 0.6))
        dist = np.abs(across - bend * along * along) * F32(size)  # pixels
        half = F32(rng.uniform(0.15, 0.45))
        width = F32(rng.uniform(0.45, 0.9))
        alpha = np.clip(F32(1.0) - dist / width, 0.0, 1.0) * smoothstep(half, half - 0.03, np.abs(along))
        canvas.paint(None, alpha * F32(0.8), colour)


def draw_case(case: dict, size: int, return_masks: bool = False):
    """Render `case` at size×size pixels. Returns uint8 (S,S,3), and with return_masks also a mask dict."""
    rng = np.random.default_rng(case["draw_seed"])
    base, lightness = _skin(rng, case, size)
    canvas = _Canvas(base)
    canvas.keep_layers = return_masks
    height = np.zeros((size, size), F32)
    gloss = np.zeros((size, size), F32)
    lesion = np.zeros((size, size), F32)
    coverage: dict[str, np.ndarray] = {}
    for comp in case["components"]:
        cov = _component(rng, canvas, comp, size, lightness, height, gloss)
        np.maximum(lesion, cov, out=lesion)
        if comp["type"] != "base":
            coverage[comp["type"]] = np.maximum(coverage[comp["type"]], cov) if comp["type"] in coverage else cov

    # shading: light from the top left; normal n ∝ (−h_x, −h_y, 1)
    hy, hx = np.gradient(height)
    shade = np.clip(F32(1.0) + F32(0.35) * (hx + hy), 0.55, 1.5)
    img = canvas.img * shade[None]
    if gloss.any():  # specular highlight (Blinn-Phong, exponent 24) on glossy lesions
        inv = F32(1.0) / np.sqrt(hx * hx + hy * hy + F32(1.0))
        k = F32(0.3 / math.sqrt(1.18))
        ndoth = np.clip((hx + hy) * k * inv + F32(1.0 / math.sqrt(1.18)) * inv, 0.0, 1.0)
        p8 = ndoth * ndoth
        p8 *= p8
        p8 *= p8
        spec = p8 * p8 * p8 * gloss
        img += (F32(235.0) * spec)[None]
    canvas.img = img

    _hairs(rng, canvas, case["n_hairs"], size)

    # camera: illumination gradient, colour cast, sensor noise
    ax = _axis(size)
    gx, gy = rng.normal(0, 0.06, 2)
    light = F32(1.0) + F32(gx) * (ax[None, :] - F32(0.5)) + F32(gy) * (ax[:, None] - F32(0.5))
    cast = rng.uniform(0.96, 1.04, 3).astype(F32)
    img = canvas.img * (light[None] * cast[:, None, None])
    img += F32(1.6) * rng.standard_normal((3, size, size), dtype=F32)
    out = np.ascontiguousarray(np.clip(img + F32(0.5), 0, 255).astype(np.uint8).transpose(1, 2, 0))
    if not return_masks:
        return out
    return out, {"lesion": lesion, "coverage": coverage, "visible": canvas.visible()}
