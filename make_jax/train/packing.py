"""Exact text savings for the train step, on the host (numpy): packing, context buckets and de-duplication
(paper mode). The packed batch is read on device by `train.forward` (the one forward of both steps).

The dense batch encodes B·N text slots at 77 tokens. Most of that work is wasted: invalid slots are masked out
of the loss, texts are much shorter than 77 tokens, and the disease and concept texts repeat across the images of
a batch. Four host-side transformations remove the waste without changing the loss or its gradients (to float32
rounding; tests/test_packing.py checks this against the dense 77-token step):

* **Packing.** Only valid rows are kept, in a fixed row budget M (a static shape chosen from the dataset's
  statistics), with explicit ``row_owner`` / ``row_slot`` / ``row_valid``; padding rows are invalid. Paper mode
  only: the paper loss accepts rows in any order (docs/objectives.md §1); official mode needs the dense layout.
* **Context buckets.** The texts are cut to the shortest bucket (16, 24, 32, 48, 64, 77) that holds the longest
  text of the batch. Exact for the CLIP text tower: attention is causal and the embedding is read at the EOT, so
  positions after a text's EOT never reach its embedding. Packing asks the tower
  (``trailing_padding_invariant``) and refuses buckets for one that does not declare it (the BERT tower).
  Shapes are chosen on the host from a fixed list.
* **Length groups** (buckets per group). At batch 2048 the longest raw caption nearly always needs 64-77 tokens,
  so one bucket for the whole batch saves little. With ``groups`` (fractions of the encoded budget), the texts
  to encode are sorted by length and split into consecutive groups of static sizes; each group runs at its own
  bucket, so the many short aspect texts and subtexts run at 16-32 tokens and only the longest group at 77.
  Still exact, for the same reason.
* **De-duplication.** Identical texts are encoded once: the encoded texts are the unique texts (a static budget U)
  and ``row_text`` maps each loss row to its encoding (``jnp.take`` on device). The gather's transpose is a
  scatter-add, so the single encoding receives exactly the sum of the gradients its rows would have received.

Budget tiers and the overflow rule. ``PackConfig.row_budgets`` (M_1 < M_2 < ...) and, with de-duplication,
``unique_budgets`` (U_1 ≤ U_2 ≤ ...) form tiers; a batch uses the first tier that holds all its valid rows and
all its unique texts (one compiled variant per tier and choice of buckets). A batch that fits no tier is cut to the last
tier by dropping subtext rows (slots ≥ 3) only — never raw, disease or concept rows — one at a time from the
image that currently has the most subtexts (its last subtext first; ties: the highest image index first), until
both budgets hold. The number of dropped rows is reported in the stats (``dropped``) so it can be logged. Making
the last tier B·n (all slots) never drops. A batch whose knowledge rows (slots 0-2) alone exceed the last tier
raises ValueError.

Layout of a packed batch (every array has a leading batch-like axis, so it shards on the data axis like the
dense batch when the budgets are multiples of the device count):

    images     (B, H, W, 3)   as in the dense batch
    text_ids_g (E_g, L_g) int32  for g = 0..G-1: the texts to encode, sorted by length and split into the G
                                 groups (Σ E_g = E = U with de-duplication, else M); L_g = group g's bucket
    row_text   (M,) int32     index of each loss row's text in the concatenation of the groups
    row_owner  (M,) int32     image of each loss row
    row_slot   (M,) int32     slot (0 raw, 1 disease, 2 concept, 3.. subtexts)
    row_valid  (M,) bool      False on padding rows

Multi-process training: each process must use the same tier and buckets for the global arrays to have one
shape; pack with a single tier and ``buckets=None`` there (or agree on the maximum across processes first), and
offset ``row_owner`` by the process's first image. This module packs one process's batch.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Sequence

import numpy as np

from make_jax.data.schema import FIRST_SUBTEXT
from make_jax.losses import LossConfig
from make_jax.models.config import TextConfig
from make_jax.models.towers import text_tower_class

DEFAULT_BUCKETS = (16, 24, 32, 48, 64, 77)
ROW_KEYS = ("row_text", "row_owner", "row_slot", "row_valid")


@dataclasses.dataclass(frozen=True)
class PackConfig:
    """Static shapes of packed batches.

    row_budgets:    loss-row budgets M_t, strictly increasing.
    unique_budgets: encoded-text budgets U_t (one per tier, U_t ≤ M_t, non-decreasing) to de-duplicate; None:
                    no de-duplication (every kept row is encoded, E = M).
    buckets:        context lengths to cut texts to; the ids' own length is always added as the last bucket.
                    None: no buckets (texts keep the dense context length).
    groups:         fractions of the encoded budget (summing to 1) of the length-sorted groups, each at its own
                    bucket; (1.0,) = one group. Group sizes are rounded to ``multiple_of``, the last takes the
                    rest.
    multiple_of:    group sizes are multiples of this (the device count × GradCache micro-batches); the budgets
                    must be multiples of it too.
    """

    row_budgets: tuple[int, ...]
    unique_budgets: tuple[int, ...] | None = None
    buckets: tuple[int, ...] | None = DEFAULT_BUCKETS
    groups: tuple[float, ...] = (1.0,)
    multiple_of: int = 1

    def __post_init__(self):
        rb = tuple(int(x) for x in self.row_budgets)
        object.__setattr__(self, "row_budgets", rb)
        if not rb or any(x < 1 for x in rb) or any(a >= b for a, b in zip(rb, rb[1:])):
            raise ValueError(f"row_budgets must be positive and strictly increasing, got {rb}")
        if self.unique_budgets is not None:
            ub = tuple(int(x) for x in self.unique_budgets)
            object.__setattr__(self, "unique_budgets", ub)
            if len(ub) != len(rb):
                raise ValueError("unique_budgets needs one entry per row budget")
            if any(u < 1 or u > m for u, m in zip(ub, rb)) or any(a > b for a, b in zip(ub, ub[1:])):
                raise ValueError(f"unique_budgets must be in [1, M_t] and non-decreasing, got {ub} for {rb}")
        if self.buckets is not None:
            bk = tuple(sorted({int(x) for x in self.buckets}))
            if not bk or bk[0] < 2:
                raise ValueError(f"buckets must hold lengths >= 2, got {self.buckets}")
            object.__setattr__(self, "buckets", bk)
        gr = tuple(float(x) for x in self.groups)
        object.__setattr__(self, "groups", gr)
        if not gr or any(x <= 0 for x in gr) or abs(sum(gr) - 1.0) > 1e-6:
            raise ValueError(f"groups must be positive fractions summing to 1, got {self.groups}")
        if self.multiple_of < 1:
            raise ValueError("multiple_of must be >= 1")
        for t in range(len(rb)):
            for x in (rb[t], self.encoded_budget(t)):
                if x % self.multiple_of:
                    raise ValueError(f"budget {x} is not a multiple of multiple_of={self.multiple_of}")
            self.group_sizes(t)

    @property
    def dedup(self) -> bool:
        return self.unique_budgets is not None

    def encoded_budget(self, tier: int) -> int:
        return self.unique_budgets[tier] if self.dedup else self.row_budgets[tier]

    def group_sizes(self, tier: int) -> tuple[int, ...]:
        """Static sizes of the length-sorted groups of encoded texts in ``tier``."""
        e, m = self.encoded_budget(tier), self.multiple_of
        sizes = [int(round(f * e / m)) * m for f in self.groups[:-1]]
        sizes.append(e - sum(sizes))
        if any(x < m for x in sizes):
            raise ValueError(f"groups {self.groups} leave an empty group in an encoded budget of {e}")
        return tuple(sizes)

    def num_variants(self, context_length: int = 77) -> int:
        """Upper bound on compiled step variants: tiers × non-decreasing bucket choices over the groups."""
        nb = 1 if self.buckets is None else len([b for b in self.buckets if b < context_length]) + 1
        g = len(self.groups)
        return len(self.row_budgets) * math.comb(nb + g - 1, g)


# ---- host side (numpy) ------------------------------------------------------------------------------------

def text_lengths(ids: np.ndarray, text: TextConfig = TextConfig()) -> np.ndarray:
    """Tokens of each row, as the text tower reads them (`token_lengths`; for CLIP, up to and including the EOT,
    and an all-zero row gives 1)."""
    return np.asarray(text_tower_class(text).token_lengths(np.asarray(ids), text.pad_id), np.int32)


def canonical_ids(ids: np.ndarray, text: TextConfig = TextConfig()) -> np.ndarray:
    """ids with every position past the text's length set to the pad id: one representation per text for
    de-duplication (and, for a trailing-padding invariant tower, the same embedding)."""
    length = text_lengths(ids, text)
    keep = np.arange(ids.shape[-1], dtype=np.int32) < length[..., None]
    return np.where(keep, ids, text.pad_id).astype(np.int32, copy=False)


def check_buckets(config: PackConfig, text: TextConfig) -> None:
    """Context buckets cut texts after their last token: exact only for a tower whose output ignores trailing
    padding (the causal CLIP tower); asked of the tower, not assumed."""
    if config.buckets is not None and not text_tower_class(text).trailing_padding_invariant:
        raise ValueError(f"PackConfig.buckets {config.buckets}: the {text.tower!r} text tower does not declare its "
                         "output independent of trailing padding; pack with buckets=None")


def choose_bucket(max_length: int, buckets: Sequence[int] | None, context_length: int) -> int:
    """The shortest bucket ≥ max_length; the ids' own context_length is the last bucket."""
    if buckets is None:
        return context_length
    for b in buckets:
        if max_length <= b < context_length:
            return int(b)
    return context_length


_HASH_MULT = np.random.default_rng(0x7E47).integers(1, 2**63, size=77 * 4, dtype=np.uint64) | np.uint64(1)


def unique_rows(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(first index of each unique row in first-occurrence order, inverse (n,) into those uniques). Exact: rows are
    grouped by a 64-bit polynomial hash, then every row is compared with its group's representative; on any
    collision the grouping falls back to comparing whole rows."""
    n, length = rows.shape
    if n == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    mult = _HASH_MULT[:length] if length <= _HASH_MULT.size else \
        np.random.default_rng(length).integers(1, 2**63, size=length, dtype=np.uint64) | np.uint64(1)
    with np.errstate(over="ignore"):
        h = (rows.astype(np.uint64) * mult).sum(axis=1, dtype=np.uint64)
    _, first, inverse = np.unique(h, return_index=True, return_inverse=True)
    if not np.array_equal(rows, rows[first[inverse]]):  # a hash collision: exact fallback
        view = np.ascontiguousarray(rows).view(np.dtype((np.void, rows.dtype.itemsize * length))).ravel()
        _, first, inverse = np.unique(view, return_index=True, return_inverse=True)
    order = np.argsort(first, kind="stable")  # first-occurrence order
    rank = np.empty_like(order)
    rank[order] = np.arange(order.size)
    return first[order], rank[inverse.ravel()]


def subtext_drop_order(owner: np.ndarray, slot: np.ndarray) -> np.ndarray:
    """Positions (into the given rows) of the subtext rows in the order the overflow rule drops them: always the
    last remaining subtext of the image that has the most remaining subtexts, ties to the highest image index.
    Equivalently: sort subtext rows by (their rank among their image's subtexts, image index), both descending."""
    sub = np.flatnonzero(slot >= FIRST_SUBTEXT)
    if sub.size == 0:
        return sub
    o = owner[sub]
    # rank k (1-based) of each subtext within its image, in row order (rows are sample-major, slots increasing)
    order = np.lexsort((sub, o))
    so = o[order]
    start = np.r_[0, np.flatnonzero(so[1:] != so[:-1]) + 1]
    k_sorted = np.arange(so.size) - np.repeat(start, np.diff(np.r_[start, so.size])) + 1
    k = np.empty_like(k_sorted)
    k[order] = k_sorted
    return sub[np.lexsort((-o, -k))]


def _drops_needed(n_rows: int, m_budget: int, drop_order: np.ndarray, inverse: np.ndarray | None,
                  n_unique: int, u_budget: int | None) -> int:
    """Smallest d such that dropping drop_order[:d] leaves ≤ m_budget rows and ≤ u_budget unique texts."""
    d = max(0, n_rows - m_budget)
    if inverse is not None and n_unique > u_budget:
        pos = np.full(n_rows, -1, np.int64)
        pos[drop_order] = np.arange(drop_order.size)
        # a unique text disappears after d drops iff every occurrence is droppable and has drop position < d
        keeper = np.zeros(n_unique, bool)
        keeper[inverse[pos < 0]] = True
        last = np.full(n_unique, -1, np.int64)
        np.maximum.at(last, inverse, pos)
        gone_at = np.sort(last[~keeper]) + 1  # the unique is gone once d ≥ gone_at
        need = n_unique - u_budget
        if need > gone_at.size:
            raise ValueError(f"{n_unique - gone_at.size} unique non-subtext texts exceed the unique budget {u_budget}")
        d = max(d, int(gone_at[need - 1]))
    if d > drop_order.size:
        raise ValueError(f"{n_rows - drop_order.size} raw/disease/concept rows exceed the row budget {m_budget}")
    return d


def pack_batch(batch: dict, config: PackConfig, loss_config: LossConfig = LossConfig(),
               text: TextConfig = TextConfig()) -> tuple[dict, dict]:
    """Dense batch (``images``, ``text_ids`` (B, N, L), ``text_valid`` (B, N)) → (packed batch, stats).

    ``text`` is the model's text config: its tower says how long each text is and whether buckets are exact.

    The packed batch has the layout of the module docstring (other keys of ``batch`` pass through unchanged).
    stats (Python ints; buckets a tuple): valid (valid rows the loss can use), kept, dropped (subtext rows cut by the overflow
    rule), unique (distinct kept texts), encoded (texts encoded, padding included), tier, row_budget, buckets
    (per group) and bucket (the largest), max_length (longest kept text, tokens incl. SOT/EOT), text_tokens
    (Σ group size × bucket: the token positions the text tower runs).
    """
    if loss_config.mode != "paper":
        raise ValueError("packed batches need paper mode; official mode uses the dense layout")
    check_buckets(config, text)
    ids = np.asarray(batch["text_ids"])
    valid = np.asarray(batch["text_valid"]).astype(bool)
    b, n, length = ids.shape
    n_used = loss_config.slots_used(n)
    rows = np.flatnonzero(valid[:, :n_used].ravel())  # sample-major row numbers of the valid rows
    owner = (rows // n_used).astype(np.int32)
    slot = (rows % n_used).astype(np.int32)
    flat = canonical_ids(ids[:, :n_used].reshape(b * n_used, length)[rows], text)
    n_valid = rows.size

    inverse = first = None
    n_unique = n_valid
    if config.dedup:
        first, inverse = unique_rows(flat)
        n_unique = first.size
    tier = next((t for t, m in enumerate(config.row_budgets)
                 if n_valid <= m and (not config.dedup or n_unique <= config.unique_budgets[t])), None)
    dropped = 0
    if tier is None:
        tier = len(config.row_budgets) - 1
        order = subtext_drop_order(owner, slot)
        u_budget = config.unique_budgets[tier] if config.dedup else None
        dropped = _drops_needed(n_valid, config.row_budgets[tier], order, inverse, n_unique, u_budget)
        keep = np.ones(n_valid, bool)
        keep[order[:dropped]] = False
        owner, slot, flat = owner[keep], slot[keep], flat[keep]
        if config.dedup:
            first, inverse = unique_rows(flat)
            n_unique = first.size
        else:
            n_unique = flat.shape[0]
    n_kept = flat.shape[0]
    if config.dedup:
        enc, row_enc = flat[first], inverse
    else:
        enc, row_enc = flat, np.arange(n_kept)
    m_budget, e_budget = config.row_budgets[tier], config.encoded_budget(tier)
    # sort the encoded texts by length (padding, length 0, first) and cut them into the static groups
    lens = np.zeros(e_budget, np.int32)
    lens[:enc.shape[0]] = text_lengths(enc, text)
    order = np.argsort(lens, kind="stable")  # encoded position p holds text order[p]
    position = np.empty(e_budget, np.int32)
    position[order] = np.arange(e_budget, dtype=np.int32)
    out = {k: v for k, v in batch.items() if k not in ("text_ids", "text_valid")}
    buckets = []
    start = 0
    for g, size in enumerate(config.group_sizes(tier)):
        idx = order[start:start + size]
        bucket = choose_bucket(max(int(lens[idx].max()), 1), config.buckets, length)
        ids_g = np.full((size, bucket), text.pad_id, np.int32)
        real = idx < enc.shape[0]
        ids_g[real] = enc[idx[real], :bucket]
        out[f"text_ids_{g}"] = ids_g
        buckets.append(bucket)
        start += size

    row_text = np.zeros(m_budget, np.int32)
    row_text[:n_kept] = position[row_enc]
    row_owner = np.zeros(m_budget, np.int32)
    row_owner[:n_kept] = owner
    row_slot = np.zeros(m_budget, np.int32)
    row_slot[:n_kept] = slot
    row_valid = np.zeros(m_budget, bool)
    row_valid[:n_kept] = True
    out.update(row_text=row_text, row_owner=row_owner, row_slot=row_slot, row_valid=row_valid)
    stats = {"valid": int(n_valid), "kept": int(n_kept), "dropped": int(dropped), "unique": int(n_unique),
             "encoded": int(e_budget), "tier": int(tier), "row_budget": int(m_budget),
             "buckets": tuple(buckets), "bucket": int(max(buckets)),
             "max_length": int(lens.max()) if n_kept else 1,
             "text_tokens": int(sum(x * b for x, b in zip(config.group_sizes(tier), buckets)))}
    return out, stats


def batch_text_counts(text_ids: np.ndarray, text_valid: np.ndarray, loss_config: LossConfig = LossConfig(),
                      text: TextConfig = TextConfig()) -> dict:
    """Per-batch statistics for choosing budgets: valid rows, unique valid texts, longest valid text."""
    ids = np.asarray(text_ids)
    b, n, length = ids.shape
    n_used = loss_config.slots_used(n)
    rows = np.flatnonzero(np.asarray(text_valid)[:, :n_used].ravel())
    flat = canonical_ids(ids[:, :n_used].reshape(b * n_used, length)[rows], text)
    return {"valid": int(rows.size), "unique": int(unique_rows(flat)[0].size),
            "max_length": int(text_lengths(flat, text).max()) if rows.size else 1}


def round_up(x: float, multiple: int) -> int:
    return int(-(-int(np.ceil(x)) // multiple) * multiple)


def suggest_pack_config(sample_batches: Sequence[dict] | Sequence[tuple], quantile: float = 0.99,
                        multiple_of: int = 8, dedup: bool = True, fallback: bool = True,
                        buckets: tuple[int, ...] | None = DEFAULT_BUCKETS, groups: tuple[float, ...] = (1.0,),
                        loss_config: LossConfig = LossConfig(), text: TextConfig = TextConfig()) -> PackConfig:
    """Budgets from a sample of dense batches (dicts with text_ids/text_valid, or (text_ids, text_valid) pairs):
    the ``quantile`` of the per-batch valid-row and unique-text counts, rounded up to ``multiple_of`` (use a
    multiple of the device count times the GradCache micro-batch count). ``fallback`` adds a second tier of
    B·n slots, so no batch ever drops a text (a second compiled variant, used by the rare batches past the
    quantile); without it such batches drop subtexts (see the module docstring). ``buckets`` is dropped (None)
    for a text tower that is not trailing-padding invariant (``text``: the model's text config)."""
    if not text_tower_class(text).trailing_padding_invariant:
        buckets = None
    counts = []
    shape = None
    for sb in sample_batches:
        ids, valid = (sb["text_ids"], sb["text_valid"]) if isinstance(sb, dict) else sb
        shape = np.shape(ids)
        counts.append(batch_text_counts(ids, valid, loss_config, text))
    if not counts:
        raise ValueError("need at least one sample batch")
    b, n = shape[0], loss_config.slots_used(shape[1])
    full = round_up(b * n, multiple_of)
    m = min(full, round_up(np.quantile([c["valid"] for c in counts], quantile), multiple_of))
    u = min(m, round_up(np.quantile([c["unique"] for c in counts], quantile), multiple_of))
    rows = (m, full) if fallback and m < full else (m,)
    uniq = ((u, full) if len(rows) == 2 else (u,)) if dedup else None
    return PackConfig(row_budgets=rows, unique_budgets=uniq, buckets=buckets, groups=groups,
                      multiple_of=multiple_of)


# ---- the layout's keys (read on device by `train.forward.text_rows`) -----------------------------------------

def is_packed(batch: dict) -> bool:
    return "row_text" in batch


def text_groups(batch: dict) -> int:
    """Number of text groups of a packed batch (keys text_ids_0 .. text_ids_{G-1})."""
    g = 0
    while f"text_ids_{g}" in batch:
        g += 1
    return g


__all__ = [
    "DEFAULT_BUCKETS",
    "ROW_KEYS",
    "PackConfig",
    "batch_text_counts",
    "canonical_ids",
    "check_buckets",
    "choose_bucket",
    "is_packed",
    "pack_batch",
    "subtext_drop_order",
    "suggest_pack_config",
    "text_groups",
    "text_lengths",
    "unique_rows",
]
