"""open_clip's state-dict layout ⇄ the NNX parameter tree of `make_jax.models.CLIP` (pure name/shape mapping).

open_clip (and OpenAI's original CLIP) name the tensors of the ViT + text-transformer CLIP as in README.md, The model:
`visual.conv1.weight` (W,3,p,p), `visual.transformer.resblocks.{i}.attn.in_proj_weight` (3W,W), ...,
`token_embedding.weight`, `transformer.resblocks.{i}.*`, `ln_final.*`, `text_projection` (W,E), `logit_scale`.

The NNX tree (`nnx.state(model, nnx.Param).to_pure_dict()`) mirrors those names, with three differences:
Linear weights (out,in) become kernels (in,out); the conv weight OIHW becomes HWIO; LayerNorm `weight` becomes
`scale`; and the L blocks of each tower are stacked on a leading (L,) axis under `transformer.blocks`.
`proj` and `text_projection` are used as x @ P in both, so they are not transposed.

Everything here works on numpy arrays (or anything with `.shape`); nothing imports torch or jax.
"""

from __future__ import annotations

import re
from typing import Any, Callable, Mapping

import numpy as np

from make_jax.errors import InputError
from make_jax.models.config import ModelConfig, TextConfig, VisionConfig


class CheckpointError(InputError):
    """A checkpoint that cannot be converted: unknown architecture, missing/unexpected keys, wrong shapes."""


# Per-block tensors: (open_clip suffix, path inside `transformer.blocks`, kind). kind "T": Linear weight (out,in)
# stored as a kernel (in,out); "=": copied as is.
BLOCK_TENSORS: tuple[tuple[str, tuple[str, ...], str], ...] = (
    ("ln_1.weight", ("ln_1", "scale"), "="),
    ("ln_1.bias", ("ln_1", "bias"), "="),
    ("attn.in_proj_weight", ("attn", "in_proj", "kernel"), "T"),
    ("attn.in_proj_bias", ("attn", "in_proj", "bias"), "="),
    ("attn.out_proj.weight", ("attn", "out_proj", "kernel"), "T"),
    ("attn.out_proj.bias", ("attn", "out_proj", "bias"), "="),
    ("ln_2.weight", ("ln_2", "scale"), "="),
    ("ln_2.bias", ("ln_2", "bias"), "="),
    ("mlp.c_fc.weight", ("mlp", "c_fc", "kernel"), "T"),
    ("mlp.c_fc.bias", ("mlp", "c_fc", "bias"), "="),
    ("mlp.c_proj.weight", ("mlp", "c_proj", "kernel"), "T"),
    ("mlp.c_proj.bias", ("mlp", "c_proj", "bias"), "="),
)

# Non-block tensors: (open_clip name, NNX path, kind). kind "conv": OIHW ⇄ HWIO.
TOP_TENSORS: tuple[tuple[str, tuple[str, ...], str], ...] = (
    ("visual.conv1.weight", ("visual", "conv1"), "conv"),
    ("visual.class_embedding", ("visual", "class_embedding"), "="),
    ("visual.positional_embedding", ("visual", "positional_embedding"), "="),
    ("visual.ln_pre.weight", ("visual", "ln_pre", "scale"), "="),
    ("visual.ln_pre.bias", ("visual", "ln_pre", "bias"), "="),
    ("visual.ln_post.weight", ("visual", "ln_post", "scale"), "="),
    ("visual.ln_post.bias", ("visual", "ln_post", "bias"), "="),
    ("visual.proj", ("visual", "proj"), "="),
    ("token_embedding.weight", ("text", "token_embedding"), "="),
    ("positional_embedding", ("text", "positional_embedding"), "="),
    ("ln_final.weight", ("text", "ln_final", "scale"), "="),
    ("ln_final.bias", ("text", "ln_final", "bias"), "="),
    ("text_projection", ("text", "text_projection"), "="),
    ("logit_scale", ("logit_scale",), "="),
    ("logit_bias", ("logit_bias",), "="),  # SigLIP models only (ModelConfig.init_logit_bias set)
)

# (open_clip prefix of the blocks, NNX path of the stacked blocks) per tower.
TOWER_BLOCKS = {
    "visual": ("visual.transformer.resblocks", ("visual", "transformer", "blocks")),
    "text": ("transformer.resblocks", ("text", "transformer", "blocks")),
}

# Entries of OpenAI's TorchScript state_dict that are not parameters (clip.build_model drops them too), and the
# causal mask buffer that some open_clip forks persist: derived data, not weights.
OPENAI_EXTRA_KEYS = ("input_resolution", "context_length", "vocab_size", "attn_mask", "text.attn_mask")
# Text-tower names that open_clip's CustomTextCLIP stores under a `text.` prefix.
_CUSTOM_TEXT_PREFIXES = ("token_embedding", "positional_embedding", "transformer.", "ln_final", "text_projection")


# ---- expected shapes --------------------------------------------------------------------------------------

def _block_shapes(width: int, hidden: int) -> dict[str, tuple[int, ...]]:
    return {
        "ln_1.weight": (width,), "ln_1.bias": (width,),
        "attn.in_proj_weight": (3 * width, width), "attn.in_proj_bias": (3 * width,),
        "attn.out_proj.weight": (width, width), "attn.out_proj.bias": (width,),
        "ln_2.weight": (width,), "ln_2.bias": (width,),
        "mlp.c_fc.weight": (hidden, width), "mlp.c_fc.bias": (hidden,),
        "mlp.c_proj.weight": (width, hidden), "mlp.c_proj.bias": (width,),
    }


def expected_shapes(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    """The open_clip state dict (name → shape) of the network `cfg` describes (CLIP text tower only)."""
    if cfg.text.tower != "clip":
        raise CheckpointError(f"the open_clip layout here covers the CLIP text tower only, not text.tower="
                              f"{cfg.text.tower!r} (a BERT tower is read from its Hugging Face directory: "
                              "make_jax.checkpoint.hf_bert)")
    v, t, e = cfg.vision, cfg.text, cfg.embed_dim
    shapes: dict[str, tuple[int, ...]] = {
        "visual.conv1.weight": (v.width, 3, v.patch_size, v.patch_size),
        "visual.class_embedding": (v.width,),
        "visual.positional_embedding": (v.num_patches + 1, v.width),
        "visual.ln_pre.weight": (v.width,), "visual.ln_pre.bias": (v.width,),
        "visual.ln_post.weight": (v.width,), "visual.ln_post.bias": (v.width,),
        "visual.proj": (v.width, e),
        "token_embedding.weight": (t.vocab_size, t.width),
        "positional_embedding": (t.context_length, t.width),
        "ln_final.weight": (t.width,), "ln_final.bias": (t.width,),
        "text_projection": (t.width, e),
        "logit_scale": (),
    }
    if cfg.init_logit_bias is not None:
        shapes["logit_bias"] = ()
    for tower, tcfg in (("visual", v), ("text", t)):
        prefix = TOWER_BLOCKS[tower][0]
        for i in range(tcfg.layers):
            for suffix, shape in _block_shapes(tcfg.width, tcfg.mlp_width).items():
                shapes[f"{prefix}.{i}.{suffix}"] = shape
    return shapes


def param_tree_shapes(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Flat 'visual.transformer.blocks.attn.in_proj.kernel' → shape of the NNX parameter tree of `cfg`, computed
    from the layout tables (no model is built; `tests/test_convert.py` checks it against `abstract_model`)."""
    oc = expected_shapes(cfg)
    out: dict[str, tuple[int, ...]] = {}
    for name, path, kind in top_tensors(cfg):
        s = oc[name]
        out[".".join(path)] = (s[2], s[3], s[1], s[0]) if kind == "conv" else s
    for tower, tcfg in (("visual", cfg.vision), ("text", cfg.text)):
        prefix, path = TOWER_BLOCKS[tower]
        for suffix, sub, kind in BLOCK_TENSORS:
            s = oc[f"{prefix}.0.{suffix}"]
            out[".".join(path + sub)] = (tcfg.layers, *(s[::-1] if kind == "T" else s))
    return out


def top_tensors(cfg: ModelConfig) -> tuple[tuple[str, tuple[str, ...], str], ...]:
    """The entries of TOP_TENSORS that the network `cfg` has (`logit_bias` only with an init_logit_bias)."""
    return tuple(t for t in TOP_TENSORS if t[0] != "logit_bias" or cfg.init_logit_bias is not None)


def _describe(cfg: ModelConfig) -> str:
    v, t = cfg.vision, cfg.text
    return (f"ViT {v.image_size}px/{v.patch_size} width {v.width} x{v.layers}, text width {t.width} x{t.layers}, "
            f"embed_dim {cfg.embed_dim}")


def check_shapes(shapes: Mapping[str, tuple[int, ...]], cfg: ModelConfig, *, what: str = "checkpoint") -> None:
    """Raises `CheckpointError` naming every missing key, unexpected key and shape mismatch (with both shapes)."""
    expected = expected_shapes(cfg)
    missing = [k for k in expected if k not in shapes]
    unexpected = sorted(k for k in shapes if k not in expected)
    wrong = [(k, tuple(shapes[k]), expected[k]) for k in expected if k in shapes and tuple(shapes[k]) != expected[k]]
    if not (missing or unexpected or wrong):
        return
    lines = [f"{what} does not match the model config ({_describe(cfg)}):"]
    lines += [f"  {k}: shape {s} in the {what}, the config expects {x}" for k, s, x in wrong]
    lines += [f"  missing key {k} (expected shape {expected[k]})" for k in missing]
    lines += [f"  unexpected key {k} (shape {tuple(shapes[k])})" for k in unexpected]
    raise CheckpointError("\n".join(lines))


# ---- key normalisation and architecture checks -----------------------------------------------------------

def strip_wrapper_prefixes(sd: Mapping[str, Any]) -> dict[str, Any]:
    """Drops the `module.` (DDP) and `_orig_mod.` (torch.compile) prefixes of open_clip training checkpoints."""
    out = dict(sd)
    changed = True
    while changed and out:
        changed = False
        for prefix in ("module.", "_orig_mod."):
            if all(k.startswith(prefix) for k in out):
                out = {k[len(prefix):]: v for k, v in out.items()}
                changed = True
    return out


def normalize_keys(sd: Mapping[str, Any]) -> dict[str, Any]:
    """open_clip-layout state dict with wrapper prefixes removed, OpenAI's non-parameter entries dropped and
    CustomTextCLIP's `text.` prefix folded back into the plain CLIP names."""
    out = strip_wrapper_prefixes(sd)
    for k in OPENAI_EXTRA_KEYS:
        out.pop(k, None)
    if any(k.startswith("text.") for k in out) and "text_projection" not in out:
        folded = {}
        for k, v in out.items():
            if k.startswith("text.") and k[5:].startswith(_CUSTOM_TEXT_PREFIXES):
                k = k[5:]
            folded[k] = v
        out = folded
    return out


def check_architecture(keys) -> None:
    """Raises `CheckpointError` for state dicts of architectures other than ViT + causal text transformer."""
    keys = list(keys)

    def first(pred):
        return next((k for k in keys if pred(k)), None)

    k = first(lambda k: k.startswith(("visual.layer1.", "visual.attnpool.")))
    if k:
        raise CheckpointError(f"unsupported architecture: a ModifiedResNet image tower (key {k!r}); only the ViT "
                              "image tower is supported")
    k = first(lambda k: k.startswith("visual.trunk."))
    if k:
        raise CheckpointError(f"unsupported architecture: a timm image tower (key {k!r}); only open_clip's own ViT "
                              "is supported")
    k = first(lambda k: k.startswith(("text.transformer.embeddings", "text.transformer.encoder", "text.proj.")))
    if k:
        raise CheckpointError(f"unsupported architecture: a Hugging Face text tower (key {k!r})")
    k = first(lambda k: k.startswith(("vision_model.", "text_model.")))
    if k:
        raise CheckpointError(f"this is a Hugging Face CLIPModel state dict (key {k!r}); convert the Hugging Face "
                              "directory (config.json + weights) with --format hf")
    for name in ("visual.attn_pool.", "visual.ls_", "text.text_projection.weight",
                 "text_projection.weight", "visual.head."):
        k = first(lambda k, name=name: k.startswith(name) or f".{name}" in k)
        if k:
            raise CheckpointError(f"unsupported architecture option: key {k!r} (attentional pooling, layer scale, "
                                  "or a linear text projection are not part of the plain CLIP)")
    k = first(lambda k: ".ls_1." in k or ".ls_2." in k or ".ln_attn." in k or ".ln_inner." in k)
    if k:
        raise CheckpointError(f"unsupported architecture option: key {k!r} (layer scale / scaled-cosine blocks)")


# ---- config inference (as open_clip's build_model_from_openai_state_dict) ---------------------------------

def _layer_indices(keys, prefix: str) -> list[int]:
    pat = re.compile(re.escape(prefix) + r"\.(\d+)\.")
    return sorted({int(m.group(1)) for k in keys if (m := pat.match(k))})


def infer_config(shapes: Mapping[str, tuple[int, ...]], activation: str = "quick_gelu") -> ModelConfig:
    """The `ModelConfig` of a bare open_clip/OpenAI state dict, read from its shapes as open_clip's
    `build_model_from_openai_state_dict` does: heads = width // 64 in both towers (not recoverable from
    weights), QuickGELU unless `activation` says otherwise; the MLP ratio is read from `c_fc`."""
    check_architecture(shapes)
    needed = ("visual.proj", "visual.conv1.weight", "visual.positional_embedding", "text_projection",
              "positional_embedding", "token_embedding.weight", "ln_final.weight")
    missing = [k for k in needed if k not in shapes]
    if missing:
        raise CheckpointError(f"not an open_clip ViT CLIP state dict: missing key(s) {missing} "
                              f"(first keys found: {sorted(shapes)[:5]})")
    conv = tuple(shapes["visual.conv1.weight"])
    if len(conv) != 4 or conv[1] != 3 or conv[2] != conv[3]:
        raise CheckpointError(f"visual.conv1.weight: shape {conv}, expected (width, 3, p, p)")
    width, patch = conv[0], conv[-1]
    n_pos = tuple(shapes["visual.positional_embedding"])[0]
    grid = round((n_pos - 1) ** 0.5)
    if grid * grid + 1 != n_pos:
        raise CheckpointError(f"visual.positional_embedding: shape {tuple(shapes['visual.positional_embedding'])} "
                              "is not 1 + a square number of patches")
    v_layers = _layer_indices(shapes, "visual.transformer.resblocks")
    t_layers = _layer_indices(shapes, "transformer.resblocks")
    if not v_layers or not t_layers:
        raise CheckpointError("no transformer blocks found (visual.transformer.resblocks.* / transformer.resblocks.*)")
    t_width = tuple(shapes["ln_final.weight"])[0]

    def ratio(prefix: str, w: int) -> float:
        fc = shapes.get(f"{prefix}.0.mlp.c_fc.weight")
        return float(tuple(fc)[0]) / w if fc is not None else 4.0

    for what, w in (("visual", width), ("text", t_width)):
        if w % 64:
            raise CheckpointError(f"{what} width {w} is not a multiple of 64: the number of heads cannot be "
                                  "inferred from a bare state dict; convert an open_clip directory with its config")
    vision = VisionConfig(image_size=patch * grid, patch_size=patch, width=width, layers=len(v_layers),
                          heads=width // 64, mlp_ratio=ratio("visual.transformer.resblocks", width))
    text = TextConfig(context_length=tuple(shapes["positional_embedding"])[0],
                      vocab_size=tuple(shapes["token_embedding.weight"])[0], width=t_width, layers=len(t_layers),
                      heads=t_width // 64, mlp_ratio=ratio("transformer.resblocks", t_width))
    # A SigLIP-trained model carries a learned logit_bias; its init value is irrelevant once trained.
    bias = {"init_logit_bias": SIGLIP_LOGIT_BIAS_INIT} if "logit_bias" in shapes else {}
    return ModelConfig(embed_dim=tuple(shapes["text_projection"])[1], vision=vision, text=text,
                       activation=activation, **bias)


# ---- the mapping itself -----------------------------------------------------------------------------------

def _set(tree: dict, path: tuple[str, ...], value) -> None:
    for p in path[:-1]:
        tree = tree.setdefault(p, {})
    tree[path[-1]] = value


def _get(tree: Mapping, path: tuple[str, ...]):
    for p in path:
        tree = tree[p]
    return tree


def _to_f32(x) -> np.ndarray:
    return np.asarray(x, dtype=np.float32)


def open_clip_to_params(sd: Mapping[str, Any], cfg: ModelConfig,
                        convert: Callable[[Any], np.ndarray] = _to_f32) -> dict:
    """open_clip state dict (already normalised, shapes checked against `cfg`) → NNX pure dict of float32 arrays."""
    check_shapes({k: tuple(np.shape(v)) for k, v in sd.items()}, cfg)
    params: dict = {}
    for name, path, kind in top_tensors(cfg):
        x = convert(sd[name])
        if kind == "conv":
            x = x.transpose(2, 3, 1, 0)  # OIHW → HWIO
        _set(params, path, np.ascontiguousarray(x) if x.ndim else x)
    for tower, tcfg in (("visual", cfg.vision), ("text", cfg.text)):
        prefix, path = TOWER_BLOCKS[tower]
        for suffix, sub, kind in BLOCK_TENSORS:
            per_layer = []
            for i in range(tcfg.layers):
                x = convert(sd[f"{prefix}.{i}.{suffix}"])
                per_layer.append(x.T if kind == "T" else x)
            _set(params, path + sub, np.stack(per_layer))
    return params


def params_shapes(params: Mapping) -> dict[str, tuple[int, ...]]:
    """Flat 'a.b.c' → shape of a nested pure dict."""
    out = {}

    def walk(node, prefix):
        if isinstance(node, Mapping):
            for k, v in node.items():
                walk(v, f"{prefix}.{k}" if prefix else str(k))
        else:
            out[prefix] = tuple(node.shape) if hasattr(node, "shape") else tuple(np.shape(node))

    walk(params, "")
    return out


def params_to_open_clip(params: Mapping, cfg: ModelConfig) -> dict[str, np.ndarray]:
    """NNX pure dict → open_clip state dict (float32 numpy, contiguous). Inverse of `open_clip_to_params`."""
    sd: dict[str, np.ndarray] = {}
    for name, path, kind in top_tensors(cfg):
        x = np.asarray(_get(params, path), dtype=np.float32)
        if kind == "conv":
            x = x.transpose(3, 2, 0, 1)  # HWIO → OIHW
        sd[name] = np.ascontiguousarray(x) if x.ndim else x.copy()
    for tower, tcfg in (("visual", cfg.vision), ("text", cfg.text)):
        prefix, path = TOWER_BLOCKS[tower]
        for suffix, sub, kind in BLOCK_TENSORS:
            stacked = np.asarray(_get(params, path + sub), dtype=np.float32)
            if stacked.shape[0] != tcfg.layers:
                raise CheckpointError(f"{'.'.join(path + sub)}: {stacked.shape[0]} layers, config says {tcfg.layers}")
            for i in range(tcfg.layers):
                x = stacked[i]
                sd[f"{prefix}.{i}.{suffix}"] = np.ascontiguousarray(x.T if kind == "T" else x)
    check_shapes({k: v.shape for k, v in sd.items()}, cfg, what="exported state dict")
    return sd
