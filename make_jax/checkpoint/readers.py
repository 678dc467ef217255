"""Read a pretrained CLIP from disk into an open_clip-layout state dict (numpy) plus its `ModelConfig`.

Sources (`detect_format`):

- "open_clip": a directory with `open_clip_config.json` (`model_cfg`, optional `quick_gelu`, `preprocess_cfg`) and
  `open_clip_model.safetensors` or `open_clip_pytorch_model.bin` — how MAKE and DermLIP are published.
- "hf": a Hugging Face `CLIPModel` directory: `config.json` and `model.safetensors` or `pytorch_model.bin`.
- "state_dict": a bare state-dict file (.safetensors, .bin, .pt, .pth) in open_clip/OpenAI layout, its config
  inferred from the shapes as open_clip's `build_model_from_openai_state_dict` does. Covers open_clip training
  checkpoints (`{'state_dict': ..., ...}` with `module.` prefixes) and OpenAI's original TorchScript archives
  (e.g. ViT-B-16.pt).

Pickles are only ever opened with `torch.load(..., map_location='cpu', weights_only=True)`. A TorchScript archive
(a zip with `code/`) runs the code it holds when loaded, so it is refused — whatever its name, and always inside a
directory — unless the caller passes `allow_torchscript=True` (`--allow-torchscript`) for a standalone file it
names; then `torch.jit.load(..., map_location='cpu')` reads it. Both need PyTorch; safetensors files do not.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import zipfile
from pathlib import Path
from typing import Any, Callable

import numpy as np

from make_jax.checkpoint import hf_layout, open_clip_layout
from make_jax.checkpoint.open_clip_layout import CheckpointError
from make_jax.models.config import ModelConfig
from make_jax.preprocess import CLIP_MEAN, CLIP_STD, check_preprocess_cfg

logger = logging.getLogger("make_jax.checkpoint")

OPEN_CLIP_CONFIG = "open_clip_config.json"
OPEN_CLIP_WEIGHTS = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")
HF_CONFIG = "config.json"
HF_WEIGHTS = ("model.safetensors", "pytorch_model.bin")
STATE_DICT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")
FORMATS = ("auto", "open_clip", "hf", "state_dict")

DEFAULT_PREPROCESS_CFG = {"mean": list(CLIP_MEAN), "std": list(CLIP_STD), "interpolation": "bicubic",
                          "resize_mode": "shortest"}


@dataclasses.dataclass
class Source:
    """A checkpoint read into memory: open_clip-layout numpy tensors (source dtype) and the model config."""

    state_dict: dict[str, np.ndarray]
    config: ModelConfig
    format: str
    path: Path
    weights_file: Path
    preprocess_cfg: dict


# ---- tensor files -----------------------------------------------------------------------------------------

def _torch():
    try:
        import torch
    except ImportError as e:  # pragma: no cover - torch is a test dependency
        raise CheckpointError("reading PyTorch pickles / TorchScript needs PyTorch (pip install torch, CPU build is "
                              "enough), or convert the checkpoint to .safetensors first") from e
    return torch


def _tensor_to_numpy(t) -> np.ndarray:
    torch = _torch()
    t = t.detach().cpu()
    if t.dtype == torch.bfloat16:  # numpy has no bfloat16; float32 holds it exactly
        t = t.float()
    return t.numpy()


def is_torchscript(path: Path) -> bool:
    """True for a TorchScript archive: a zip with a `code/` directory (OpenAI's CLIP .pt files also hold
    `constants.pkl`; either marks code that torch.jit.load would run)."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as z:
        names = z.namelist()
    return any(n.endswith("constants.pkl") or n.startswith("code/") or "/code/" in n for n in names)


def _unwrap(obj: Any, path: Path) -> dict:
    """The state dict inside a torch.load'ed object: a plain dict of tensors, or open_clip's training checkpoint
    `{'epoch': ..., 'state_dict': {...}, 'optimizer': ...}`."""
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        logger.info("%s: using its 'state_dict' entry (a training checkpoint)", path)
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: expected a state dict (a dict of tensors), found {type(obj).__name__}")
    return obj


def read_tensors(path: str | Path, *, allow_torchscript: bool = False) -> dict[str, np.ndarray]:
    """Every tensor of a weights file as numpy (dtype kept, bfloat16 → float32). A TorchScript archive is
    refused unless `allow_torchscript` (it runs code when loaded)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file")
    if path.suffix == ".safetensors":
        logger.info("reading %s (safetensors)", path)
        from safetensors import SafetensorError

        try:
            from safetensors.numpy import load_file
            return dict(load_file(str(path)))
        except SafetensorError as e:  # truncated or corrupt header / data
            raise CheckpointError(f"{path}: not a readable safetensors file ({e})") from None
        except (TypeError, ValueError) as e:  # e.g. bfloat16, which numpy lacks
            logger.info("safetensors via numpy failed (%s); reading with PyTorch", e)
            from safetensors.torch import load_file as load_torch
            return {k: _tensor_to_numpy(v) for k, v in load_torch(str(path), device="cpu").items()}
    if is_torchscript(path) and not allow_torchscript:
        raise CheckpointError(f"{path}: a TorchScript archive (it holds code/ that loading would run): refused; "
                              "if you trust this standalone file (e.g. OpenAI's original CLIP .pt), name it as the "
                              "source and pass --allow-torchscript")
    torch = _torch()
    if is_torchscript(path):
        logger.info("reading %s: a TorchScript archive (e.g. OpenAI's original CLIP); loading its state_dict with "
                    "torch.jit.load(map_location='cpu')", path)
        sd = torch.jit.load(str(path), map_location="cpu").state_dict()
    else:
        logger.info("reading %s: a PyTorch pickle, with torch.load(map_location='cpu', weights_only=True)", path)
        try:
            obj = torch.load(str(path), map_location="cpu", weights_only=True)
        except Exception as e:
            raise CheckpointError(f"{path}: torch.load(weights_only=True) failed: {e}") from e
        sd = _unwrap(obj, path)
    out = {}
    for k, v in sd.items():
        if not isinstance(v, torch.Tensor):
            raise CheckpointError(f"{path}: entry {k!r} is a {type(v).__name__}, not a tensor")
        out[k] = _tensor_to_numpy(v)
    return out


def _first_existing(directory: Path, names) -> Path:
    for n in names:
        if (directory / n).is_file():
            return directory / n
        if (directory / f"{n}.index.json").is_file():  # sharded weights (Hugging Face)
            return directory / f"{n}.index.json"
    raise CheckpointError(f"{directory}: none of {list(names)} found")


def read_weights(path: Path, *, allow_torchscript: bool = False) -> dict[str, np.ndarray]:
    """`read_tensors`, plus Hugging Face's sharded `*.index.json` (its `weight_map` names the shard files)."""
    if path.name.endswith(".index.json"):
        shards = sorted(set(json.loads(path.read_text())["weight_map"].values()))
        out: dict[str, np.ndarray] = {}
        for shard in shards:
            out.update(read_tensors(path.parent / shard))
        return out
    return read_tensors(path, allow_torchscript=allow_torchscript)


# ---- format detection -------------------------------------------------------------------------------------

def detect_format(path: str | Path) -> str:
    """"open_clip", "hf" or "state_dict" for a source path (see the module docstring)."""
    path = Path(path)
    if path.is_dir():
        if (path / "model_config.json").is_file() and (path / "params").is_dir():
            raise CheckpointError(f"{path} is already a make_jax checkpoint (export it with --to open_clip)")
        if (path / OPEN_CLIP_CONFIG).is_file():
            return "open_clip"
        if (path / HF_CONFIG).is_file():
            return "hf"
        if any((path / n).is_file() for n in OPEN_CLIP_WEIGHTS):
            return "state_dict"
        raise CheckpointError(f"{path}: not a checkpoint directory (no {OPEN_CLIP_CONFIG}, {HF_CONFIG} or "
                              f"{OPEN_CLIP_WEIGHTS[0]})")
    if path.is_file():
        if path.suffix in STATE_DICT_SUFFIXES:
            return "state_dict"
        raise CheckpointError(f"{path}: unknown weights file type {path.suffix!r} (expected one of "
                              f"{STATE_DICT_SUFFIXES})")
    raise CheckpointError(f"{path}: does not exist")


# ---- readers ----------------------------------------------------------------------------------------------

def _load_sd(path: Path, allow_torchscript: bool = False) -> dict[str, np.ndarray]:
    sd = open_clip_layout.normalize_keys(read_weights(path, allow_torchscript=allow_torchscript))
    open_clip_layout.check_architecture(sd)
    return sd


def read_open_clip_dir(path: Path, activation: str | None = None) -> Source:
    cfg_json = json.loads((path / OPEN_CLIP_CONFIG).read_text())
    if "model_cfg" not in cfg_json:
        raise CheckpointError(f"{path / OPEN_CLIP_CONFIG}: no 'model_cfg' entry")
    model_cfg = dict(cfg_json["model_cfg"])
    quick_gelu = model_cfg.pop("quick_gelu", cfg_json.get("quick_gelu"))
    try:
        cfg = ModelConfig.from_open_clip(model_cfg, quick_gelu=bool(quick_gelu))
    except ValueError as e:
        raise CheckpointError(f"{path / OPEN_CLIP_CONFIG}: {e}") from e
    if activation is not None:
        cfg = cfg.replace(activation=activation)
    elif quick_gelu is None:
        logger.warning("%s sets no quick_gelu: using exact GELU, as open_clip would; weights trained from OpenAI "
                       "CLIP (MAKE, DermLIP) may have been trained with QuickGELU — `python -m "
                       "make_jax.checkpoint.activation_check` tells which one reproduces their published outputs "
                       "(docs/checkpoints.md); --activation overrides", path / OPEN_CLIP_CONFIG)
    weights = _first_existing(path, OPEN_CLIP_WEIGHTS)
    sd = _load_sd(weights)
    open_clip_layout.check_shapes({k: v.shape for k, v in sd.items()}, cfg, what=f"checkpoint {weights.name}")
    pp = {**DEFAULT_PREPROCESS_CFG, **(cfg_json.get("preprocess_cfg") or {})}
    try:  # make_jax.preprocess implements every eval mode of open_clip; anything else is refused here
        check_preprocess_cfg(pp["interpolation"], pp["resize_mode"])
    except ValueError as e:
        raise CheckpointError(f"{path / OPEN_CLIP_CONFIG}: {e}") from e
    return Source(sd, cfg, "open_clip", path, weights, pp)


def read_hf_dir(path: Path, activation: str | None = None) -> Source:
    config = json.loads((path / HF_CONFIG).read_text())
    cfg = hf_layout.config_from_hf(config, activation=activation)
    weights = _first_existing(path, HF_WEIGHTS)
    sd = hf_layout.hf_to_open_clip(read_weights(weights), cfg)
    open_clip_layout.check_shapes({k: v.shape for k, v in sd.items()}, cfg, what=f"checkpoint {weights.name}")
    pp = dict(DEFAULT_PREPROCESS_CFG)
    pre = path / "preprocessor_config.json"
    if pre.is_file():
        p = json.loads(pre.read_text())
        if "image_mean" in p and "image_std" in p:
            pp.update(mean=list(p["image_mean"]), std=list(p["image_std"]))
    return Source(sd, cfg, "hf", path, weights, pp)


def read_state_dict(path: Path, activation: str | None = None, allow_torchscript: bool = False) -> Source:
    """A bare state-dict file, or the weights file of a directory without config. TorchScript only as a
    standalone file with `allow_torchscript` (never found inside a directory)."""
    weights = _first_existing(path, OPEN_CLIP_WEIGHTS) if path.is_dir() else path
    sd = _load_sd(weights, allow_torchscript=allow_torchscript and not path.is_dir())
    cfg = open_clip_layout.infer_config({k: v.shape for k, v in sd.items()},
                                        activation=activation or "quick_gelu")
    logger.info("inferred config from the weights (heads = width // 64, activation %s): %s", cfg.activation,
                cfg.to_open_clip())
    open_clip_layout.check_shapes({k: v.shape for k, v in sd.items()}, cfg, what=f"checkpoint {weights.name}")
    return Source(sd, cfg, "state_dict", path, weights, dict(DEFAULT_PREPROCESS_CFG))


_READERS: dict[str, Callable[..., Source]] = {
    "open_clip": read_open_clip_dir, "hf": read_hf_dir, "state_dict": read_state_dict}


def read_source(path: str | Path, format: str = "auto", activation: str | None = None, *,
                allow_torchscript: bool = False) -> Source:
    """Reads any supported source (see the module docstring). `activation` overrides the source's;
    `allow_torchscript` lets a standalone TorchScript file (`path` itself) be loaded, running its code."""
    path = Path(path)
    if format not in FORMATS:
        raise CheckpointError(f"unknown format {format!r}; one of {FORMATS}")
    if activation not in (None, "quick_gelu", "gelu"):
        raise CheckpointError(f"activation must be 'quick_gelu' or 'gelu', got {activation!r}")
    if not path.exists():
        raise CheckpointError(f"{path}: does not exist")
    fmt = detect_format(path) if format == "auto" else format
    if fmt in ("open_clip", "hf") and not path.is_dir():
        raise CheckpointError(f"{path}: format {fmt!r} needs a directory")
    logger.info("source %s: format %s", path, fmt)
    extra = {"allow_torchscript": allow_torchscript} if fmt == "state_dict" else {}
    src = _READERS[fmt](path, activation=activation, **extra)
    dtypes = sorted({str(v.dtype) for v in src.state_dict.values()})
    if dtypes != ["float32"]:
        logger.info("tensors stored as %s; parameters are converted to float32", dtypes)
    return src
