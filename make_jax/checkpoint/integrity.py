"""Checksums of every file of a checkpoint: written after a save, verified before a restore.

A flipped bit or a truncated file in a parameter shard would otherwise load without a word (Orbax and
TensorStore read whatever bytes are there). `write_checksums(root, file)` records the size and CRC-32 of every
file under `root`; `verify_checksums(root, file)` checks them again and raises `CheckpointError` naming the first
file that is missing, of another size, or of other content.

Why CRC-32 (zlib's) and not a cryptographic hash: the record guards against damage (a bad disk, a torn copy, a
truncated download), not against someone who edits files on purpose, who could rewrite `checksums.json` as
well. CRC-32 catches every change of up to 32 consecutive bits and any other change but one in 2^32, and the
size catches every truncation. It is several times cheaper than SHA-256 on CPUs without SHA instructions: 1.46
GB/s against 0.24 GB/s on this project's build machine (benchmarks/checksum_speed.py, BENCHMARKS.md), and the
training loop waits for it at every checkpoint. Records written with SHA-256 by older versions of make_jax
verify as before.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import zlib
from pathlib import Path

from make_jax.checkpoint.open_clip_layout import CheckpointError

CHECKSUM_FILE = "checksums.json"
ALGORITHM = "crc32"
_CHUNK = 1 << 22


def crc32_file(path: Path) -> str:
    """zlib's CRC-32 of the file's bytes, 8 lowercase hex digits."""
    crc = 0
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            crc = zlib.crc32(chunk, crc)
    return f"{crc:08x}"


def sha256_file(path: Path) -> str:
    """The file's SHA-256, 64 lowercase hex digits (older checksum records; the registry's weights files)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def file_digests(root: Path, exclude: Path | None = None) -> dict[str, dict]:
    """{path relative to root ('/'-separated): {"bytes": size, "crc32": crc32_file}} of every regular file
    under `root`, sorted."""
    root = Path(root)
    out = {}
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        if exclude is not None and path.absolute() == Path(exclude).absolute():
            continue
        out[path.relative_to(root).as_posix()] = {"bytes": path.stat().st_size, "crc32": crc32_file(path)}
    return out


def write_checksums(root: Path, checksum_file: Path) -> None:
    """Records the size and CRC-32 of every file under `root` in `checksum_file` (written atomically)."""
    digests = file_digests(root, exclude=checksum_file)
    tmp = Path(checksum_file).with_name(f".{Path(checksum_file).name}.tmp")
    tmp.write_text(json.dumps({"algorithm": ALGORITHM, "files": digests}, indent=1, sort_keys=True) + "\n")
    os.replace(tmp, checksum_file)


def _differs(path: Path, recorded, algorithm: str) -> str | None:
    """Why `path` does not match its record (None: it matches)."""
    if algorithm == "sha256":  # {"rel": "hex digest"}
        return "checksum mismatch" if sha256_file(path) != recorded else None
    size = path.stat().st_size
    if size != recorded["bytes"]:
        return f"checksum mismatch ({size} bytes, {recorded['bytes']} recorded)"
    return "checksum mismatch" if crc32_file(path) != recorded["crc32"] else None


def _read_record(checksum_file: Path) -> tuple[str, dict]:
    """(algorithm, {relative path: entry}) of a checksum record; `CheckpointError` for anything else."""
    try:
        record = json.loads(checksum_file.read_text())
        if not isinstance(record, dict):
            raise ValueError("not a JSON object")
        algorithm, recorded = record["algorithm"], record["files"]
        if algorithm not in (ALGORITHM, "sha256"):
            raise ValueError(f"unknown algorithm {algorithm!r}")
        if not isinstance(recorded, dict):
            raise ValueError("'files' is not an object")
        for rel, entry in recorded.items():
            if Path(rel).is_absolute() or ".." in Path(rel).parts:
                raise ValueError(f"{rel!r} is not a path inside the checkpoint")
            if not _well_formed(entry, algorithm):
                want = ("64 lowercase hex digits" if algorithm == "sha256"
                        else "{'bytes': size, 'crc32': 8 lowercase hex digits}")
                raise ValueError(f"the entry of {rel!r} is not {want}")
    except (ValueError, KeyError, TypeError, RecursionError) as e:
        raise CheckpointError(f"{checksum_file}: unreadable checksum record ({e})") from None
    except OSError as e:  # a bad disk: the damage the record is there for
        raise CheckpointError(f"{checksum_file}: cannot be read ({e})") from None
    return algorithm, recorded


def _well_formed(entry, algorithm: str) -> bool:
    if algorithm == "sha256":
        return isinstance(entry, str) and re.fullmatch(r"[0-9a-f]{64}", entry) is not None
    return (isinstance(entry, dict) and set(entry) == {"bytes", "crc32"}
            and type(entry["bytes"]) is int and entry["bytes"] >= 0  # noqa: E721 - not a bool
            and isinstance(entry["crc32"], str) and re.fullmatch(r"[0-9a-f]{8}", entry["crc32"]) is not None)


def verify_checksums(root: Path, checksum_file: Path) -> bool:
    """Checks every file recorded in `checksum_file` against its bytes under `root`; False when there is no
    record (a checkpoint written before checksums existed, or a save interrupted before its record)."""
    checksum_file = Path(checksum_file)
    if not checksum_file.is_file():
        return False
    algorithm, recorded = _read_record(checksum_file)
    for rel, entry in sorted(recorded.items()):
        path = Path(root) / rel
        if not path.is_file():
            raise CheckpointError(f"{path}: missing (listed in {checksum_file}); the checkpoint is incomplete")
        try:
            why = _differs(path, entry, algorithm)
        except OSError as e:
            raise CheckpointError(f"{path}: cannot be read ({e}); recorded in {checksum_file}") from None
        if why is not None:
            raise CheckpointError(f"{path}: {why} (the file changed or was damaged after it was saved; recorded "
                                  f"in {checksum_file})")
    return True
