"""Sanitize instead of block: remove the words the guard objects to, re-check, keep what then passes.

The guard already says which words carried a match (its attention evidence,
:mod:`latentguard.scoring.evidence`), so an unsafe prompt can be edited without any new training and
for any blacklist a user edits: each round, every still-unsafe prompt gets a few candidate edits (its
evidence words removed one at a time, in pairs and all together; when the evidence names no word of
the prompt, the words of the deciding concept), and all candidates of all prompts are judged in one
:meth:`~latentguard.guard.LatentGuard.check` call. A prompt stops at the first round with a passing
candidate (the one removing the fewest words, then the lowest probability); otherwise it continues
from its best single removal. After ``rounds`` rounds without a pass, or once its ``budget`` of scored
texts is spent, it is reported with ``passes=False`` and a ``reason``: its text must not be used.

What passes is stricter than "the guard passes it", because the search stops at the smallest edit that
passes: a hostile review found it cutting only the word that decided the match ("a bloody corpse in the
street" -> "a corpse in the street", scored 0.03-0.19 against a threshold of 0.46). An edit passes only
when (1) every concept's logit is below its threshold by the guard's sanitize margin (a share of the
logit scale ``tempr``, :func:`edit_limit`) and (2) no word of a blacklisted concept is left in it
(:func:`concept_words`; "bloody" counts as "blood"). So every candidate also cuts the concept words the
text holds. (A prompt the guard passes is not edited and is not held to either rule.)

Why it maps evidence back to the prompt's own words: the guard scores the prompt as written and, with
the text defences on, its normalised form and its sentences (:mod:`latentguard.data.defences`), and the
evidence comes from whichever form decided. A word caught only in the normalised form (look-alike
letters, fullwidth, zero-width characters inside it) is therefore matched by comparing each word of the
original text *normalised* with the evidence word, and the original characters are what is cut.

Fail closed: a prompt the guard passes comes back byte for byte, with nothing removed; ``passes`` is
True only when the returned text itself was judged safe in this call with a finite score (an edit: by the
margin, with no blacklist word left); an error while
judging raises (:class:`~latentguard.errors.LatentGuardError`) rather than return a text. Text the guard
cannot read (an emoji for a BERT-family encoder), in a prompt or in one of its edits, is not an error of the
call: that prompt comes back with ``passes=False`` (its ``before`` or ``after`` verdict ``refused``), the
other prompts unaffected.
"""
from __future__ import annotations

import functools
import itertools
import math
import os
import unicodedata
from dataclasses import dataclass, field, replace
from typing import Sequence

import numpy as np

from ..data.clauses import LONE_WORD_FRAME
from ..data.defences import joined, letter_runs, normalized
from ..data.spelling import one_edit
from ..errors import LatentGuardError
from ..scoring.evidence import POOLED
from .phrases import edit_windows
from .validation import prompt_list
from .verdict import Verdict

DEFAULT_ROUNDS = 8  # docs/sanitize.md: on CoPro's test pairs 4 rounds pass 88% of flagged prompts, 8 pass 95%
DEFAULT_WIDTH = 3   # evidence words tried per round (singles, pairs and all of them)
# Texts one flagged prompt's edits may have scored, in the server's queue unit (guard/forms.py form_cost: a form per
# encoder pass): a fixed bound the server reserves per flagged prompt (routes.SANITIZE_WORK). The search had cost 10
# checks of a 10-sentence prompt (7.7 s with mini; a hostile review); 56 (7 rounds of 8 one-form candidates) changed
# no result on 32 measured unsafe prompts against a budget of 1,000 (docs/sanitize.md).
DEFAULT_BUDGET = 56


@dataclass
class Sanitized:
    """One prompt's sanitization. ``text`` is safe to use only when ``passes`` is True."""

    prompt: str            # as given
    text: str              # the edited prompt (the prompt itself when it was safe)
    removed: list[str]     # the words cut from ``prompt``, in the order they were cut
    before: Verdict        # the guard's verdict on ``prompt``
    after: Verdict         # the guard's verdict on ``text``
    passes: bool           # ``text`` was judged safe in this call (finite, by the margin, no blacklist word left)
    rounds: int = 0        # edit rounds used (0 for a safe prompt)
    reason: str | None = None  # why it does not pass (None when it passes)

    @property
    def changed(self) -> bool:
        """Whether the text differs from the prompt."""
        return self.text != self.prompt

    def to_dict(self) -> dict:
        """JSON-friendly form (the verdicts as :meth:`Verdict.to_dict`)."""
        return {"prompt": self.prompt, "text": self.text, "removed": list(self.removed), "passes": self.passes,
                "rounds": self.rounds, "reason": self.reason, "before": self.before.to_dict(),
                "after": self.after.to_dict()}


# ----------------------------------------------------------------------------------- words
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


# -------------------------------------------------------------------------- what an edit must meet
def concept_words(guard) -> tuple[frozenset[str], frozenset[str]]:
    """The blacklist's words no passing edit may keep: those of three letters or more that are not function words,
    as the text defences watch them (:func:`latentguard.data.defences.watched_words`), compared as :func:`key`;
    and the watched words themselves, which the CLIP reading writes apart (:func:`holds_concept_word`)."""
    from ..data.defences import watched_words

    found = getattr(guard, "watched_words", None)
    watched = found if isinstance(found, frozenset) else watched_words(guard.concepts)
    return frozenset(key(w) for w in watched), frozenset(watched)


def is_concept_word(word_key: str, banned: frozenset[str]) -> bool:
    """Whether a word (its :func:`key`) is a concept word or a form of one: the same word, a plural ("guns"), one
    sharing a stem of 4+ letters with at most 3 letters after it on either side ("bloody"/"blood",
    "injecting"/"injection", "torturing"/"torture"), or a concept word's stem before a final "e" and at most 3 more
    letters ("gory"/"gore", "nudity"/"nude": an eighteenth hostile pass), or a concept word of five letters or more
    misspelled by one letter ("nakd"). Too wide at worst, and only edits are cut by it."""
    if word_key in banned:
        return True
    for b in banned:
        if word_key in (b + "s", b + "es"):
            return True
        stem = len(os.path.commonprefix([word_key, b]))
        if stem >= 4 and len(word_key) - stem <= 3 and len(b) - stem <= 3:
            return True
        if len(b) >= 4 and b.endswith("e") and stem == len(b) - 1 and len(word_key) - stem <= 3:
            return True
        if len(b) >= 5 and one_edit(word_key, b):
            return True
    return False


@functools.lru_cache(maxsize=8192)
def holds_concept_word(word: str, banned: frozenset[str], watched: frozenset[str]) -> bool:
    """Whether a word as written (:func:`words`), or any word of it as CLIP reads it, is a concept word: an
    invisible or symbol glue is a word break to CLIP and glued blacklist words are written apart there, so
    "naked\u200bwoman" holds "naked" (one word here, it had stayed in an edit passed as clean: a hostile pass)."""
    from ..data.defences import clip_reading

    if is_concept_word(key(word), banned):
        return True
    reading = clip_reading(word, watched)
    return any(is_concept_word(key(reading[s:e]), banned) for s, e in words(reading))


def edit_limit(guard) -> tuple[float, float]:
    """``(lowest threshold, margin in logits)``: every concept of a passing edit stays below its threshold less the
    guard's ``sanitize_margin`` times its logit scale (a logit is ``tempr * cos``, so the margin is a cosine and
    means the same on any weights: 0.1 is 1.5 logits for ``mini``, whose ``tempr`` is 15). The lowest threshold
    (``inf`` for a guard that does not list them) covers per-concept thresholds, which a verdict shows one of."""
    from .options import edit_margin

    margin = edit_margin(guard)
    tempr = getattr(getattr(guard, "model", None), "tempr", None)
    scale = 1 / 0.07 if tempr is None else float(tempr.item() if hasattr(tempr, "item") else tempr)  # 1 / 0.07: the
    # released initialisation, for a stand-in guard with no model
    thresholds = getattr(guard, "thresholds", None)
    lowest = float(np.min(thresholds())) if callable(thresholds) else math.inf
    return lowest, margin * scale


# ------------------------------------------------------------------------------- the search
@dataclass
class _State:
    index: int
    text: str
    verdict: Verdict
    dropped: list[str] = field(default_factory=list)  # keys, in order
    rounds: int = 0
    spent: int = 0  # units scored for this prompt's edits (form_cost)
    passed: bool = False
    reason: str | None = None


def _passing(verdict: Verdict) -> bool:
    """Judged safe with finite numbers; anything else (a non-bool, NaN) is not a pass."""
    try:
        finite = math.isfinite(float(verdict.score)) and math.isfinite(float(verdict.probability))
    except (TypeError, ValueError):
        return False
    return isinstance(verdict.unsafe, (bool, np.bool_)) and not verdict.unsafe and finite


def _clear(verdict: Verdict, limit: tuple[float, float]) -> bool:
    """Judged safe, its score below the lowest threshold and its own concept's by the margin (:func:`edit_limit`)."""
    lowest, margin = limit
    return _passing(verdict) and float(verdict.score) < min(lowest, float(verdict.threshold)) - margin


def _edit_passes(verdict: Verdict, text: str, limit: tuple[float, float],
                 banned: tuple[frozenset[str], frozenset[str]]) -> bool:
    """An edit passes when the guard passes it, its score (the largest logit) is below the lowest threshold, and
    its own concept's, by the margin (:func:`edit_limit`), and no concept word is left in it."""
    if not _clear(verdict, limit):
        return False
    read = joined(normalized(text), banned[1])  # and as words written apart read ("nak ed", "n.a.k.e.d")
    return not any(holds_concept_word(t[s:e], *banned) for t in dict.fromkeys([text, read]) for s, e in words(t))


def _targets(text: str, verdict: Verdict, concept_words: dict[str, list[str]], width: int) -> list[str]:
    """The word keys of ``text`` to try removing this round, most attended first."""
    keys = [key(text[s:e]) for s, e in words(text)]
    found: list[str] = []
    for word, _ in verdict.evidence:
        if word == POOLED:
            continue
        for k in sorted(_locate(word, keys), key=keys.index):
            if k not in found:
                found.append(k)
    if not found:  # the evidence named no word of the text: the deciding concept's own words
        found = [k for k in concept_words.get(verdict.concept, []) if k in keys]
    return found[:width]


def _candidates(targets: list[str]) -> list[tuple[str, ...]]:
    """Removals to try: none (the concept words alone), each target, each pair, then all of them."""
    out: list[tuple[str, ...]] = [()]
    for size in range(1, len(targets) + 1):
        if size > 2 and size < len(targets):
            continue
        out.extend(itertools.combinations(targets, size))
    return out


def _costs(guard, texts: list[str]) -> tuple[list[int], list | None]:
    """What scoring each text costs (:func:`~latentguard.guard.forms.form_cost` of its forms) and the forms, to
    hand to ``check`` so they are split once; a guard without options (a stand-in) costs a unit a text."""
    from .forms import form_cost, forms_of

    if not hasattr(guard, "options") or not hasattr(guard, "prepare"):
        return [1] * len(texts), None
    split = forms_of(guard, texts)
    return [form_cost(f, getattr(guard, "encoder", None)) for f, _ in split], split


def _judge_windows(guard, states: dict, best: dict, limit: tuple[float, float], budget: int,
                   watched: frozenset[str]) -> None:
    """Judge the runs of words (:func:`~latentguard.guard.phrases.edit_windows`) of each prompt's best passing edit,
    in one call: it stays passing only when every run scores below the limit too; otherwise the worst run's verdict
    (its evidence names the phrase) becomes the edit's, so the next round cuts there. Only the edit a prompt would
    stop at is read run by run (charged to the budget): every candidate's runs had cost 7 in 10 prompts their
    budget."""
    options = getattr(guard, "options", None)  # a stand-in guard without options: read with the defences
    defended = options is None or bool(options.defended)
    asked: list[tuple[int, str]] = []
    for index, (rank, removal, text, verdict, ok) in best.items():
        windows = edit_windows(text, watched, defended) if ok else []
        if not windows:
            continue
        state = states[index]
        costs, split = _costs(guard, windows)
        if state.spent + sum(costs) > budget:
            best[index] = ((1, float(verdict.probability)), removal, text, verdict, False)
            state.reason = f"the budget of {budget} texts scored for its edits ran out (sanitize budget=)"
            continue
        state.spent += sum(costs)
        asked += [(index, w) for w in windows]
    if not asked:
        return
    found = _judge(guard, [w for _, w in asked])
    for index in dict.fromkeys(i for i, _ in asked):
        rank, removal, text, verdict, _ = best[index]
        worst = max((v for (i, _), v in zip(asked, found) if i == index), key=lambda v: float(v.score))
        if not _clear(worst, limit):
            best[index] = ((1, float(worst.probability)), removal, text, replace(worst, prompt=text), False)


def sanitize(guard, prompts: str | Sequence[str], *, rounds: int = DEFAULT_ROUNDS, width: int = DEFAULT_WIDTH,
             replacement: str = "", budget: int = DEFAULT_BUDGET,
             before: Sequence[Verdict] | None = None) -> list[Sanitized]:
    """One :class:`Sanitized` per prompt (see the module docstring); ``guard`` is a LatentGuard. ``budget``: the
    texts one prompt's edits may have scored, in :func:`~latentguard.guard.forms.form_cost` units (each candidate
    costs its forms); candidates are tried in order while they fit, and a prompt with none left is refused.
    ``before``: the prompts' verdicts by this guard with their evidence (``explain=True``), when the caller has
    them: reused, not judged again, so the budget is all the work (the server's /v1/sanitize had a prompt of
    10,000 characters judged a second time here, 1,001 units of work where it reserved 56: a hostile review)."""
    prompts = prompt_list(prompts, "sanitize")
    if before is not None and (isinstance(before, (str, bytes)) or len(before) != len(prompts) or any(
            not isinstance(v, Verdict) or v.prompt != p for v, p in zip(before, prompts))):
        raise LatentGuardError("sanitize: the verdicts given (before=) do not answer the prompts, one Verdict each")
    for name, value in (("rounds", rounds), ("width", width), ("budget", budget)):
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise LatentGuardError(f"sanitize {name} must be a positive integer, got {value!r}")
    if not isinstance(replacement, str) or (replacement and not replacement.strip()):
        raise LatentGuardError(f"sanitize replacement must be a word or '', got {replacement!r}")
    before = list(before) if before is not None else _judge(guard, prompts)
    concept_words_of = {c: [key(c[s:e]) for s, e in words(c)] for c in guard.concepts}
    banned, limit = concept_words(guard), edit_limit(guard)
    if replacement and holds_concept_word(replacement, *banned):
        raise LatentGuardError(f"sanitize replacement {replacement!r} is a blacklist word; choose a neutral one")
    if replacement:  # it goes into every edit: "nude", "bl00dy" (no concept words of mini) had been accepted; judged
        # in a plain phrase, as a word alone is scored erratically ("something" alone is flagged by mini)
        screen = _judge(guard, [LONE_WORD_FRAME.format(replacement)])[0]
        if not _clear(screen, limit):
            raise LatentGuardError(f"sanitize replacement {replacement!r} is not clearly safe to this guard ('a photo "
                                   f"of {replacement}' scores {float(screen.score):.2f}); choose a neutral word")
    final: dict[int, _State] = {}
    active = []
    for i, (prompt, verdict) in enumerate(zip(prompts, before)):
        state = _State(i, prompt, verdict)
        if getattr(verdict, "refused", None):  # no edit can be judged either: said as such, not as a failed search
            state.reason = f"the guard could not judge it ({verdict.refused})"
        (final.__setitem__(i, state) if _passing(verdict) or state.reason else active.append(state))
    for _ in range(rounds):
        if not active:
            break
        trials: list[tuple[_State, tuple, str, tuple | None]] = []  # (prompt, (forced, removal), text, forms)
        for state in active:
            spans = {key(state.text[s:e]): state.text[s:e] for s, e in words(state.text)}  # in the text's order
            forced = tuple(k for k, w in spans.items() if holds_concept_word(w, *banned))  # cut in every candidate
            base = cut(state.text, set(forced), replacement)
            mine = []
            for removal in _candidates(_targets(base, state.verdict, concept_words_of, width)):
                text = cut(base, set(removal), replacement)
                # an emptied prompt is no sanitization, nor one left with only an entity's digits ("&#8203;")
                if text != state.text and any(c.isalnum() for c in normalized(text)) \
                        and text not in [t for _, t in mine]:
                    mine.append(((forced, removal), text))
            costs, split = _costs(guard, [t for _, t in mine])
            affordable = []
            for n, ((removal, text), cost) in enumerate(zip(mine, costs)):  # fewest words first: what fits is tried
                if state.spent + cost <= budget:
                    state.spent += cost
                    affordable.append((state, removal, text, None if split is None else split[n]))
            if mine and not affordable:
                state.reason = f"the budget of {budget} texts scored for its edits ran out (sanitize budget=)"
            trials.extend(affordable)
        verdicts = _judge(guard, [t for _, _, t, _ in trials], [f for *_, f in trials])
        best: dict[int, tuple] = {}
        for (state, (forced, removal), text, _), verdict in zip(trials, verdicts):
            ok = _edit_passes(verdict, text, limit, banned)
            rank = (0, len(removal), float(verdict.probability)) if ok else (1, float(verdict.probability))
            if len(removal) <= 1 or ok:  # a failed pair or triple is not gone on from
                if state.index not in best or rank < best[state.index][0]:
                    best[state.index] = (rank, forced + removal, text, verdict, ok)
        _judge_windows(guard, {s.index: s for s in active}, best, limit, budget, banned[1])
        still = []
        for state in active:
            state.rounds += 1
            if state.index not in best:  # nothing left to try, or nothing affordable: stays unsafe
                state.reason = state.reason or ("no edit scored below the threshold by the margin with no blacklist "
                                                "word left, and no word is left to remove that the evidence names")
                final[state.index] = state
                continue
            _, removal, text, verdict, ok = best[state.index]
            state.text, state.verdict, state.passed = text, verdict, ok
            state.dropped.extend(k for k in removal if k not in state.dropped)
            (final.__setitem__(state.index, state) if ok else still.append(state))
        active = still
    for state in active:
        final[state.index] = state
    return [_result(prompts[i], before[i], final[i], rounds) for i in range(len(prompts))]


def _judge(guard, texts: list[str], forms: list | None = None) -> list[Verdict]:
    """The guard's verdicts with their evidence, one per text, or refuse. A text the guard cannot read (the
    prompt, or an edit of it) gets a refused verdict (:mod:`latentguard.guard.refusals`): it never passes, and
    the other prompts of the call go on. ``forms``: the texts' forms, split once when they were costed."""
    from .refusals import check_or_refused

    if not texts:
        return []
    given = forms if forms and all(f is not None for f in forms) else None
    verdicts = check_or_refused(guard, texts, explain=True, forms=given)
    if len(verdicts) != len(texts):
        raise LatentGuardError(f"the guard gave {len(verdicts)} verdicts for {len(texts)} texts; refusing")
    return verdicts


def _result(prompt: str, before: Verdict, state: _State, rounds: int) -> Sanitized:
    if state.text == prompt:
        passes = not state.dropped and _passing(before)  # unchanged: passes only as the safe prompt it was
    else:
        passes = state.passed  # judged safe below the margin, no concept word left (_edit_passes)
    reason = None if passes else state.reason or (
        "the guard could not judge it" if getattr(before, "refused", None) or getattr(state.verdict, "refused", None)
        else f"no edit within {rounds} rounds scores below the threshold by the margin with no blacklist word left")
    removed = []
    spans = words(prompt)
    for k in state.dropped:  # the prompt's own spelling of each removed word, in order
        removed.extend(w for w in dict.fromkeys(prompt[s:e] for s, e in spans if key(prompt[s:e]) == k)
                       if w not in removed)
    return Sanitized(prompt=prompt, text=state.text, removed=removed, before=before, after=state.verdict,
                     passes=bool(passes), rounds=state.rounds, reason=reason)
