"""The training input from `config.data`: the Grain pipeline over converted records."""

from __future__ import annotations

import dataclasses


def pipeline_config(config):
    """The `PipelineConfig` of a training config: every `PipelineOptions` field as `config.data` gives it, and the
    rest from the other sections — `seed` (the run's), `augment` (`config.data.augment`; its `size` is
    `data.image_size`), `official_inputs` (`loss.mode == "official"`), `tokenizer` (the text tower's when it is
    not the records' CLIP BPE: the pipeline then tokenizes the records' strings, make_jax.train.text_tower).
    `output` stays "uint8" (the step normalises on the device) and `with_index` False (a debugging aid)."""
    from make_jax.data.pipeline import PipelineConfig, PipelineOptions
    from make_jax.train.config import check_config
    from make_jax.train.text_tower import pipeline_tokenizer, text_config_from

    options = check_config(config)
    given = {f.name: getattr(options.data, f.name) for f in dataclasses.fields(PipelineOptions)}
    return PipelineConfig(**given, seed=options.run.seed, augment=options.augment,
                          official_inputs=options.loss.mode == "official",
                          tokenizer=pipeline_tokenizer(text_config_from(config)))


def make_train_data(config, process_index: int, process_count: int):
    """(iterator with get_state/set_state, number of training records). Process `process_index` of
    `process_count` gets its rows of every global batch."""
    import grain

    from make_jax.data.pipeline import num_records, train_dataset

    d = config.data
    if not d.records:
        raise ValueError("config.data.records is empty: point it at a dataset written by "
                         "`python -m make_jax.records.convert` (see docs/data.md)")
    shards = grain.sharding.ShardOptions(shard_index=process_index, shard_count=process_count)
    dataset = train_dataset(d.records, global_batch_size=config.batch_size, config=pipeline_config(config),
                            split=d.split, shard_options=shards)
    return iter(dataset), num_records(d.records, d.split)


def sample_batches(config, count: int) -> list[dict]:
    """`count` batches from a separate iterator over the same pipeline (the training iterator is not touched),
    to size the packing budgets."""
    from make_jax.data.pipeline import train_dataset

    d = config.data
    it = iter(train_dataset(d.records, global_batch_size=config.batch_size, config=pipeline_config(config),
                            split=d.split))
    return [next(it) for _ in range(count)]
