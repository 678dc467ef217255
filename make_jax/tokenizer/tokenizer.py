"""Batched CLIP tokenizer producing (N, context_length) int32 id arrays; same ids as open_clip's
``SimpleTokenizer`` (clean='lower', no reduction mask).

Speed comes from caching, not from a different algorithm:

* the cleaned text is split on single spaces into *chunks*; each chunk's ids are cached. This is exact
  because no alternative of the pre-tokenizer regex can match a space (a space is neither a letter, a
  number, nor in ``[^\\s\\p{L}\\p{N}]``, and the special tokens and contractions hold none), so
  ``findall`` over "a b" is ``findall("a") + findall("b")``;
* inside a chunk, each regex pre-token's BPE result is cached (as open_clip does);
* optionally a bounded LRU maps the raw text to its ids (prompt templates and ontology captions repeat);
* ftfy is skipped for text it provably leaves unchanged (see ``clean.py``), and ASCII text is
  lower-cased and split in one step;
* the output array is assembled with a boolean mask, not a per-row Python loop.

Caches are bounded by clearing them when full (cheap, and the working set refills within a few
batches). Each process (e.g. each data-loader worker) holds its own caches; the object pickles as its
constructor arguments, without the caches.
"""

from __future__ import annotations

import functools
import operator
from collections.abc import Callable, Iterable, Sequence
from itertools import chain

import numpy as np
import regex

from .bpe import DEFAULT_BPE_PATH, EOT_ID, SOT_ID, SPECIAL_TOKENS, VOCAB_SIZE, bpe, bytes_to_unicode, load_vocab
from .clean import clean_lower, is_ascii_noop

DEFAULT_CONTEXT_LENGTH = 77

# open_clip's pre-tokenizer (special tokens first), compiled with the `regex` module for \p{..}.
PATTERN = (
    "|".join(SPECIAL_TOKENS) + r"""|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""
)


class _FillingCache(dict):
    """dict that computes a missing value with ``fn`` and empties itself when ``max_size`` is reached."""

    __slots__ = ("_fn", "_max_size")

    def __init__(self, fn: Callable, max_size: int):
        super().__init__()
        self._fn = fn
        self._max_size = max_size

    def __missing__(self, key):
        value = self._fn(key)
        if len(self) >= self._max_size:
            self.clear()
        self[key] = value
        return value


class Tokenizer:
    """CLIP BPE tokenizer (vocab 49,408; SOT 49406; EOT 49407; pad 0).

    Args:
        bpe_path: gz merges file (default: the one shipped with this package).
        context_length: default output width for ``__call__`` / ``tokenize_with_lengths``.
        text_cache_size: entries of the raw-text -> ids LRU; 0 disables it.
        word_cache_size: entries of each of the chunk -> ids and pre-token -> ids caches.
    """

    sot_token_id = SOT_ID
    eot_token_id = EOT_ID
    pad_token_id = 0
    vocab_size = VOCAB_SIZE

    def __init__(
        self,
        bpe_path: str = DEFAULT_BPE_PATH,
        context_length: int = DEFAULT_CONTEXT_LENGTH,
        text_cache_size: int = 1 << 16,
        word_cache_size: int = 1 << 18,
    ):
        self.bpe_path = bpe_path
        self.context_length = context_length
        self.text_cache_size = text_cache_size
        self.word_cache_size = word_cache_size
        self.encoder, self.decoder, self.bpe_ranks = load_vocab(bpe_path)
        self.byte_encoder = bytes_to_unicode()
        self.byte_decoder = {c: b for b, c in self.byte_encoder.items()}
        # str.translate table: latin-1 char (one per utf-8 byte) -> byte-alphabet char.
        self._byte_table = dict(self.byte_encoder)
        self._pat = regex.compile(PATTERN, regex.IGNORECASE)
        self._token_ids = _FillingCache(self._bpe_token, word_cache_size)
        self._chunk_ids = _FillingCache(self._encode_chunk, word_cache_size)
        if text_cache_size > 0:
            self._encode_text_cached = functools.lru_cache(maxsize=text_cache_size)(self._encode_text)
        else:
            self._encode_text_cached = self._encode_text

    def __reduce__(self):
        # Pickle as constructor arguments: caches (and the lru_cache wrapper) are per process.
        return (Tokenizer, (self.bpe_path, self.context_length, self.text_cache_size, self.word_cache_size))

    # ---- per-word machinery (cache misses only) ----

    def _bpe_token(self, token: str) -> tuple[int, ...]:
        """ids of one regex pre-token. open_clip pre-seeds its BPE cache with the special tokens, so a
        literal '<start_of_text>' / '<end_of_text>' in the text becomes the special id."""
        if token in SPECIAL_TOKENS:
            return (self.encoder[token],)
        symbols = token.encode("utf-8").decode("latin-1").translate(self._byte_table)
        return tuple(map(self.encoder.__getitem__, bpe(symbols, self.bpe_ranks)))

    def _encode_chunk(self, chunk: str) -> tuple[int, ...]:
        """ids of one space-free piece of cleaned text."""
        token_ids = self._token_ids
        return tuple(chain.from_iterable(token_ids[t] for t in self._pat.findall(chunk)))

    def _encode_text(self, text: str) -> tuple[int, ...]:
        """BPE ids of ``text`` without SOT/EOT (open_clip's ``encode``), as a tuple."""
        if is_ascii_noop(text):
            # ASCII fast path: lower() only maps A-Z, so this equals
            # " ".join(text.split()).strip().lower().split(" ") up to an empty chunk (which has no ids).
            chunks = text.lower().split()
        else:
            chunks = clean_lower(text).split(" ")
        return tuple(chain.from_iterable(map(self._chunk_ids.__getitem__, chunks)))

    # ---- public API ----

    def encode(self, text: str) -> list[int]:
        """BPE ids of one text, without SOT/EOT and without truncation (= open_clip ``encode``)."""
        return list(self._encode_text_cached(text))

    def decode(self, ids: Iterable[int]) -> str:
        """Text for ids (= open_clip ``decode``): symbols joined, bytes decoded with errors='replace',
        '</w>' turned into a space. Special ids decode to their names; strip padding (0 = '!') first."""
        text = "".join(self.decoder[int(i)] for i in ids)
        return bytearray(self.byte_decoder[c] for c in text).decode("utf-8", errors="replace").replace("</w>", " ")

    def tokenize_with_lengths(
        self, texts: str | Sequence[str], context_length: int | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Tokenize a batch.

        Row i is [SOT] + BPE(texts[i]) + [EOT] padded with 0; if that is longer than ``context_length``
        it is cut to ``context_length`` and its last position set to EOT (open_clip's truncation).

        Args:
            texts: one string or a sequence of N strings.
            context_length: output width L (default ``self.context_length``, 77); L >= 1.
        Returns:
            ids: (N, L) int32.
            lengths: (N,) int32, number of non-pad tokens per row (SOT and EOT included, <= L); the EOT
              of row i sits at ``lengths[i] - 1`` (CLIP pools the text feature there).
        """
        if isinstance(texts, str):
            texts = [texts]
        L = self.context_length if context_length is None else int(context_length)
        if L < 1:
            raise ValueError(f"context_length must be >= 1, got {L}")
        bodies = list(map(self._encode_text_cached, texts))
        n = len(bodies)
        out = np.zeros((n, L), dtype=np.int32)
        if L == 1:  # open_clip: [SOT, ..., EOT][:1] with the last position set to EOT
            out[:, 0] = EOT_ID
            return out, np.ones(n, dtype=np.int32)
        max_body = L - 2
        keep = np.fromiter(map(len, bodies), dtype=np.int64, count=n)
        np.minimum(keep, max_body, out=keep)
        # Truncated bodies, flattened row-major; a tuple slice covering the whole tuple is free.
        flat = np.fromiter(
            chain.from_iterable(map(operator.itemgetter(slice(0, max_body)), bodies)),
            dtype=np.int32,
            count=int(keep.sum()),
        )
        out[:, 0] = SOT_ID
        body_view = out[:, 1 : L - 1]
        body_view[np.arange(max_body) < keep[:, None]] = flat  # row-major order matches `flat`
        out[np.arange(n), keep + 1] = EOT_ID
        return out, (keep + 2).astype(np.int32)

    def __call__(self, texts: str | Sequence[str], context_length: int | None = None) -> np.ndarray:
        """(N, L) int32 ids; see ``tokenize_with_lengths``."""
        return self.tokenize_with_lengths(texts, context_length)[0]

    def clear_caches(self) -> None:
        """Empty all caches (benchmarks use this for cold-cache figures)."""
        self._token_ids.clear()
        self._chunk_ids.clear()
        if self.text_cache_size > 0:
            self._encode_text_cached.cache_clear()


@functools.lru_cache(maxsize=1)
def get_tokenizer() -> Tokenizer:
    """Process-wide default tokenizer (shipped merges, context length 77), built on first use."""
    return Tokenizer()


def tokenize(texts: str | Sequence[str], context_length: int = DEFAULT_CONTEXT_LENGTH) -> np.ndarray:
    """(N, context_length) int32 CLIP ids of ``texts`` with the default tokenizer; see
    ``Tokenizer.tokenize_with_lengths``."""
    return get_tokenizer()(texts, context_length)


def tokenize_with_lengths(
    texts: str | Sequence[str], context_length: int = DEFAULT_CONTEXT_LENGTH
) -> tuple[np.ndarray, np.ndarray]:
    """((N, context_length) int32 ids, (N,) int32 non-pad lengths) with the default tokenizer."""
    return get_tokenizer().tokenize_with_lengths(texts, context_length)


def decode(ids: Iterable[int]) -> str:
    """Text for ids with the default tokenizer (see ``Tokenizer.decode``)."""
    return get_tokenizer().decode(ids)
