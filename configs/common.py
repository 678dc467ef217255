"""Shared defaults of every training config. Each config file starts from `base_config()`.

Every section is built from the dataclass that declares its fields and defaults (make_jax/train/config.py,
`LossConfig`, `TrainTransformConfig`), so a field is declared once and every field can be overridden
(`--config.loss.eps=1e-8`); `check_config` refuses a field that no dataclass declares.
"""

import ml_collections

from make_jax.data.transforms import TrainTransformConfig
from make_jax.losses import LossConfig
from make_jax.train.config import DataOptions, MeshOptions, ModelOptions, OptimOptions, PackingOptions, RunOptions, section


def base_config() -> ml_collections.ConfigDict:
    """The paper's recipe: ViT-B/16 + 12x512 text tower, the MAKE loss (paper mode), AdamW 1e-4, batch 2048,
    15 epochs, the train transform of docs/data.md."""
    c = section(RunOptions)
    c.model = section(ModelOptions)          # a preset of make_jax.models.config.PRESETS + numerics
    c.loss = section(LossConfig)             # the paper's MAKE row
    # Records written by `python -m make_jax.records.convert` and the pipeline's options. 8 worker processes for a
    # training host (the pipeline's own default, 0, reads in the training process).
    c.data = section(DataOptions, workers=8)
    c.data.augment = section(TrainTransformConfig, exclude=("size",))  # size is data.image_size
    c.optim = section(OptimOptions)
    c.packing = section(PackingOptions)
    # Devices per mesh axis (-1: the rest): {data: -1, fsdp: 1} replicates the parameters; fsdp=8 splits them
    # and the optimizer state over 8 devices (ViT-L/14 and up), by config.sharding_rules (docs/training.md).
    c.mesh = section(MeshOptions)
    # Data preparation steps run before training, {step: options} (make_jax.train.prepare.STEPS).
    c.prepare = ml_collections.ConfigDict()

    # Evaluations during training, {name: dict(task=..., every=..., **options)} (make_jax/evaluate/suite.py):
    # an entry with every > 0 runs every that many steps, every entry runs at the final step (WORKDIR/eval.json).
    # Order kept as written (sort_keys=False). Images per encoder call:
    # eval_batch_size (a top-level field).
    c.evals = ml_collections.ConfigDict(sort_keys=False)
    return c
