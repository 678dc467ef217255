"""The training config's schema: sections built from dataclass defaults, and the whole-config check.

Every section of `configs/common.base_config()` is `section(SomeDataclass)`, so each field and its default is
declared once, here or in the dataclass that consumes it (`LossConfig`, `TrainTransformConfig`), and every field
can be overridden on the command line (`--config.loss.eps=1e-8`). `check_config` runs before any work: it refuses
a field no dataclass declares (a typo), a value of the wrong type and a value out of range, each in one line that
names the field (`ConfigError`).

    c.loss = section(LossConfig)            # every LossConfig field, with its default
    options = check_config(c)               # -> TrainOptions (typed, validated) or ConfigError
"""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any

from make_jax.data.pipeline import PipelineOptions
from make_jax.data.transforms import TrainTransformConfig
from make_jax.errors import InputError
from make_jax.losses.config import LossConfig


class ConfigError(InputError):
    """A config field that is unknown, missing, of the wrong type or out of range; the message is one line."""


# ---- the sections ----------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class RunOptions:
    """Top-level fields. `total_steps` > 0 overrides `epochs`; the steps of a run must come out > 0.

    init_from: the model to start from — any reference make_jax.load takes (a converted directory, a registry
    name, hf-hub:...; the recipe: OpenAI CLIP ViT-B/16) — or "scratch" for open_clip's random initialisation;
    empty is refused (say which one; make_jax.train.loop.check_init_from).
    microbatches: > 1 runs the two-pass embedding-cache step (GradCache) over this many micro-batches — the
    same loss and gradients as one pass with the memory of one micro-batch's activations.
    checkpoint_every: steps between checkpoints (the last step is always saved).
    eval_batch_size: images per encoder call of the evaluations in `config.evals`.
    sharding_rules: ((regex, spec), ...) over '/'-joined parameter names, first full match wins: how parameters
    and optimizer state are split over the `config.mesh` axes (make_jax/train/sharding.py; a spec is one entry
    per array axis, a mesh axis name or None). Unmatched parameters get the automatic fsdp rule.
    """

    seed: int = 0
    init_from: str = ""
    batch_size: int = 2048
    microbatches: int = 1
    epochs: float = 15.0
    total_steps: int = 0
    log_every: int = 10
    checkpoint_every: int = 200
    keep_checkpoints: int = 3
    tensorboard: bool = True
    progress: bool = True
    eval_batch_size: int = 64
    sharding_rules: tuple[tuple[str, tuple[str | None, ...]], ...] = ()

    def __post_init__(self):
        from make_jax.train.sharding import check_rules  # here, not at the top: sharding imports this module

        check_rules(self.sharding_rules)
        _positive(self, "batch_size", "microbatches", "log_every", "checkpoint_every", "keep_checkpoints",
                  "eval_batch_size")
        if self.total_steps < 0 or self.epochs < 0:
            raise ConfigError(f"config.total_steps and config.epochs must be >= 0, got {self.total_steps} and "
                              f"{self.epochs}")
        if self.total_steps == 0 and self.epochs == 0:
            raise ConfigError("config.total_steps and config.epochs are both 0: the run would train nothing")
        if self.batch_size % self.microbatches:
            raise ConfigError(f"config.batch_size={self.batch_size} is not a multiple of "
                              f"config.microbatches={self.microbatches}")


@dataclasses.dataclass(frozen=True)
class ModelOptions:
    """A preset of make_jax.models.config.PRESETS, the numerics that may differ from it, and its text tower.

    text_tower: the model's `TextConfig.tower` — "clip" (the preset's causal tower, CLIP BPE ids) or "bert" (a
    bidirectional BERT encoder pooled at [CLS], WordPiece ids; make_jax/train/text_tower.py, docs/training.md).
    text_init: "bert" only — a Hugging Face BertModel directory (config.json, weights, vocab.txt, e.g.
    BiomedBERT): the tower's geometry, vocabulary and initial weights; config.init_from then gives the image tower
    and logit_scale (a checkpoint with the same image tower, or "scratch").
    text_vocab: "bert" only, instead of text_init — a WordPiece vocab.txt for a tower trained from scratch (the
    preset's text geometry with this vocabulary).
    """

    name: str = "ViT-B-16"
    dtype: str = "bfloat16"
    remat: bool | str = True  # or one tower: 'vision' / 'text'
    attention: str = "auto"
    activation: str = "quick_gelu"
    text_tower: str = "clip"
    text_init: str = ""
    text_vocab: str = ""

    def __post_init__(self):
        from make_jax.models.config import TEXT_TOWERS

        if self.text_tower not in TEXT_TOWERS:
            raise ConfigError(f"config.model.text_tower must be one of {TEXT_TOWERS}, got {self.text_tower!r}")
        if self.text_tower == "clip" and (self.text_init or self.text_vocab):
            field = "text_init" if self.text_init else "text_vocab"
            raise ConfigError(f"config.model.{field} is for text_tower='bert'; text_tower is 'clip' (whose "
                              "tokenizer, the CLIP BPE, is shipped)")
        if self.text_tower == "bert" and bool(self.text_init) == bool(self.text_vocab):
            raise ConfigError("config.model.text_tower='bert' needs exactly one of config.model.text_init (a "
                              "Hugging Face BertModel directory) and config.model.text_vocab (a WordPiece "
                              "vocab.txt, from scratch)")


@dataclasses.dataclass(frozen=True)
class DataOptions(PipelineOptions):
    """`config.data`: the pipeline's own options (declared in `make_jax.data.pipeline.PipelineOptions`:
    image_size, context_length, slot0, workers, worker_buffer_size, read_threads, prefetch), which reach the
    pipeline as given (make_jax.train.data), and what training reads besides.

    records: the dataset directory (`python -m make_jax.records.convert`); with a `prepare.synthderm` step, empty
    means SynthDerm's records.
    split: the records' split to train on.
    """

    records: str = ""
    split: str = "train"


@dataclasses.dataclass(frozen=True)
class OptimOptions:
    """AdamW and open_clip's warm-up + cosine schedule (make_jax.train.optimizer); grad_clip_norm 0: no clipping."""

    lr: float = 1e-4
    warmup_steps: int = 1500
    b1: float = 0.9
    b2: float = 0.98
    eps: float = 1e-6
    weight_decay: float = 0.1
    grad_clip_norm: float = 0.0

    def __post_init__(self):
        _positive(self, "eps", section="optim")
        _non_negative(self, "lr", "warmup_steps", "weight_decay", "grad_clip_norm", section="optim")
        for name in ("b1", "b2"):
            if not 0 <= getattr(self, name) < 1:
                raise ConfigError(f"config.optim.{name} must be in [0, 1), got {getattr(self, name)}")


@dataclasses.dataclass(frozen=True)
class MeshOptions:
    """`config.mesh`: devices on each mesh axis, -1 = the rest (make_jax/train/sharding.py). Both axes split the
    batch; parameters and optimizer state are replicated over `data` and split over `fsdp` (for towers that do
    not fit replicated, ViT-L/14 and up). data x fsdp must be the device count (checked when training starts)."""

    data: int = -1
    fsdp: int = 1

    def __post_init__(self):
        check_mesh_sizes(self.data, self.fsdp)


def check_mesh_sizes(data: int, fsdp: int) -> None:
    """`ConfigError` (one line) unless each of `config.mesh`'s sizes is >= 1 or -1 and at most one is -1: what
    can be checked without the device count (make_jax/train/sharding.py mesh_shape checks the rest)."""
    for name, size in (("data", data), ("fsdp", fsdp)):
        if size != -1 and size < 1:
            raise ConfigError(f"config.mesh.{name} must be >= 1 or -1 (the rest of the devices), got {size}")
    if data == -1 and fsdp == -1:
        raise ConfigError(f"config.mesh: only one axis may be -1, got data={data}, fsdp={fsdp}")


@dataclasses.dataclass(frozen=True)
class PackingOptions:
    """Exact text savings (paper mode; make_jax/train/packing.py, docs/performance.md): encode only
    the valid texts, once each, in length groups at the shortest context that holds them. Budgets come from
    `sample_batches` batches (the `quantile` of valid and distinct texts per batch, plus a full fallback tier)."""

    enabled: bool = False
    sample_batches: int = 16
    quantile: float = 0.99
    groups: tuple[float, ...] = (0.6, 0.2, 0.2)
    dedup: bool = True

    def __post_init__(self):
        _positive(self, "sample_batches", section="packing")
        if not 0 < self.quantile <= 1:
            raise ConfigError(f"config.packing.quantile must be in (0, 1], got {self.quantile}")
        if not self.groups or any(g <= 0 for g in self.groups):
            raise ConfigError(f"config.packing.groups must be positive fractions, got {self.groups}")
        if abs(sum(self.groups) - 1) > 1e-6:  # fractions of the encoded budget
            raise ConfigError(f"config.packing.groups must sum to 1, got {self.groups} (sum {sum(self.groups):g})")


@dataclasses.dataclass(frozen=True)
class PrepareSteps:
    """`config.prepare`: data preparation steps run before training (make_jax.train.prepare.STEPS), each an
    optional sub-section below."""


# Section path → (dataclass, fields of it that are not config fields). "" is the top level.
SECTIONS: dict[str, tuple[type, tuple[str, ...]]] = {
    "": (RunOptions, ()),
    "model": (ModelOptions, ()),
    "loss": (LossConfig, ()),
    "data": (DataOptions, ()),
    "data.augment": (TrainTransformConfig, ("size",)),  # size is data.image_size
    "optim": (OptimOptions, ()),
    "mesh": (MeshOptions, ()),
    "packing": (PackingOptions, ()),
    "prepare": (PrepareSteps, ()),
}
# Top-level scalars a config may add: the ablation row (a label) and the rows of a sweep.
OPTIONAL_FIELDS: dict[str, type] = {"row": str, "sweep_rows": str}
# Top-level sections whose entries are checked elsewhere: `evals` (make_jax.evaluate.suite.parse_evals).
FREE_SECTIONS = ("evals",)


def section(cls: type, exclude: tuple[str, ...] = (), **overrides):
    """A ConfigDict of `cls`'s fields with their defaults (minus `exclude`), then `overrides`."""
    import ml_collections

    values = {f.name: _default(f) for f in dataclasses.fields(cls) if f.name not in exclude}
    unknown = set(overrides) - set(values)
    if unknown:
        raise ConfigError(f"{cls.__name__} has no field {sorted(unknown)[0]!r}")
    values.update(overrides)
    return ml_collections.ConfigDict(values)


@dataclasses.dataclass(frozen=True)
class TrainOptions:
    """The typed, validated config of one training run."""

    run: RunOptions
    model: ModelOptions
    loss: LossConfig
    data: DataOptions
    augment: TrainTransformConfig
    optim: OptimOptions
    mesh: MeshOptions
    packing: PackingOptions
    evals: tuple  # of make_jax.evaluate.suite.EvalEntry
    prepare: dict  # step name -> its options (the step's OPTIONS dataclass, make_jax/train/prepare.py)


def check_config(config) -> TrainOptions:
    """Every field of `config` (a ConfigDict or nested dict) checked against the schema; raises `ConfigError`
    (one line naming the field) for an unknown, missing, mistyped or out-of-range field."""
    tree = config.to_dict() if hasattr(config, "to_dict") else dict(config)
    steps = _prepare_sections(tree)
    every = {**SECTIONS, **steps}
    typed = {}
    for path, (cls, exclude) in every.items():
        node = tree
        for part in filter(None, path.split(".")):
            node = node.get(part) if isinstance(node, dict) else None
        if not isinstance(node, dict):
            raise ConfigError(f"config.{path}: missing section (start from configs/common.base_config())")
        children = {p for p in every if p and "." not in p} if not path else \
            {p[len(path) + 1:] for p in every if p.startswith(path + ".") and "." not in p[len(path) + 1:]}
        extra = OPTIONAL_FIELDS if not path else {}
        free = set(FREE_SECTIONS) if not path else set()
        typed[path] = _build(cls, exclude, node, path, skip=children | set(extra) | free)
        for name, kind in extra.items():
            if name in node and not isinstance(node[name], kind):
                raise ConfigError(f"config.{name} must be a {kind.__name__}, got {node[name]!r}")
    _check_context_length(typed["model"], typed["data"])
    return TrainOptions(run=typed[""], model=typed["model"], loss=typed["loss"], data=typed["data"],
                        augment=typed["data.augment"], optim=typed["optim"], mesh=typed["mesh"],
                        packing=typed["packing"],
                        evals=_evals(tree), prepare={p.split(".", 1)[1]: typed[p] for p in steps})


def _check_context_length(model: ModelOptions, data: DataOptions) -> None:
    """`data.context_length` within what the text tower's tokenizer can give: the records' stored CLIP BPE ids
    are 77 long (a CLIP tower reads them cut to L); WordPiece needs [CLS] and [SEP]. (A BERT directory's
    max_position_embeddings bounds it too: checked with the directory, make_jax.train.text_tower.)"""
    from make_jax.data.records import CONTEXT_LENGTH

    L = data.context_length
    if model.text_tower == "clip" and not 1 <= L <= CONTEXT_LENGTH:
        raise ConfigError(f"config.data.context_length must be in [1, {CONTEXT_LENGTH}] for text_tower='clip' (the "
                          f"records' stored CLIP ids are {CONTEXT_LENGTH} long), got {L}")
    if model.text_tower == "bert" and L < 2:
        raise ConfigError(f"config.data.context_length must be >= 2 for text_tower='bert' ([CLS] and [SEP]), got {L}")


def _prepare_sections(tree: dict) -> dict[str, tuple[type, tuple[str, ...]]]:
    """`prepare.STEP` → (the step's OPTIONS dataclass, ()) for each step the config asks for: each step declares
    its own fields (make_jax/train/prepare.py), so this schema holds none of them."""
    from make_jax.train.prepare import STEPS, options_class

    steps = tree.get("prepare")
    if not isinstance(steps, dict):
        return {}  # missing: reported with the other sections
    for name in steps:
        if name not in STEPS:
            raise ConfigError(f"config.prepare.{name}: unknown preparation step (known: {', '.join(sorted(STEPS))})")
    return {f"prepare.{name}": (options_class(name), ()) for name in steps}


def _evals(tree: dict) -> tuple:
    """`config.evals` ({name: dict(task=..., every=..., **options)}) as checked EvalEntry's; {} or absent: none."""
    from make_jax.evaluate.suite import parse_evals

    evals = tree.get("evals")
    if not evals:
        return ()
    try:
        return tuple(parse_evals(evals, where="config.evals"))
    except ValueError as e:
        raise ConfigError(str(e)) from None


def check_paths(options: TrainOptions) -> None:
    """The inputs a run reads exist (run after demo preparation has filled in its paths)."""
    from make_jax.data.records import resolve_dataset_dir

    if not options.data.records:
        raise ConfigError("config.data.records is empty: point it at a dataset written by "
                          "`python -m make_jax.records.convert` (see docs/data.md)")
    try:
        resolve_dataset_dir(options.data.records)
    except (FileNotFoundError, ValueError) as e:
        raise ConfigError(f"config.data.records: {e}") from None
    if options.model.text_tower != "clip":  # the BERT directory or vocabulary the text tower is built from
        from make_jax.train.text_tower import text_config_from

        text_config_from(options)
    for e in options.evals:  # the files and folders an evaluation reads (other options are checked by the task)
        for key, value in e.options.items():
            if key in _EVAL_FILES and isinstance(value, str) and not Path(value).is_file():
                raise ConfigError(f"config.evals.{e.name}.{key}: no file {value}")
            if key in _EVAL_DIRS and isinstance(value, str) and not Path(value).is_dir():
                raise ConfigError(f"config.evals.{e.name}.{key}: no directory {value}")


# Evaluation options that name an input file or folder (checked before training; a preset class list such as
# "PAD" is not a path, so `classes` is checked only when it looks like one).
_EVAL_FILES = ("csv", "train_csv", "val_csv", "test_csv")
_EVAL_DIRS = ("data_dir", "image_root")


def check_steps(options: TrainOptions, num_examples: int | None, device_count: int) -> int:
    """The run's total steps (> 0), with the global batch divisible over the devices and micro-batches."""
    run = options.run
    per = device_count * run.microbatches
    if run.batch_size % per:
        raise ConfigError(f"config.batch_size={run.batch_size} is not divisible by {device_count} device(s) "
                          f"x config.microbatches={run.microbatches}")
    if run.total_steps > 0:
        return run.total_steps
    if not num_examples:
        raise ConfigError("set config.total_steps, or config.epochs with a dataset of known size")
    steps = int(run.epochs * num_examples // run.batch_size)
    if steps <= 0:
        raise ConfigError(f"config.epochs={run.epochs} over {num_examples} examples at batch "
                          f"{run.batch_size} gives {steps} steps; raise epochs or set config.total_steps")
    return steps


# ---- helpers ---------------------------------------------------------------------------------------------------

def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        return f.default_factory()  # type: ignore[misc]
    raise ConfigError(f"field {f.name} has no default")


def _build(cls: type, exclude: tuple[str, ...], node: dict, path: str, skip: set[str]):
    where = f"config.{path}." if path else "config."
    fields = {f.name: f for f in dataclasses.fields(cls) if f.name not in exclude}
    unknown = sorted(k for k in node if k not in fields and k not in skip)
    if unknown:
        raise ConfigError(f"{where}{unknown[0]}: unknown field (known: {', '.join(sorted(set(fields) | skip))})")
    hints = typing.get_type_hints(cls)
    values = {}
    for name in fields:
        if name not in node:
            raise ConfigError(f"{where}{name}: missing (start from configs/common.base_config())")
        values[name] = _coerce(node[name], hints[name], f"{where}{name}")
    try:
        return cls(**values)
    except ConfigError:
        raise
    except (ValueError, TypeError) as e:
        raise ConfigError(f"{where.rstrip('.')}: {e}") from None


def _coerce(value: Any, hint: Any, name: str) -> Any:
    """`value` as the annotated type (int → float, list → tuple); ConfigError when it is not of that type."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        for option in typing.get_args(hint):
            try:
                return _coerce(value, option, name)
            except ConfigError:
                pass
        raise ConfigError(f"{name} must be {hint}, got {value!r}")
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{name} must be a tuple, got {value!r}")
        args = typing.get_args(hint)
        inner = [args[0]] * len(value) if len(args) == 2 and args[1] is Ellipsis else list(args)
        if len(inner) != len(value):
            raise ConfigError(f"{name} must have {len(inner)} values, got {value!r}")
        return tuple(_coerce(v, t, name) for v, t in zip(value, inner))
    if hint is type(None):
        if value is None:
            return None
    elif hint is bool:
        if isinstance(value, bool):
            return value
    elif hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif hint is str:
        if isinstance(value, str):
            return value
    else:  # pragma: no cover - a schema type this checker does not know
        raise ConfigError(f"{name}: cannot check values of type {hint}")
    raise ConfigError(f"{name} must be {getattr(hint, '__name__', hint)}, got {value!r}")


def _positive(obj, *names: str, section: str = "") -> None:
    for name in names:
        if not getattr(obj, name) > 0:
            raise ConfigError(f"config.{section + '.' if section else ''}{name} must be > 0, got {getattr(obj, name)}")


def _non_negative(obj, *names: str, section: str = "") -> None:
    for name in names:
        if not getattr(obj, name) >= 0:
            raise ConfigError(f"config.{section + '.' if section else ''}{name} must be >= 0, got "
                              f"{getattr(obj, name)}")
