"""Records and the converter (make_jax.data.records, make_jax.records.convert).

The 10 real MAKE rows (tests/golden/MAKE_training_example.csv) get small synthetic images; expected values come
from the CSV itself (texts, masks, the `augmented_caption` column for the Derm1M† text), from the tokenizer run on
those texts, from PIL run on the source images, and from TFDS' own decoder — never from the converter's output.
"""

import csv
import io
import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from make_jax.records import convert as C
from make_jax.data import records as R
from make_jax.tokenizer import tokenize_with_lengths

GOLDEN = Path(__file__).parent / "golden" / "MAKE_training_example.csv"
SLOT_COLUMNS = ["truncated_caption", "ontology_caption", "visual_concept_caption"] + [
    f"subcaption_{i}" for i in range(1, 9)
]


def golden_rows():
    with open(GOLDEN, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def write_csv(path, rows, fieldnames=None):
    fieldnames = fieldnames or list(rows[0].keys())
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    return str(path)


def image_array(w, h, seed):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    a = np.stack([128 + 90 * np.sin(xx / (5 + c + rng.random()) + yy / (11 + rng.random())) for c in range(3)], -1)
    return np.clip(a + rng.normal(0, 4, a.shape), 0, 255).astype(np.uint8)


def put_image(root, filename, w, h, seed, fmt="PNG"):
    path = os.path.join(root, filename.lstrip("/"))
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(image_array(w, h, seed)).save(path, format=fmt)
    return path


def golden_dataset(tmp, n_copies=1):
    """Golden rows (optionally repeated under new file names) + PNG images of odd sizes; returns (csv, root, rows)."""
    root = os.path.join(tmp, "images")
    rows = []
    for c in range(n_copies):
        for i, r in enumerate(golden_rows()):
            r = dict(r)
            if c:
                r["filename"] = f"/copies/{c}/{i}.png"
            put_image(root, r["filename"], 97 + 7 * i + c, 71 + 3 * i, seed=100 * c + i)
            rows.append(r)
    return write_csv(os.path.join(tmp, "train.csv"), rows), root, rows


def run(csv_path, root, out, **kw):
    kw.setdefault("workers", 0)
    kw.setdefault("shorter_side", 64)
    kw.setdefault("progress", False)
    kw.setdefault("log", lambda s: None)
    return C.convert(csv_path, root, out, **kw)


def read_rejects(path):
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def expected_mask(row):
    km = json.loads(row["knowledge_masks"])
    sm = json.loads(row["sub_caption_mask"])
    return np.array(km + sm, bool)


# --- the golden rows ----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def golden(tmp_path_factory):
    tmp = str(tmp_path_factory.mktemp("golden"))
    csv_path, root, rows = golden_dataset(tmp)
    res = run(csv_path, root, os.path.join(tmp, "out"), shard_size=4)
    return res, rows, root


def test_golden_records_hold_the_csv_texts_masks_and_tokens(golden):
    res, rows, _ = golden
    assert res.complete and res.splits == {"train": 10} and res.rows_dropped == 0 and res.field_issues == 0
    recs = R.read_records(res.directory, "train")
    assert [r["filename"] for r in recs] == [row["filename"] for row in rows]  # CSV order kept
    for row, rec in zip(rows, recs):
        texts = [row[c] for c in SLOT_COLUMNS]
        assert rec["texts"] == texts
        mask = expected_mask(row)
        np.testing.assert_array_equal(rec["text_valid"], mask & np.array([bool(t) for t in texts]))
        np.testing.assert_array_equal(rec["mask_csv"], mask)
        ids, lengths = tokenize_with_lengths(texts, 77)
        valid = rec["text_valid"]
        np.testing.assert_array_equal(rec["text_ids"][valid], ids[valid])
        np.testing.assert_array_equal(rec["text_lengths"][valid], lengths[valid])
        assert (rec["text_ids"][~valid] == 0).all() and (rec["text_lengths"][~valid] == 0).all()
        # Derm1M† = the CSV's own augmented_caption column
        assert rec["dagger_text"] == row["augmented_caption"]
        d_ids, d_len = tokenize_with_lengths(row["augmented_caption"], 77)
        np.testing.assert_array_equal(rec["dagger_ids"], d_ids[0])
        assert rec["dagger_length"] == d_len[0]
        for col in ("standardized_disease", "ontology_final", "skin_concept_standarized", "body_location", "source",
                    "caption", "symptoms", "age", "gender", "source_type"):
            assert rec[col] == row[col]
        assert rec["split"] == "train"


def test_golden_images_resized_never_upscaled_and_faithful(golden):
    res, rows, root = golden
    recs = R.read_records(res.directory, "train")
    for i, (row, rec) in enumerate(zip(rows, recs)):
        src = Image.open(os.path.join(root, row["filename"].lstrip("/"))).convert("RGB")
        w, h = src.size
        assert (rec["original_width"], rec["original_height"]) == (w, h)
        # shorter side 71 + 3i > 64 -> 64, the longer side in proportion
        assert (rec["image_width"], rec["image_height"]) == (round(w * 64 / h), 64)
        img = Image.open(io.BytesIO(rec["image"]))
        assert img.format == "JPEG" and img.size == (rec["image_width"], rec["image_height"])
        ref = np.asarray(src.resize(img.size, Image.Resampling.BICUBIC)).astype(float)
        assert np.abs(np.asarray(img.convert("RGB")).astype(float) - ref).mean() < 3  # JPEG q95 of the same image


def test_fast_decoder_agrees_with_tfds_and_no_tensorflow(golden):
    res, _, _ = golden
    import tensorflow_datasets as tfds

    builder = tfds.builder_from_directory(res.directory)
    assert builder.info.splits["train"].num_examples == 10
    assert [int(x) for x in builder.info.splits["train"].shard_lengths] == [4, 4, 2]
    src = R.RecordSource(res.directory, "train")
    tf_src = builder.as_data_source(decoders={"image": tfds.decode.SkipDecoding()})["train"]
    feats = R.features("jpeg")
    for i in range(len(src)):
        ours = R.decode_record(src[i])
        ref = feats.deserialize_example_np(src[i], decoders={"image": tfds.decode.SkipDecoding()})
        ref2 = tf_src[i]
        for k in R.SCHEMA:
            a, b = ours[k], ref[k]
            if isinstance(b, bytes) and k != "image":
                b = b.decode()
            if k == "texts":
                b = [x.decode() for x in b]
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=k)
        assert ref2["filename"].decode() == ours["filename"]
    assert "tensorflow" not in sys.modules  # built and read without TensorFlow


def test_golden_stats(golden):
    res, rows, _ = golden
    with open(res.stats_json) as fh:
        stats = json.load(fh)
    tr = stats["splits"]["train"]
    assert tr["images"] == 10 and tr["shards"] == 3
    masks = [expected_mask(r) for r in rows]
    hist = {}
    for m in masks:
        hist[str(int(m.sum()))] = hist.get(str(int(m.sum())), 0) + 1
    assert tr["valid_texts_per_image"] == hist
    names = ["raw", "disease", "concept"] + [f"subtext_{i}" for i in range(1, 9)]
    for s, name in enumerate(names):
        texts = [r[SLOT_COLUMNS[s]] for r, m in zip(rows, masks) if m[s]]
        want = {}
        if texts:
            for n in tokenize_with_lengths(texts, 77)[1]:
                want[str(int(n))] = want.get(str(int(n)), 0) + 1
        assert tr["token_length_histogram"][name] == want, name
        assert tr["truncated_texts"][name] == 0
    assert stats["rejects"] == {"rows_in": 10, "rows_dropped": 0, "field_issues": 0, "by_code": {}}


# --- bad input ----------------------------------------------------------------------------------------------------
def test_bad_input_is_reported_and_the_good_rows_are_all_kept(tmp_path, capsys):
    tmp = str(tmp_path)
    csv_path, root, rows = golden_dataset(tmp)
    good = [dict(r) for r in rows]
    bad = []

    def variant(i, name, **changes):
        r = dict(rows[i])
        r["filename"] = f"/bad/{name}.png"
        r.update(changes)
        bad.append(r)
        return r

    variant(0, "missing")  # no image file
    os.makedirs(os.path.join(root, "bad"))
    with open(os.path.join(root, "bad", "notimage.png"), "w") as fh:
        fh.write("this is not an image")
    variant(1, "notimage")
    p = put_image(root, "/bad/truncated.png", 120, 90, seed=7, fmt="JPEG")
    data = open(p, "rb").read()
    open(p, "wb").write(data[: len(data) // 2])
    variant(1, "truncated")
    put_image(root, "/bad/badmask.png", 80, 80, seed=8)
    variant(1, "badmask", knowledge_masks="[1, 1")  # malformed -> validity from the texts
    put_image(root, "/bad/mask_no_text.png", 80, 80, seed=9)
    variant(0, "mask_no_text", visual_concept_caption="")  # mask [1, 1, 1] but no concept text
    put_image(root, "/bad/text_no_mask.png", 80, 80, seed=10)
    variant(1, "text_no_mask", sub_caption_mask="[1, 0, 0, 0, 0, 0, 0, 0]")  # subcaption_2 has text
    put_image(root, "/bad/empty_caption.png", 80, 80, seed=11)
    variant(0, "empty_caption", truncated_caption="  ")
    put_image(root, "/bad/wrong_values.png", 80, 80, seed=12)
    variant(1, "wrong_values", sub_captions="two", subcaption_2="nan")
    all_rows = good[:5] + bad + good[5:]
    path = write_csv(os.path.join(tmp, "mixed.csv"), all_rows)
    with open(path, "a", encoding="utf-8") as fh:  # one row with too few fields
        fh.write("/bad/short_row.png,only two fields\n")
    row_of = {r["filename"]: i + 1 for i, r in enumerate(all_rows)}
    short_row = len(all_rows) + 1

    res = C.convert(path, root, os.path.join(tmp, "out"), workers=0, shorter_side=64, shard_size=4, progress=False)
    summary = capsys.readouterr().out
    assert res.complete

    recs = {r["filename"]: r for r in R.read_records(res.directory, "train")}
    kept_bad = {"/bad/badmask.png", "/bad/mask_no_text.png", "/bad/text_no_mask.png", "/bad/wrong_values.png"}
    assert set(recs) == {r["filename"] for r in good} | kept_bad  # every good row is there

    got = {(int(d["row"]), d["file"], d["field"], d["code"], d["action"]) for d in read_rejects(res.rejects_csv)}
    want = {
        (row_of["/bad/missing.png"], "/bad/missing.png", "filename", "image_missing", "row dropped"),
        (row_of["/bad/notimage.png"], "/bad/notimage.png", "filename", "image_unreadable", "row dropped"),
        (row_of["/bad/truncated.png"], "/bad/truncated.png", "filename", "image_unreadable", "row dropped"),
        (row_of["/bad/badmask.png"], "/bad/badmask.png", "knowledge_masks", "mask_malformed",
         "slots valid where their text is non-empty"),
        (row_of["/bad/mask_no_text.png"], "/bad/mask_no_text.png", "visual_concept_caption", "mask_without_text",
         "slot invalid"),
        (row_of["/bad/text_no_mask.png"], "/bad/text_no_mask.png", "subcaption_2", "text_without_mask",
         "slot invalid (mask followed; text kept in the record)"),
        (row_of["/bad/empty_caption.png"], "/bad/empty_caption.png", "truncated_caption", "empty_caption",
         "row dropped"),
        (row_of["/bad/wrong_values.png"], "/bad/wrong_values.png", "sub_captions", "bad_count",
         "ignored (masks and texts decide)"),
        (row_of["/bad/wrong_values.png"], "/bad/wrong_values.png", "subcaption_2", "missing_marker",
         "read as empty text"),
        # after 'nan' became '', the mask [1, 1, 0...] of row 1 says subcaption_2 is valid but it is empty
        (row_of["/bad/wrong_values.png"], "/bad/wrong_values.png", "subcaption_2", "mask_without_text",
         "slot invalid"),
        (short_row, "", "*", "row_unreadable", "row dropped"),
    }
    assert got == want
    messages = {d["code"]: d["reason"] for d in read_rejects(res.rejects_csv)}
    assert "not found" in messages["image_missing"]
    assert "26" in messages["row_unreadable"] and "2 fields" in messages["row_unreadable"]
    assert "truncated" in " ".join(d["reason"] for d in read_rejects(res.rejects_csv) if "truncated" in d["file"])

    # what was kept for the rows with field problems
    r1 = expected_mask(rows[1])
    v = recs["/bad/badmask.png"]["text_valid"]
    texts = [rows[1][c] for c in SLOT_COLUMNS]
    np.testing.assert_array_equal(v, [bool(t) for t in texts])  # from the texts
    assert not recs["/bad/badmask.png"]["mask_csv"][:3].any()
    v = recs["/bad/mask_no_text.png"]["text_valid"]
    assert not v[2] and v[0] and v[1]
    v = recs["/bad/text_no_mask.png"]
    assert not v["text_valid"][4] and v["texts"][4] == rows[1]["subcaption_2"] and (v["text_ids"][4] == 0).all()
    assert v["text_valid"][3]
    v = recs["/bad/wrong_values.png"]
    assert v["texts"][4] == "" and not v["text_valid"][4]
    np.testing.assert_array_equal(v["text_valid"][:4], r1[:4])

    with open(res.stats_json) as fh:
        stats = json.load(fh)
    assert stats["splits"]["train"]["images"] == 14
    assert stats["rejects"]["rows_in"] == len(all_rows) + 1
    assert stats["rejects"]["rows_dropped"] == 5
    assert stats["rejects"]["by_code"]["image_unreadable"] == 2
    assert "dropped: 5" in summary and "image_unreadable 2" in summary


def test_missing_column_fails_at_once_listing_the_columns(tmp_path, capsys):
    rows = golden_rows()
    cols = [c for c in rows[0] if c != "knowledge_masks"]
    path = write_csv(tmp_path / "t.csv", rows, cols)
    out = tmp_path / "out"
    with pytest.raises(C.MissingColumnsError) as e:
        C.convert(path, str(tmp_path), str(out), workers=0, progress=False)
    msg = str(e.value)
    assert "['knowledge_masks']" in msg and "columns found" in msg and "sub_caption_mask" in msg
    assert not out.exists()
    assert C.main(["--csv", path, "--images", str(tmp_path), "--out", str(out), "--workers", "0"]) == 2
    err = capsys.readouterr().err
    assert "missing required column(s) ['knowledge_masks']" in err and "filename" in err


# --- resumability, determinism, splits, options -------------------------------------------------------------------
def files_of(directory):
    out = {}
    for name in sorted(os.listdir(directory)):
        p = os.path.join(directory, name)
        if os.path.isfile(p) and name != "convert_config.json":
            out[name] = open(p, "rb").read()
    return out


def test_resume_after_interruption_gives_identical_output_with_any_worker_count(tmp_path):
    tmp = str(tmp_path)
    csv_path, root, rows = golden_dataset(tmp, n_copies=2)
    clean = run(csv_path, root, os.path.join(tmp, "clean"), shard_size=3, val_fraction=0.25)
    assert clean.complete

    part = run(csv_path, root, os.path.join(tmp, "resumed"), shard_size=3, val_fraction=0.25, max_shards=2)
    assert not part.complete and part.shards_written == 2
    assert not os.path.exists(os.path.join(part.directory, "dataset_info.json"))
    # a shard being written when the run was killed: a partial temporary file
    progress = os.path.join(part.directory, ".progress")
    with open(os.path.join(progress, "make_derm-train.array_record-00002-of-00005.tmp"), "wb") as fh:
        fh.write(b"garbage")
    done = run(csv_path, root, os.path.join(tmp, "resumed"), shard_size=3, val_fraction=0.25, workers=2)
    assert done.complete and done.shards_skipped == 2 and done.shards_written == clean.shards_written - 2
    a, b = files_of(clean.directory), files_of(done.directory)
    assert sorted(a) == sorted(b) and len([n for n in a if ".array_record-" in n]) == clean.shards_written
    for name in a:
        assert a[name] == b[name], name


def test_val_fraction_split_by_file_and_val_csv(tmp_path):
    tmp = str(tmp_path)
    csv_path, root, rows = golden_dataset(tmp, n_copies=2)
    res = run(csv_path, root, os.path.join(tmp, "o1"), val_fraction=0.3, split_seed=5)
    tr = {r["filename"] for r in R.read_records(res.directory, "train", ["filename"])}
    va = {r["filename"] for r in R.read_records(res.directory, "validation", ["filename"])}
    assert len(va) == round(0.3 * 20) and not tr & va and tr | va == {r["filename"] for r in rows}
    res2 = run(csv_path, root, os.path.join(tmp, "o2"), val_fraction=0.3, split_seed=6)
    va2 = {r["filename"] for r in R.read_records(res2.directory, "validation", ["filename"])}
    assert va2 != va  # the seed matters
    # --val-csv: the second CSV is the validation split
    val_path = write_csv(os.path.join(tmp, "val.csv"), rows[:3])
    res3 = run(csv_path, root, os.path.join(tmp, "o3"), val_csv=val_path)
    v3 = R.read_records(res3.directory, "validation", ["filename", "split"])
    assert [r["filename"] for r in v3] == [r["filename"] for r in rows[:3]] and {r["split"] for r in v3} == {
        "validation"}
    assert res3.splits == {"train": 20, "validation": 3}


def test_changed_settings_refused_unless_overwrite(tmp_path):
    tmp = str(tmp_path)
    csv_path, root, _ = golden_dataset(tmp)
    out = os.path.join(tmp, "out")
    run(csv_path, root, out)
    with pytest.raises(ValueError, match="shorter_side"):
        run(csv_path, root, out, shorter_side=48)
    res = run(csv_path, root, out, shorter_side=48, overwrite=True)
    assert R.read_records(res.directory, "train", ["image_height"])[0]["image_height"] == 48


def test_small_images_are_not_upscaled_and_png_is_lossless(tmp_path):
    tmp = str(tmp_path)
    rows = golden_rows()[:2]
    root = os.path.join(tmp, "img")
    put_image(root, rows[0]["filename"], 50, 40, seed=1)  # smaller than the target: kept as is
    put_image(root, rows[1]["filename"], 150, 90, seed=2)
    path = write_csv(os.path.join(tmp, "t.csv"), rows)
    res = run(path, root, os.path.join(tmp, "out"), image_format="png")
    recs = R.read_records(res.directory, "train")
    src0 = Image.open(os.path.join(root, rows[0]["filename"].lstrip("/"))).convert("RGB")
    img0 = Image.open(io.BytesIO(recs[0]["image"]))
    assert img0.format == "PNG" and img0.size == (50, 40)
    np.testing.assert_array_equal(np.asarray(img0), np.asarray(src0))
    src1 = Image.open(os.path.join(root, rows[1]["filename"].lstrip("/"))).convert("RGB")
    img1 = Image.open(io.BytesIO(recs[1]["image"]))
    assert img1.size == (107, 64)  # 150 * 64 / 90 = 106.7
    np.testing.assert_array_equal(np.asarray(img1), np.asarray(src1.resize((107, 64), Image.Resampling.BICUBIC)))
    with open(res.stats_json) as fh:
        assert json.load(fh)["splits"]["train"]["stored_shorter_side_below_target"] == 1


def test_encode_record_validates_fields():
    with pytest.raises(KeyError, match="lacks"):
        R.encode_record({"image": b""})


def test_large_jpeg_reduced_scale_decode_matches_full_decode():
    # 1100x1030 >= 4 x 256: decoded at 1/2 DCT scale (550x515, still >= 2x the target), then bicubic to 273x256
    src = Image.fromarray(image_array(1100, 1030, seed=3))
    buf = io.BytesIO()
    src.save(buf, format="JPEG", quality=95)
    img, orig = C.load_and_resize(buf.getvalue(), 256)
    assert orig == (1100, 1030) and img.size == (round(1100 * 256 / 1030), 256)
    full = Image.open(io.BytesIO(buf.getvalue())).convert("RGB").resize(img.size, Image.Resampling.BICUBIC)
    assert np.abs(np.asarray(img).astype(float) - np.asarray(full)).mean() < 2.0
