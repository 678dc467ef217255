"""The training input from `config.data`: the Grain pipeline over converted records."""

from __future__ import annotations


def pipeline_config(config):
    """`config.data` → PipelineConfig. `config.data.augment` (optional) overrides fields of the spec §6 train
    transform (TrainTransformConfig: scale, ratio, jitter_prob, brightness, contrast, saturation, hue,
    grayscale_prob)."""
    from make_jax.data.pipeline import PipelineConfig
    from make_jax.data.transforms import TrainTransformConfig

    d = config.data
    augment = {k: (tuple(v) if isinstance(v, (list, tuple)) else v) for k, v in dict(d.get("augment") or {}).items()}
    return PipelineConfig(image_size=d.image_size, context_length=d.context_length, slot0=d.slot0, output="uint8",
                          seed=config.seed, num_workers=d.get("workers", 0),
                          prefetch_batches=d.get("prefetch", 2), read_threads=d.get("read_threads", 0),
                          augment=TrainTransformConfig(**augment),
                          official_inputs=config.loss.get("mode", "paper") == "official")


def make_train_data(config, process_index: int, process_count: int):
    """(iterator with get_state/set_state, number of training records). Each process gets its rows of every
    global batch (the pipeline shards by jax process)."""
    from make_jax.data.pipeline import num_records, train_dataset

    d = config.data
    if not d.records:
        raise ValueError("config.data.records is empty: point it at a dataset written by "
                         "`python -m make_jax.records.convert` (see docs/data.md)")
    dataset = train_dataset(d.records, global_batch_size=config.batch_size, config=pipeline_config(config),
                            split=d.get("split", "train"))
    return iter(dataset), num_records(d.records, d.get("split", "train"))


def sample_batches(config, count: int) -> list[dict]:
    """`count` batches from a separate iterator over the same pipeline (the training iterator is not touched),
    to size the packing budgets."""
    from make_jax.data.pipeline import train_dataset

    d = config.data
    it = iter(train_dataset(d.records, global_batch_size=config.batch_size, config=pipeline_config(config),
                            split=d.get("split", "train")))
    return [next(it) for _ in range(count)]
