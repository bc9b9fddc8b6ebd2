"""Detection metrics and threshold choices shared by evaluation, calibration and training.

Convention everywhere: label 1 = unsafe, a higher score = more unsafe, and the decision rule of
:mod:`latentguard.decision.rule` (unsafe when ``score >= threshold``, as the released ``inference.py``);
accuracy, TPR and FPR at a threshold are :func:`latentguard.decision.rule.rates`.
"""
from __future__ import annotations

import numpy as np
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve


def _arrays(labels, scores) -> tuple[np.ndarray, np.ndarray]:
    labels = np.asarray(labels, dtype=np.int64).reshape(-1)
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    if labels.shape != scores.shape:
        raise ValueError(f"{labels.size} labels but {scores.size} scores")
    return labels, scores


def roc_auc(labels, scores) -> float:
    """ROC AUC; NaN when only one class is present (AUC is undefined then)."""
    labels, scores = _arrays(labels, scores)
    if np.unique(labels).size < 2:
        return float("nan")
    return float(roc_auc_score(labels, scores))


def average_precision(labels, scores) -> float:
    """Area under the precision-recall curve (average precision, unsafe = positive); NaN with one class."""
    labels, scores = _arrays(labels, scores)
    if np.unique(labels).size < 2:
        return float("nan")
    return float(average_precision_score(labels, scores))


def _roc_points(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Every operating point ``score >= t`` (FPR, TPR), none dropped.

    scikit-learn's default ``drop_intermediate=True`` drops points lying on a straight segment, and
    such a point can be the one a fixed-TPR or fixed-FPR read-out needs.
    """
    fpr, tpr, _ = roc_curve(labels, scores, drop_intermediate=False)
    return fpr, tpr


def fpr_at_tpr(labels, scores, target_tpr: float = 0.95) -> float:
    """The lowest FPR among operating points whose TPR reaches ``target_tpr``."""
    labels, scores = _arrays(labels, scores)
    if np.unique(labels).size < 2:
        return float("nan")
    fpr, tpr = _roc_points(labels, scores)
    return float(fpr[np.searchsorted(tpr, target_tpr, side="left")])


def tpr_at_fpr(labels, scores, target_fpr: float = 0.01) -> float:
    """The highest TPR among operating points whose FPR is at most ``target_fpr`` (on the benign prompts)."""
    labels, scores = _arrays(labels, scores)
    if np.unique(labels).size < 2:
        return float("nan")
    fpr, tpr = _roc_points(labels, scores)
    return float(tpr[np.searchsorted(fpr, target_fpr, side="right") - 1])


def best_accuracy_threshold(labels, scores) -> float:
    """The threshold maximising accuracy of ``score >= t`` (midpoint between neighbouring scores).

    Ties between equally accurate thresholds go to the lowest, i.e. the one that blocks more.
    """
    labels, scores = _arrays(labels, scores)
    if labels.size == 0:
        raise ValueError("cannot calibrate a threshold on no data")
    order = np.argsort(scores, kind="stable")
    s, y = scores[order], labels[order]
    # Candidate k: everything from index k upwards is flagged unsafe (k = n flags nothing).
    negatives_below = np.concatenate([[0], np.cumsum(y == 0)])          # correct safe below cut
    positives_above = np.concatenate([np.cumsum((y == 1)[::-1])[::-1], [0]])  # correct unsafe at/above cut
    correct = negatives_below + positives_above
    valid = np.ones(s.size + 1, dtype=bool)
    valid[1:-1] = s[1:] > s[:-1]  # a cut must fall between two different scores
    k = int(np.flatnonzero(valid)[np.argmax(correct[valid])])
    if k == 0:
        return float(s[0] - 1.0)
    if k == s.size:
        return float(s[-1] + 1.0)
    return float((s[k - 1] + s[k]) / 2.0)


def threshold_at_fpr(safe_scores, target_fpr: float) -> float:
    """The lowest threshold whose false-positive rate on ``safe_scores`` is at most ``target_fpr``."""
    s = np.sort(np.asarray(safe_scores, dtype=np.float64).reshape(-1))
    if s.size == 0:
        raise ValueError("cannot calibrate a threshold on no safe prompts")
    if not 0.0 <= target_fpr <= 1.0:
        raise ValueError(f"target FPR must be in [0, 1], got {target_fpr}")
    allowed = int(np.floor(target_fpr * s.size + 1e-9))  # safe prompts that may score >= threshold
    if allowed >= s.size:
        return float(s[0])
    # Flag only the top `allowed` scores: threshold just above the (n - allowed)-th smallest score.
    cut = s[s.size - allowed - 1]
    above = s[s > cut]
    return float(np.nextafter(cut, np.inf) if above.size == 0 else (cut + above[0]) / 2.0)
