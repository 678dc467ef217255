"""Which activation reproduces the public MAKE notebook: zero-shot PAD probabilities of one image under both.

    python -m make_jax.checkpoint.activation_check MODEL PAT_8_15_820.png [--json OUT.json]

MODEL is anything `make_jax.load` opens (an open_clip directory such as a download of hf-hub:xieji-x/MAKE, a
Hugging Face CLIP directory, a state-dict file, `hf-hub:ORG/NAME`, a registry name) or a make_jax checkpoint
directory. The model is built twice, with QuickGELU and with exact GELU, and each prints the probabilities the
public notebook (github.com/SiyuanYan1/MAKE, assets/example.ipynb) computes: the six PAD class names in the
template "This is a skin image of {}", softmax(100 · cosine). The notebook printed
[2.1105e-05, 6.4341e-01, 6.7238e-03, 8.3324e-05, 3.3436e-01, 1.5401e-02] for its example image PAT_8_15_820.png
(loaded by open_clip from the hub, fp16 autocast); the activation whose row agrees to about 1e-2 is the one the
released weights were evaluated with. See docs/checkpoints.md.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

PAD_CLASSNAMES = ("nevus", "basal cell carcinoma", "actinic keratosis", "seborrheic keratosis",
                  "squamous cell carcinoma", "melanoma")
NOTEBOOK_TEMPLATE = "This is a skin image of {}"
NOTEBOOK_PROBS = (2.1105e-05, 6.4341e-01, 6.7238e-03, 8.3324e-05, 3.3436e-01, 1.5401e-02)
NOTEBOOK_SCALE = 100.0
ACTIVATIONS = ("quick_gelu", "gelu")
# The notebook ran under fp16 autocast and printed 5 digits: agreement to this much is a match.
MATCH_TOLERANCE = 1e-2


def open_encoder(model: str, activation: str):
    """An Encoder of `model` built with `activation` (a make_jax checkpoint's own activation is overridden too)."""
    import make_jax
    from make_jax.checkpoint import orbax_io

    if orbax_io.is_checkpoint(model):
        from make_jax.inference import Encoder

        cfg = orbax_io.read_config(model).replace(activation=activation)
        # built around the loaded parameters (no random initialisation to throw away)
        net = orbax_io.model_with_params(cfg, orbax_io.load_params(model, cfg))
        return Encoder(net, batch_size=1, preprocess_cfg=orbax_io.read_preprocess_cfg(model))
    return make_jax.load(model, batch_size=1, activation=activation, cache=False)


def zero_shot_probs(encoder, image) -> np.ndarray:
    """(6,) softmax(100 · cos(image, 'This is a skin image of <class>')) over the PAD classes."""
    img = encoder.encode_image([image])[0].astype(np.float64)
    txt = encoder.encode_text([NOTEBOOK_TEMPLATE.format(c) for c in PAD_CLASSNAMES]).astype(np.float64)
    logits = NOTEBOOK_SCALE * txt @ img
    e = np.exp(logits - logits.max())
    return e / e.sum()


def check(model: str, image_path: str) -> dict:
    """{activation: probabilities} plus each one's largest difference to the notebook and the verdict."""
    from PIL import Image

    with Image.open(image_path) as im:
        image = im.convert("RGB")
    out = {"model": str(model), "image": str(image_path), "classes": list(PAD_CLASSNAMES),
           "template": NOTEBOOK_TEMPLATE, "notebook": list(NOTEBOOK_PROBS), "probs": {}, "max_abs_diff": {}}
    for act in ACTIVATIONS:
        p = zero_shot_probs(open_encoder(model, act), image)
        out["probs"][act] = [float(x) for x in p]
        out["max_abs_diff"][act] = float(np.abs(p - np.asarray(NOTEBOOK_PROBS)).max())
    matches = [a for a in ACTIVATIONS if out["max_abs_diff"][a] <= MATCH_TOLERANCE]
    out["matches_notebook"] = matches[0] if len(matches) == 1 else None
    return out


def format_report(r: dict) -> str:
    lines = [f"{r['model']} on {r['image']}: softmax({NOTEBOOK_SCALE:g} · cosine), template {r['template']!r}",
             f"{'PAD class':<26}{'notebook':>12}" + "".join(f"{a:>12}" for a in ACTIVATIONS)]
    for k, c in enumerate(r["classes"]):
        lines.append(f"{c:<26}{r['notebook'][k]:>12.4g}" + "".join(f"{r['probs'][a][k]:>12.4g}" for a in ACTIVATIONS))
    lines.append(f"{'max |difference|':<26}{'':>12}" + "".join(f"{r['max_abs_diff'][a]:>12.3g}" for a in ACTIVATIONS))
    if r["matches_notebook"]:
        lines.append(f"the notebook's probabilities are reproduced with activation {r['matches_notebook']} "
                     f"(convert with --activation {r['matches_notebook']})")
    else:
        lines.append(f"neither activation alone agrees with the notebook to {MATCH_TOLERANCE:g}: check that this is "
                     "the notebook's image (PAT_8_15_820.png) and the released MAKE weights")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m make_jax.checkpoint.activation_check", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", help="the MAKE weights: open_clip/HF directory, state dict, hf-hub:..., registry "
                                 "name, or a make_jax checkpoint directory")
    p.add_argument("image", help="the notebook's example image, PAT_8_15_820.png")
    p.add_argument("--json", help="also write the result as JSON here")
    args = p.parse_args(argv)
    if not Path(args.image).is_file():
        print(f"error: {args.image}: no such image file", file=sys.stderr)
        return 1
    from make_jax.checkpoint.open_clip_layout import CheckpointError

    try:
        result = check(args.model, args.image)
    except (CheckpointError, FileNotFoundError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(format_report(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
