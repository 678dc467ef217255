"""Model configuration: the two towers' geometry and numerics, named presets, and open_clip's JSON form.

A `ModelConfig` is plain data (frozen dataclasses of ints, floats and strings) so that it can be written
beside a checkpoint as JSON and read back without importing anything heavy.
"""

from __future__ import annotations

import dataclasses
import json
import math
from typing import Any, Literal

Activation = Literal["quick_gelu", "gelu"]
AttentionImpl = Literal["xla", "cudnn", "auto"]
TEXT_TOWERS = ("clip", "bert")
TOKENIZERS = ("clip_bpe", "wordpiece")


@dataclasses.dataclass(frozen=True)
class VisionConfig:
    """ViT image tower (open_clip `VisionTransformer`): conv patchify, CLS token, pre-LN blocks."""

    image_size: int = 224
    patch_size: int = 16
    width: int = 768
    layers: int = 12
    heads: int = 12
    mlp_ratio: float = 4.0

    @property
    def grid(self) -> int:
        return self.image_size // self.patch_size

    @property
    def num_patches(self) -> int:
        return self.grid * self.grid

    @property
    def mlp_width(self) -> int:
        return int(self.width * self.mlp_ratio)


@dataclasses.dataclass(frozen=True)
class TextConfig:
    """The text tower and its tokenizer.

    tower:      "clip" — the causal "GPT2" transformer of open_clip (`TextTransformer`), pooled at the end-of-text
                token; "bert" — a bidirectional BERT encoder (Hugging Face `BertModel` layout, e.g. BiomedBERT)
                pooled at [CLS] (make_jax/models/bert.py).
    tokenizer:  "clip_bpe" (open_clip's byte-level BPE, shipped) or "wordpiece" (BERT's, from `vocab_file`).
    vocab_file: the WordPiece vocab.txt (tokenizer "wordpiece" only).
    pad_id:     the padding id of the tokenizer (0 for both).
    ln_eps, activation: the text tower's own LayerNorm epsilon and activation (None: the model's; a BERT read by
                `checkpoint.hf_bert` sets its config's 1e-12 and exact GELU).
    """

    context_length: int = 77
    vocab_size: int = 49408
    width: int = 512
    layers: int = 12
    heads: int = 8
    mlp_ratio: float = 4.0
    tower: str = "clip"
    tokenizer: str = "clip_bpe"
    vocab_file: str = ""
    pad_id: int = 0
    ln_eps: float | None = None
    activation: str | None = None

    def __post_init__(self):
        if self.tower not in TEXT_TOWERS:
            raise ValueError(f"text.tower must be one of {TEXT_TOWERS}, got {self.tower!r}")
        if self.tokenizer not in TOKENIZERS:
            raise ValueError(f"text.tokenizer must be one of {TOKENIZERS}, got {self.tokenizer!r}")
        if self.tokenizer == "wordpiece" and not self.vocab_file:
            raise ValueError("text.tokenizer 'wordpiece' needs text.vocab_file (the vocab.txt)")
        if self.activation not in (None, "quick_gelu", "gelu"):
            raise ValueError(f"text.activation must be None, 'quick_gelu' or 'gelu', got {self.activation!r}")

    @property
    def mlp_width(self) -> int:
        return int(round(self.width * self.mlp_ratio))


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Both towers plus the numerics shared by them.

    `activation`: "quick_gelu" (x·σ(1.702x), OpenAI-initialised weights such as MAKE and CLIP ViT-B/16) or "gelu"
    (exact erf GELU, open_clip's own non-OpenAI models). `dtype` is the compute dtype ("float32" or "bfloat16");
    parameters are always float32. `attention`: "auto" lets JAX pick (cuDNN where it applies on GPU), "xla" or
    "cudnn" force one. `remat`: rematerialise each transformer block in the backward pass — True (both towers),
    False, or one tower only ("vision" or "text"), since the image tower holds most activations per example.
    `init_logit_scale` / `init_logit_bias` (open_clip's names): the initial log scale, and the initial value of
    a learnable `logit_bias` parameter — which exists only when `init_logit_bias` is not None (SigLIP models;
    the plain CLIP has none, so its parameter tree and checkpoints are unchanged).
    """

    embed_dim: int = 512
    vision: VisionConfig = VisionConfig()
    text: TextConfig = TextConfig()
    activation: Activation = "quick_gelu"
    ln_eps: float = 1e-5
    dtype: str = "float32"
    attention: AttentionImpl = "auto"
    remat: bool | str = False
    init_logit_scale: float = math.log(1 / 0.07)
    init_logit_bias: float | None = None

    def __post_init__(self):
        if self.activation not in ("quick_gelu", "gelu"):
            raise ValueError(f"activation must be 'quick_gelu' or 'gelu', got {self.activation!r}")
        if self.attention not in ("xla", "cudnn", "auto"):
            raise ValueError(f"attention must be 'xla', 'cudnn' or 'auto', got {self.attention!r}")
        if self.remat not in (True, False, "vision", "text"):
            raise ValueError(f"remat must be True, False, 'vision' or 'text', got {self.remat!r}")
        if self.dtype not in ("float32", "bfloat16", "float16", "float64"):
            raise ValueError(f"dtype must be float32, bfloat16, float16 or float64, got {self.dtype!r}")
        for tower, cfg in (("vision", self.vision), ("text", self.text)):
            if cfg.width % cfg.heads:
                raise ValueError(f"{tower}.width {cfg.width} is not divisible by {tower}.heads {cfg.heads}")
        if self.vision.image_size % self.vision.patch_size:
            raise ValueError(
                f"vision.image_size {self.vision.image_size} is not a multiple of patch_size {self.vision.patch_size}"
            )

    def remat_tower(self, tower: str) -> bool:
        """Whether the blocks of `tower` ("vision" or "text") are rematerialised."""
        return self.remat is True or self.remat == tower

    def replace(self, **changes: Any) -> "ModelConfig":
        return dataclasses.replace(self, **changes)

    # ---- JSON -------------------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "ModelConfig":
        d = dict(d)
        unknown = set(d) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(f"unknown ModelConfig fields {sorted(unknown)}")
        vision = VisionConfig(**d.pop("vision", {}))
        text = TextConfig(**d.pop("text", {}))
        return cls(vision=vision, text=text, **d)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, s: str) -> "ModelConfig":
        return cls.from_dict(json.loads(s))

    # ---- open_clip's `model_cfg` --------------------------------------------------------------------------
    def to_open_clip(self) -> dict:
        """open_clip `model_cfg` dict (plus `quick_gelu`) describing the same network (CLIP text tower only)."""
        v, t = self.vision, self.text
        if t.tower != "clip":
            raise ValueError(f"text.tower {t.tower!r} has no open_clip model_cfg here (the CLIP text tower only)")
        if v.width // v.heads != 64:
            # open_clip derives vision heads from head_width; keep the ratio explicit when it is not the default.
            vision_cfg = {"head_width": v.width // v.heads}
        else:
            vision_cfg = {}
        vision_cfg.update(image_size=v.image_size, patch_size=v.patch_size, width=v.width, layers=v.layers,
                          mlp_ratio=v.mlp_ratio)
        out = {
            "embed_dim": self.embed_dim,
            "quick_gelu": self.activation == "quick_gelu",
            "vision_cfg": vision_cfg,
            "text_cfg": {"context_length": t.context_length, "vocab_size": t.vocab_size, "width": t.width,
                         "heads": t.heads, "layers": t.layers, "mlp_ratio": t.mlp_ratio},
        }
        if self.init_logit_bias is not None:  # open_clip's CLIP then has a `logit_bias` parameter too
            out.update(init_logit_scale=self.init_logit_scale, init_logit_bias=self.init_logit_bias)
        return out

    @classmethod
    def from_open_clip(cls, model_cfg: dict, quick_gelu: bool | None = None, **overrides: Any) -> "ModelConfig":
        """Reads open_clip's `model_cfg` (the `model_cfg` entry of `open_clip_config.json`).

        Only the plain ViT + text-transformer architecture is supported; anything else (timm towers, HF text
        towers, attentional pooling, non-default pooling) raises with the offending key named.
        """
        vc = dict(model_cfg.get("vision_cfg", {}))
        tc = dict(model_cfg.get("text_cfg", {}))
        unsupported = {
            "vision_cfg.timm_model_name": vc.get("timm_model_name"),
            "vision_cfg.attentional_pool": vc.get("attentional_pool"),
            "vision_cfg.no_ln_pre": vc.get("no_ln_pre"),
            "vision_cfg.final_ln_after_pool": vc.get("final_ln_after_pool"),
            "vision_cfg.ls_init_value": vc.get("ls_init_value"),
            "text_cfg.hf_model_name": tc.get("hf_model_name"),
            "text_cfg.ls_init_value": tc.get("ls_init_value"),
            "text_cfg.no_causal_mask": tc.get("no_causal_mask"),
            "text_cfg.proj_bias": tc.get("proj_bias"),
        }
        bad = {k: v for k, v in unsupported.items() if v}
        if isinstance(vc.get("layers"), (list, tuple)):
            bad["vision_cfg.layers"] = vc["layers"]  # ResNet towers
        if vc.get("pool_type", "tok") != "tok":
            bad["vision_cfg.pool_type"] = vc["pool_type"]
        if tc.get("pool_type", "argmax") != "argmax":
            bad["text_cfg.pool_type"] = tc["pool_type"]
        if bad:
            raise ValueError(f"unsupported open_clip architecture options: {bad}")
        width = int(vc.get("width", 768))
        head_width = int(vc.get("head_width", 64))
        vision = VisionConfig(
            image_size=int(vc.get("image_size", 224)), patch_size=int(vc.get("patch_size", 16)), width=width,
            layers=int(vc.get("layers", 12)), heads=width // head_width, mlp_ratio=float(vc.get("mlp_ratio", 4.0)),
        )
        text = TextConfig(
            context_length=int(tc.get("context_length", 77)), vocab_size=int(tc.get("vocab_size", 49408)),
            width=int(tc.get("width", 512)), layers=int(tc.get("layers", 12)), heads=int(tc.get("heads", 8)),
            mlp_ratio=float(tc.get("mlp_ratio", 4.0)),
        )
        if quick_gelu is None:
            quick_gelu = bool(model_cfg.get("quick_gelu", False))
        if model_cfg.get("init_logit_bias") is not None:
            overrides.setdefault("init_logit_bias", float(model_cfg["init_logit_bias"]))
        if model_cfg.get("init_logit_scale") is not None:
            overrides.setdefault("init_logit_scale", float(model_cfg["init_logit_scale"]))
        return cls(embed_dim=int(model_cfg.get("embed_dim", 512)), vision=vision, text=text,
                   activation="quick_gelu" if quick_gelu else "gelu", **overrides)


# ---- named sizes ------------------------------------------------------------------------------------------

PRESETS: dict[str, ModelConfig] = {
    # The paper's model: OpenAI CLIP ViT-B/16 geometry (149.6 M parameters), QuickGELU.
    "ViT-B-16": ModelConfig(),
    # Tiny towers for unit tests and the CPU demo: full vocabulary and context so real tokens work.
    "tiny": ModelConfig(
        embed_dim=32,
        vision=VisionConfig(image_size=32, patch_size=8, width=64, layers=2, heads=4),
        text=TextConfig(width=64, layers=2, heads=4),
    ),
    # Small towers (48 px) for CPU experiments a step above the demo.
    "small": ModelConfig(
        embed_dim=128,
        vision=VisionConfig(image_size=48, patch_size=8, width=128, layers=3, heads=2),
        text=TextConfig(width=128, layers=3, heads=2),
    ),
}


def get_model_config(name: str, **overrides: Any) -> ModelConfig:
    """A named preset ("ViT-B-16", "tiny", "small") with field overrides, e.g. dtype="bfloat16"."""
    if name not in PRESETS:
        raise ValueError(f"unknown model size {name!r}; known: {sorted(PRESETS)}")
    return PRESETS[name].replace(**overrides)
