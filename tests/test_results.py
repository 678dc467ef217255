"""Results people share: per-image CSV, bootstrap intervals, ROC points, merged tables and the HTML report —
checked against scikit-learn and numpy written here."""

from __future__ import annotations

import csv
import json
import re

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, f1_score, roc_auc_score, roc_curve

from make_jax.evaluate import metrics as M
from make_jax.evaluate.bootstrap import bootstrap_ci
from make_jax.evaluate.per_image import read_predictions_csv, write_predictions_csv
from make_jax.report import build_report, plots
from make_jax.report.merge import main as merge_main

NAMES = ["melanoma", "nevus", "basal cell carcinoma", "eczema"]


def fake(n=120, k=4, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, n)
    return y, M.softmax(rng.standard_normal((n, k)) + 1.5 * np.eye(k)[y])


def test_bootstrap_equals_a_direct_resampling_with_sklearn():
    y, p = fake()
    ci = bootstrap_ci(lambda q, t: {"acc": M.classification_metrics(q, t, 4)["accuracy"],
                                    "f1": M.classification_metrics(q, t, 4)["macro_f1"]}, y, p, n=200, seed=7)
    rng = np.random.default_rng(7)
    acc, f1 = [], []
    for _ in range(200):
        i = rng.integers(0, len(y), len(y))
        acc.append(accuracy_score(y[i], p[i].argmax(1)))
        f1.append(f1_score(y[i], p[i].argmax(1), average="macro"))
    assert ci["acc"]["low"] == pytest.approx(np.percentile(acc, 2.5), abs=1e-12)
    assert ci["acc"]["high"] == pytest.approx(np.percentile(acc, 97.5), abs=1e-12)
    assert ci["f1"]["low"] == pytest.approx(np.percentile(f1, 2.5), abs=1e-12)
    other = bootstrap_ci(lambda q, t: {"acc": float(np.mean(q.argmax(1) == t))}, y, p, n=200, seed=8)
    assert other["acc"] != ci["acc"]


def test_predictions_csv_layout_and_round_trip(tmp_path):
    y, p = fake(n=5)
    path = write_predictions_csv(tmp_path / "pad.csv", [f"i{j}.jpg" for j in range(5)], y, p, NAMES)
    rows = list(csv.reader(open(path, newline="")))
    # DermFM-Zero's per-image layout (statistic_reproduce/examples/zero_shot/PAD/MAKE.csv), written out here
    assert rows[0] == ["image_path", "true_label", "predicted_label", "probability_class_0", "probability_class_1",
                       "probability_class_2", "probability_class_3"]
    for j, r in enumerate(rows[1:]):
        assert r[0] == f"i{j}.jpg" and int(r[1]) == y[j] and int(r[2]) == int(np.argmax(p[j]))
    files, y2, p2, names = read_predictions_csv(path)
    assert names == NAMES and np.array_equal(y2, y)
    np.testing.assert_allclose(p2, p, rtol=1e-7)
    (tmp_path / "pad.csv.classnames.json").unlink()  # a file from elsewhere, without names
    assert read_predictions_csv(path)[3] == ["class 0", "class 1", "class 2", "class 3"]


def test_roc_points_equal_sklearn_with_ties():
    rng = np.random.default_rng(1)
    pos = rng.random(300) < 0.3
    s = np.round(rng.random(300) + 0.3 * pos, 1)  # coarse scores: many ties
    fpr, tpr = plots.roc_curve(pos, s)
    rf, rt, _ = roc_curve(pos, s, drop_intermediate=False)
    np.testing.assert_allclose(fpr, rf, atol=1e-12)
    np.testing.assert_allclose(tpr, rt, atol=1e-12)
    assert np.trapezoid(tpr, fpr) == pytest.approx(roc_auc_score(pos, s), abs=1e-12)


def _result_files(tmp_path):
    a = {"checkpoint": "make", "task": "zero_shot", "name": "PAD",
         "metrics": {"top1": 0.59, "balanced_accuracy": 0.5, "num_correct": 3}, "ci95": {"top1": {"low": 0.5,
                                                                                                "high": 0.66}}}
    b = {"checkpoint": "dermlip-vit-b16", "config": "eval_paper", "results": [
        {"task": "retrieval", "name": "SkinCAP", "metrics": {"image_to_text": {"R@10": 0.2}, "text_to_image":
                                                            {"R@10": 0.19}}},
        {"task": "concepts", "name": "Derm7pt", "error": "files missing"}]}
    (tmp_path / "a.json").write_text(json.dumps(a))
    (tmp_path / "b.json").write_text(json.dumps(b))
    return tmp_path / "a.json", tmp_path / "b.json"


def test_merge_builds_one_table(tmp_path, capsys):
    a, b = _result_files(tmp_path)
    assert merge_main([str(a), str(b), "--out", str(tmp_path / "t")]) == 0
    rows = list(csv.DictReader(open(tmp_path / "t.csv", newline="")))
    assert [(r["model"], r["name"], r["task"]) for r in rows] == [
        ("make", "PAD", "zero_shot"), ("dermlip-vit-b16", "SkinCAP", "retrieval"),
        ("dermlip-vit-b16", "Derm7pt", "concepts")]
    assert rows[0]["top1"] == "0.59" and rows[0]["top1_ci_low"] == "0.5" and rows[0]["image_to_text.R@10"] == ""
    assert rows[1]["image_to_text.R@10"] == "0.2" and rows[2]["error"] == "files missing"
    assert "num_correct" not in rows[0]
    md = (tmp_path / "t.md").read_text().splitlines()
    assert md[0].startswith("| file | model | name | task |") and len(md) == 5
    capsys.readouterr()
    (tmp_path / "bad.json").write_text("{not json")
    assert merge_main([str(a), str(tmp_path / "bad.json"), "--out", str(tmp_path / "u")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "bad.json: not JSON" in err[0]


def test_report_page_is_self_contained_and_its_numbers_are_sklearns(tmp_path):
    y, p = fake(n=80)
    write_predictions_csv(tmp_path / "pad.predictions.csv", [f"{j}.png" for j in range(80)], y, p, NAMES)
    _result_files(tmp_path)
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text("".join(json.dumps({"step": s, "split": "train", "loss": 5 - s / 3,
                                                           "lr": 1e-3}) + "\n" for s in range(1, 8))
                                       + json.dumps({"step": 7, "split": "eval", "loss": 4.1}) + "\n")
    (tmp_path / "sweep.csv").write_text("row,loss,zero_shot_top1\nclip,3.1,0.41\nmake,3.5,\n")
    page = build_report(tmp_path, bootstrap=50).read_text()
    assert len(re.findall(r'src="data:image/png;base64,', page)) == 5  # ROC, confusion, per-class, curves, sweep
    assert "http://" not in page and "https://" not in page
    acc = re.search(r"<td>accuracy</td><td>([0-9.]+)</td>", page).group(1)
    assert float(acc) == pytest.approx(accuracy_score(y, p.argmax(1)), abs=5e-5)
    auc = re.search(r"<td>macro_auroc_ovr</td><td>([0-9.]+)</td>", page).group(1)
    assert float(auc) == pytest.approx(roc_auc_score(y, p, multi_class="ovr"), abs=5e-5)
    assert "<td>SkinCAP</td>" in page and "Ablation sweep" in page


def test_median_rank_convention_is_numpys_median_of_one_based_ranks():
    # docs/evaluation.md: make_jax reports median(rank0 + 1); open_clip floor(median(rank0)) + 1.
    even = np.array([0, 1])
    assert M.rank_summary(even)["median_rank"] == 1.5
    assert np.floor(np.median(even)) + 1 == 1.0  # open_clip's value for the same ranks
    odd = np.array([4, 0, 2])
    assert M.rank_summary(odd)["median_rank"] == 3.0 == np.floor(np.median(odd)) + 1
