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

Multi-process training (``pack_process_batch``): each process packs its own rows, and the global arrays are the
concatenation of the processes' parts, so every process must pack at the same shape. Before each step the
processes gather each other's needs (``BatchPlan.request``: per tier, whether it fits and each group's bucket) and
all pack at ``agree_pack``'s answer: the first tier that holds every process's batch, and per group the longest
bucket any process needs (both exact: more padding). The budgets are per process (M rows of each process's
B/P images; every process uses process 0's PackConfig), and the overflow rule applies per process to its own
rows. ``row_owner`` and ``row_text`` are then offset to the global images and encodings (``globalize_rows``).
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


class BatchPlan:
    """One process's dense batch read into its valid loss rows — the costly part of packing (canonical ids,
    de-duplication, lengths), done once — from which it is packed at any tier and buckets (`pack`): the choice
    that the processes of a multi-process job agree on first (`request`, `agree_pack`)."""

    def __init__(self, batch: dict, config: PackConfig, loss_config: LossConfig = LossConfig(),
                 text: TextConfig = TextConfig()):
        if loss_config.mode != "paper":
            raise ValueError("packed batches need paper mode; official mode uses the dense layout")
        check_buckets(config, text)
        ids = np.asarray(batch["text_ids"])
        valid = np.asarray(batch["text_valid"]).astype(bool)
        b, n, length = ids.shape
        n_used = loss_config.slots_used(n)
        rows = np.flatnonzero(valid[:, :n_used].ravel())  # sample-major row numbers of the valid rows
        self.batch, self.config, self.text = batch, config, text
        self.num_images, self.context_length = b, length
        self.owner = (rows // n_used).astype(np.int32)
        self.slot = (rows % n_used).astype(np.int32)
        self.flat = canonical_ids(ids[:, :n_used].reshape(b * n_used, length)[rows], text)
        self.lengths = text_lengths(self.flat, text)
        self.n_valid = rows.size
        self.n_unique = self.n_valid
        self.first = self.inverse = None
        if config.dedup:
            self.first, self.inverse = unique_rows(self.flat)
            self.n_unique = self.first.size
        self.last_tier = len(config.row_budgets) - 1
        # the first tier that holds every valid row and unique text; None: the last tier, after drops
        self.own_tier = next((t for t in range(self.last_tier + 1) if self.fits(t)), None)
        self._kept = {}

    def fits(self, tier: int) -> bool:
        """Whether `tier` holds every valid row (and unique text) without dropping."""
        c = self.config
        return self.n_valid <= c.row_budgets[tier] and (not c.dedup or self.n_unique <= c.unique_budgets[tier])

    def kept(self, tier: int) -> dict:
        """The rows packed at `tier`: all valid rows where it fits, else (last tier only) what the overflow rule
        keeps. owner, slot (K,); enc (E', L) the texts to encode; row_enc (K,) each row's text; enc_lengths (E',)."""
        if tier in self._kept:
            return self._kept[tier]
        c = self.config
        owner, slot, flat, lengths = self.owner, self.slot, self.flat, self.lengths
        first, inverse, n_unique, dropped = self.first, self.inverse, self.n_unique, 0
        if not self.fits(tier):
            if tier != self.last_tier:
                raise ValueError(f"tier {tier} (row budget {c.row_budgets[tier]}) does not hold this batch's "
                                 f"{self.n_valid} rows / {self.n_unique} unique texts and is not the last tier")
            order = subtext_drop_order(owner, slot)
            u_budget = c.unique_budgets[tier] if c.dedup else None
            dropped = _drops_needed(self.n_valid, c.row_budgets[tier], order, inverse, n_unique, u_budget)
            keep = np.ones(self.n_valid, bool)
            keep[order[:dropped]] = False
            owner, slot, flat, lengths = owner[keep], slot[keep], flat[keep], lengths[keep]
            if c.dedup:
                first, inverse = unique_rows(flat)
                n_unique = first.size
            else:
                n_unique = flat.shape[0]
        if c.dedup:
            enc, row_enc, enc_lengths = flat[first], inverse, lengths[first]
        else:
            enc, row_enc, enc_lengths = flat, np.arange(flat.shape[0]), lengths
        self._kept[tier] = dict(owner=owner, slot=slot, enc=enc, row_enc=row_enc, enc_lengths=enc_lengths,
                                n_unique=int(n_unique), dropped=int(dropped))
        return self._kept[tier]

    def _groups(self, tier: int):
        """(lengths (E,) of the encoded slots, padding 0; order (E,): encoded position p holds text order[p])."""
        lens = np.zeros(self.config.encoded_budget(tier), np.int32)
        k = self.kept(tier)
        lens[:k["enc"].shape[0]] = k["enc_lengths"]
        return lens, np.argsort(lens, kind="stable")  # sorted by length, padding first

    def buckets(self, tier: int) -> tuple[int, ...]:
        """The shortest bucket of each length group at `tier` (non-decreasing over the groups)."""
        lens, order = self._groups(tier)
        out, start = [], 0
        for size in self.config.group_sizes(tier):
            idx = order[start:start + size]
            out.append(choose_bucket(max(int(lens[idx].max()), 1), self.config.buckets, self.context_length))
            start += size
        return tuple(out)

    def request(self) -> np.ndarray:
        """What this process needs, for the processes to agree on (`agree_pack`): (T, 2 + G) int32, per tier t
        [fits without dropping (0/1), subtext rows the overflow rule drops at t, then the bucket of each group
        at t]; a tier that does not fit and is not the last has zeros after its 0 (it cannot be chosen)."""
        c = self.config
        out = np.zeros((self.last_tier + 1, 2 + len(c.groups)), np.int32)
        for t in range(self.last_tier + 1):
            out[t, 0] = self.fits(t)
            if out[t, 0] or t == self.last_tier:
                out[t, 1] = self.kept(t)["dropped"]
                out[t, 2:] = self.buckets(t)
        return out

    def pack(self, tier: int | None = None, buckets: Sequence[int] | None = None) -> tuple[dict, dict]:
        """(packed batch, stats) at `tier` and `buckets` (None: this batch's own — the first tier that fits, or the
        last; the shortest bucket of each group). A given tier must hold the batch unless it is the last (then the
        overflow rule drops subtexts); given buckets must be allowed ones, no shorter than the batch's own (a
        longer bucket is exact: only trailing padding is added)."""
        c, length = self.config, self.context_length
        if tier is None:
            tier = self.last_tier if self.own_tier is None else self.own_tier
        own = self.buckets(tier)
        if buckets is None:
            buckets = own
        buckets = tuple(int(x) for x in buckets)
        allowed = {length} | {b for b in (c.buckets or ()) if b < length}
        if len(buckets) != len(own) or any(x not in allowed or x < o for x, o in zip(buckets, own)):
            raise ValueError(f"buckets {buckets} at tier {tier}: need one per group from {sorted(allowed)}, each "
                             f"no shorter than this batch's own {own}")
        k = self.kept(tier)
        lens, order = self._groups(tier)
        m_budget, e_budget = c.row_budgets[tier], c.encoded_budget(tier)
        position = np.empty(e_budget, np.int32)
        position[order] = np.arange(e_budget, dtype=np.int32)
        out = {key: v for key, v in self.batch.items() if key not in ("text_ids", "text_valid")}
        start = 0
        for g, (size, bucket) in enumerate(zip(c.group_sizes(tier), buckets)):
            idx = order[start:start + size]
            ids_g = np.full((size, bucket), self.text.pad_id, np.int32)
            real = idx < k["enc"].shape[0]
            ids_g[real] = k["enc"][idx[real], :bucket]
            out[f"text_ids_{g}"] = ids_g
            start += size
        n_kept = k["owner"].size
        row_text = np.zeros(m_budget, np.int32)
        row_text[:n_kept] = position[k["row_enc"]]
        row_owner = np.zeros(m_budget, np.int32)
        row_owner[:n_kept] = k["owner"]
        row_slot = np.zeros(m_budget, np.int32)
        row_slot[:n_kept] = k["slot"]
        row_valid = np.zeros(m_budget, bool)
        row_valid[:n_kept] = True
        out.update(row_text=row_text, row_owner=row_owner, row_slot=row_slot, row_valid=row_valid)
        stats = {"valid": int(self.n_valid), "kept": int(n_kept), "dropped": k["dropped"], "unique": k["n_unique"],
                 "encoded": int(e_budget), "tier": int(tier), "row_budget": int(m_budget),
                 "buckets": buckets, "bucket": int(max(buckets)),
                 "max_length": int(lens.max()) if n_kept else 1,
                 "text_tokens": int(sum(x * b for x, b in zip(c.group_sizes(tier), buckets)))}
        return out, stats


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
    return BatchPlan(batch, config, loss_config, text).pack()


# ---- several processes: one shape for all, rows indexed in the global arrays --------------------------------

def agree_pack(requests: np.ndarray) -> tuple[int, tuple[int, ...], int]:
    """(tier, buckets, dropped): what every process packs with, from all processes' `BatchPlan.request()`
    stacked (P, T, 2 + G) in any order: the first tier that holds every process's batch without dropping (else
    the last), per group the longest of the processes' buckets at that tier, and the subtext rows dropped at
    that tier by all processes together. A symmetric pure function of the stacked requests, so every process
    that gathers them computes the same answer."""
    requests = np.asarray(requests)
    fits_all = requests[:, :, 0].all(axis=0)
    tier = int(np.argmax(fits_all)) if fits_all.any() else requests.shape[1] - 1
    return tier, tuple(int(x) for x in requests[:, tier, 2:].max(axis=0)), int(requests[:, tier, 1].sum())


def globalize_rows(packed: dict, config: PackConfig, tier: int, block: int, blocks: int) -> dict:
    """A process's packed batch with its row indices made global: the global arrays are the concatenation of the
    `blocks` processes' parts in block order (`jax.make_array_from_process_local_data`), this process's being
    block `block`. So its image i is global image block·B + i (B its images), and text j of its group g (size
    E_g, groups starting at S_g locally) is global encoding blocks·S_g + block·E_g + j in the concatenation of
    the global groups (each P·E_g long)."""
    sizes = np.asarray(config.group_sizes(tier), np.int64)
    ends = np.cumsum(sizes)
    starts = ends - sizes
    row_text = np.asarray(packed["row_text"]).astype(np.int64)
    g = np.searchsorted(ends, row_text, side="right")
    out = dict(packed)
    out["row_text"] = (blocks * starts[g] + block * sizes[g] + row_text - starts[g]).astype(np.int32)
    out["row_owner"] = (np.asarray(packed["row_owner"]) + block * len(packed["images"])).astype(np.int32)
    return out


def pack_process_batch(batch: dict, config: PackConfig, loss_config: LossConfig = LossConfig(),
                       text: TextConfig = TextConfig(), *, block: int = 0, blocks: int = 1,
                       gather=None) -> tuple[dict, dict]:
    """`pack_batch` for the process whose rows are block `block` of `blocks` (the multi-process rule; one
    process: `pack_batch` itself).

    Every process must pack with the same tier and buckets, for the global arrays to have one shape: each sends
    its `request()` through `gather` (a collective: (T, 2 + G) → (blocks, T, 2 + G), every process's request,
    e.g. `train.distributed.allgather_host`) and packs with `agree_pack`'s answer, a tier and buckets at least
    as large as its own need (exact: more padding rows, longer trailing padding). The overflow rule applies per
    process to its own rows at the last tier's per-process budgets (a process's row budget is M whatever the
    others hold); with no drop the result is exactly the dense step's. Row indices are then made global
    (`globalize_rows`). stats are this process's, except `dropped`: the rows dropped by all processes."""
    plan = BatchPlan(batch, config, loss_config, text)
    if blocks == 1:
        return plan.pack()
    request = plan.request()
    requests = np.asarray(gather(request))
    if requests.shape != (blocks,) + request.shape:
        raise ValueError(f"gathered packing requests have shape {requests.shape}, expected {(blocks,) + request.shape}")
    tier, buckets, dropped = agree_pack(requests)
    out, stats = plan.pack(tier, buckets)
    stats["dropped"] = dropped
    return globalize_rows(out, config, tier, block, blocks), stats


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
    "BatchPlan",
    "PackConfig",
    "agree_pack",
    "batch_text_counts",
    "canonical_ids",
    "check_buckets",
    "choose_bucket",
    "globalize_rows",
    "is_packed",
    "pack_batch",
    "pack_process_batch",
    "subtext_drop_order",
    "suggest_pack_config",
    "text_groups",
    "text_lengths",
    "unique_rows",
]
