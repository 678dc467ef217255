"""Shared defaults of every training config (spec §7). Each config file starts from `base_config()`."""

import ml_collections


def base_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.seed = 0

    # Model: a preset name from make_jax.models.config.PRESETS plus numerics overrides.
    c.model = ml_collections.ConfigDict(dict(
        name="ViT-B-16", dtype="bfloat16", remat=True, attention="auto", activation="quick_gelu"))
    # A converted checkpoint directory to start from (the recipe: OpenAI CLIP ViT-B/16 through make_jax.convert),
    # or "scratch" for open_clip's random initialisation. Empty is refused: say which one (docs/training.md).
    c.init_from = ""

    # Loss: make_jax.losses.LossConfig fields; the defaults are the paper's MAKE row.
    c.loss = ml_collections.ConfigDict(dict(
        mode="paper", positives="all", slra=True, dkw=True, slra_lambda=0.7, sigma=0.0, dkw_norm="ratio",
        slra_grad_to_raw=True, objective="softmax"))

    # Data: records written by `python -m make_jax.records.convert`.
    c.data = ml_collections.ConfigDict(dict(
        records="", split="train", image_size=224, context_length=77, num_slots=11, slot0="raw",
        workers=8, prefetch=2, shuffle=True))
    # The train transform of spec §6 (make_jax.data.transforms.TrainTransformConfig).
    c.data.augment = ml_collections.ConfigDict(dict(
        scale=(0.4, 1.0), ratio=(3 / 4, 4 / 3), jitter_prob=0.8, brightness=0.32, contrast=0.32, saturation=0.32,
        hue=0.08, grayscale_prob=0.2))

    c.batch_size = 2048
    # > 1: the two-pass embedding-cache step (GradCache) over this many micro-batches — the same loss and
    # gradients as one pass with the memory of one micro-batch's activations.
    c.microbatches = 1
    # Exact text savings (paper mode, one process; make_jax/train/packing.py, docs/performance.md): encode only
    # the valid texts, once each, in length groups at the shortest context that holds them. Budgets come from
    # `sample_batches` batches (the `quantile` of valid and distinct texts per batch, plus a full fallback tier).
    c.packing = ml_collections.ConfigDict(dict(
        enabled=False, sample_batches=16, quantile=0.99, groups=(0.6, 0.2, 0.2), dedup=True))
    c.epochs = 15.0
    c.total_steps = 0  # > 0 overrides epochs

    c.optim = ml_collections.ConfigDict(dict(
        lr=1e-4, warmup_steps=1500, b1=0.9, b2=0.98, eps=1e-6, weight_decay=0.1, grad_clip_norm=0.0))

    c.log_every = 10
    c.checkpoint_every = 200
    c.keep_checkpoints = 3
    c.tensorboard = True
    c.progress = True

    # Data preparation steps run before training, {step: options} (make_jax.train.prepare.STEPS).
    c.prepare = ml_collections.ConfigDict()

    # Periodic zero-shot evaluation on one set (empty csv: off).
    c.eval = ml_collections.ConfigDict(dict(every=0, csv="", images="", classnames="", batch_size=64))
    return c
