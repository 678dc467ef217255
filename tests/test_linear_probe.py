"""Linear probe / few-shot: the classifier and every metric against scikit-learn on the same features, the
regularisation search against sklearn fits on the same grid, the sampling protocols, and the task end to end."""

from __future__ import annotations

import csv
import json
import warnings

import numpy as np
import pytest
from PIL import Image
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, balanced_accuracy_score, f1_score, roc_auc_score

from conftest import random_tiny_encoder
from make_jax.evaluate import logreg
from make_jax.evaluate import metrics as M
from make_jax.evaluate.datasets import DatasetError
from make_jax.evaluate.linear_probe import few_shot_indices, percent_indices
from make_jax.evaluate.per_image import read_predictions_csv
from make_jax.evaluate.registry import run_task


def blobs(n_per, k, d, seed, spread=1.5):
    rng = np.random.default_rng(seed)
    centers = spread * rng.standard_normal((k, d))
    y = np.repeat(np.arange(k), n_per)
    x = centers[y] + rng.standard_normal((len(y), d))
    return x, y


def sk_fit(x, y, C):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return LogisticRegression(C=C, tol=1e-10, max_iter=10000).fit(x, y)


@pytest.mark.parametrize("C", [0.01, 1.0, 100.0])
def test_fit_equals_sklearn_logistic_regression(C):
    x, y = blobs(30, 4, 6, seed=1)
    ours = logreg.fit(x, y, 4, C)
    ref = sk_fit(x, y, C)
    assert ours.converged
    xt, _ = blobs(10, 4, 6, seed=2)
    np.testing.assert_allclose(ours.predict_proba(xt), ref.predict_proba(xt), atol=2e-6)
    np.testing.assert_allclose(ours.coef, ref.coef_.T, atol=1e-4 * max(1.0, np.abs(ref.coef_).max()))


def test_c_search_picks_sklearns_best_validation_accuracy():
    x, y = blobs(12, 3, 5, seed=3, spread=0.6)
    xv, yv = blobs(15, 3, 5, seed=3, spread=0.6)  # same centres (same seed), new noise
    rng = np.random.default_rng(9)
    xv = xv + 0.8 * rng.standard_normal(xv.shape)
    best, path = logreg.select_c(x, y, xv, yv, 3)
    accs = {p["C"]: accuracy_score(yv, sk_fit(x, y, p["C"]).predict(xv)) for p in path}
    for p in path:
        assert p["val_accuracy"] == pytest.approx(accs[p["C"]], abs=1e-12), p["C"]
    top = max(accs.values())
    assert best == min(c for c, a in accs.items() if a == top)
    assert len(path) == len(logreg.C_GRID) + 8  # the coarse grid and 4 refined values on each side


def test_metrics_equal_sklearn():
    rng = np.random.default_rng(4)
    k = 5
    y = rng.integers(0, k, 200)
    y[:5] = np.arange(5)
    logits = rng.standard_normal((200, k)) + 1.2 * np.eye(k)[y]
    probs = M.softmax(logits)
    preds = probs.argmax(1)
    m = M.classification_metrics(probs, y, k)
    assert m["accuracy"] == pytest.approx(accuracy_score(y, preds), abs=1e-12)
    assert m["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(y, preds), abs=1e-12)
    assert m["macro_f1"] == pytest.approx(f1_score(y, preds, average="macro"), abs=1e-12)
    assert m["weighted_f1"] == pytest.approx(f1_score(y, preds, average="weighted"), abs=1e-12)
    assert m["macro_auroc_ovr"] == pytest.approx(roc_auc_score(y, probs, multi_class="ovr", average="macro"),
                                                 abs=1e-12)


def test_f1_with_a_class_never_predicted_and_one_never_true():
    y = np.array([0, 0, 1, 1, 2, 2])
    p = np.array([0, 3, 0, 0, 2, 2])  # class 1 never predicted, class 3 never true
    f = M.f1_scores(y, p, 5)
    for avg in ("macro", "weighted"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            assert f[avg] == pytest.approx(f1_score(y, p, average=avg), abs=1e-12)
    assert np.isnan(f["per_class"][4])


def test_few_shot_and_percent_sampling():
    y = np.array([0] * 10 + [1] * 3 + [2] * 20)
    a = few_shot_indices(y, 4, seed=0)
    assert np.bincount(y[a]).tolist() == [4, 3, 4]
    assert np.array_equal(a, few_shot_indices(y, 4, seed=0))
    assert not np.array_equal(a, few_shot_indices(y, 4, seed=1))
    b = percent_indices(y, 10, seed=0)
    assert np.bincount(y[b]).tolist() == [1, 1, 2]  # round(1.0), round(0.3) → at least 1, round(2.0)


# ---- the task end to end ------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_set(tmp_path_factory):
    """3 classes of noisy colour images; split column; a tiny random-init encoder."""
    root = tmp_path_factory.mktemp("lp")
    rng = np.random.default_rng(0)
    colours = np.array([[200, 40, 40], [40, 200, 40], [40, 40, 200]])
    rows = []
    for split, n in (("train", 6), ("val", 3), ("test", 4)):
        for c in range(3):
            for i in range(n):
                a = np.clip(colours[c] + rng.normal(0, 60, (20, 20, 3)), 0, 255).astype(np.uint8)
                name = f"{split}_{c}_{i}.png"
                Image.fromarray(a).save(root / name)
                rows.append({"filename": name, "label": str(c), "split": split})
    with open(root / "set.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["filename", "label", "split"])
        w.writeheader()
        w.writerows(rows)
    enc = random_tiny_encoder()
    return root, rows, enc


def _features(enc, root, rows, split):
    sel = [r for r in rows if r["split"] == split]
    x = enc.encode_image([Image.open(root / r["filename"]) for r in sel])
    return x.astype(np.float64), np.array([int(r["label"]) for r in sel])


def test_task_full_data_equals_sklearn_on_the_same_features(tiny_set):
    root, rows, enc = tiny_set
    r = run_task(enc, "linear_probe", csv=str(root / "set.csv"), progress=False, save_predictions=True,
                 predictions_csv=str(root / "out" / "lp.csv"), bootstrap=20)
    xtr, ytr = _features(enc, root, rows, "train")
    xva, yva = _features(enc, root, rows, "val")
    xte, yte = _features(enc, root, rows, "test")
    accs = {p["C"]: accuracy_score(yva, sk_fit(xtr, ytr, p["C"]).predict(xva)) for p in r["c_search"]}
    assert r["C"] == min(c for c, a in accs.items() if a == max(accs.values()))
    probs = sk_fit(xtr, ytr, r["C"]).predict_proba(xte)
    np.testing.assert_allclose(r["predictions"]["probs"], probs, atol=1e-5)
    assert r["metrics"]["accuracy"] == accuracy_score(yte, probs.argmax(1))
    assert r["metrics"]["macro_f1"] == pytest.approx(f1_score(yte, probs.argmax(1), average="macro"), abs=1e-9)
    assert r["dataset"]["splits"]["test"]["evaluated"] == 12 and r["dataset"]["validation"] == "given"
    files, labels, p_csv, names = read_predictions_csv(root / "out" / "lp.csv")
    assert names == ["0", "1", "2"] and np.array_equal(labels, yte)
    assert [f.rsplit("/", 1)[-1] for f in files] == [x["filename"] for x in rows if x["split"] == "test"]
    np.testing.assert_allclose(p_csv, probs, atol=1e-5)
    ci = r["ci95"]["accuracy"]
    assert ci["low"] <= r["metrics"]["accuracy"] <= ci["high"] and ci["replicates"] == 20


def test_task_few_shot_mean_and_std_over_seeds(tiny_set):
    root, rows, enc = tiny_set
    r = run_task(enc, "linear_probe", csv=str(root / "set.csv"), shots=[1, 4], seeds=[0, 1], progress=False)
    assert set(r["few_shot"]) == {"1", "4"}
    for s, v in r["few_shot"].items():
        runs = v["runs"]
        assert [x["train_size"] for x in runs] == [3 * int(s)] * 2
        for key in ("accuracy", "macro_f1", "macro_auroc_ovr"):
            vals = [x["metrics"][key] for x in runs]
            assert v["mean"][key] == pytest.approx(np.mean(vals), abs=1e-12)
            assert v["std"][key] == pytest.approx(np.std(vals), abs=1e-12)
    # a 1-shot run with seed 0 uses the images few_shot_indices picks; refit it with sklearn
    xtr, ytr = _features(enc, root, rows, "train")
    xte, yte = _features(enc, root, rows, "test")
    idx = few_shot_indices(ytr, 1, 0)
    run0 = r["few_shot"]["1"]["runs"][0]
    ref = sk_fit(xtr[idx], ytr[idx], run0["C"]).predict_proba(xte)
    assert run0["metrics"]["accuracy"] == accuracy_score(yte, ref.argmax(1))


def test_task_bad_inputs_name_the_line(tiny_set, tmp_path):
    root, rows, enc = tiny_set
    bad = tmp_path / "bad.csv"
    text = (root / "set.csv").read_text().replace(",val\n", ",vla\n", 1)
    bad.write_text(text)
    with pytest.raises(DatasetError, match=r"bad.csv, line \d+: split 'vla' is none of"):
        run_task(enc, "linear_probe", csv=str(bad), image_root=str(root), progress=False)
    with pytest.raises(ValueError, match="exclusive"):
        run_task(enc, "linear_probe", csv=str(root / "set.csv"), shots=[1], percent_data=10, progress=False)


def test_cli_flags_reach_the_task(tiny_set, tmp_path, monkeypatch):
    from make_jax.evaluate import cli
    from make_jax.evaluate.cli import main

    root, _, enc = tiny_set
    monkeypatch.setattr(cli, "load_encoder", lambda *a, **k: enc)  # the fixture's encoder, not a fresh init
    out = tmp_path / "lp.json"
    rc = main(["--random-init", "tiny", "--task", "linear_probe", "--csv", str(root / "set.csv"), "--shots", "2",
               "--seeds", "5", "7", "--split-column", "split", "--no-progress", "--out", str(out)])
    assert rc == 0
    r = json.loads(out.read_text())
    assert r["protocol"] == {"kind": "few_shot", "shots": [2], "seeds": [5, 7]}
    assert [x["seed"] for x in r["few_shot"]["2"]["runs"]] == [5, 7]
    rc = main(["--random-init", "tiny", "--task", "linear_probe", "--csv", str(root / "set.csv"), "--shots", "2",
               "--bootstrap", "10", "--no-progress"])
    assert rc == 2  # bootstrap intervals are for the full-data probe: refused, not ignored
