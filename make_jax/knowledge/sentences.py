"""Sentence splitting, the subtext rule and caption truncation for the knowledge set (docs/data.md).

Subtexts are the caption's sentences without their final full stop, at most 8 (``NUM_SUBTEXTS``). The MAKE
training CSV shows the convention: "Irritant diaper dermatitis. Erythematous patches sparing the skin folds."
-> ["Irritant diaper dermatitis", "Erythematous patches sparing the skin folds"]; colons and semicolons do not
end a sentence ("Keratosis pilaris: Follicular papules ..." is one subtext).

Splitting rules (a boundary is a run of ".", "!", "?" or "…", optionally followed by closing quotes/brackets,
then whitespace or the end of the text):

* the next word starting with a lower-case letter never starts a new sentence ("approx. 3", "3 mm. in size");
* "!", "?" and ellipses end a sentence when the next word does not start in lower case;
* after a single ".", the word before it decides:
  - abbreviations that never end a sentence (``NEVER_FINAL``: e.g., i.e., Dr., Mr., Prof., Fig., vs., approx.,
    cf., ca., No., ...) -> no boundary;
  - abbreviations that may end one (``MAYBE_FINAL``: etc., et al., units such as cm., mm., mg., yrs.) -> a
    boundary only before an upper-case word;
  - a single upper-case letter (an initial, "J. Smith") -> no boundary when it opens the sentence or follows a
    capitalised word, another initial or one of "and", "by", "of", "from", "with", "to", "courtesy", "&"
    ("Anthony J. Mancini", "by P. Krowchuk"); a boundary after any other lower-case word ("vitamin D. The ...");
    a single lower-case letter -> no boundary;
  - a short number at the start of a sentence is an enumerator ("1. Erythema") -> no boundary;
  - otherwise a boundary;
* a "." directly followed by an upper-case word with no space ("scales.This") is a boundary when the word
  before is an ordinary word of two or more letters;
* no boundary inside an open bracket that is closed later in the text ("(see Fig. 2. Note the scale.)");
* a line break is a boundary when the previous line ends with sentence punctuation or the next line starts with
  an upper-case letter, digit or bullet;
* decimals ("3.5 mm") are never boundaries (no space after the point); colons and semicolons never are;
* a piece with no letter or digit (stray punctuation) is joined to the piece before it.

More than 8 sentences (``merge_to_limit``): the adjacent pair with the smallest combined length (characters,
ties -> leftmost) is merged, repeatedly, until 8 remain. Merging takes the original text between the two
sentences, so no text is lost and the punctuation in between stays ("A. B" -> "A. B").

Truncation (``truncate_caption``): the raw slot holds the caption cut to a budget at a sentence boundary: the
longest run of leading whole sentences that fits; if even the first sentence does not fit, the longest run of
leading words that fits. The budget is either exact CLIP tokens (``TextBudget.tokens(77)``: [SOT] + BPE + [EOT]
<= 77, using ``make_jax.tokenizer``) or a tokenizer-free proxy (``TextBudget.words(n)`` / ``TextBudget.chars(n)``).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from make_jax.data.schema import NUM_SUBTEXTS

NEVER_FINAL = frozenset(
    """e.g eg i.e ie dr drs mr mrs ms mx prof st mt fig figs vs v approx appx ca cf viz incl esp resp ref refs
    vol vols pp ed eds dept univ assoc no nos nr sp spp var ssp subsp""".split()
)
MAYBE_FINAL = frozenset(
    """etc al cm mm um µm μm nm m km kg mg mcg µg g ml l dl yr yrs y wk wks mo mos min hr hrs h sec s d
    inc ltd co jr sr pt pts bros""".split()
)

# lower-case words that commonly precede a person's name ("by J. Smith", "Smith and P. Jones")
_NAME_LEAD = frozenset({"and", "by", "of", "from", "with", "to", "courtesy", "&"})
_OPEN = "([{"
_CLOSE = ")]}"
_CLOSERS = "\"'”’»)]}"
_CAND = re.compile(r"(?P<punct>\.{2,}|…+|[.!?]+)(?P<close>[\"'”’»)\]}]*)(?P<space>\s+|$)")
_NOSPACE = re.compile(r"(?<=[A-Za-z]{2})\.(?=[A-Z][a-z])")
_TOKEN_BEFORE = re.compile(r"[\w.'’\-/µμ]*$")
_WORD_BEFORE = re.compile(r"([\w'’\-]+)\W*$")
_BULLET = re.compile(r"^[\s\-–—•*·]*$")
_FINAL_STOP = re.compile(r"\.+(?=[\"'”’»)\]}]*$)")
_WS = re.compile(r"\s+")


def _bracket_open_later(text: str, end: int) -> bool:
    """Is position ``end`` inside an open bracket that some later character closes?"""
    if not any(b in text for b in _OPEN):
        return False
    depth = 0
    for ch in text[:end]:
        if ch in _OPEN:
            depth += 1
        elif ch in _CLOSE and depth > 0:
            depth -= 1
    if depth <= 0:
        return False
    return any(ch in _CLOSE for ch in text[end:])


def _is_boundary(text: str, sent_start: int, p: int, punct: str, end: int, nxt: int) -> bool:
    """Decide a candidate boundary: punctuation ``punct`` at ``p``, sentence ends at ``end``, next text at ``nxt``."""
    ch = text[nxt]
    if ch.islower():
        return False
    if _bracket_open_later(text, end):
        return False
    if "!" in punct or "?" in punct or len(punct) >= 2 or punct.startswith("…"):
        return True
    raw = _TOKEN_BEFORE.search(text, sent_start, p).group()
    token = raw.lstrip("-/'’")
    tok_start = p - len(token)
    token = token.rstrip("'’")
    t = token.lower()
    if not t:
        return True  # "...). Next" or a lone full stop: ordinary boundary
    if t in NEVER_FINAL:
        return False
    if t in MAYBE_FINAL:
        return ch.isupper()
    if len(t) == 1 and t.isalpha():
        if token.islower():
            return False
        before = text[sent_start:tok_start]
        if not before.strip():
            return False  # "A. Clinical photo" - an enumerating letter opening the sentence
        m = _WORD_BEFORE.search(before)
        prev = m.group(1) if m else ""
        return not (prev[:1].isupper() or (len(prev) == 1 and prev.isalpha()) or prev.lower() in _NAME_LEAD)
    if t.isdigit() and len(t) <= 3 and _BULLET.match(text[sent_start:tok_start]):
        return False  # enumerator "1. ..." opening a sentence
    return True


def sentence_spans(text: str) -> list[tuple[int, int]]:
    """(start, end) character spans of the sentences of ``text`` (each span includes its final punctuation)."""
    n = len(text)
    cuts: list[tuple[int, int]] = []  # (end of sentence, start of the next one)
    sent_start = 0
    # skip leading whitespace
    while sent_start < n and text[sent_start].isspace():
        sent_start += 1
    candidates: list[tuple[int, str, int, int]] = []  # (p, punct, end, nxt)
    for m in _CAND.finditer(text):
        if m.end() >= n:
            continue  # end of text: no next sentence
        candidates.append((m.start("punct"), m.group("punct"), m.end("close"), m.end()))
    for m in _NOSPACE.finditer(text):
        token = _TOKEN_BEFORE.search(text, 0, m.start()).group().lower()
        if "." in token or token in NEVER_FINAL or token in MAYBE_FINAL:
            continue
        candidates.append((m.start(), ".", m.end(), m.end()))
    # line breaks that are not already part of a punctuation candidate
    for m in re.finditer(r"[ \t]*(\r?\n)+\s*", text):
        if m.end() >= n or m.start() == 0:
            continue
        prev = text[m.start() - 1]
        nxt = text[m.end()]
        if prev in ".!?…" or (prev in _CLOSERS and text[: m.start()].rstrip(_CLOSERS)[-1:] in ".!?…"):
            continue  # handled as a punctuation candidate
        if nxt.isupper() or nxt.isdigit() or nxt in "-–—•*·":
            candidates.append((m.start(), "\n", m.start(), m.end()))
    candidates.sort()
    for p, punct, end, nxt in candidates:
        if p < sent_start:
            continue
        if punct == "\n" or _is_boundary(text, sent_start, p, punct, end, nxt):
            cuts.append((end, nxt))
            sent_start = nxt
    spans: list[tuple[int, int]] = []
    start = 0
    while start < n and text[start].isspace():
        start += 1
    for end, nxt in cuts:
        spans.append((start, end))
        start = nxt
    stop = len(text.rstrip())
    if start < stop:
        spans.append((start, stop))
    # stray punctuation pieces join the previous piece (or the next, when first)
    out: list[tuple[int, int]] = []
    for s, e in spans:
        if not any(c.isalnum() for c in text[s:e]):
            if out:
                out[-1] = (out[-1][0], e)
                continue
        if out and not any(c.isalnum() for c in text[out[-1][0] : out[-1][1]]):
            s = out.pop()[0]
        out.append((s, e))
    return [(s, e) for s, e in out if text[s:e].strip()]


def split_sentences(text: str) -> list[str]:
    """The sentences of ``text`` as written (final punctuation kept), whitespace runs collapsed."""
    return [_WS.sub(" ", text[s:e]).strip() for s, e in sentence_spans(text)]


def strip_final_stop(sentence: str) -> str:
    """Drop the final full stop (or ellipsis), keeping closing quotes/brackets: 'It itches.")' -> 'It itches")'."""
    s = sentence.strip()
    return _FINAL_STOP.sub("", s, count=1).strip() if s else s


def merge_to_limit(spans: Sequence[tuple[int, int]], limit: int = NUM_SUBTEXTS) -> list[tuple[int, int]]:
    """Merge adjacent spans until at most ``limit`` remain: each step merges the adjacent pair with the smallest
    combined length (ties -> the leftmost pair). The merged span runs from the first start to the second end."""
    if limit < 1:
        raise ValueError("limit must be >= 1")
    out = list(spans)
    while len(out) > limit:
        best = min(range(len(out) - 1), key=lambda i: ((out[i][1] - out[i][0]) + (out[i + 1][1] - out[i + 1][0]), i))
        out[best : best + 2] = [(out[best][0], out[best + 1][1])]
    return out


def split_subtexts(text: str, limit: int = NUM_SUBTEXTS) -> list[str]:
    """The subtext set of a caption: its sentences (merged down to ``limit``) without their final full stop."""
    spans = merge_to_limit(sentence_spans(text), limit)
    pieces = (strip_final_stop(_WS.sub(" ", text[s:e])) for s, e in spans)
    return [p for p in pieces if p]


# --- truncation ----------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TextBudget:
    """A length budget for the raw caption slot.

    ``kind`` is 'tokens' (exact CLIP tokens: ``count(text) + 2 <= limit``, i.e. SOT/EOT included, nothing cut by
    the 77-token context), 'words' (whitespace-separated words <= limit), 'chars' (characters <= limit) or 'none'
    (no truncation).
    """

    kind: str
    limit: int = 0
    count: Callable[[str], int] | None = None

    def fits(self, text: str) -> bool:
        if self.kind == "none":
            return True
        if self.kind == "tokens":
            return self.count(text) + 2 <= self.limit
        if self.kind == "words":
            return len(text.split()) <= self.limit
        if self.kind == "chars":
            return len(text) <= self.limit
        raise ValueError(f"unknown budget kind {self.kind!r}")

    def describe(self) -> str:
        return "none" if self.kind == "none" else f"{self.kind}:{self.limit}"

    @staticmethod
    def none() -> TextBudget:
        return TextBudget("none")

    @staticmethod
    def words(limit: int) -> TextBudget:
        if limit < 1:
            raise ValueError("word budget must be >= 1")
        return TextBudget("words", int(limit))

    @staticmethod
    def chars(limit: int) -> TextBudget:
        if limit < 1:
            raise ValueError("character budget must be >= 1")
        return TextBudget("chars", int(limit))

    @staticmethod
    def tokens(limit: int = 77, count: Callable[[str], int] | None = None) -> TextBudget:
        """Exact CLIP-token budget. ``count`` maps text -> number of BPE tokens (without SOT/EOT); by default
        ``make_jax.tokenizer``'s encoder (ImportError if that package is unavailable)."""
        if limit < 3:
            raise ValueError("token budget must be >= 3")
        if count is None:
            from make_jax.tokenizer import get_tokenizer  # optional dependency, imported on demand

            tok = get_tokenizer()
            count = lambda s: len(tok.encode(s))  # noqa: E731
        return TextBudget("tokens", int(limit), count)


#: Words per 75 CLIP tokens is about 37 on Derm1M-style text (~2 BPE tokens per word); 35 leaves a margin.
DEFAULT_WORD_BUDGET = 35


def default_budget(context_length: int = 77) -> TextBudget:
    """Exact token budget when ``make_jax.tokenizer`` imports, else ``TextBudget.words(DEFAULT_WORD_BUDGET)``."""
    try:
        return TextBudget.tokens(context_length)
    except Exception:  # noqa: BLE001 - any import/initialisation failure means "no tokenizer"
        return TextBudget.words(DEFAULT_WORD_BUDGET)


def truncate_caption(text: str, budget: TextBudget) -> str:
    """Cut ``text`` to ``budget`` at a sentence boundary (see module doc). Returns ``text.strip()`` if it fits."""
    text = text.strip()
    if budget.fits(text):
        return text
    spans = sentence_spans(text)
    best = ""
    for _, e in spans:
        prefix = text[:e].rstrip()
        if budget.fits(prefix):
            best = prefix
        else:
            break
    if best:
        return best
    # first sentence alone is too long: longest leading run of words that fits (binary search)
    words = list(re.finditer(r"\S+", text))
    lo, hi = 0, len(words)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if budget.fits(text[: words[mid - 1].end()]):
            lo = mid
        else:
            hi = mid - 1
    return text[: words[lo - 1].end()] if lo else ""
