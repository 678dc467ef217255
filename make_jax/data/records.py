"""The MAKE training record: schema, encoding and decoding of one record, and the on-disk dataset layout.

A converted dataset is a TFDS dataset in ArrayRecord format, written and read without TensorFlow::

    OUT/<name>/<version>/                           e.g. OUT/make_derm/1.0.0/
        <name>-train.array_record-00000-of-000NN    one tf.Example per record (TFDS' serialisation)
        <name>-validation.array_record-...
        dataset_info.json, features.json            TFDS metadata (tfds.folder_dataset.write_metadata)
        stats.json, rejects.csv                     conversion statistics and rejected rows / fields
        convert_config.json, .progress/             resumability (settings fingerprint, one marker per shard)

``tfds.builder_from_directory(OUT/<name>/<version>).as_data_source()`` or ``tfds.data_source(<name>,
data_dir=OUT)`` read it (NumPy, no TensorFlow); the Grain pipeline (``make_jax.data.pipeline``) reads the shards
with ``grain.sources.ArrayRecordDataSource`` and ``decode_record`` below, which parses only the fields it needs.

Fields of one record (``N = 11`` text slots in the order of docs/data.md, ``L = 77``):

=====================  ==============  ==========================================================================
name                   type            meaning
=====================  ==============  ==========================================================================
image                  bytes (JPEG     the image, shorter side resized to the conversion's ``shorter_side``
                       or PNG)         (never upscaled), RGB
image_height/width     int32           size of the stored image
original_height/width  int32           size of the source image file
text_ids               int32 (N, L)    CLIP BPE ids (``TEXT_IDS_TOKENIZER``) of each slot's text (zeros where
                                       the slot is invalid); a model with another tokenizer reads ``texts``
text_lengths           int32 (N,)      non-pad tokens (SOT and EOT included, ≤ L); 0 where invalid
text_valid             bool (N,)       CSV mask AND non-empty text
mask_csv               bool (N,)       the CSV masks as written ([raw, disease, concept] + 8 subtexts); all
                                       False when a mask cell was malformed (the texts decided then)
texts                  str (N,)        the raw strings of the slots (kept even where the slot is invalid)
dagger_text            str             Derm1M† text: ``aspects.dagger_text(raw, disease, concept)`` of the valid
                                       slots (the clip_dagger baseline's slot-0 text)
dagger_ids             int32 (L,)      its ids; ``dagger_length`` int32
row                    int64           1-based data row in the source CSV
split                  str             'train' or 'validation'
filename ... gender    str             metadata copied from the CSV ('' when the column is absent)
=====================  ==============  ==========================================================================
"""

from __future__ import annotations

import functools
import json
import os
import threading
from collections.abc import Iterable, Sequence

import numpy as np

from .schema import DERM1M_COLUMNS, NUM_SLOTS

CONTEXT_LENGTH = 77
#: The tokenizer (make_jax.models.config.TOKENIZERS) of ``text_ids`` / ``dagger_ids``: every record holds CLIP BPE
#: ids at ``CONTEXT_LENGTH``. The pipeline hands them only to a model with this tokenizer; for any other it
#: tokenizes the stored strings (``texts``, ``dagger_text``) with the model's tokenizer (PipelineConfig.tokenizer).
TEXT_IDS_TOKENIZER = "clip_bpe"
DEFAULT_NAME = "make_derm"
FILE_FORMAT = "array_record"
TRAIN, VALIDATION = "train", "validation"

#: Metadata columns copied verbatim from the CSV into each record ('' when the CSV lacks the column): the
#: Derm1M columns but the truncated caption, which is the raw slot's text.
METADATA_COLUMNS: tuple[str, ...] = tuple(c for c in DERM1M_COLUMNS if c != "truncated_caption")

# name -> (kind, shape); kinds: bytes, str, str_list, int, int_array, bool_array
SCHEMA: dict[str, tuple[str, tuple[int, ...]]] = {
    "image": ("bytes", ()),
    "image_height": ("int", ()),
    "image_width": ("int", ()),
    "original_height": ("int", ()),
    "original_width": ("int", ()),
    "text_ids": ("int_array", (NUM_SLOTS, CONTEXT_LENGTH)),
    "text_lengths": ("int_array", (NUM_SLOTS,)),
    "text_valid": ("bool_array", (NUM_SLOTS,)),
    "mask_csv": ("bool_array", (NUM_SLOTS,)),
    "texts": ("str_list", (NUM_SLOTS,)),
    "dagger_text": ("str", ()),
    "dagger_ids": ("int_array", (CONTEXT_LENGTH,)),
    "dagger_length": ("int", ()),
    "row": ("int64", ()),
    "split": ("str", ()),
    **{c: ("str", ()) for c in METADATA_COLUMNS},
}

#: The fields the training pipeline decodes.
PIPELINE_FIELDS = ("image", "text_ids", "text_lengths", "text_valid", "dagger_ids", "dagger_length")


@functools.lru_cache(maxsize=4)
def features(image_format: str = "jpeg"):
    """The ``tfds.features.FeaturesDict`` of one record (TensorFlow is not needed to build, encode or decode it)."""
    import tensorflow_datasets as tfds

    if image_format not in ("jpeg", "png"):
        raise ValueError(f"image_format must be 'jpeg' or 'png', got {image_format!r}")
    f = tfds.features
    spec = {}
    for name, (kind, shape) in SCHEMA.items():
        if name == "image":
            spec[name] = f.Image(shape=(None, None, 3), encoding_format=image_format)
        elif kind == "str":
            spec[name] = f.Text()
        elif kind == "str_list":
            spec[name] = f.Sequence(f.Text(), length=shape[0])
        elif kind == "int":
            spec[name] = f.Scalar(dtype=np.int32)
        elif kind == "int64":
            spec[name] = f.Scalar(dtype=np.int64)
        elif kind == "int_array":
            spec[name] = f.Tensor(shape=shape, dtype=np.int32)
        elif kind == "bool_array":
            spec[name] = f.Tensor(shape=shape, dtype=np.bool_)
        else:  # pragma: no cover - schema typo
            raise AssertionError(kind)
    return f.FeaturesDict(spec)


_PB2_IMPORT = threading.Lock()


@functools.cache  # the lock only until the first call returns: decode_record calls this for every record
def _example_pb2():
    # One thread at a time: this is a process's first import of tensorflow_datasets, and two threads importing
    # it at once (Grain's threads inside a worker process, each decoding its first record) deadlocked with
    # Python 3.11, one in the import lock and one in a functools.cached_property lock of its lazy imports (seen
    # as a hung test_pipeline in CI; the stacks of both threads ended in etils lazy_imports_utils).
    with _PB2_IMPORT:
        from tensorflow_datasets.proto import tf_example_pb2

    return tf_example_pb2


def encode_record(example: dict, image_format: str = "jpeg") -> bytes:
    """One record dict (every ``SCHEMA`` field) → serialised tf.Example bytes, deterministic (sorted keys)."""
    missing = set(SCHEMA) - set(example)
    if missing:
        raise KeyError(f"record lacks fields {sorted(missing)}")
    extra = set(example) - set(SCHEMA)
    if extra:
        raise KeyError(f"record has unknown fields {sorted(extra)}")
    raw = features(image_format).serialize_example(example)
    # TFDS serialises the feature map in hash order; re-serialise with sorted keys so reruns give identical bytes.
    return _example_pb2().Example.FromString(raw).SerializeToString(deterministic=True)


def decode_record(raw: bytes, fields: Iterable[str] | None = None) -> dict:
    """Serialised record → dict of NumPy values / str / bytes for ``fields`` (default: all of ``SCHEMA``).

    Parses the tf.Example proto directly and only the requested fields (TFDS' generic decoder converts every
    field); ``tests/test_records.py`` checks it against ``FeaturesDict.deserialize_example_np``. The image stays
    encoded (JPEG/PNG bytes).
    """
    feat = _example_pb2().Example.FromString(raw).features.feature
    out = {}
    for name in SCHEMA if fields is None else fields:
        kind, shape = SCHEMA[name]
        f = feat[name]
        if kind == "bytes":
            out[name] = f.bytes_list.value[0]
        elif kind == "str":
            out[name] = f.bytes_list.value[0].decode("utf-8")
        elif kind == "str_list":
            out[name] = [b.decode("utf-8") for b in f.bytes_list.value]
        elif kind == "int":
            out[name] = np.int32(f.int64_list.value[0])
        elif kind == "int64":
            out[name] = np.int64(f.int64_list.value[0])
        elif kind == "int_array":
            out[name] = np.asarray(f.int64_list.value, dtype=np.int32).reshape(shape)
        else:  # bool_array
            out[name] = np.asarray(f.int64_list.value, dtype=np.bool_).reshape(shape)
    return out


# --- layout -----------------------------------------------------------------------------------------------------
def dataset_dir(out: str | os.PathLike, name: str = DEFAULT_NAME, version: str = "1.0.0") -> str:
    return os.path.join(os.fspath(out), name, version)


def shard_filename(name: str, split: str, index: int, count: int) -> str:
    """TFDS' default template ``{DATASET}-{SPLIT}.{FILEFORMAT}-{SHARD_X_OF_Y}``."""
    return f"{name}-{split}.{FILE_FORMAT}-{index:05d}-of-{count:05d}"


def resolve_dataset_dir(path: str | os.PathLike) -> str:
    """Accept the version directory itself, or ``OUT`` / ``OUT/<name>`` holding exactly one version."""
    path = os.fspath(path)
    if os.path.exists(os.path.join(path, "dataset_info.json")):
        return path
    candidates = []
    for root, _dirs, files in os.walk(path):
        if "dataset_info.json" in files:
            candidates.append(root)
        if root.count(os.sep) - path.count(os.sep) >= 2:
            _dirs[:] = []
    if len(candidates) != 1:
        raise FileNotFoundError(
            f"{path}: expected one converted dataset (a folder with dataset_info.json), found {candidates or 'none'}"
        )
    return candidates[0]


def read_info(path: str | os.PathLike) -> dict:
    """dataset_info.json of a converted dataset, as a dict (JSON; no TFDS import)."""
    with open(os.path.join(resolve_dataset_dir(path), "dataset_info.json"), encoding="utf-8") as fh:
        return json.load(fh)


def split_shards(path: str | os.PathLike, split: str) -> tuple[list[str], list[int]]:
    """(shard paths, records per shard) of one split, in shard order, from dataset_info.json."""
    directory = resolve_dataset_dir(path)
    info = read_info(directory)
    for s in info.get("splits", []):
        if s["name"] == split:
            lengths = [int(x) for x in s["shardLengths"]]
            n = len(lengths)
            paths = [os.path.join(directory, shard_filename(info["name"], split, i, n)) for i in range(n)]
            return paths, lengths
    names = [s["name"] for s in info.get("splits", [])]
    raise KeyError(f"split {split!r} not in {directory} (splits: {names})")


class RecordSource:
    """Random access to the serialised records of one split (a picklable Grain ``RandomAccessDataSource``).

    Indices run over the split's shards in order (shard 0's records first); shards with no records (every row of
    the shard rejected) are skipped.
    """

    def __init__(self, path: str | os.PathLike, split: str = TRAIN):
        self.path = resolve_dataset_dir(path)
        self.split = split
        paths, lengths = split_shards(self.path, split)
        self.paths = [p for p, n in zip(paths, lengths) if n > 0]
        self._len = sum(lengths)
        self._source = None

    def _open(self):
        if self._source is None:
            import grain

            self._source = grain.sources.ArrayRecordDataSource(self.paths) if self.paths else []
        return self._source

    def __len__(self) -> int:
        return self._len

    def __getitem__(self, index: int) -> bytes:
        return self._open()[int(index)]

    def __getstate__(self):
        return {"path": self.path, "split": self.split, "paths": self.paths, "_len": self._len, "_source": None}

    def __repr__(self) -> str:
        return f"RecordSource({self.path!r}, split={self.split!r}, records={self._len})"


def read_records(path: str | os.PathLike, split: str = TRAIN, fields: Sequence[str] | None = None) -> list[dict]:
    """Every record of a split, decoded (for tests and small tools; the pipeline reads lazily)."""
    src = RecordSource(path, split)
    return [decode_record(src[i], fields) for i in range(len(src))]
