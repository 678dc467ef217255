"""The project's error type for bad input: what every command reports as one line and a non-zero exit.

`InputError` (and its subclasses: ConfigError, CheckpointError, DatasetError, ...) means "the user gave something
that cannot be used" — a config field, a file, a row — and its message names it in one line. Each command has one
top-level handler for this type (`exit_on_input_error`); any other exception is a bug and keeps its traceback.
"""

from __future__ import annotations

import contextlib
import sys
from typing import Iterator


class InputError(ValueError):
    """Bad user input (a file, field, row or flag); the message is one line that names it."""


class Interrupted(Exception):
    """Ctrl-C ended a command after it saved what it could; the message says what was kept."""


@contextlib.contextmanager
def exit_on_input_error(command: str) -> Iterator[None]:
    """Turns an InputError (or an Interrupted, or an OSError naming a file) into `command: error: ...` on stderr
    and exit status 2 (130 after Ctrl-C); anything else propagates with its traceback."""
    try:
        yield
    except Interrupted as e:
        print(f"{command}: interrupted: {e}", file=sys.stderr)
        raise SystemExit(130) from None
    except InputError as e:
        print(f"{command}: error: {one_line(str(e))}", file=sys.stderr)
        raise SystemExit(2) from None
    except OSError as e:
        if e.filename is None:  # not about a path the user named: a bug or a system fault, keep the traceback
            raise
        print(f"{command}: error: {e.filename}: {e.strerror or e}", file=sys.stderr)
        raise SystemExit(2) from None


def one_line(message: str) -> str:
    """A multi-line message folded into one line ('; ' between its lines)."""
    return "; ".join(part.strip() for part in message.splitlines() if part.strip())
