"""`--task embed` (both layouts, resume after an interruption, unreadable files) and `--task explain` (maps
against direct encoder calls, SLRA weights against the training loss's knowledge embedding, overlay
orientation)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from conftest import random_tiny_encoder
from make_jax.evaluate import explain
from make_jax.evaluate.embed import read_embeddings
from make_jax.evaluate.registry import run_task

TEXTS = ["a red plaque", "a blue nodule", "healthy skin"]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("emb")
    rng = np.random.default_rng(1)
    for i in range(5):
        Image.fromarray(rng.integers(0, 256, (24 + i, 30, 3), dtype=np.uint8)).save(root / f"img{i}.png")
    (root / "broken.png").write_bytes(b"not a png")
    return root, random_tiny_encoder(seed=2, batch_size=4)


def direct(enc, root, names):
    return enc.encode_image_and_patches([Image.open(root / n) for n in names])


def test_embed_npz_equals_direct_encoding(folder, tmp_path):
    root, enc = folder
    r = run_task(enc, "embed", images=str(root), texts=TEXTS, embeddings=str(tmp_path / "e.npz"),
                 with_patches=True, chunk=2, progress=False)
    z = read_embeddings(tmp_path / "e.npz")
    names = [f"img{i}.png" for i in range(5)]
    assert z["filenames"].tolist() == names and r["skipped_images"]["count"] == 1
    assert r["skipped_images"]["files"][0]["path"].endswith("broken.png")
    img, pat = direct(enc, root, names)
    np.testing.assert_allclose(z["image"], img, atol=1e-6)
    assert z["patches"].dtype == np.float16
    np.testing.assert_allclose(z["patches"].astype(np.float32), pat, atol=2e-3)
    np.testing.assert_allclose(z["text"], enc.encode_text(TEXTS), atol=1e-6)
    assert z["texts"].tolist() == TEXTS
    assert not (tmp_path / "e.npz.parts").exists()


def test_embed_resumes_after_an_interruption_and_writes_the_npy_layout(folder, tmp_path, monkeypatch):
    root, enc = folder
    full = run_task(enc, "embed", images=str(root), embeddings=str(tmp_path / "ref.npz"), chunk=2, progress=False)
    calls = {"n": 0}
    real = type(enc).encode_image

    def flaky(self, x):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt  # the third chunk dies
        return real(self, x)

    monkeypatch.setattr(type(enc), "encode_image", flaky)
    out = tmp_path / "dir"
    with pytest.raises(KeyboardInterrupt):
        run_task(enc, "embed", images=str(root), embeddings=str(out), chunk=2, progress=False)
    assert sorted(p.name for p in (tmp_path / "dir.parts").glob("part-*.npz")) == ["part-00000.npz",
                                                                                  "part-00001.npz"]
    r = run_task(enc, "embed", images=str(root), embeddings=str(out), chunk=2, progress=False)
    assert (r["chunks_resumed"], r["chunks_done"]) == (2, 1) and calls["n"] == 4
    a, b = read_embeddings(out), read_embeddings(tmp_path / "ref.npz")
    assert a["filenames"].tolist() == b["filenames"].tolist()
    np.testing.assert_array_equal(a["image"], b["image"])
    assert (out / "images.csv").read_text().splitlines()[:2] == ["row,filename", "0,img0.png"]
    assert full["images"] == 5


def test_embed_csv_input_and_bad_inputs(folder, tmp_path):
    root, enc = folder
    (tmp_path / "l.csv").write_text("filename\nimg3.png\nimg1.png\n")
    r = run_task(enc, "embed", csv=str(tmp_path / "l.csv"), image_root=str(root), embeddings=str(tmp_path / "c.npz"),
                 progress=False)
    z = read_embeddings(tmp_path / "c.npz")
    assert z["filenames"].tolist() == ["img3.png", "img1.png"] and r["texts"] == 0
    np.testing.assert_allclose(z["image"], direct(enc, root, ["img3.png", "img1.png"])[0], atol=1e-6)
    with pytest.raises(ValueError, match="not both"):
        run_task(enc, "embed", csv=str(tmp_path / "l.csv"), images=str(root), embeddings=str(tmp_path / "x.npz"))
    with pytest.raises(ValueError, match="nothing to embed"):
        run_task(enc, "embed", embeddings=str(tmp_path / "x.npz"))


def test_slra_weights_equal_the_training_losss_knowledge_embedding():
    import jax.numpy as jnp

    from make_jax.losses import LossConfig
    from make_jax.losses.paper import knowledge_embedding

    rng = np.random.default_rng(3)
    v = rng.standard_normal((16, 8))
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    t = rng.standard_normal(8)
    t /= np.linalg.norm(t)
    for sigma in (0.0, 0.2):
        w, ek = explain.slra_weights(v, t, sigma)
        ref, _ = knowledge_embedding(jnp.asarray(v[None], jnp.float32), jnp.asarray(t[None], jnp.float32),
                                     jnp.zeros(1, jnp.int32), jnp.zeros(1, jnp.int32), jnp.ones(1, bool), 1,
                                     LossConfig(sigma=sigma))
        np.testing.assert_allclose(ek, np.asarray(ref[0]), atol=1e-5)
        z = v @ t
        assert np.all(w[z < sigma] == 0) and w.sum() == pytest.approx(1.0, abs=1e-6)


def test_upsampled_map_keeps_the_patch_position():
    grid = np.zeros((4, 4))
    grid[1, 3] = 1.0  # row 1, column 3
    up = explain._upsample(grid, 32)
    r, c = np.unravel_index(np.argmax(up), up.shape)
    assert 8 <= r < 16 and 24 <= c < 32


def test_explain_task_maps_equal_direct_computation(folder, tmp_path):
    root, enc = folder
    r = run_task(enc, "explain", images=str(root / "img2.png"), texts=TEXTS[:2], explain_dir=str(tmp_path / "x"))
    img, pat = direct(enc, root, ["img2.png"])
    t = enc.encode_text(TEXTS[:2])
    grids = np.load(tmp_path / "x" / "img2.npz")
    g = enc.config.vision.grid
    for j in range(2):
        z = (pat[0].astype(np.float64) @ t[j]).reshape(g, g)
        np.testing.assert_allclose(grids[f"similarity_{j}"], z, atol=1e-5)
        pair = r["pairs"][j]
        assert pair["cosine"] == pytest.approx(float(img[0] @ t[j]), abs=1e-5)
        assert tuple(pair["argmax_patch"]) == np.unravel_index(np.argmax(z), z.shape)
        png = Image.open(pair["png"])
        assert png.size[0] > 600 and png.size[1] > 250
    json.dumps(r)  # JSON-ready
