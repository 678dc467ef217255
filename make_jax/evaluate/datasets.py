"""Readers for the three evaluation layouts, with validation that names the file and the row.

- zero-shot classification: CSV `filename,label` (label = index into the class list, or a class name), images
  under an image root (default: the CSV's folder);
- concept annotation (SkinCon / Derm7pt as MONET and MAKE lay them out): `DIR/final_images/`, `DIR/meta.csv`
  (`ImageID` + one 0/1 column per concept), `DIR/concept_list.txt` (the concepts to score);
- retrieval (SkinCAP): CSV `filename,caption` (or another caption column such as `caption_zh_polish_en`),
  several rows with the same filename = several captions of one image.

Problems with the tables themselves (missing file or column, empty table, bad label, unknown concept value)
raise `DatasetError`. Missing or unreadable *images* are not checked here: the image loader reports and skips
them (make_jax.evaluate.images).
"""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

__all__ = ["ConceptSet", "DatasetError", "IMAGE_SUFFIXES", "RetrievalSet", "ZeroShotSet", "normalize_name",
           "read_concept_list", "read_concept_set", "read_csv_table", "read_retrieval_csv", "read_zero_shot_csv"]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".JPG", ".JPEG", ".PNG", ".bmp", ".tif", ".tiff", ".webp")
SKINCAP_CAPTION_COLUMN = "caption_zh_polish_en"
NAME_COLUMNS = ("class_name", "classname", "label_name")  # optional zero-shot column cross-checked with the list


class DatasetError(ValueError):
    """A problem with an evaluation table; the message names the file (and the line where there is one)."""


def normalize_name(name: str) -> str:
    """Case-, underscore- and whitespace-insensitive form used to match concept names to columns and terms."""
    return " ".join(str(name).replace("_", " ").strip().lower().split())


def _resolve(root: Path, name: str) -> Path:
    p = Path(name)
    return p if p.is_absolute() else root / p


# ---------------------------------------------------------------------------------------------- CSV


@dataclass
class CsvTable:
    path: Path
    columns: list[str]
    rows: list[dict[str, str]]
    lines: list[int]  # 1-based line of each row in the file (header = line 1)


def read_csv_table(path: str | Path, required: Sequence[str] = (), what: str = "CSV") -> CsvTable:
    """Reads a comma-separated file with a header row (UTF-8, BOM tolerated); checks the required columns and
    that every row has as many fields as the header."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"{what} {path}: file not found")
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f)
            try:
                header = next(reader)
            except StopIteration:
                raise DatasetError(f"{what} {path}: empty file (expected a header row with columns "
                                   f"{', '.join(required) or '...'})") from None
            header = [h.strip() for h in header]
            rows, lines = [], []
            for fields in reader:
                if not fields or all(not x.strip() for x in fields):
                    continue  # blank line
                if len(fields) != len(header):
                    raise DatasetError(f"{what} {path}, line {reader.line_num}: {len(fields)} fields, the header "
                                       f"has {len(header)} ({', '.join(header)})")
                rows.append(dict(zip(header, fields)))
                lines.append(reader.line_num)
    except UnicodeDecodeError as e:
        raise DatasetError(f"{what} {path}: not UTF-8 text ({e})") from None
    except csv.Error as e:
        raise DatasetError(f"{what} {path}: malformed CSV ({e})") from None
    missing = [c for c in required if c not in header]
    if missing:
        raise DatasetError(f"{what} {path}: missing column(s) {', '.join(repr(c) for c in missing)} "
                           f"(columns found: {', '.join(repr(c) for c in header) or 'none'})")
    if not rows:
        raise DatasetError(f"{what} {path}: no data rows (only a header)")
    return CsvTable(path, header, rows, lines)


# ---------------------------------------------------------------------------------------------- zero-shot


@dataclass
class ZeroShotSet:
    csv_path: Path
    image_root: Path
    filenames: list[str]
    labels: np.ndarray  # (N,) int64
    classnames: list[str]
    lines: list[int]

    def __len__(self) -> int:
        return len(self.filenames)

    @property
    def paths(self) -> list[Path]:
        return [_resolve(self.image_root, f) for f in self.filenames]

    @property
    def num_classes(self) -> int:
        return len(self.classnames)

    def classes_without_images(self) -> list[int]:
        counts = np.bincount(self.labels, minlength=self.num_classes)
        return np.flatnonzero(counts == 0).tolist()


_INT_RE = re.compile(r"^[+-]?\d+(\.0*)?$")


def read_zero_shot_csv(csv_path: str | Path, classnames: Sequence[str], image_root: str | Path | None = None,
                       filename_column: str = "filename", label_column: str = "label") -> ZeroShotSet:
    """`filename,label` CSV → ZeroShotSet. A label is an index into `classnames` (an integer, "3.0" accepted)
    or a class name (exact, then case-insensitive). A label outside the list is an error naming the line. If
    the CSV also has a class-name column (class_name / classname / label_name), each row's name must equal
    classnames[label] — this catches a class list that is permuted relative to the CSV."""
    classnames = list(classnames)
    if not classnames:
        raise DatasetError("empty class list")
    table = read_csv_table(csv_path, (filename_column, label_column), what="zero-shot CSV")
    path = table.path
    by_name = {n: i for i, n in enumerate(classnames)}
    by_lower: dict[str, int] = {}
    for i, n in enumerate(classnames):
        by_lower.setdefault(normalize_name(n), i)
    name_col = next((c for c in NAME_COLUMNS if c in table.columns), None)
    files, labels = [], []
    for row, line in zip(table.rows, table.lines):
        fn = row[filename_column].strip()
        if not fn:
            raise DatasetError(f"zero-shot CSV {path}, line {line}: empty {filename_column!r}")
        raw = row[label_column].strip()
        if not raw:
            raise DatasetError(f"zero-shot CSV {path}, line {line}: empty {label_column!r} for {fn}")
        if _INT_RE.match(raw):
            lab = int(float(raw))
            if not 0 <= lab < len(classnames):
                raise DatasetError(f"zero-shot CSV {path}, line {line}: label {lab} of {fn} is outside the class "
                                   f"list ({len(classnames)} classes, valid labels 0..{len(classnames) - 1}) — "
                                   "is this the class list of this dataset?")
        else:
            lab = by_name.get(raw, by_lower.get(normalize_name(raw)))
            if lab is None:
                raise DatasetError(f"zero-shot CSV {path}, line {line}: label {raw!r} of {fn} is neither an index "
                                   f"nor a name in the class list ({len(classnames)} classes)")
        if name_col is not None:
            given = row[name_col].strip()
            if given and normalize_name(given) != normalize_name(classnames[lab]):
                raise DatasetError(f"zero-shot CSV {path}, line {line}: {name_col} {given!r} but label {lab} is "
                                   f"{classnames[lab]!r} in the class list — the class list and the CSV disagree")
        files.append(fn)
        labels.append(lab)
    root = Path(image_root) if image_root is not None else path.parent
    return ZeroShotSet(path, root, files, np.asarray(labels, np.int64), classnames, table.lines)


# ---------------------------------------------------------------------------------------------- concepts


def read_concept_list(spec: str | Path | Sequence[str]) -> list[str]:
    """A concept_list.txt (one concept per line, or comma-separated), a comma-separated string, or a list."""
    if isinstance(spec, (list, tuple)):
        items = list(spec)
    else:
        p = Path(spec)
        if p.is_file():
            text = p.read_text(encoding="utf-8-sig")
            lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
            items = [x for ln in lines for x in ln.split(",")] if len(lines) == 1 else lines
        elif str(spec).endswith(".txt") or "/" in str(spec):
            raise DatasetError(f"concept list {spec}: file not found")
        else:
            items = str(spec).split(",")
    items = [x.strip() for x in items if x.strip()]
    if not items:
        raise DatasetError(f"concept list {spec}: no concepts")
    return items


@dataclass
class ConceptSet:
    root: Path
    meta_path: Path
    image_dir: Path
    image_ids: list[str]
    labels: np.ndarray  # (N, C) int8 for `columns`
    columns: list[str]  # meta.csv columns, in `concepts` order
    concepts: list[str]  # the requested concept names matched to a column
    unmatched: list[str] = field(default_factory=list)  # requested concepts with no meta.csv column
    lines: list[int] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.image_ids)

    @property
    def paths(self) -> list[Path]:
        return [_find_image(self.image_dir, i) for i in self.image_ids]


def _find_image(image_dir: Path, image_id: str) -> Path:
    p = _resolve(image_dir, image_id)
    if p.suffix or p.exists():
        return p
    for suf in IMAGE_SUFFIXES:  # ImageID given without its extension
        q = p.with_name(p.name + suf)
        if q.exists():
            return q
    return p


def _binary(raw: str) -> int | None:
    v = raw.strip().lower()
    if v in ("1", "1.0", "true", "yes"):
        return 1
    if v in ("0", "0.0", "false", "no"):
        return 0
    return None


def match_columns(concepts: Iterable[str], columns: Sequence[str], where: str) -> tuple[dict[str, str], list[str]]:
    """concept → column by name (exact, then normalize_name); never by position. Returns (mapping, unmatched)."""
    exact = set(columns)
    norm: dict[str, list[str]] = {}
    for c in columns:
        norm.setdefault(normalize_name(c), []).append(c)
    mapping, unmatched = {}, []
    for concept in concepts:
        if concept in exact:
            mapping[concept] = concept
            continue
        cands = norm.get(normalize_name(concept), [])
        if len(cands) > 1:
            raise DatasetError(f"{where}: concept {concept!r} matches several columns {cands}")
        if cands:
            mapping[concept] = cands[0]
        else:
            unmatched.append(concept)
    return mapping, unmatched


def read_concept_set(root: str | Path, meta: str = "meta.csv", image_dir: str = "final_images",
                     concept_list: str | Path | Sequence[str] | None = "concept_list.txt",
                     id_column: str = "ImageID") -> ConceptSet:
    """Reads a SkinCon / Derm7pt-layout directory. `concept_list`: a file name inside `root` or a path, a list,
    or None for every column of meta.csv but `id_column`. Concepts are matched to meta.csv columns by name; a
    requested concept without a column is recorded in `.unmatched` (the caller reports it), and only the
    matched columns are parsed (values must be 0/1; true/false accepted)."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"concept set {root}: directory not found")
    meta_path = Path(meta) if Path(meta).is_absolute() else root / meta
    table = read_csv_table(meta_path, (id_column,), what="concept meta CSV")
    data_cols = [c for c in table.columns if c != id_column]
    if not data_cols:
        raise DatasetError(f"concept meta CSV {meta_path}: no concept columns besides {id_column!r}")
    if concept_list is None:
        requested = data_cols
    elif isinstance(concept_list, (list, tuple)):
        requested = read_concept_list(concept_list)
    else:
        cl = Path(concept_list)
        if not cl.is_absolute() and not cl.exists():
            cl = root / cl
        if not cl.is_file():
            raise DatasetError(f"concept list {cl}: file not found (pass concept_list=None to score every "
                               f"column of {meta_path.name})")
        requested = read_concept_list(cl)
    dup = sorted({c for c in requested if requested.count(c) > 1})
    if dup:
        raise DatasetError(f"concept list: duplicate concepts {dup}")
    mapping, unmatched = match_columns(requested, data_cols, f"concept meta CSV {meta_path}")
    concepts = [c for c in requested if c in mapping]
    columns = [mapping[c] for c in concepts]
    ids, seen = [], {}
    labels = np.zeros((len(table.rows), len(columns)), np.int8)
    for r, (row, line) in enumerate(zip(table.rows, table.lines)):
        iid = row[id_column].strip()
        if not iid:
            raise DatasetError(f"concept meta CSV {meta_path}, line {line}: empty {id_column!r}")
        if iid in seen:
            raise DatasetError(f"concept meta CSV {meta_path}, line {line}: {id_column} {iid!r} repeats line "
                               f"{seen[iid]}")
        seen[iid] = line
        ids.append(iid)
        for j, col in enumerate(columns):
            v = _binary(row[col])
            if v is None:
                raise DatasetError(f"concept meta CSV {meta_path}, line {line}: column {col!r} of {iid} is "
                                   f"{row[col]!r}; expected 0 or 1")
            labels[r, j] = v
    return ConceptSet(root, meta_path, _resolve(root, image_dir), ids, labels, columns, concepts, unmatched,
                      table.lines)


# ---------------------------------------------------------------------------------------------- retrieval


@dataclass
class RetrievalSet:
    csv_path: Path
    image_root: Path
    filenames: list[str]  # unique images, in order of first appearance
    captions: list[str]
    text_to_image: np.ndarray  # (T,) index into filenames
    caption_column: str
    lines: list[int]  # line of each caption

    def __len__(self) -> int:
        return len(self.filenames)

    @property
    def paths(self) -> list[Path]:
        return [_resolve(self.image_root, f) for f in self.filenames]


def read_retrieval_csv(csv_path: str | Path, image_root: str | Path | None = None, caption_column: str | None = None,
                       filename_column: str = "filename") -> RetrievalSet:
    """`filename,caption` CSV → RetrievalSet. `caption_column` None: "caption", else SkinCAP's
    "caption_zh_polish_en" if the CSV has it. Rows sharing a filename are captions of one image."""
    table = read_csv_table(csv_path, (filename_column,), what="retrieval CSV")
    path = table.path
    if caption_column is None:
        for c in ("caption", SKINCAP_CAPTION_COLUMN):
            if c in table.columns:
                caption_column = c
                break
        else:
            raise DatasetError(f"retrieval CSV {path}: no caption column ('caption' or {SKINCAP_CAPTION_COLUMN!r}; "
                               f"columns found: {', '.join(table.columns)}); choose one with --caption-column")
    elif caption_column not in table.columns:
        raise DatasetError(f"retrieval CSV {path}: missing column {caption_column!r} (columns found: "
                           f"{', '.join(table.columns)})")
    index: dict[str, int] = {}
    files, captions, t2i = [], [], []
    for row, line in zip(table.rows, table.lines):
        fn = row[filename_column].strip()
        cap = " ".join(row[caption_column].split())
        if not fn:
            raise DatasetError(f"retrieval CSV {path}, line {line}: empty {filename_column!r}")
        if not cap:
            raise DatasetError(f"retrieval CSV {path}, line {line}: empty caption ({caption_column!r}) for {fn}")
        if fn not in index:
            index[fn] = len(files)
            files.append(fn)
        captions.append(cap)
        t2i.append(index[fn])
    root = Path(image_root) if image_root is not None else path.parent
    return RetrievalSet(path, root, files, captions, np.asarray(t2i, np.int64), caption_column, table.lines)
