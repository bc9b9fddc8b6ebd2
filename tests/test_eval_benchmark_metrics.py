"""Benchmark metrics equal scikit-learn (or an exhaustive sweep of thresholds) on the same arrays, and
scoring each distinct text once gives exactly the numbers of scoring every listed prompt."""
from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score

from latentguard.decision.metrics import average_precision, fpr_at_tpr, roc_auc, tpr_at_fpr
from latentguard.eval.benchmark.loaders import LoadedSet
from latentguard.eval.benchmark.scorers import MethodOutput
from latentguard.eval.benchmark.tables import Scored, build_tables, pair_metrics


def _sweep(labels, scores):
    """Every operating point ``score >= t`` (t over all scores and +inf): (FPR, TPR) pairs."""
    pos, neg = scores[labels == 1], scores[labels == 0]
    cuts = np.r_[np.unique(scores), np.inf]
    return [((neg >= t).mean(), (pos >= t).mean()) for t in cuts]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_auprc_and_fixed_rate_readouts_equal_sklearn_and_an_exhaustive_sweep(seed):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, 300)
    scores = np.round(rng.normal(labels * 0.8, 1.0), 1)  # rounded: many ties
    assert average_precision(labels, scores) == pytest.approx(average_precision_score(labels, scores), abs=1e-12)
    points = _sweep(labels, scores)
    for target in (0.0, 0.01, 0.05, 0.3):
        assert tpr_at_fpr(labels, scores, target) == pytest.approx(max(t for f, t in points if f <= target + 1e-12))
    for target in (0.5, 0.95, 1.0):
        assert fpr_at_tpr(labels, scores, target) == pytest.approx(min(f for f, t in points if t >= target - 1e-12))


def test_fpr_at_tpr_keeps_the_point_sklearn_drops_on_a_straight_segment():
    # Each cut adds one unsafe and one safe prompt: the points are collinear and roc_curve's default
    # drop_intermediate removes (0.4, 0.667), which is the lowest FPR reaching 60% TPR.
    labels = np.array([1, 0, 1, 0, 1, 0, 0, 0])
    scores = np.array([3, 3, 2, 2, 1, 1, 0, 0.0])
    assert fpr_at_tpr(labels, scores, 0.6) == pytest.approx(0.4)
    assert tpr_at_fpr(labels, scores, 0.4) == pytest.approx(2 / 3)


def test_one_class_gives_nan_not_a_number_that_looks_real():
    assert np.isnan(average_precision([1, 1], [0.2, 0.3])) and np.isnan(tpr_at_fpr([0, 0], [1.0, 2.0]))


def _set(name, texts, rows, labels, scores, threshold):
    data = LoadedSet(name, None, texts, np.asarray(rows), np.asarray(labels, np.int8))
    s = np.asarray(scores, float)
    return Scored(data, {"latent_guard": MethodOutput(s, s >= threshold, np.zeros(len(texts), np.int64))})


class _LG:
    key, graded = "latent_guard", True


def test_distinct_texts_scored_once_count_every_row():
    rng = np.random.default_rng(3)
    unsafe_scores, benign_scores = rng.normal(1, 1, 40), rng.normal(0, 1, 50)
    unsafe_rows, benign_rows = rng.integers(0, 40, 120), rng.integers(0, 50, 90)  # duplicates in both
    unsafe = _set("u", [f"u{i}" for i in range(40)], unsafe_rows, np.ones(120), unsafe_scores, 0.5)
    benign = _set("b", [f"b{i}" for i in range(50)], benign_rows, np.zeros(90), benign_scores, 0.5)
    tables = build_tables({"u": unsafe, "b": benign}, ["b"], [_LG()])
    got = tables["unsafe_sets"][0]
    pos, neg = unsafe_scores[unsafe_rows], benign_scores[benign_rows]  # every listed prompt, expanded
    labels, scores = np.r_[np.ones(120), np.zeros(90)], np.r_[pos, neg]
    ref = got["methods"]["latent_guard"]["against"]["b"]
    assert ref["auroc"] == pytest.approx(roc_auc_score(labels, scores))
    assert ref["auprc"] == pytest.approx(average_precision_score(labels, scores))
    assert ref["benign_fpr"] == pytest.approx((neg >= 0.5).mean())
    assert ref["accuracy"] == pytest.approx(((scores >= 0.5) == labels).mean())
    m = got["methods"]["latent_guard"]
    assert m["detection_rate"] == pytest.approx((pos >= 0.5).mean())
    assert m["attack_success_rate"] == pytest.approx(1 - (pos >= 0.5).mean())
    assert (got["prompts_total"], got["prompts_unique"]) == (120, np.unique(unsafe_rows).size)
    benign_fpr = tables["benign_sets"][0]["methods"]["latent_guard"]["false_positive_rate"]
    assert benign_fpr == pytest.approx(ref["benign_fpr"])
    direct = pair_metrics(pos, neg, pos >= 0.5, neg >= 0.5, True)
    assert direct["tpr_at_1fpr"] == ref["tpr_at_1fpr"] and direct["fpr_at_95tpr"] == ref["fpr_at_95tpr"]
    assert roc_auc(labels, scores) == pytest.approx(ref["auroc"])


def test_a_labelled_set_is_also_measured_against_its_own_safe_rows():
    # Unsafe Diffusion-style: one file with unsafe and safe rows (Table 2's protocol), plus COCO
    scores = np.array([3.0, 2.0, 0.5, 1.0, 0.1])
    mixed = _set("ud", list("abcde"), [0, 1, 2, 3, 4], [1, 1, 1, 0, 0], scores, 1.5)
    coco = _set("coco", ["x", "y"], [0, 1], [0, 0], [0.2, 2.5], 1.5)
    entry = build_tables({"ud": mixed, "coco": coco}, ["coco"], [_LG()])["unsafe_sets"][0]
    assert entry["references"] == ["coco", "own safe rows"] and entry["prompts_total"] == 3
    own = entry["methods"]["latent_guard"]["against"]["own safe rows"]
    assert own["auroc"] == pytest.approx(roc_auc_score([1, 1, 1, 0, 0], scores))
    assert own["accuracy"] == pytest.approx(((scores >= 1.5) == np.array([1, 1, 1, 0, 0])).mean())
    assert entry["methods"]["latent_guard"]["against"]["coco"]["auroc"] == pytest.approx(
        roc_auc_score([1, 1, 1, 0, 0], [3.0, 2.0, 0.5, 0.2, 2.5]))
