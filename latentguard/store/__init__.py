"""Stored encodings: the on-disk embedding store (text -> 78 x hidden rows, built once by
``prepare.py``), where it lives and how commands open it, its damage checks and repair, the sources
that read embeddings from it or from the encoder, and the concept cache (a blacklist's vectors)."""
from __future__ import annotations

from .locate import open_configured_store, open_store_for, store_path
from .sources import EmbeddingSource, EncoderSource, StoreFirstSource, concept_vectors
from .store import EmbeddingStore

__all__ = ["EmbeddingSource", "EmbeddingStore", "EncoderSource", "StoreFirstSource", "concept_vectors",
           "open_configured_store", "open_store_for", "store_path"]
