"""The Table 1 run: score every distinct text once, calibrate one threshold, compute the metrics.

Why it is fast: every distinct text is scored once (a safe prompt shared by the three conditions,
or a prompt shared by test and validation, is read and scored one time), embeddings stream from the
store in batches of a few hundred through :mod:`latentguard.scoring` (the next batch is read while
the current one is scored) and each batch meets all concepts at once, so a prompt's keys/values are
computed once instead of once per concept as in the released loop.

Why one calibrated threshold: the paper's accuracies come from a single threshold (about 4.47)
used in all six conditions; the released 9.0131 is an inference default. We pick the threshold that
maximises accuracy on the validation versions of the six conditions pooled together, and report the
accuracy at 9.0131 beside it.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from ..decision.metrics import best_accuracy_threshold, fpr_at_tpr, roc_auc
from ..decision.rule import rates
from ..errors import LatentGuardError
from ..io import unique
from ..published import RELEASED_THRESHOLD
from .table1 import DOMAINS, Condition, Conditions, build_conditions

METHOD_ORDER = ("text_blacklist", "clipscore", "bertscore", "latent_guard")
LATENT_GUARD = "latent_guard"


# ------------------------------------------------------------------------------------- scoring
@dataclass
class TextScores:
    """Score and best-matching concept index (-1: none) of each distinct text of one domain."""

    texts: list[str]
    score: np.ndarray
    best: np.ndarray
    _index: dict[str, int] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self._index = {t: i for i, t in enumerate(self.texts)}

    def lookup(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        rows = np.fromiter((self._index[t] for t in texts), dtype=np.int64, count=len(texts))
        return self.score[rows], self.best[rows]


def score_prompts(model, source, texts: Sequence[str], concept_emb, *, batch_size: int = 512,
                  device: Any = "cpu", progress: bool = False, each_batch=None) -> tuple[TextScores, float]:
    """Score distinct ``texts`` against all concepts: (Latent Guard scores, seconds).

    Scoring goes through :func:`latentguard.scoring.max_scores` (embeddings fetched one batch
    ahead, memory bounded by the batch size); ``each_batch(embeddings, concepts)`` sees every batch
    (embedding-based baselines).
    """
    from ..scoring.logits import max_scores

    if batch_size <= 0:
        raise LatentGuardError(f"batch size must be positive, got {batch_size}")
    texts = unique(list(texts))
    started = time.perf_counter()
    score, best = max_scores(model, source, texts, concept_emb, batch_size=batch_size, device=device,
                             progress=progress, each_batch=each_batch)
    return TextScores(texts, score, best), time.perf_counter() - started


# --------------------------------------------------------------------------------- calibration
@dataclass
class MethodScores:
    """One method's per-domain text scores, and whether its scores are graded (AUC makes sense)."""

    key: str
    per_domain: dict[str, TextScores]
    graded: bool = True
    fixed_threshold: float | None = None  # decision rules (Text Blacklist) are not calibrated

    def condition_scores(self, condition: Condition) -> tuple[np.ndarray, np.ndarray]:
        return self.per_domain[condition.domain].lookup(condition.prompts)


def pooled_scores(conditions: Conditions, scores: MethodScores) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Labels and scores of every available condition, concatenated; and the conditions' names."""
    labels, values, names = [], [], []
    for condition in conditions.values():
        if condition.available and condition.domain in scores.per_domain:
            labels.append(condition.labels)
            values.append(scores.condition_scores(condition)[0])
            names.append(condition.name)
    if not labels:
        return np.zeros(0, np.int64), np.zeros(0), names
    return np.concatenate(labels), np.concatenate(values), names


def pooled_validation_threshold(valid: Conditions, scores: MethodScores) -> tuple[float | None, str]:
    """The accuracy-maximising threshold on the pooled validation conditions, and how it was chosen."""
    labels, values, names = pooled_scores(valid, scores)
    if labels.size == 0:
        return None, "no validation data to calibrate on"
    threshold = best_accuracy_threshold(labels, values)
    return threshold, f"calibrated: max accuracy on pooled validation ({', '.join(names)}; {labels.size} prompts)"


def validation_slope(valid: Conditions, scores: MethodScores, threshold: float) -> float | None:
    """The probability slope (:func:`latentguard.decision.probability.fit_slope`) on the pooled
    validation conditions at ``threshold``; ``None`` without validation data or when none fits."""
    from ..decision.probability import fit_slope

    labels, values, _ = pooled_scores(valid, scores)
    try:
        return fit_slope(values, labels, threshold) if labels.size else None
    except LatentGuardError:
        return None


# ------------------------------------------------------------------------------------- metrics
def json_safe(value: Any) -> Any:
    """NaN/inf -> None, numpy scalars -> Python, recursively: results.json stays strict JSON."""
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, (np.floating, float)):
        value = float(value)
        return value if math.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    return value


def condition_metrics(labels: np.ndarray, scores: np.ndarray, threshold: float | None, *, graded: bool = True,
                    released_threshold: float | None = None) -> dict[str, Any]:
    """AUC, accuracy/TPR/FPR at ``threshold``, FPR at 95% TPR and the class counts of one condition."""
    out: dict[str, Any] = {"available": True, "n_unsafe": int((labels == 1).sum()), "n_safe": int((labels == 0).sum())}
    out["auc"] = roc_auc(labels, scores) if graded else None
    if threshold is not None:
        out.update(rates(labels, scores, threshold))
    else:
        out.update({"accuracy": None, "tpr": None, "fpr": None})
    out["fpr_at_95tpr"] = fpr_at_tpr(labels, scores, 0.95) if graded else None
    if released_threshold is not None:
        out["released_threshold_accuracy"] = rates(labels, scores, released_threshold)["accuracy"]
    return json_safe(out)


def method_results(test: Conditions, scores: MethodScores, threshold: float | None,
                   released_threshold: float | None = None) -> dict[str, dict[str, Any]]:
    """``{"ID": {"explicit": {...}, ...}, "OOD": {...}}`` for one method."""
    out: dict[str, dict[str, Any]] = {domain: {} for domain in DOMAINS}
    for (domain, kind), condition in test.items():
        if not condition.available:
            out[domain][kind] = {"available": False, "reason": condition.reason}
            continue
        values, _ = scores.condition_scores(condition)
        out[domain][kind] = condition_metrics(condition.labels, values, threshold, graded=scores.graded,
                                            released_threshold=released_threshold)
    return out


# ---------------------------------------------------------------------------------- evaluation
@dataclass
class Evaluation:
    """Everything the writers need: the JSON-able results and per-condition scores of each method."""

    results: dict[str, Any]
    test: Conditions
    methods: dict[str, MethodScores]
    concepts: dict[str, list[str]]
    thresholds: dict[str, float | None]


def evaluate_copro(copro, model, source, *, baselines: Sequence[str] = (), bert_scorer=None,
                   threshold: float | None = None, threshold_source: str = "--threshold", batch_size: int = 512,
                   device: Any = "cpu", progress: bool = False, log=print,
                   blacklist_match: str = "substring",
                   prepare: str = "prepare.py with the same --dataset, --encoder and --store-dir") -> Evaluation:
    """Score the six test conditions (and their validation twins, for calibration) with Latent Guard
    and the chosen baselines; ``threshold`` (from ``threshold_source``) overrides Latent Guard's calibrated one.
    ``blacklist_match`` is the Text Blacklist's rule (substring, the paper's, or word); ``prepare``: the
    command named when the store lacks texts (the CLI gives the exact one)."""
    from ..store.sources import concept_vectors
    from .methods import make_baselines

    test, valid = build_conditions(copro, "test"), build_conditions(copro, "valid")
    concepts = {d: copro.concepts(d) for d in DOMAINS if copro.concepts(d)}
    active = make_baselines(baselines, bert_scorer=bert_scorer, blacklist_match=blacklist_match,
                            progress=progress, log=log)
    methods: dict[str, MethodScores] = {LATENT_GUARD: MethodScores(LATENT_GUARD, {})}
    for baseline in active:
        methods[baseline.key] = MethodScores(baseline.key, {}, graded=baseline.graded,
                                             fixed_threshold=baseline.fixed_threshold)

    texts_by_domain = {
        d: unique([t for s in (*test.values(), *valid.values()) if s.available and s.domain == d for t in s.prompts])
        for d in concepts
    }
    missing_check = getattr(source, "missing", None)
    if missing_check is not None:
        needed = unique([c for d in concepts for c in concepts[d]] + [t for v in texts_by_domain.values() for t in v])
        missing = missing_check(needed)
        if missing:
            raise LatentGuardError(
                f"{len(missing)} of the {len(needed)} texts this evaluation needs are missing from embedding store "
                f"{getattr(source, 'path', '')} (e.g. {missing[0][:60]!r}); run {prepare} first")

    timing = {"prompts_scored": 0, "seconds": 0.0}
    for domain, texts in texts_by_domain.items():
        concept_emb = concept_vectors(source, concepts[domain])
        hooks = [hook for hook in (b.batch_hook() for b in active) if hook is not None]
        each_batch = (lambda emb, vectors: [hook(emb, vectors) for hook in hooks]) if hooks else None
        lg, seconds = score_prompts(model, source, texts, concept_emb, batch_size=batch_size, device=device,
                                    progress=progress, each_batch=each_batch)
        timing["prompts_scored"] += len(texts)
        timing["seconds"] += seconds
        methods[LATENT_GUARD].per_domain[domain] = lg
        for baseline in active:
            score, best = baseline.domain_scores(domain, texts, concepts[domain])
            methods[baseline.key].per_domain[domain] = TextScores(texts, score, best)
    if timing["prompts_scored"]:
        timing["ms_per_prompt"] = 1000 * timing["seconds"] / timing["prompts_scored"]

    thresholds: dict[str, float | None] = {}
    sources: dict[str, str] = {}
    calibrated, how = pooled_validation_threshold(valid, methods[LATENT_GUARD])
    if threshold is not None:
        thresholds[LATENT_GUARD], sources[LATENT_GUARD] = float(threshold), threshold_source
    elif calibrated is not None:
        thresholds[LATENT_GUARD], sources[LATENT_GUARD] = calibrated, how
    else:
        thresholds[LATENT_GUARD] = RELEASED_THRESHOLD
        sources[LATENT_GUARD] = f"released inference threshold ({how})"
    for baseline in active:
        if baseline.fixed_threshold is not None:
            thresholds[baseline.key], sources[baseline.key] = baseline.fixed_threshold, baseline.threshold_note
        else:
            thresholds[baseline.key], sources[baseline.key] = pooled_validation_threshold(valid, methods[baseline.key])

    _, _, valid_names = pooled_scores(valid, methods[LATENT_GUARD])
    results: dict[str, Any] = method_results(test, methods[LATENT_GUARD], thresholds[LATENT_GUARD], RELEASED_THRESHOLD)
    results.update({
        "threshold": thresholds[LATENT_GUARD],
        "threshold_source": sources[LATENT_GUARD],
        "calibrated_threshold": calibrated,
        "probability_slope": validation_slope(valid, methods[LATENT_GUARD], thresholds[LATENT_GUARD]),
        "released_threshold": RELEASED_THRESHOLD,
        "validation": {
            "settings": valid_names,
            "n_prompts": int(pooled_scores(valid, methods[LATENT_GUARD])[0].size),
            "sources": dict(getattr(copro, "valid_source", {})),
            "unavailable": {s.name: s.reason for s in valid.values() if not s.available},
        },
        "baselines": {},
        "timing": timing,
    })
    for key in METHOD_ORDER:
        if key in methods and key != LATENT_GUARD:
            entry = method_results(test, methods[key], thresholds[key])
            entry.update({"threshold": thresholds[key], "threshold_source": sources[key]})
            results["baselines"][key] = entry
    return Evaluation(json_safe(results), test, methods, concepts, thresholds)
