"""BERT WordPiece tokenizer (BiomedBERT / PubMedBERT, uncased): the ids of transformers' ``BertTokenizer``.

    >>> tok = WordPieceTokenizer("path/to/vocab.txt", context_length=64)
    >>> ids, lengths = tok.tokenize_with_lengths(["Psoriasis: scaly plaques", "eczema"])   # (2, 64), (2,)

Row i is [CLS] + pieces(texts[i])[:L-2] + [SEP], padded with [PAD] (id 0 in BERT vocabularies); ``lengths`` counts
the non-pad tokens (CLS and SEP included). Pieces come from BERT's two stages:

1. *basic tokenization*: drop NUL, U+FFFD and control characters, map whitespace to spaces, put spaces around CJK
   ideographs, split on whitespace; lower-case and strip accents (NFD, then drop combining marks) when
   ``do_lower_case``; split every punctuation character (ASCII symbols and Unicode category P*) off as its own
   token;
   (special tokens written in the text, e.g. "[SEP]", are split off first and kept whole);
2. *WordPiece*: greedy longest-match-first over the vocabulary, continuation pieces prefixed with ``##``; a word
   longer than ``max_chars_per_word`` characters, or one that cannot be covered, becomes [UNK].
"""

from __future__ import annotations

import functools
import re
import unicodedata
from collections.abc import Sequence
from pathlib import Path

import numpy as np


SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")


def load_wordpiece_vocab(path: str | Path) -> dict[str, int]:
    """vocab.txt (one token per line; its line number is its id) → {token: id}."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no WordPiece vocabulary (vocab.txt) there")
    tokens = path.read_text(encoding="utf-8").split("\n")
    if tokens and tokens[-1] == "":
        tokens.pop()
    vocab = {}
    for i, t in enumerate(tokens):
        vocab[t.rstrip("\r")] = i  # the last line of a duplicated token wins, as in transformers
    for special in ("[PAD]", "[UNK]", "[CLS]", "[SEP]"):
        if special not in vocab:
            raise ValueError(f"{path}: the vocabulary has no {special} token")
    return vocab


def _is_whitespace(ch: str) -> bool:
    return ch in " \t\n\r" or unicodedata.category(ch) == "Zs"


def _is_control(ch: str) -> bool:
    if ch in "\t\n\r":
        return False
    return unicodedata.category(ch) in ("Cc", "Cf")


def _is_punctuation(ch: str) -> bool:
    cp = ord(ch)
    if 33 <= cp <= 47 or 58 <= cp <= 64 or 91 <= cp <= 96 or 123 <= cp <= 126:
        return True  # every non-letter, non-number ASCII symbol counts, e.g. ^ $ ` (not category P)
    return unicodedata.category(ch).startswith("P")


def _is_cjk(cp: int) -> bool:
    return (0x4E00 <= cp <= 0x9FFF or 0x3400 <= cp <= 0x4DBF or 0x20000 <= cp <= 0x2A6DF
            or 0x2A700 <= cp <= 0x2B73F or 0x2B740 <= cp <= 0x2B81F or 0x2B820 <= cp <= 0x2CEAF
            or 0xF900 <= cp <= 0xFAFF or 0x2F800 <= cp <= 0x2FA1F)


class WordPieceTokenizer:
    """BERT WordPiece tokenizer over a vocab.txt (see the module docstring).

    Args:
        vocab_file: the vocabulary, one token per line.
        context_length: default output width L (>= 2: room for [CLS] and [SEP]).
        do_lower_case: lower-case and strip accents (True for the uncased BiomedBERT vocabularies).
        max_chars_per_word: longer words become [UNK] (BERT's 100).
    """

    def __init__(self, vocab_file: str | Path, context_length: int = 77, do_lower_case: bool = True,
                 max_chars_per_word: int = 100):
        self.vocab_file = str(vocab_file)
        self.vocab = load_wordpiece_vocab(vocab_file)
        self.context_length = int(context_length)
        if self.context_length < 2:
            raise ValueError(f"context_length must be >= 2 ([CLS] and [SEP]), got {context_length}")
        self.do_lower_case = do_lower_case
        self.max_chars_per_word = max_chars_per_word
        self.pad_token_id = self.vocab["[PAD]"]
        self.unk_token_id = self.vocab["[UNK]"]
        self.cls_token_id = self.vocab["[CLS]"]
        self.sep_token_id = self.vocab["[SEP]"]
        self.vocab_size = max(self.vocab.values()) + 1
        self._word_ids = functools.lru_cache(maxsize=1 << 16)(self._wordpiece)
        specials = sorted((t for t in SPECIAL_TOKENS if t in self.vocab), key=len, reverse=True)
        self._special_split = re.compile("(" + "|".join(map(re.escape, specials)) + ")")

    def __reduce__(self):
        return (WordPieceTokenizer, (self.vocab_file, self.context_length, self.do_lower_case,
                                     self.max_chars_per_word))

    # ---- basic tokenization ----

    def _basic_tokens(self, text: str) -> list[str]:
        chars = []
        for ch in text:
            cp = ord(ch)
            if cp == 0 or cp == 0xFFFD or _is_control(ch):
                continue
            if _is_whitespace(ch):
                chars.append(" ")
            elif _is_cjk(cp):
                chars.extend((" ", ch, " "))
            else:
                chars.append(ch)
        out = []
        for word in "".join(chars).split():
            if self.do_lower_case:
                word = "".join(c for c in unicodedata.normalize("NFD", word.lower())
                               if unicodedata.category(c) != "Mn")
            start = 0
            for i, ch in enumerate(word):
                if _is_punctuation(ch):
                    if start < i:
                        out.append(word[start:i])
                    out.append(ch)
                    start = i + 1
            if start < len(word):
                out.append(word[start:])
        return out

    # ---- WordPiece ----

    def _wordpiece(self, word: str) -> tuple[int, ...]:
        if len(word) > self.max_chars_per_word:
            return (self.unk_token_id,)
        ids, start = [], 0
        while start < len(word):
            end = len(word)
            while end > start:
                piece = word[start:end] if start == 0 else "##" + word[start:end]
                if piece in self.vocab:
                    ids.append(self.vocab[piece])
                    break
                end -= 1
            else:
                return (self.unk_token_id,)
            start = end
        return tuple(ids)

    # ---- public API ----

    def encode(self, text: str) -> list[int]:
        """Piece ids of one text, without [CLS]/[SEP] and without truncation. A special token written in the
        text ("[SEP]", exactly so) is that token, as in transformers."""
        ids = []
        for k, part in enumerate(self._special_split.split(text)):
            if k % 2:
                ids.append(self.vocab[part])
            else:
                ids.extend(i for w in self._basic_tokens(part) for i in self._word_ids(w))
        return ids

    def tokenize_with_lengths(self, texts: str | Sequence[str],
                              context_length: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """((N, L) int32 ids, (N,) int32 non-pad lengths): [CLS] + pieces[:L-2] + [SEP], then [PAD]."""
        if isinstance(texts, str):
            texts = [texts]
        length = self.context_length if context_length is None else int(context_length)
        if length < 2:
            raise ValueError(f"context_length must be >= 2 ([CLS] and [SEP]), got {length}")
        out = np.full((len(texts), length), self.pad_token_id, np.int32)
        lengths = np.zeros(len(texts), np.int32)
        for i, text in enumerate(texts):
            body = self.encode(text)[:length - 2]
            row = [self.cls_token_id, *body, self.sep_token_id]
            out[i, :len(row)] = row
            lengths[i] = len(row)
        return out, lengths

    def __call__(self, texts: str | Sequence[str], context_length: int | None = None) -> np.ndarray:
        return self.tokenize_with_lengths(texts, context_length)[0]
