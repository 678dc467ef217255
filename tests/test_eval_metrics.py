"""make_jax.evaluate.metrics against independent computations: brute-force pair counts, explicit loops, hand
calculations. No expected value here comes from running the code under test."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from make_jax.evaluate import metrics as M


# ---------------------------------------------------------------------------------------------- references


def brute_auroc(labels, scores):
    """Over every (positive, negative) pair: 1 if the positive scores higher, 1/2 if equal, 0 otherwise."""
    pos = [s for y, s in zip(labels, scores) if y == 1]
    neg = [s for y, s in zip(labels, scores) if y == 0]
    total = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p, n in itertools.product(pos, neg))
    return total / (len(pos) * len(neg))


def stable_order(row):
    """Candidates by descending score, ties by index — written as an explicit Python sort."""
    return sorted(range(len(row)), key=lambda j: (-row[j], j))


# ---------------------------------------------------------------------------------------------- AUROC


@pytest.mark.parametrize("seed", range(6))
def test_auroc_matches_brute_force_pair_count_with_ties(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(5, 60))
    y = rng.integers(0, 2, n)
    y[0], y[1] = 0, 1  # both classes present
    scores = rng.integers(0, 4, n).astype(float)  # few distinct values: many ties
    if seed % 2:
        scores = scores + rng.normal(0, 1e-3, n) * (rng.random(n) < 0.5)
    assert M.auroc(y, scores) == pytest.approx(brute_auroc(y.tolist(), scores.tolist()), abs=1e-12)


def test_auroc_hand_examples():
    assert M.auroc([0, 0, 1, 1], [0.1, 0.2, 0.3, 0.4]) == 1.0
    assert M.auroc([1, 1, 0, 0], [0.1, 0.2, 0.3, 0.4]) == 0.0
    assert M.auroc([0, 1], [0.5, 0.5]) == 0.5  # a tie counts one half
    # pairs (p, n): (0.4, 0.1) 1, (0.4, 0.4) 1/2, (0.2, 0.1) 1, (0.2, 0.4) 0 → 2.5 / 4
    assert M.auroc([1, 0, 1, 0], [0.4, 0.1, 0.2, 0.4]) == 0.625
    assert M.auroc(np.array([True, False, True]), [3.0, 1.0, 2.0]) == 1.0


def test_auroc_one_class_is_nan_and_bad_labels_raise():
    assert math.isnan(M.auroc([1, 1, 1], [0.1, 0.2, 0.3]))
    assert math.isnan(M.auroc([0, 0], [0.1, 0.2]))
    with pytest.raises(ValueError, match="0/1"):
        M.auroc([0, 2, 1], [0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match="NaN"):
        M.auroc([0, 1], [0.1, float("nan")])


def test_macro_ovr_auroc_is_mean_of_brute_force_per_class_and_skips_absent_classes():
    rng = np.random.default_rng(3)
    n, c = 40, 5
    y = rng.integers(0, 4, n)  # class 4 never occurs
    y[:4] = [0, 1, 2, 3]
    s = rng.random((n, c)).round(1)  # ties
    mean, per = M.macro_ovr_auroc(y, s, c)
    expected = [brute_auroc((y == k).astype(int).tolist(), s[:, k].tolist()) for k in range(4)]
    np.testing.assert_allclose(per[:4], expected, atol=1e-12)
    assert math.isnan(per[4])
    assert mean == pytest.approx(sum(expected) / 4, abs=1e-12)


# ---------------------------------------------------------------------------------------------- classification


@pytest.mark.parametrize("k", [1, 2, 3, 5])
def test_topk_accuracy_matches_explicit_loop(k):
    rng = np.random.default_rng(k)
    n, c = 50, 7
    s = rng.integers(0, 5, (n, c)).astype(float)  # ties everywhere
    y = rng.integers(0, c, n)
    hits = sum(y[i] in stable_order(s[i].tolist())[:k] for i in range(n))
    assert M.topk_accuracy(s, y, k) == pytest.approx(hits / n)


def test_top1_agrees_with_argmax_and_confusion_trace():
    rng = np.random.default_rng(0)
    s = rng.integers(0, 3, (30, 4)).astype(float)
    y = rng.integers(0, 4, 30)
    pred = np.argmax(s, axis=1)
    cm = M.confusion_matrix(y, pred, 4)
    assert M.topk_accuracy(s, y, 1) == pytest.approx(np.trace(cm) / 30)
    assert M.topk_accuracy(s, y, 4) == 1.0 and M.topk_accuracy(s, y, 10) == 1.0


def test_confusion_matrix_per_class_and_balanced_accuracy_by_hand():
    y = [0, 0, 0, 1, 1, 2, 2, 2, 2]
    p = [0, 1, 0, 1, 1, 0, 2, 3, 2]
    cm = M.confusion_matrix(y, p, 4)
    expected = np.zeros((4, 4), int)
    for a, b in zip(y, p):
        expected[a, b] += 1
    np.testing.assert_array_equal(cm, expected)
    assert cm[0].tolist() == [2, 1, 0, 0] and cm[2].tolist() == [1, 0, 2, 1]
    acc = M.per_class_accuracy(y, p, 4)
    np.testing.assert_allclose(acc[:3], [2 / 3, 1.0, 0.5])
    assert math.isnan(acc[3])  # class 3 has no samples
    # mean recall over the classes present (0, 1, 2): (2/3 + 1 + 1/2) / 3 = 13/18
    assert M.balanced_accuracy(y, p, 4) == pytest.approx(13 / 18)
    with pytest.raises(ValueError, match=r"\[0, 4\)"):
        M.confusion_matrix([0, 4], [0, 0], 4)


def test_softmax_by_hand():
    p = M.softmax(np.array([[0.0, math.log(3.0)], [1000.0, 1000.0]]))
    np.testing.assert_allclose(p, [[0.25, 0.75], [0.5, 0.5]])


# ---------------------------------------------------------------------------------------------- retrieval


def loop_retrieval(img, txt, t2i, ks):
    """Explicit loops: sort every row, walk to the first positive."""
    img2txt, txt2img = [], []
    for i in range(len(img)):
        row = [float(np.dot(img[i], t)) for t in txt]
        order = stable_order(row)
        img2txt.append(next(pos for pos, j in enumerate(order) if t2i[j] == i))
    for t in range(len(txt)):
        row = [float(np.dot(txt[t], im)) for im in img]
        order = stable_order(row)
        txt2img.append(order.index(t2i[t]))

    def summary(ranks):
        out = {f"R@{k}": sum(r < k for r in ranks) / len(ranks) for k in ks}
        one = sorted(r + 1 for r in ranks)
        out["mean_rank"] = sum(one) / len(one)
        m = len(one)
        out["median_rank"] = one[m // 2] if m % 2 else (one[m // 2 - 1] + one[m // 2]) / 2
        return out

    return summary(img2txt), summary(txt2img)


@pytest.mark.parametrize("seed,chunk", [(0, 1024), (1, 3), (2, 1), (3, 7)])
def test_recall_matches_explicit_loop_with_several_captions_per_image(seed, chunk):
    rng = np.random.default_rng(seed)
    n = 12
    t2i = np.concatenate([np.arange(n), rng.integers(0, n, 9)])  # every image ≥ 1 caption, some 2-4
    rng.shuffle(t2i)
    # coarse embeddings (values in {-1, 0, 1} / 2) so many similarities tie exactly
    img = rng.integers(-1, 2, (n, 4)).astype(np.float32) / 2
    txt = rng.integers(-1, 2, (len(t2i), 4)).astype(np.float32) / 2
    ks = (1, 2, 5, 10)
    got = M.retrieval_metrics(img, txt, t2i, ks, chunk=chunk)
    exp_i2t, exp_t2i = loop_retrieval(img, txt, t2i.tolist(), ks)
    assert got["image_to_text"] == pytest.approx(exp_i2t)
    assert got["text_to_image"] == pytest.approx(exp_t2i)


def test_retrieval_input_checks():
    img = np.eye(3, dtype=np.float32)
    with pytest.raises(ValueError, match="images without any text"):
        M.retrieval_metrics(img, img[:2], [0, 1])
    with pytest.raises(ValueError, match="index"):
        M.retrieval_metrics(img, img, [0, 1, 3])
    with pytest.raises(ValueError, match="without a positive"):
        M.rank_of_positives(np.zeros((2, 2)), np.array([[True, False], [False, False]]))


def test_rank_summary_by_hand():
    r = M.rank_summary(np.array([0, 0, 3, 9, 120]), ks=(1, 5, 10, 100))
    assert r == {"R@1": 0.4, "R@5": 0.6, "R@10": 0.8, "R@100": 0.8, "mean_rank": (1 + 1 + 4 + 10 + 121) / 5,
                 "median_rank": 4.0}
