"""The demo's data preparation step: SynthDerm and its records, made when absent (``config.prepare.synthderm``).

Options (``SynthDermOptions``): every field of the generator's ``SynthDermConfig`` (``seed``, ``num_train``,
``num_val``, ``num_zeroshot``, ..., ``image_size``: generated px), plus ``out`` (SynthDerm folder), ``records``
(records root) and ``shorter_side`` (records px). When ``config.data.records`` is empty the step converts SynthDerm
and points it at the converted dataset; a dataset the user named there is kept (SynthDerm is still generated: the
demo evaluates on it). Both halves resume: the generator is skipped when ``out/synthderm.json`` exists (its saved
generator config must be the one asked for: another one is refused naming the first differing field), the
converter skips finished shards.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

from .generate import SynthDermConfig, generate

logger = logging.getLogger("make_jax.synthderm")


@dataclasses.dataclass(frozen=True)
class SynthDermOptions(SynthDermConfig):
    """`config.prepare.synthderm`: the generator's fields (declared in `SynthDermConfig`) and where the step
    writes. Training needs examples, so `num_train` must be > 0 here (the generator alone allows 0)."""

    out: str = "data/synthderm"
    records: str = "data/synthderm/records"
    shorter_side: int = 256  # px of the images stored in the records

    def __post_init__(self):
        super().__post_init__()
        if self.num_train < 1:
            raise ValueError(f"num_train must be >= 1 to train, got {self.num_train}")
        if self.shorter_side < 1:
            raise ValueError(f"shorter_side must be >= 1, got {self.shorter_side}")


OPTIONS = SynthDermOptions  # what make_jax.train.prepare checks `config.prepare.synthderm` against


def generator_config(options: SynthDermOptions) -> SynthDermConfig:
    """The `SynthDermConfig` part of the step's options (every generator field, as given)."""
    return SynthDermConfig(**{f.name: getattr(options, f.name) for f in dataclasses.fields(SynthDermConfig)})


def check_saved_generator(root: Path, asked: SynthDermConfig) -> None:
    """The SynthDerm already in `root` was generated with `asked` (its synthderm.json's "config"); otherwise
    ConfigError naming the first differing field, the saved and the asked value — the folder is reused, never
    silently taken for another generator config."""
    import json

    from make_jax.train.config import ConfigError

    path = root / "synthderm.json"
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))["config"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ConfigError(f"config.prepare.synthderm.out: {path} is not a SynthDerm manifest ({e!r}); use another "
                          "out or delete it") from None
    for f in dataclasses.fields(SynthDermConfig):
        want = getattr(asked, f.name)
        have = saved.get(f.name, "<absent>") if isinstance(saved, dict) else "<absent>"
        if have != want:
            raise ConfigError(f"config.prepare.synthderm.{f.name}={want!r} but the SynthDerm in {root} was "
                              f"generated with {f.name}={have!r}; use another config.prepare.synthderm.out or "
                              "delete that folder")


def prepare(config, options: SynthDermOptions) -> None:
    from make_jax.records.convert import convert

    root = Path(options.out)
    if not (root / "synthderm.json").is_file():
        logger.info("generating SynthDerm in %s", root)
        generate(root, generator_config(options), workers=1, progress=config.progress)
    else:
        check_saved_generator(root, generator_config(options))
    if config.data.records:
        logger.info("training on config.data.records=%s (not SynthDerm's records)", config.data.records)
        return
    result = convert(str(root / "make" / "train.csv"), str(root / "make"), str(options.records),
                     val_csv=str(root / "make" / "val.csv"), shorter_side=options.shorter_side, workers=None,
                     progress=config.progress, log=logger.info)
    if not result.complete:
        raise RuntimeError(f"record conversion of {root} did not complete; rerun to resume")
    config.data.records = result.directory
