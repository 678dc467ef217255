"""Model properties that the PyTorch parity tests do not cover: geometry, numerics switches, config handling.

Parity of the forward pass itself against PyTorch references is in tests/test_parity_torch.py.
"""

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from make_jax.models import CLIP, ModelConfig, abstract_model, count_params, create_model, get_model_config
from make_jax.models.transformer import quick_gelu


def _rel(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return np.linalg.norm(a - b) / np.linalg.norm(b)


def _inputs(cfg, b=3, m=4, seed=0):
    rng = np.random.default_rng(seed)
    size = cfg.vision.image_size
    images = jnp.asarray(rng.normal(size=(b, size, size, 3)), jnp.float32)
    ids = np.zeros((m, cfg.text.context_length), np.int32)
    for r in range(m):
        n = 3 + 5 * r
        ids[r, 0] = 49406
        ids[r, 1:n] = rng.integers(1, 49000, size=n - 1)
        ids[r, n] = 49407
    return images, jnp.asarray(ids)


def test_vit_b16_parameter_count_matches_spec():
    # README.md, The model: 149.6 M parameters in all, 86.2 M in the image tower.
    model = abstract_model(get_model_config("ViT-B-16"))
    total = count_params(model)
    image = sum(x.size for x in jax.tree.leaves(nnx.state(model.visual, nnx.Param)))
    assert round(total / 1e6, 1) == 149.6
    assert round(image / 1e6, 1) == 86.2


def test_output_norms_and_patch_count():
    cfg = get_model_config("tiny")
    model = create_model(cfg)
    images, ids = _inputs(cfg)
    out, text = model(images, ids)
    assert out.embedding.shape == (3, cfg.embed_dim)
    assert out.patches.shape == (3, cfg.vision.num_patches, cfg.embed_dim)
    np.testing.assert_allclose(np.linalg.norm(out.embedding, axis=-1), 1.0, atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(out.patches, axis=-1), 1.0, atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(text, axis=-1), 1.0, atol=1e-6)
    # Patches are distinct tokens, not copies of CLS.
    assert np.min(np.abs(np.asarray(out.patches) - np.asarray(out.embedding)[:, None]).max(-1)) > 1e-3


def test_text_embedding_independent_of_trailing_padding():
    # docs/training.md: causal attention + EOT pooling make a text's embedding independent of padding after it, so
    # texts can run at the shortest context that holds them.
    cfg = get_model_config("tiny")
    model = create_model(cfg)
    _, ids = _inputs(cfg)
    full = model.encode_text(ids)
    longest = int(np.max(np.argmax(np.asarray(ids), axis=1))) + 1
    short = model.encode_text(ids[:, :longest])
    np.testing.assert_allclose(short, full, atol=2e-6)
    # ...and a change *before* the EOT does change it (the test can fail).
    changed = ids.at[0, 1].set(ids[0, 1] + 1)
    assert _rel(model.encode_text(changed)[0], full[0]) > 1e-4


def test_text_pooling_reads_the_eot_position():
    # Tokens after EOT are invisible; tokens before are not. Putting non-zero junk after EOT must not matter.
    cfg = get_model_config("tiny")
    model = create_model(cfg)
    _, ids = _inputs(cfg)
    junk = np.asarray(ids).copy()
    eot = np.argmax(junk, axis=1)
    for r, e in enumerate(eot):
        junk[r, e + 1:] = 7  # smaller than EOT so argmax still finds the EOT
    np.testing.assert_allclose(model.encode_text(jnp.asarray(junk)), model.encode_text(ids), atol=2e-6)


def _count_primitive(jaxpr, name: str) -> int:
    """Equations named `name` in `jaxpr` and every sub-jaxpr (scan bodies, pjit, custom rules)."""
    n = 0
    for eqn in jaxpr.eqns:
        n += eqn.primitive.name == name
        for value in eqn.params.values():
            for sub in value if isinstance(value, (list, tuple)) else (value,):
                inner = getattr(sub, "jaxpr", sub)  # ClosedJaxpr -> Jaxpr
                if hasattr(inner, "eqns"):
                    n += _count_primitive(inner, name)
    return n


def test_remat_recomputes_the_blocks_of_the_chosen_towers():
    # Rematerialisation is visible in the backward program: the block's matmuls are run again there. Count the
    # dot_general equations in the gradient program of each tower; a remat tower has more of them than the
    # same tower without remat, a tower left alone has exactly as many (a no-op jax.checkpoint, or remat put on
    # the wrong tower, fails here: gradients alone cannot tell, they are equal either way).
    cfg = get_model_config("tiny")
    images, ids = _inputs(cfg, b=2, m=2)

    def backward_matmuls(remat):
        graphdef, state = nnx.split(create_model(cfg.replace(remat=remat), seed=1))
        image_loss = lambda st: jnp.sum(nnx.merge(graphdef, st).encode_image(images))
        text_loss = lambda st: jnp.sum(nnx.merge(graphdef, st).encode_text(ids))
        return tuple(_count_primitive(jax.make_jaxpr(jax.grad(f))(state).jaxpr, "dot_general")
                     for f in (image_loss, text_loss))

    plain_image, plain_text = backward_matmuls(False)
    counts = {remat: backward_matmuls(remat) for remat in (True, "vision", "text")}
    assert counts[True][0] > plain_image and counts[True][1] > plain_text
    assert counts["vision"] == (counts[True][0], plain_text)
    assert counts["text"] == (plain_image, counts[True][1])


def test_remat_gives_same_values_and_gradients():
    cfg = get_model_config("tiny")
    images, ids = _inputs(cfg)

    def loss_fn(model):
        out, text = model(images, ids)
        return jnp.sum(out.embedding @ text.T) + jnp.sum(out.patches[:, :, 0])

    grads = {}
    for remat in (False, True):
        graphdef, state = nnx.split(create_model(cfg.replace(remat=remat), seed=1))
        # Jitted (one program per setting) rather than run op by op: the same gradients, and the remat program
        # keeps its recomputation (the test above counts it in the jaxpr).
        grad_fn = jax.jit(jax.grad(lambda st: loss_fn(nnx.merge(graphdef, st))))
        grads[remat] = grad_fn(state)
    # Equal bit for bit under XLA's defaults; under the suite's flags (tests/conftest.py) the two programs fuse
    # differently and round apart by up to 3.8e-6 (1.3e-6 past rtol), measured.
    for a, b in zip(jax.tree.leaves(grads[False]), jax.tree.leaves(grads[True])):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=3e-6)
    with pytest.raises(ValueError, match="remat"):
        cfg.replace(remat="both")


def test_bfloat16_compute_is_close_to_float32_and_keeps_float32_params():
    cfg = get_model_config("tiny")
    images, ids = _inputs(cfg)
    m32 = create_model(cfg, seed=2)
    m16 = create_model(cfg.replace(dtype="bfloat16"), seed=2)
    for leaf in jax.tree.leaves(nnx.state(m16, nnx.Param)):
        assert leaf.dtype == jnp.float32
    out32, t32 = m32(images, ids)
    out16, t16 = m16(images, ids)
    assert out16.embedding.dtype == jnp.float32  # embeddings for the loss are float32
    assert _rel(out16.embedding, out32.embedding) < 3e-2
    assert _rel(out16.patches, out32.patches) < 3e-2
    assert _rel(t16, t32) < 3e-2
    assert _rel(out16.embedding, out32.embedding) > 0  # bf16 really ran


def test_explicit_xla_attention_equals_auto():
    cfg = get_model_config("tiny")
    images, ids = _inputs(cfg)
    a = create_model(cfg, seed=3)
    b = create_model(cfg.replace(attention="xla"), seed=3)
    np.testing.assert_allclose(a.encode_image(images), b.encode_image(images), atol=1e-6)
    np.testing.assert_allclose(a.encode_text(ids), b.encode_text(ids), atol=1e-6)


def test_activations():
    x = jnp.linspace(-4, 4, 101)
    np.testing.assert_allclose(quick_gelu(x), x / (1 + np.exp(-1.702 * np.asarray(x))), rtol=1e-6, atol=1e-7)
    # "gelu" must be the exact erf form, not jax.nn.gelu's default tanh approximation.
    from math import erf, sqrt
    cfg = get_model_config("tiny", activation="gelu")
    model = create_model(cfg)
    exact = np.array([v * 0.5 * (1 + erf(v / sqrt(2))) for v in np.asarray(x, np.float64)])
    np.testing.assert_allclose(model.visual.transformer.blocks.mlp.act(x), exact, rtol=1e-5, atol=1e-6)
    assert np.max(np.abs(np.asarray(jax.nn.gelu(x, approximate=True)) - exact)) > 1e-4


def test_open_clip_initialisation_statistics():
    # open_clip TextTransformer.init_parameters and VisionTransformer's scale = width**-0.5.
    cfg = get_model_config("small")
    model = create_model(cfg, seed=4)
    t, v = cfg.text, cfg.vision
    text = model.text
    assert abs(np.std(text.token_embedding[...]) - 0.02) < 0.002
    assert abs(np.std(text.positional_embedding[...]) - 0.01) < 0.001
    blocks = text.transformer.blocks
    assert abs(np.std(blocks.attn.in_proj.kernel[...]) - t.width ** -0.5) / t.width ** -0.5 < 0.05
    proj_std = t.width ** -0.5 * (2 * t.layers) ** -0.5
    assert abs(np.std(blocks.attn.out_proj.kernel[...]) - proj_std) / proj_std < 0.05
    assert abs(np.std(blocks.mlp.c_fc.kernel[...]) - (2 * t.width) ** -0.5) / (2 * t.width) ** -0.5 < 0.05
    assert abs(np.std(model.visual.proj[...]) - v.width ** -0.5) / v.width ** -0.5 < 0.05
    np.testing.assert_allclose(model.logit_scale[...], np.log(1 / 0.07), rtol=1e-6)
    # Layers are initialised independently, not copies of one another.
    k = np.asarray(blocks.attn.in_proj.kernel[...])
    assert not np.allclose(k[0], k[1])


def test_a_seed_gives_the_values_of_flax_rngs():
    # create_model draws its keys from ParamKeys (make_jax/models/keys.py: a Python count, cheap under a trace);
    # the keys, so the initial values, must be flax's nnx.Rngs(params=seed) sequence, in the same order: a seed
    # gives the model it gave before, for both text towers.
    tiny = get_model_config("tiny")
    bert = tiny.replace(text=dataclasses.replace(tiny.text, tower="bert", tokenizer="wordpiece", vocab_file="v.txt",
                                                 vocab_size=100))
    for cfg in (tiny, bert):
        ours = jax.tree_util.tree_leaves_with_path(nnx.to_pure_dict(nnx.state(create_model(cfg, seed=5))))
        flax_rngs = jax.tree.leaves(nnx.to_pure_dict(nnx.state(CLIP(cfg, rngs=nnx.Rngs(params=5)))))
        assert len(ours) == len(flax_rngs) > 30
        for (path, a), b in zip(ours, flax_rngs):
            assert np.array_equal(a, b), (cfg.text.tower, jax.tree_util.keystr(path))


def test_config_json_round_trip_and_open_clip_form():
    cfg = get_model_config("ViT-B-16", dtype="bfloat16", remat=True)
    assert ModelConfig.from_json(cfg.to_json()) == cfg
    # open_clip's own ViT-B-16 model_cfg (open_clip/model_configs/ViT-B-16.json) and its -quickgelu variant.
    oc = {"embed_dim": 512,
          "vision_cfg": {"image_size": 224, "layers": 12, "width": 768, "patch_size": 16},
          "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 512, "heads": 8, "layers": 12}}
    assert ModelConfig.from_open_clip(oc, quick_gelu=True) == get_model_config("ViT-B-16")
    assert ModelConfig.from_open_clip(oc).activation == "gelu"
    back = ModelConfig.from_open_clip(json.loads(json.dumps(get_model_config("tiny").to_open_clip())))
    assert back == get_model_config("tiny")


@pytest.mark.parametrize("bad, key", [
    ({"vision_cfg": {"timm_model_name": "vit_base_patch16_224"}}, "vision_cfg.timm_model_name"),
    ({"vision_cfg": {"layers": [3, 4, 6, 3]}}, "vision_cfg.layers"),
    ({"text_cfg": {"hf_model_name": "bert-base-uncased"}}, "text_cfg.hf_model_name"),
    ({"text_cfg": {"pool_type": "last"}}, "text_cfg.pool_type"),
])
def test_unsupported_open_clip_architectures_are_named(bad, key):
    with pytest.raises(ValueError, match=key.replace(".", r"\.")):
        ModelConfig.from_open_clip(bad)


def test_bad_config_values_are_rejected():
    with pytest.raises(ValueError, match="activation"):
        get_model_config("tiny", activation="relu")
    with pytest.raises(ValueError, match="divisible"):
        get_model_config("tiny").replace(text=get_model_config("tiny").text.__class__(width=65, heads=4))
    with pytest.raises(ValueError, match="unknown model size"):
        get_model_config("ViT-H-14")
    with pytest.raises(ValueError, match="unknown ModelConfig fields"):
        ModelConfig.from_dict({"embed_dim": 8, "colour": "red"})
