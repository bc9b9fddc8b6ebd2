"""Scores in [0, 1] that never contradict the verdict: ``p = sigmoid(slope * (logit - threshold))``.

A moderation API reports a probability per category; Latent Guard's logits are on the mapping
layer's own scale (``tempr * cos``). Centring each concept's logit on its threshold makes
``p >= 0.5`` exactly when the concept fires (:func:`latentguard.decision.rule.flags`); the slope sets
how fast ``p`` moves away from 0.5 and is fitted by maximum likelihood on labelled calibration
scores (:func:`fit_slope`). Without a fitted slope, :data:`DEFAULT_SLOPE` is used and the scores are
uncalibrated (a monotone re-scaling of the logit margin, nothing more).
"""
from __future__ import annotations

import math

import numpy as np

from ..errors import LatentGuardError
from .rule import flags

DEFAULT_SLOPE = 1.0  # per logit unit; used (and reported as uncalibrated) when no slope was fitted
MAX_SLOPE = 1e3      # a perfectly separated calibration set would drive the fit to infinity
_BELOW_HALF = float(np.nextafter(0.5, 0.0))


def probabilities(logits, thresholds, slope: float) -> np.ndarray:
    """``sigmoid(slope * (logits - thresholds))`` (broadcast), with ``p >= 0.5`` exactly where the logit fires.

    Rounding could put a logit just below its threshold at exactly 0.5; such values are nudged to
    the float just under 0.5 (and a firing one never below 0.5), so the probability and the
    decision rule agree for every input.
    """
    validate_slope(slope)
    logits = np.asarray(logits, dtype=np.float64)
    thresholds = np.asarray(thresholds, dtype=np.float64)
    margin = slope * (logits - thresholds)
    with np.errstate(over="ignore"):
        p = 1.0 / (1.0 + np.exp(-margin))
    fired = flags(logits, thresholds)
    return np.where(fired, np.maximum(p, 0.5), np.minimum(p, _BELOW_HALF))


def validate_slope(slope) -> float:
    """A slope must be a finite positive number: zero or negative would invert or flatten the scores."""
    if isinstance(slope, bool) or not isinstance(slope, (int, float, np.floating)) or not math.isfinite(slope) \
            or slope <= 0:
        raise LatentGuardError(f"probability slope must be a finite number > 0, got {slope!r}")
    return float(slope)


def fit_slope(scores, labels, threshold: float) -> float:
    """The maximum-likelihood slope ``a`` of ``P(unsafe) = sigmoid(a * (score - threshold))``.

    ``scores`` are prompts' best logits, ``labels`` 1 = unsafe. The log-likelihood is concave in
    ``a``, so Newton's method (with step halving) finds its maximum; a fit that would need ``a <= 0``
    (scores that rank safe prompts above unsafe ones) is refused, and a calibration set separated
    perfectly at the threshold is capped at :data:`MAX_SLOPE`.
    """
    margins = np.asarray(scores, dtype=np.float64).reshape(-1) - float(threshold)
    y = np.asarray(labels, dtype=np.float64).reshape(-1)
    if margins.shape != y.shape or not margins.size:
        raise LatentGuardError(f"a slope fit needs one label per score, got {y.size} labels for {margins.size} scores")
    if not np.isfinite(margins).all():
        raise LatentGuardError("a slope fit needs finite scores")
    if not (y == 1).any() or not (y == 0).any():
        raise LatentGuardError("a slope fit needs both unsafe and safe prompts")

    if float(np.sum((y - 0.5) * margins)) <= 0:  # the likelihood's slope at a = 0: its maximum lies at a <= 0
        raise LatentGuardError("the calibration scores rank safe prompts above unsafe ones, so no positive slope "
                               "fits them; check the prompts' labels and the weights")

    if ((margins >= 0) == (y == 1)).all():  # separated at the threshold: the likelihood grows without bound
        return MAX_SLOPE

    def loglik(a: float) -> float:
        z = a * margins
        return float(np.sum(y * -np.logaddexp(0.0, -z) + (1 - y) * -np.logaddexp(0.0, z)))

    a = DEFAULT_SLOPE / max(float(np.std(margins)), 1e-12) if np.std(margins) > 0 else DEFAULT_SLOPE
    for _ in range(100):
        p = 1.0 / (1.0 + np.exp(-np.clip(a * margins, -700, 700)))
        gradient = float(np.sum((y - p) * margins))
        curvature = float(np.sum(p * (1 - p) * margins**2))
        if curvature <= 0 or not math.isfinite(curvature):
            break
        step = gradient / curvature
        new, before = a + step, loglik(a)
        while (new <= 0 or loglik(new) < before) and abs(step) > 1e-12:
            step /= 2
            new = a + step
        if new >= MAX_SLOPE:
            a = MAX_SLOPE
            break
        converged = abs(new - a) <= 1e-9 * max(1.0, abs(a))
        a = new
        if converged:
            break
    return float(min(a, MAX_SLOPE))
