"""The methods a benchmark scores each set with: Latent Guard through the guard's own scoring path, and
the Table 1 baselines through their interface (:mod:`latentguard.eval.methods`): the Text Blacklist,
and CLIPScore from the guard's own encoder.

Every method maps distinct texts to ``score`` (higher = more unsafe), ``flagged`` (its decision at
its operating rule, or ``None`` when it has none: CLIPScore is not calibrated here) and the index of
the deciding or best concept. Decisions come from :mod:`latentguard.decision.rule`: Latent Guard's
from ``decide`` over the guard's per-concept thresholds, the blacklist's from ``flags``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from ...decision.rule import flags
from ...errors import LatentGuardError
from ..methods import make_baselines, parse_baselines
from ..run import LATENT_GUARD

Step = Callable[[int], None]  # progress: called with the number of texts just scored
OFFERED = ("text_blacklist", "clipscore")


@dataclass
class MethodOutput:
    score: np.ndarray               # float64 [n]
    flagged: np.ndarray | None      # bool [n], or None: no operating threshold
    concept: np.ndarray             # int64 [n]; -1: none


class LatentGuardMethod:
    """The guard itself: ``guard.logits`` (allowlist, long-prompt windows, the one scoring pass), then
    ``guard.decide`` (per-concept thresholds included); the score is the best logit, as released."""

    key, graded = LATENT_GUARD, True

    def __init__(self, guard) -> None:
        self.guard = guard
        self.refused = 0  # prompts the guard refused to read (counted as flagged)

    def __call__(self, texts: Sequence[str], step: Step) -> MethodOutput:
        from ...guard.refusals import logits_or_refused
        from ...guard.validation import validate_logit_rows

        n, size = len(texts), self.guard.options.per_batch
        score, flagged, concept = np.empty(n), np.empty(n, dtype=bool), np.empty(n, dtype=np.int64)
        for start in range(0, n, size):
            batch = list(texts[start : start + size])
            logits, refused = logits_or_refused(self.guard, batch)  # a text it cannot read: blocked, ranked first
            validate_logit_rows(logits, len(batch))  # fail closed: a missing row is never "not flagged"
            unsafe, index = self.guard.decide(logits)
            unsafe, index = unsafe | refused, np.where(refused, -1, index)
            self.refused += int(refused.sum())
            score[start : start + len(batch)] = logits.max(axis=1)
            flagged[start : start + len(batch)] = unsafe
            concept[start : start + len(batch)] = index
            step(len(batch))
        return MethodOutput(score, flagged, concept)


class BaselineMethod:
    """A Table 1 baseline on the guard's blacklist; CLIPScore reads the guard encoder's pooled rows
    through the baseline's batch hook (texts are encoded once more for it)."""

    def __init__(self, baseline, guard) -> None:
        self.baseline, self.guard = baseline, guard
        self.key, self.graded = baseline.key, baseline.graded
        self._vectors = None

    def __call__(self, texts: Sequence[str], step: Step) -> MethodOutput:
        hook = self.baseline.batch_hook()
        if hook is not None:
            encoder = self.guard.encoder
            if self._vectors is None:
                from ...store.concept_cache import cached_concept_vectors

                self._vectors = cached_concept_vectors(encoder, self.guard.concepts,
                                                       **self.guard.options.concept_encoding())
            size = self.guard.options.per_batch
            for start in range(0, len(texts), size):
                batch = [self.guard.prepare(t) for t in texts[start : start + size]]
                emb = encoder.encode(batch, batch_size=len(batch))
                hook(emb, self._vectors.to(emb.device))
        score, best = self.baseline.domain_scores("benchmark", list(texts), self.guard.concepts)
        score = np.asarray(score, dtype=np.float64)
        if score.shape != (len(texts),) or not np.isfinite(score).all():
            raise LatentGuardError(f"{self.key} gave {score.shape[0]} scores for {len(texts)} prompts, or a "
                                   "non-finite one; refusing")
        threshold = self.baseline.fixed_threshold
        return MethodOutput(score, None if threshold is None else flags(score, threshold),
                            np.asarray(best, dtype=np.int64))


def parse_benchmark_baselines(value) -> list[str]:
    """``--baselines`` for the benchmark: the Text Blacklist and CLIPScore (BERTScore needs test.py)."""
    keys = parse_baselines(value)
    extra = [k for k in keys if k not in OFFERED]
    if extra:
        raise LatentGuardError(f"--baselines {', '.join(extra)}: the benchmark offers blacklist and clipscore "
                               "(BERTScore: test.py --baselines bertscore)")
    return keys


def build_methods(guard, baselines: Sequence[str], blacklist_match: str = "substring") -> list:
    """Latent Guard first, then the requested baselines, in table order."""
    return [LatentGuardMethod(guard)] + [BaselineMethod(b, guard) for b in
                                         make_baselines(baselines, blacklist_match=blacklist_match)]
