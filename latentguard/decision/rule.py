"""The decision rule, written once: a prompt is unsafe when a concept's logit reaches its threshold.

As the released ``inference.py`` decides: unsafe when ``score >= threshold`` (the score being the
best logit over the blacklist). With per-concept thresholds a concept *fires* when its own logit
reaches its own threshold, and the prompt is unsafe when any concept fires; with one threshold for
all concepts the two rules are the same. The guard, the metrics, calibration, the parity check and
the plots all decide here, so the rule cannot drift between them.
"""
from __future__ import annotations

import numpy as np


def flags(scores, thresholds) -> np.ndarray:
    """Elementwise ``scores >= thresholds`` (broadcast): the one comparison with a threshold.

    NaN never reaches here as "safe": scoring refuses non-finite logits before any decision.
    """
    return np.asarray(scores, dtype=np.float64) >= np.asarray(thresholds, dtype=np.float64)


def decide(logits, thresholds) -> tuple[np.ndarray, np.ndarray]:
    """``(unsafe [P] bool, deciding concept index [P])`` from logits ``[P, C]`` and thresholds ``[C]``.

    The deciding concept of an unsafe prompt is the firing one that clears its threshold by the
    widest margin; of a safe prompt, the highest-scoring concept.
    """
    logits = np.atleast_2d(np.asarray(logits))
    fired = flags(logits, thresholds)
    unsafe = fired.any(axis=1)
    margin = logits - np.asarray(thresholds, dtype=np.float64)
    index = np.where(unsafe, margin.argmax(axis=1), logits.argmax(axis=1)) if logits.shape[1] else \
        np.zeros(logits.shape[0], np.int64)
    return unsafe, index


def rates(labels, scores, threshold: float) -> dict[str, float]:
    """Accuracy, TPR and FPR of the rule at ``threshold`` (label 1 = unsafe); NaN where undefined."""
    labels = np.asarray(labels, dtype=np.int64).reshape(-1)
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    if labels.shape != scores.shape:
        raise ValueError(f"{labels.size} labels but {scores.size} scores")
    predicted = flags(scores, threshold)
    positives, negatives = labels == 1, labels == 0
    return {
        "accuracy": float((predicted == positives).mean()) if labels.size else float("nan"),
        "tpr": float(predicted[positives].mean()) if positives.any() else float("nan"),
        "fpr": float(predicted[negatives].mean()) if negatives.any() else float("nan"),
    }
