"""Exact text savings (make_jax.train.packing): packing, context buckets and de-duplication give the dense
77-token loss and gradients; the overflow rule drops only subtexts, in its stated order.

Compiled programs are cached per shape and reused across tests (`compiled`).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from make_jax.losses import LossConfig, LossInputs, dense_layout, make_loss
from make_jax.models import create_model, get_model_config
from make_jax.train import packing
from make_jax.train.packing import (PackConfig, choose_bucket, pack_batch, subtext_drop_order, suggest_pack_config,
                                    unique_rows)
from make_jax.train.step import ModelFunctions, forward_loss

SOT, EOT = 49406, 49407
B, N, L = 8, 11, 77

# ---- batches --------------------------------------------------------------------------------------------


def _text(rng, length, width=L, garbage=False):
    """[SOT] body [EOT] then padding (0, or random non-EOT garbage, which the causal EOT pooling never sees)."""
    row = np.zeros(width, np.int32)
    row[0] = SOT
    row[1:length - 1] = rng.integers(1, 40000, length - 2)
    row[length - 1] = EOT
    if garbage:
        row[length:] = rng.integers(1, 40000, width - length)
    return row


def make_batch(seed, subtext_counts=None, max_len=30, b=B):
    """A dense batch like MAKE's: raw caption, disease and concept texts (from small pools, so they repeat across
    images), 0-8 subtexts per image (images 0/1/2 have 0/1/8), missing disease/concept texts, a subtext equal to
    its image's raw caption, a subtext shared by two images, one text with garbage after its EOT, and invalid
    slots holding texts too (the dense step encodes them; they must not count)."""
    rng = np.random.default_rng(seed)
    ids = np.stack([np.stack([_text(rng, int(rng.integers(4, max_len + 1))) for _ in range(N)]) for _ in range(b)])
    diseases = [_text(rng, int(rng.integers(6, 15))) for _ in range(3)]
    concepts = [_text(rng, int(rng.integers(5, 13))) for _ in range(2)]
    for i in range(b):
        ids[i, 1] = diseases[rng.integers(0, 3)]
        ids[i, 2] = concepts[rng.integers(0, 2)]
    ids[0, 0] = _text(rng, max_len)  # the longest text sets the bucket
    if subtext_counts is None:
        subtext_counts = rng.integers(0, 9, b)
        subtext_counts[:3] = (0, 1, 8)
    valid = np.zeros((b, N), bool)
    valid[:, 0] = True
    valid[:, 1] = rng.random(b) < 0.8
    valid[:, 2] = rng.random(b) < 0.7
    valid[1, 1] = False   # no disease text: its subtext weight is 1
    valid[2, 2] = False   # no concept text
    valid[3, 1] = True
    for i, c in enumerate(subtext_counts):
        valid[i, 3:3 + c] = True
    ids[3, 3] = ids[3, 0]                   # a subtext equal to the raw caption
    ids[4, 3] = ids[5, 3]                   # a subtext shared by two images
    ids[6, 1] = diseases[0]
    ids[6, 1, 20:] = rng.integers(1, 40000, L - 20)  # garbage after the EOT (diseases are <= 14 tokens)
    valid[6, 1] = True
    images = rng.integers(0, 256, (b, 32, 32, 3)).astype(np.uint8)
    return {"images": images, "text_ids": ids, "text_valid": valid}


# ---- the model and compiled value-and-grad functions -------------------------------------------------


@functools.cache
def model_fns():
    model = create_model(get_model_config("tiny"), seed=3)
    fns = ModelFunctions(model)
    return fns, fns.params(model)


_compiled: dict = {}


def compiled(name, fn, *args):
    """jit(fn) compiled once per (name, argument shapes)."""
    key = (name,) + tuple((k, np.shape(v), np.asarray(v).dtype.str) for a in args[1:] for k, v in sorted(a.items()))
    if key not in _compiled:
        _compiled[key] = jax.jit(fn).lower(*args).compile()
    return _compiled[key]


CLIP_MEAN_255 = np.array([0.48145466, 0.4578275, 0.40821073], np.float32) * 255
CLIP_STD_255 = np.array([0.26862954, 0.26130258, 0.27577711], np.float32) * 255


def dense_reference_loss(model, batch, loss_config):
    """The dense loss written out here, independent of `train.forward`: every one of the B·N slots encoded at the
    full 77 tokens, rows in the sample-major order i·N + n (slots the loss does not use are masked by the loss
    itself, so encoding them changes nothing)."""
    b, n, length = batch["text_ids"].shape
    images = (batch["images"].astype(jnp.float32) - CLIP_MEAN_255) / CLIP_STD_255
    out = model.encode_image_and_patches(images)
    text = model.encode_text(batch["text_ids"].reshape(b * n, length))
    owner, slot = dense_layout(b, n)
    inputs = LossInputs(out.embedding, out.patches, text, owner, slot, batch["text_valid"].reshape(b * n),
                        model.logit_scale[...])
    return make_loss(inputs, loss_config)


def dense_value_and_grad(batch, loss_config=LossConfig(), params=None):
    fns, default = model_fns()
    params = default if params is None else params
    f = jax.value_and_grad(lambda p, b: dense_reference_loss(fns.merge(p), b, loss_config), has_aux=True)
    (loss, terms), grads = compiled(("dense", loss_config), f, params, batch)(params, batch)
    return loss, terms, grads


def packed_value_and_grad(batch, loss_config=LossConfig()):
    fns, params = model_fns()
    f = jax.value_and_grad(lambda p, b: forward_loss(fns.merge(p), b, loss_config), has_aux=True)
    (loss, terms), grads = compiled(("packed", loss_config), f, params, batch)(params, batch)
    return loss, terms, grads


def assert_same_grads(want, got, rtol=1e-4, atol_frac=1e-5):
    """Every parameter's gradient equal to float32 tolerance (atol relative to that leaf's largest entry)."""
    n = 0
    for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(want), jax.tree.leaves(got)):
        a, b = np.asarray(a), np.asarray(b)
        assert a.shape == b.shape, path
        np.testing.assert_allclose(b, a, rtol=rtol, atol=atol_frac * np.abs(a).max() + 1e-30,
                                   err_msg=jax.tree_util.keystr(path))
        n += 1
    assert n == 38
    # gradients are not trivially zero in either tower
    assert np.abs(np.asarray(want["text"]["text_projection"])).max() > 0
    assert np.abs(np.asarray(want["visual"]["proj"])).max() > 0


def assert_same_terms(want, got):
    for k in want:
        assert float(got[k]) == pytest.approx(float(want[k]), rel=2e-5, abs=1e-6), k


# ---- exactness --------------------------------------------------------------------------------------------


CONFIGS = {
    "pack": PackConfig(row_budgets=(64,), buckets=None),
    "pack+buckets": PackConfig(row_budgets=(64,)),
    "pack+buckets+dedup": PackConfig(row_budgets=(64,), unique_budgets=(64,)),
}


@pytest.mark.parametrize("name", list(CONFIGS))
def test_packed_loss_and_gradients_equal_dense(name):
    config = CONFIGS[name]
    for seed in (0, 1):
        batch = make_batch(seed)
        loss, terms, grads = dense_value_and_grad(batch)
        packed, stats = pack_batch(batch, config)
        assert stats["dropped"] == 0 and stats["kept"] == stats["valid"] == int(batch["text_valid"].sum())
        assert stats["valid"] < B * N
        if config.buckets is None:
            assert packed["text_ids_0"].shape == (64, L)
        else:
            assert stats["bucket"] == 32 and packed["text_ids_0"].shape == (64, 32)
        if config.dedup:
            # disease/concept pools, the raw==subtext and shared subtexts, and the garbage-tailed copy
            assert stats["unique"] <= stats["valid"] - 6
        p_loss, p_terms, p_grads = packed_value_and_grad(packed)
        assert float(p_loss) == pytest.approx(float(loss), rel=1e-5)
        assert_same_terms(terms, p_terms)
        assert_same_grads(grads, p_grads)


def test_packing_the_knowledge_positives():
    # mkcl#: only slots 0-2 are packed and the loss equals the dense one (whose slots 3.. the loss masks).
    cfg = LossConfig(positives="knowledge", slra=False, dkw=False)
    batch = make_batch(2)
    packed, stats = pack_batch(batch, PackConfig(row_budgets=(64,), unique_budgets=(64,)), cfg)
    assert stats["valid"] == int(batch["text_valid"][:, :3].sum())
    assert set(packed["row_slot"][packed["row_valid"]]) <= {0, 1, 2}
    # the same value as the dense loss (forward only: the gradient path is the one tested above)
    fns, params = model_fns()
    dense = compiled("dense-fwd", lambda p, b: dense_reference_loss(fns.merge(p), b, cfg)[0], params, batch)
    got = compiled("packed-fwd", lambda p, b: forward_loss(fns.merge(p), b, cfg)[0], params, packed)
    assert float(got(params, packed)) == pytest.approx(float(dense(params, batch)), rel=1e-5)


# ---- the overflow rule ------------------------------------------------------------------------------------


def greedy_drops(valid, n_drop):
    """Reference rule, one row at a time, on a (B, N) validity mask (subtext slots may have gaps, as the converter
    writes them): the image with the most remaining valid subtexts, ties to the highest image index, loses its
    highest-slot remaining subtext. Returns the dropped (image, slot) pairs in order."""
    remaining = [[s for s in range(3, valid.shape[1]) if valid[i, s]] for i in range(valid.shape[0])]
    out = []
    for _ in range(n_drop):
        top = max(len(r) for r in remaining)
        assert top > 0
        i = max(j for j, r in enumerate(remaining) if len(r) == top)
        out.append((i, remaining[i].pop()))
    return out


def with_gaps(valid, rng):
    """The same number of valid subtexts per image, at random slots among 3..N-1 (gaps between them)."""
    valid = valid.copy()
    for i in range(valid.shape[0]):
        c = int(valid[i, 3:].sum())
        valid[i, 3:] = False
        valid[i, 3 + rng.choice(valid.shape[1] - 3, c, replace=False)] = True
    return valid


def text_key(ids_row):
    """A text's identity as the tokenizer defines it: its tokens up to and including the EOT (49407)."""
    row = [int(t) for t in ids_row]
    return tuple(row[:row.index(49407) + 1])


def _kept_pairs(packed):
    v = packed["row_valid"]
    return set(zip(packed["row_owner"][v].tolist(), packed["row_slot"][v].tolist()))


def test_overflow_drops_subtexts_of_the_fullest_images_first_and_stays_exact():
    counts = np.array([8, 1, 0, 8, 7, 8, 8, 6])  # 46 subtexts, at random slots (gaps, as the converter writes)
    batch = make_batch(5, subtext_counts=counts)
    batch["text_valid"] = with_gaps(batch["text_valid"], np.random.default_rng(5))
    assert not np.array_equal(batch["text_valid"][4, 3:], [True] * 7 + [False])  # image 4 really has a gap
    batch["text_valid"][:, :3] = True  # 24 knowledge rows
    n_valid = int(batch["text_valid"].sum())
    assert n_valid == 70
    packed, stats = pack_batch(batch, PackConfig(row_budgets=(64,), unique_budgets=(64,)))
    n_drop = n_valid - 64
    assert stats["dropped"] == n_drop and stats["kept"] == 64 and stats["valid"] == n_valid
    dropped = greedy_drops(batch["text_valid"], n_drop)
    assert all(s >= 3 for _, s in dropped)
    all_valid = set(zip(*np.nonzero(batch["text_valid"])))
    assert _kept_pairs(packed) == {(int(i), int(s)) for i, s in all_valid} - set(dropped)
    # the loss and gradients are those of the dense batch with exactly those rows invalid
    cut = dict(batch, text_valid=batch["text_valid"].copy())
    for i, s in dropped:
        cut["text_valid"][i, s] = False
    loss, terms, grads = dense_value_and_grad(cut)
    p_loss, p_terms, p_grads = packed_value_and_grad(packed)
    assert float(p_loss) == pytest.approx(float(loss), rel=1e-5)
    assert_same_grads(grads, p_grads)


def test_drop_order_matches_the_greedy_rule_on_random_layouts():
    rng = np.random.default_rng(11)
    for _ in range(20):
        b = int(rng.integers(1, 12))
        counts = rng.integers(0, 9, b)
        valid = np.zeros((b, N), bool)
        valid[:, 0] = True
        for i, c in enumerate(counts):
            valid[i, 3:3 + c] = True
        valid = with_gaps(valid, rng)
        rows = np.flatnonzero(valid.ravel())
        order = subtext_drop_order(rows // N, rows % N)
        got = [(int(rows[j] // N), int(rows[j] % N)) for j in order]
        assert got == greedy_drops(valid, int(counts.sum()))


def test_unique_budget_overflow_drops_subtexts_until_the_unique_texts_fit():
    counts = np.array([8, 1, 0, 6, 6, 3, 8, 2])
    batch = make_batch(6, subtext_counts=counts)
    ids, valid = batch["text_ids"], batch["text_valid"]
    # the fullest images' last subtexts duplicate other texts: dropping them frees no unique slot
    ids[6, 10] = ids[0, 0]
    ids[0, 10] = ids[3, 3]
    full = pack_batch(batch, PackConfig(row_budgets=(88,), unique_budgets=(88,)))[1]
    u_budget = full["unique"] - 3
    packed, stats = pack_batch(batch, PackConfig(row_budgets=(88,), unique_budgets=(u_budget,)))
    assert stats["unique"] <= u_budget
    # reference: drop in the greedy order, one at a time, until the unique texts fit
    all_pairs = [(int(i), int(s)) for i, s in zip(*np.nonzero(valid))]
    kept = set(all_pairs)
    dropped = []
    for pair in greedy_drops(valid, int(counts.sum())):
        if len({text_key(ids[i, s]) for i, s in kept}) <= u_budget:
            break
        kept.discard(pair)
        dropped.append(pair)
    assert stats["dropped"] == len(dropped) >= 4  # more drops than unique slots freed: duplicates came first
    assert _kept_pairs(packed) == kept


def test_tiers_pick_the_first_budget_that_fits_without_dropping():
    batch = make_batch(5, subtext_counts=np.array([8, 1, 0, 6, 6, 3, 8, 2]))
    n_valid = int(batch["text_valid"].sum())
    packed, stats = pack_batch(batch, PackConfig(row_budgets=(48, 88), unique_budgets=(48, 88)))
    assert stats["tier"] == 1 and stats["dropped"] == 0 and stats["kept"] == n_valid
    assert packed["row_owner"].shape == (88,) and packed["text_ids_0"].shape[0] == 88
    small = make_batch(0, subtext_counts=np.zeros(B, int))
    packed, stats = pack_batch(small, PackConfig(row_budgets=(48, 88), unique_budgets=(40, 88)))
    assert stats["tier"] == 0 and packed["text_ids_0"].shape == (40, 32) and packed["row_valid"].shape == (48,)


def test_knowledge_rows_are_never_dropped():
    batch = make_batch(0)
    n_knowledge = int(batch["text_valid"][:, :3].sum())
    with pytest.raises(ValueError, match="raw/disease/concept"):
        pack_batch(batch, PackConfig(row_budgets=(n_knowledge - 1,)))
    with pytest.raises(ValueError, match="paper mode"):
        pack_batch(batch, PackConfig(row_budgets=(64,)), LossConfig(mode="official"))


# ---- host-side pieces -------------------------------------------------------------------------------------


RECON_CONFIGS = [
    PackConfig(row_budgets=(64,), buckets=None),
    PackConfig(row_budgets=(56, 88)),
    PackConfig(row_budgets=(40,), unique_budgets=(32,)),  # drops in every batch
    PackConfig(row_budgets=(64, 88), unique_budgets=(48, 88), groups=(0.5, 0.25, 0.25), multiple_of=4),
    PackConfig(row_budgets=(48,), unique_budgets=(48,), groups=(0.75, 0.25), multiple_of=4),
]


@pytest.mark.parametrize("ci", range(len(RECON_CONFIGS)))
def test_packed_rows_reconstruct_the_dense_texts(ci):
    """Every kept row's encoded text, read back through row_text from the concatenated groups, is its dense
    text (up to the EOT); groups are length-sorted and each group's bucket holds its texts."""
    config = RECON_CONFIGS[ci]
    for seed in range(4):
        batch = make_batch(seed, max_len=[30, 60, 77, 20][seed])
        packed, stats = pack_batch(batch, config)
        sizes = config.group_sizes(stats["tier"])
        groups = [packed[f"text_ids_{g}"] for g in range(len(sizes))]
        assert f"text_ids_{len(sizes)}" not in packed and "text_ids" not in packed
        assert [x.shape[0] for x in groups] == list(sizes) and sum(sizes) == stats["encoded"]
        lengths = [packing.text_lengths(x) * (x.max(axis=1) > 0) for x in groups]
        for g, x in enumerate(groups):
            assert x.shape[1] == stats["buckets"][g] >= lengths[g].max()
            assert x.shape[1] == L or x.shape[1] in config.buckets
            smaller = [bk for bk in (config.buckets or ()) if bk < x.shape[1]]
            assert not smaller or lengths[g].max() > max(smaller)  # the SHORTEST bucket that holds them
        all_len = np.concatenate(lengths)
        assert np.all(np.diff(all_len) >= 0)  # sorted by length across the groups
        full = np.concatenate([np.pad(x, ((0, 0), (0, L - x.shape[1]))) for x in groups])
        v = packed["row_valid"]
        assert v.sum() == stats["kept"] == stats["valid"] - stats["dropped"]
        assert np.all(v[:stats["kept"]]) and not np.any(v[stats["kept"]:])
        # each kept row's text: its dense ids up to the EOT, zeros after (what the encoder reads of it)
        dense = batch["text_ids"][packed["row_owner"][v], packed["row_slot"][v]]
        want = np.array([list(text_key(t)) + [0] * (L - len(text_key(t))) for t in dense])
        np.testing.assert_array_equal(full[packed["row_text"][v]], want)
        assert np.all(batch["text_valid"][packed["row_owner"][v], packed["row_slot"][v]])
        if config.dedup:
            used = np.unique(packed["row_text"][v])
            assert used.size == stats["unique"] <= config.unique_budgets[stats["tier"]]
            assert np.unique(full[used], axis=0).shape[0] == used.size  # each text encoded once
        if stats["dropped"]:
            assert stats["tier"] == len(config.row_budgets) - 1


def test_buckets():
    buckets = (16, 24, 32, 48, 64, 77)
    assert choose_bucket(2, buckets, 77) == 16
    assert choose_bucket(16, buckets, 77) == 16
    assert choose_bucket(17, buckets, 77) == 24
    assert choose_bucket(65, buckets, 77) == 77
    assert choose_bucket(30, buckets, 40) == 32
    assert choose_bucket(33, buckets, 40) == 40  # the ids' own length is the last bucket
    assert choose_bucket(5, None, 77) == 77


def test_text_ids_cut_to_a_bucket_embed_like_the_full_context():
    fns, params = model_fns()
    batch = make_batch(3)
    ids = batch["text_ids"].reshape(-1, L)
    ids[5, 25:] = 123  # garbage after an EOT
    canon = packing.canonical_ids(ids)
    assert np.all(canon[5, 25:] == 0) and np.array_equal(canon[:, :4], ids[:, :4])
    encode = jax.jit(lambda p, t: fns.merge(p).encode_text(t))
    full = np.asarray(encode(params, ids))
    cut = np.asarray(encode(params, canon[:, :32]))
    np.testing.assert_allclose(cut, full, rtol=1e-5, atol=1e-6)


def test_unique_rows_is_exact_including_hash_collisions(monkeypatch):
    rng = np.random.default_rng(4)
    base = rng.integers(0, 50, (30, 9)).astype(np.int32)
    rows = base[rng.integers(0, 30, 400)]
    rows[::7] = rows[::7][:, ::-1]  # permuted rows: same multiset of tokens
    for mult in (None, np.ones(77, np.uint64)):  # all-ones multipliers: the hash is the row sum (collisions)
        if mult is not None:
            monkeypatch.setattr(packing, "_HASH_MULT", mult)
        first, inverse = unique_rows(rows)
        np.testing.assert_array_equal(rows[first][inverse], rows)
        want = np.unique(rows, axis=0)
        assert first.size == want.shape[0]
        assert np.all(np.diff(first) > 0)  # first-occurrence order
        for u, f in enumerate(first):  # f is the first row equal to unique u
            assert not np.any(np.all(rows[:f] == rows[f], axis=1))


def test_suggested_budgets_cover_the_sample_quantile():
    batches = [make_batch(s) for s in range(12)]
    cfg = suggest_pack_config(batches, quantile=0.9, multiple_of=8)
    valid = np.array([b["text_valid"].sum() for b in batches])
    assert cfg.row_budgets[-1] == 88 and len(cfg.row_budgets) == 2
    assert cfg.row_budgets[0] % 8 == 0 and np.mean(valid <= cfg.row_budgets[0]) >= 0.9
    assert cfg.row_budgets[0] - 8 < np.quantile(valid, 0.9)
    assert cfg.unique_budgets[0] <= cfg.row_budgets[0] and cfg.unique_budgets[-1] == 88
    stats = [pack_batch(b, cfg)[1] for b in batches]
    assert all(s["dropped"] == 0 for s in stats)
    assert sum(s["tier"] == 0 for s in stats) >= 10
