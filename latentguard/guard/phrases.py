"""Sanitize's third rule, no phrase the guard flags alone: the runs of words an edit is also read in.

Cutting words out of a prompt can leave two phrases side by side with no mark between, which the guard reads as
one harmless prompt while it flags one of them alone; the edit a prompt would stop at is therefore also judged in
runs of words (:mod:`latentguard.guard.sanitize`, ``_judge_windows``).
"""
from __future__ import annotations

from ..data.defences import joined, normalized


def edit_windows(text: str, watched: frozenset[str], defended: bool = True) -> list[str]:
    """:func:`word_windows` of ``text`` as written and, ``defended``, as the defences read its letters (look-alikes,
    invisible characters, words written apart: ``joined(normalized(text), watched)``), so a window hides nothing
    the whole text's forms would show ("nud\u0435 man" scored as written read safe: a twenty-eighth hostile pass)."""
    read = joined(normalized(text), watched) if defended else text
    return [w for t in dict.fromkeys([text, read]) for w in word_windows(t)]


# every phrase of up to 4 words lies whole in a window of 5, and every pair of words in a window of 3 (both 2 apart)
WINDOW_WORDS, SHORT_WINDOW_WORDS, WINDOW_STRIDE = 5, 3, 2


def word_windows(text: str) -> list[str]:
    """An edit's runs of :data:`WINDOW_WORDS` and of :data:`SHORT_WINDOW_WORDS` words, :data:`WINDOW_STRIDE` apart,
    each scored with its forms: cutting words can leave two phrases side by side with no mark between ("a topless
    woman a cat on a sofa a nude man" -> "a a cat on a sofa a nude man"), which the guard reads as one harmless
    prompt while it flags "a nude man" alone (a nineteenth hostile pass); in five words, "cat on sofa nude girl",
    a pair the guard flags alone was still diluted (a twenty-eighth). Counted in the budget like any form."""
    words_ = text.split()
    out = []
    for size in (WINDOW_WORDS, SHORT_WINDOW_WORDS):
        if len(words_) > size:
            last = len(words_) - size
            out += [" ".join(words_[k : k + size]) for k in sorted({*range(0, last + 1, WINDOW_STRIDE), last})]
    return out
