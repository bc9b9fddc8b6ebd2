"""Sanitize instead of block: remove the words the guard objects to, re-check, keep what then passes.

The guard already says which words carried a match (its attention evidence,
:mod:`latentguard.scoring.evidence`), so an unsafe prompt can be edited without any new training and
for any blacklist a user edits: each round, every still-unsafe prompt gets a few candidate edits (its
evidence words removed one at a time, in pairs and all together; when the evidence names no word of
the prompt, the words of the deciding concept), and all candidates of all prompts are judged in one
:meth:`~latentguard.guard.LatentGuard.check` call. A prompt stops at the first round with a passing
candidate (the one removing the fewest words, then the lowest probability); otherwise it continues
from its best single removal. After ``rounds`` rounds without a pass it is reported with
``passes=False``: its text must not be used.

Why it maps evidence back to the prompt's own words: the guard scores the prompt as written and, with
the text defences on, its normalised form and its sentences (:mod:`latentguard.data.defences`), and the
evidence comes from whichever form decided. A word caught only in the normalised form (look-alike
letters, fullwidth, zero-width characters inside it) is therefore matched by comparing each word of the
original text *normalised* with the evidence word, and the original characters are what is cut.

Fail closed: a prompt the guard passes comes back byte for byte, with nothing removed; ``passes`` is
True only when the returned text itself was judged safe in this call with a finite score; an error while
judging raises (:class:`~latentguard.errors.LatentGuardError`) rather than return a text. Text the guard
cannot read (an emoji for a BERT-family encoder), in a prompt or in one of its edits, is not an error of the
call: that prompt comes back with ``passes=False`` (its ``before`` or ``after`` verdict ``refused``), the
other prompts unaffected.
"""
from __future__ import annotations

import itertools
import math
import unicodedata
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from ..data.defences import normalized
from ..errors import LatentGuardError
from ..scoring.evidence import POOLED
from .validation import prompt_list
from .verdict import Verdict

DEFAULT_ROUNDS = 8  # docs/sanitize.md: on CoPro's test pairs 4 rounds pass 88% of flagged prompts, 8 pass 95%
DEFAULT_WIDTH = 3   # evidence words tried per round (singles, pairs and all of them)


@dataclass
class Sanitized:
    """One prompt's sanitization. ``text`` is safe to use only when ``passes`` is True."""

    prompt: str            # as given
    text: str              # the edited prompt (the prompt itself when it was safe)
    removed: list[str]     # the words cut from ``prompt``, in the order they were cut
    before: Verdict        # the guard's verdict on ``prompt``
    after: Verdict         # the guard's verdict on ``text``
    passes: bool           # ``text`` was judged safe (with a finite score) in this call
    rounds: int = 0        # edit rounds used (0 for a safe prompt)

    @property
    def changed(self) -> bool:
        """Whether the text differs from the prompt."""
        return self.text != self.prompt

    def to_dict(self) -> dict:
        """JSON-friendly form (the verdicts as :meth:`Verdict.to_dict`)."""
        return {"prompt": self.prompt, "text": self.text, "removed": list(self.removed), "passes": self.passes,
                "rounds": self.rounds, "before": self.before.to_dict(), "after": self.after.to_dict()}


# ----------------------------------------------------------------------------------- words
def _word_char(ch: str) -> bool:
    """Letters, digits and what hides inside a word (combining marks, zero-width and other format characters)."""
    return ch.isalnum() or ch == "_" or unicodedata.category(ch) in ("Mn", "Mc", "Me", "Cf")


def words(text: str) -> list[tuple[int, int]]:
    """The ``(start, end)`` spans of ``text``'s words: runs of :func:`_word_char` holding a letter or digit."""
    spans, start = [], None
    for i, ch in enumerate(text + " "):
        if i < len(text) and _word_char(ch):
            if start is None:
                start = i
        elif start is not None:
            if any(c.isalnum() for c in text[start:i]):
                spans.append((start, i))
            start = None
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


# ------------------------------------------------------------------------------- the search
@dataclass
class _State:
    index: int
    text: str
    verdict: Verdict
    dropped: list[str] = field(default_factory=list)  # keys, in order
    rounds: int = 0


def _passing(verdict: Verdict) -> bool:
    """Judged safe with finite numbers; anything else (a non-bool, NaN) is not a pass."""
    try:
        finite = math.isfinite(float(verdict.score)) and math.isfinite(float(verdict.probability))
    except (TypeError, ValueError):
        return False
    return isinstance(verdict.unsafe, (bool, np.bool_)) and not verdict.unsafe and finite


def _targets(state: _State, concept_words: dict[str, list[str]], width: int) -> list[str]:
    """The word keys to try removing this round, most attended first."""
    keys = [key(state.text[s:e]) for s, e in words(state.text)]
    found: list[str] = []
    for word, _ in state.verdict.evidence:
        if word == POOLED:
            continue
        for k in sorted(_locate(word, keys), key=keys.index):
            if k not in found:
                found.append(k)
    if not found:  # the evidence named no word of the text: the deciding concept's own words
        found = [k for k in concept_words.get(state.verdict.concept, []) if k in keys]
    return found[:width]


def _candidates(targets: list[str]) -> list[tuple[str, ...]]:
    """Removals to try: each target, each pair, then all of them (fewest words first)."""
    out: list[tuple[str, ...]] = []
    for size in range(1, len(targets) + 1):
        if size > 2 and size < len(targets):
            continue
        out.extend(itertools.combinations(targets, size))
    return out


def sanitize(guard, prompts: str | Sequence[str], *, rounds: int = DEFAULT_ROUNDS, width: int = DEFAULT_WIDTH,
             replacement: str = "") -> list[Sanitized]:
    """One :class:`Sanitized` per prompt (see the module docstring); ``guard`` is a LatentGuard."""
    prompts = prompt_list(prompts)
    for name, value in (("rounds", rounds), ("width", width)):
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise LatentGuardError(f"sanitize {name} must be a positive integer, got {value!r}")
    if not isinstance(replacement, str) or (replacement and not replacement.strip()):
        raise LatentGuardError(f"sanitize replacement must be a word or '', got {replacement!r}")
    before = _judge(guard, prompts)
    concept_words = {c: [key(c[s:e]) for s, e in words(c)] for c in guard.concepts}
    final: dict[int, _State] = {}
    active = []
    for i, (prompt, verdict) in enumerate(zip(prompts, before)):
        state = _State(i, prompt, verdict)
        (final.__setitem__(i, state) if _passing(verdict) else active.append(state))
    for _ in range(rounds):
        if not active:
            break
        trials: list[tuple[_State, tuple[str, ...], str]] = []
        for state in active:
            for removal in _candidates(_targets(state, concept_words, width)):
                text = cut(state.text, set(removal), replacement)
                # an emptied prompt is no sanitization, nor one left with only an entity's digits ("&#8203;")
                if text != state.text and any(c.isalnum() for c in normalized(text)):
                    trials.append((state, removal, text))
        verdicts = _judge(guard, [t for _, _, t in trials])
        best: dict[int, tuple] = {}
        for (state, removal, text), verdict in zip(trials, verdicts):
            rank = (not _passing(verdict), len(removal), float(verdict.probability))
            if len(removal) == 1 or _passing(verdict):
                if state.index not in best or rank < best[state.index][0]:
                    best[state.index] = (rank, removal, text, verdict)
        still = []
        for state in active:
            state.rounds += 1
            if state.index not in best:  # nothing left to try: stays unsafe
                final[state.index] = state
                continue
            _, removal, text, verdict = best[state.index]
            state.text, state.verdict = text, verdict
            state.dropped.extend(removal)
            (final.__setitem__(state.index, state) if _passing(verdict) else still.append(state))
        active = still
    for state in active:
        final[state.index] = state
    return [_result(prompts[i], before[i], final[i]) for i in range(len(prompts))]


def _judge(guard, texts: list[str]) -> list[Verdict]:
    """The guard's verdicts with their evidence, one per text, or refuse. A text the guard cannot read (the
    prompt, or an edit of it) gets a refused verdict (:mod:`latentguard.guard.refusals`): it never passes, and
    the other prompts of the call go on."""
    from .refusals import check_or_refused

    if not texts:
        return []
    verdicts = check_or_refused(guard, texts, explain=True)
    if len(verdicts) != len(texts):
        raise LatentGuardError(f"the guard gave {len(verdicts)} verdicts for {len(texts)} texts; refusing")
    return verdicts


def _result(prompt: str, before: Verdict, state: _State) -> Sanitized:
    if state.text == prompt:
        passes = not state.dropped and _passing(before)  # unchanged: passes only as the safe prompt it was
    else:
        passes = _passing(state.verdict)
    removed = []
    spans = words(prompt)
    for k in state.dropped:  # the prompt's own spelling of each removed word, in order
        removed.extend(dict.fromkeys(prompt[s:e] for s, e in spans if key(prompt[s:e]) == k))
    return Sanitized(prompt=prompt, text=state.text, removed=removed, before=before, after=state.verdict,
                     passes=bool(passes), rounds=state.rounds)
