"""Tests for make_jax.tokenizer (README.md, Tokenizer: open_clip's SimpleTokenizer, clean='lower').

The package tokenizer is compared with an independent, deliberately plain reimplementation written
below (its own byte alphabet, vocabulary, string-keyed merge ranks, merge loop, cleaning and padding;
no caches, no fast paths), on > 1,000 varied strings. Ids that come from neither implementation are
checked too: the well-known CLIP ids of a few phrases, the sha256 of the merges file recorded in the
open-clip-torch 3.3.0 wheel, and Hugging Face's CLIPTokenizer built from the same vocab/merges.
"""

from __future__ import annotations

import base64
import csv
import gzip
import hashlib
import html
import json
import os
import pickle
import random
import re

import ftfy
import numpy as np
import pytest
import regex

from make_jax import tokenizer as T
from make_jax.tokenizer import clean as C

HERE = os.path.dirname(os.path.abspath(__file__))
GOLDEN_CSV = os.path.join(HERE, "golden", "MAKE_training_example.csv")
CTX = 77

# ---------------------------------------------------------------------------------------------------
# Independent reference implementation
# ---------------------------------------------------------------------------------------------------


def ref_byte_alphabet() -> list[str]:
    """Byte b -> its BPE character. Printable latin-1 bytes (33..126, 161..172, 174..255) stand for
    themselves; the remaining bytes take code points 256, 257, ... in increasing byte order."""
    printable = lambda b: 33 <= b <= 126 or 161 <= b <= 172 or 174 <= b <= 255  # noqa: E731
    out, extra = [], 0
    for b in range(256):
        if printable(b):
            out.append(chr(b))
        else:
            out.append(chr(256 + extra))
            extra += 1
    return out


REF_ALPHABET = ref_byte_alphabet()  # indexed by byte value
REF_UNALPHABET = {c: b for b, c in enumerate(REF_ALPHABET)}


def _ref_load():
    raw = gzip.open(T.DEFAULT_BPE_PATH).read().decode("utf-8").split("\n")
    merge_lines = raw[1:48895]  # 48,894 merges after the '#version' header
    ranks = {line: r for r, line in enumerate(merge_lines)}  # keyed by the raw "a b" line
    # vocabulary order: bytes in alphabet order (= printable bytes first, then the rest), ...
    alphabet_order = [chr(b) for b in range(256) if REF_ALPHABET[b] == chr(b)]
    alphabet_order += [REF_ALPHABET[b] for b in range(256) if REF_ALPHABET[b] != chr(b)]
    vocab = alphabet_order + [c + "</w>" for c in alphabet_order]
    vocab += [line.replace(" ", "") for line in merge_lines]
    vocab += ["<start_of_text>", "<end_of_text>"]
    return raw, merge_lines, ranks, vocab


REF_RAW_LINES, REF_MERGE_LINES, REF_RANKS, REF_VOCAB = _ref_load()
REF_IDS = {tok: i for i, tok in enumerate(REF_VOCAB)}
REF_PAT = regex.compile(
    r"""<start_of_text>|<end_of_text>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""", regex.IGNORECASE
)


def ref_clean(text: str) -> str:
    text = ftfy.fix_text(text)
    text = html.unescape(html.unescape(text)).strip()
    text = re.sub(r"\s+", " ", text).strip()  # Python's \s is str.isspace(), as str.split() uses
    return text.lower()


def ref_bpe(piece: str) -> list[str]:
    """Merge loop over ranks: find the lowest-ranked adjacent pair, merge all its non-overlapping
    occurrences left to right, repeat."""
    syms = list(piece)
    syms[-1] += "</w>"
    while len(syms) >= 2:
        ranked = [(REF_RANKS[f"{a} {b}"], a, b) for a, b in zip(syms, syms[1:]) if f"{a} {b}" in REF_RANKS]
        if not ranked:
            break
        _, a, b = min(ranked)
        merged, k = [], 0
        while k < len(syms):
            if syms[k] == a and k + 1 < len(syms) and syms[k + 1] == b:
                merged.append(a + b)
                k += 2
            else:
                merged.append(syms[k])
                k += 1
        syms = merged
    return syms


def ref_encode(text: str) -> list[int]:
    ids = []
    for piece in REF_PAT.findall(ref_clean(text)):
        if piece in ("<start_of_text>", "<end_of_text>"):  # CLIP's BPE cache is seeded with these
            ids.append(REF_IDS[piece])
            continue
        mapped = "".join(REF_ALPHABET[b] for b in piece.encode("utf-8"))
        ids.extend(REF_IDS[s] for s in ref_bpe(mapped))
    return ids


def ref_tokenize(texts: list[str], ctx: int = CTX) -> tuple[np.ndarray, np.ndarray]:
    out = np.zeros((len(texts), ctx), dtype=np.int64)
    lengths = np.zeros(len(texts), dtype=np.int64)
    for row, text in enumerate(texts):
        seq = [49406] + ref_encode(text) + [49407]
        if len(seq) > ctx:
            seq = seq[:ctx]
            seq[-1] = 49407
        out[row, : len(seq)] = seq
        lengths[row] = len(seq)
    return out, lengths


def ref_decode(ids) -> str:
    chars = "".join(REF_VOCAB[i] for i in ids)
    return bytes(REF_UNALPHABET[c] for c in chars).decode("utf-8", errors="replace").replace("</w>", " ")


# ---------------------------------------------------------------------------------------------------
# Test corpus
# ---------------------------------------------------------------------------------------------------

UNICODE_BITS = [
    "café", "naïve", "Ærø", "Ελληνικά", "ΣΟΦΟΣ σοφός", "Кириллица", "дерматит", "中文字符", "日本語のテキスト",
    "한국어", "😀", "👍🏽", "🧴🩺", "e\u0301", "İstanbul", "Straße", "ﬁbrosis", "ｆｕｌｌ", "“quoted”", "‘single’",
    "it’s", "cafÃ©", "â€™", "Ã", "\u00a0", "×", "µm", "°", "–", "—", "…", "½", "x²", "zero\u200bwidth",
    "ſtart", "ΚΑΛΗΜΕΡΑ", "ǅ", "\U0001d400", "\ufeff", "Ö", "ø", "Å", "ñ", "ç",
]
# ftfy unescapes entities itself (repeatedly) unless the line holds a '<'; html.unescape also takes
# entities without ';'. The '<...>' and ';'-less forms make the double html.unescape observable.
ENTITIES = [
    "&amp;", "&lt;b&gt;", "&#39;", "&amp;amp;", "&quot;", "&eacute;", "&nbsp;", "&#x27;", "AT&T", "&lt;", "&amp;lt;",
    "<b>&amp;amp;</b>", "<i>&lt;</i>", "&amp x", "&ltx", "&#39", "&amp;#39;",
]
NUMBERS = ["3.5 mm", "10x12cm", "37°C", "1,000", "2-3", "0.5%", "1/2", "100", "12:30", "4x", "1e-3", "2024", "0.25"]
PUNCT = [
    "!!!", "...", "?!", "--", "(", ")", "[x]", "'s", "'re", "'ll", "'d", "'m", "'ve", "'t", "''", '"', ";:", "///",
    "#", "@", "_", "~", "<start_of_text>", "<end_of_text>", "<START_OF_TEXT>", "don't", "I'M", "we'LL", "'S",
]
WHITESPACE = [" ", "  ", "\t", "\n", "\n\n", " \t ", "\r\n", "\u3000", "\x0c", "\x0b", "\x1f"]
CONTROL = ["\x00", "\x1b[31m", "\x7f", "\x85", "\x9c"]

FIXED = [
    "", " ", "\n\t  \n", "café", "naïve", "Ærø", "3.5 mm", "10x12cm", "37°C", "1,000", "&amp;", "&lt;b&gt;",
    "&#39;", "&amp;amp;", "a photo of a cat", "A PHOTO   OF\tA\nCAT", "<start_of_text>", "<end_of_text>",
    "hello <end_of_text> world", "!!!!!!!!!!!!!!!!!!!!!!!!!!!", "........", "'s's's's", "x" * 300,
    "supercalifragilisticexpialidocious", "pneumonoultramicroscopicsilicovolcanoconiosis",
    "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa", "1234567890" * 10, "\x00\x01\x02", "\x1b[31mred\x1b[0m",
    "cafÃ© au lait", "â€œquoteâ€\x9d", "﻿bom", "ΣΟΦΟΣ", "ﬁne ﬂake", "<p>5 &amp;amp; 6</p>", "a &amp b",
    "x<y &lt;z&gt;", "<b>caf&eacute;</b>", "&amp;lt;b&amp;gt;",
] + [" ".join(["erythematous plaque"] * k) for k in (30, 37, 38, 39, 40, 80)]


def golden_fields() -> list[str]:
    with open(GOLDEN_CSV, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 10
    return [v for r in rows for v in r.values() if v is not None]


def random_texts(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    pool = sorted({w for f in golden_fields() for w in f.split()})
    groups = [(pool, 60), (UNICODE_BITS, 10), (ENTITIES, 6), (NUMBERS, 8), (PUNCT, 8), (CONTROL, 1)]
    bags, weights = zip(*groups)
    out = []
    for _ in range(n):
        nwords = rng.choice([0, 1, 2, 3, 5, 8, 13, 21, 34, 55, 90, 140])
        parts = []
        for _ in range(nwords):
            word = rng.choice(rng.choices(bags, weights)[0])
            r = rng.random()
            if r < 0.1:
                word = word.upper()
            elif r < 0.2:
                word = word.title()
            elif r < 0.25:
                word = "".join(c.upper() if rng.random() < 0.5 else c for c in word)
            parts.append(word)
            parts.append(" " if rng.random() < 0.85 else rng.choice(WHITESPACE))
        text = "".join(parts)
        if rng.random() < 0.2:
            text = rng.choice(WHITESPACE) + text + rng.choice(WHITESPACE)
        out.append(text)
    return out


CORPUS = FIXED + golden_fields() + random_texts(1200, seed=1234)


@pytest.fixture(scope="module")
def tok() -> T.Tokenizer:
    return T.Tokenizer()


@pytest.fixture(scope="module")
def reference():
    """Reference encodings of the whole corpus, untruncated and as (N, 77) rows."""
    return [ref_encode(t) for t in CORPUS], ref_tokenize(CORPUS)


# ---------------------------------------------------------------------------------------------------
# Facts that come from outside both implementations
# ---------------------------------------------------------------------------------------------------


def test_merges_file_is_the_open_clip_one():
    data = open(T.DEFAULT_BPE_PATH, "rb").read()
    # RECORD line of open_clip_torch-3.3.0-py3-none-any.whl for open_clip/bpe_simple_vocab_16e6.txt.gz
    record = "kkaRrCiOVECSNhFWUq1KolD0ggPeUKnkcipuzUjWgEo"
    assert base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode() == record
    assert len(data) == 1356917
    assert hashlib.sha256(data).hexdigest() == T.BPE_SHA256


def test_special_ids_and_vocab_size(tok):
    assert (T.SOT_ID, T.EOT_ID, T.VOCAB_SIZE) == (49406, 49407, 49408)
    assert (tok.sot_token_id, tok.eot_token_id, tok.vocab_size, tok.pad_token_id) == (49406, 49407, 49408, 0)
    assert len(tok.encoder) == len(tok.decoder) == 49408
    assert tok.encoder["<start_of_text>"] == 49406 and tok.encoder["<end_of_text>"] == 49407
    assert len(tok.bpe_ranks) == 48894


def test_well_known_clip_ids():
    # Published CLIP ids (e.g. Hugging Face / Bumblebee CLIP tokenizer tests, clip.tokenize examples).
    ids = T.tokenize(["a photo of a cat", "a photo of a dog", "a painting of a cat", "bozuman"])
    assert ids[0, :8].tolist() == [49406, 320, 1125, 539, 320, 2368, 49407, 0]
    assert ids[1, :8].tolist() == [49406, 320, 1125, 539, 320, 1929, 49407, 0]
    assert ids[2, :8].tolist() == [49406, 320, 3086, 539, 320, 2368, 49407, 0]
    assert ids[3, :6].tolist() == [49406, 647, 4091, 786, 49407, 0]
    assert not ids[:, 8:].any()


def test_agrees_with_hf_clip_tokenizer(tmp_path):
    """transformers.CLIPTokenizer built from vocab.json + merges.txt written from the gz here.

    HF differs from open_clip in ways unrelated to BPE: it pads with EOT (49407), names the specials
    '<|startoftext|>'/'<|endoftext|>', and its normalizer is NFC + '\\s+' -> ' ' + lower-case with no ftfy
    and no HTML unescaping. So HF is fed the text after our reference cleaning, only strings that its
    normalizer leaves unchanged are compared, and only the unpadded ids are compared."""
    from transformers import CLIPTokenizer

    vocab = dict(REF_IDS)
    del vocab["<start_of_text>"], vocab["<end_of_text>"]
    vocab["<|startoftext|>"], vocab["<|endoftext|>"] = 49406, 49407
    (tmp_path / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    (tmp_path / "merges.txt").write_text("#version: 0.2\n" + "\n".join(REF_MERGE_LINES) + "\n", encoding="utf-8")
    hf = CLIPTokenizer.from_pretrained(str(tmp_path))
    assert len(hf) == 49408

    compared = 0
    for text in CORPUS[::3]:
        cleaned = ref_clean(text)
        if "<start_of_text>" in cleaned or "<end_of_text>" in cleaned:
            continue
        if hf.backend_tokenizer.normalizer.normalize_str(cleaned) != cleaned:
            continue
        ours = [49406] + T.get_tokenizer().encode(text) + [49407]
        assert hf(cleaned)["input_ids"] == ours, text
        compared += 1
    assert compared >= 300


# ---------------------------------------------------------------------------------------------------
# Package vs reference
# ---------------------------------------------------------------------------------------------------


def test_reference_vocab_matches_package(tok):
    assert tok.decoder == REF_VOCAB
    assert T.bytes_to_unicode() == dict(enumerate(REF_ALPHABET))


def test_corpus_is_large_and_varied():
    assert len(CORPUS) >= 1000
    assert any(not t.isascii() for t in CORPUS) and any("&" in t for t in CORPUS)
    assert sum(len(ref_encode(t)) > CTX - 2 for t in CORPUS[::10]) >= 10  # plenty get truncated


def test_tokenize_matches_reference(tok, reference):
    _, (ref_ids, ref_len) = reference
    ids, lengths = tok.tokenize_with_lengths(CORPUS)
    assert ids.shape == (len(CORPUS), CTX) and ids.dtype == np.int32
    assert lengths.shape == (len(CORPUS),) and lengths.dtype == np.int32
    bad = [CORPUS[i] for i in np.nonzero((ids != ref_ids).any(axis=1))[0]]
    assert not bad, bad[:5]
    np.testing.assert_array_equal(lengths, ref_len)
    np.testing.assert_array_equal(lengths, (ids != 0).sum(axis=1))
    # module-level functions and __call__ give the same
    np.testing.assert_array_equal(T.tokenize(CORPUS), ids)
    np.testing.assert_array_equal(tok(CORPUS), ids)


def test_encode_matches_reference(tok, reference):
    ref_enc, _ = reference
    for text, expected in zip(CORPUS, ref_enc):
        assert tok.encode(text) == expected, text


def test_truncation(tok, reference):
    ref_enc, _ = reference
    long_idx = [i for i, e in enumerate(ref_enc) if len(e) + 2 > CTX]
    assert len(long_idx) >= 50
    ids, lengths = tok.tokenize_with_lengths([CORPUS[i] for i in long_idx])
    assert ids.shape == (len(long_idx), CTX)
    assert (ids[:, -1] == 49407).all() and (ids[:, 0] == 49406).all() and (lengths == CTX).all()
    for row, i in zip(ids, long_idx):
        assert row[1:-1].tolist() == ref_enc[i][: CTX - 2]
    # exactly 75 BPE tokens fit without truncation: EOT is the natural last token, no pad
    text = " ".join(["plaque"] * 75)
    assert len(ref_encode(text)) == 75
    row = tok(text)[0]
    assert row[-1] == 49407 and row[1:-1].tolist() == ref_encode(text)


def test_empty_and_blank(tok):
    ids, lengths = tok.tokenize_with_lengths(["", "   ", "\n\t"])
    expected = np.zeros((3, CTX), np.int32)
    expected[:, :2] = [49406, 49407]
    np.testing.assert_array_equal(ids, expected)
    assert lengths.tolist() == [2, 2, 2]
    assert tok.encode("") == []
    assert tok([]).shape == (0, CTX)


def test_str_input_and_context_lengths(tok, reference):
    assert tok("a photo of a cat").shape == (1, CTX)
    sample = CORPUS[::7]
    for ctx in (1, 2, 3, 8, 77, 128):
        ids, lengths = tok.tokenize_with_lengths(sample, context_length=ctx)
        ref_ids, ref_len = ref_tokenize(sample, ctx)
        np.testing.assert_array_equal(ids, ref_ids, err_msg=f"context_length={ctx}")
        np.testing.assert_array_equal(lengths, ref_len)
    with pytest.raises(ValueError):
        tok("x", context_length=0)


def test_special_token_literals(tok):
    assert tok.encode("<start_of_text>") == [49406]
    assert tok.encode("a <END_OF_TEXT> b") == [320, 49407, 321]  # lower-cased before matching
    assert tok.encode("<ſtart_of_text>") == ref_encode("<ſtart_of_text>")  # case-folds in regex, not special


def test_decode_matches_reference(tok, reference):
    ref_enc, _ = reference
    for enc in ref_enc[:300]:
        assert tok.decode(enc) == ref_decode(enc)
    assert tok.decode(np.array([320, 1125, 539, 320, 2368])) == "a photo of a cat "
    assert T.decode([49406, 320, 49407]) == "<start_of_text>a <end_of_text>"


def test_small_caches_and_no_text_cache_give_same_ids(reference):
    _, (ref_ids, _) = reference
    for tk in (T.Tokenizer(text_cache_size=0, word_cache_size=3), T.Tokenizer(text_cache_size=5, word_cache_size=1)):
        np.testing.assert_array_equal(tk(CORPUS[:400]), ref_ids[:400])
        np.testing.assert_array_equal(tk(CORPUS[:400]), ref_ids[:400])  # second pass, caches in use
        tk.clear_caches()


def test_pickles_without_caches(tok):
    tok(CORPUS[:50])
    clone = pickle.loads(pickle.dumps(tok))
    assert clone.context_length == tok.context_length and len(clone._chunk_ids) == 0
    np.testing.assert_array_equal(clone(CORPUS[:50]), tok(CORPUS[:50]))


# ---------------------------------------------------------------------------------------------------
# The ftfy fast paths (clean.py) are exact
# ---------------------------------------------------------------------------------------------------


def _full_basic_clean(text: str) -> str:
    return html.unescape(html.unescape(ftfy.fix_text(text)))


def test_ftfy_noop_has_no_false_positives():
    extra = ["Ã©", "Ã ", "cafÃ©", "â€™", "Â£5", "√±", "вЂ", "Ã\xa0", "œ1", "É°", "× ²", "ГўВЂВ A", "Â ", "a Â "]
    texts = CORPUS + extra + [ch for t in UNICODE_BITS for ch in t]
    fast = 0
    for text in texts:
        if C.ftfy_is_noop(text):
            assert _full_basic_clean(text) == text, repr(text)
            fast += 1
        assert C.clean_lower(text) == ref_clean(text), repr(text)
    assert fast > 300
    # the fast paths actually fire for ordinary captions, including non-ASCII ones
    assert C.is_ascii_noop("Erythematous plaques, 3.5 mm (left arm).\tNo scale.")
    assert C.ftfy_is_noop("Café-au-lait macules 37°C, 10 µm × 2 — naïve Ærø ΣΟΦΟΣ")
    assert not C.ftfy_is_noop("cafÃ©") and not C.ftfy_is_noop("it’s") and not C.ftfy_is_noop("a &amp; b")


def _needs_non_ascii(items, state, flags) -> bool:
    """True if every string matched by the parsed sequence ``items`` contains a non-ASCII character."""
    parser, constants = re._parser, re._constants
    for op, arg in items:
        if op in (constants.LITERAL, constants.NOT_LITERAL, constants.IN, constants.ANY, constants.CATEGORY):
            one = re._compiler.compile(parser.SubPattern(state, [(op, arg)]), flags)
            if not any(one.fullmatch(chr(c)) for c in range(128)):
                return True
        elif op in (constants.MAX_REPEAT, constants.MIN_REPEAT):
            if arg[0] >= 1 and _needs_non_ascii(arg[2], state, flags):
                return True
        elif op is constants.SUBPATTERN:
            if _needs_non_ascii(arg[-1], state, flags):
                return True
        elif op is constants.BRANCH:
            if all(_needs_non_ascii(alt, state, flags) for alt in arg[1]):
                return True
        elif op is constants.AT:
            assert arg is constants.AT_BEGINNING, arg  # '^' only: '\b', '$' would break windowing
        else:
            raise AssertionError(f"unaudited regex construct {op}")
    return False


def test_badness_regex_audit():
    """The properties clean.py relies on to run ftfy's is_bad only near non-ASCII characters."""
    from ftfy import badness

    assert ftfy.__version__ == "6.3.1" and C._FAST_NON_ASCII is not None
    pat = badness.BADNESS_RE
    assert hashlib.sha256(pat.pattern.encode()).hexdigest() == C._BADNESS_SHA256
    parsed = re._parser.parse(pat.pattern, pat.flags)
    assert parsed.getwidth()[1] <= C._BAD_WIDTH
    (op, (_, alternatives)), = list(parsed)  # one top-level alternation
    assert op is re._constants.BRANCH and len(alternatives) > 20
    for alt in alternatives:
        assert _needs_non_ascii(alt, parsed.state, pat.flags), alt


def test_windowed_is_bad_equals_is_bad():
    from ftfy import badness

    rng = random.Random(7)
    mojibake = list("ÃÂÎÐŒœŠš¢£Ÿž\xa0\xad®©°·»–—´×²³ØÙàµ√±∂≈‚ÄâóвЂВГРСГўβ€ΒΓΞΟā‘’“”•™¥øé€")
    mojibake += ["ГўВЂВ", "вЂ", "‚Ä", "Ã", "Â", "ØÙ", "Ø", "Ã\xa0"]  # starts of the longer patterns
    ascii_bits = list("abcXYZ .,?!-1\t") + [" ", " ", "a ", "z", "A", ". "]
    bad_count = 0
    for _ in range(6000):
        parts = [rng.choice(mojibake if rng.random() < 0.3 else ascii_bits) for _ in range(rng.randint(1, 20))]
        text = "".join(parts)
        expected = badness.is_bad(text)
        assert C._is_bad_windowed(text, badness.BADNESS_RE) == expected, repr(text)
        bad_count += expected
    assert 200 < bad_count < 3800  # both outcomes well represented
