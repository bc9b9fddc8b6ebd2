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
        from ..io import refuse_links

        self.path = Path(path)
        self.n_categories = n_categories
        refuse_links(*self._files(), what="dedup database")
        new = not self.path.exists()
        self._db = None
        try:
            self._db = sqlite3.connect(self.path)
            self._db.execute("PRAGMA journal_mode=WAL")   # a commit is durable and a crash leaves the last one
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.execute("PRAGMA cache_size=-16384")  # 16 MiB of page cache, whatever the corpus
            self._db.execute("CREATE TABLE IF NOT EXISTS verdicts (digest BLOB PRIMARY KEY, shard INTEGER NOT NULL, "
                             "score REAL NOT NULL, unsafe INTEGER NOT NULL, concept INTEGER NOT NULL, "
                             "truncated INTEGER NOT NULL, categories BLOB NOT NULL) WITHOUT ROWID")
            self._db.commit()
        except sqlite3.Error as exc:  # a full disk, a damaged file: one line, and no half-made database left
            if self._db is not None:
                self._db.close()
            if new:
                for file in self._files():
                    file.unlink(missing_ok=True)
            raise self._error(exc, "create" if new else "open") from None

    def _files(self) -> list[Path]:
        """The database and the files SQLite keeps beside it."""
        return [Path(f"{self.path}{end}") for end in ("", "-wal", "-shm", "-journal")]

    def _error(self, exc: Exception, doing: str):
        from ..errors import LatentGuardError

        return LatentGuardError(f"cannot {doing} the dedup database {self.path} ({exc}); free space, or remove a "
                                "damaged file, then run the same command again (done shards are kept)")

    def forget_from(self, shard: int) -> int:
        """Drop the verdicts first scored in ``shard`` or later (a resumed run redoes those shards)."""
        try:
            with self._db:
                return self._db.execute("DELETE FROM verdicts WHERE shard >= ?", (shard,)).rowcount
        except sqlite3.Error as exc:
            raise self._error(exc, "update") from None

    def lookup(self, digests: Sequence[bytes]) -> dict[bytes, tuple]:
        """The known verdicts among ``digests``: digest -> (score, unsafe, concept, truncated, categories)."""
        found: dict[bytes, tuple] = {}
        for start in range(0, len(digests), QUERY_CHUNK):
            part = list(digests[start : start + QUERY_CHUNK])
            marks = ",".join("?" * len(part))
            try:
                for row in self._db.execute("SELECT digest, score, unsafe, concept, truncated, categories FROM "
                                            f"verdicts WHERE digest IN ({marks})", part):
                    found[row[0]] = row[1:]
            except sqlite3.Error as exc:
                raise self._error(exc, "read") from None
        return found

    def add(self, shard: int, digests: Sequence[bytes], score: np.ndarray, unsafe: np.ndarray, concept: np.ndarray,
            truncated: np.ndarray, categories: np.ndarray) -> None:
        """Record the verdicts ``shard`` scored, in one transaction (committed when it returns)."""
        rows = ((d, shard, float(s), int(u), int(c), int(t), np.asarray(k, dtype=np.uint8).tobytes())
                for d, s, u, c, t, k in zip(digests, score, unsafe, concept, truncated, categories))
        try:
            with self._db:
                self._db.executemany("INSERT INTO verdicts VALUES (?, ?, ?, ?, ?, ?, ?)", rows)
        except sqlite3.Error as exc:  # rolled back: the shard's marker is not written, a rerun redoes it
            raise self._error(exc, "write to") from None

    def __len__(self) -> int:
        return self._db.execute("SELECT COUNT(*) FROM verdicts").fetchone()[0]

    def close(self) -> None:
        self._db.close()
