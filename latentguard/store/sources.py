"""Where prompt embeddings come from: an on-disk store, the encoder on the fly, or both.

Training, evaluation and inference read embeddings through this one small interface, so the same
code runs from a prebuilt :class:`~latentguard.store.store.EmbeddingStore` or straight from the
encoder (``--no-store``), and never holds the whole dataset in memory.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Protocol, Sequence

from ..constants import EMBEDDING_ROWS

if TYPE_CHECKING:  # torch loads with the first batch, not with the package
    import torch


class EmbeddingSource(Protocol):
    """Anything that maps texts to ``[n, 78, hidden]`` float32 CPU tensors."""

    identity: str
    hidden_size: int

    def get(self, texts: Sequence[str]) -> "torch.Tensor": ...


class EncoderSource:
    """Encode on demand (no store): for GPUs where encoding beats reading from disk."""

    def __init__(self, encoder, batch_size: int = 64) -> None:
        self.encoder = encoder
        self.batch_size = batch_size
        self.identity = encoder.identity
        self.hidden_size = encoder.hidden_size

    def get(self, texts: Sequence[str]) -> "torch.Tensor":
        return self.encoder.encode(list(texts), batch_size=self.batch_size)


class StoreFirstSource:
    """Embeddings from the store where it has them, from the encoder otherwise (same identity)."""

    def __init__(self, store, encoder, batch_size: int = 64) -> None:
        self.store, self.encoder, self.batch_size = store, encoder, batch_size
        self.identity, self.hidden_size = encoder.identity, encoder.hidden_size

    def get(self, texts: Sequence[str]) -> "torch.Tensor":
        import torch

        texts = list(texts)
        have = [i for i, t in enumerate(texts) if self.store is not None and t in self.store]
        if len(have) == len(texts):
            return self.store.get(texts)
        out = torch.empty(len(texts), EMBEDDING_ROWS, self.hidden_size)
        if have:
            out[have] = self.store.get([texts[i] for i in have])
        stored = set(have)
        rest = [i for i in range(len(texts)) if i not in stored]
        out[rest] = self.encoder.encode([texts[i] for i in rest], batch_size=self.batch_size)
        return out


def concept_vectors(source: EmbeddingSource, concepts: Sequence[str]) -> "torch.Tensor":
    """A concept's vector is the pooled row (row 0) of its own embedding: ``[C, hidden]``."""
    return source.get(list(concepts))[:, 0].contiguous()
