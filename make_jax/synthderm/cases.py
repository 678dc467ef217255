"""A SynthDerm case: the full ground truth of one image (disease, lesion geometry, concepts, patient context).

`sample_case` draws a case from a disease recipe (vocab.DISEASES) with a numpy Generator. A case is plain JSON
data (lists, floats, strings), so it is written to the ground-truth JSONL files and can be redrawn at any image
size with `draw.draw_case`.
"""

from __future__ import annotations

import math

import numpy as np

from . import vocab

GENDERS = ("male", "female")


def _choice(rng: np.random.Generator, probs: dict):
    """A key of `probs` drawn with probability proportional to its value (one uniform variate)."""
    keys = list(probs)
    u = rng.random() * sum(probs.values())
    acc = 0.0
    for k in keys:
        acc += probs[k]
        if u < acc:
            return k
    return keys[-1]


def _blob(rng, cx, cy, r, shape):
    aspect = 1.0
    if shape == "oval":
        aspect = float(rng.uniform(0.55, 0.8))
    elif shape in ("irregular", "annular"):
        aspect = float(rng.uniform(0.75, 1.0))
    harmonics = []
    if shape == "irregular":
        for k in (2, 3, 5, 7):
            harmonics.append([k, float(rng.uniform(0.03, 0.14 if k < 5 else 0.07)), float(rng.uniform(0, 2 * math.pi))])
    return {
        "cx": float(cx),
        "cy": float(cy),
        "r": float(r),
        "aspect": aspect,
        "angle": float(rng.uniform(0, math.pi)),
        "harmonics": harmonics,
    }


def _place(rng, n_type: str, distribution: str, radius: float, shape: str, anchor_blobs=None):
    """Blob list (normalised image coordinates, radius in units of the image side)."""
    if anchor_blobs:
        a = anchor_blobs[0]
        return [_blob(rng, a["cx"], a["cy"], a["r"] * float(rng.uniform(0.35, 0.55)), shape)]
    small = n_type in vocab.SMALL_TYPES
    if distribution == "single":
        pos = [(0.5 + rng.normal(0, 0.07), 0.5 + rng.normal(0, 0.07))]
        radii = [radius]
    elif distribution == "clustered":
        n = int(rng.integers(4, 12)) if small else int(rng.integers(2, 4))
        spread = float(rng.uniform(0.09, 0.16)) if small else radius * float(rng.uniform(0.6, 0.9))
        c = (0.5 + rng.normal(0, 0.06), 0.5 + rng.normal(0, 0.06))
        pos = [(c[0] + rng.normal(0, spread), c[1] + rng.normal(0, spread)) for _ in range(n)]
        radii = list(radius * rng.uniform(0.7, 1.25, n))
    else:  # scattered
        n = int(rng.integers(7, 22)) if small else int(rng.integers(2, 5))
        lo, hi = (0.06, 0.94) if small else (0.2, 0.8)
        pos = [(rng.uniform(lo, hi), rng.uniform(lo, hi)) for _ in range(n)]
        radii = list(radius * rng.uniform(0.7, 1.25, n) * (1.0 if small else 0.75))
    out = []
    for (x, y), r in zip(pos, radii):
        out.append(_blob(rng, np.clip(x, 0.04, 0.96), np.clip(y, 0.04, 0.96), r, shape))
    return out


def _size_word(n_type: str, radius: float) -> str:
    lo, hi = vocab.TYPE_RADIUS[n_type]
    q = (radius - lo) / (hi - lo)
    return "small" if q < 0.33 else ("large" if q > 0.67 else "")


def sample_case(rng: np.random.Generator, disease: str | int | None = None) -> dict:
    """Draw one case. `disease`: a name, an index into vocab.DISEASES, or None for prevalence-weighted."""
    if disease is None:
        d = vocab.DISEASE_BY_NAME[_choice(rng, {x.name: x.prevalence for x in vocab.DISEASES})]
    elif isinstance(disease, (int, np.integer)):
        d = vocab.DISEASES[int(disease)]
    else:
        d = vocab.DISEASE_BY_NAME[disease]

    fitz = _choice(rng, dict(enumerate(vocab.SKIN_TONE_WEIGHTS)))
    fov_mm = float(rng.uniform(30.0, 50.0))
    components = []
    prev_blobs = None
    zoom = None  # a single small lesion is photographed close up: drawn larger, same size in mm
    for rec in d.components:
        present = rng.random() < rec.presence
        n_type = _choice(rng, rec.types)
        colours = list(_choice(rng, rec.colours))
        distribution = _choice(rng, rec.distribution)
        shape = _choice(rng, rec.shape)
        border = _choice(rng, rec.border)
        secondary = [k for k, p in rec.secondary.items() if rng.random() < p]
        lo, hi = vocab.TYPE_RADIUS[n_type]
        q = float(rng.uniform(*rec.size))
        radius = lo + q * (hi - lo)
        if not present or (rec.anchor and prev_blobs is None):
            continue
        if zoom is None:
            close_up = distribution == "single" and (n_type in vocab.SMALL_TYPES or n_type == "nodule")
            zoom = float(np.clip(rng.uniform(0.08, 0.16) / radius, 1.0, 3.0)) if close_up else 1.0
            fov_mm /= zoom
        draw_radius = radius * zoom
        if shape == "annular":
            draw_radius = min(draw_radius * 1.15, 0.4)
        blobs = _place(rng, n_type, distribution, min(draw_radius, 0.4), shape, prev_blobs if rec.anchor else None)
        mean_r = float(np.mean([b_["r"] for b_ in blobs]))
        components.append(
            {
                "type": n_type,
                "colours": colours,
                "distribution": distribution,
                "shape": shape,
                "border": border,
                "secondary": secondary,
                "radius": mean_r,
                "size_word": _size_word(n_type, mean_r / zoom),
                "diameter_mm": max(1, int(round(2 * mean_r * fov_mm))),
                "anchored": bool(rec.anchor),
                "blobs": blobs,
            }
        )
        prev_blobs = blobs

    concepts = set()
    for c in components:
        if c["type"] != "base":
            concepts.add(c["type"])
        concepts.update(c["colours"])
        concepts.update(c["secondary"])
    concepts_sorted = [k for k in vocab.CONCEPT_KEYS if k in concepts]

    site = _choice(rng, d.sites)
    symptoms = [k for k, p in d.symptoms.items() if rng.random() < p]
    if "asymptomatic" in symptoms and len(symptoms) > 1:
        symptoms.remove("asymptomatic")
    age = int(rng.integers(d.age[0], d.age[1] + 1))
    gender = GENDERS[int(rng.integers(2))]
    src = vocab.SOURCES[_choice(rng, {i: s[2] for i, s in enumerate(vocab.SOURCES)})]
    hair_density = vocab.SITES[site][1]
    return {
        "disease": d.name,
        "label": vocab.CLASSNAMES.index(d.name),
        "ontology": d.ontology,
        "concepts": concepts_sorted,
        "components": components,
        "fitzpatrick": fitz + 1,
        "fov_mm": round(fov_mm, 2),
        "site": site,
        "symptoms": symptoms,
        "age": age,
        "gender": gender,
        "duration": d.durations[int(rng.integers(len(d.durations)))],
        "source": src[0],
        "source_type": src[1],
        "n_hairs": int(rng.poisson(6.0 * hair_density)),
        "draw_seed": int(rng.integers(0, 2**63 - 1)),
    }
