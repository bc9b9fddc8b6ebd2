"""Plain, loop-based formulations of the reference computations, for tests and benchmarks.

They follow the released ``model.py``, ``inference.py`` and ``main.py`` literally (one pair at a
time, prompts repeated once per concept, as the released code does; see ``docs/fidelity.md``) and
share no code with :mod:`latentguard.model`, so agreement between the two is evidence that the fast
path is faithful. Never use them on a hot path.
"""
from __future__ import annotations

import math
from typing import Mapping

import torch


def pair_logits(state: Mapping[str, torch.Tensor], prompt_emb: torch.Tensor, concept_emb: torch.Tensor,
                num_heads: int = 16) -> torch.Tensor:
    """Logits ``[N]`` of aligned pairs from a raw state dict, head by head."""
    keys = prompt_emb @ state["x1_to_key.weight"].T + state["x1_to_key.bias"]        # [N, L, inner]
    values = prompt_emb @ state["x1_to_value.weight"].T + state["x1_to_value.bias"]  # [N, L, inner]
    query = concept_emb @ state["x2_to_query.weight"].T + state["x2_to_query.bias"]  # [N, inner]
    head_dim = query.shape[-1] // num_heads
    heads = []
    for h in range(num_heads):
        part = slice(h * head_dim, (h + 1) * head_dim)
        scores = torch.einsum("nd,nld->nl", query[:, part], keys[:, :, part]) / math.sqrt(head_dim)
        weights = torch.softmax(scores, dim=-1)
        heads.append(torch.einsum("nl,nld->nd", weights, values[:, :, part]))
    v_out = torch.cat(heads, dim=-1) @ state["final_mlp.weight"].T + state["final_mlp.bias"]
    q_out = query @ state["mlp_query1.weight"].T + state["mlp_query1.bias"]
    cosine = torch.nn.functional.cosine_similarity(v_out, q_out, dim=-1)
    return state["tempr"].reshape(()) * cosine


def repeat_per_concept_scores(state: Mapping[str, torch.Tensor], prompt_emb: torch.Tensor,
                              concept_emb: torch.Tensor, num_heads: int = 16) -> torch.Tensor:
    """The released inference loop: each prompt is repeated once per concept. Returns ``[P, C]``."""
    rows = []
    for prompt in prompt_emb:
        repeated = prompt.unsqueeze(0).repeat(concept_emb.shape[0], 1, 1)
        rows.append(pair_logits(state, repeated, concept_emb, num_heads))
    return torch.stack(rows)


def naive_contrastive_loss(state: Mapping[str, torch.Tensor], unsafe_emb: torch.Tensor, safe_emb: torch.Tensor,
                           concept_emb: torch.Tensor, num_heads: int = 16) -> torch.Tensor:
    """The released ``main.py`` loss by full expansion: every (prompt, concept) pair is scored separately."""
    n = concept_emb.shape[0]
    idx_p = torch.arange(n).repeat_interleave(n)  # prompt index of each pair
    idx_c = torch.arange(n).repeat(n)             # concept index of each pair
    unsafe = pair_logits(state, unsafe_emb[idx_p], concept_emb[idx_c], num_heads).view(n, n)
    safe = pair_logits(state, safe_emb[idx_p], concept_emb[idx_c], num_heads).view(n, n)
    labels = torch.arange(n)
    safe_best = safe.max(dim=1).values                     # best match of each safe prompt
    prompt_side = torch.cat([unsafe, safe_best.unsqueeze(0).expand(n, n)], dim=1)
    concept_side = torch.cat([unsafe.T, safe.T], dim=1)    # row j: [U[:, j], S[:, j]]
    ce = torch.nn.functional.cross_entropy
    return ce(prompt_side, labels) + ce(concept_side, labels)
