"""CSV helpers shared by the data tools: MAKE column names, mask strings, list fields, streaming reader/writer.

The MAKE training CSV stores its validity masks as Python-list strings ("[1, 0, 0, 0, 0, 0, 0, 0]") and the
Derm1M metadata stores lists as comma-separated text ("erythema, scale"). These helpers parse and write both
forms strictly (a malformed value raises ``ValueError`` with a reason; callers decide whether that rejects a row).
"""

from __future__ import annotations

import ast
import csv
import json
import os
import re
import sys
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

from make_jax.data.schema import NUM_KNOWLEDGE, NUM_SUBTEXTS
from make_jax.errors import InputError

# --- column names of the MAKE training CSV (docs/data.md) -------------------------------------------------------------
TRUNCATED_CAPTION = "truncated_caption"
ONTOLOGY_CAPTION = "ontology_caption"
VISUAL_CONCEPT_CAPTION = "visual_concept_caption"
AUGMENTED_CAPTION = "augmented_caption"
SUB_CAPTIONS = "sub_captions"
SUBCAPTION_COLUMNS = tuple(f"subcaption_{i}" for i in range(1, NUM_SUBTEXTS + 1))
SUB_CAPTION_MASK = "sub_caption_mask"
KNOWLEDGE_MASKS = "knowledge_masks"

#: The columns the knowledge tool writes, in the order it appends them when the input lacks them.
MAKE_OUTPUT_COLUMNS: tuple[str, ...] = (
    TRUNCATED_CAPTION,
    ONTOLOGY_CAPTION,
    VISUAL_CONCEPT_CAPTION,
    AUGMENTED_CAPTION,
    SUB_CAPTIONS,
    *SUBCAPTION_COLUMNS,
    SUB_CAPTION_MASK,
    KNOWLEDGE_MASKS,
)

# Values that mean "no value" in tables written by pandas, spreadsheets or hand.
_MISSING = {"", "nan", "none", "null", "n/a", "na", "[]", "<na>"}


def is_missing(value: str | None) -> bool:
    """True for None, blank text and the usual missing-value spellings ('nan', 'None', 'null', 'N/A', '[]')."""
    return value is None or value.strip().lower() in _MISSING


# --- masks ---------------------------------------------------------------------------------------------------------
_MASK_RE = re.compile(r"^\[\s*([01](?:\s*,\s*[01])*)?\s*,?\s*\]$")


def parse_mask(text: str, length: int | None = None) -> list[int]:
    """Parse a mask string such as "[1, 0, 0]" (spaces optional) into a list of 0/1 ints.

    Raises ValueError when the text is not a bracketed list of 0/1 values or (if given) not ``length`` long.
    """
    if text is None:
        raise ValueError("mask is missing")
    s = text.strip()
    m = _MASK_RE.match(s)
    if not m:
        raise ValueError(f"malformed mask {text!r} (expected e.g. '[1, 0, 0]')")
    body = m.group(1)
    values = [int(v) for v in re.split(r"\s*,\s*", body)] if body else []
    if length is not None and len(values) != length:
        raise ValueError(f"mask {text!r} has {len(values)} values, expected {length}")
    return values


def format_mask(values: Iterable[int]) -> str:
    """[1, 1, 0] -> "[1, 1, 0]" (the MAKE CSV spelling: comma + space)."""
    return "[" + ", ".join(str(int(bool(v))) for v in values) + "]"


def subtext_mask(n_valid: int, k: int = NUM_SUBTEXTS) -> list[int]:
    """First ``n_valid`` of ``k`` subtext slots valid."""
    if not 0 <= n_valid <= k:
        raise ValueError(f"n_valid must be in [0, {k}], got {n_valid}")
    return [1] * n_valid + [0] * (k - n_valid)


def parse_knowledge_masks(text: str) -> list[int]:
    """Parse a ``knowledge_masks`` cell: 3 ints in the order [raw, disease, concept]."""
    return parse_mask(text, NUM_KNOWLEDGE)


def parse_sub_caption_mask(text: str) -> list[int]:
    """Parse a ``sub_caption_mask`` cell: 8 ints, one per subtext slot."""
    return parse_mask(text, NUM_SUBTEXTS)


# --- list fields ---------------------------------------------------------------------------------------------------
def split_list_field(text: str) -> list[str]:
    """Split a list-valued cell into stripped items.

    Accepts the Derm1M spelling ("inflammatory, non-infectious, eczema") and list literals written by Python or
    JSON ("['erythema', 'scale']", '["erythema"]'). Raises ValueError for an empty item ("a,,b", "a, "), a
    bracketed value that does not parse as a list of strings, or a value containing a line break.
    """
    s = text.strip()
    if "\n" in s or "\r" in s:
        raise ValueError("list value contains a line break")
    if s.startswith("[") or s.endswith("]"):
        items: object
        try:
            items = json.loads(s)
        except ValueError:
            try:
                items = ast.literal_eval(s)
            except (ValueError, SyntaxError, MemoryError, RecursionError):
                raise ValueError(f"bracketed value does not parse as a list: {s[:60]!r}") from None
        if not isinstance(items, list) or not all(isinstance(x, str) for x in items):
            raise ValueError(f"bracketed value is not a list of strings: {s[:60]!r}")
        out = [x.strip() for x in items]
    else:
        out = [x.strip() for x in s.split(",")]
    if any(not x for x in out):
        raise ValueError(f"empty item in list {s[:60]!r}")
    return out


# --- streaming table I/O -------------------------------------------------------------------------------------------
def _raise_field_limit() -> None:
    limit = sys.maxsize
    while True:
        try:
            csv.field_size_limit(limit)
            return
        except OverflowError:
            limit //= 10


def sniff_delimiter(path: str | os.PathLike, delimiter: str | None = None) -> str:
    """The given delimiter, else tab for .tsv/.tab files, else comma."""
    if delimiter:
        return delimiter
    return "\t" if str(path).lower().endswith((".tsv", ".tab")) else ","


def _strip_nul(lines: Iterable[str]) -> Iterator[str]:
    for line in lines:
        yield line.replace("\x00", "") if "\x00" in line else line


class TableError(InputError):
    """A table that cannot be read at all: not a file, or not in its encoding (the message names the place)."""


DEFAULT_ENCODING = "utf-8-sig"  # UTF-8, with or without a byte-order mark


def check_encoding(path: str | os.PathLike, encoding: str = DEFAULT_ENCODING) -> None:
    """Decodes the whole file strictly, in chunks; `TableError` naming the first bad line and byte offset.

    Reading with errors='replace' would turn a Latin-1 table into captions of U+FFFD that are tokenized in
    silence; a file in another encoding must be named with --encoding instead."""
    import codecs

    decoder = codecs.getincrementaldecoder(encoding)(errors="strict")
    offset = 0
    lines = 1
    with open(path, "rb") as f:
        while True:
            chunk = f.read(1 << 20)
            try:
                decoder.decode(chunk, final=not chunk)
            except UnicodeDecodeError as e:
                # e.object is the few bytes the decoder held back from the last chunk (part of one character,
                # never a newline) followed by this chunk.
                bad = offset - (len(e.object) - len(chunk)) + e.start
                line = lines + chunk[: max(bad - offset, 0)].count(b"\n")
                raise TableError(f"{path}: not valid {encoding.replace('-sig', '')} text at line {line}, byte offset "
                                 f"{bad} ({e.reason}: {e.object[e.start:e.end]!r}); convert the file to UTF-8 or "
                                 "name its encoding with --encoding (e.g. --encoding latin-1)") from None
            if not chunk:
                return
            lines += chunk.count(b"\n")
            offset += len(chunk)


@dataclass
class RawRow:
    """One data row of a table: ``number`` is 1-based over data rows (the header is not counted)."""

    number: int
    values: dict[str, str] | None  # None when the row could not be read (see ``error``)
    error: str = ""


class TableReader:
    """Stream a CSV/TSV as dict rows, never raising on a single bad row.

    Rows with more or fewer fields than the header, or rows the csv module cannot read, come back with
    ``values=None`` and an ``error``; NUL bytes are dropped. Use as a context manager.
    """

    def __init__(self, path: str | os.PathLike, delimiter: str | None = None, encoding: str | None = None):
        _raise_field_limit()
        encoding = encoding or DEFAULT_ENCODING
        if os.path.isdir(path):
            raise TableError(f"{path}: is a directory, not a CSV/TSV file")
        if not os.path.isfile(path):
            raise TableError(f"{path}: no such file")
        check_encoding(path, encoding)  # strict, before any row: a bad byte is named, never replaced
        self.path = path
        self.delimiter = sniff_delimiter(path, delimiter)
        self._fh = open(path, newline="", encoding=encoding)
        self._reader = csv.reader(_strip_nul(self._fh), delimiter=self.delimiter)
        try:
            header = next(self._reader)
        except StopIteration:
            header = []
        self.fieldnames: list[str] = [h.strip() for h in header]

    def __enter__(self) -> TableReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._fh.close()

    def __iter__(self) -> Iterator[RawRow]:
        n = len(self.fieldnames)
        number = 0
        while True:
            try:
                fields = next(self._reader)
            except StopIteration:
                return
            except csv.Error as e:
                number += 1
                yield RawRow(number, None, f"unreadable row: {e}")
                continue
            if not fields or (len(fields) == 1 and not fields[0].strip() and n != 1):
                continue  # blank line
            number += 1
            if len(fields) != n:
                yield RawRow(number, None, f"row has {len(fields)} fields, header has {n}")
                continue
            yield RawRow(number, dict(zip(self.fieldnames, fields)))


def count_rows(path: str | os.PathLike, delimiter: str | None = None, encoding: str | None = None) -> int:
    """Number of data rows (a full csv pass, so quoted multi-line fields count once)."""
    with TableReader(path, delimiter, encoding) as reader:
        return sum(1 for _ in reader)


def write_rows(
    path: str | os.PathLike, fieldnames: Sequence[str], rows: Iterable[dict[str, str]], delimiter: str = ","
) -> int:
    """Write dict rows (missing keys -> ''); returns the number of rows written."""
    n = 0
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=list(fieldnames), delimiter=delimiter, extrasaction="ignore", restval="")
        w.writeheader()
        for row in rows:
            w.writerow(row)
            n += 1
    return n
