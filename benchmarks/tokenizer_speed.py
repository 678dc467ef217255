"""Throughput of make_jax.tokenizer on dermatology-style captions (one Python process, one core).

Usage:
    python benchmarks/tokenizer_speed.py [--n 50000] [--batch 1024] [--seed 0]

Captions are built from the real text fields of tests/golden/MAKE_training_example.csv (caption,
truncated_caption, ontology_caption, visual_concept_caption, subcaption_1..8): each synthetic caption
joins 2-4 random fields and perturbs them (random numbers with units, case changes, a share of
mutated/invented words, a few non-ASCII characters) so that every caption is unique (raw-text cache
misses) and the vocabulary keeps growing (word-cache misses), to ~20-40 words per caption.

Scenarios (each printed with what is cached; only the first pass of a fresh tokenizer is "cold"):
  cold          fresh Tokenizer, all caches empty, one pass: every text is new, words are BPE'd on first
                sight and then hit the word cache (the realistic first-epoch figure)
  no-cache      word caches of size 1 and no text cache: every word is BPE'd every time (worst case)
  warm-words    second pass over the same captions with the text cache disabled: word caches hot,
                every text still cleaned and split (steady state on unseen captions, known vocabulary)
  warm-all      second pass with a text cache larger than the corpus: trivially hot, upper bound only
  non-ascii     like cold, but every caption carries a non-ASCII character (degree sign, micro sign,
                accented word, dash, or a curly apostrophe, which makes ftfy run in full), so it leaves
                the ASCII fast path
"""

from __future__ import annotations

import argparse
import csv
import os
import platform
import random
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from make_jax.tokenizer import Tokenizer  # noqa: E402

CSV = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "golden", "MAKE_training_example.csv")
FIELDS = ["caption", "truncated_caption", "ontology_caption", "visual_concept_caption"] + [
    f"subcaption_{i}" for i in range(1, 9)
]
UNITS = ["mm", "cm", "x", "%", "years", "weeks", "months"]
NON_ASCII = ["°C", "µm", "×", "café-au-lait", "naïve", "–", "’s"]


def load_fields() -> list[str]:
    with open(CSV, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    return [r[c] for r in rows for c in FIELDS if r.get(c)]


def mutate_word(w: str, rng: random.Random, pool: list[str]) -> str:
    """An invented word: splice the head of w with the tail of another pool word."""
    o = rng.choice(pool)
    return w[: rng.randint(1, max(1, len(w)))] + o[rng.randint(0, len(o) - 1) :]


def make_captions(n: int, seed: int, non_ascii_share: float) -> list[str]:
    rng = random.Random(seed)
    fields = load_fields()
    pool = sorted({w.strip(".,;:()") for f in fields for w in f.split() if w.strip(".,;:()")})
    out, seen = [], set()
    while len(out) < n:
        words = " ".join(rng.sample(fields, rng.randint(2, 4))).split()
        new = []
        for w in words:
            r = rng.random()
            if r < 0.05:
                new.append(mutate_word(w, rng, pool))
            elif r < 0.10:
                new.append(f"{rng.randint(1, 999) / rng.choice((1, 10))} {rng.choice(UNITS)}")
            elif r < 0.13:
                new.append(w.upper() if rng.random() < 0.5 else w.capitalize())
            else:
                new.append(w)
            if rng.random() < 0.02:
                new.append(rng.choice(pool))
        if rng.random() < non_ascii_share:
            new.insert(rng.randint(0, len(new)), rng.choice(NON_ASCII))
        text = " ".join(new[:40])
        if text not in seen:
            seen.add(text)
            out.append(text)
    return out


def run_pass(tok: Tokenizer, captions: list[str], batch: int) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process) to tokenize ``captions`` in batches. On a shared
    machine the CPU figure is the closer one to "one dedicated core"."""
    w0, c0 = time.perf_counter(), time.process_time()
    for i in range(0, len(captions), batch):
        tok(captions[i : i + batch])
    return time.perf_counter() - w0, time.process_time() - c0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=50_000)
    ap.add_argument("--batch", type=int, default=1024)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    caps = make_captions(args.n, args.seed, non_ascii_share=0.02)
    caps_na = make_captions(args.n, args.seed + 1, non_ascii_share=1.0)
    n_words = [len(c.split()) for c in caps]
    vocab = {w.lower() for c in caps for w in c.split()}
    print(f"python {platform.python_version()} on {platform.machine()}, {os.cpu_count()} CPUs visible")
    print(
        f"{len(caps)} unique captions, mean {sum(n_words) / len(n_words):.1f} words "
        f"(min {min(n_words)}, max {max(n_words)}), {len(vocab)} distinct lower-cased words, batch {args.batch}"
    )

    load0 = os.getloadavg()
    results = []

    t0 = time.perf_counter()
    tok = Tokenizer(text_cache_size=0)
    build_s = time.perf_counter() - t0
    dt = run_pass(tok, caps, args.batch)
    results.append(("cold", "fresh tokenizer, first pass (word caches fill as it goes)", dt))
    dt = run_pass(tok, caps, args.batch)
    results.append(("warm-words", "second pass, word caches hot, no text cache", dt))

    tok_nc = Tokenizer(text_cache_size=0, word_cache_size=1)
    sub = caps[: max(args.batch, len(caps) // 10)]  # slow path: a tenth of the corpus is enough
    dt = tuple(t * len(caps) / len(sub) for t in run_pass(tok_nc, sub, args.batch))
    results.append(("no-cache", "every word BPE'd every time (extrapolated from 1/10)", dt))

    tok_all = Tokenizer(text_cache_size=2 * len(caps))
    run_pass(tok_all, caps, args.batch)
    dt = run_pass(tok_all, caps, args.batch)
    results.append(("warm-all", "second pass, text cache hit for every caption (upper bound)", dt))

    tok_na = Tokenizer(text_cache_size=0)
    dt = run_pass(tok_na, caps_na, args.batch)
    results.append(("non-ascii", "as cold, every caption has a non-ASCII character", dt))

    print(f"tokenizer construction: {build_s:.2f} s; load average before/after: {load0} / {os.getloadavg()}")
    print(f"{'scenario':11s} {'captions/s':>12s} {'captions/s':>12s}")
    print(f"{'':11s} {'(CPU time)':>12s} {'(wall)':>12s}")
    for name, what, (wall, cpu) in results:
        print(f"{name:11s} {len(caps) / cpu:12,.0f} {len(caps) / wall:12,.0f}   {what}")


if __name__ == "__main__":
    main()
