"""What training optimises and on which pairs: the released contrastive loss and concept sampling.

Faithful to the released ``main.py``: the loss over (unsafe, safe, concept) triplets, and epochs that
visit every concept once in a shuffled order with one of its training pairs drawn at random.
"""
from __future__ import annotations

import hashlib
import json
import math
from typing import Sequence

import torch
import torch.nn.functional as F

from ..errors import LatentGuardError
from ..model import EmbeddingMappingLayer


# --------------------------------------------------------------------------------------- loss
def contrastive_loss_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """The released loss from the stacked logit matrix ``[2n, n]`` = ``[U; S]`` (the released ``main.py``'s loss).

    Prompt side: row ``i`` of ``[U[i, :], m]`` with label ``i``, ``m[k] = max_j S[k, j]``.
    Concept side: row ``j`` of ``[U[:, j], S[:, j]]`` with label ``j``. Sum of both mean CEs.
    """
    n = logits.shape[1]
    if logits.shape[0] != 2 * n:
        raise ValueError(f"expected [2n, n] logits (unsafe rows then safe rows), got {list(logits.shape)}")
    unsafe, safe = logits[:n], logits[n:]
    labels = torch.arange(n, device=logits.device)
    safe_best = safe.max(dim=1).values  # each safe prompt's best-matching concept
    prompt_side = torch.cat([unsafe, safe_best.unsqueeze(0).expand(n, n)], dim=1)
    concept_side = logits.T  # row j: [U[:, j], S[:, j]]
    return F.cross_entropy(prompt_side, labels) + F.cross_entropy(concept_side, labels)


def contrastive_loss(model: EmbeddingMappingLayer, unsafe_emb: torch.Tensor, safe_emb: torch.Tensor,
                     concept_emb: torch.Tensor) -> torch.Tensor:
    """Released training loss for ``n`` aligned (unsafe_i, safe_i, concept_i) triplets.

    One ``logit_matrix`` call scores the ``2n`` prompts against the ``n`` concepts, so each prompt's
    keys/values are computed once instead of ``n`` times (the released code expands all pairs).
    """
    n = concept_emb.shape[0]
    if unsafe_emb.shape[0] != n or safe_emb.shape[0] != n:
        raise ValueError(f"need one unsafe and one safe prompt per concept: got {unsafe_emb.shape[0]} unsafe, "
                         f"{safe_emb.shape[0]} safe, {n} concepts")
    return contrastive_loss_from_logits(model.logit_matrix(torch.cat([unsafe_emb, safe_emb]), concept_emb))


# ----------------------------------------------------------------------------------- sampling
class ConceptPairSampler:
    """The released sampling: an epoch visits every concept once, in a shuffled order, with one
    (unsafe, safe) pair drawn at random among that concept's training pairs.

    An epoch's plan (order + pair choice) is drawn up front from a ``torch.Generator``, so it can
    be saved with the resume state and a run continues exactly where it stopped.
    """

    def __init__(self, triplets: Sequence, concepts: Sequence[str]) -> None:
        groups: dict[str, list[tuple[str, str]]] = {c: [] for c in concepts}
        for t in triplets:
            if t.concept in groups:
                groups[t.concept].append((t.unsafe_prompt, t.safe_prompt))
        self.concepts: list[str] = [c for c in groups if groups[c]]
        if not self.concepts:
            raise LatentGuardError("no training entry uses an ID concept: nothing to train on (check the dataset)")
        self.pairs: list[list[tuple[str, str]]] = [groups[c] for c in self.concepts]
        self._counts = torch.tensor([len(p) for p in self.pairs], dtype=torch.float64)

    def __len__(self) -> int:
        return len(self.concepts)

    def num_batches(self, batch_size: int) -> int:
        return math.ceil(len(self) / batch_size)

    def plan_epoch(self, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """(concept order ``[C]``, chosen pair index per concept ``[C]``) for one epoch."""
        order = torch.randperm(len(self), generator=generator)
        draw = torch.rand(len(self), generator=generator, dtype=torch.float64)
        choice = torch.minimum((draw * self._counts).long(), self._counts.long() - 1)
        return order, choice

    def batch(self, plan: tuple[torch.Tensor, torch.Tensor], index: int,
              batch_size: int) -> tuple[torch.Tensor, list[str], list[str]]:
        """Batch ``index`` of an epoch plan: (concept indices, unsafe texts, safe texts)."""
        order, choice = plan
        concepts = order[index * batch_size : (index + 1) * batch_size]
        picked = [self.pairs[c][int(choice[c])] for c in concepts.tolist()]
        return concepts, [u for u, _ in picked], [s for _, s in picked]

    def fingerprint(self) -> str:
        """Hash of the training pairs: a resumed run must see the same data."""
        digest = hashlib.sha256()
        digest.update(json.dumps([self.concepts, self.pairs], ensure_ascii=False).encode("utf-8"))
        return digest.hexdigest()[:16]


def triplets_fingerprint(triplets: Sequence) -> str:
    """Hash of a split's triplets (the validation split: ``best_auc`` and ``best.pth`` compare AUCs on it
    only, so a resumed run must see the same one)."""
    rows = [[t.concept, t.unsafe_prompt, t.safe_prompt] for t in triplets]
    return hashlib.sha256(json.dumps(rows, ensure_ascii=False).encode("utf-8")).hexdigest()[:16]
