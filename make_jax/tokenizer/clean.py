"""Text cleaning, identical to open_clip's default ``clean='lower'``:

    ftfy.fix_text -> html.unescape twice -> strip -> collapse whitespace (" ".join(text.split())) -> lower()

``ftfy.fix_text`` dominates the cost (25-150 us per caption), and on ordinary captions it changes
nothing, so ``ftfy_is_noop`` decides cheaply and exactly when it can be skipped. With ftfy's default
config, ``fix_text`` runs on each line ``fix_and_explain``, which loops until a fixed point over:

* ``unescape_html``              acts only on '&...;'
* ``fix_encoding``               returns the text unchanged when it is ASCII or ``not badness.is_bad(text)``
* ``fix_c1_controls``            U+0080..U+009F
* ``fix_latin_ligatures``, ``fix_character_width``, ``remove_control_chars``: ``str.translate`` with the
  tables ``chardata.LIGATURES`` / ``WIDTH_MAP`` / ``CONTROL_CHARS`` (acts only on their keys)
* ``uncurl_quotes``              ``SINGLE_QUOTE_RE`` / ``DOUBLE_QUOTE_RE``
* ``fix_line_breaks``            CR, U+0085, U+2028, U+2029
* ``fix_surrogates``             U+D800..U+DFFF
* ``remove_terminal_escapes``    ESC
* NFC normalisation

So a text with none of those characters, already NFC, and not ``is_bad`` comes back unchanged (and
``html.unescape`` returns early without '&'). Two fast paths use this:

1. ASCII: TAB, LF, FF and printable ASCII other than '&' hit none of the above (``is_bad`` is not even
   consulted for ASCII). A regex full-match decides it in ~1 us.
2. Other single-line text: the character checks are one regex search and ``unicodedata.is_normalized``;
   ``is_bad`` (a 55 us regex over the whole text) is run only on windows around the non-ASCII runs.
   That is exact because every match of ftfy 6.3.1's ``BADNESS_RE`` is at most ``_BAD_WIDTH`` characters
   long, contains a non-ASCII character, and uses no look-around, ``\\b`` or ``$``; its one ``^`` only
   matches at the real start of the string even when searching from ``pos`` > 0. These properties were
   audited for the exact pattern whose sha256 is ``_BADNESS_SHA256`` (tests/test_tokenizer.py re-checks
   them); with any other ftfy the second fast path is off and ftfy always runs.
"""

from __future__ import annotations

import hashlib
import html
import re
import unicodedata

import ftfy

# Strings ftfy.fix_text and html.unescape provably return unchanged (fast path 1).
_ASCII_NOOP = re.compile(r"[\t\n\x0c\x20-\x25\x27-\x7e]*")

_BADNESS_SHA256 = "9dcc0f2ac90d9ae3c85eb7b9b2c0b8a8e8126153847c2b30c91a0bb263f3b8c4"
_BAD_WIDTH = 7  # longest possible BADNESS_RE match (characters)
_NON_ASCII_RUN = re.compile(r"[^\x00-\x7f]+")


def _build_non_ascii_fast_path():
    """(badness regex, regex of characters some ftfy fixer acts on), or None if ftfy is not the audited
    version. Also falls back on newlines and very long text, where ftfy splits the text into segments."""
    try:
        from ftfy import badness, chardata

        bad_re = badness.BADNESS_RE
        if hashlib.sha256(bad_re.pattern.encode()).hexdigest() != _BADNESS_SHA256:
            return None
        table_keys = set(chardata.LIGATURES) | set(chardata.WIDTH_MAP) | set(chardata.CONTROL_CHARS)
        classes = [chardata.C1_CONTROL_RE.pattern, chardata.SINGLE_QUOTE_RE.pattern, chardata.DOUBLE_QUOTE_RE.pattern]
        if not all(c.startswith("[") and c.endswith("]") and c.count("[") == 1 for c in classes):
            return None
        fixer_chars = re.compile(
            "["
            + "".join(re.escape(chr(c)) for c in sorted(table_keys))
            + "".join(c[1:-1] for c in classes)
            + "\ud800-\udfff"  # surrogates
            + "&\x1b\r\n\x85\u2028\u2029"  # html, terminal escapes, line breaks (and segments)
            + "]"
        )
        return bad_re, fixer_chars
    except Exception:  # a different ftfy layout: always run ftfy
        return None


_FAST_NON_ASCII = _build_non_ascii_fast_path()


def ftfy_is_noop(text: str) -> bool:
    """True only if ``html.unescape(html.unescape(ftfy.fix_text(text))) == text`` (no false positives)."""
    if _ASCII_NOOP.fullmatch(text) is not None:
        return True
    if _FAST_NON_ASCII is None or len(text) > 100_000:
        return False
    bad_re, fixer_chars = _FAST_NON_ASCII
    if fixer_chars.search(text) is not None or not unicodedata.is_normalized("NFC", text):
        return False
    return not _is_bad_windowed(text, bad_re)


def _is_bad_windowed(text: str, bad_re) -> bool:
    """``bad_re.search(text) is not None``, searching only within ``_BAD_WIDTH - 1`` characters of each
    run of non-ASCII characters (exact for the audited pattern, see the module docstring)."""
    w = _BAD_WIDTH - 1
    for m in _NON_ASCII_RUN.finditer(text):
        if bad_re.search(text, max(0, m.start() - w), m.end() + w) is not None:
            return True
    return False


def is_ascii_noop(text: str) -> bool:
    """True when ``text`` takes fast path 1 (ASCII without '&' or control characters)."""
    return _ASCII_NOOP.fullmatch(text) is not None


def clean_lower(text: str) -> str:
    """open_clip's 'lower' clean: ftfy, html-unescape x2, strip, whitespace collapse, lower-case."""
    if not ftfy_is_noop(text):
        text = html.unescape(html.unescape(ftfy.fix_text(text))).strip()
    return " ".join(text.split()).strip().lower()
