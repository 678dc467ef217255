"""The training input from `config.data`: the Grain pipeline over converted records."""

from __future__ import annotations


def pipeline_config(config):
    from make_jax.data.pipeline import PipelineConfig

    d = config.data
    return PipelineConfig(image_size=d.image_size, context_length=d.context_length, slot0=d.slot0, output="uint8",
                          seed=config.seed, num_workers=d.get("workers", 0),
                          prefetch_batches=d.get("prefetch", 2), read_threads=d.get("read_threads", 0))


def make_train_data(config, process_index: int, process_count: int):
    """(iterator with get_state/set_state, number of training records). Each process gets its rows of every
    global batch (the pipeline shards by jax process)."""
    from make_jax.data.pipeline import num_records, train_dataset

    d = config.data
    if not d.records:
        raise ValueError("config.data.records is empty: point it at a dataset written by "
                         "`python -m make_jax.data.convert` (see docs/data.md)")
    dataset = train_dataset(d.records, global_batch_size=config.batch_size, config=pipeline_config(config),
                            split=d.get("split", "train"))
    return iter(dataset), num_records(d.records, d.get("split", "train"))
