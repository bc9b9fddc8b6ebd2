"""Metrics agree with scikit-learn and thresholds do what their names promise."""
from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, roc_auc_score

from latentguard.decision.metrics import best_accuracy_threshold, fpr_at_tpr, roc_auc, threshold_at_fpr
from latentguard.decision.rule import rates


@pytest.fixture
def arrays():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 500)
    scores = rng.normal(size=500) + 1.5 * labels
    return labels, scores


def test_auc_and_rates_match_sklearn(arrays):
    labels, scores = arrays
    assert roc_auc(labels, scores) == pytest.approx(roc_auc_score(labels, scores))
    r = rates(labels, scores, 0.7)
    assert r["accuracy"] == pytest.approx(accuracy_score(labels, scores >= 0.7))
    assert r["tpr"] == pytest.approx(((scores >= 0.7) & (labels == 1)).sum() / (labels == 1).sum())
    assert r["fpr"] == pytest.approx(((scores >= 0.7) & (labels == 0)).sum() / (labels == 0).sum())


def test_best_accuracy_threshold_is_the_brute_force_optimum(arrays):
    labels, scores = arrays
    t = best_accuracy_threshold(labels, scores)
    candidates = np.concatenate([scores, [scores.min() - 1, scores.max() + 1]])
    best = max(accuracy_score(labels, scores >= c) for c in candidates)
    assert accuracy_score(labels, scores >= t) == pytest.approx(best)


def test_best_accuracy_threshold_separable_and_ties():
    assert 2.0 < best_accuracy_threshold([0, 0, 1, 1], [1.0, 2.0, 3.0, 4.0]) < 3.0
    # all unsafe: flag everything
    assert best_accuracy_threshold([1, 1], [5.0, 5.0]) <= 5.0


def test_threshold_at_fpr_reaches_target():
    safe = np.arange(1000, dtype=float)
    for target in [0.0, 0.01, 0.05, 0.5]:
        t = threshold_at_fpr(safe, target)
        assert (safe >= t).mean() <= target + 1e-12
        assert (safe >= t).mean() > target - 0.002  # and not needlessly strict


def test_fpr_at_tpr():
    labels = [0, 0, 0, 0, 1, 1]
    scores = [0.1, 0.2, 0.3, 0.9, 0.8, 0.95]
    # reaching TPR 1 needs threshold 0.8, where 1 of 4 safe prompts (0.9) is flagged
    assert fpr_at_tpr(labels, scores, 0.95) == pytest.approx(0.25)


def test_single_class_auc_is_nan():
    assert np.isnan(roc_auc([1, 1, 1], [0.1, 0.2, 0.3]))
