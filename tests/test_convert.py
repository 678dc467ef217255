"""Checkpoint conversion: formats, exact round trips, the on-disk layout, atomic writes and bad inputs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
import torch
from safetensors.numpy import load_file as load_safetensors_np
from safetensors.torch import save_file as save_safetensors

import torch_reference as tr
from make_jax.checkpoint import (
    CheckpointError,
    config_from_hf,
    expected_shapes,
    infer_config,
    is_checkpoint,
    load_params,
    read_config,
    save_checkpoint,
)
from make_jax.checkpoint.open_clip_layout import param_tree_shapes, params_shapes
from make_jax.checkpoint.readers import is_torchscript
from make_jax.convert import convert, export_open_clip, main
from make_jax.models import abstract_model, get_model_config
from make_jax.models.config import ModelConfig

# open_clip-dir geometry: head width 32 (not open_clip's default 64), MLP ratio 3 in the image tower.
GEOM = dict(image_size=32, patch_size=8, v_width=128, v_layers=2, v_heads=4, v_mlp=384, t_width=64, t_layers=2,
            t_heads=2, t_mlp=256, embed_dim=32)
# Bare state dicts: heads inferred as width // 64.
GEOM_SD = dict(image_size=32, patch_size=8, v_width=128, v_layers=2, v_heads=2, v_mlp=512, t_width=64, t_layers=3,
               t_heads=1, t_mlp=256, embed_dim=48)


def flat(tree) -> dict[str, np.ndarray]:
    out = {}

    def walk(node, prefix):
        if isinstance(node, dict):
            for k, v in node.items():
                walk(v, f"{prefix}.{k}" if prefix else k)
        else:
            out[prefix] = np.asarray(node)

    walk(tree, "")
    return out


def assert_trees_equal(a, b):
    fa, fb = flat(a), flat(b)
    assert sorted(fa) == sorted(fb)
    for k in fa:
        assert fa[k].dtype == fb[k].dtype and fa[k].shape == fb[k].shape, k
        assert np.array_equal(fa[k], fb[k]), k


def nothing_at(out: Path):
    """OUT does not exist and no temporary sibling was left behind."""
    leftovers = [p.name for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.")]
    return not out.exists() and not leftovers


@pytest.fixture(scope="module")
def oc_sd():
    return tr.random_open_clip_state_dict(**GEOM, seed=11)


@pytest.fixture(scope="module")
def oc_dir(tmp_path_factory, oc_sd):
    return tr.write_open_clip_dir(tmp_path_factory.mktemp("oc") / "model", oc_sd, tr.open_clip_model_cfg(**GEOM),
                                  quick_gelu=True)


@pytest.fixture(scope="module")
def converted(tmp_path_factory, oc_dir):
    out = tmp_path_factory.mktemp("conv") / "ckpt"
    assert main([str(oc_dir), str(out)]) == 0
    return out


# ---- layout -----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["tiny", "ViT-B-16"])
def test_param_tree_shapes_match_the_model(name):
    from flax import nnx

    cfg = get_model_config(name)
    model_shapes = params_shapes(nnx.to_pure_dict(nnx.state(abstract_model(cfg), nnx.Param)))
    assert param_tree_shapes(cfg) == model_shapes


def test_vit_b16_open_clip_shapes_and_inference():
    cfg = get_model_config("ViT-B-16")
    shapes = expected_shapes(cfg)
    # README.md, The model names and shapes
    assert shapes["visual.conv1.weight"] == (768, 3, 16, 16)
    assert shapes["visual.positional_embedding"] == (197, 768)
    assert shapes["visual.proj"] == (768, 512) and shapes["text_projection"] == (512, 512)
    assert shapes["visual.transformer.resblocks.11.attn.in_proj_weight"] == (2304, 768)
    assert shapes["transformer.resblocks.11.mlp.c_fc.weight"] == (2048, 512)
    assert shapes["token_embedding.weight"] == (49408, 512) and shapes["logit_scale"] == ()
    assert sum(int(np.prod(s)) for s in shapes.values()) == pytest.approx(149.6e6, rel=1e-3)
    assert infer_config(shapes) == cfg  # open_clip's build_model_from_openai_state_dict rules


def test_hf_config_defaults_give_vit_b16():
    # openai/clip-vit-base-patch16's config.json as published: CLIPConfig defaults except the patch size.
    config = {"architectures": ["CLIPModel"], "model_type": "clip", "projection_dim": 512,
              "text_config": {}, "vision_config": {"patch_size": 16}}
    assert config_from_hf(config) == get_model_config("ViT-B-16")
    assert config_from_hf(config, activation="gelu").activation == "gelu"


def test_checkpoint_directory_layout(converted, oc_sd):
    assert is_checkpoint(converted)
    assert sorted(p.name for p in converted.iterdir()) == ["checksums.json", "model_config.json", "params",
                                                           "preprocess_cfg.json"]
    cfg = read_config(converted)
    assert cfg == ModelConfig.from_json((converted / "model_config.json").read_text())
    assert (cfg.vision.width, cfg.vision.heads, cfg.vision.mlp_width, cfg.text.heads, cfg.activation) == \
        (128, 4, 384, 2, "quick_gelu")
    pp = json.loads((converted / "preprocess_cfg.json").read_text())
    assert pp["mean"] == [0.48145466, 0.4578275, 0.40821073] and pp["interpolation"] == "bicubic"
    params = flat(load_params(converted, as_numpy=True))
    # spot-check the mapping against the source tensors, by hand
    np.testing.assert_array_equal(params["visual.conv1"], oc_sd["visual.conv1.weight"].numpy().transpose(2, 3, 1, 0))
    np.testing.assert_array_equal(params["visual.transformer.blocks.attn.in_proj.kernel"][1],
                                  oc_sd["visual.transformer.resblocks.1.attn.in_proj_weight"].numpy().T)
    np.testing.assert_array_equal(params["text.transformer.blocks.ln_2.scale"][0],
                                  oc_sd["transformer.resblocks.0.ln_2.weight"].numpy())
    np.testing.assert_array_equal(params["text.text_projection"], oc_sd["text_projection"].numpy())
    assert params["logit_scale"] == np.float32(2.5)


# ---- round trips ------------------------------------------------------------------------------------------

def test_export_import_round_trip_is_exact(converted, oc_sd, tmp_path):
    exported = tmp_path / "exported"
    assert main([str(converted), str(exported), "--to", "open_clip"]) == 0
    assert sorted(p.name for p in exported.iterdir()) == ["open_clip_config.json", "open_clip_model.safetensors"]
    tensors = load_safetensors_np(str(exported / "open_clip_model.safetensors"))
    assert sorted(tensors) == sorted(oc_sd)
    for k, v in oc_sd.items():  # tensor for tensor, bit for bit
        assert tensors[k].dtype == np.float32 and np.array_equal(tensors[k], v.numpy()), k
    config = json.loads((exported / "open_clip_config.json").read_text())
    assert config["quick_gelu"] is True and config["model_cfg"]["quick_gelu"] is True
    assert config["preprocess_cfg"] == {"mean": [0.48145466, 0.4578275, 0.40821073],
                                        "std": [0.26862954, 0.26130258, 0.27577711],
                                        "interpolation": "bicubic", "resize_mode": "shortest"}
    assert ModelConfig.from_open_clip(config["model_cfg"]) == read_config(converted)
    # ... and back again
    again = tmp_path / "again"
    convert(exported, again)
    assert read_config(again) == read_config(converted)
    assert_trees_equal(load_params(again, as_numpy=True), load_params(converted, as_numpy=True))


def test_export_of_a_gelu_model_and_of_a_saved_training_model(tmp_path):
    from flax import nnx

    cfg = get_model_config("tiny", activation="gelu")
    model = random_model(cfg, seed=4)
    save_checkpoint(tmp_path / "trained", model, cfg)  # what a training export writes: the nnx module
    export_open_clip(tmp_path / "trained", tmp_path / "oc")
    config = json.loads((tmp_path / "oc" / "open_clip_config.json").read_text())
    assert config["quick_gelu"] is False and config["model_cfg"]["quick_gelu"] is False
    convert(tmp_path / "oc", tmp_path / "back")
    assert read_config(tmp_path / "back") == cfg
    assert_trees_equal(load_params(tmp_path / "back", as_numpy=True),
                       jax_to_numpy(nnx.to_pure_dict(nnx.state(model, nnx.Param))))


def random_model(cfg, seed):
    """A CLIP module holding random values (cheaper than the model's own initialisation on a busy CPU)."""
    from flax import nnx

    rng = np.random.default_rng(seed)
    graphdef, state = nnx.split(abstract_model(cfg))
    nnx.replace_by_pure_dict(state, jax.tree.map(lambda s: rng.standard_normal(s.shape).astype(np.float32),
                                                 nnx.to_pure_dict(state)))
    return nnx.merge(graphdef, state)


def jax_to_numpy(tree):
    return {k: jax_to_numpy(v) if isinstance(v, dict) else np.asarray(v) for k, v in tree.items()}


@pytest.mark.parametrize("fmt", ["oc_bin", "bare_safetensors", "bare_bin", "wrapped_pt", "torchscript",
                                 "dir_without_config"])
def test_every_source_format_gives_identical_params(fmt, tmp_path):
    sd = tr.random_open_clip_state_dict(**GEOM_SD, seed=12)
    ref = tmp_path / "ref"
    save_safetensors(sd, str(tmp_path / "ref.safetensors"))
    convert(tmp_path / "ref.safetensors", ref)
    if fmt == "oc_bin":
        src = tr.write_open_clip_dir(tmp_path / "src", sd, tr.open_clip_model_cfg(**GEOM_SD), quick_gelu=True,
                                     weights="bin")
    elif fmt == "bare_safetensors":
        src = tmp_path / "ref.safetensors"
    elif fmt == "bare_bin":  # with the causal-mask buffer some open_clip forks persist (derived, dropped)
        src = tmp_path / "w.bin"
        torch.save({**sd, "attn_mask": torch.full((77, 77), float("-inf")).triu(1)}, src)
    elif fmt == "wrapped_pt":
        src = tmp_path / "epoch_7.pt"
        torch.save({"epoch": 7, "state_dict": {f"module.{k}": v for k, v in sd.items()}}, src)
    elif fmt == "torchscript":
        src = tmp_path / "openai.pt"
        tr.save_torchscript_state_dict(src, {**sd, "input_resolution": torch.tensor(32),
                                             "context_length": torch.tensor(77), "vocab_size": torch.tensor(49408)})
        assert is_torchscript(src)
    else:
        src = tmp_path / "src"
        src.mkdir()
        save_safetensors(sd, str(src / "open_clip_model.safetensors"))
    out = tmp_path / "out"
    assert main([str(src), str(out)] + (["--allow-torchscript"] if fmt == "torchscript" else [])) == 0
    assert read_config(out) == read_config(ref)
    assert_trees_equal(load_params(out, as_numpy=True), load_params(ref, as_numpy=True))


def test_plain_torch_save_zip_is_not_mistaken_for_torchscript(tmp_path):
    torch.save({"a": torch.zeros(2)}, tmp_path / "x.pt")
    assert not is_torchscript(tmp_path / "x.pt")


def test_cli_subprocess_logs_the_pickle_policy(tmp_path):
    sd = tr.random_open_clip_state_dict(**GEOM_SD, seed=13)
    torch.save(sd, tmp_path / "m.bin")
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    r = subprocess.run([sys.executable, "-m", "make_jax.convert", str(tmp_path / "m.bin"), str(tmp_path / "out"),
                        "--activation", "gelu"], capture_output=True, text=True, env=env,
                       cwd=Path(__file__).resolve().parents[1])
    assert r.returncode == 0, r.stderr
    assert "weights_only=True" in r.stderr
    assert read_config(tmp_path / "out").activation == "gelu"


# ---- refusing to overwrite, atomicity -------------------------------------------------------------------------

def test_existing_out_is_refused_then_overwritten(oc_dir, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert main([str(oc_dir), str(out)]) == 1
    assert (out / "keep.txt").read_text() == "mine"
    assert main([str(oc_dir), str(out), "--overwrite"]) == 0
    assert is_checkpoint(out) and not (out / "keep.txt").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_failure_while_writing_leaves_nothing(oc_dir, tmp_path, monkeypatch):
    def boom(self):
        raise RuntimeError("disk full")

    monkeypatch.setattr(ModelConfig, "to_json", boom)  # fails after Orbax has written params/
    out = tmp_path / "out"
    with pytest.raises(RuntimeError, match="disk full"):
        convert(oc_dir, out)
    assert nothing_at(out)


# ---- bad inputs -------------------------------------------------------------------------------------------

def _edit_oc(tmp_path, oc_sd, *, sd_edit=None, cfg_edit=None):
    sd = dict(oc_sd)
    if sd_edit:
        sd_edit(sd)
    model_cfg = tr.open_clip_model_cfg(**GEOM)
    if cfg_edit:
        cfg_edit(model_cfg)
    return tr.write_open_clip_dir(tmp_path / "bad", sd, model_cfg, quick_gelu=True)


BAD_OPEN_CLIP = {
    "missing_key": (dict(sd_edit=lambda sd: sd.pop("visual.ln_post.bias")),
                    ["missing key visual.ln_post.bias", "(128,)"]),
    "unexpected_key": (dict(sd_edit=lambda sd: sd.update({"visual.extra_thing": torch.zeros(3, 5)})),
                       ["unexpected key visual.extra_thing", "(3, 5)"]),
    "unexpected_block": (dict(sd_edit=lambda sd: sd.update({"transformer.resblocks.2.ln_1.weight": torch.ones(64)})),
                         ["unexpected key transformer.resblocks.2.ln_1.weight", "(64,)"]),
    "wrong_shape": (dict(sd_edit=lambda sd: sd.update({"text_projection": torch.zeros(64, 16)})),
                    ["text_projection", "(64, 16)", "(64, 32)"]),
    "config_contradicts_weights": (dict(cfg_edit=lambda c: c["vision_cfg"].update(width=256, head_width=64)),
                                   ["visual.conv1.weight", "(128, 3, 8, 8)", "(256, 3, 8, 8)"]),
    "config_patch_size": (dict(cfg_edit=lambda c: c["vision_cfg"].update(patch_size=16)),
                          ["visual.positional_embedding", "(17, 128)", "(5, 128)"]),
    "timm_tower": (dict(cfg_edit=lambda c: c["vision_cfg"].update(timm_model_name="vit_base_patch16_224")),
                   ["timm_model_name"]),
    "hf_text_tower": (dict(cfg_edit=lambda c: c["text_cfg"].update(hf_model_name="bert-base-uncased")),
                      ["hf_model_name"]),
    "resnet_cfg": (dict(cfg_edit=lambda c: c["vision_cfg"].update(layers=[3, 4, 6, 3])),
                   ["vision_cfg.layers"]),
}


@pytest.mark.parametrize("case", sorted(BAD_OPEN_CLIP))
def test_bad_open_clip_dir(case, oc_sd, tmp_path, capsys):
    edits, expected = BAD_OPEN_CLIP[case]
    src = _edit_oc(tmp_path, oc_sd, **edits)
    out = tmp_path / "out"
    assert main([str(src), str(out)]) == 1
    err = capsys.readouterr().err
    for s in expected:
        assert s in err, (s, err)
    assert nothing_at(out)


def test_resnet_state_dict_is_refused(tmp_path):
    sd = {"visual.conv1.weight": torch.zeros(32, 3, 3, 3), "visual.layer1.0.conv1.weight": torch.zeros(64, 32, 1, 1),
          "visual.attnpool.positional_embedding": torch.zeros(50, 2048), "text_projection": torch.zeros(512, 1024),
          "token_embedding.weight": torch.zeros(10, 512)}
    torch.save(sd, tmp_path / "RN50.bin")
    with pytest.raises(CheckpointError, match=r"ModifiedResNet.*visual\.(layer1|attnpool)"):
        convert(tmp_path / "RN50.bin", tmp_path / "out")
    assert nothing_at(tmp_path / "out")


def test_hf_state_dict_file_points_to_the_directory(tmp_path):
    save_safetensors({"vision_model.embeddings.class_embedding": torch.zeros(8)}, str(tmp_path / "model.safetensors"))
    with pytest.raises(CheckpointError, match="--format hf"):
        convert(tmp_path / "model.safetensors", tmp_path / "out")
    assert nothing_at(tmp_path / "out")


def test_pickle_with_code_is_refused(tmp_path):
    torch.save({"state_dict": {"w": torch.zeros(1)}, "obj": Path("x")}, tmp_path / "evil.pt")
    with pytest.raises(CheckpointError, match="weights_only"):
        convert(tmp_path / "evil.pt", tmp_path / "out")
    assert nothing_at(tmp_path / "out")


def test_bad_hf_dirs(tmp_path):
    from transformers import CLIPConfig

    hf_cfg = CLIPConfig(text_config=dict(hidden_size=64, intermediate_size=128, num_attention_heads=2,
                                         num_hidden_layers=1),
                        vision_config=dict(hidden_size=64, intermediate_size=128, num_attention_heads=2,
                                           num_hidden_layers=1, image_size=16, patch_size=8),
                        projection_dim=32).to_dict()
    cfg = config_from_hf(hf_cfg)
    from make_jax.checkpoint import expected_hf_shapes

    tensors = {k: torch.randn(s) for k, s in expected_hf_shapes(cfg).items()}

    def write(name, config, sd):
        d = tmp_path / name
        d.mkdir()
        (d / "config.json").write_text(json.dumps(config))
        save_safetensors(sd, str(d / "model.safetensors"))
        return d

    # the well-formed directory converts, and so does the same one with sharded weights
    assert main([str(write("good", hf_cfg, tensors)), str(tmp_path / "good_out")]) == 0
    sharded = tmp_path / "sharded"
    sharded.mkdir()
    (sharded / "config.json").write_text(json.dumps(hf_cfg))
    names = sorted(tensors)
    weight_map = {}
    for i, part in enumerate((names[::2], names[1::2])):
        fname = f"model-0000{i + 1}-of-00002.safetensors"
        save_safetensors({k: tensors[k] for k in part}, str(sharded / fname))
        weight_map.update({k: fname for k in part})
    (sharded / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    convert(sharded, tmp_path / "sharded_out")
    assert_trees_equal(load_params(tmp_path / "sharded_out", as_numpy=True),
                       load_params(tmp_path / "good_out", as_numpy=True))
    cases = {
        "proj_dim": (write("proj_dim", {**hf_cfg, "projection_dim": 16}, tensors),
                     ["visual_projection.weight", "(32, 64)", "(16, 64)"]),
        "missing_q": (write("missing_q", hf_cfg, {k: v for k, v in tensors.items()
                                                  if k != "text_model.encoder.layers.0.self_attn.q_proj.bias"}),
                      ["missing key text_model.encoder.layers.0.self_attn.q_proj.bias"]),
        "siglip": (write("siglip", {**hf_cfg, "model_type": "siglip"}, tensors), ["siglip"]),
    }
    for name, (src, expected) in cases.items():
        out = tmp_path / f"{name}_out"
        with pytest.raises(CheckpointError) as e:
            convert(src, out)
        for s in expected:
            assert s in str(e.value), (name, s, str(e.value))
        assert nothing_at(out)


def test_not_a_checkpoint(tmp_path, converted):
    with pytest.raises(CheckpointError, match="already a make_jax checkpoint"):
        convert(converted, tmp_path / "out")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="not a checkpoint directory"):
        convert(tmp_path / "empty", tmp_path / "out")
    with pytest.raises(CheckpointError, match="not a make_jax checkpoint"):
        export_open_clip(tmp_path / "empty", tmp_path / "out2")
    assert nothing_at(tmp_path / "out") and nothing_at(tmp_path / "out2")


def _write_oc_config(directory: Path, **entries):
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "open_clip_config.json").write_text(json.dumps(entries))
    return directory


BAD_SOURCES = {
    # an open_clip directory whose config is there but whose weights are not
    "no_weights_in_directory": (
        lambda d, sd: _write_oc_config(d / "noweights", model_cfg=tr.open_clip_model_cfg(**GEOM), quick_gelu=True),
        ["noweights", "none of", "open_clip_model.safetensors"]),
    "unknown_file_type": (
        lambda d, sd: (np.savez(d / "weights.npz", w=np.zeros(3)), d / "weights.npz")[1],
        ["weights.npz", "unknown weights file type '.npz'"]),
    "pickle_holding_non_tensors": (
        lambda d, sd: (torch.save({"visual.proj": torch.zeros(2, 2), "step": 3}, d / "sd.bin"), d / "sd.bin")[1],
        ["sd.bin", "entry 'step' is a int, not a tensor"]),
    "pickle_holding_a_list": (
        lambda d, sd: (torch.save([torch.zeros(2)], d / "list.pt"), d / "list.pt")[1],
        ["list.pt", "expected a state dict", "found list"]),
    "missing_model_cfg": (
        lambda d, sd: tr.write_open_clip_dir(d / "nocfg", sd, tr.open_clip_model_cfg(**GEOM), quick_gelu=True),
        ["nocfg", "open_clip_config.json", "no 'model_cfg' entry"]),
}


@pytest.mark.parametrize("case", sorted(BAD_SOURCES))
def test_bad_sources_fail_in_one_line_naming_the_file(case, oc_sd, tmp_path, capsys):
    make, expected = BAD_SOURCES[case]
    src = make(tmp_path, oc_sd)
    if case == "missing_model_cfg":  # the weights are fine; only the config lacks model_cfg
        _write_oc_config(src, preprocess_cfg={"mean": [0.5, 0.5, 0.5]})
    out = tmp_path / "out"
    assert main([str(src), str(out)]) == 1
    stderr = capsys.readouterr().err
    err = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(err) == 1 and "Traceback" not in stderr, stderr
    for s in expected:
        assert s in err[0], (s, err[0])
    assert nothing_at(out)
