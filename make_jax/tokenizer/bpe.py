"""CLIP byte-level BPE: the vocabulary and the merge loop.

The vocabulary is built exactly as open_clip's ``SimpleTokenizer`` (copied from OpenAI CLIP) builds it:

    ids     0 ..   255   the 256 byte symbols (in ``bytes_to_unicode`` order)
    ids   256 ..   511   the same 256 symbols with the end-of-word marker ``</w>`` appended
    ids   512 .. 49405   the 48,894 merges, in rank order (merged pair concatenated)
    id  49406            ``<start_of_text>``
    id  49407            ``<end_of_text>``

for a total of 49,408 ids. The merges are lines ``1 .. 49152-256-2`` of the gz file (line 0 is the
``#version`` header); the rest of the file is unused, as in CLIP.
"""

from __future__ import annotations

import gzip
import os
from typing import NamedTuple

# Where the shipped merges file lives (see LICENSE in this directory for its origin and hash).
DEFAULT_BPE_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "bpe_simple_vocab_16e6.txt.gz")
BPE_SHA256 = "924691ac288e54409236115652ad4aa250f48203de50a9e4722a6ecd48d6804a"

SOT_TOKEN = "<start_of_text>"
EOT_TOKEN = "<end_of_text>"
SPECIAL_TOKENS = (SOT_TOKEN, EOT_TOKEN)
END_OF_WORD = "</w>"

# CLIP keeps 49152 - 256 - 2 merges so that bytes + bytes</w> + merges + 2 specials = 49408.
NUM_MERGES = 49152 - 256 - 2
VOCAB_SIZE = 2 * 256 + NUM_MERGES + len(SPECIAL_TOKENS)  # 49408
SOT_ID = VOCAB_SIZE - 2  # 49406
EOT_ID = VOCAB_SIZE - 1  # 49407


def bytes_to_unicode() -> dict[int, str]:
    """Byte value (0..255) -> one printable unicode character, CLIP/GPT-2's reversible byte alphabet.

    Printable latin-1 bytes map to themselves; the other 68 bytes (controls, space, soft hyphen, ...)
    map to code points 256, 257, ... in byte order, so no BPE symbol is whitespace or a control char.
    """
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


class Vocab(NamedTuple):
    """The BPE tables. ``encoder``: symbol -> id (49,408 entries); ``decoder``: id -> symbol (list, same
    length); ``ranks``: merge pair -> rank (48,894 entries; lower merges first)."""

    encoder: dict[str, int]
    decoder: list[str]
    ranks: dict[tuple[str, str], int]


def load_vocab(bpe_path: str = DEFAULT_BPE_PATH) -> Vocab:
    """Read the gz merges file and build the 49,408-id vocabulary (open_clip's construction)."""
    with gzip.open(bpe_path) as f:
        lines = f.read().decode("utf-8").split("\n")
    merges = [tuple(line.split()) for line in lines[1 : NUM_MERGES + 1]]
    if len(merges) != NUM_MERGES or any(len(m) != 2 for m in merges):
        raise ValueError(f"{bpe_path}: expected {NUM_MERGES} merge pairs after the header line")
    byte_symbols = list(bytes_to_unicode().values())
    decoder = byte_symbols + [s + END_OF_WORD for s in byte_symbols] + ["".join(m) for m in merges]
    decoder += list(SPECIAL_TOKENS)
    encoder = {s: i for i, s in enumerate(decoder)}
    if len(decoder) != VOCAB_SIZE or len(encoder) != VOCAB_SIZE:  # duplicates would silently shift ids
        raise ValueError(f"{bpe_path}: vocabulary has {len(encoder)} distinct symbols, expected {VOCAB_SIZE}")
    ranks = {m: r for r, m in enumerate(merges)}
    return Vocab(encoder, decoder, ranks)


def bpe(token: str, ranks: dict[tuple[str, str], int]) -> list[str]:
    """Split one pre-token (already mapped to the byte alphabet) into BPE symbols.

    The last character carries ``</w>``. Repeatedly takes the adjacent pair with the lowest merge rank
    and merges every non-overlapping occurrence of it, left to right, until no pair has a rank: the
    same steps as CLIP's ``SimpleTokenizer.bpe``, with the pair ranks kept in a list (updated only next
    to each merge) so that ``min``/``index`` run in C. Not cached here: the caller caches per pre-token.

    Args:
        token: non-empty string of byte-alphabet characters.
    Returns:
        list of symbols, each a key of the vocabulary encoder.
    """
    word = list(token)
    word[-1] += END_OF_WORD
    if len(word) == 1:
        return word
    get = ranks.get
    none = NUM_MERGES  # "no merge": larger than every rank
    # pair_ranks[k] = rank of (word[k], word[k+1]); kept in step with `word` so min/index run in C.
    pair_ranks = [get(pair, none) for pair in zip(word, word[1:])]
    while True:
        best = min(pair_ranks)
        if best == none:
            break
        # Ranks are one-to-one with pairs, so the first position holding `best` is the first occurrence.
        i = pair_ranks.index(best)
        first, second = word[i], word[i + 1]
        merged = first + second
        if best in pair_ranks[i + 2 :]:
            # Several occurrences: merge them all left to right, non-overlapping, then re-rank.
            new_word = word[:i]
            new_word.append(merged)
            j, n = i + 2, len(word)
            while j < n:
                if j < n - 1 and word[j] == first and word[j + 1] == second:
                    new_word.append(merged)
                    j += 2
                else:
                    new_word.append(word[j])
                    j += 1
            word = new_word
            if len(word) == 1:
                break
            pair_ranks = [get(pair, none) for pair in zip(word, word[1:])]
        else:
            # One occurrence (an overlapping one at i+1 is skipped, as CLIP's left-to-right pass does):
            # only the pairs next to the merged symbol change.
            word[i : i + 2] = [merged]
            n = len(word)
            if n == 1:
                break
            if i == 0:
                pair_ranks[0:2] = [get((merged, word[1]), none)]
            elif i == n - 1:
                pair_ranks[i - 1 : i + 1] = [get((word[i - 1], merged), none)]
            else:
                pair_ranks[i - 1 : i + 2] = [get((word[i - 1], merged), none), get((merged, word[i + 1]), none)]
    return word
