"""make_jax.evaluate end to end: readers and their error messages, bad-image skipping, each task with a fake
encoder whose embeddings are known (so accuracy / recall / AUROC are known exactly), the concept score against
a loop straight from the formula, and the CLI on a tiny random-weight checkpoint checked against an
independent numpy computation through `make_jax.load`."""

from __future__ import annotations

import itertools
import json
import math
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from make_jax.evaluate import registry, run_task
from make_jax.evaluate.cli import load_config, main
from make_jax.evaluate.concepts import evaluate_concepts
from make_jax.evaluate.datasets import (DatasetError, read_concept_set, read_retrieval_csv, read_zero_shot_csv)
from make_jax.evaluate.presets import load_classnames, load_concept_prompts, load_templates, resource_path
from make_jax.evaluate.zero_shot import class_embeddings

RES = Path(resource_path("templates.json")).parent
TEMPLATES = json.loads((RES / "templates.json").read_text())["templates"]
CONCEPT_SCALE = math.exp(4.5944)


# ---------------------------------------------------------------------------------------------- helpers


def write_csv(path: Path, header: str, rows) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(header + "\n" + "".join(r + "\n" for r in rows))
    return path


def solid(path: Path, red: int, size=(12, 10)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (red, 7, 9)).save(path)
    return path


def truncated_png(path: Path) -> Path:
    solid(path, 200, (64, 64))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def unit(v) -> np.ndarray:
    v = np.asarray(v, np.float64)
    return v / np.linalg.norm(v)


def e(i, d=8):
    v = np.zeros(d)
    v[i] = 1.0
    return v


def rand_vec(text: str, d: int, scale: float = 1.0) -> np.ndarray:
    """A fixed pseudo-random vector per string (not normalised)."""
    return np.random.default_rng(zlib.crc32(text.encode())).normal(0, scale, d)


class FakeEncoder:
    """Test double of the EmbeddingModel protocol: an image's embedding is looked up by its red value, a text's
    from `text_fn`. Records the batch sizes it is called with."""

    def __init__(self, image_table: dict[int, np.ndarray], text_fn, batch_size: int = 3):
        self.image_table = image_table
        self.text_fn = text_fn
        self.batch_size = batch_size
        self.text_batch_size = 5
        self.image_calls: list[int] = []

    def preprocess(self, im):
        return np.array([im.convert("RGB").getpixel((0, 0))[0]], np.float32)

    def encode_image(self, x):
        x = np.asarray(x)
        assert x.ndim == 2 and len(x) <= self.batch_size
        self.image_calls.append(len(x))
        # nearest key: JPEG may move a solid colour by a level or two
        keys = np.array(sorted(self.image_table))
        return np.stack([self.image_table[int(keys[np.argmin(np.abs(keys - v))])] for v in x[:, 0]]
                        ).astype(np.float32)

    def encode_text(self, texts):
        assert len(texts) <= self.text_batch_size
        return np.stack([self.text_fn(t) for t in texts]).astype(np.float32)


def brute_auroc(labels, scores):
    pos = [s for y, s in zip(labels, scores) if y == 1]
    neg = [s for y, s in zip(labels, scores) if y == 0]
    return sum(1.0 if p > n else 0.5 if p == n else 0.0 for p, n in itertools.product(pos, neg)) / (len(pos) * len(neg))


# ---------------------------------------------------------------------------------------------- presets


def test_presets_hold_the_published_class_lists():
    for name, n in (("PAD", 6), ("F17K", 114), ("SNU-134", 134), ("SD-128", 128)):
        names = load_classnames(name)
        assert len(names) == n and names.source == name
        raw = json.loads(next(RES.glob(f"classnames_{name.replace('-', '_').replace('F17K', 'F17K_113')}.json"))
                         .read_text())["classnames"]
        assert list(names) == raw
    assert list(load_classnames("pad")) == list(load_classnames("PAD"))
    assert load_templates() == TEMPLATES and len(TEMPLATES) == 8
    templates, refs = load_concept_prompts()
    assert len(templates) == len(refs) == 6


def test_classnames_file_checks(tmp_path):
    p = tmp_path / "c.json"
    p.write_text(json.dumps({"classnames": ["a", "b"], "num_classes": 3}))
    with pytest.raises(ValueError, match=r"c\.json.*num_classes.*3.*2"):
        load_classnames(p)
    p.write_text(json.dumps(["a", "b", "a"]))
    with pytest.raises(ValueError, match="duplicate"):
        load_classnames(p)
    (tmp_path / "c.txt").write_text("x\ny\n\n")
    assert list(load_classnames(tmp_path / "c.txt")) == ["x", "y"]
    with pytest.raises(FileNotFoundError, match="neither a preset"):
        load_classnames(tmp_path / "nope.json")


# ---------------------------------------------------------------------------------------------- readers: bad input


def test_zero_shot_reader_errors_name_file_and_line(tmp_path):
    classes = ["alpha", "beta", "gamma"]
    p = write_csv(tmp_path / "t.csv", "filename,label", ["a.png,0", "b.png,7", "c.png,1"])
    with pytest.raises(DatasetError, match=r"t\.csv, line 3: label 7 of b\.png is outside the class list"):
        read_zero_shot_csv(p, classes)
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(DatasetError, match=r"empty\.csv: empty file"):
        read_zero_shot_csv(tmp_path / "empty.csv", classes)
    write_csv(tmp_path / "h.csv", "filename,label", [])
    with pytest.raises(DatasetError, match=r"h\.csv: no data rows"):
        read_zero_shot_csv(tmp_path / "h.csv", classes)
    write_csv(tmp_path / "m.csv", "file,label", ["a.png,0"])
    with pytest.raises(DatasetError, match=r"m\.csv: missing column\(s\) 'filename' \(columns found: 'file', 'label'"):
        read_zero_shot_csv(tmp_path / "m.csv", classes)
    write_csv(tmp_path / "n.csv", "filename,label,class_name", ["a.png,0,alpha", "b.png,1,gamma"])
    with pytest.raises(DatasetError, match=r"n\.csv, line 3: class_name 'gamma' but label 1 is 'beta'.*disagree"):
        read_zero_shot_csv(tmp_path / "n.csv", classes)
    write_csv(tmp_path / "f.csv", "filename,label", ["a.png,0", "b.png,1,extra"])
    with pytest.raises(DatasetError, match=r"f\.csv, line 3: 3 fields"):
        read_zero_shot_csv(tmp_path / "f.csv", classes)
    write_csv(tmp_path / "u.csv", "filename,label", ["a.png,delta"])
    with pytest.raises(DatasetError, match=r"u\.csv, line 2: label 'delta'"):
        read_zero_shot_csv(tmp_path / "u.csv", classes)
    with pytest.raises(DatasetError, match=r"nothere\.csv: file not found"):
        read_zero_shot_csv(tmp_path / "nothere.csv", classes)


def test_zero_shot_reader_accepts_names_floats_and_roots(tmp_path):
    p = write_csv(tmp_path / "sub" / "t.csv", "\ufefffilename,label",
                  ["x/a.png,2", "b.png,Beta", "c.png,1.0", "/abs/d.png,0"])
    ds = read_zero_shot_csv(p, ["alpha", "beta", "gamma"])
    assert ds.labels.tolist() == [2, 1, 1, 0]
    assert ds.paths[0] == tmp_path / "sub" / "x" / "a.png" and ds.paths[3] == Path("/abs/d.png")
    assert read_zero_shot_csv(p, ["alpha", "beta", "gamma"], image_root="/r").paths[1] == Path("/r/b.png")
    assert ds.lines == [2, 3, 4, 5]


def test_concept_reader_errors_and_name_matching(tmp_path):
    d = tmp_path / "sc"
    write_csv(d / "meta.csv", "ImageID,Papule,Plaque", ["a.png,1,0", "b.png,2,1"])
    (d / "concept_list.txt").write_text("papule\nplaque\n")
    with pytest.raises(DatasetError, match=r"meta\.csv, line 3: column 'Papule' of b\.png is '2'; expected 0 or 1"):
        read_concept_set(d)
    write_csv(d / "meta.csv", "ImageID,Papule,Plaque", ["a.png,1,0", "a.png,0,1"])
    with pytest.raises(DatasetError, match=r"line 3: ImageID 'a\.png' repeats line 2"):
        read_concept_set(d)
    write_csv(d / "meta.csv", "Image,Papule", ["a.png,1"])
    with pytest.raises(DatasetError, match=r"meta\.csv: missing column\(s\) 'ImageID'"):
        read_concept_set(d)
    write_csv(d / "meta.csv", "ImageID,Plaque,Papule", ["a.png,1,0", "b.png,0,1"])
    (d / "concept_list.txt").write_text("papule,plaque,nodule")  # one comma-separated line
    cs = read_concept_set(d)
    assert cs.concepts == ["papule", "plaque"] and cs.columns == ["Papule", "Plaque"] and cs.unmatched == ["nodule"]
    assert cs.labels.tolist() == [[0, 1], [1, 0]]  # by name, not by position
    (d / "concept_list.txt").unlink()
    with pytest.raises(DatasetError, match=r"concept_list\.txt: file not found"):
        read_concept_set(d)
    assert read_concept_set(d, concept_list=None).columns == ["Plaque", "Papule"]


def test_retrieval_reader(tmp_path):
    p = write_csv(tmp_path / "r.csv", "filename,caption_zh_polish_en,other",
                  ["a.png,first of a,x", "b.png,only b,y", 'a.png,"second, of a",z'])
    rs = read_retrieval_csv(p)
    assert rs.caption_column == "caption_zh_polish_en"
    assert rs.filenames == ["a.png", "b.png"] and rs.text_to_image.tolist() == [0, 1, 0]
    assert rs.captions[2] == "second, of a"
    with pytest.raises(DatasetError, match=r"r\.csv: missing column 'caption' \(columns found"):
        read_retrieval_csv(p, caption_column="caption")
    write_csv(tmp_path / "e.csv", "filename,caption", ["a.png,ok", "b.png,  "])
    with pytest.raises(DatasetError, match=r"e\.csv, line 3: empty caption"):
        read_retrieval_csv(tmp_path / "e.csv")
    write_csv(tmp_path / "n.csv", "filename,text", ["a.png,ok"])
    with pytest.raises(DatasetError, match=r"n\.csv: no caption column"):
        read_retrieval_csv(tmp_path / "n.csv")


# ---------------------------------------------------------------------------------------------- zero-shot (fake)

CLASSES = ["alpha", "beta", "gamma"]
# (label, predicted class, runner-up class) of 12 images
ZS_DESIGN = [(0, 0, 1), (0, 0, 2), (0, 1, 0), (0, 2, 1), (1, 1, 2), (1, 1, 0), (1, 0, 1), (2, 2, 0), (2, 2, 1),
             (2, 2, 0), (2, 0, 1), (2, 1, 2)]


def class_text_fn(t: str) -> np.ndarray:
    """Prompt of class c → 3·e_c plus a small prompt-specific vector in dims 3..7 (so averaging matters)."""
    c = next(i for i, n in enumerate(CLASSES) if n in t)
    v = 3.0 * e(c)
    v[3:] = rand_vec(t, 5, 0.1)
    return v


def zero_shot_fixture(tmp_path: Path, bad: bool = True):
    table, rows = {}, []
    for i, (label, pred, second) in enumerate(ZS_DESIGN):
        red = 10 * i + 10
        table[red] = 0.8 * e(pred) + 0.6 * e(second)
        solid(tmp_path / "images" / f"{i}.png", red)
        rows.append(f"images/{i}.png,{label}")
    if bad:
        rows.insert(3, "images/missing.png,1")
        truncated_png(tmp_path / "images" / "broken.png")
        rows.insert(8, "images/broken.png,2")
    (tmp_path / "classes.json").write_text(json.dumps({"classnames": CLASSES, "num_classes": 3}))
    return write_csv(tmp_path / "test.csv", "filename,label", rows), FakeEncoder(table, class_text_fn)


def test_zero_shot_fake_encoder_exact_metrics_and_skipped_files(tmp_path):
    csv_path, enc = zero_shot_fixture(tmp_path)
    r = run_task(enc, "zero_shot", csv=str(csv_path), classes=str(tmp_path / "classes.json"), topk=(1, 2),
                 workers=3, progress=False, save_predictions=True)
    m = r["metrics"]
    # by design: 7 of 12 predicted right; 3 more have the label as runner-up
    assert m["top1"] == pytest.approx(7 / 12) and m["top2"] == pytest.approx(10 / 12)
    assert m["num_correct"] == 7
    # recall per class: 2/4, 2/3, 3/5
    assert [c["accuracy"] for c in m["per_class"]] == pytest.approx([0.5, 2 / 3, 0.6])
    assert m["balanced_accuracy"] == pytest.approx((0.5 + 2 / 3 + 0.6) / 3)
    assert m["confusion_matrix"].tolist() == [[2, 1, 1], [1, 2, 0], [1, 1, 3]]
    # the bad files: reported with their reasons and CSV lines, left out of every metric
    sk = r["skipped_images"]
    assert sk["count"] == 2
    by_name = {Path(f["path"]).name: f for f in sk["files"]}
    assert by_name["missing.png"]["reason"] == "file not found" and by_name["missing.png"]["line"] == 5
    assert by_name["broken.png"]["line"] == 10 and "missing.png" not in by_name["broken.png"]["reason"]
    assert r["dataset"]["rows"] == 14 and r["dataset"]["evaluated"] == 12
    assert r["prompts"]["templates"] == TEMPLATES and r["prompts"]["classnames"] == CLASSES
    assert max(enc.image_calls) == enc.batch_size  # fixed batches, last one partial
    assert sum(enc.image_calls) == 12

    # macro AUROC: brute-force pairs on softmax(100·image·class) built here straight from the spec
    cls = np.stack([unit(np.mean([unit(class_text_fn(t.format(c))) for t in TEMPLATES], axis=0)) for c in CLASSES])
    img = np.stack([unit(0.8 * e(p) + 0.6 * e(s)) for _, p, s in ZS_DESIGN])
    logits = 100 * img @ cls.T
    probs = np.exp(logits - logits.max(1, keepdims=True))
    probs /= probs.sum(1, keepdims=True)
    labels = [lab for lab, _, _ in ZS_DESIGN]
    aucs = [brute_auroc([int(y == k) for y in labels], probs[:, k].tolist()) for k in range(3)]
    assert m["macro_auroc_ovr"] == pytest.approx(np.mean(aucs), abs=1e-9)
    assert [p["topk"][0] for p in r["predictions"]] == [p for _, p, _ in ZS_DESIGN]
    np.testing.assert_allclose([p["probs"][0] for p in r["predictions"]], probs.max(1), rtol=1e-5)


def test_class_embeddings_average_of_normalised_templates():
    enc = FakeEncoder({}, lambda t: rand_vec(t, 6) * (1 + len(t)))  # unnormalised, length-dependent norms
    names = ["nevus", "melanoma", "acne"]
    got = class_embeddings(enc, names, TEMPLATES)
    for i, c in enumerate(names):
        acc = np.zeros(6)
        for t in TEMPLATES:
            v = rand_vec(t.format(c), 6) * (1 + len(t.format(c)))
            acc += v / np.linalg.norm(v)
        np.testing.assert_allclose(got[i], acc / np.linalg.norm(acc), atol=1e-6)


def test_many_images_with_bad_files_are_skipped_and_counted(tmp_path):
    """40 good images and 5 bad ones of different kinds, 4 decoding threads: the result equals the run on the
    good images alone, and every bad file is named with its reason; --strict stops at the first."""
    rng = np.random.default_rng(0)
    table, rows, good_rows = {}, [], []
    for i in range(40):
        red = 5 + 6 * i
        table[red] = rng.normal(size=8)
        solid(tmp_path / "img" / f"{i}.png", red)
        rows.append(f"img/{i}.png,{i % 3}")
    good_rows = list(rows)
    (tmp_path / "img" / "empty.png").write_bytes(b"")
    (tmp_path / "img" / "text.png").write_text("hello")
    truncated_png(tmp_path / "img" / "cut.png")
    (tmp_path / "img" / "adir.png").mkdir()
    bad = ["missing.png", "empty.png", "text.png", "cut.png", "adir.png"]
    for j, b in enumerate(bad):
        rows.insert(7 * j + 3, f"img/{b},{j % 3}")
    all_csv = write_csv(tmp_path / "all.csv", "filename,label", rows)
    good_csv = write_csv(tmp_path / "good.csv", "filename,label", good_rows)
    enc = FakeEncoder(table, lambda t: rand_vec(t, 8), batch_size=8)
    kw = dict(classes="PAD", topk=(1, 3), workers=4, progress=False, save_predictions=True)
    r_all = run_task(enc, "zero_shot", csv=str(all_csv), **kw)
    r_good = run_task(enc, "zero_shot", csv=str(good_csv), **kw)
    assert r_all["skipped_images"]["count"] == 5
    assert sorted(Path(f["path"]).name for f in r_all["skipped_images"]["files"]) == sorted(bad)
    reasons = {Path(f["path"]).name: f["reason"] for f in r_all["skipped_images"]["files"]}
    assert reasons["missing.png"] == "file not found" and reasons["adir.png"] == "is a directory"
    assert "cannot identify" in reasons["text.png"] and "cannot identify" in reasons["empty.png"]
    assert r_all["dataset"]["evaluated"] == 40 and r_all["dataset"]["rows"] == 45
    assert r_all["metrics"]["top1"] == r_good["metrics"]["top1"]
    assert r_all["metrics"]["confusion_matrix"].tolist() == r_good["metrics"]["confusion_matrix"].tolist()
    assert r_all["predictions"] == r_good["predictions"]
    with pytest.raises(OSError, match=r"missing\.png.*file not found"):
        run_task(enc, "zero_shot", csv=str(all_csv), classes="PAD", progress=False, strict=True)


def test_wrong_image_root_fails_fast(tmp_path):
    csv_path, enc = zero_shot_fixture(tmp_path, bad=False)
    with pytest.raises(FileNotFoundError, match=r"first 12 images are all missing .*is the image root right"):
        run_task(enc, "zero_shot", csv=str(csv_path), classes=str(tmp_path / "classes.json"),
                 image_root=str(tmp_path / "wrong"), progress=False)


# ---------------------------------------------------------------------------------------------- concepts (fake)


def concept_scores_loop(img, text_vec, synonyms, templates, refs, scale):
    """score(image, concept) = mean_k softmax(scale·[a_k, r_k])[0], written out image by image."""
    out = []
    for x in img:
        x = unit(x)
        ps = []
        for tmpl, ref_list in zip(templates, refs):
            a = np.mean([x @ unit(text_vec(tmpl.format(s))) for s in synonyms])
            r = np.mean([x @ unit(text_vec(q)) for q in ref_list])
            ps.append(math.exp(scale * a) / (math.exp(scale * a) + math.exp(scale * r)))
        out.append(np.mean(ps))
    return np.array(out)


def test_concepts_fake_encoder_scores_names_and_exclusions(tmp_path):
    d, n, dim = tmp_path / "skincon", 14, 64
    rng = np.random.default_rng(1)
    img_vecs = {10 + 10 * i: rng.normal(size=dim) for i in range(n)}
    text_vec = lambda t: rand_vec(t, dim)  # noqa: E731
    terms = {"papule": ["papular", "bump"], "plaque": ["plaque"], "scale": ["scaly"], "unused": ["x"]}
    (tmp_path / "terms.json").write_text(json.dumps(terms))
    templates, refs = load_concept_prompts()
    ordered = [img_vecs[10 + 10 * i] for i in range(n)]
    s_pap = concept_scores_loop(ordered, text_vec, terms["papule"], templates, refs, CONCEPT_SCALE)
    s_pla = concept_scores_loop(ordered, text_vec, terms["plaque"], templates, refs, CONCEPT_SCALE)
    assert len(set(s_pap.tolist())) == n and len(set(s_pla.tolist())) == n  # precondition: no ties
    y_pap = (s_pap > np.median(s_pap)).astype(int)  # perfectly ranked by the papule score → AUROC 1
    y_pla = (s_pla < np.median(s_pla)).astype(int)  # reversed → AUROC 0
    rows = []
    for i in range(n):
        solid(d / "final_images" / f"im{i}.png", 10 + 10 * i)
        rows.append(f"im{i}.png,{y_pla[i]},1,{i % 2},{y_pap[i]}")
    rows.append("gone.png,1,1,0,0")  # missing image: skipped, its labels unused
    # columns in another order and case than concept_list.txt: matching must be by name
    write_csv(d / "meta.csv", "ImageID,PLAQUE,Scale,crust,Papule", rows)
    (d / "concept_list.txt").write_text("papule\nplaque\nscale\ncrust\nghost\n")
    enc = FakeEncoder(img_vecs, text_vec, batch_size=4)
    r = run_task(enc, "concepts", data_dir=str(d), concept_terms=str(tmp_path / "terms.json"), progress=False,
                 save_scores=True)
    per = {p["concept"]: p for p in r["metrics"]["per_concept"]}
    assert set(per) == {"papule", "plaque"}
    assert per["papule"]["auroc"] == 1.0 and per["plaque"]["auroc"] == 0.0
    assert per["papule"]["column"] == "Papule" and per["plaque"]["column"] == "PLAQUE"
    assert r["metrics"]["mean_auroc"] == 0.5 and r["metrics"]["num_concepts"] == 2
    np.testing.assert_allclose(r["scores"]["papule"], s_pap, rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(r["scores"]["plaque"], s_pla, rtol=1e-6, atol=1e-9)
    reasons = {x["concept"]: x["reason"] for x in r["excluded"]}
    assert set(reasons) == {"scale", "crust", "ghost"}
    assert "no column" in reasons["ghost"] and "no synonyms" in reasons["crust"]
    assert "14 positive of 14" in reasons["scale"]
    assert r["skipped_images"]["count"] == 1 and r["skipped_images"]["files"][0]["path"].endswith("gone.png")
    assert r["dataset"]["evaluated"] == n


def test_concept_scores_against_loop_with_several_references(tmp_path):
    """Reference lists of two prompts each (mean over them) and a custom scale, via evaluate_concepts."""
    d, n, dim = tmp_path / "d7", 9, 16
    rng = np.random.default_rng(5)
    img_vecs = {20 + 20 * i: rng.normal(size=dim) for i in range(n)}
    text_vec = lambda t: rand_vec(t, dim) * 3  # noqa: E731
    templates = ["photo of {}", "{} seen"]
    refs = [["photo", "a photo"], ["seen", "it is seen"]]
    rows = [f"{i}.png,{i % 2},{int(i < 4)}" for i in range(n)]
    for i in range(n):
        solid(d / "final_images" / f"{i}.png", 20 + 20 * i)
    write_csv(d / "meta.csv", "ImageID,streaks,pigment network", rows)
    cs = read_concept_set(d, concept_list=None)
    terms = {"streaks": ["streaks", "radial streaming"], "pigment network": ["pigment network"]}
    r = evaluate_concepts(FakeEncoder(img_vecs, text_vec), cs, terms, (templates, refs), scale=7.0,
                          progress=False, save_scores=True, bootstrap=200, bootstrap_seed=3)
    ordered = [img_vecs[20 + 20 * i] for i in range(n)]
    for j, c in enumerate(["streaks", "pigment network"]):
        expected = concept_scores_loop(ordered, text_vec, terms[c], templates, refs, 7.0)
        np.testing.assert_allclose(r["scores"][c], expected, rtol=1e-6)
        y = [int(row.split(",")[j + 1]) for row in rows]
        got = next(p for p in r["metrics"]["per_concept"] if p["concept"] == c)["auroc"]
        assert got == pytest.approx(brute_auroc(y, expected.tolist()))
    # bootstrap interval of the mean AUROC: the same draws, sklearn's AUROC, concepts lacking a class skipped
    from sklearn.metrics import roc_auc_score

    s_all = np.stack([r["scores"][c] for c in ["streaks", "pigment network"]], 1)
    y_all = np.array([[int(x) for x in row.split(",")[1:]] for row in rows])
    draws, g = [], np.random.default_rng(3)
    for _ in range(200):
        i = g.integers(0, n, n)
        aucs = [roc_auc_score(y_all[i, j], s_all[i, j]) for j in range(2) if 0 < y_all[i, j].sum() < n]
        if aucs:
            draws.append(np.mean(aucs))
    assert r["ci95"]["mean_auroc"]["replicates"] == len(draws)
    assert r["ci95"]["mean_auroc"]["low"] == pytest.approx(np.percentile(draws, 2.5), abs=1e-9)
    assert r["ci95"]["mean_auroc"]["high"] == pytest.approx(np.percentile(draws, 97.5), abs=1e-9)


# ---------------------------------------------------------------------------------------------- retrieval (fake)


def test_retrieval_fake_encoder_exact_recall_and_ranks(tmp_path):
    img_table = {10 * (i + 1): e(i) for i in range(5)}
    caps = {  # caption → embedding; scores worked out in the comments below
        "cap zero a": e(0),
        "cap zero b": unit(e(3) + 0.5 * e(0)),
        "cap one": e(1),
        "cap two": unit(e(0) + 0.5 * e(2)),
        "cap three": unit(e(3) + 0.3 * e(1)),
        "cap four": unit(e(2) + 0.25 * e(4)),
        "cap five": e(5),
    }
    rows = ["i0.png,cap zero a", "i0.png,cap zero b", "i1.png,cap one", "i2.png,cap two", "i3.png,cap three",
            "i4.png,cap four", "i5.png,cap five"]  # i5.png is never written: skipped with its caption
    for i in range(5):
        solid(tmp_path / f"i{i}.png", 10 * (i + 1))
    csv_path = write_csv(tmp_path / "r.csv", "filename,caption", rows)
    r = run_task(FakeEncoder(img_table, lambda t: caps[t]), "retrieval", csv=str(csv_path), ks=(1, 2, 5),
                 progress=False)
    i2t, t2i = r["metrics"]["image_to_text"], r["metrics"]["text_to_image"]
    # image→text, 0-based rank of the best own caption: i0 0 ("cap zero a" = 1.0), i1 0, i2 1 ("cap four" .97
    # beats its own "cap two" .447), i3 0 ("cap three" .958 > "cap zero b" .894), i4 0
    assert i2t == {"R@1": 0.8, "R@2": 1.0, "R@5": 1.0, "mean_rank": 1.2, "median_rank": 1.0}
    # text→image: zero a 0, zero b 1 (i3 .894 > i0 .447), one 0, two 1 (i0 > i2), three 0, four 1 (i2 > i4)
    assert t2i == {"R@1": 0.5, "R@2": 1.0, "R@5": 1.0, "mean_rank": 1.5, "median_rank": 1.5}
    ds = r["dataset"]
    assert ds["images"] == 6 and ds["evaluated_images"] == 5 and ds["captions"] == 7
    assert ds["evaluated_captions"] == 6 and ds["captions_dropped_with_their_image"] == 1
    assert ds["captions_per_image"] == {"min": 1, "max": 2, "mean": 1.2}
    assert r["skipped_images"]["count"] == 1 and r["skipped_images"]["files"][0]["path"].endswith("i5.png")


def test_infer_fake_encoder_topk(tmp_path):
    table = {10: unit(0.8 * e(1) + 0.6 * e(2)), 20: e(0)}
    solid(tmp_path / "pics" / "a.png", 10)
    solid(tmp_path / "pics" / "b.jpg", 20)
    (tmp_path / "pics" / "notes.txt").write_text("not an image")
    (tmp_path / "classes.txt").write_text("\n".join(CLASSES))
    r = run_task(FakeEncoder(table, class_text_fn), "infer", images=str(tmp_path / "pics"),
                 classes=str(tmp_path / "classes.txt"), topk=2, progress=False)
    preds = {Path(p["path"]).name: p["top"] for p in r["predictions"]}
    assert set(preds) == {"a.png", "b.jpg"}
    assert [t["name"] for t in preds["a.png"]] == ["beta", "gamma"]
    # b.jpg = e_0: beta and gamma both score exactly 0 → the tie goes to the lower index
    assert [t["name"] for t in preds["b.jpg"]] == ["alpha", "beta"]
    cls = np.stack([unit(np.mean([unit(class_text_fn(t.format(c))) for t in TEMPLATES], axis=0)) for c in CLASSES])
    logits = 100 * table[10] @ cls.T
    p = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
    assert preds["a.png"][0]["prob"] == pytest.approx(p[1], rel=1e-5)
    assert preds["a.png"][1]["prob"] == pytest.approx(p[2], rel=1e-5)


def test_registry_lists_tasks_and_rejects_unknown_options():
    assert {"zero_shot", "concepts", "retrieval", "infer"} <= set(registry.names())
    with pytest.raises(TypeError, match="unknown option"):
        run_task(None, "retrieval", csv="x.csv", classes="PAD")
    with pytest.raises(TypeError, match="missing required option"):
        run_task(None, "zero_shot", csv="x.csv")
    with pytest.raises(KeyError, match="unknown evaluation task"):
        registry.get("segmentation")


# ---------------------------------------------------------------------------------------------- tiny checkpoint


def _random_tiny_checkpoint(path: Path) -> Path:
    """A tiny-preset checkpoint with random numpy weights (fast: no model initialisation)."""
    from make_jax.checkpoint import save_checkpoint
    from make_jax.checkpoint.open_clip_layout import param_tree_shapes
    from make_jax.models import get_model_config

    cfg = get_model_config("tiny")
    rng = np.random.default_rng(0)
    tree: dict = {}
    for key, shape in param_tree_shapes(cfg).items():
        leaf = key.rsplit(".", 1)[-1]
        if key == "logit_scale":
            v = np.asarray(math.log(1 / 0.07), np.float32)
        elif leaf == "scale":
            v = np.ones(shape, np.float32)
        elif leaf == "bias":
            v = np.zeros(shape, np.float32)
        else:
            v = (rng.standard_normal(shape) * 0.1).astype(np.float32)
        node = tree
        *parents, last = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[last] = v
    return save_checkpoint(path, tree, cfg)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """(checkpoint dir, encoder loaded from it with batch size 4, data root with the three layouts)."""
    import make_jax

    root = tmp_path_factory.mktemp("eval_e2e")
    ckpt = _random_tiny_checkpoint(root / "ckpt")
    rng = np.random.default_rng(2)

    def photo(path, h, w):
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path)

    zs_rows = []
    for i in range(9):  # 9 images at batch size 4: two full batches and a padded one
        photo(root / "zs" / "images" / f"z{i}.png", 30 + 3 * i, 44 - 2 * i)
        zs_rows.append(f"images/z{i}.png,{i % 6}")
    (root / "zs" / "images" / "bad.png").write_text("corrupt")
    zs_rows.insert(4, "images/bad.png,3")
    write_csv(root / "zs" / "test.csv", "filename,label", zs_rows)
    sc_rows = []
    for i in range(7):
        photo(root / "sc" / "final_images" / f"s{i}.jpg", 36, 36 + i)
        sc_rows.append(f"s{i}.jpg,{int(i in (1, 4, 5))},{i % 2},1")
    write_csv(root / "sc" / "meta.csv", "ImageID,Papule,erythema,Scale", sc_rows)
    (root / "sc" / "concept_list.txt").write_text("erythema\npapule\nscale\n")
    rt_rows = []
    for i in range(6):
        photo(root / "rt" / f"r{i}.png", 40, 33)
        rt_rows.append(f"r{i}.png,a lesion number {i} with scale")
        if i % 3 == 0:
            rt_rows.append(f'r{i}.png,"another view of lesion {i}, red"')
    write_csv(root / "rt" / "rt.csv", "filename,caption", rt_rows)
    return ckpt, make_jax.load(ckpt, batch_size=4), root


def _softmax(x):
    z = np.exp(x - x.max(axis=-1, keepdims=True))
    return z / z.sum(axis=-1, keepdims=True)


def test_cli_config_runs_all_tasks_matching_independent_numpy(tiny, tmp_path):
    """One `--config` call over the three layouts; each headline number recomputed here from embeddings the
    loaded encoder gives for the PIL images and the prompt strings, with loops from the spec's formulas."""
    ckpt, enc, root = tiny
    cfg = tmp_path / "eval_test.py"
    cfg.write_text(
        "import ml_collections\n"
        "def get_config(root):\n"
        "    c = ml_collections.ConfigDict()\n"
        "    c.batch_size = 4\n"
        "    c.evals = ml_collections.ConfigDict(dict(\n"
        "        zs=dict(task='zero_shot', csv=root + '/zs/test.csv', classes='PAD', topk=(1, 5), save_predictions=True),\n"
        "        sc=dict(task='concepts', data_dir=root + '/sc', save_scores=True),\n"
        "        rt=dict(task='retrieval', csv=root + '/rt/rt.csv', ks=(1, 2, 5)),\n"
        "        broken=dict(task='zero_shot', csv=root + '/nothere.csv', classes='PAD')), sort_keys=False)\n"
        "    return c\n")
    out = tmp_path / "res" / "all.json"
    rc = main(["--checkpoint", str(ckpt), "--config", f"{cfg}:{root}", "--out", str(out), "--no-progress"])
    assert rc == 1  # one set failed (its CSV is missing); the other three ran
    res = json.loads(out.read_text())
    assert res["checkpoint"] == str(Path(ckpt).absolute()) and res["batch_size"] == 4
    by = {r["name"]: r for r in res["results"]}
    assert "nothere.csv: file not found" in by["broken"]["error"]

    # zero-shot
    zs = by["zs"]
    names = list(load_classnames("PAD"))
    files = [f"z{i}.png" for i in range(9)]
    img = enc.encode_image([Image.open(root / "zs" / "images" / f) for f in files])
    cls = []
    for c in names:
        t = enc.encode_text([tm.format(c) for tm in TEMPLATES])
        t = t / np.linalg.norm(t, axis=1, keepdims=True)
        cls.append(t.mean(0) / np.linalg.norm(t.mean(0)))
    logits = 100 * img @ np.stack(cls).T
    labels = np.arange(9) % 6
    pred = logits.argmax(1)
    assert [p["topk"][0] for p in zs["predictions"]] == pred.tolist()
    np.testing.assert_allclose([p["probs"] for p in zs["predictions"]],
                               np.sort(_softmax(logits), axis=1)[:, ::-1][:, :5], atol=1e-5)
    assert zs["metrics"]["top1"] == pytest.approx(np.mean(pred == labels))
    top5 = [labels[i] in np.argsort(-logits[i])[:5] for i in range(9)]
    assert zs["metrics"]["top5"] == pytest.approx(np.mean(top5))
    cm = np.zeros((6, 6), int)
    for a, b in zip(labels, pred):
        cm[a, b] += 1
    assert zs["metrics"]["confusion_matrix"] == cm.tolist()
    assert zs["skipped_images"]["count"] == 1 and zs["skipped_images"]["files"][0]["line"] == 6
    assert zs["dataset"]["rows"] == 10 and zs["dataset"]["evaluated"] == 9
    assert zs["dataset"]["csv"] == str(root / "zs" / "test.csv")
    assert zs["prompts"]["templates"] == TEMPLATES and zs["prompts"]["classnames"] == names
    assert zs["timing"]["images_per_second"] > 0

    # concepts
    sc = by["sc"]
    terms = json.loads((RES / "ConceptTerms.json").read_text())
    templates, refs = load_concept_prompts()
    cimg = enc.encode_image([Image.open(root / "sc" / "final_images" / f"s{i}.jpg") for i in range(7)])
    text_cache = {}

    def text_vec(t):
        if t not in text_cache:
            text_cache[t] = enc.encode_text([t])[0].astype(np.float64)
        return text_cache[t]

    meta = {"papule": [int(i in (1, 4, 5)) for i in range(7)], "erythema": [i % 2 for i in range(7)]}
    per = {p["concept"]: p for p in sc["metrics"]["per_concept"]}
    assert set(per) == {"papule", "erythema"}
    for c in ("papule", "erythema"):
        expected = concept_scores_loop(cimg, text_vec, terms[c], templates, refs, CONCEPT_SCALE)
        np.testing.assert_allclose(sc["scores"][c], expected, rtol=1e-4, atol=1e-6)
        assert per[c]["auroc"] == pytest.approx(brute_auroc(meta[c], sc["scores"][c]))
    assert sc["metrics"]["mean_auroc"] == pytest.approx(np.mean([per[c]["auroc"] for c in per]))
    assert [x["concept"] for x in sc["excluded"]] == ["scale"]

    # retrieval, recall by an explicit loop over the similarity rows
    rt = by["rt"]
    rows = [ln.split(",", 1) for ln in (root / "rt" / "rt.csv").read_text().splitlines()[1:]]
    caps = [c.strip('"') for _, c in rows]
    owner = [int(f[1:-4]) for f, _ in rows]
    rimg = enc.encode_image([Image.open(root / "rt" / f"r{i}.png") for i in range(6)])
    rtxt = enc.encode_text(caps)
    sims = rimg @ rtxt.T
    i2t = [next(k for k, j in enumerate(sorted(range(len(caps)), key=lambda j: (-sims[i, j], j))) if owner[j] == i)
           for i in range(6)]
    t2i = [sorted(range(6), key=lambda i: (-sims[i, t], i)).index(owner[t]) for t in range(len(caps))]
    for k in (1, 2, 5):
        assert rt["metrics"]["image_to_text"][f"R@{k}"] == pytest.approx(np.mean(np.array(i2t) < k))
        assert rt["metrics"]["text_to_image"][f"R@{k}"] == pytest.approx(np.mean(np.array(t2i) < k))
    assert rt["metrics"]["text_to_image"]["mean_rank"] == pytest.approx(np.mean(t2i) + 1)
    assert rt["dataset"]["captions"] == 8 and rt["dataset"]["images"] == 6
    assert [s["name"] for s in res["summary"]] == ["zs", "sc", "rt", "broken"]


def test_cli_single_task_json_and_infer(tiny, tmp_path, capsys):
    ckpt, enc, root = tiny
    out = tmp_path / "zs.json"
    rc = main(["--checkpoint", str(ckpt), "--task", "zero_shot", "--csv", str(root / "zs" / "test.csv"),
               "--classes", "PAD", "--batch-size", "4", "--out", str(out), "--no-progress", "--name", "PAD-tiny"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "zero-shot PAD-tiny: 9/10 images, 6 classes" in printed and "skipped 1" in printed
    r = json.loads(out.read_text())
    assert r["task"] == "zero_shot" and r["name"] == "PAD-tiny" and r["checkpoint"] == str(Path(ckpt).absolute())
    assert Path(r["skipped_images"]["files"][0]["path"]).name == "bad.png"
    assert r["dataset"]["class_list"] == "PAD" and len(r["metrics"]["per_class"]) == 6
    assert sum(c["support"] for c in r["metrics"]["per_class"]) == 9

    # infer on a folder (in process, with the loaded encoder): the top class is the argmax of 100·cos
    res = run_task(enc, "infer", images=str(root / "zs" / "images"), classes="PAD", topk=3, progress=False)
    names = list(load_classnames("PAD"))
    got = {Path(p["path"]).name: p["top"] for p in res["predictions"]}
    assert set(got) == {f"z{i}.png" for i in range(9)} and res["skipped_images"]["count"] == 1
    cls = []
    for c in names:
        t = enc.encode_text([tm.format(c) for tm in TEMPLATES])
        cls.append(t.mean(0) / np.linalg.norm(t.mean(0)))
    probs = _softmax(100 * enc.encode_image([Image.open(root / "zs" / "images" / "z3.png")]) @ np.stack(cls).T)[0]
    assert [t["class"] for t in got["z3.png"]] == np.argsort(-probs)[:3].tolist()
    np.testing.assert_allclose([t["prob"] for t in got["z3.png"]], np.sort(probs)[::-1][:3], atol=1e-5)


def test_cli_bad_input_messages(tiny, tmp_path, capsys):
    ckpt, _, root = tiny
    bad = write_csv(tmp_path / "labels.csv", "filename,label", ["images/z0.png,0", "images/z1.png,6"])
    rc = main(["--checkpoint", str(ckpt), "--task", "zero_shot", "--csv", str(bad), "--classes", "PAD",
               "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2 and f"{bad}, line 3: label 6 of images/z1.png is outside the class list (6 classes" in err
    rc = main(["--checkpoint", str(ckpt), "--task", "retrieval", "--no-progress"])
    assert rc == 2 and "needs --csv" in capsys.readouterr().err
    rc = main(["--checkpoint", str(tmp_path / "nockpt"), "--task", "infer", "--images", str(root), "--classes", "PAD"])
    assert rc == 2 and "nockpt: no such file or directory, not hf-hub:ORG/NAME" in capsys.readouterr().err


def test_synthderm_output_through_the_eval_config(tiny, tmp_path):
    """SynthDerm's three evaluation layouts, read through configs/eval_synthderm.py and run with the tiny encoder."""
    from make_jax.synthderm import SynthDermConfig, generate

    _, enc, _ = tiny
    sd = tmp_path / "sd"
    generate(str(sd), SynthDermConfig(seed=3, num_train=4, num_val=2, num_zeroshot=32, num_concepts=24,
                                      num_retrieval=10, captions_per_image=2, image_size=32), progress=False)
    cfg = load_config(f"{Path(__file__).parents[1] / 'configs' / 'eval_synthderm.py'}:{sd}")
    results = {name: run_task(enc, e.pop("task"), progress=False, **{k: v for k, v in e.items() if k != "every"})
               for name, e in cfg["evals"].items()}
    zs = results["synthderm-zeroshot"]
    n_classes = len(json.loads((sd / "zeroshot" / "classnames.json").read_text())["classnames"])
    assert zs["dataset"]["evaluated"] == 32 and zs["dataset"]["num_classes"] == n_classes
    assert sum(c["support"] for c in zs["metrics"]["per_class"]) == 32
    sc = results["synthderm-concepts"]
    listed = [x for x in (sd / "skincon" / "concept_list.txt").read_text().splitlines() if x.strip()]
    assert sc["dataset"]["evaluated"] == 24 and listed
    assert sc["metrics"]["num_concepts"] + len(sc["excluded"]) == len(listed)
    assert sc["metrics"]["num_concepts"] > 0 and all(0.0 <= p["auroc"] <= 1.0 for p in sc["metrics"]["per_concept"])
    rt = results["synthderm-retrieval"]
    assert rt["dataset"]["images"] == 10 and rt["dataset"]["captions"] == 20
