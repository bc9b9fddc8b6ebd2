"""Scoring the forms of each prompt (the deployment defences of :mod:`latentguard.data.defences`).

Each prompt is scored as written and, when they differ, as its normalised form and sentence by
sentence; a concept's logit for the prompt is its maximum over those forms (the worst case), taken
with the same scatter-max that long-prompt windows use. Prompts whose forms are all the text itself
(plain ASCII, one sentence) are scored exactly as without the defences.
"""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import torch

from ..errors import LatentGuardError
from ..scoring.windows import max_over_windows
from .options import encoding_batch

Evidence = Callable[..., list]

# What scoring a form costs (form_cost). A form up to ONE_PASS_CHARS characters (about the encoder's 77 tokens) costs
# one unit, as a short prompt does; a longer one, read over windows, costs a unit per CHARS_PER_UNIT characters or
# per TOKENS_PER_UNIT of its tokens, whichever is more: on 2 CPU cores a 10,000-character English form took about
# as long as 250 short prompts, and "!" * 10000 (10,000 tokens) about as long as 1,000 (a hostile pass held the
# model for 70 s with 16 of them).
ONE_PASS_CHARS = 300
CHARS_PER_UNIT = 40
TOKENS_PER_UNIT = 10


def score_forms(guard, texts: list[str], given: torch.Tensor | None,
                split: Sequence[Sequence[str] | None] | None = None) -> tuple[np.ndarray, Evidence]:
    """Logits ``[len(texts), C]`` (each the maximum over the text's forms) and ``evidence_for(index)``.

    ``given``: embeddings of ``texts`` themselves when the caller has them (the pipeline's one-pass
    path); only the other forms are encoded then. ``split``: each text's forms when the caller split it
    already (the server, to cost a request); a list that does not start with its text is split again.
    """
    if not guard.options.defended:
        return _whole(guard, texts, given)
    split = [None] * len(texts) if split is None else [f[0] if isinstance(f, tuple) else f for f in split]
    if any(f is not None and (not isinstance(f, list) or not all(isinstance(x, str) for x in f)) for f in split):
        raise LatentGuardError("forms must give, per text, its list of forms as forms_of() returns them, or None")
    if len(split) != len(texts):
        raise LatentGuardError(f"forms were given for {len(split)} texts, not {len(texts)}")
    watched = guard.watched_words  # once per call, not per prompt
    expanded = [list(f) if f and f[0] == t else guard.options.expand(t, watched)[0] for t, f in zip(texts, split)]
    if all(len(f) == 1 for f in expanded):
        return _whole(guard, texts, given)
    flat = [form for f in expanded for form in f]
    owner = torch.tensor([i for i, f in enumerate(expanded) for _ in f], dtype=torch.long)
    first = [0]
    for f in expanded[:-1]:
        first.append(first[-1] + len(f))
    chunks, blocks = [], []
    per_batch = encoding_batch(guard)
    for start in range(0, len(flat), per_batch):
        part = flat[start : start + per_batch]
        emb = None
        if given is not None and not guard.options.windowed:  # each text's own embedding is given: encode the rest
            emb = torch.empty(len(part), given.shape[1], given.shape[2], dtype=given.dtype)
            own = {first[i] - start: i for i in range(len(texts)) if start <= first[i] < start + len(part)}
            rest = [k for k in range(len(part)) if k not in own]
            for k, i in own.items():
                emb[k] = given[i]
            if rest:
                emb[rest] = guard.encoder.encode([part[k] for k in rest], batch_size=len(rest)).to(given.dtype)
        logits, evidence = guard.score_batch(part, emb=emb)
        blocks.append(torch.from_numpy(np.ascontiguousarray(logits)))
        chunks.append((start, evidence))
    logits, chosen = max_over_windows(torch.cat(blocks), owner, len(texts), return_window=True)

    def evidence_for(index: np.ndarray) -> list:
        rows = chosen[torch.arange(len(texts)), torch.as_tensor(index)].tolist()  # the form that decided
        out: list = [None] * len(texts)
        for start, evidence in chunks:
            mine = [i for i, r in enumerate(rows) if start <= r < start + per_batch]
            if mine:
                for i, words in zip(mine, evidence(np.asarray(index)[mine], [rows[i] - start for i in mine])):
                    out[i] = words
        return out

    return logits.numpy(), evidence_for


def forms_of(guard, prompts: Sequence[str]) -> list[tuple[list[str], int]]:
    """Per prompt, the texts ``guard`` scores for it (its prepared text first, then the forms its defences
    add) and how many sentences the defences split it into, from one split: a caller that needs them
    before scoring (the server caps and costs a request by them) passes them to ``check(forms=...)``."""
    texts = [guard.prepare(p) for p in prompts]
    if not guard.options.defended:
        return [([t], 1) for t in texts]
    watched = guard.watched_words
    return [guard.options.expand(t, watched) for t in texts]


def _whole(guard, texts: Sequence[str], given: torch.Tensor | None) -> tuple[np.ndarray, Evidence]:
    logits, evidence = guard.score_batch(list(texts), emb=given)
    return logits, lambda index: evidence(index)


def form_cost(forms: list[str], encoder=None) -> int:
    """What the encoder reads for one prompt's ``forms``, in prompt-sized units: the unit the server queues by
    (:attr:`latentguard.serve.server.Split.cost`) and sanitizing spends its budget in. Without ``encoder``, by
    characters alone: the least the forms can cost, known before any tokenizing."""
    return sum(_one_form_cost(form, encoder) for form in forms)


def _one_form_cost(form: str, encoder) -> int:
    by_chars = 1 if len(form) <= ONE_PASS_CHARS else -(-len(form) // CHARS_PER_UNIT)
    if encoder is None or len(form.encode("utf-8")) + 2 <= encoder.context_length:
        return by_chars  # a byte is a token at most: it fits one pass
    tokens = encoder.token_count(form)  # None: an encoder that cannot count alone, or a text it refuses
    if tokens is None or tokens <= encoder.context_length:
        return by_chars
    return max(by_chars, -(-tokens // TOKENS_PER_UNIT))
