"""The Grain input pipeline (make_jax.data.pipeline) over a small converted dataset.

Expected values are computed independently: images by decoding the stored record and cropping it where
torchvision's RandomResizedCrop rule, drawn from the generator the pipeline's documented seeding gives, puts the box
(written out here), texts by running the tokenizer on the record's strings, batch order from the documented
sampler arithmetic and permutation seeding, normalisation from the CLIP constants.
"""

import csv
import io
import json
import math
from pathlib import Path

import grain
import numpy as np
import pytest
from PIL import Image

from make_jax.records import convert as C
from make_jax.data import pipeline as P
from make_jax.data import records as R
from make_jax.preprocess import CLIP_MEAN, CLIP_STD
from make_jax.tokenizer import tokenize_with_lengths

GOLDEN = Path(__file__).parent / "golden" / "MAKE_training_example.csv"
N_RECORDS = 22
S = 32  # output image size
NOSHARD = grain.sharding.NoSharding()
# The seeding documented in make_jax/data/pipeline.py (module docstring), written out here:
#   epoch e's order:        np.random.default_rng([seed, e, 0x5EED0001]).permutation(num_records)
#   example augmentation:   np.random.default_rng([seed, epoch, index, 0x5EED0002])
PERM_STREAM = 0x5EED0001
AUG_STREAM = 0x5EED0002


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("pipe")
    with open(GOLDEN, newline="", encoding="utf-8") as fh:
        golden = list(csv.DictReader(fh))
    rows = []
    rng = np.random.default_rng(0)
    for i in range(N_RECORDS):
        r = dict(golden[i % 10])
        r["filename"] = f"img/{i:03d}.png"
        path = tmp / "images" / r["filename"]
        path.parent.mkdir(parents=True, exist_ok=True)
        w, h = 60 + 3 * i, 45 + 2 * (i % 5)
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path)
        rows.append(r)
    with open(tmp / "train.csv", "w", newline="", encoding="utf-8") as fh:
        wr = csv.DictWriter(fh, list(rows[0].keys()))
        wr.writeheader()
        wr.writerows(rows)
    res = C.convert(str(tmp / "train.csv"), str(tmp / "images"), str(tmp / "out"), val_fraction=0.25, workers=0,
                    shorter_side=40, shard_size=5, progress=False, log=lambda s: None)
    train = R.read_records(res.directory, "train")
    val = R.read_records(res.directory, "validation")
    return res.directory, train, val


def cfg(**kw):
    kw.setdefault("image_size", S)
    kw.setdefault("prefetch", 0)
    return P.PipelineConfig(**kw)


def take(ds, n):
    it = iter(ds)
    out = [next(it) for _ in range(n)]
    if hasattr(it, "close"):
        it.close()
    return out


def assert_batches_equal(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert sorted(x) == sorted(y)
        for k in x:
            np.testing.assert_array_equal(x[k], y[k], err_msg=k)


# --- batch contents ------------------------------------------------------------------------------------------------
def random_resized_crop_box(rng, width, height, scale=(0.4, 1.0), ratio=(3 / 4, 4 / 3)):
    """torchvision RandomResizedCrop.get_params with NumPy draws: (left, top, right, bottom). Per attempt: area
    fraction ~ U(scale), log aspect ~ U(log ratio); the first box that fits is placed with integers(0, room + 1).
    After 10 misses: the whole image cut to the nearest allowed aspect, centred."""
    for _ in range(10):
        area = width * height * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(math.log(ratio[0]), math.log(ratio[1])))
        w, h = int(round(math.sqrt(area * aspect))), int(round(math.sqrt(area / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = int(rng.integers(0, height - h + 1))
            left = int(rng.integers(0, width - w + 1))
            return left, top, left + w, top + h
    w, h = width, height
    if width / height < ratio[0]:
        h = int(round(width / ratio[0]))
    elif width / height > ratio[1]:
        w = int(round(height * ratio[1]))
    left, top = (width - w) // 2, (height - h) // 2
    return left, top, left + w, top + h


def test_train_batch_format_and_contents(data):
    path, train, _ = data
    n = len(train)
    L = 20
    # Crop only (no jitter, no grayscale): the expected image is then a PIL crop + bicubic resize of the box the
    # documented generator draws. The jitter and grayscale ops themselves are checked in test_transforms.py.
    from make_jax.data.transforms import TrainTransformConfig

    c = cfg(context_length=L, with_index=True, seed=3,
            augment=TrainTransformConfig(jitter_prob=0.0, grayscale_prob=0.0))
    batches = take(P.train_dataset(path, 4, c, shard_options=NOSHARD), 3)
    for b in batches:
        assert set(b) == {"images", "text_ids", "text_valid", "index", "epoch"}
        assert b["images"].shape == (4, S, S, 3) and b["images"].dtype == np.uint8
        assert b["text_ids"].shape == (4, 11, L) and b["text_ids"].dtype == np.int32
        assert b["text_valid"].shape == (4, 11) and b["text_valid"].dtype == np.bool_
        for r in range(4):
            i, e = int(b["index"][r]), int(b["epoch"][r])
            assert 0 <= i < n
            rec = train[i]
            np.testing.assert_array_equal(b["text_valid"][r], rec["text_valid"])
            ids, _ = tokenize_with_lengths(rec["texts"], L)  # the tokenizer at context L
            valid = rec["text_valid"]
            np.testing.assert_array_equal(b["text_ids"][r][valid], ids[valid])
            assert (b["text_ids"][r][~valid] == 0).all()
            img = Image.open(io.BytesIO(rec["image"])).convert("RGB")
            box = random_resized_crop_box(np.random.default_rng([3, e, i, AUG_STREAM]), img.width, img.height)
            want = np.asarray(img.crop(box).resize((S, S), Image.Resampling.BICUBIC))
            np.testing.assert_array_equal(b["images"][r], want)


def test_float32_output_is_clip_normalised(data):
    path = data[0]
    u8 = take(P.train_dataset(path, 4, cfg(seed=1), shard_options=NOSHARD), 2)
    f32 = take(P.train_dataset(path, 4, cfg(seed=1, output="float32"), shard_options=NOSHARD), 2)
    mean, std = np.array(CLIP_MEAN), np.array(CLIP_STD)
    for a, b in zip(u8, f32):
        assert b["images"].dtype == np.float32
        np.testing.assert_allclose(b["images"], (a["images"] / 255.0 - mean) / std, rtol=1e-5, atol=1e-5)


def test_slot0_dagger(data):
    path, train, _ = data
    b = take(P.train_dataset(path, 4, cfg(slot0="dagger", with_index=True), shard_options=NOSHARD), 1)[0]
    for r in range(4):
        rec = train[int(b["index"][r])]
        ids, _ = tokenize_with_lengths(rec["dagger_text"], 77)
        np.testing.assert_array_equal(b["text_ids"][r, 0], ids[0])
        assert b["text_valid"][r, 0]
        ids_all, _ = tokenize_with_lengths(rec["texts"], 77)  # the other slots unchanged
        v = rec["text_valid"]
        np.testing.assert_array_equal(b["text_ids"][r, 1:][v[1:]], ids_all[1:][v[1:]])


@pytest.mark.parametrize("L", [1, 2, 6, 16, 77])
def test_trim_text_ids_equals_tokenizing_at_L(L):
    texts = ["a " * 100, "psoriasis vulgaris plaque on the elbow", "", "x"]
    ids77, len77 = tokenize_with_lengths(texts, 77)
    ids, _ = tokenize_with_lengths(texts, L)
    np.testing.assert_array_equal(P.trim_text_ids(ids77, len77, L), ids)


# --- order: shuffle, epochs, determinism -------------------------------------------------------------------------
def test_epochs_are_seeded_permutations_with_drop_remainder(data):
    path, train, _ = data
    n, G = len(train), 4
    spe = n // G
    bs = take(P.train_dataset(path, G, cfg(with_index=True, seed=7), shard_options=NOSHARD), 3 * spe)
    idx = np.concatenate([b["index"] for b in bs]).reshape(3, spe * G)
    ep = np.concatenate([b["epoch"] for b in bs]).reshape(3, spe * G)
    for e in range(3):
        assert (ep[e] == e).all()
        assert len(set(idx[e].tolist())) == spe * G  # no repeats within an epoch; n % G records dropped
        perm = np.random.default_rng([7, e, PERM_STREAM]).permutation(n)
        np.testing.assert_array_equal(idx[e], perm[: spe * G])
    assert not np.array_equal(idx[0], idx[1]) and not np.array_equal(idx[1], idx[2])
    # the same record gets fresh augmentation in another epoch
    same = take(P.train_dataset(path, G, cfg(with_index=True, seed=7), shard_options=NOSHARD), 3 * spe)
    assert_batches_equal(bs, same)  # deterministic
    other = take(P.train_dataset(path, G, cfg(with_index=True, seed=8), shard_options=NOSHARD), 1)
    assert not np.array_equal(other[0]["index"], bs[0]["index"])


def test_augmentation_depends_only_on_seed_epoch_index(data):
    path = data[0]
    # batch size 4 vs 2: the epoch permutation is the same, so the same (epoch, index) must give the same image
    a = take(P.train_dataset(path, 4, cfg(with_index=True), shard_options=NOSHARD), 2)
    b = take(P.train_dataset(path, 2, cfg(with_index=True), shard_options=NOSHARD), 4)
    ia = np.concatenate([x["index"] for x in a])
    ib = np.concatenate([x["index"] for x in b])
    np.testing.assert_array_equal(ia, ib)
    np.testing.assert_array_equal(np.concatenate([x["images"] for x in a]), np.concatenate([x["images"] for x in b]))


# --- workers, checkpointing, multi-host ----------------------------------------------------------------------------
def test_workers_threads_and_checkpoint_restore(data):
    path, train, _ = data
    spe = len(train) // 4  # 4 steps per epoch
    ref = take(P.train_dataset(path, 4, cfg(with_index=True), shard_options=NOSHARD), 2 * spe)

    # 2 worker processes, 2 threads each and a prefetch thread: the same batches
    ds = P.train_dataset(path, 4, cfg(with_index=True, workers=2, read_threads=2, prefetch=2),
                         shard_options=NOSHARD)
    it = iter(ds)
    got = [next(it) for _ in range(3)]
    state = json.loads(json.dumps(it.get_state()))  # mid-epoch 0, after 3 batches; JSON as grain.checkpoint saves it
    got += [next(it) for _ in range(2 * spe - 3)]
    it.close()
    assert_batches_equal(got, ref)
    it2 = iter(ds)
    it2.set_state(state)  # across the epoch boundary (batches 3..7 = rest of epoch 0 and epoch 1)
    resumed = [next(it2) for _ in range(2 * spe - 3)]
    it2.close()
    assert_batches_equal(resumed, ref[3:])


@pytest.mark.parametrize("cut", [1, 3, 4, 6])
def test_checkpoint_in_process(data, cut):
    path = data[0]
    ds = P.train_dataset(path, 4, cfg(with_index=True, read_threads=2, prefetch=2), shard_options=NOSHARD)
    full = take(ds, 9)
    it = iter(ds)
    for _ in range(cut):
        next(it)
    state = json.loads(json.dumps(it.get_state()))
    it2 = iter(P.train_dataset(path, 4, cfg(with_index=True, read_threads=2, prefetch=2),
                               shard_options=NOSHARD))
    it2.set_state(state)  # a fresh pipeline object, as after a restart
    assert_batches_equal([next(it2) for _ in range(9 - cut)], full[cut:])


def test_process_shards_union_is_the_global_batch(data):
    path = data[0]
    G = 8
    whole = take(P.train_dataset(path, G, cfg(with_index=True), shard_options=NOSHARD), 4)
    parts = [take(P.train_dataset(path, G, cfg(with_index=True), shard_options=grain.sharding.ShardOptions(p, 4)), 4)
             for p in range(4)]
    for s in range(4):
        for k in whole[s]:
            glued = np.concatenate([parts[p][s][k] for p in range(4)])
            assert glued.shape[0] == G
            np.testing.assert_array_equal(glued, whole[s][k], err_msg=k)
    # eval too (with padding)
    ew = list(P.eval_dataset(path, 4, cfg(with_index=True), shard_options=NOSHARD))
    ep = [list(P.eval_dataset(path, 4, cfg(with_index=True), shard_options=grain.sharding.ShardOptions(p, 2)))
          for p in range(2)]
    assert len(ep[0]) == len(ep[1]) == len(ew)
    for s in range(len(ew)):
        for k in ew[s]:
            np.testing.assert_array_equal(np.concatenate([ep[0][s][k], ep[1][s][k]]), ew[s][k], err_msg=k)


# --- eval ----------------------------------------------------------------------------------------------------------
def test_eval_order_padding_and_transform(data):
    path, _, val = data
    n = len(val)
    assert n == round(0.25 * N_RECORDS)
    batches = list(P.eval_dataset(path, 4, cfg(with_index=True, context_length=77), shard_options=NOSHARD))
    assert len(batches) == -(-n // 4)
    ev = np.concatenate([b["example_valid"] for b in batches])
    assert ev.tolist() == [True] * n + [False] * (4 * len(batches) - n)
    idx = np.concatenate([b["index"] for b in batches])
    assert idx[:n].tolist() == list(range(n))
    images = np.concatenate([b["images"] for b in batches])
    ids = np.concatenate([b["text_ids"] for b in batches])
    valid = np.concatenate([b["text_valid"] for b in batches])
    for i, rec in enumerate(val):
        img = Image.open(io.BytesIO(rec["image"])).convert("RGB")
        # resize shorter side to S bicubic, centre crop, written with PIL here
        w, h = img.size
        nw, nh = (S, int(S * h / w)) if w <= h else (int(S * w / h), S)
        top, left = int(round((nh - S) / 2)), int(round((nw - S) / 2))
        want = np.asarray(img.resize((nw, nh), Image.Resampling.BICUBIC).crop((left, top, left + S, top + S)))
        np.testing.assert_array_equal(images[i], want)
        np.testing.assert_array_equal(ids[i], rec["text_ids"])
    assert (images[n:] == 0).all() and not valid[n:].any() and (ids[n:] == 0).all()


def test_bad_batch_sizes(data):
    path = data[0]
    with pytest.raises(ValueError, match="multiple of the process count"):
        P.train_dataset(path, 6, cfg(), shard_options=grain.sharding.ShardOptions(0, 4))
    with pytest.raises(ValueError, match="no full global batch"):
        P.train_dataset(path, 64, cfg(), shard_options=NOSHARD)
    with pytest.raises(ValueError, match="context_length"):
        P.PipelineConfig(context_length=78)


# ---- the training config's side: config.data (and the other sections) -> PipelineConfig ----------------------

def test_pipeline_options_are_config_data_fields_with_the_defaults_training_used():
    """`config.data` holds every PipelineOptions field (declared once, in the pipeline) with the pipeline's default,
    but `workers`: `base_config` asks for 8 worker processes, as training did before the fields were unified."""
    import dataclasses

    from configs.common import base_config

    c = base_config()
    names = [f.name for f in dataclasses.fields(P.PipelineOptions)]
    assert {k: c.data[k] for k in names} == dict(image_size=224, context_length=77, slot0="raw", workers=8,
                                                 worker_buffer_size=2, read_threads=0, prefetch=2)


def test_every_pipeline_field_is_reachable_from_the_training_config(tmp_path, monkeypatch):
    """Each PipelineConfig field, set from the training config to a value other than its default, arrives as set in
    the PipelineConfig that make_train_data (and the packing sampler) hand to train_dataset. A field added to
    PipelineConfig fails this test until the training config reaches it (or training states its own value)."""
    import dataclasses

    from configs.common import base_config
    from make_jax.train.data import make_train_data, sample_batches

    vocab = tmp_path / "vocab.txt"
    vocab.write_text("[PAD]\n[UNK]\n[CLS]\n[SEP]\n[MASK]\nred\nplaque\n", encoding="utf-8")
    given = dict(image_size=40, context_length=20, slot0="dagger", workers=3, worker_buffer_size=5, read_threads=2,
                 prefetch=4)
    augment = dict(scale=(0.5, 0.9), ratio=(0.8, 1.2), max_attempts=3, jitter_prob=0.5, brightness=0.1,
                   contrast=0.2, saturation=0.3, hue=0.05, grayscale_prob=0.4)
    c = base_config()
    c.init_from = "scratch"
    c.data.records, c.data.split = "/the/records", "validation"
    for k, v in given.items():
        setattr(c.data, k, v)
    for k, v in augment.items():
        setattr(c.data.augment, k, v)
    c.seed = 7
    c.loss.mode = "official"
    c.model.text_tower, c.model.text_vocab = "bert", str(vocab)

    seen, shards = [], []

    def train_dataset(path, global_batch_size, config, *, split, shard_options=None):
        seen.append((path, global_batch_size, config, split))
        shards.append(shard_options and (shard_options.shard_index, shard_options.shard_count))
        return []

    monkeypatch.setattr(P, "train_dataset", train_dataset)
    monkeypatch.setattr(P, "num_records", lambda path, split: 0)
    make_train_data(c, 1, 2)
    sample_batches(c, 0)
    assert len(seen) == 2 and seen[0] == seen[1]
    # training reads the rows of the process it is told; the packing sampler those of this JAX process (default)
    assert shards == [(1, 2), None]
    path, batch, got, split = seen[0]
    assert (path, batch, split) == ("/the/records", c.batch_size, "validation")

    # field -> the value the pipeline must get (set above through the training config, or training's own choice)
    want = {**given, "seed": 7, "official_inputs": True,
            "augment": augment,  # config.data.augment; its size is data.image_size (ExampleLoader)
            "tokenizer": ([2, 5, 6, 3] + [0] * 16, 4),  # the model's WordPiece: [CLS] red plaque [SEP] [PAD]...
            "output": "uint8",  # training's: the step normalises on the device
            "with_index": False}  # training's: a debugging aid
    assert sorted(f.name for f in dataclasses.fields(P.PipelineConfig)) == sorted(want)
    assert {k: getattr(got, k) for k in given} == given
    assert (got.seed, got.official_inputs, got.output, got.with_index) == (7, True, "uint8", False)
    assert {k: v for k, v in dataclasses.asdict(got.augment).items() if k != "size"} == augment
    ids, lengths = got.tokenizer.tokenize_with_lengths(["Red plaque"], got.context_length)
    assert (ids[0].tolist(), int(lengths[0])) == want["tokenizer"]
