"""Forward FLOPs of the two towers (2 per multiply-add) and model FLOPs utilisation (docs/training.md).

Counted: the transformer blocks' matrix products (qkv, out, MLP: 12·D² MACs per token), attention scores and
mixing (2·T²·D MACs per layer), and the patch-embedding convolution. Not counted (< 0.5 %): LayerNorms,
softmax, the output projections. For ViT-B/16 this gives the spec's 35.13 GFLOP per image and 5.96 GFLOP per
77-token text.
"""

from __future__ import annotations

from make_jax.models.config import ModelConfig

# Dense bf16 peak by device kind (vendor datasheets), used for MFU. Unknown devices (CPUs) get no MFU.
PEAK_BF16_FLOPS = {
    "H100": 989e12,
    "H200": 989e12,
    "A100": 312e12,
}


def transformer_forward_flops(width: int, layers: int, tokens: int, hidden: int | None = None) -> float:
    """q, k, v, out (4·D²) and the MLP (2·D·H; H = 4·D by default, so 12·D² in all) per token, plus attention
    scores and mixing (2·T²·D) per layer."""
    hidden = 4 * width if hidden is None else hidden
    per_layer_macs = (4 * width * width + 2 * width * hidden) * tokens + 2 * tokens * tokens * width
    return 2.0 * layers * per_layer_macs


def image_forward_flops(cfg: ModelConfig) -> float:
    v = cfg.vision
    tokens = v.num_patches + 1
    conv = 2.0 * v.num_patches * (3 * v.patch_size * v.patch_size) * v.width
    return transformer_forward_flops(v.width, v.layers, tokens, v.mlp_width) + conv


def text_forward_flops(cfg: ModelConfig, context: int | None = None) -> float:
    """One text at `context` tokens through the configured text tower (CLIP's causal transformer or BERT: the
    same block arithmetic, from the tower's width, depth and MLP width)."""
    t = cfg.text
    return transformer_forward_flops(t.width, t.layers, context or t.context_length, t.mlp_width)


def train_flops_per_image(cfg: ModelConfig, texts_per_image: float, context: int | None = None) -> float:
    """3 × forward (forward + backward ≈ 2 × forward) for one image and its encoded texts."""
    return 3.0 * (image_forward_flops(cfg) + texts_per_image * text_forward_flops(cfg, context))


def model_flops_utilisation(images_per_s: float, flops_per_image: float, peak_per_device: float,
                            device_count: int) -> float:
    """MFU: the training FLOP/s achieved (global images/s × `train_flops_per_image`) over the peak of all
    `device_count` devices (`peak_per_device` × device_count), a fraction in [0, 1] for a sane measurement."""
    return images_per_s * flops_per_image / (peak_per_device * device_count)


def peak_flops(device_kind: str) -> float | None:
    for name, peak in PEAK_BF16_FLOPS.items():
        if name in device_kind:
            return peak
    return None
