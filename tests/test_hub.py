"""Models by name: local open_clip dirs converted in memory, hf-hub: through a hand-made huggingface_hub cache
(offline), registry names with forced activation and sha256, the converted-model cache, and bad references."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

import make_jax
import torch_reference as tr
from make_jax.checkpoint import CheckpointError, hub, load_params, read_config
from make_jax.convert import convert
from test_convert import flat

GEOM = dict(image_size=32, patch_size=8, v_width=64, v_layers=1, v_heads=2, v_mlp=128, t_width=32, t_layers=1,
            t_heads=2, t_mlp=64, embed_dim=16)
COMMIT = "0123456789abcdef0123456789abcdef01234567"


def flat_params(model) -> dict[str, np.ndarray]:
    from flax import nnx

    return flat(nnx.to_pure_dict(nnx.state(model, nnx.Param)))


def flat_ckpt(path) -> dict[str, np.ndarray]:
    return flat(load_params(path, as_numpy=True))


@pytest.fixture(scope="module")
def oc(tmp_path_factory):
    """(open_clip dir, its make_jax conversion written by the convert command)."""
    root = tmp_path_factory.mktemp("hub")
    sd = tr.random_open_clip_state_dict(**GEOM, seed=5)
    src = tr.write_open_clip_dir(root / "oc", sd, tr.open_clip_model_cfg(**GEOM), quick_gelu=True)
    return src, convert(src, root / "ckpt")


def hf_cache(root: Path, repo: str, files: dict[str, Path]) -> Path:
    """huggingface_hub's cache layout (file_download.py / _snapshot_download.py): models--ORG--NAME/
    blobs/<sha256 of each file>, snapshots/<commit>/<name> → ../../blobs/<sha256> (relative symlink), refs/main."""
    repo_dir = root / ("models--" + repo.replace("/", "--"))
    (repo_dir / "blobs").mkdir(parents=True)
    (repo_dir / "snapshots" / COMMIT).mkdir(parents=True)
    (repo_dir / "refs").mkdir()
    (repo_dir / "refs" / "main").write_text(COMMIT)  # no trailing newline, as huggingface_hub writes it
    for name, src in files.items():
        digest = hashlib.sha256(src.read_bytes()).hexdigest()
        shutil.copy(src, repo_dir / "blobs" / digest)
        os.symlink(Path("..") / ".." / "blobs" / digest, repo_dir / "snapshots" / COMMIT / name)
    return root


@pytest.fixture
def offline_hub(tmp_path, oc, monkeypatch):
    src, _ = oc
    cache = hf_cache(tmp_path / "hf", "org/tiny-clip", {n: src / n for n in
                                                       ("open_clip_config.json", "open_clip_model.safetensors")})
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("MAKE_JAX_CACHE", str(tmp_path / "mj"))
    return cache


def test_open_clip_dir_is_converted_in_memory_exactly(oc):
    src, ckpt = oc
    a, b = make_jax.load(src, batch_size=2), make_jax.load(ckpt, batch_size=2)
    pa, pb = flat_params(a.model), flat_ckpt(ckpt)
    assert sorted(pa) == sorted(pb)
    for k in pa:
        assert np.array_equal(pa[k], pb[k]), k
    assert a.config == read_config(ckpt)
    x = np.random.default_rng(0).standard_normal((3, 32, 32, 3)).astype(np.float32)
    np.testing.assert_array_equal(a.encode_image(x), b.encode_image(x))


def test_hf_hub_offline_from_the_local_cache_then_from_the_converted_cache(offline_hub, oc, monkeypatch, tmp_path):
    _, ckpt = oc
    m = make_jax.load("hf-hub:org/tiny-clip", batch_size=2)
    ref = flat_ckpt(ckpt)
    got = flat_params(m.model)
    assert all(np.array_equal(got[k], ref[k]) for k in ref)
    index = json.loads((tmp_path / "mj" / "index.json").read_text())
    (key, name), = index.items()
    assert COMMIT in key and (tmp_path / "mj" / name / "model_config.json").is_file()

    # second load: from the converted cache, without reading the PyTorch-layout source again
    def no_read(*a, **k):
        raise AssertionError("source read again")

    monkeypatch.setattr(hub.readers, "read_source", no_read)
    again = make_jax.load("hf-hub:org/tiny-clip", batch_size=2)
    got2 = flat_params(again.model)
    assert all(np.array_equal(got2[k], ref[k]) for k in ref)


def test_offline_miss_and_bad_references_are_one_line_errors(offline_hub):
    with pytest.raises(CheckpointError, match=r"hf-hub:org/absent: not in the local cache .* HF_HUB_OFFLINE is set"):
        hub.resolve("hf-hub:org/absent")
    with pytest.raises(CheckpointError, match=r"expected hf-hub:ORG/NAME"):
        hub.resolve("hf-hub:just-a-name")
    with pytest.raises(CheckpointError, match=r"not a known model name \(dermlip-vit-b16, make, openai-vit-b16\)"):
        hub.resolve("maek")


def test_registry_forces_activation_and_checks_sha256(offline_hub, oc, monkeypatch):
    src, _ = oc
    weights = src / "open_clip_model.safetensors"
    good = hashlib.sha256(weights.read_bytes()).hexdigest()
    # the source config says quick_gelu; a registry entry that knows better wins
    monkeypatch.setitem(hub.REGISTRY, "tiny", hub.RegistryEntry("org/tiny-clip", "tiny", "gelu", good, "test"))
    m = make_jax.load("tiny", cache=False)
    assert m.config.activation == "gelu"
    monkeypatch.setitem(hub.REGISTRY, "tiny", hub.RegistryEntry("org/tiny-clip", "tiny", "gelu", "0" * 64, "test"))
    with pytest.raises(CheckpointError, match=f"has sha256 {good}, the registry expects 0000"):
        make_jax.load("tiny", cache=False)


def test_registry_names_the_published_models():
    assert hub.REGISTRY["dermlip-vit-b16"].hub_id == "redlessone/DermLIP_ViT-B-16"
    assert {e.activation for e in hub.REGISTRY.values()} == {"quick_gelu"}
    assert {"make", "dermlip-vit-b16", "openai-vit-b16"} <= set(hub.REGISTRY)


def _norm(a: np.ndarray) -> np.ndarray:
    mean = np.array([0.48145466, 0.4578275, 0.40821073], np.float32)
    std = np.array([0.26862954, 0.26130258, 0.27577711], np.float32)
    return (a.astype(np.float32) / np.float32(255.0) - mean) / std


@pytest.mark.parametrize("mode", ["longest", "squash"])
def test_load_honours_the_preprocess_cfg_modes(oc, tmp_path, mode):
    from PIL import Image

    src, _ = oc
    d = tmp_path / "oc"
    shutil.copytree(src, d)
    cfg = json.loads((d / "open_clip_config.json").read_text())
    cfg["preprocess_cfg"].update(interpolation="bilinear", resize_mode=mode)
    (d / "open_clip_config.json").write_text(json.dumps(cfg))
    m = make_jax.load(d)
    img = Image.fromarray(np.random.default_rng(3).integers(0, 256, (45, 70, 3), dtype=np.uint8))  # w 70, h 45
    if mode == "squash":  # torchvision Resize((32, 32)) on PIL = PIL resize to (32, 32), bilinear
        ref = np.asarray(img.resize((32, 32), Image.Resampling.BILINEAR))
    else:  # longest side → 32: (70, 45) → (32, round(45 * 32 / 70) = 21), then zero padding 5 above, 6 below
        small = np.asarray(img.resize((32, 21), Image.Resampling.BILINEAR))
        ref = np.zeros((32, 32, 3), np.uint8)
        ref[5:26] = small
    np.testing.assert_array_equal(m.preprocess(img), _norm(ref))
    assert not np.array_equal(m.preprocess(img), make_jax.load(src).preprocess(img))


def test_unsupported_preprocess_cfg_is_refused_naming_the_file(oc, tmp_path):
    src, _ = oc
    d = tmp_path / "oc"
    shutil.copytree(src, d)
    cfg = json.loads((d / "open_clip_config.json").read_text())
    cfg["preprocess_cfg"]["interpolation"] = "lanczos"
    (d / "open_clip_config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match=r"open_clip_config.json: preprocess_cfg.interpolation 'lanczos'"):
        make_jax.load(d)


def test_eval_cli_activation_flag_reaches_the_conversion(oc, tmp_path, capsys):
    from make_jax.evaluate.cli import load_encoder

    src, ckpt = oc
    assert load_encoder(str(src), activation="gelu").config.activation == "gelu"
    assert load_encoder(str(src)).config.activation == "quick_gelu"  # the source's config
    with pytest.raises(CheckpointError, match="fixes its activation"):
        load_encoder(str(ckpt), activation="gelu")


def test_hugging_face_clip_dir_is_converted_in_memory_exactly(tmp_path):
    model = tr.make_hf_clip(**GEOM, activation="gelu", seed=3)
    model.save_pretrained(tmp_path / "hf")
    ckpt = convert(tmp_path / "hf", tmp_path / "ckpt")
    m = make_jax.load(tmp_path / "hf")
    assert m.config == read_config(ckpt) and m.config.activation == "gelu"
    got, ref = flat_params(m.model), flat_ckpt(ckpt)
    assert sorted(got) == sorted(ref) and all(np.array_equal(got[k], ref[k]) for k in ref)


def test_training_init_from_takes_any_reference(oc, offline_hub):
    from configs.common import base_config
    from make_jax.train.loop import initial_params

    src, ckpt = oc
    ref = flat_ckpt(ckpt)
    for init in (str(src), "hf-hub:org/tiny-clip", str(ckpt)):
        config = base_config()  # the whole training config, as train() passes it
        config.init_from = init
        got = flat(initial_params(config, read_config(ckpt), {}))
        assert sorted(got) == sorted(ref) and all(np.array_equal(got[k], ref[k]) for k in ref), init
