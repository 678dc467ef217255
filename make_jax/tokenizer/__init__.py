"""CLIP byte-level BPE tokenizer (same ids as open_clip's ``SimpleTokenizer``; README.md, Tokenizer).

    >>> from make_jax.tokenizer import tokenize, tokenize_with_lengths
    >>> ids = tokenize(["a photo of eczema", "psoriasis"])          # (2, 77) int32, pad 0
    >>> ids, lengths = tokenize_with_lengths("a photo of eczema")   # (1, 77), (1,)

Vocabulary 49,408; SOT 49406; EOT 49407; padding 0 (Hugging Face's CLIPTokenizer pads with 49407).

`text_tokenizer(model_config.text)` returns the tokenizer a model names: this one, or BERT's WordPiece
(`wordpiece.py`) for a BERT text tower.
"""

import functools

from .bpe import BPE_SHA256, DEFAULT_BPE_PATH, EOT_ID, SOT_ID, VOCAB_SIZE, bytes_to_unicode, load_vocab
from .clean import clean_lower, ftfy_is_noop
from .tokenizer import (
    DEFAULT_CONTEXT_LENGTH,
    Tokenizer,
    decode,
    get_tokenizer,
    tokenize,
    tokenize_with_lengths,
)

from .wordpiece import WordPieceTokenizer


@functools.lru_cache(maxsize=8)
def _wordpiece(vocab_file: str, context_length: int) -> WordPieceTokenizer:
    return WordPieceTokenizer(vocab_file, context_length=context_length)


def text_tokenizer(text):
    """The tokenizer a model's `TextConfig` names (``text.tokenizer``): the shipped CLIP BPE, or WordPiece over
    ``text.vocab_file``. Both have ``tokenize_with_lengths(texts, context_length)`` and ``__call__``."""
    if text.tokenizer == "wordpiece":
        return _wordpiece(text.vocab_file, text.context_length)
    if text.tokenizer != "clip_bpe":
        raise ValueError(f"unknown tokenizer {text.tokenizer!r}")
    return get_tokenizer()


__all__ = [
    "BPE_SHA256",
    "DEFAULT_BPE_PATH",
    "DEFAULT_CONTEXT_LENGTH",
    "EOT_ID",
    "SOT_ID",
    "VOCAB_SIZE",
    "Tokenizer",
    "WordPieceTokenizer",
    "bytes_to_unicode",
    "clean_lower",
    "ftfy_is_noop",
    "decode",
    "get_tokenizer",
    "load_vocab",
    "text_tokenizer",
    "tokenize",
    "tokenize_with_lengths",
]
