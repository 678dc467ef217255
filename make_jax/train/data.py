"""The training input from `config.data`: the Grain pipeline over converted records."""

from __future__ import annotations


def pipeline_config(config):
    """`config.data` → PipelineConfig; `config.data.augment` holds every TrainTransformConfig field but `size`
    (which is `data.image_size`). A text tower whose tokenizer is not the records' (a BERT tower) gets its own
    tokenizer: the pipeline then tokenizes the records' strings (make_jax.train.text_tower)."""
    from make_jax.data.pipeline import PipelineConfig
    from make_jax.data.transforms import TrainTransformConfig
    from make_jax.train.text_tower import pipeline_tokenizer, text_config_from

    d = config.data
    augment = {k: (tuple(v) if isinstance(v, (list, tuple)) else v) for k, v in d.augment.items()}
    return PipelineConfig(image_size=d.image_size, context_length=d.context_length, slot0=d.slot0, output="uint8",
                          seed=config.seed, num_workers=d.workers, prefetch_batches=d.prefetch,
                          read_threads=d.read_threads, augment=TrainTransformConfig(**augment),
                          official_inputs=config.loss.mode == "official",
                          tokenizer=pipeline_tokenizer(text_config_from(config)))


def make_train_data(config, process_index: int, process_count: int):
    """(iterator with get_state/set_state, number of training records). Each process gets its rows of every
    global batch (the pipeline shards by jax process)."""
    from make_jax.data.pipeline import num_records, train_dataset

    d = config.data
    if not d.records:
        raise ValueError("config.data.records is empty: point it at a dataset written by "
                         "`python -m make_jax.records.convert` (see docs/data.md)")
    dataset = train_dataset(d.records, global_batch_size=config.batch_size, config=pipeline_config(config),
                            split=d.split)
    return iter(dataset), num_records(d.records, d.split)


def sample_batches(config, count: int) -> list[dict]:
    """`count` batches from a separate iterator over the same pipeline (the training iterator is not touched),
    to size the packing budgets."""
    from make_jax.data.pipeline import train_dataset

    d = config.data
    it = iter(train_dataset(d.records, global_batch_size=config.batch_size, config=pipeline_config(config),
                            split=d.split))
    return [next(it) for _ in range(count)]
