"""Hugging Face `CLIPModel` (transformers) → open_clip state-dict layout, and `ModelConfig` from its config.json.

The two hold the same tensors under other names:

| Hugging Face                                                    | open_clip                                        |
|-----------------------------------------------------------------|--------------------------------------------------|
| vision_model.embeddings.patch_embedding.weight (W,3,p,p)        | visual.conv1.weight                              |
| vision_model.embeddings.class_embedding (W,)                    | visual.class_embedding                           |
| vision_model.embeddings.position_embedding.weight (1+P,W)       | visual.positional_embedding                      |
| vision_model.pre_layrnorm.* (sic)                               | visual.ln_pre.*                                  |
| vision_model.encoder.layers.{i}.self_attn.{q,k,v}_proj.*        | visual.transformer.resblocks.{i}.attn.in_proj_*  |
| ....self_attn.out_proj.* / layer_norm1.* / layer_norm2.*        | ....attn.out_proj.* / ln_1.* / ln_2.*            |
| ....mlp.fc1.* / mlp.fc2.*                                       | ....mlp.c_fc.* / mlp.c_proj.*                    |
| vision_model.post_layernorm.*                                   | visual.ln_post.*                                 |
| visual_projection.weight (E,W), no bias                         | visual.proj (W,E) = weight.T                     |
| text_model.embeddings.token_embedding.weight                    | token_embedding.weight                           |
| text_model.embeddings.position_embedding.weight                 | positional_embedding                             |
| text_model.encoder.layers.{i}.*                                 | transformer.resblocks.{i}.*                      |
| text_model.final_layer_norm.*                                   | ln_final.*                                       |
| text_projection.weight (E,W), no bias                           | text_projection (W,E) = weight.T                 |
| logit_scale                                                     | logit_scale                                      |

q, k, v are concatenated row-wise into in_proj ([q; k; v], as nn.MultiheadAttention). HF's attention scales q by
head_dim**-0.5 exactly as nn.MultiheadAttention does, and its text tower pools the
first EOT token (or argmax of the ids for legacy configs with eos_token_id 2) — the same token as open_clip's
argmax for ids from the CLIP tokenizer, whose EOT 49407 is the largest id.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from make_jax.checkpoint.open_clip_layout import CheckpointError
from make_jax.models.config import ModelConfig, TextConfig, VisionConfig

# transformers' CLIPTextConfig / CLIPVisionConfig defaults, for config.json files that omit a field.
_HF_TEXT_DEFAULTS = dict(hidden_size=512, intermediate_size=2048, num_attention_heads=8, num_hidden_layers=12,
                         max_position_embeddings=77, vocab_size=49408, hidden_act="quick_gelu", layer_norm_eps=1e-5)
_HF_VISION_DEFAULTS = dict(hidden_size=768, intermediate_size=3072, num_attention_heads=12, num_hidden_layers=12,
                           image_size=224, patch_size=32, num_channels=3, hidden_act="quick_gelu",
                           layer_norm_eps=1e-5)
_HF_ACT = {"quick_gelu": "quick_gelu", "gelu": "gelu"}

# Buffers that older HF checkpoints persisted; not parameters.
_HF_IGNORED_SUFFIXES = ("embeddings.position_ids",)

# Per-layer names: HF suffix → open_clip suffix (q/k/v handled separately).
_HF_BLOCK = {
    "layer_norm1.weight": "ln_1.weight", "layer_norm1.bias": "ln_1.bias",
    "self_attn.out_proj.weight": "attn.out_proj.weight", "self_attn.out_proj.bias": "attn.out_proj.bias",
    "layer_norm2.weight": "ln_2.weight", "layer_norm2.bias": "ln_2.bias",
    "mlp.fc1.weight": "mlp.c_fc.weight", "mlp.fc1.bias": "mlp.c_fc.bias",
    "mlp.fc2.weight": "mlp.c_proj.weight", "mlp.fc2.bias": "mlp.c_proj.bias",
}
_HF_TOP = {  # HF name → (open_clip name, transpose?)
    "vision_model.embeddings.patch_embedding.weight": ("visual.conv1.weight", False),
    "vision_model.embeddings.class_embedding": ("visual.class_embedding", False),
    "vision_model.embeddings.position_embedding.weight": ("visual.positional_embedding", False),
    "vision_model.pre_layrnorm.weight": ("visual.ln_pre.weight", False),
    "vision_model.pre_layrnorm.bias": ("visual.ln_pre.bias", False),
    "vision_model.post_layernorm.weight": ("visual.ln_post.weight", False),
    "vision_model.post_layernorm.bias": ("visual.ln_post.bias", False),
    "visual_projection.weight": ("visual.proj", True),
    "text_model.embeddings.token_embedding.weight": ("token_embedding.weight", False),
    "text_model.embeddings.position_embedding.weight": ("positional_embedding", False),
    "text_model.final_layer_norm.weight": ("ln_final.weight", False),
    "text_model.final_layer_norm.bias": ("ln_final.bias", False),
    "text_projection.weight": ("text_projection", True),
    "logit_scale": ("logit_scale", False),
}
_HF_TOWERS = {"visual": ("vision_model.encoder.layers", "visual.transformer.resblocks"),
              "text": ("text_model.encoder.layers", "transformer.resblocks")}


def config_from_hf(config: Mapping[str, Any], activation: str | None = None) -> ModelConfig:
    """`ModelConfig` from a transformers `CLIPModel` config.json dict (missing fields take CLIPConfig defaults).

    `activation` overrides the config's `hidden_act` ("quick_gelu" or "gelu" = exact erf GELU)."""
    model_type = config.get("model_type", "clip")
    archs = config.get("architectures") or []
    if model_type != "clip" or any(a not in ("CLIPModel",) for a in archs):
        raise CheckpointError(f"unsupported Hugging Face architecture: model_type {model_type!r}, architectures "
                              f"{archs}; only CLIPModel (model_type 'clip') is supported")
    tc = {**_HF_TEXT_DEFAULTS, **(config.get("text_config") or {})}
    vc = {**_HF_VISION_DEFAULTS, **(config.get("vision_config") or {})}
    if int(vc["num_channels"]) != 3:
        raise CheckpointError(f"vision_config.num_channels {vc['num_channels']} != 3")
    acts = {tc["hidden_act"], vc["hidden_act"]}
    if activation is None:
        if len(acts) != 1 or next(iter(acts)) not in _HF_ACT:
            raise CheckpointError(f"unsupported hidden_act (text {tc['hidden_act']!r}, vision {vc['hidden_act']!r}); "
                                  "supported: both 'quick_gelu' or both 'gelu' (or pass --activation)")
        activation = _HF_ACT[next(iter(acts))]
    eps = {float(tc["layer_norm_eps"]), float(vc["layer_norm_eps"])}
    if len(eps) != 1:
        raise CheckpointError(f"text and vision layer_norm_eps differ ({tc['layer_norm_eps']} vs "
                              f"{vc['layer_norm_eps']}); one epsilon for both towers is supported")
    v_width, t_width = int(vc["hidden_size"]), int(tc["hidden_size"])
    vision = VisionConfig(image_size=int(vc["image_size"]), patch_size=int(vc["patch_size"]), width=v_width,
                          layers=int(vc["num_hidden_layers"]), heads=int(vc["num_attention_heads"]),
                          mlp_ratio=int(vc["intermediate_size"]) / v_width)
    text = TextConfig(context_length=int(tc["max_position_embeddings"]), vocab_size=int(tc["vocab_size"]),
                      width=t_width, layers=int(tc["num_hidden_layers"]), heads=int(tc["num_attention_heads"]),
                      mlp_ratio=int(tc["intermediate_size"]) / t_width)
    return ModelConfig(embed_dim=int(config.get("projection_dim", 512)), vision=vision, text=text,
                       activation=activation, ln_eps=eps.pop())


def expected_hf_shapes(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    """HF CLIPModel state dict (name → shape) of the network `cfg` describes (parameters only)."""
    v, t, e = cfg.vision, cfg.text, cfg.embed_dim
    shapes = {
        "vision_model.embeddings.patch_embedding.weight": (v.width, 3, v.patch_size, v.patch_size),
        "vision_model.embeddings.class_embedding": (v.width,),
        "vision_model.embeddings.position_embedding.weight": (v.num_patches + 1, v.width),
        "vision_model.pre_layrnorm.weight": (v.width,), "vision_model.pre_layrnorm.bias": (v.width,),
        "vision_model.post_layernorm.weight": (v.width,), "vision_model.post_layernorm.bias": (v.width,),
        "visual_projection.weight": (e, v.width),
        "text_model.embeddings.token_embedding.weight": (t.vocab_size, t.width),
        "text_model.embeddings.position_embedding.weight": (t.context_length, t.width),
        "text_model.final_layer_norm.weight": (t.width,), "text_model.final_layer_norm.bias": (t.width,),
        "text_projection.weight": (e, t.width),
        "logit_scale": (),
    }
    for tower, tcfg in (("visual", v), ("text", t)):
        prefix = _HF_TOWERS[tower][0]
        w, h = tcfg.width, tcfg.mlp_width
        per = {"self_attn.q_proj.weight": (w, w), "self_attn.q_proj.bias": (w,),
               "self_attn.k_proj.weight": (w, w), "self_attn.k_proj.bias": (w,),
               "self_attn.v_proj.weight": (w, w), "self_attn.v_proj.bias": (w,),
               "self_attn.out_proj.weight": (w, w), "self_attn.out_proj.bias": (w,),
               "layer_norm1.weight": (w,), "layer_norm1.bias": (w,),
               "layer_norm2.weight": (w,), "layer_norm2.bias": (w,),
               "mlp.fc1.weight": (h, w), "mlp.fc1.bias": (h,), "mlp.fc2.weight": (w, h), "mlp.fc2.bias": (w,)}
        for i in range(tcfg.layers):
            for k, s in per.items():
                shapes[f"{prefix}.{i}.{k}"] = s
    return shapes


def hf_to_open_clip(sd: Mapping[str, Any], cfg: ModelConfig) -> dict[str, np.ndarray]:
    """HF CLIPModel state dict → open_clip state dict (numpy, dtype kept). Raises `CheckpointError` naming every
    missing/unexpected key and shape mismatch (both shapes) against `cfg`."""
    sd = {k: v for k, v in sd.items() if not k.endswith(_HF_IGNORED_SUFFIXES)}
    expected = expected_hf_shapes(cfg)
    missing = [k for k in expected if k not in sd]
    unexpected = sorted(k for k in sd if k not in expected)
    wrong = [(k, tuple(np.shape(sd[k])), expected[k]) for k in expected
             if k in sd and tuple(np.shape(sd[k])) != expected[k]]
    if missing or unexpected or wrong:
        lines = ["Hugging Face checkpoint does not match its config.json:"]
        lines += [f"  {k}: shape {s} in the weights, config.json expects {x}" for k, s, x in wrong]
        lines += [f"  missing key {k} (expected shape {expected[k]})" for k in missing]
        lines += [f"  unexpected key {k} (shape {tuple(np.shape(sd[k]))})" for k in unexpected]
        raise CheckpointError("\n".join(lines))

    out: dict[str, np.ndarray] = {}
    for hf_name, (oc_name, transpose) in _HF_TOP.items():
        x = np.asarray(sd[hf_name])
        out[oc_name] = np.ascontiguousarray(x.T) if transpose else x
    for tower, tcfg in (("visual", cfg.vision), ("text", cfg.text)):
        hf_prefix, oc_prefix = _HF_TOWERS[tower]
        for i in range(tcfg.layers):
            hp, op = f"{hf_prefix}.{i}", f"{oc_prefix}.{i}"
            out[f"{op}.attn.in_proj_weight"] = np.concatenate(
                [np.asarray(sd[f"{hp}.self_attn.{n}_proj.weight"]) for n in "qkv"], axis=0)
            out[f"{op}.attn.in_proj_bias"] = np.concatenate(
                [np.asarray(sd[f"{hp}.self_attn.{n}_proj.bias"]) for n in "qkv"], axis=0)
            for hs, os_ in _HF_BLOCK.items():
                out[f"{op}.{os_}"] = np.asarray(sd[f"{hp}.{hs}"])
    return out
