"""Turning sub-word tokens back into words for the guard's evidence (which words drove a match)."""
from __future__ import annotations

from typing import Sequence


def merge_pieces(pieces: Sequence[tuple[str, float]], tokenizer=None) -> list[tuple[str, float]]:
    """Join sub-word pieces into words, summing their weights.

    Understands CLIP BPE (``</w>`` ends a word), WordPiece (``##`` continues one) and
    SentencePiece / GPT-2 (``▁`` / ``Ġ`` starts one); anything else is one word per token.
    """
    tokens = [t for t, _ in pieces]
    if any(t.endswith("</w>") for t in tokens):
        starts = [i == 0 or tokens[i - 1].endswith("</w>") for i in range(len(tokens))]
    elif any(t.startswith("##") for t in tokens):
        starts = [i == 0 or not t.startswith("##") for i, t in enumerate(tokens)]
    elif any(t.startswith(("▁", "Ġ")) for t in tokens):
        starts = [i == 0 or t.startswith(("▁", "Ġ")) for i, t in enumerate(tokens)]
    else:
        starts = [True] * len(tokens)
    groups: list[list[int]] = []
    for i, start in enumerate(starts):
        if start or not groups:
            groups.append([i])
        else:
            groups[-1].append(i)
    words = []
    for group in groups:
        parts = [tokens[i] for i in group]
        words.append((_render(parts, tokenizer), sum(pieces[i][1] for i in group)))
    return words


def _render(parts: list[str], tokenizer) -> str:
    """A word's text from its pieces: the tokenizer's own decoding (bytes, ``##``, ``▁``) when it has one."""
    text = ""
    if tokenizer is not None and hasattr(tokenizer, "convert_tokens_to_string"):
        try:
            text = tokenizer.convert_tokens_to_string(parts)
        except Exception:  # noqa: BLE001 - fall back to plain marker stripping
            text = ""
    if not text.strip():
        text = "".join(p.removeprefix("##").lstrip("▁Ġ") for p in parts)
    return " ".join(text.replace("</w>", " ").split()) or "".join(parts)
