"""Scoring a batch in which the guard may refuse some texts, for jobs that must go on (benchmarks).

A guard refuses a text its encoder cannot read (:class:`~latentguard.errors.UnreadableTextError`: an emoji
for a BERT-family encoder): it is never judged as if the characters were absent. ``check()`` raises, so
one such prompt stops a call. A benchmark over thousands of prompts instead counts a refused prompt as
**blocked** (it never reaches a generator: fail closed); the caller counts them.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from ..errors import UnreadableTextError

# The score a refused text is ranked with: above any real logit (|logit| <= tempr), finite for metrics.
REFUSED_SCORE = 1e9


def logits_or_refused(guard, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """``(logits [P, C], refused [P] bool)``: the batch scored as one call; when the guard refuses a text,
    each text on its own, the refused ones' rows filled with :data:`REFUSED_SCORE`."""
    texts = list(texts)
    try:
        return guard.logits(texts), np.zeros(len(texts), dtype=bool)
    except UnreadableTextError:
        pass
    refused = np.zeros(len(texts), dtype=bool)
    rows: list[np.ndarray | None] = []
    for i, text in enumerate(texts):
        try:
            rows.append(guard.logits([text])[0])
        except UnreadableTextError:
            refused[i] = True
            rows.append(None)
    width = len(guard.concepts)
    logits = np.stack([np.full(width, REFUSED_SCORE, dtype=np.float32) if r is None else r for r in rows])
    return logits, refused
