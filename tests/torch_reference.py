"""PyTorch references for the checkpoint/parity tests (test-only; needs torch + transformers).

- `make_hf_clip`: a random transformers `CLIPModel` whose LayerNorm weights/biases and Linear biases are pushed away
  from 1/0 so that every tensor matters.
- `hf_to_open_clip_state_dict`: the open_clip layout of an HF CLIPModel, written here independently of
  `make_jax.checkpoint.hf_layout` (by walking the HF modules, not by name tables).
- `openclip_image` / `openclip_text`: a small, independent torch implementation of open_clip's CLIP forward
  computed directly from open_clip-layout tensors (conv1 → cls → pos → ln_pre → blocks with
  `F.multi_head_attention_forward` → ln_post → proj; text with causal mask and argmax pooling).
- `save_torchscript_state_dict`: a TorchScript archive holding a given state dict (as OpenAI's CLIP .pt files).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F


def make_hf_clip(*, image_size: int, patch_size: int, v_width: int, v_layers: int, v_heads: int, v_mlp: int,
                 t_width: int, t_layers: int, t_heads: int, t_mlp: int, embed_dim: int, activation: str,
                 seed: int = 0, vocab_size: int = 49408, context_length: int = 77, fast_init: bool = False):
    from transformers import CLIPConfig, CLIPModel

    torch.manual_seed(seed)
    hf_act = {"quick_gelu": "quick_gelu", "gelu": "gelu"}[activation]
    config = CLIPConfig(
        text_config=dict(hidden_size=t_width, intermediate_size=t_mlp, num_attention_heads=t_heads,
                         num_hidden_layers=t_layers, max_position_embeddings=context_length, vocab_size=vocab_size,
                         hidden_act=hf_act, layer_norm_eps=1e-5, eos_token_id=49407, bos_token_id=49406,
                         pad_token_id=0),
        vision_config=dict(hidden_size=v_width, intermediate_size=v_mlp, num_attention_heads=v_heads,
                           num_hidden_layers=v_layers, image_size=image_size, patch_size=patch_size,
                           hidden_act=hf_act, layer_norm_eps=1e-5),
        projection_dim=embed_dim,
    )
    config._attn_implementation = "eager"
    g = torch.Generator().manual_seed(seed + 1)
    if fast_init:
        # Full-size models: skip HF's two initialisation passes and draw every tensor once here.
        from transformers.initialization import no_init_weights

        with no_init_weights():
            model = CLIPModel(config).eval()
        with torch.no_grad():
            for name, p in model.named_parameters():
                if p.ndim >= 2:  # Linear/conv weights ~ 1/sqrt(fan_in); embeddings 0.02
                    fan_in = int(np.prod(p.shape[1:]))
                    std = 0.02 if "embedding.weight" in name and "patch" not in name else fan_in ** -0.5
                    p.copy_(std * torch.randn(p.shape, generator=g))
                elif p.ndim == 1:
                    p.copy_(0.5 * torch.randn(p.shape, generator=g) if "class_embedding" in name
                            else 0.05 * torch.randn(p.shape, generator=g))
    else:
        model = CLIPModel(config).eval()  # HF's own random initialisation
    with torch.no_grad():
        for name, mod in model.named_modules():
            if isinstance(mod, torch.nn.LayerNorm):
                mod.weight.copy_(1.0 + 0.2 * torch.randn(mod.weight.shape, generator=g))
                mod.bias.copy_(0.1 * torch.randn(mod.bias.shape, generator=g))
            elif isinstance(mod, torch.nn.Linear) and mod.bias is not None:
                mod.bias.copy_(0.05 * torch.randn(mod.bias.shape, generator=g))
        model.logit_scale.fill_(3.1)
    return model


def hf_to_open_clip_state_dict(model) -> dict[str, torch.Tensor]:
    """open_clip-layout tensors of an HF CLIPModel, by walking its modules (independent of make_jax's tables)."""
    sd: dict[str, torch.Tensor] = {}
    vm, tm = model.vision_model, model.text_model

    def blocks(layers, prefix):
        for i, layer in enumerate(layers):
            a = layer.self_attn
            p = f"{prefix}.{i}"
            sd[f"{p}.ln_1.weight"], sd[f"{p}.ln_1.bias"] = layer.layer_norm1.weight, layer.layer_norm1.bias
            sd[f"{p}.attn.in_proj_weight"] = torch.cat([a.q_proj.weight, a.k_proj.weight, a.v_proj.weight])
            sd[f"{p}.attn.in_proj_bias"] = torch.cat([a.q_proj.bias, a.k_proj.bias, a.v_proj.bias])
            sd[f"{p}.attn.out_proj.weight"], sd[f"{p}.attn.out_proj.bias"] = a.out_proj.weight, a.out_proj.bias
            sd[f"{p}.ln_2.weight"], sd[f"{p}.ln_2.bias"] = layer.layer_norm2.weight, layer.layer_norm2.bias
            sd[f"{p}.mlp.c_fc.weight"], sd[f"{p}.mlp.c_fc.bias"] = layer.mlp.fc1.weight, layer.mlp.fc1.bias
            sd[f"{p}.mlp.c_proj.weight"], sd[f"{p}.mlp.c_proj.bias"] = layer.mlp.fc2.weight, layer.mlp.fc2.bias

    sd["visual.conv1.weight"] = vm.embeddings.patch_embedding.weight
    sd["visual.class_embedding"] = vm.embeddings.class_embedding
    sd["visual.positional_embedding"] = vm.embeddings.position_embedding.weight
    sd["visual.ln_pre.weight"], sd["visual.ln_pre.bias"] = vm.pre_layrnorm.weight, vm.pre_layrnorm.bias
    blocks(vm.encoder.layers, "visual.transformer.resblocks")
    sd["visual.ln_post.weight"], sd["visual.ln_post.bias"] = vm.post_layernorm.weight, vm.post_layernorm.bias
    sd["visual.proj"] = model.visual_projection.weight.t()
    sd["token_embedding.weight"] = tm.embeddings.token_embedding.weight
    sd["positional_embedding"] = tm.embeddings.position_embedding.weight
    blocks(tm.encoder.layers, "transformer.resblocks")
    sd["ln_final.weight"], sd["ln_final.bias"] = tm.final_layer_norm.weight, tm.final_layer_norm.bias
    sd["text_projection"] = model.text_projection.weight.t()
    sd["logit_scale"] = model.logit_scale
    return {k: v.detach().clone().contiguous() for k, v in sd.items()}


# ---- independent open_clip forward ------------------------------------------------------------------------

def _act(name):
    if name == "quick_gelu":
        return lambda x: x * torch.sigmoid(1.702 * x)
    return lambda x: F.gelu(x)  # exact erf GELU


def _ln(sd, name, x, eps):
    return F.layer_norm(x, x.shape[-1:], sd[f"{name}.weight"], sd[f"{name}.bias"], eps)


def _blocks(sd, prefix, x, heads, act, attn_mask, eps):
    """x: (B, T, D). open_clip's ResidualAttentionBlock, with torch's own multi-head attention kernel."""
    n_layers = len({k.split(".")[len(prefix.split("."))] for k in sd if k.startswith(prefix + ".")})
    d = x.shape[-1]
    for i in range(n_layers):
        p = f"{prefix}.{i}"
        h = _ln(sd, f"{p}.ln_1", x, eps).transpose(0, 1)  # (T, B, D)
        a, _ = F.multi_head_attention_forward(
            h, h, h, d, heads, sd[f"{p}.attn.in_proj_weight"], sd[f"{p}.attn.in_proj_bias"], None, None, False,
            0.0, sd[f"{p}.attn.out_proj.weight"], sd[f"{p}.attn.out_proj.bias"], training=False,
            need_weights=False, attn_mask=attn_mask)
        x = x + a.transpose(0, 1)
        h = _ln(sd, f"{p}.ln_2", x, eps)
        h = F.linear(act(F.linear(h, sd[f"{p}.mlp.c_fc.weight"], sd[f"{p}.mlp.c_fc.bias"])),
                     sd[f"{p}.mlp.c_proj.weight"], sd[f"{p}.mlp.c_proj.bias"])
        x = x + h
    return x


def openclip_image(sd, images_nhwc: np.ndarray, heads: int, activation: str, eps: float = 1e-5,
                   dtype=torch.float64):
    """→ (pooled (B,E), patches (B,P,E)), both L2-normalised, as numpy."""
    sd = {k: v.to(dtype) for k, v in sd.items()}
    x = torch.from_numpy(np.asarray(images_nhwc)).to(dtype).permute(0, 3, 1, 2)
    w = sd["visual.conv1.weight"]
    x = F.conv2d(x, w, stride=w.shape[-1])  # (B, W, g, g)
    x = x.flatten(2).transpose(1, 2)
    cls = sd["visual.class_embedding"].expand(x.shape[0], 1, -1)
    x = torch.cat([cls, x], 1) + sd["visual.positional_embedding"]
    x = _ln(sd, "visual.ln_pre", x, eps)
    x = _blocks(sd, "visual.transformer.resblocks", x, heads, _act(activation), None, eps)
    x = _ln(sd, "visual.ln_post", x, eps) @ sd["visual.proj"]
    return (F.normalize(x[:, 0], dim=-1).numpy(), F.normalize(x[:, 1:], dim=-1).numpy())


def openclip_text(sd, ids: np.ndarray, heads: int, activation: str, eps: float = 1e-5, dtype=torch.float64):
    """→ (M, E) L2-normalised, as numpy."""
    sd = {k: v.to(dtype) for k, v in sd.items()}
    ids = torch.from_numpy(np.asarray(ids, np.int64))
    length = ids.shape[1]
    x = sd["token_embedding.weight"][ids] + sd["positional_embedding"][:length]
    mask = torch.full((length, length), float("-inf"), dtype=dtype).triu_(1)
    x = _blocks(sd, "transformer.resblocks", x, heads, _act(activation), mask, eps)
    x = _ln(sd, "ln_final", x, eps)
    pooled = x[torch.arange(x.shape[0]), ids.argmax(-1)] @ sd["text_projection"]
    return F.normalize(pooled, dim=-1).numpy()


def hf_features(model, images_nhwc: np.ndarray, ids: np.ndarray):
    """HF's own forward: (image (B,E), patches (B,P,E), text (M,E)), all L2-normalised numpy float32.
    HF does not post-LN patch tokens: patches = post_layernorm(last_hidden_state[:, 1:]) @ visual_projection.T."""
    with torch.no_grad():
        pix = torch.from_numpy(np.asarray(images_nhwc, np.float32)).permute(0, 3, 1, 2).contiguous()
        vout = model.vision_model(pixel_values=pix)
        pooled = model.visual_projection(vout.pooler_output)
        patches = model.visual_projection(model.vision_model.post_layernorm(vout.last_hidden_state[:, 1:]))
        text = model.get_text_features(input_ids=torch.from_numpy(np.asarray(ids, np.int64))).pooler_output
    return tuple(F.normalize(t, dim=-1).numpy() for t in (pooled, patches, text))


# ---- writers ------------------------------------------------------------------------------------------------

def open_clip_model_cfg(*, image_size, patch_size, v_width, v_layers, v_heads, v_mlp, t_width, t_layers, t_heads,
                        t_mlp, embed_dim, vocab_size=49408, context_length=77) -> dict:
    """open_clip `model_cfg` written by hand (independent of ModelConfig.to_open_clip)."""
    return {
        "embed_dim": embed_dim,
        "vision_cfg": {"image_size": image_size, "layers": v_layers, "width": v_width, "patch_size": patch_size,
                       "head_width": v_width // v_heads, "mlp_ratio": v_mlp / v_width},
        "text_cfg": {"context_length": context_length, "vocab_size": vocab_size, "width": t_width,
                     "heads": t_heads, "layers": t_layers, "mlp_ratio": t_mlp / t_width},
    }


def write_open_clip_dir(path: Path, sd: dict[str, torch.Tensor], model_cfg: dict, quick_gelu: bool,
                        weights: str = "safetensors") -> Path:
    path.mkdir(parents=True, exist_ok=True)
    cfg = {"model_cfg": {**model_cfg, "quick_gelu": quick_gelu},
           "preprocess_cfg": {"mean": [0.48145466, 0.4578275, 0.40821073],
                              "std": [0.26862954, 0.26130258, 0.27577711]}}
    (path / "open_clip_config.json").write_text(json.dumps(cfg))
    if weights == "safetensors":
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in sd.items()}, str(path / "open_clip_model.safetensors"))
    else:
        torch.save(sd, path / "open_clip_pytorch_model.bin")
    return path


class _Node(torch.nn.Module):
    pass


class _Root(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def save_torchscript_state_dict(path: Path, sd: dict[str, torch.Tensor]) -> Path:
    """A TorchScript archive whose state_dict() is `sd` (float tensors as parameters, others as buffers)."""
    root = _Root()
    for key, value in sd.items():
        *parents, leaf = key.split(".")
        mod = root
        for p in parents:
            if not hasattr(mod, p):
                mod.add_module(p, _Node())
            mod = getattr(mod, p)
        if value.is_floating_point():
            mod.register_parameter(leaf, torch.nn.Parameter(value.clone(), requires_grad=False))
        else:
            mod.register_buffer(leaf, value.clone())
    torch.jit.script(root).save(str(path))
    return path


def rel_err(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def random_open_clip_state_dict(*, image_size, patch_size, v_width, v_layers, v_mlp, t_width, t_layers, t_mlp,
                                embed_dim, vocab_size=49408, context_length=77, seed=0, **_) -> dict:
    """Random open_clip-layout CLIP tensors (names and shapes written out here, independently of make_jax)."""
    g = torch.Generator().manual_seed(seed)

    def r(*shape, scale=0.1):
        return scale * torch.randn(shape, generator=g)

    def blocks(prefix, w, hidden, layers):
        for i in range(layers):
            p = f"{prefix}.{i}"
            yield from {
                f"{p}.ln_1.weight": 1 + r(w), f"{p}.ln_1.bias": r(w),
                f"{p}.attn.in_proj_weight": r(3 * w, w), f"{p}.attn.in_proj_bias": r(3 * w),
                f"{p}.attn.out_proj.weight": r(w, w), f"{p}.attn.out_proj.bias": r(w),
                f"{p}.ln_2.weight": 1 + r(w), f"{p}.ln_2.bias": r(w),
                f"{p}.mlp.c_fc.weight": r(hidden, w), f"{p}.mlp.c_fc.bias": r(hidden),
                f"{p}.mlp.c_proj.weight": r(w, hidden), f"{p}.mlp.c_proj.bias": r(w),
            }.items()

    grid = image_size // patch_size
    sd = {
        "visual.conv1.weight": r(v_width, 3, patch_size, patch_size),
        "visual.class_embedding": r(v_width),
        "visual.positional_embedding": r(grid * grid + 1, v_width),
        "visual.ln_pre.weight": 1 + r(v_width), "visual.ln_pre.bias": r(v_width),
        **dict(blocks("visual.transformer.resblocks", v_width, v_mlp, v_layers)),
        "visual.ln_post.weight": 1 + r(v_width), "visual.ln_post.bias": r(v_width),
        "visual.proj": r(v_width, embed_dim),
        "token_embedding.weight": r(vocab_size, t_width),
        "positional_embedding": r(context_length, t_width),
        **dict(blocks("transformer.resblocks", t_width, t_mlp, t_layers)),
        "ln_final.weight": 1 + r(t_width), "ln_final.bias": r(t_width),
        "text_projection": r(t_width, embed_dim),
        "logit_scale": torch.tensor(2.5),
    }
    return sd
