"""Output files: atomic writes with the user's normal permissions, and writability checked before the work.

`tempfile.mkstemp` / `mkdtemp` create 0600 files and 0700 directories; renamed into place they would keep those
modes, so an export or a results file would be private to its writer whatever the user's umask says. These
helpers write to a temporary sibling, give it the mode an ordinary `open()` / `mkdir()` would (0666 / 0777 less
the umask), and rename it into place.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from make_jax.errors import InputError


def current_umask() -> int:
    mask = os.umask(0)  # the only portable way to read it; set back at once
    os.umask(mask)
    return mask


def user_file_mode() -> int:
    return 0o666 & ~current_umask()


def user_dir_mode() -> int:
    return 0o777 & ~current_umask()


def make_temp_dir(parent: Path, prefix: str) -> Path:
    """A fresh directory in `parent` with the mode `mkdir` would give it."""
    tmp = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
    os.chmod(tmp, user_dir_mode())
    return tmp


def write_text_atomic(path: str | Path, text: str, encoding: str = "utf-8") -> Path:
    """Writes `text` to `path` through a temporary sibling and a rename (readers never see half a file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding=encoding, newline="") as f:
            f.write(text)
        os.chmod(tmp, user_file_mode())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def check_writable(directory: str | Path, what: str, *, create: bool = True) -> Path:
    """Proves a file can be written in `directory`, before any work; InputError (one line naming `what` and the
    directory) if not. `create`: make the directory now; else probe its nearest existing ancestor and leave the
    file system as it was."""
    directory = Path(directory).absolute()
    for ancestor in (directory, *directory.parents):
        if ancestor.exists():
            break
    if not ancestor.is_dir():
        raise InputError(f"{what} {directory}: {ancestor} is a file, not a directory")
    try:
        if create:
            directory.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write-test-", dir=directory if create else ancestor)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise InputError(f"{what} {directory} is not writable ({e.strerror or e})") from None
    return directory
