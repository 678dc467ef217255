"""The demo's data preparation step: SynthDerm and its records, made when absent (``config.prepare.synthderm``).

Options (all required; configs/demo.py sets them): ``out`` (SynthDerm folder), ``records`` (records root),
``seed``, ``num_train``, ``num_val``, ``image_size`` (generated px), ``shorter_side`` (records px). When
``config.data.records`` is empty the step converts SynthDerm and points it at the converted dataset; a dataset the
user named there is kept (SynthDerm is still generated: the demo evaluates on it). Both halves resume: the
generator is skipped when ``out/synthderm.json`` exists, the converter skips finished shards.
"""

from __future__ import annotations

import logging
from pathlib import Path

logger = logging.getLogger("make_jax.synthderm")


def prepare(config, *, out: str, records: str, seed: int, num_train: int, num_val: int, image_size: int,
            shorter_side: int) -> None:
    from make_jax.records.convert import convert

    from .generate import SynthDermConfig, generate

    root = Path(out)
    if not (root / "synthderm.json").is_file():
        logger.info("generating SynthDerm in %s", root)
        generate(root, SynthDermConfig(seed=seed, num_train=num_train, num_val=num_val, image_size=image_size),
                 workers=1, progress=config.progress)
    if config.data.records:
        logger.info("training on config.data.records=%s (not SynthDerm's records)", config.data.records)
        return
    result = convert(str(root / "make" / "train.csv"), str(root / "make"), str(records),
                     val_csv=str(root / "make" / "val.csv"), shorter_side=shorter_side, workers=None,
                     progress=config.progress, log=logger.info)
    if not result.complete:
        raise RuntimeError(f"record conversion of {root} did not complete; rerun to resume")
    config.data.records = result.directory
