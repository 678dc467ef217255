"""Checkpoints: read open_clip / OpenAI / Hugging Face CLIP weights, map them onto the NNX model, and save or
restore make_jax's own Orbax checkpoint directories (see `orbax_io` for the on-disk layout)."""

from make_jax.checkpoint.hf_layout import config_from_hf, expected_hf_shapes, hf_to_open_clip
from make_jax.checkpoint.open_clip_layout import (
    CheckpointError,
    check_shapes,
    expected_shapes,
    infer_config,
    normalize_keys,
    open_clip_to_params,
    params_to_open_clip,
)
from make_jax.checkpoint.orbax_io import (
    is_checkpoint,
    load_model,
    load_params,
    read_config,
    read_preprocess_cfg,
    save_checkpoint,
)
from make_jax.checkpoint.readers import Source, detect_format, read_source, read_tensors

__all__ = [
    "CheckpointError", "Source", "check_shapes", "config_from_hf", "detect_format", "expected_hf_shapes",
    "expected_shapes", "hf_to_open_clip", "infer_config", "is_checkpoint", "load_model", "load_params",
    "normalize_keys", "open_clip_to_params", "params_to_open_clip", "read_config", "read_preprocess_cfg",
    "read_source", "read_tensors", "save_checkpoint",
]
