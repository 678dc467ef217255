"""Checksums of every file of a checkpoint: written after a save, verified before a restore.

A flipped bit or a truncated file in a parameter shard would otherwise load without a word (Orbax and
TensorStore read whatever bytes are there). `write_checksums(root, file)` records the SHA-256 of every file under
`root`; `verify_checksums(root, file)` recomputes them and raises `CheckpointError` naming the first file that is
missing or differs. Hashing reads every byte once (about 1 s per GB).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from make_jax.checkpoint.open_clip_layout import CheckpointError

CHECKSUM_FILE = "checksums.json"
_CHUNK = 1 << 22


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def file_digests(root: Path, exclude: Path | None = None) -> dict[str, str]:
    """{path relative to root ('/'-separated): sha256} of every regular file under `root`, sorted."""
    root = Path(root)
    out = {}
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        if exclude is not None and path.absolute() == Path(exclude).absolute():
            continue
        out[path.relative_to(root).as_posix()] = sha256_file(path)
    return out


def write_checksums(root: Path, checksum_file: Path) -> None:
    """Records the digests of every file under `root` in `checksum_file` (written atomically)."""
    digests = file_digests(root, exclude=checksum_file)
    tmp = Path(checksum_file).with_name(f".{Path(checksum_file).name}.tmp")
    tmp.write_text(json.dumps({"algorithm": "sha256", "files": digests}, indent=1, sort_keys=True) + "\n")
    os.replace(tmp, checksum_file)


def verify_checksums(root: Path, checksum_file: Path) -> bool:
    """Checks every file recorded in `checksum_file` against its bytes under `root`; False when there is no
    record (a checkpoint written before checksums existed, or a save interrupted before its record)."""
    checksum_file = Path(checksum_file)
    if not checksum_file.is_file():
        return False
    try:
        recorded = json.loads(checksum_file.read_text())["files"]
    except (ValueError, KeyError, TypeError) as e:
        raise CheckpointError(f"{checksum_file}: unreadable checksum record ({e})") from None
    for rel, digest in sorted(recorded.items()):
        path = Path(root) / rel
        if not path.is_file():
            raise CheckpointError(f"{path}: missing (listed in {checksum_file}); the checkpoint is incomplete")
        if sha256_file(path) != digest:
            raise CheckpointError(f"{path}: checksum mismatch (the file changed or was damaged after it was "
                                  f"saved; recorded in {checksum_file})")
    return True
