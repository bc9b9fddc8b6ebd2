"""Dedup across a whole corpus in bounded memory: an on-disk map (SQLite, in the output directory)
from a text's 16-byte BLAKE2b digest to its verdict.

Memory holds one shard's digests and SQLite's page cache, never the corpus: 1.8 M distinct texts
(DiffusionDB) take about 100 MB on disk and nothing extra in RAM. Each verdict records the shard
that first scored it; a resumed run forgets the verdicts of shards it redoes, so it scores exactly
the texts, in exactly the batches, the interrupted run did, and its shards are byte-identical.
16-byte digests make a collision (two texts sharing a verdict) about 1e-26 likely at 1.8 M texts.
"""
from __future__ import annotations

import hashlib
import sqlite3
from pathlib import Path
from typing import Sequence

import numpy as np

QUERY_CHUNK = 500  # digests per SELECT ... IN (...)


def digest(text: str) -> bytes:
    return hashlib.blake2b(text.encode("utf-8"), digest_size=16).digest()


class VerdictMap:
    """digest -> (score, unsafe, concept index, truncated, category flags), with the shard that scored it."""

    def __init__(self, path: str | Path, n_categories: int) -> None:
        self.path = Path(path)
        self.n_categories = n_categories
        from ..io import refuse_links

        refuse_links(*(f"{self.path}{end}" for end in ("", "-wal", "-shm", "-journal")), what="dedup database")
        self._db = sqlite3.connect(self.path)
        self._db.execute("PRAGMA journal_mode=WAL")   # a commit is durable and a crash leaves the last one
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("PRAGMA cache_size=-16384")  # 16 MiB of page cache, whatever the corpus
        self._db.execute("CREATE TABLE IF NOT EXISTS verdicts (digest BLOB PRIMARY KEY, shard INTEGER NOT NULL, "
                         "score REAL NOT NULL, unsafe INTEGER NOT NULL, concept INTEGER NOT NULL, "
                         "truncated INTEGER NOT NULL, categories BLOB NOT NULL) WITHOUT ROWID")
        self._db.commit()

    def forget_from(self, shard: int) -> int:
        """Drop the verdicts first scored in ``shard`` or later (a resumed run redoes those shards)."""
        with self._db:
            return self._db.execute("DELETE FROM verdicts WHERE shard >= ?", (shard,)).rowcount

    def lookup(self, digests: Sequence[bytes]) -> dict[bytes, tuple]:
        """The known verdicts among ``digests``: digest -> (score, unsafe, concept, truncated, categories)."""
        found: dict[bytes, tuple] = {}
        for start in range(0, len(digests), QUERY_CHUNK):
            part = list(digests[start : start + QUERY_CHUNK])
            marks = ",".join("?" * len(part))
            for row in self._db.execute("SELECT digest, score, unsafe, concept, truncated, categories FROM verdicts "
                                        f"WHERE digest IN ({marks})", part):
                found[row[0]] = row[1:]
        return found

    def add(self, shard: int, digests: Sequence[bytes], score: np.ndarray, unsafe: np.ndarray, concept: np.ndarray,
            truncated: np.ndarray, categories: np.ndarray) -> None:
        """Record the verdicts ``shard`` scored, in one transaction (committed when it returns)."""
        rows = ((d, shard, float(s), int(u), int(c), int(t), np.asarray(k, dtype=np.uint8).tobytes())
                for d, s, u, c, t, k in zip(digests, score, unsafe, concept, truncated, categories))
        with self._db:
            self._db.executemany("INSERT INTO verdicts VALUES (?, ?, ?, ?, ?, ?, ?)", rows)

    def __len__(self) -> int:
        return self._db.execute("SELECT COUNT(*) FROM verdicts").fetchone()[0]

    def close(self) -> None:
        self._db.close()
