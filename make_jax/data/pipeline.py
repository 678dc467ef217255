"""The Grain input pipeline over converted MAKE records (``make_jax.records.convert``).

    from make_jax.data.pipeline import PipelineConfig, train_dataset, eval_dataset

    cfg = PipelineConfig(image_size=224, context_length=77, seed=0, workers=8)
    ds = train_dataset("DATA/make_derm/1.0.0", global_batch_size=2048, config=cfg)   # a grain.IterDataset
    it = iter(ds)
    batch = next(it)          # {'images': (B, S, S, 3) uint8, 'text_ids': (B, 11, L) int32, 'text_valid': (B, 11) bool}
    state = it.get_state()    # checkpoint (or grain.checkpoint.CheckpointSave(it) with Orbax) ...
    it2 = iter(ds); it2.set_state(state)   # ... and resume: exactly the batches that would have come next

B is this process's part of the global batch (``global_batch_size / process_count``).

How the order is defined (so it is reproducible, resumable, and independent of the worker count):

* Element ``j`` of this process's stream belongs to local step ``s = j // B`` and row ``r = j % B``; step ``s`` is
  step ``k = s % steps_per_epoch`` of epoch ``e = s // steps_per_epoch``, and the row sits at position
  ``k·G + p·B + r`` of epoch ``e``'s order (G the global batch, p this process). So process p's batch is rows
  [p·B, (p+1)·B) of the global batch, and concatenating the processes' batches gives the global batch.
* Epoch ``e``'s order is a permutation of the records seeded by (seed, e) (train) or the record order (eval):
  ``np.random.default_rng([seed, e, 0x5EED0001]).permutation(num_records)``.
  Training drops each epoch's last ``N mod G`` records of that permutation (drop_remainder; a different subset
  each epoch); eval pads its last global batch and marks padding with ``example_valid = False``.
* Each example's augmentation draws come from a generator seeded by (seed, epoch, record index),
  ``np.random.default_rng([seed, epoch, index, 0x5EED0002])``, in the order of ``transforms.train_transform`` —
  not from a worker's state — and ``mp_prefetch`` interleaves whole batches from its workers round-robin, so the batches are
  the same for any number of worker processes or threads.
* The pipeline is ``MapDataset.range → map(load, decode, transform) → batch → to_iter_dataset → mp_prefetch →
  thread prefetch``; every stage is a Grain stage with checkpointable iterator state.
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from make_jax.tokenizer import EOT_ID

from .schema import NUM_SLOTS, SLOT_RAW
from .records import CONTEXT_LENGTH, PIPELINE_FIELDS, TRAIN, VALIDATION, RecordSource, decode_record
from make_jax.preprocess import eval_crop, normalize_uint8

from .transforms import TrainTransformConfig, decode_image, train_transform

_PERM_STREAM = 0x5EED_0001
_AUG_STREAM = 0x5EED_0002
_FOREVER_EPOCHS = 10**9
# The record fields that hold CLIP BPE ids (records.TEXT_IDS_TOKENIZER) or lengths counted in them.
_CLIP_ID_FIELDS = ("text_ids", "text_lengths", "dagger_ids", "dagger_length")


@dataclass(frozen=True)
class PipelineOptions:
    """What the pipeline reads and how it runs: the options a training config sets as ``config.data.<field>``
    (``make_jax.train.config.DataOptions`` extends this class, so each is declared here only).

    image_size:         output side S (224 for the paper; the CPU demo uses 32).
    context_length:     L; ids are cut to L as the tokenizer would (EOT kept at L-1). ≤ 77 with the records' ids
                        (``PipelineConfig.tokenizer`` None); any L ≥ 1 with a tokenizer of the model's.
    slot0:              'raw' (slot 0 = the raw caption) or 'dagger' (slot 0 = the Derm1M† text; clip_dagger).
    workers:            worker processes (``mp_prefetch``); 0 = all in this process.
    worker_buffer_size: batches each worker process keeps ready.
    read_threads:       threads per process computing batches (PIL and NumPy release the GIL); 0 = inline.
    prefetch:           batches a background thread of the consuming process keeps ready (0 = none).
    """

    image_size: int = 224
    context_length: int = CONTEXT_LENGTH
    slot0: str = "raw"
    workers: int = 0
    worker_buffer_size: int = 2
    read_threads: int = 0
    prefetch: int = 2

    def __post_init__(self):
        for name in ("image_size", "context_length", "worker_buffer_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("workers", "read_threads", "prefetch"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.slot0 not in ("raw", "dagger"):
            raise ValueError(f"slot0 must be 'raw' or 'dagger', got {self.slot0!r}")


@dataclass(frozen=True)
class PipelineConfig(PipelineOptions):
    """Every option of the input pipeline: ``PipelineOptions`` and what a caller derives from elsewhere (training
    sets them from its other sections: ``make_jax.train.data.pipeline_config``).

    output:           'uint8' (normalise on device, ``train.forward.normalize_images``) or 'float32' (normalised).
    seed:             shuffle and augmentation seed.
    with_index:       also yield 'index' (B,) int64 record index and 'epoch' (B,) int64 (debugging/tests).
    augment:          the train transform's parameters (its ``size`` is replaced by ``image_size``).
    official_inputs:  feed the texts the public MAKE code feeds (``public_text_inputs``; the loss's official mode
                      sets it): ids for every slot, validity = the CSV masks. False: invalid slots are all-zero
                      ids that no loss term reads (paper mode).
    tokenizer:        None: the records' stored ids (CLIP BPE, ``records.TEXT_IDS_TOKENIZER``, L ≤ 77). Otherwise
                      the model's tokenizer (``tokenize_with_lengths(texts, L)``, e.g. BERT's WordPiece), applied
                      to the slots' stored strings as the converter applies the CLIP one (an invalid slot: pad ids,
                      length 0; validity as recorded); any L. The stored ids are then never read.
    """

    output: str = "uint8"
    seed: int = 0
    with_index: bool = False
    augment: TrainTransformConfig = field(default_factory=TrainTransformConfig)
    official_inputs: bool = False
    tokenizer: Any = None

    def __post_init__(self):
        super().__post_init__()
        if self.tokenizer is None and self.context_length > CONTEXT_LENGTH:
            raise ValueError(f"context_length must be in [1, {CONTEXT_LENGTH}] (the records' stored ids), got "
                             f"{self.context_length}")
        if self.output not in ("uint8", "float32"):
            raise ValueError(f"output must be 'uint8' or 'float32', got {self.output!r}")


def tokenize_slots(texts, valid: np.ndarray, tokenizer, context_length: int) -> tuple[np.ndarray, np.ndarray]:
    """(ids (N, L), lengths (N,)) of the slots' strings by `tokenizer`, as the converter writes the CLIP ones: an
    invalid slot gets pad ids and length 0."""
    valid = np.asarray(valid, bool)
    ids, lengths = tokenizer.tokenize_with_lengths([t if v else "" for t, v in zip(texts, valid)], context_length)
    ids[~valid] = tokenizer.pad_token_id
    lengths[~valid] = 0
    return ids, lengths


def trim_text_ids(ids: np.ndarray, lengths: np.ndarray, context_length: int) -> np.ndarray:
    """(…, 77) ids → (…, L): the ids the tokenizer gives at context L ([SOT] + body[:L-2] + [EOT] + pad)."""
    if context_length >= ids.shape[-1]:
        return ids
    out = ids[..., :context_length].copy()
    out[lengths > context_length, context_length - 1] = EOT_ID
    return out


# What the public code tokenizes for an empty CSV cell (src/open_clip_train/data.py, MultiPositiveCsvDataset): the
# aspect columns are read by pandas as NaN and passed through str() -> "nan"; the subcaption columns go through
# fillna('') -> "" (SOT + EOT). Index = slot.
PUBLIC_EMPTY_TEXTS = ("nan", "nan", "nan") + ("",) * (NUM_SLOTS - 3)


def public_text_inputs(ids: np.ndarray, lengths: np.ndarray, valid: np.ndarray, texts, mask_csv: np.ndarray,
                       tokenizer) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The (ids (N, 77), lengths (N,), valid (N,)) the public MAKE code feeds for one record.

    Every slot gets ids: a slot whose record ids are empty (invalid in the paper's sense) is tokenized from its
    string, or from ``PUBLIC_EMPTY_TEXTS`` when the CSV cell was empty, so it enters the public loss's denominators
    (and its patch weighting) as the public code's "nan" / "" encodings instead of all-zero ids. Validity is the
    CSV masks as written (the public ``caption_mask``); when a mask cell was malformed (``mask_csv`` all False) the
    record's validity stands, as the public code cannot read such a row at all.
    """
    ids, lengths = ids.copy(), lengths.copy()
    todo = [n for n in range(len(lengths)) if lengths[n] == 0]
    if todo:
        strings = [texts[n] if texts[n] else PUBLIC_EMPTY_TEXTS[n] for n in todo]
        new_ids, new_lengths = tokenizer.tokenize_with_lengths(strings, ids.shape[-1])
        ids[todo], lengths[todo] = new_ids, new_lengths
    out_valid = np.asarray(mask_csv, bool) if np.any(mask_csv) else np.asarray(valid, bool)
    return ids, lengths, out_valid


def steps_per_epoch(num_records: int, global_batch_size: int, drop_remainder: bool = True) -> int:
    if drop_remainder:
        return num_records // global_batch_size
    return math.ceil(num_records / global_batch_size)


@dataclass(frozen=True)
class Sampler:
    """Element j of one process's stream → (epoch, record index), or record -1 for eval padding."""

    num_records: int
    global_batch_size: int
    process_index: int
    process_count: int
    shuffle: bool
    seed: int
    drop_remainder: bool

    @property
    def local_batch_size(self) -> int:
        return self.global_batch_size // self.process_count

    @property
    def steps_per_epoch(self) -> int:
        return steps_per_epoch(self.num_records, self.global_batch_size, self.drop_remainder)

    def permutation(self, epoch: int) -> np.ndarray:
        return np.random.default_rng([self.seed, epoch, _PERM_STREAM]).permutation(self.num_records)

    def locate(self, j: int, perm_cache: dict) -> tuple[int, int]:
        b = self.local_batch_size
        s, r = divmod(int(j), b)
        epoch, k = divmod(s, self.steps_per_epoch)
        pos = k * self.global_batch_size + self.process_index * b + r
        if pos >= self.num_records:
            return epoch, -1
        if not self.shuffle:
            return epoch, pos
        perm = perm_cache.get(epoch)
        if perm is None:  # keep the last two epochs (threads may straddle an epoch boundary)
            perm = self.permutation(epoch)
            for old in sorted(perm_cache)[:-1]:
                perm_cache.pop(old, None)
            perm_cache[epoch] = perm
        return epoch, int(perm[pos])


class ExampleLoader:
    """The per-element map: locate → read → decode → transform → text slots. Picklable (spawned workers)."""

    def __init__(self, source: RecordSource, sampler: Sampler, config: PipelineConfig, train: bool):
        self.source = source
        self.sampler = sampler
        self.config = config
        self.train = train
        self.augment = dataclasses.replace(config.augment, size=config.image_size)
        self._perm_cache: dict = {}

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_perm_cache"] = {}
        return state

    def example_rng(self, epoch: int, index: int) -> np.random.Generator:
        return np.random.default_rng([self.config.seed, epoch, index, _AUG_STREAM])

    def __call__(self, j: int) -> dict:
        cfg = self.config
        epoch, index = self.sampler.locate(j, self._perm_cache)
        L, S = cfg.context_length, cfg.image_size
        if index < 0:  # eval padding
            out = {
                "images": np.zeros((S, S, 3), np.uint8),
                "text_ids": np.zeros((NUM_SLOTS, L), np.int32),
                "text_valid": np.zeros((NUM_SLOTS,), bool),
            }
        else:
            tok = cfg.tokenizer
            fields = PIPELINE_FIELDS + (("texts", "mask_csv") if cfg.official_inputs else ())
            if tok is not None:  # the strings, never the stored CLIP ids or their lengths
                fields = tuple(f for f in fields if f not in _CLIP_ID_FIELDS) + ("texts", "dagger_text")
            rec = decode_record(self.source[index], tuple(dict.fromkeys(fields)))
            img = decode_image(rec["image"])
            if self.train:
                image = train_transform(img, self.example_rng(epoch, index), self.augment)
            else:
                image = np.asarray(eval_crop(img, S), np.uint8)
            valid = rec["text_valid"]
            if tok is None:
                ids, lengths = rec["text_ids"], rec["text_lengths"]
            else:
                ids, lengths = tokenize_slots(rec["texts"], valid, tok, L)
            if cfg.official_inputs:
                from make_jax.tokenizer import get_tokenizer

                ids, lengths, valid = public_text_inputs(ids, lengths, valid, rec["texts"], rec["mask_csv"],
                                                         tok or get_tokenizer())
            if cfg.slot0 == "dagger":
                if tok is None:
                    d_ids, d_length = rec["dagger_ids"], rec["dagger_length"]
                else:
                    d_ids, d_length = (x[0] for x in tok.tokenize_with_lengths([rec["dagger_text"]], L))
                ids[SLOT_RAW] = d_ids
                lengths[SLOT_RAW] = d_length
                valid[SLOT_RAW] = d_length > 0
            if tok is None:
                ids = trim_text_ids(ids, lengths, L)
            out = {"images": image, "text_ids": ids, "text_valid": valid}
        if cfg.output == "float32":
            out["images"] = normalize_uint8(out["images"])
        if not self.train:
            out["example_valid"] = np.bool_(index >= 0)
        if cfg.with_index:
            out["index"] = np.int64(index)
            out["epoch"] = np.int64(epoch)
        return out


def _stack(examples):
    return {k: np.stack([e[k] for e in examples]) for k in examples[0]}


def _shard(shard_options):
    if shard_options is None:
        import grain

        shard_options = grain.sharding.ShardByJaxProcess()
    return shard_options.shard_index, shard_options.shard_count


def _grain_flags_workaround() -> None:
    """Grain 0.2.x reads an absl flag when starting worker processes with JAX imported, and raises if the program
    never parsed absl flags (google/grain#1355, #1360). Mark just that flag as given (its default value applies),
    as Grain itself does for its debug flags; a program that parses absl flags is left alone."""
    from absl import flags

    if not flags.FLAGS.is_parsed():
        for name in ("grain_enable_multiprocess_worker_profiling",):
            if name in flags.FLAGS:
                flags.FLAGS[name].present = True


def _build(source, sampler, config, train, num_steps):
    import grain

    b = sampler.local_batch_size
    loader = ExampleLoader(source, sampler, config, train)
    ds = grain.MapDataset.range(num_steps * b).map(loader).batch(b, drop_remainder=True, batch_fn=_stack)
    read = grain.ReadOptions(num_threads=config.read_threads, prefetch_buffer_size=max(1, 2 * config.read_threads))
    it = ds.to_iter_dataset(read)
    if config.workers > 0:
        _grain_flags_workaround()
        it = it.mp_prefetch(
            grain.MultiprocessingOptions(num_workers=config.workers,
                                         per_worker_buffer_size=config.worker_buffer_size)
        )
    if config.prefetch > 0:
        it = grain.experimental.ThreadPrefetchIterDataset(it, prefetch_buffer_size=config.prefetch)
    return it


def _check_batch(global_batch_size: int, count: int) -> None:
    if global_batch_size < 1 or global_batch_size % count:
        raise ValueError(f"global batch {global_batch_size} must be a positive multiple of the process count {count}")


def train_dataset(
    path: str | os.PathLike | RecordSource,
    global_batch_size: int,
    config: PipelineConfig = PipelineConfig(),
    *,
    split: str = TRAIN,
    num_epochs: int | None = None,
    shard_options=None,
):
    """Training batches: per-epoch seeded shuffle, repeat (``num_epochs``; None = forever), train transform,
    drop_remainder. ``shard_options`` (``grain.sharding.ShardOptions``; default ``ShardByJaxProcess()``) picks
    this process's rows of every global batch. Yields dicts: 'images' (B, S, S, 3) uint8 (or float32 normalised),
    'text_ids' (B, 11, L) int32, 'text_valid' (B, 11) bool [, 'index', 'epoch' (B,) int64]."""
    source = path if isinstance(path, RecordSource) else RecordSource(path, split)
    p, count = _shard(shard_options)
    _check_batch(global_batch_size, count)
    sampler = Sampler(len(source), global_batch_size, p, count, True, config.seed, True)
    spe = sampler.steps_per_epoch
    if spe == 0:
        raise ValueError(f"{len(source)} records give no full global batch of {global_batch_size}")
    epochs = _FOREVER_EPOCHS if num_epochs is None else num_epochs
    return _build(source, sampler, config, True, spe * epochs)


def eval_dataset(
    path: str | os.PathLike | RecordSource,
    global_batch_size: int,
    config: PipelineConfig = PipelineConfig(),
    *,
    split: str = VALIDATION,
    shard_options=None,
):
    """One pass in record order with the eval transform; the last global batch is padded (zeros) and every batch
    carries 'example_valid' (B,) bool. Same keys as ``train_dataset`` otherwise."""
    source = path if isinstance(path, RecordSource) else RecordSource(path, split)
    p, count = _shard(shard_options)
    _check_batch(global_batch_size, count)
    sampler = Sampler(len(source), global_batch_size, p, count, False, config.seed, False)
    return _build(source, sampler, config, False, sampler.steps_per_epoch)


def num_records(path: str | os.PathLike, split: str = TRAIN) -> int:
    return len(RecordSource(path, split))


__all__ = [
    "ExampleLoader",
    "PipelineConfig",
    "PipelineOptions",
    "Sampler",
    "eval_dataset",
    "num_records",
    "steps_per_epoch",
    "train_dataset",
    "trim_text_ids",
]
