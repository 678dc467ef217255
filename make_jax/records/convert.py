"""MAKE training CSV + image folder → a versioned, sharded ArrayRecord dataset (TFDS layout, no TensorFlow).

    python -m make_jax.records.convert --csv train.csv --images ROOT --out DIR \
        [--val-csv val.csv | --val-fraction 0.01] [--shorter-side 355] [--format jpeg|png] [--workers N] \
        [--shard-size 2048] [--name make_derm] [--version 1.0.0]

What it does (layout and record schema: ``make_jax.data.records``):

1. Reads the CSV(s) once to check every row's text fields and plan the shards: the kept rows of each split, in CSV
   order, ``--shard-size`` rows per shard. A missing required column stops it at once, listing the columns found.
2. Reads them again and hands each planned shard's rows to worker processes (decode, resize the shorter side to
   ``--shorter-side`` — never upscaling — re-encode as JPEG quality 95 or PNG, tokenize the 11 slots and the
   Derm1M† text, serialise); the main process writes each shard (``group_size:1`` ArrayRecord, for random
   access) in row order, renames it into place and writes a completion marker with the shard's statistics.
3. Writes ``dataset_info.json`` / ``features.json`` (``tfds.folder_dataset.write_metadata``), ``stats.json`` and
   ``rejects.csv``, and prints a summary.

Resumable: a rerun with the same inputs and settings skips shards whose marker exists; shard boundaries depend only
on the CSV text checks (not on which images fail), and rows are processed deterministically, so the output is byte
for byte that of an uninterrupted run. Settings are fingerprinted in ``convert_config.json``; a rerun with
different inputs or settings refuses to mix them (``--overwrite`` starts afresh).

A whole input that cannot be used stops it before any work, in one line: a CSV that is a directory or missing, a
CSV that is not UTF-8 (the first bad line and byte offset are named; ``--encoding`` reads another encoding), an
``--out`` that cannot be written, missing columns.

Bad rows never stop it. Each problem is one row of ``rejects.csv`` (csv, row, file, field, code, reason, action):

=====================  ====================================================  ======================================
code                   problem                                               action
=====================  ====================================================  ======================================
row_unreadable         the csv module cannot read the row / wrong field      row dropped
                       count
empty_filename         no file name                                          row dropped
empty_caption          empty raw caption (``truncated_caption``)             row dropped
image_missing          no such file under ``--images``                       row dropped
path_outside_root      a filename whose ``..`` leaves ``--images``, or an        row dropped (``--allow-outside-root``
                       absolute one found only outside it (a leading ``/``   reads it)
                       is relative to ``--images``, as in Derm1M)
image_unreadable       unreadable, truncated, or not an image                row dropped
mask_malformed         a mask cell that is not a bracketed 0/1 list of the   slots valid where their text is
                       right length                                          non-empty
mask_without_text      mask 1 but the slot's text is empty                   slot invalid
text_without_mask      mask 0 but the slot has text                          slot invalid (mask followed; the text
                                                                             is kept in the record's ``texts``)
missing_marker         a text cell holding 'nan', 'None', 'null', 'N/A' ...  read as empty text
bad_count              ``sub_captions`` not an integer, or not the number     ignored (masks and texts decide)
                       of non-empty ``subcaption_*`` cells
duplicate_filename     the file name of an earlier row                       kept (both rows)
=====================  ====================================================  ======================================

Image paths: a relative ``filename`` is joined to ``--images``; an absolute one (the MAKE CSV writes
``/VL_Data/...``) is first looked up under ``--images`` with its leading separator removed, then as it is.
``--val-fraction f`` puts the files whose seeded hash ranks in the lowest ``round(f * files)`` into validation
(all rows of one file land in the same split; the choice does not depend on row order).
"""

from __future__ import annotations

import argparse
import collections
import hashlib
import io
import json
import math
import multiprocessing as mp
import os
import re
import shutil
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np

from make_jax.atomic_io import check_writable
from make_jax.data.records import (
    CONTEXT_LENGTH,
    DEFAULT_NAME,
    FILE_FORMAT,
    METADATA_COLUMNS,
    TRAIN,
    VALIDATION,
    dataset_dir,
    encode_record,
    features,
    shard_filename,
)
from make_jax.data.schema import NUM_KNOWLEDGE, NUM_SLOTS, NUM_SUBTEXTS, SLOT_NAMES
from make_jax.errors import InputError, one_line
from make_jax.knowledge.aspects import DAGGER_ORDERS, dagger_text

from . import csv_io

# RandomResizedCrop(224, scale 0.4-1) takes crops down to 40 % of the image's area: a square crop of a square
# image stored at shorter side s is s·sqrt(0.4) px wide, so s >= 224 / sqrt(0.4) = 354.2 lets every such crop be
# cut from stored pixels instead of being upsampled to 224 (at 256 the smallest crops were ~162 px). The public
# code crops from the original file; cost of the larger records: BENCHMARKS.md, "Input pipeline".
DEFAULT_SHORTER_SIDE = 355

FORMAT_VERSION = 1  # bump when the record layout or the processing changes (part of the settings fingerprint)

SLOT_COLUMNS: tuple[str, ...] = (
    csv_io.TRUNCATED_CAPTION,
    csv_io.ONTOLOGY_CAPTION,
    csv_io.VISUAL_CONCEPT_CAPTION,
    *csv_io.SUBCAPTION_COLUMNS,
)
REQUIRED_COLUMNS: tuple[str, ...] = ("filename", *SLOT_COLUMNS, csv_io.SUB_CAPTION_MASK, csv_io.KNOWLEDGE_MASKS)
REJECT_COLUMNS = ("csv", "row", "file", "field", "code", "reason", "action")
ROW_DROPPED = "row dropped"


class MissingColumnsError(ValueError):
    """The CSV lacks required columns (raised before any row is read)."""


@dataclass
class Issue:
    csv: str
    row: int
    file: str
    field: str
    code: str
    reason: str
    action: str


@dataclass
class PreparedRow:
    """One CSV row after the text checks: everything a worker needs besides the image."""

    csv: str
    row: int
    split: str
    filename: str
    texts: list[str]
    mask_csv: list[bool]
    valid: list[bool]
    dagger: str
    metadata: dict[str, str]


@dataclass(frozen=True)
class ConvertSettings:
    images: str
    shorter_side: int = DEFAULT_SHORTER_SIDE
    image_format: str = "jpeg"
    jpeg_quality: int = 95
    shard_size: int = 2048
    name: str = DEFAULT_NAME
    version: str = "1.0.0"
    val_fraction: float = 0.0
    split_seed: int = 0
    dagger_order: str = "append"
    encoding: str = csv_io.DEFAULT_ENCODING
    allow_outside_root: bool = False


# --- pass 1: text checks ----------------------------------------------------------------------------------------
def check_columns(fieldnames: Sequence[str], path: str) -> None:
    missing = [c for c in REQUIRED_COLUMNS if c not in fieldnames]
    if missing:
        raise MissingColumnsError(
            f"{path}: missing required column(s) {missing}; columns found: {list(fieldnames)}"
        )


def _text(values: dict[str, str], column: str, issue: Callable[..., None]) -> str:
    raw = values.get(column, "")
    if raw is None:
        return ""
    text = raw.strip()
    if text and csv_io.is_missing(text):
        issue(column, "missing_marker", f"missing-value marker {text!r} read as empty text", "read as empty text")
        return ""
    return text


def prepare_row(
    values: dict[str, str], row: int, label: str, split: str = TRAIN, dagger_order: str = "append"
) -> tuple[PreparedRow | None, list[Issue]]:
    """Check one row's text fields. Returns (the prepared row or None if dropped, the issues found).
    ``dagger_order``: where the Derm1M† text puts the aspect texts ('append' or 'prepend', ``aspects.dagger_text``)."""
    issues: list[Issue] = []
    filename = (values.get("filename") or "").strip()

    def issue(fld: str, code: str, reason: str, action: str) -> None:
        issues.append(Issue(label, row, filename, fld, code, reason, action))

    if not filename:
        issue("filename", "empty_filename", "empty file name", ROW_DROPPED)
        return None, issues
    texts = [_text(values, c, issue) for c in SLOT_COLUMNS]
    if not texts[0]:
        issue(csv_io.TRUNCATED_CAPTION, "empty_caption", "empty caption", ROW_DROPPED)
        return None, issues

    masks: list[int | None] = []
    for column, parse, n in (
        (csv_io.KNOWLEDGE_MASKS, csv_io.parse_knowledge_masks, NUM_KNOWLEDGE),
        (csv_io.SUB_CAPTION_MASK, csv_io.parse_sub_caption_mask, NUM_SUBTEXTS),
    ):
        try:
            masks.extend(parse(values.get(column, "")))
        except ValueError as e:
            issue(column, "mask_malformed", str(e), "slots valid where their text is non-empty")
            masks.extend([None] * n)
    mask_csv = [bool(m) for m in masks]
    valid = []
    for slot, (text, m) in enumerate(zip(texts, masks)):
        column = SLOT_COLUMNS[slot]
        if m is None:
            valid.append(bool(text))
        elif m and not text:
            issue(column, "mask_without_text", f"mask is 1 for slot {slot} ({SLOT_NAMES[slot]}) but the text is empty",
                  "slot invalid")
            valid.append(False)
        elif not m and text:
            issue(column, "text_without_mask", f"mask is 0 for slot {slot} ({SLOT_NAMES[slot]}) but the text is not "
                  "empty", "slot invalid (mask followed; text kept in the record)")
            valid.append(False)
        else:
            valid.append(bool(m))

    count = (values.get(csv_io.SUB_CAPTIONS) or "").strip()
    if count and not csv_io.is_missing(count):
        n_sub = sum(1 for t in texts[3:] if t)
        try:
            c = int(float(count))
            if c != float(count):
                raise ValueError
        except ValueError:
            issue(csv_io.SUB_CAPTIONS, "bad_count", f"not an integer: {count!r}", "ignored (masks and texts decide)")
        else:
            if c != n_sub:
                issue(csv_io.SUB_CAPTIONS, "bad_count", f"says {c} but {n_sub} subcaption columns are non-empty",
                      "ignored (masks and texts decide)")

    dagger = dagger_text(texts[0], texts[1] if valid[1] else "", texts[2] if valid[2] else "", dagger_order)
    metadata = {c: (values.get(c) or "").strip() for c in METADATA_COLUMNS}
    metadata["filename"] = filename
    return PreparedRow(label, row, split, filename, texts, mask_csv, valid, dagger, metadata), issues


@dataclass
class Scan:
    label: str
    path: str
    rows_in: int = 0
    kept: list[tuple[int, str]] = field(default_factory=list)  # (row, filename)
    issues: list[Issue] = field(default_factory=list)


def scan_csv(path: str, label: str, encoding: str | None = None) -> Scan:
    """Pass 1 over one CSV: the rows that survive the text checks, and every issue."""
    scan = Scan(label, path)
    first_row: dict[str, int] = {}
    with csv_io.TableReader(path, encoding=encoding) as reader:
        check_columns(reader.fieldnames, path)
        for raw in reader:
            scan.rows_in += 1
            if raw.values is None:
                scan.issues.append(Issue(label, raw.number, "", "*", "row_unreadable", raw.error, ROW_DROPPED))
                continue
            prepared, issues = prepare_row(raw.values, raw.number, label)
            scan.issues.extend(issues)
            if prepared is None:
                continue
            prev = first_row.setdefault(prepared.filename, raw.number)
            if prev != raw.number:
                scan.issues.append(Issue(label, raw.number, prepared.filename, "filename", "duplicate_filename",
                                         f"same file as row {prev}", "kept (both rows)"))
            scan.kept.append((raw.number, prepared.filename))
    return scan


def _file_hash(filename: str, seed: int) -> bytes:
    return hashlib.blake2b(f"{seed}\x00{filename}".encode("utf-8", "surrogatepass"), digest_size=8).digest()


def validation_files(filenames: Sequence[str], fraction: float, seed: int) -> set[str]:
    """The ``round(fraction * n_files)`` files with the lowest seeded hash."""
    if not 0 <= fraction < 1:
        raise ValueError(f"--val-fraction must be in [0, 1), got {fraction}")
    unique = sorted(set(filenames), key=lambda f: (_file_hash(f, seed), f))
    return set(unique[: int(round(fraction * len(unique)))])


# --- pass 2: images (worker processes) --------------------------------------------------------------------------
def outside_root(filename: str) -> str | None:
    """Why `filename` leaves the image root, else None. A leading '/' is Derm1M's spelling of "relative to the
    image root" and stays inside; `..` past the root or a drive letter leaves it. Lexical, so an image tree made
    of symbolic links still counts as inside."""
    if os.path.splitdrive(filename)[0]:
        return f"path {filename!r} names a drive, outside --images (--allow-outside-root reads it)"
    if os.path.normpath(filename.lstrip("/\\")).replace("\\", "/").split("/")[0] == "..":
        return f"path {filename!r} leaves --images through '..' (--allow-outside-root reads it)"
    return None


def _stable(error: Exception) -> str:
    """An exception's text without object addresses ("<_io.BytesIO object at 0x7f..>"), so identical inputs give
    byte-identical rejects."""
    return re.sub(r"<([\w.]+) object at 0x[0-9a-fA-F]+>", r"<\1>", str(error))


def resolve_image(root: str, filename: str, allow_outside_root: bool = False) -> str | None:
    """The file of a CSV filename: under `root` (a leading '/' stripped); with `allow_outside_root`, an absolute
    filename that is not under `root` may also be the absolute path itself."""
    candidates = []
    if os.path.isabs(filename):
        candidates.append(os.path.join(root, filename.lstrip("/\\")))
        if allow_outside_root:
            candidates.append(filename)
    else:
        candidates.append(os.path.join(root, filename))
    for c in candidates:
        if os.path.isfile(c):
            return c
    return None


def load_and_resize(data: bytes, shorter_side: int):
    """Decode (fully; truncated data raises), RGB, shorter side → ``shorter_side`` bicubic, never upscaling.

    Large JPEGs are first decoded at a reduced DCT scale (``Image.draft``) that keeps at least twice the target
    size, then resized with PIL's antialiased bicubic filter. Returns (image, (orig_w, orig_h)).
    """
    from PIL import Image

    img = Image.open(io.BytesIO(data))
    ow, oh = img.size
    short = min(ow, oh)
    if short <= 0:
        raise ValueError(f"image has size {ow}x{oh}")
    target = None
    if short > shorter_side:
        s = shorter_side / short
        target = (max(1, round(ow * s)), max(1, round(oh * s)))
        if img.format == "JPEG" and short >= 4 * shorter_side:
            img.draft("RGB", (2 * target[0], 2 * target[1]))
    img.load()
    if img.mode != "RGB":
        img = img.convert("RGB")
    if target is not None and img.size != target:
        img = img.resize(target, Image.Resampling.BICUBIC)
    return img, (ow, oh)


def encode_image(img, image_format: str, jpeg_quality: int) -> bytes:
    buf = io.BytesIO()
    if image_format == "jpeg":
        img.save(buf, format="JPEG", quality=jpeg_quality)
    else:
        img.save(buf, format="PNG", compress_level=6)
    return buf.getvalue()


_WORKER_SETTINGS: ConvertSettings | None = None


def _init_worker(settings: ConvertSettings) -> None:
    global _WORKER_SETTINGS
    _WORKER_SETTINGS = settings
    features(settings.image_format)  # build the FeaturesDict (imports TFDS) once per process


def process_row(task: PreparedRow):
    """Worker: one prepared row → ('ok', record bytes, per-record stats) or ('reject', field, code, reason)."""
    from make_jax.tokenizer import get_tokenizer

    s = _WORKER_SETTINGS
    if not s.allow_outside_root:
        reason = outside_root(task.filename)
        if reason:
            return ("reject", "filename", "path_outside_root", reason)
    path = resolve_image(s.images, task.filename, s.allow_outside_root)
    if path is None and not s.allow_outside_root and os.path.isabs(task.filename) and os.path.isfile(task.filename):
        return ("reject", "filename", "path_outside_root",
                f"{task.filename!r} is not under --images; only the absolute path exists, outside it "
                "(--allow-outside-root reads it)")
    if path is None:
        return ("reject", "filename", "image_missing", f"image not found under {s.images!r}: {task.filename!r}")
    try:
        with open(path, "rb") as fh:
            data = fh.read()
        img, (ow, oh) = load_and_resize(data, s.shorter_side)
        encoded = encode_image(img, s.image_format, s.jpeg_quality)
    except Exception as e:  # noqa: BLE001 - any decode failure rejects the row, never the run
        return ("reject", "filename", "image_unreadable",
                f"cannot read image {path!r}: {type(e).__name__}: {_stable(e)}")

    tok = get_tokenizer()
    valid = np.asarray(task.valid, dtype=bool)
    ids, lengths = tok.tokenize_with_lengths([t if v else "" for t, v in zip(task.texts, task.valid)], CONTEXT_LENGTH)
    ids[~valid] = 0
    lengths[~valid] = 0
    full = np.asarray([len(tok.encode(t)) + 2 if v else 0 for t, v in zip(task.texts, task.valid)])
    d_ids, d_len = tok.tokenize_with_lengths([task.dagger], CONTEXT_LENGTH)
    d_full = len(tok.encode(task.dagger)) + 2
    record = {
        "image": encoded,
        "image_height": np.int32(img.height),
        "image_width": np.int32(img.width),
        "original_height": np.int32(oh),
        "original_width": np.int32(ow),
        "text_ids": ids,
        "text_lengths": lengths.astype(np.int32),
        "text_valid": valid,
        "mask_csv": np.asarray(task.mask_csv, dtype=bool),
        "texts": list(task.texts),
        "dagger_text": task.dagger,
        "dagger_ids": d_ids[0],
        "dagger_length": np.int32(d_len[0]),
        "row": np.int64(task.row),
        "split": task.split,
        **task.metadata,
    }
    raw = encode_record(record, s.image_format)
    stats = {
        "lengths": lengths.tolist(),
        "truncated": (full > CONTEXT_LENGTH).tolist(),
        "dagger_length": int(d_len[0]),
        "dagger_truncated": bool(d_full > CONTEXT_LENGTH),
        "below_target": min(ow, oh) < s.shorter_side,
        "bytes": len(raw),
    }
    return ("ok", raw, stats)


# --- shard bookkeeping ------------------------------------------------------------------------------------------
@dataclass
class ShardPlan:
    split: str
    index: int
    count: int
    rows: list[tuple[str, int]]  # (csv label, row number)


def _new_shard_stats() -> dict:
    return {
        "records": 0,
        "bytes": 0,
        "valid_texts_per_image": [0] * (NUM_SLOTS + 1),
        "token_length_histogram": [[0] * (CONTEXT_LENGTH + 1) for _ in range(NUM_SLOTS)],
        "truncated_texts": [0] * NUM_SLOTS,
        "dagger_length_histogram": [0] * (CONTEXT_LENGTH + 1),
        "dagger_truncated": 0,
        "stored_below_target": 0,
    }


def _add_record_stats(agg: dict, st: dict, valid_count: int) -> None:
    agg["records"] += 1
    agg["bytes"] += st["bytes"]
    agg["valid_texts_per_image"][valid_count] += 1
    for slot, n in enumerate(st["lengths"]):
        if n > 0:
            agg["token_length_histogram"][slot][n] += 1
        agg["truncated_texts"][slot] += int(st["truncated"][slot])
    agg["dagger_length_histogram"][st["dagger_length"]] += 1
    agg["dagger_truncated"] += int(st["dagger_truncated"])
    agg["stored_below_target"] += int(st["below_target"])


def _merge_stats(total: dict, part: dict) -> None:
    for k, v in part.items():
        if isinstance(v, list) and v and isinstance(v[0], list):
            for a, b in zip(total[k], v):
                for i, x in enumerate(b):
                    a[i] += x
        elif isinstance(v, list):
            for i, x in enumerate(v):
                total[k][i] += x
        else:
            total[k] += v


def _atomic_write_text(path: str, text: str) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


class _Progress:
    def __init__(self, total: int, enabled: bool):
        self.bar = None
        if enabled:
            from tqdm import tqdm

            self.bar = tqdm(total=total, unit="img", desc="convert", dynamic_ncols=True)

    def update(self, n: int = 1) -> None:
        if self.bar is not None:
            self.bar.update(n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


# --- driver -----------------------------------------------------------------------------------------------------
@dataclass
class ConvertResult:
    directory: str
    complete: bool
    shards_written: int
    shards_skipped: int
    splits: dict[str, int]  # records per split (complete runs only; else records in finished shards)
    rows_in: int
    rows_dropped: int
    field_issues: int
    rejects_csv: str
    stats_json: str


def convert(
    csv_path: str,
    images: str,
    out: str,
    *,
    val_csv: str | None = None,
    val_fraction: float = 0.0,
    split_seed: int = 0,
    shorter_side: int = DEFAULT_SHORTER_SIDE,
    image_format: str = "jpeg",
    jpeg_quality: int = 95,
    shard_size: int = 2048,
    workers: int | None = None,
    name: str = DEFAULT_NAME,
    version: str = "1.0.0",
    overwrite: bool = False,
    max_shards: int | None = None,
    progress: bool = True,
    log: Callable[[str], None] = print,
    dagger_order: str = "append",
    encoding: str | None = None,
    allow_outside_root: bool = False,
) -> ConvertResult:
    """Convert; see the module docstring. ``max_shards`` stops after writing that many new shards (a rerun
    continues). Raises ``MissingColumnsError`` before any work when a required column is absent, and an
    ``InputError`` (one line) for a CSV that is not a file or not in ``encoding`` (default UTF-8) and for an
    ``out`` that cannot be written. Filenames that leave ``images`` are rejected unless ``allow_outside_root``."""
    if val_csv and val_fraction:
        raise ValueError("give --val-csv or --val-fraction, not both")
    if image_format not in ("jpeg", "png"):
        raise ValueError(f"--format must be jpeg or png, got {image_format!r}")
    if shorter_side < 1 or shard_size < 1:
        raise ValueError("--shorter-side and --shard-size must be positive")
    if not os.path.isdir(images):
        raise FileNotFoundError(f"--images {images!r} is not a folder")
    workers = (os.cpu_count() or 1) if workers is None else workers
    if dagger_order not in DAGGER_ORDERS:
        raise ValueError(f"--dagger-order must be one of {DAGGER_ORDERS}, got {dagger_order!r}")
    encoding = encoding or csv_io.DEFAULT_ENCODING
    try:
        "".encode(encoding)
    except LookupError:
        raise InputError(f"--encoding {encoding!r}: unknown encoding") from None
    settings = ConvertSettings(os.path.abspath(images), shorter_side, image_format, jpeg_quality, shard_size, name,
                               version, float(val_fraction), split_seed, dagger_order, encoding,
                               bool(allow_outside_root))
    check_writable(out, "--out", create=False)

    # Pass 1: the plan.
    scans = [scan_csv(csv_path, TRAIN, encoding)]
    if val_csv:
        scans.append(scan_csv(val_csv, VALIDATION, encoding))
    split_rows: dict[str, list[tuple[str, int]]] = {TRAIN: [], VALIDATION: []}
    if val_csv:
        split_rows[TRAIN] = [(TRAIN, r) for r, _ in scans[0].kept]
        split_rows[VALIDATION] = [(VALIDATION, r) for r, _ in scans[1].kept]
    else:
        val_files = validation_files([f for _, f in scans[0].kept], val_fraction, split_seed) if val_fraction else set()
        for r, f in scans[0].kept:
            split_rows[VALIDATION if f in val_files else TRAIN].append((TRAIN, r))
    plans: list[ShardPlan] = []
    for split in (TRAIN, VALIDATION):
        rows = split_rows[split]
        count = math.ceil(len(rows) / shard_size)
        for i in range(count):
            plans.append(ShardPlan(split, i, count, rows[i * shard_size : (i + 1) * shard_size]))

    # Output folder and settings fingerprint.
    directory = dataset_dir(out, name, version)
    progress_dir = os.path.join(directory, ".progress")
    fingerprint = {
        "format_version": FORMAT_VERSION,
        "csv": {"path": os.path.abspath(csv_path), "sha256": _sha256(csv_path)},
        "val_csv": {"path": os.path.abspath(val_csv), "sha256": _sha256(val_csv)} if val_csv else None,
        **{k: v for k, v in asdict(settings).items()},
    }
    cfg_path = os.path.join(directory, "convert_config.json")
    if os.path.exists(cfg_path):
        with open(cfg_path, encoding="utf-8") as fh:
            old = json.load(fh)
        if old != fingerprint:
            if not overwrite:
                changed = sorted(k for k in set(old) | set(fingerprint) if old.get(k) != fingerprint.get(k))
                raise ValueError(
                    f"{directory} holds a conversion with other inputs or settings (differs in {changed}); "
                    "use another --out/--version, or --overwrite to start afresh"
                )
            shutil.rmtree(directory)
    elif overwrite and os.path.exists(directory):
        shutil.rmtree(directory)
    os.makedirs(progress_dir, exist_ok=True)
    _atomic_write_text(cfg_path, json.dumps(fingerprint, indent=1, sort_keys=True))

    def marker_path(p: ShardPlan) -> str:
        return os.path.join(progress_dir, f"{p.split}-{p.index:05d}.json")

    def shard_path(p: ShardPlan) -> str:
        return os.path.join(directory, shard_filename(name, p.split, p.index, p.count))

    def is_done(p: ShardPlan) -> bool:
        return os.path.exists(marker_path(p)) and os.path.exists(shard_path(p))

    todo = [p for p in plans if not is_done(p)]
    skipped = len(plans) - len(todo)
    if max_shards is not None:
        todo = todo[:max_shards]
    log(f"{len(plans)} shards planned ({sum(len(v) for v in split_rows.values())} rows), {skipped} already done, "
        f"{len(todo)} to write with {max(workers, 1)} process(es)")

    # Pass 2: stream the CSV(s) again and process the shards still to do.
    wanted = {(lbl, r): p for p in todo for (lbl, r) in p.rows}
    buffers: dict[int, list[PreparedRow]] = collections.defaultdict(list)
    bar = _Progress(sum(len(p.rows) for p in todo), progress)
    pool = None
    if workers > 1 and todo:
        pool = mp.get_context("spawn").Pool(workers, initializer=_init_worker, initargs=(settings,))
        mapper = lambda rows: pool.imap(process_row, rows, chunksize=4)  # noqa: E731
    else:
        _init_worker(settings)
        mapper = lambda rows: map(process_row, rows)  # noqa: E731

    def shard_rows() -> Iterator[tuple[ShardPlan, list[PreparedRow]]]:
        for scan in scans:
            if not any(lbl == scan.label for (lbl, _r) in wanted):
                continue
            with csv_io.TableReader(scan.path, encoding=settings.encoding) as reader:
                for raw in reader:
                    p = wanted.get((scan.label, raw.number))
                    if p is None:
                        continue
                    prepared, _ = prepare_row(raw.values, raw.number, scan.label, p.split, settings.dagger_order)
                    buf = buffers[id(p)]
                    buf.append(prepared)
                    if len(buf) == len(p.rows):
                        yield p, buffers.pop(id(p))

    def finish(p: ShardPlan, rows: list[PreparedRow], results) -> None:
        from array_record.python import array_record_module

        tmp = os.path.join(progress_dir, os.path.basename(shard_path(p)) + ".tmp")
        writer = array_record_module.ArrayRecordWriter(tmp, "group_size:1")
        stats = _new_shard_stats()
        rejects = []
        for row, res in zip(rows, results):
            if res[0] == "ok":
                writer.write(res[1])
                _add_record_stats(stats, res[2], sum(row.valid))
            else:
                _, fld, code, reason = res
                rejects.append(asdict(Issue(row.csv, row.row, row.filename, fld, code, reason, ROW_DROPPED)))
            bar.update()
        writer.close()
        os.replace(tmp, shard_path(p))
        marker = {"split": p.split, "index": p.index, "count": p.count, "rows": len(rows), "stats": stats,
                  "rejects": rejects}
        _atomic_write_text(marker_path(p), json.dumps(marker, sort_keys=True))

    written = 0
    try:
        pending: collections.deque = collections.deque()
        for p, rows in shard_rows():
            pending.append((p, rows, mapper(rows)))
            if len(pending) >= 2:  # keep the next shard's rows queued while this one is written
                finish(*pending.popleft())
                written += 1
        while pending:
            finish(*pending.popleft())
            written += 1
    finally:
        bar.close()
        if pool is not None:
            pool.terminate()
            pool.join()

    complete = all(is_done(p) for p in plans)
    return _finalize(directory, name, version, settings, plans, scans, complete, written, skipped, marker_path, log)


def _hist_dict(values: Sequence[int]) -> dict[str, int]:
    return {str(i): int(v) for i, v in enumerate(values) if v}


def _finalize(directory, name, version, settings, plans, scans, complete, written, skipped, marker_path, log):
    per_split: dict[str, dict] = {}
    shard_lengths: dict[str, list[int]] = collections.defaultdict(list)
    shard_bytes: dict[str, int] = collections.defaultdict(int)
    image_rejects: list[dict] = []
    planned_rows: dict[str, int] = collections.defaultdict(int)
    for p in plans:
        planned_rows[p.split] += len(p.rows)
        if not os.path.exists(marker_path(p)):
            continue
        with open(marker_path(p), encoding="utf-8") as fh:
            m = json.load(fh)
        agg = per_split.setdefault(p.split, _new_shard_stats())
        _merge_stats(agg, m["stats"])
        shard_lengths[p.split].append(m["stats"]["records"])
        shard_bytes[p.split] += m["stats"]["bytes"]
        image_rejects.extend(m["rejects"])

    text_issues = [asdict(i) for s in scans for i in s.issues]
    all_issues = sorted(text_issues + image_rejects, key=lambda d: (d["csv"], d["row"], d["field"], d["code"]))
    rejects_csv = os.path.join(directory, "rejects.csv")
    csv_io.write_rows(rejects_csv, REJECT_COLUMNS, all_issues)

    rows_in = sum(s.rows_in for s in scans)
    dropped = sum(1 for d in all_issues if d["action"] == ROW_DROPPED)
    by_code = collections.Counter(d["code"] for d in all_issues)
    splits_out = {}
    for split, agg in per_split.items():
        hist = agg["token_length_histogram"]
        lengths_seen = [i for h in hist for i, v in enumerate(h) if v]
        splits_out[split] = {
            "rows_planned": planned_rows[split],
            "images": agg["records"],
            "image_rejects": planned_rows[split] - agg["records"] if complete else None,
            "bytes": agg["bytes"],
            "shards": len(shard_lengths[split]),
            "valid_texts_per_image": _hist_dict(agg["valid_texts_per_image"]),
            "valid_texts_per_slot": {SLOT_NAMES[s]: int(sum(h)) for s, h in enumerate(hist)},
            "token_length_histogram": {SLOT_NAMES[s]: _hist_dict(h) for s, h in enumerate(hist)},
            "max_token_length": max(lengths_seen, default=0),
            "truncated_texts": {SLOT_NAMES[s]: int(v) for s, v in enumerate(agg["truncated_texts"])},
            "dagger_length_histogram": _hist_dict(agg["dagger_length_histogram"]),
            "dagger_truncated": agg["dagger_truncated"],
            "stored_shorter_side_below_target": agg["stored_below_target"],
        }
    stats = {
        "dataset": name,
        "version": version,
        "complete": complete,
        "context_length": CONTEXT_LENGTH,
        "slots": list(SLOT_NAMES),
        "settings": {k: v for k, v in asdict(settings).items() if k != "images"},
        "splits": splits_out,
        "rejects": {"rows_in": rows_in, "rows_dropped": dropped, "field_issues": len(all_issues) - dropped,
                    "by_code": dict(sorted(by_code.items()))},
    }
    stats_json = os.path.join(directory, "stats.json")
    _atomic_write_text(stats_json, json.dumps(stats, indent=1))

    if complete:
        import tensorflow_datasets as tfds

        split_infos = []
        for split in (TRAIN, VALIDATION):
            if not shard_lengths.get(split):
                continue
            template = tfds.core.ShardedFileTemplate(
                data_dir=directory, dataset_name=name, split=split, filetype_suffix=FILE_FORMAT
            )
            split_infos.append(tfds.core.SplitInfo(name=split, shard_lengths=shard_lengths[split],
                                                   num_bytes=shard_bytes[split], filename_template=template))
        tfds.folder_dataset.write_metadata(
            data_dir=directory,
            features=features(settings.image_format),
            split_infos=split_infos,
            version=version,
            filename_template=tfds.core.ShardedFileTemplate(data_dir=directory, dataset_name=name,
                                                            filetype_suffix=FILE_FORMAT),
            check_data=False,
            description="MAKE training images and their 11 text slots (make_jax.records.convert).",
        )

    counts = {s: v["images"] for s, v in splits_out.items()}
    log(_summary(directory, complete, written, skipped, len(plans), counts, rows_in, dropped, by_code))
    return ConvertResult(directory, complete, written, skipped, counts, rows_in, dropped, len(all_issues) - dropped,
                         rejects_csv, stats_json)


def _summary(directory, complete, written, skipped, total, counts, rows_in, dropped, by_code) -> str:
    lines = [
        f"{'done' if complete else 'INCOMPLETE'}: {directory}",
        f"  shards: {written} written now, {skipped} reused, {total} planned"
        + ("" if complete else " (rerun the same command to continue)"),
        "  records: " + ", ".join(f"{s} {n}" for s, n in counts.items()),
        f"  rows read: {rows_in}, dropped: {dropped}",
    ]
    if by_code:
        lines.append("  problems (see rejects.csv): " + ", ".join(f"{k} {v}" for k, v in sorted(by_code.items())))
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m make_jax.records.convert", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--csv", required=True, help="MAKE training CSV (docs/data.md columns)")
    p.add_argument("--images", required=True, help="image root folder the CSV's filenames are relative to")
    p.add_argument("--out", required=True, help="output data dir; the dataset goes to OUT/NAME/VERSION")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--val-csv", help="CSV of the validation split")
    g.add_argument("--val-fraction", type=float, default=0.0, help="fraction of files held out for validation")
    p.add_argument("--split-seed", type=int, default=0, help="seed of the --val-fraction file hash")
    p.add_argument("--shorter-side", type=int, default=DEFAULT_SHORTER_SIDE,
                   help=f"stored shorter side in px (never upscaled; default {DEFAULT_SHORTER_SIDE})")
    p.add_argument("--format", dest="image_format", choices=("jpeg", "png"), default="jpeg")
    p.add_argument("--jpeg-quality", type=int, default=95)
    p.add_argument("--shard-size", type=int, default=2048, help="CSV rows per shard")
    p.add_argument("--workers", type=int, default=None, help="processes (default: all cores; 0/1 = in-process)")
    p.add_argument("--name", default=DEFAULT_NAME)
    p.add_argument("--version", default="1.0.0")
    p.add_argument("--overwrite", action="store_true", help="discard an existing conversion with other settings")
    p.add_argument("--max-shards", type=int, default=None, help="stop after writing this many shards (resume later)")
    p.add_argument("--dagger-order", choices=DAGGER_ORDERS, default="append",
                   help="Derm1M† text: aspect texts after the caption (append: the public CSV's augmented_caption) "
                        "or before it (prepend: the paper's description); matters under the 77-token cut")
    p.add_argument("--encoding", default=None,
                   help="text encoding of the CSVs (default: UTF-8; a file that is not is refused, naming the line)")
    p.add_argument("--allow-outside-root", action="store_true",
                   help="read filenames that are absolute or leave --images with '..' (default: reject those rows)")
    p.add_argument("--no-progress", action="store_true")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    t0 = time.time()
    try:
        res = convert(
            args.csv, args.images, args.out, val_csv=args.val_csv, val_fraction=args.val_fraction,
            split_seed=args.split_seed, shorter_side=args.shorter_side, image_format=args.image_format,
            jpeg_quality=args.jpeg_quality, shard_size=args.shard_size, workers=args.workers, name=args.name,
            version=args.version, overwrite=args.overwrite, max_shards=args.max_shards,
            progress=not args.no_progress, dagger_order=args.dagger_order, encoding=args.encoding,
            allow_outside_root=args.allow_outside_root,
        )
    except (MissingColumnsError, ValueError, FileNotFoundError) as e:  # InputError is a ValueError
        print(f"error: {one_line(str(e))}", file=sys.stderr)
        return 2
    print(f"  time: {time.time() - t0:.1f} s")
    return 0 if res.complete else 3


if __name__ == "__main__":
    sys.exit(main())
