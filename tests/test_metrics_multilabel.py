import itertools

import numpy as np
import pytest
from sklearn.metrics import f1_score, precision_score, recall_score

from medssl.metrics.multilabel import (
    best_thresholds,
    constant_score_thresholds,
    multilabel_report,
    weighted_f1,
)


@pytest.mark.parametrize("seed", range(5))
def test_threshold_search_finds_the_brute_force_f1_maximum(seed):
    rng = np.random.default_rng(seed)
    y = rng.random((12, 3)) < 0.4
    y[0] = True  # every class has a positive
    scores = np.round(rng.random((12, 3)), 1)  # ties on purpose
    thresholds = best_thresholds(y, scores)
    for c in range(3):
        candidates = np.r_[np.unique(scores[:, c]), np.inf]
        brute = max(f1_score(y[:, c], scores[:, c] >= t, zero_division=0) for t in candidates)
        got = f1_score(y[:, c], scores[:, c] >= thresholds[c], zero_division=0)
        assert got == pytest.approx(brute)


def test_threshold_search_exhaustive_on_tiny_inputs():
    # every labelling of 5 images with distinct scores
    scores = np.array([[0.9], [0.7], [0.5], [0.3], [0.1]])
    for bits in itertools.product([0, 1], repeat=5):
        y = np.array(bits, dtype=bool)[:, None]
        t = best_thresholds(y, scores)[0]
        if not y.any():
            assert t == np.inf
            continue
        brute = max(f1_score(y[:, 0], scores[:, 0] >= s) for s in scores[:, 0])
        assert f1_score(y[:, 0], scores[:, 0] >= t) == pytest.approx(brute)


@pytest.mark.parametrize("seed", range(3))
def test_report_matches_scikit_learn(seed):
    rng = np.random.default_rng(seed)
    y = (rng.random((200, 7)) < rng.random(7)).astype(int)
    pred = (rng.random((200, 7)) < 0.4).astype(int)
    rep = multilabel_report(y, pred, [f"c{i}" for i in range(7)])
    for avg in (None, "weighted"):
        kw = {"average": avg, "zero_division": 0}
        p, r, f = (m(y, pred, **kw) for m in (precision_score, recall_score, f1_score))
        if avg is None:
            np.testing.assert_allclose(rep.precision, p)
            np.testing.assert_allclose(rep.recall, r)
            np.testing.assert_allclose(rep.f1, f)
        else:
            assert rep.weighted == pytest.approx({"precision": p, "recall": r, "f1": f})
    assert weighted_f1(y, pred) == pytest.approx(f1_score(y, pred, average="weighted"))
    np.testing.assert_array_equal(rep.support, y.sum(axis=0))


def test_constant_score_baseline_predicts_all_positive():
    y = np.array([[1, 0], [0, 0], [1, 0]])
    t = constant_score_thresholds(y)
    pred = np.zeros_like(y, dtype=float) >= t
    assert pred[:, 0].all() and not pred[:, 1].any()
    # F1 of "all positive" is 2p / (1 + p)
    assert f1_score(y[:, 0], pred[:, 0]) == pytest.approx(2 * (2 / 3) / (1 + 2 / 3))
