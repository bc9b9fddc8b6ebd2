"""Where prompt embeddings come from: an on-disk store, or the encoder on the fly.

Training, evaluation and inference read embeddings through this one small interface, so the same
code runs from a prebuilt :class:`latentguard.cache.EmbeddingStore` or straight from the encoder
(``--no-cache``), and never holds the whole dataset in memory.
"""
from __future__ import annotations

from typing import Protocol, Sequence

import torch


class EmbeddingSource(Protocol):
    """Anything that maps texts to ``[n, 78, hidden]`` float32 CPU tensors."""

    identity: str
    hidden_size: int

    def get(self, texts: Sequence[str]) -> torch.Tensor: ...


class EncoderSource:
    """Encode on demand (no store): for GPUs where encoding beats reading from disk."""

    def __init__(self, encoder, batch_size: int = 64) -> None:
        self.encoder = encoder
        self.batch_size = batch_size
        self.identity = encoder.identity
        self.hidden_size = encoder.hidden_size

    def get(self, texts: Sequence[str]) -> torch.Tensor:
        return self.encoder.encode(list(texts), batch_size=self.batch_size)


def concept_vectors(source: EmbeddingSource, concepts: Sequence[str]) -> torch.Tensor:
    """A concept's vector is the pooled row (row 0) of its own embedding: ``[C, hidden]``."""
    return source.get(list(concepts))[:, 0].contiguous()


def iter_batches(items: Sequence, batch_size: int):
    """Yield consecutive slices of ``items`` of at most ``batch_size``."""
    for start in range(0, len(items), batch_size):
        yield items[start : start + batch_size]
