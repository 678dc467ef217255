"""SynthDerm: determinism, the public layouts, agreement of texts, labels and pixels with the ground truth.

The layout checks are written against the real MAKE rows in tests/golden/MAKE_training_example.csv and the
concept keys in make_jax/resources/ConceptTerms.json (each row check is run on the golden rows too), and the
drawing checks measure pixels (colour, brightness, local variance) against the labels; no expected value is
taken from the generator's own output.
"""

from __future__ import annotations

import ast
import dataclasses
import copy
import csv
import hashlib
import io
import json
import os
import re
import subprocess
import sys
from collections import Counter

import numpy as np
import pytest
from PIL import Image

from make_jax.synthderm import SynthDermConfig, draw_case, generate, make_item, vocab
from make_jax.synthderm.generate import allocate

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GOLDEN_CSV = os.path.join(ROOT, "tests", "golden", "MAKE_training_example.csv")
CONCEPT_TERMS = os.path.join(ROOT, "make_jax", "resources", "ConceptTerms.json")

CFG = SynthDermConfig(
    seed=3, num_train=160, num_val=40, num_zeroshot=48, num_concepts=192, num_retrieval=24, captions_per_image=2
)


def read_csv(path):
    with open(path, newline="", encoding="utf-8") as f:
        r = csv.reader(f)
        header = next(r)
        rows = [dict(zip(header, line, strict=True)) for line in r]
    return header, rows


def read_jsonl(path):
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def load_rgb(path):
    with Image.open(path) as im:
        assert im.mode == "RGB"
        return np.asarray(im)


@pytest.fixture(scope="module")
def ds(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("synthderm"))
    generate(out, CFG, workers=1, progress=False)
    return out


@pytest.fixture(scope="module")
def gt(ds):
    return {
        s: read_jsonl(os.path.join(ds, "groundtruth", f"{s}.jsonl"))
        for s in ("train", "val", "zeroshot", "concepts", "retrieval")
    }


# ------------------------------------------------------------------------------------------------ determinism


def _tree_bytes(root):
    out = {}
    for d, _, files in os.walk(root):
        for f in files:
            p = os.path.join(d, f)
            with open(p, "rb") as fh:
                out[os.path.relpath(p, root)] = fh.read()
    return out


def test_same_seed_gives_byte_identical_files_with_any_number_of_workers(tmp_path):
    small = SynthDermConfig(seed=11, num_train=24, num_val=8, num_zeroshot=16, num_concepts=16, num_retrieval=8)
    generate(str(tmp_path / "a"), small, workers=1, progress=False)
    generate(str(tmp_path / "b"), small, workers=2, progress=False)
    a, b = _tree_bytes(tmp_path / "a"), _tree_bytes(tmp_path / "b")
    assert sorted(a) == sorted(b)
    assert len([p for p in a if p.endswith(".png")]) == 24 + 8 + 16 + 16 + 8
    for p in a:
        assert a[p] == b[p], p

    generate(str(tmp_path / "c"), dataclasses.replace(small, seed=12), progress=False)
    c = _tree_bytes(tmp_path / "c")
    assert a["make/train.csv"] != c["make/train.csv"]
    same_images = [p for p in a if p.endswith(".png") and a[p] == c[p]]
    assert not same_images


def test_existing_output_needs_overwrite(tmp_path):
    small = SynthDermConfig(seed=1, num_train=2, num_val=1, num_zeroshot=1, num_concepts=1, num_retrieval=1)
    generate(str(tmp_path), small, progress=False)
    with pytest.raises(FileExistsError):
        generate(str(tmp_path), small, progress=False)
    (tmp_path / "make" / "images" / "train" / "stale.png").write_bytes(b"x")
    generate(str(tmp_path), small, progress=False, overwrite=True)
    assert not (tmp_path / "make" / "images" / "train" / "stale.png").exists()


# ------------------------------------------------------------------------------------------------ MAKE CSV


def check_make_row(row):
    """The relations between the columns of a MAKE training row, as the real rows show them."""
    truncated = row["truncated_caption"]
    assert truncated.endswith(".")
    assert row["caption"].startswith(truncated[:-1])
    sentences = truncated[:-1].split(". ")
    n = int(row["sub_captions"])
    assert n == len(sentences)
    subs = [row[f"subcaption_{i}"] for i in range(1, 9)]
    assert subs[:n] == sentences
    assert all(s == "" for s in subs[n:])
    assert ast.literal_eval(row["sub_caption_mask"]) == [1] * n + [0] * (8 - n)
    assert row["sub_caption_mask"] == "[" + ", ".join(["1"] * n + ["0"] * (8 - n)) + "]"

    onto, concepts = row["ontology_final"], row["skin_concept_standarized"]
    want_d = f"This is a skin photo diagnosed as {onto}." if onto else ""
    want_c = "" if concepts in ("", "No visual concepts") else f"This skin photo shows {concepts}."
    assert row["ontology_caption"] == want_d
    assert row["visual_concept_caption"] == want_c
    assert ast.literal_eval(row["knowledge_masks"]) == [1, int(bool(want_d)), int(bool(want_c))]
    aug = truncated + want_d + want_c.replace("This skin photo shows", "The skin photo shows")
    assert row["augmented_caption"] == aug


def test_golden_rows_satisfy_the_row_check():
    _, rows = read_csv(GOLDEN_CSV)
    assert len(rows) == 10
    for r in rows:
        check_make_row(r)


def test_make_csvs_have_the_golden_columns_and_consistent_rows(ds, gt):
    golden_header, _ = read_csv(GOLDEN_CSV)
    for split, n in (("train", CFG.num_train), ("val", CFG.num_val)):
        header, rows = read_csv(os.path.join(ds, "make", f"{split}.csv"))
        assert header == golden_header
        assert len(rows) == n
        for r, g in zip(rows, gt[split], strict=True):
            check_make_row(r)
            assert r["filename"] == g["filename"]
            assert os.path.isfile(os.path.join(ds, "make", r["filename"]))  # relative to the CSV's folder
            assert r["caption"] == ". ".join(g["caption"]["sentences"]) + "."
            case = g["case"]
            # knowledge from the ground truth: either exactly it, or missing (mask 0)
            if r["ontology_final"]:
                assert (r["standardized_disease"], r["ontology_final"]) == (case["disease"], case["ontology"])
            else:
                assert r["standardized_disease"] == "" and not g["caption"]["mentions"]["disease"]
            names = [vocab.CONCEPT_BY_KEY[k].name for k in case["concepts"]]
            if r["skin_concept_standarized"] != "No visual concepts":
                assert r["skin_concept_standarized"].split(", ") == names
            else:
                assert not g["caption"]["mentions"]["concepts"]
            # metadata only as the caption states it
            if r["body_location"] != "No body location information":
                assert r["body_location"] == case["site"]
                assert any(p in r["caption"] for p in vocab.SITES[case["site"]][0])
            if r["age"] in ("child", "elderly"):
                assert r["age"] in r["caption"] and (case["age"] < 16) == (r["age"] == "child")
            elif r["age"] != "No age information":
                assert r["age"] == str(case["age"]) and f"{case['age']}-year-old" in r["caption"]
            if r["gender"] != "No gender information":
                assert r["gender"] == case["gender"]
                words = {"male": ("man", "boy"), "female": ("woman", "girl")}[case["gender"]]
                assert any(re.search(rf"\b{w}\b", r["caption"]) for w in words)
            if r["symptoms"] != "No symptom information":
                assert set(r["symptoms"].split(", ")) <= set(case["symptoms"])
    _, rows = read_csv(os.path.join(ds, "make", "train.csv"))
    masks = Counter(r["knowledge_masks"] for r in rows)
    assert masks["[1, 1, 1]"] > 0.6 * len(rows)
    assert masks["[1, 1, 0]"] > 0  # rows without concept knowledge exist


def test_knowledge_gaps_and_metadata_over_many_captions():
    """Caption statistics over 1,500 items drawn without images (fast): both kinds of missing knowledge occur,
    the aspect texts often say what the caption does not, and lengths range from 1 to 8+ sentences."""
    cfg = SynthDermConfig(seed=5)
    labels = allocate(1500, [d.prevalence for d in vocab.DISEASES], np.random.default_rng(0))
    items = [make_item(cfg, "train", i, int(labels[i]), None) for i in range(1500)]
    lengths = Counter(len(it["caption"]["sentences"]) for it in items)
    assert lengths[1] > 100 and sum(v for k, v in lengths.items() if k >= 8) > 20
    assert not any(it["has_disease"] is False and it["caption"]["mentions"]["disease"] for it in items)
    assert 0 < sum(not it["has_disease"] for it in items) < 150
    assert 0 < sum(not it["has_concepts"] for it in items) < 400

    no_name = 0
    partial_concepts = 0
    for it in items:
        case, cap = it["case"], it["caption"]
        text = cap["caption"].lower()
        named = any(
            re.search(r"\b" + re.escape(s.lower()) + r"\b", text)
            for s in vocab.DISEASE_BY_NAME[case["disease"]].synonyms
        )
        assert named == cap["mentions"]["disease"], cap["caption"]
        no_name += not named
        partial_concepts += len(cap["mentions"]["concepts"]) < len(case["concepts"])
        assert set(cap["mentions"]["concepts"]) <= set(case["concepts"])
        assert not set(cap["mentions"]["negated"]) & set(case["concepts"])
    assert no_name > 0.3 * len(items)
    assert partial_concepts > 0.3 * len(items)


# ------------------------------------------------------------------------------------------------ Derm1M-like


def test_derm1m_release_table(ds, gt):
    header, rows = read_csv(os.path.join(ds, "make", "Derm1M_v2_pretrain.csv"))
    assert header == [
        "filename", "caption", "truncated_caption", "source", "source_type", "standardized_disease",
        "ontology_final", "skin_concept_standarized", "body_location", "symptoms", "age", "gender",
    ]  # fmt: skip
    _, make_rows = read_csv(os.path.join(ds, "make", "train.csv"))
    assert len(rows) == len(make_rows) == CFG.num_train
    missing = 0
    for r, m, g in zip(rows, make_rows, gt["train"], strict=True):
        assert r["filename"] == m["filename"] and r["caption"] == m["caption"]
        if r["ontology_final"]:
            assert r["ontology_final"] == m["ontology_final"] == g["case"]["ontology"]
        else:
            missing += 1
        said = [vocab.CONCEPT_BY_KEY[k].name for k in g["caption"]["mentions"]["concepts"]]
        assert r["skin_concept_standarized"] == (", ".join(said) if said else "No visual concepts")
        for col in ("body_location", "symptoms", "age", "gender"):
            assert r[col] == m[col]
    assert missing > sum(not m["ontology_final"] for m in make_rows)  # the release lacks more than the CSV
    header, crow = read_csv(os.path.join(ds, "make", "concept.csv"))
    assert header == ["filename", "skin_concept_standarized"] and len(crow) == CFG.num_train

    with open(os.path.join(ds, "make", "ontology.json")) as f:
        tree = json.load(f)
    for d in vocab.DISEASES:
        node = tree
        for part in d.ontology.split(", "):
            node = node[part]
    _, vrows = read_csv(os.path.join(ds, "make", "Derm1M_v2_validation.csv"))
    assert len(vrows) == CFG.num_val


# ------------------------------------------------------------------------------------------------ other layouts


def test_zeroshot_layout_and_class_coverage(ds, gt):
    header, rows = read_csv(os.path.join(ds, "zeroshot", "test.csv"))
    assert header == ["filename", "label"]
    with open(os.path.join(ds, "zeroshot", "classnames.json")) as f:
        names = json.load(f)["classnames"]
    assert len(names) == len(set(names)) == len(vocab.DISEASES)
    labels = [int(r["label"]) for r in rows]
    assert Counter(labels) == Counter({i: CFG.num_zeroshot // len(names) for i in range(len(names))})
    for r, g in zip(rows, gt["zeroshot"], strict=True):
        assert names[int(r["label"])] == g["case"]["disease"]
        assert os.path.isfile(os.path.join(ds, "zeroshot", r["filename"]))
    for split in ("train", "concepts", "retrieval", "val"):
        seen = {g["case"]["disease"] for g in gt[split]}
        assert seen == set(names) or len(gt[split]) < len(names), split


def test_skincon_layout(ds, gt):
    with open(CONCEPT_TERMS) as f:
        terms = json.load(f)
    header, rows = read_csv(os.path.join(ds, "skincon", "meta.csv"))
    assert header[0] == "ImageID"
    concepts = header[1:]
    assert len(concepts) == len(set(concepts)) >= 15
    assert all(c in terms for c in concepts)  # the concept-annotation synonyms exist for every column
    for c in ("erythema", "brown(hyperpigmentation)", "white(hypopigmentation)", "scale", "crust", "plaque"):
        assert c in concepts
    assert len(rows) == CFG.num_concepts
    for r, g in zip(rows, gt["concepts"], strict=True):
        assert os.path.isfile(os.path.join(ds, "skincon", "final_images", r["ImageID"]))
        assert {c for c in concepts if r[c] == "1"} == set(g["case"]["concepts"])
        assert all(r[c] in ("0", "1") for c in concepts)
    with open(os.path.join(ds, "skincon", "concept_list.txt")) as f:
        listed = [line.rstrip("\n") for line in f]
    assert listed and set(listed) <= set(concepts)
    for c in listed:
        n = sum(r[c] == "1" for r in rows)
        assert 0 < n < len(rows), c
    assert len(listed) == len(concepts)  # at this size every concept has positives and negatives


def test_retrieval_layout(ds, gt):
    header, rows = read_csv(os.path.join(ds, "retrieval", "retrieval.csv"))
    assert header == ["filename", "caption"]
    per_image = Counter(r["filename"] for r in rows)
    assert len(per_image) == CFG.num_retrieval and set(per_image.values()) == {CFG.captions_per_image}
    by_file = {g["filename"]: g["case"] for g in gt["retrieval"]}
    for r in rows:
        assert os.path.isfile(os.path.join(ds, "retrieval", r["filename"]))
        synonyms = vocab.DISEASE_BY_NAME[by_file[r["filename"]]["disease"]].synonyms
        assert any(s in r["caption"] for s in synonyms)  # complete descriptions name the diagnosis
    assert len({r["caption"] for r in rows}) > 0.9 * len(rows)


def test_held_out_splits_share_no_file_or_image(ds, gt):
    names, digests = [], []
    for split, items in gt.items():
        for g in items:
            names.append(g["path"])
            with open(os.path.join(ds, g["path"]), "rb") as f:
                digests.append(hashlib.sha256(f.read()).hexdigest())
    assert len(names) == len(set(names))
    assert len(digests) == len(set(digests))


# ------------------------------------------------------------------------------------------------ pixels vs labels


def _features(img):
    x = img.astype(np.float64)
    r, g, b = x[..., 0], x[..., 1], x[..., 2]
    s = r + g + b + 1e-6
    return {
        "redness": (r - (g + b) / 2) / s,
        "luminance": 0.299 * r + 0.587 * g + 0.114 * b,
        "purpleness": (b - g) / s,
        "yellowness": ((r + g) / 2 - b) / s,
    }


def _local_std(lum):
    p = np.pad(lum, 1, mode="edge")
    h, w = lum.shape
    win = np.stack([p[i : i + h, j : j + w] for i in range(3) for j in range(3)])
    return win.std(0)


# concept → (feature, minimum lesion − skin difference)
COLOUR_CHECKS = {
    "erythema": ("redness", 0.02),
    "white(hypopigmentation)": ("luminance", 3.0),
    "brown(hyperpigmentation)": ("luminance", None),  # darker: lesion − skin < −5
    "black": ("luminance", None),
    "purple": ("purpleness", 0.05),
    "yellow": ("yellowness", 0.03),
    "crust": ("yellowness", 0.01),
}


def test_drawn_pixels_agree_with_the_concept_labels(ds, gt):
    """On the SkinCon-layout images (read back from disk): where a labelled colour/secondary is visible, the
    pixels differ from the surrounding skin in the labelled direction; scale raises the local variance."""
    _, rows = read_csv(os.path.join(ds, "skincon", "meta.csv"))
    checked = Counter()
    for r, g in zip(rows, gt["concepts"], strict=True):
        img = load_rgb(os.path.join(ds, "skincon", "final_images", r["ImageID"]))
        redrawn, masks = draw_case(g["case"], CFG.image_size, return_masks=True)
        assert np.array_equal(img, redrawn)  # the file is the drawing of its ground truth, losslessly
        skin = masks["lesion"] < 0.02
        if skin.sum() < 100:
            continue
        f = _features(img)
        labelled = {c for c in COLOUR_CHECKS if r.get(c) == "1"} | ({"scale"} if r["scale"] == "1" else set())
        for c in labelled:
            sel = masks["visible"].get(c, np.zeros_like(skin, float)) > (0.3 if c == "scale" else 0.5)
            if sel.sum() < 15:
                continue
            checked[c] += 1
            if c == "scale":
                ls = _local_std(f["luminance"])
                assert ls[sel].mean() > 1.5 * ls[skin].mean(), r["ImageID"]
                continue
            feat, margin = COLOUR_CHECKS[c]
            diff = f[feat][sel].mean() - f[feat][skin].mean()
            if margin is None:
                assert diff < -5.0, (r["ImageID"], c, diff)
            else:
                assert diff > margin, (r["ImageID"], c, diff)
        if r["ulcer"] == "1":
            sel = masks["visible"].get("ulcer_bed", np.zeros_like(skin, float)) > 0.5
            if sel.sum() >= 15:
                checked["ulcer"] += 1
                assert f["luminance"][sel].mean() < f["luminance"][skin].mean() - 5, r["ImageID"]
        if r["vesicle"] == "1":  # clear bubbles carry specular highlights brighter than any skin
            checked["vesicle"] += 1
            assert f["luminance"][masks["coverage"]["vesicle"] > 0.5].max() > np.percentile(f["luminance"][skin], 99)
    for c in ("erythema", "white(hypopigmentation)", "brown(hyperpigmentation)", "purple", "yellow", "scale", "crust"):
        assert checked[c] >= 3, (c, checked)


def test_scale_and_colour_are_caused_by_the_label():
    """Controlled: the same case drawn with and without a concept. Removing 'scale' lowers the local variance
    inside the lesion; replacing 'erythema' by 'white(hypopigmentation)' makes the lesion brighter, less red."""
    n = 0
    for i in range(40):
        case = make_item(SynthDermConfig(seed=21), "concepts", i, vocab.CLASSNAMES.index("psoriasis"), None)["case"]
        comp = case["components"][0]
        if "scale" not in comp["secondary"] or comp["colours"] != ["erythema"]:
            continue
        n += 1
        with_scale, masks = draw_case(case, 96, return_masks=True)
        plain = copy.deepcopy(case)
        plain["components"][0]["secondary"] = [k for k in comp["secondary"] if k != "scale"]
        without = draw_case(plain, 96)
        inside = masks["lesion"] > 0.9
        ls_with = _local_std(_features(with_scale)["luminance"])[inside].mean()
        ls_without = _local_std(_features(without)["luminance"])[inside].mean()
        assert ls_with > 1.5 * ls_without

        white = copy.deepcopy(plain)
        white["components"][0]["colours"] = ["white(hypopigmentation)"]
        red_img, white_img = _features(without), _features(draw_case(white, 96))
        assert white_img["luminance"][inside].mean() > red_img["luminance"][inside].mean() + 10
        assert white_img["redness"][inside].mean() < red_img["redness"][inside].mean() - 0.05
    assert n >= 10


def test_raised_lesions_are_lit_from_the_top_left():
    """A single nodule (basal cell carcinoma recipe): its upper-left half is brighter than its lower-right."""
    n = 0
    for i in range(60):
        case = make_item(SynthDermConfig(seed=8), "concepts", i, vocab.CLASSNAMES.index("basal cell carcinoma"), None)[
            "case"
        ]
        comp = case["components"][0]
        if comp["type"] != "nodule" or len(case["components"]) > 1:
            continue
        n += 1
        img, masks = draw_case(case, 96, return_masks=True)
        lum = _features(img)["luminance"]
        b = comp["blobs"][0]
        yy, xx = np.mgrid[0:96, 0:96]
        s = (xx + 0.5) / 96 - b["cx"] + (yy + 0.5) / 96 - b["cy"]
        inside = masks["coverage"]["nodule"] > 0.5
        assert lum[inside & (s < 0)].mean() > lum[inside & (s > 0)].mean() + 10
    assert n >= 5


# ------------------------------------------------------------------------------------------------ small units


def test_allocate_covers_every_class_and_follows_the_weights():
    rng = np.random.default_rng(0)
    w = [d.prevalence for d in vocab.DISEASES]
    labels = allocate(16, [1.0] * 16, rng)
    assert sorted(labels) == list(range(16))
    labels = allocate(5, [1.0] * 16, rng)
    assert len(set(labels)) == 5
    labels = allocate(1000, w, rng)
    counts = np.bincount(labels, minlength=16)
    expected = 1000 * np.asarray(w) / sum(w)
    assert np.all(np.abs(counts - expected) <= 1.0)
    labels = allocate(20, [100.0] + [1.0] * 15, rng)
    assert set(labels) == set(range(16))


def test_png_writer_round_trips(tmp_path):
    from make_jax.synthderm.layouts import encode_png

    img = np.random.default_rng(0).integers(0, 256, (37, 53, 3), dtype=np.uint8)
    decoded = np.asarray(Image.open(io.BytesIO(encode_png(img))))
    assert np.array_equal(decoded, img)


def test_cli_jpeg(tmp_path):
    out = tmp_path / "sd"
    cmd = [sys.executable, "-m", "make_jax.synthderm", "--out", str(out), "--seed", "2", "--num-train", "6",
           "--num-val", "2", "--num-zeroshot", "16", "--num-concepts", "3", "--num-retrieval", "2",
           "--image-size", "48", "--format", "jpg", "--quiet"]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
    res = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    _, rows = read_csv(out / "make" / "train.csv")
    assert len(rows) == 6
    for r in rows:
        assert r["filename"].endswith(".jpg")
        with Image.open(out / "make" / r["filename"]) as im:
            assert im.format == "JPEG" and im.size == (48, 48)
    with open(out / "synthderm.json") as f:
        man = json.load(f)
    assert man["config"]["image_format"] == "jpg" and man["classnames"] == list(vocab.CLASSNAMES)
    again = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 2 and "overwrite" in again.stderr


def test_prepare_step_hands_every_generator_field_to_the_generator(tmp_path, monkeypatch):
    """`config.prepare.synthderm` declares no generator field of its own (they are SynthDermConfig's): each one a
    config sets reaches the generator as given, and a value the generator refuses is refused by the config check
    in one line that names it."""
    sys.path.insert(0, ROOT)  # the configs package
    from configs.demo import get_config
    from make_jax.synthderm import prepare as step
    from make_jax.train.config import ConfigError, check_config
    from make_jax.train.prepare import run_prepare

    given = dict(seed=7, num_train=3, num_val=1, num_zeroshot=5, num_concepts=4, num_retrieval=2,
                 captions_per_image=2, image_size=24, image_format="jpg", p_no_disease=0.5, p_no_concepts=0.25,
                 p_release_disease_unmentioned=0.75)  # every field, none at its default
    assert set(given) == {f.name for f in dataclasses.fields(SynthDermConfig)}
    assert all(given[f.name] != f.default for f in dataclasses.fields(SynthDermConfig))
    config = get_config()
    config.prepare.synthderm.update(given, out=str(tmp_path / "sd"))
    config.data.records = str(tmp_path / "given")  # a dataset the user named: the step only generates
    seen = {}
    monkeypatch.setattr(step, "generate", lambda root, cfg, **kw: seen.update(root=root, cfg=cfg))
    assert check_config(config).prepare["synthderm"].num_zeroshot == 5
    run_prepare(config)
    assert seen == {"root": tmp_path / "sd", "cfg": SynthDermConfig(**given)}
    config.prepare.synthderm.num_concepts = -1
    with pytest.raises(ConfigError, match=r"^config\.prepare\.synthderm: num_concepts must be >= 0, got -1$"):
        check_config(config)


def test_prepare_step_refuses_a_folder_generated_with_another_config(tmp_path, monkeypatch):
    """An existing `out` is reused only when its synthderm.json says it was generated with the generator fields
    asked for; otherwise one line names the first differing field, the saved and the asked value (the fields are
    never silently ignored)."""
    sys.path.insert(0, ROOT)  # the configs package
    from configs.demo import get_config
    from make_jax.synthderm import prepare as step
    from make_jax.synthderm.generate import manifest
    from make_jax.train.config import ConfigError
    from make_jax.train.prepare import run_prepare

    saved = SynthDermConfig(seed=7, num_train=3, num_val=1, num_zeroshot=5, image_size=24)
    (tmp_path / "sd").mkdir()
    (tmp_path / "sd" / "synthderm.json").write_text(json.dumps(manifest(saved)), encoding="utf-8")
    calls = []
    monkeypatch.setattr(step, "generate", lambda *a, **kw: calls.append(a))
    config = get_config()
    config.prepare.synthderm.update(dataclasses.asdict(saved), out=str(tmp_path / "sd"))
    config.data.records = str(tmp_path / "given")  # a dataset the user named: the step only generates
    run_prepare(config)  # the same generator config: reused
    config.prepare.synthderm.update(num_zeroshot=6, image_size=32)
    with pytest.raises(ConfigError) as e:
        run_prepare(config)
    assert re.fullmatch(r"config\.prepare\.synthderm\.num_zeroshot=6 but the SynthDerm in \S+ was generated with "
                        r"num_zeroshot=5; use another config\.prepare\.synthderm\.out or delete that folder",
                        str(e.value)), str(e.value)
    assert calls == []
