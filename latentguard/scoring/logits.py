"""The one blacklist scoring pass: prompt embeddings -> logits against every concept -> max / argmax.

Training validation, Table 1, Table 2, calibration and the guard all score prompts here, so a
change of precision or aggregation is one edit, and this is the one place where non-finite logits
are refused (a NaN must never read as "safe": ``NaN >= threshold`` is false).

* :func:`blacklist_logits` - ``[P, C]`` logits of one batch of embeddings against precomputed
  concept queries, checked finite;
* :func:`iter_source_logits` - the same over texts read from an
  :class:`~latentguard.store.sources.EmbeddingSource`, the next batch loading while this one is scored;
* :func:`max_scores` - each text's best logit over the blacklist and the concept that gave it.

Long prompts (the maximum over 77-token windows) are :mod:`latentguard.scoring.windows`.

Speed: two formulations give the same logits within float32 rounding (tested):
:meth:`~latentguard.model.layer.EmbeddingMappingLayer.logit_matrix` (fused attention over chunks of
prompts and concepts; also the differentiable path training uses) and :func:`head_major_logits`
(a couple of prompts at a time, one contiguous [C, d] x [d, n*L] product per head).
:data:`HEAD_MAJOR_BLOCK` picks the one scoring runs; ``scripts/benchmark_scoring.py`` times both.
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import LatentGuardError

# Prompts per head-major block: a couple of prompts keep the per-head products in cache on a CPU.
PROMPTS_PER_BLOCK = 2
# What blacklist_logits runs by default: None = logit_matrix (the fused attention path); a number =
# head_major_logits with that block size. Measured quiet on a 2-core Xeon (scripts/benchmark_scoring.py
# times both in one run): logit_matrix 2.0-2.1 ms/prompt at 578 concepts, head-major 2.4-2.5, so None.
HEAD_MAJOR_BLOCK: int | None = None
# Per-block elements of the [heads, concepts, prompts, rows] attention weights held at once.
BLOCK_ELEMENTS = 1 << 23

Queries = tuple[torch.Tensor, torch.Tensor]


class StopRequested(Exception):
    """Raised between batches when the caller's ``should_stop`` says so (Ctrl-C during validation)."""


# ------------------------------------------------------------------------------- fail closed
def validate_finite(logits: torch.Tensor, what: str = "logits") -> torch.Tensor:
    """Refuse logits with NaN or infinity: a non-finite score must never decide "safe"."""
    if logits.numel() and not bool(torch.isfinite(logits).all()):
        bad = int((~torch.isfinite(logits)).sum())
        raise LatentGuardError(f"{bad} of {logits.numel()} {what} are not finite (NaN or inf): the mapping "
                               "layer's weights, the concept vectors or the prompt embeddings hold non-finite "
                               "values; check the checkpoint and rebuild the embedding store")
    return logits


# ---------------------------------------------------------------------------------- logits
def head_major_logits(model, prompt_emb: torch.Tensor, queries: Queries,
                      prompts_per_block: int = PROMPTS_PER_BLOCK) -> torch.Tensor:
    """Logits ``[P, C]`` computed head-major over blocks of a few prompts (no autograd needed).

    Per block of ``n`` prompts the keys are laid out ``[heads, n*L, d]`` (contiguous) so each
    head's attention scores for all concepts and all ``n`` prompts are one matrix product.
    Concepts are chunked so the ``[heads, C, n, L]`` weights stay under :data:`BLOCK_ELEMENTS`.
    """
    heads, q_out = queries  # [H, C, d] pre-scaled by 1/sqrt(d); [C, out] unit
    n_prompts, length = prompt_emb.shape[0], prompt_emb.shape[1]
    n_heads, n_concepts, head_dim = heads.shape
    if n_prompts == 0 or n_concepts == 0:
        return model.tempr * prompt_emb.new_zeros(n_prompts, n_concepts)
    weight, bias = model.final_mlp.weight, model.final_mlp.bias
    per_concept = n_heads * prompts_per_block * length
    concept_chunk = max(1, min(n_concepts, BLOCK_ELEMENTS // per_concept))
    rows = []
    for p0 in range(0, n_prompts, prompts_per_block):
        keys, values = model.prompt_keys_values(prompt_emb[p0 : p0 + prompts_per_block])  # [n, H, L, d]
        n = keys.shape[0]
        keys = keys.transpose(0, 1).reshape(n_heads, n * length, head_dim)  # [H, n*L, d]
        values = values.transpose(0, 1).contiguous()  # [H, n, L, d]
        cols = []
        for c0 in range(0, n_concepts, concept_chunk):
            q = heads[:, c0 : c0 + concept_chunk]
            c = q.shape[1]
            weights = torch.bmm(q, keys.transpose(1, 2)).view(n_heads, c, n, length).softmax(dim=-1)
            attended = torch.matmul(weights.transpose(1, 2), values)  # [H, n, c, d]
            merged = attended.permute(1, 2, 0, 3).reshape(n, c, n_heads * head_dim)
            v_out = F.normalize(F.linear(merged, weight, bias), dim=-1)
            cols.append((v_out * q_out[c0 : c0 + c]).sum(-1))
        rows.append(torch.cat(cols, dim=1) if len(cols) > 1 else cols[0])
    return model.tempr * (torch.cat(rows) if len(rows) > 1 else rows[0])


def blacklist_logits(model, prompt_emb: torch.Tensor, queries: Queries, *,
                     prompts_per_block: int | None = HEAD_MAJOR_BLOCK) -> torch.Tensor:
    """Logits ``[P, C]`` of one batch of embeddings ``[P, rows, hidden]`` against the blacklist's
    precomputed queries (:meth:`~latentguard.model.layer.EmbeddingMappingLayer.concept_queries`); checked finite.

    ``prompts_per_block``: ``None`` runs :meth:`~latentguard.model.layer.EmbeddingMappingLayer.logit_matrix`;
    a number runs :func:`head_major_logits` over blocks of that many prompts.
    """
    with torch.inference_mode():
        if prompts_per_block is None:
            logits = model.logit_matrix(prompt_emb, None, queries=queries)
        else:
            model.validate_inputs(prompt_emb, None)
            logits = head_major_logits(model, prompt_emb, queries, prompts_per_block)
    return validate_finite(logits)


# -------------------------------------------------------------------------------- streaming
def prefetch(load: Callable[[Any], Any], jobs: Iterable[Any]) -> Iterator[Any]:
    """Yield ``load(job)`` for each job while the next one loads in a background thread.

    Reading a batch from the store (or encoding it) overlaps the model step; order is kept.
    """
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="lg-prefetch") as pool:
        pending = None
        for job in jobs:
            future = pool.submit(load, job)
            if pending is not None:
                yield pending.result()
            pending = future
        if pending is not None:
            yield pending.result()


def to_device(batch: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Move a (possibly page-locked) batch to ``device``, asynchronously when it can."""
    if device.type == "cuda":
        return batch.to(device, non_blocking=batch.is_pinned())
    return batch.to(device)


def pinned(batch: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Page-locked copy for an asynchronous host-to-GPU transfer (done in the loader thread)."""
    return batch.pin_memory() if device.type == "cuda" else batch


def iter_source_logits(model, source, texts: Sequence[str], queries: Queries, *, batch_size: int,
                       device: torch.device, should_stop: Callable[[], bool] | None = None,
                       progress: bool = False) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """``(embeddings on device, logits [b, C])`` per batch of ``texts``, read from ``source`` one
    batch ahead; ``should_stop`` is polled between batches (raises :class:`StopRequested`)."""
    if batch_size <= 0:
        raise LatentGuardError(f"batch size must be positive, got {batch_size}")
    batches = [list(texts[s : s + batch_size]) for s in range(0, len(texts), batch_size)]
    loaded = prefetch(lambda b: pinned(source.get(b), device), batches)
    if progress:
        from tqdm import tqdm

        loaded = tqdm(loaded, total=len(batches), desc="scoring", unit="batch", leave=False)
    for emb in loaded:
        if should_stop is not None and should_stop():
            raise StopRequested
        emb = to_device(emb, device)
        yield emb, blacklist_logits(model, emb, queries)


def max_scores(model, source, texts: Sequence[str], concept_emb: torch.Tensor, *, batch_size: int = 256,
               device: torch.device | str | None = None, should_stop: Callable[[], bool] | None = None,
               progress: bool = False, each_batch: Callable[[torch.Tensor, torch.Tensor], None] | None = None,
               ) -> tuple[np.ndarray, np.ndarray]:
    """Each text's score (its max logit over the concepts, float64) and the argmax concept ``[N]``.

    Texts are scored in the order given (callers pass distinct texts); only one batch of
    embeddings is in memory at a time. ``each_batch(embeddings, concepts_on_device)`` sees every
    batch too (the CLIPScore baseline reuses the embeddings).
    """
    device = torch.device(device) if device is not None else next(model.parameters()).device
    was_training = model.training
    model.eval()
    score, best = np.empty(len(texts), np.float64), np.empty(len(texts), np.int64)
    try:
        with torch.inference_mode():
            concepts = concept_emb.to(device)
            queries = model.concept_queries(concepts)  # once per pass, not once per batch
            start = 0
            for emb, logits in iter_source_logits(model, source, texts, queries, batch_size=batch_size,
                                                  device=device, should_stop=should_stop, progress=progress):
                values, index = logits.max(dim=1)
                end = start + emb.shape[0]
                score[start:end], best[start:end] = values.double().cpu().numpy(), index.cpu().numpy()
                if each_batch is not None:
                    each_batch(emb, concepts)
                start = end
            if device.type == "cuda":
                torch.cuda.synchronize()
    finally:
        model.train(was_training)
    return score, best
