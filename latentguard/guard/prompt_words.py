"""A prompt's words as :func:`~latentguard.guard.sanitize.sanitize` edits them: where they are, how one is compared
with the guard's evidence, and the prompt with some of them cut out, everything else kept as it was written.

Apart from the edit search so that each stays a short file; ``sanitize`` re-exports these names.
"""
from __future__ import annotations

import unicodedata

from ..data.defences import letter_runs, normalized


def _word_char(ch: str) -> bool:
    """Letters, digits and what hides inside a word (combining marks, zero-width and other format characters)."""
    return ch.isalnum() or ch == "_" or unicodedata.category(ch) in ("Mn", "Mc", "Me", "Cf")


def words(text: str) -> list[tuple[int, int]]:
    """The ``(start, end)`` spans of ``text``'s words: runs of :func:`_word_char` holding a letter or digit, and
    single letters written apart as one word (:func:`~latentguard.data.defences.letter_runs`)."""
    spans, start = [], None
    for i, ch in enumerate(text + " "):
        if i < len(text) and _word_char(ch):
            if start is None:
                start = i
        elif start is not None:
            if any(c.isalnum() for c in text[start:i]):
                spans.append((start, i))
            start = None
    for run_start, run_end in letter_runs(text):  # "n.a.k.e.d" is one word ("naked") to a reader, and so here
        inside = [span for span in spans if span[0] < run_end and span[1] > run_start]
        merged = (min(inside)[0], max(e for _, e in inside))
        spans = sorted({span for span in spans if span not in inside} | {merged})
    return spans


def key(word: str) -> str:
    """How a word is compared with the evidence: normalised (look-alikes, fullwidth, accents), lower case,
    letters and digits only, so the encoder's spelling of a word ("ｋｎｉｆｅ" read as "knife") meets the prompt's."""
    return "".join(c for c in normalized(word).casefold() if c.isalnum())


def _locate(evidence_word: str, keys: list[str]) -> set[str]:
    """The prompt word keys an evidence word stands for: the same word; else a run of words it joins
    ("self-harm" read as one word); else words containing it or contained in it (3+ characters)."""
    target = key(evidence_word)
    if not target:
        return set()
    if target in keys:
        return {target}
    for i in range(len(keys)):
        joined = ""
        for j in range(i, len(keys)):
            joined += keys[j]
            if joined == target:
                return set(keys[i : j + 1])
            if not target.startswith(joined):
                break
    if len(target) >= 3:
        return {k for k in keys if len(k) >= 3 and (target in k or k in target)}
    return set()


def cut(text: str, drop: set[str], replacement: str = "") -> str:
    """``text`` without every word whose :func:`key` is in ``drop`` (each removed with one space beside it, or
    replaced by ``replacement``); everything else is kept as it was written."""
    out, last = [], 0
    for start, end in words(text):
        if key(text[start:end]) not in drop:
            continue
        if replacement:
            out.append(text[last:start] + replacement)
            last = end
            continue
        before = text[last:start]
        if end < len(text) and text[end].isspace():
            end += 1  # "a bloody knife" -> "a knife"
        elif before and before[-1].isspace():
            before = before[:-1]  # "a knife, bloody" -> "a knife,"
        out.append(before)
        last = end
    out.append(text[last:])
    return "".join(out)
