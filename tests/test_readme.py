"""README's inference snippet runs as written: only the checkpoint path and the two image files are
substituted (a tiny converted checkpoint, two generated images)."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
from PIL import Image

import torch_reference as tr
from make_jax.convert import convert

GEOM = dict(image_size=32, patch_size=8, v_width=64, v_layers=1, v_heads=2, v_mlp=128, t_width=32, t_layers=1,
            t_heads=2, t_mlp=64, embed_dim=16)


def test_readme_inference_snippet_runs(tmp_path, monkeypatch):
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = readme[readme.index("## Inference API"):]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    assert '"checkpoints/make_vitb16"' in code and '["a.jpg", "b.jpg"]' in code
    sd = tr.random_open_clip_state_dict(**GEOM, seed=4)
    ckpt = convert(tr.write_open_clip_dir(tmp_path / "oc", sd, tr.open_clip_model_cfg(**GEOM), quick_gelu=True),
                   tmp_path / "ckpt")
    rng = np.random.default_rng(0)
    for name in ("a.jpg", "b.jpg"):
        Image.fromarray(rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)).save(tmp_path / name)
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    exec(code.replace('"checkpoints/make_vitb16"', repr(str(ckpt))), scope)  # noqa: S102 - the README's own code
    probs = scope["probs"]
    assert probs.shape == (2, 2) and np.allclose(probs.sum(axis=1), 1.0)
    assert scope["patches"].shape == (2, 16, 16)
