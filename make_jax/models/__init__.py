"""Model definitions: config, the initialisation keys, the shared transformer, the two towers and the CLIP model."""

from make_jax.models.clip import CLIP, ImageOutputs, abstract_model, count_params, create_model
from make_jax.models.config import PRESETS, ModelConfig, TextConfig, VisionConfig, get_model_config

__all__ = ["CLIP", "ImageOutputs", "ModelConfig", "PRESETS", "TextConfig", "VisionConfig", "abstract_model",
           "count_params", "create_model", "get_model_config"]
