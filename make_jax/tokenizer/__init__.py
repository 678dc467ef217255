"""CLIP byte-level BPE tokenizer (same ids as open_clip's ``SimpleTokenizer``; spec §5).

    >>> from make_jax.tokenizer import tokenize, tokenize_with_lengths
    >>> ids = tokenize(["a photo of eczema", "psoriasis"])          # (2, 77) int32, pad 0
    >>> ids, lengths = tokenize_with_lengths("a photo of eczema")   # (1, 77), (1,)

Vocabulary 49,408; SOT 49406; EOT 49407; padding 0 (Hugging Face's CLIPTokenizer pads with 49407).
"""

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

__all__ = [
    "BPE_SHA256",
    "DEFAULT_BPE_PATH",
    "DEFAULT_CONTEXT_LENGTH",
    "EOT_ID",
    "SOT_ID",
    "VOCAB_SIZE",
    "Tokenizer",
    "bytes_to_unicode",
    "clean_lower",
    "ftfy_is_noop",
    "decode",
    "get_tokenizer",
    "load_vocab",
    "tokenize",
    "tokenize_with_lengths",
]
