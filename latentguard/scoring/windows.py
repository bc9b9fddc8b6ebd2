"""Long prompts: a prompt's logit per concept is the maximum over its overlapping 77-token windows.

An option, off by default (the released code truncates at 77 tokens). Windows are scored through the
one scoring pass (:func:`latentguard.scoring.logits.blacklist_logits`).
"""
from __future__ import annotations

from typing import Sequence

import torch

from ..errors import LatentGuardError
from .logits import blacklist_logits


def max_over_windows(logits: torch.Tensor, owner: torch.Tensor, n_prompts: int,
                     return_window: bool = False) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Per-prompt maximum of window logits: ``[W, C]`` with ``owner [W]`` -> ``[n_prompts, C]``.

    One vectorised scatter (``amax``), no Python loop over windows. Prompts without a window get
    ``-inf``. With ``return_window`` also the index (into the W windows) of the window that gave
    each maximum, ``[n_prompts, C]`` (``-1`` where none), for explanations.
    """
    if logits.dim() != 2 or owner.dim() != 1 or owner.shape[0] != logits.shape[0]:
        raise LatentGuardError(f"window logits must be [W, C] with owner [W], got {list(logits.shape)} "
                               f"and {list(owner.shape)}")
    owner = owner.to(device=logits.device, dtype=torch.long)
    if owner.numel() and (int(owner.min()) < 0 or int(owner.max()) >= n_prompts):
        raise LatentGuardError(f"window owners must lie in [0, {n_prompts}), "
                               f"got {int(owner.min())}..{int(owner.max())}")
    index = owner.unsqueeze(1).expand_as(logits)
    out = torch.full((n_prompts, logits.shape[1]), float("-inf"), dtype=logits.dtype, device=logits.device)
    out = out.scatter_reduce(0, index, logits, reduce="amax", include_self=True)
    if not return_window:
        return out
    # The first window (lowest index) reaching its prompt's maximum.
    hits = logits == out.gather(0, index)
    rows = torch.arange(logits.shape[0], device=logits.device).unsqueeze(1).expand_as(logits)
    big = torch.full_like(rows, logits.shape[0])
    first = torch.full((n_prompts, logits.shape[1]), logits.shape[0], dtype=torch.long, device=logits.device)
    first = first.scatter_reduce(0, index, torch.where(hits, rows, big), reduce="amin", include_self=True)
    return out, torch.where(first == logits.shape[0], torch.full_like(first, -1), first)


def windowed_logit_matrix(model, encoder, prompts: Sequence[str], concept_emb: torch.Tensor, *,
                          batch_size: int = 64, window: int | None = None, stride: int | None = None,
                          device: str | torch.device | None = None) -> torch.Tensor:
    """Logits ``[P, C]`` of every prompt against every concept, each the maximum over its windows.

    Streams ``batch_size`` windows at a time through the encoder and :func:`blacklist_logits`, so
    memory depends on the batch, not on the prompts' length or count.
    """
    device = torch.device(device) if device is not None else next(model.parameters()).device
    concept_emb = concept_emb.to(device)
    prompts = list(prompts)
    out = torch.full((len(prompts), concept_emb.shape[0]), float("-inf"), device=device)
    with torch.inference_mode():
        queries = model.concept_queries(concept_emb)  # once, not once per batch of windows
        for owner, emb in encoder.iter_encode_windows(prompts, batch_size, window, stride):
            logits = blacklist_logits(model, emb.to(device), queries)
            index = owner.to(device).unsqueeze(1).expand_as(logits)
            out = out.scatter_reduce(0, index, logits.to(out.dtype), reduce="amax", include_self=True)
    return out
