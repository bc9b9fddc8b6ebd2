"""The guard's evidence: which words of a prompt its deciding concept attended to.

The mapping layer's cross-attention (concept = query, prompt rows = keys) is read for the deciding
concept, averaged over heads, and sub-word tokens are joined back into words.
"""
from __future__ import annotations

import re
from typing import Sequence

import numpy as np
import torch

POOLED = "<pooled>"  # label of embedding row 0: the encoder's pooled (first end-of-text) state
EVIDENCE_CHUNK = 32  # prompts per evidence pass: bounds the [b, heads, concepts, rows] weights
_SPECIAL = re.compile(r"^(<\|.*\|>|\[(CLS|SEP|PAD|UNK|MASK)\]|</?s>|<pad>|<unk>)$")


def attention_evidence(model, encoder, queries, texts: Sequence[str], prompt_emb: torch.Tensor,
                       concept_index: Sequence[int], *, words: int, device: torch.device | str,
                       tokens: Sequence[list[str]] | None = None) -> list[list[tuple[str, float]]]:
    """For each prompt, the words its concept attended to most: ``[(word, weight), ...]``.

    The weight is the mapping layer's cross-attention (concept = query) averaged over heads,
    summed over a word's BPE pieces and occurrences, as a share of the attention that fell on
    the prompt's words and on row 0 (the encoder's pooled summary state, reported as
    ``<pooled>``). Start/end/padding rows are left out (the released layer attends to padding
    too), so over all words the shares sum to 1; the ``words`` largest are returned.
    ``queries`` are the blacklist's precomputed attention queries (``model.concept_queries``).
    """
    concept_index = np.asarray(concept_index, dtype=np.int64)
    out: list[list[tuple[str, float]]] = []
    for s in range(0, len(texts), EVIDENCE_CHUNK):
        idx = concept_index[s : s + EVIDENCE_CHUNK]
        unique, inverse = np.unique(idx, return_inverse=True)
        with torch.inference_mode():
            rows_in, mask = model.padding_mask(prompt_emb[s : s + EVIDENCE_CHUNK].to(device))
            keys, values = model.prompt_keys_values(rows_in)
            chosen = queries[0][:, torch.as_tensor(unique, device=device)]  # [H, u, d]
            _, weights = model.attend(keys, values, chosen, return_attention=True, mask=mask)  # [b, H, u, L]
            rows = torch.arange(len(idx), device=device)
            per_row = weights.mean(dim=1)[rows, torch.as_tensor(inverse, device=device)].float().cpu()
        for k, (text, w) in enumerate(zip(texts[s : s + EVIDENCE_CHUNK], per_row)):
            row_tokens = None if tokens is None else tokens[s + k]
            out.append(word_weights(encoder, text, w.tolist(), row_tokens)[:words])
    return out


def word_weights(encoder, text: str, row_weights: list[float],
                 tokens: list[str] | None = None) -> list[tuple[str, float]]:
    """Per-row attention of one prompt -> ``(word, share)`` pairs, largest first (row 0 is ``<pooled>``)."""
    tokens = encoder.token_strings(text) if tokens is None else tokens
    tokenizer = getattr(encoder, "tokenizer", None)
    specials = set(getattr(tokenizer, "all_special_tokens", []) or [])
    pieces = [(tok, w) for tok, w in zip(tokens, row_weights[1:]) if tok not in specials and not _SPECIAL.match(tok)]
    totals: dict[str, float] = {POOLED: row_weights[0]}
    for word, weight in merge_pieces(pieces, tokenizer):
        totals[word] = totals.get(word, 0.0) + weight
    mass = sum(totals.values()) or 1.0
    return sorted(((w, float(v) / mass) for w, v in totals.items()), key=lambda item: -item[1])


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
