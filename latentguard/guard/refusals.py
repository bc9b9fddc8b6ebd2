"""Scoring a batch in which the guard may refuse some texts, for jobs that must go on (bulk scoring,
benchmarks, sanitizing).

A guard refuses a text its encoder cannot read (:class:`~latentguard.errors.UnreadableTextError`: an emoji
for a BERT-family encoder): it is never judged as if the characters were absent. ``check()`` raises, so
one such prompt stops a call. A job over many user rows instead treats a refused text as **blocked**
(fail closed: it never reaches a generator) and goes on with the others: :func:`check_or_refused` gives it
a refused verdict (unsafe, every category flagged, ``refused`` naming why), :func:`logits_or_refused` ranks
it above every real score. Both find the refused texts by splitting the batch in halves (the real check is
the only judge of what its encoder reads), so a batch with one refused text costs about ``2 log2(n)`` calls.
"""
from __future__ import annotations

from typing import Callable, Sequence, TypeVar

import numpy as np

from ..errors import UnreadableTextError
from .verdict import Verdict

# The score a refused text is ranked with: above any real logit (|logit| <= tempr), finite for metrics.
REFUSED_SCORE = 1e9

T = TypeVar("T")


def each_or_refused(call: Callable[[list], Sequence[T]], texts: Sequence) -> list[T | UnreadableTextError]:
    """``call(texts)``'s per-text results; where the guard refuses texts, the batch is split in halves until
    each refused text stands alone, and its place holds its :class:`UnreadableTextError`. (``texts`` may be
    any items ``call`` takes, e.g. indices.)"""
    texts = list(texts)
    if not texts:
        return []
    try:
        results = list(call(texts))
    except UnreadableTextError as exc:
        if len(texts) == 1:
            return [exc]
        mid = len(texts) // 2
        return each_or_refused(call, texts[:mid]) + each_or_refused(call, texts[mid:])
    return results


def refusal_reason(exc: UnreadableTextError) -> str:
    """What a refused row's ``refused`` column / field says: that it was refused as unreadable, and why."""
    return f"unreadable: {exc}"


def refused_verdict(guard, text: str, exc: UnreadableTextError) -> Verdict:
    """The verdict of a text the guard refused: blocked (unsafe, every category flagged, probability 1),
    ranked with :data:`REFUSED_SCORE`, no concept, ``refused`` naming why."""
    return guard.refusal_verdict(text, REFUSED_SCORE, refusal_reason(exc))


def check_or_refused(guard, texts: Sequence[str], explain: bool = True, forms: Sequence | None = None) -> list[Verdict]:
    """``guard.check(texts)``, one verdict per text, a text the guard refuses getting :func:`refused_verdict`.
    ``forms``: as :meth:`~latentguard.guard.LatentGuard.check` takes them (the server splits texts first)."""
    texts = list(texts)

    def call(at: list[int]) -> list[Verdict]:
        part = [texts[i] for i in at]
        if forms is None:  # a guard of one's own (the pipeline takes any object with check(prompts)) may not take more
            return guard.check(part) if explain else guard.check(part, explain=False)
        return guard.check(part, explain=explain, forms=[forms[i] for i in at])

    results = each_or_refused(call, list(range(len(texts))))
    return [refused_verdict(guard, text, r) if isinstance(r, UnreadableTextError) else r
            for text, r in zip(texts, results)]


def logits_or_refused(guard, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """``(logits [P, C], refused [P] bool)``: the batch scored as one call; the rows of texts the guard
    refuses filled with :data:`REFUSED_SCORE`."""
    texts = list(texts)
    rows = each_or_refused(guard.logits, texts)
    refused = np.array([isinstance(r, UnreadableTextError) for r in rows], dtype=bool)
    width = len(guard.concepts)
    if not rows:
        return np.zeros((0, width), dtype=np.float32), refused
    logits = np.stack([np.full(width, REFUSED_SCORE, dtype=np.float32) if bad else np.asarray(r, dtype=np.float32)
                       for r, bad in zip(rows, refused)])
    return logits, refused
