"""The blacklist's categories: which concepts each one holds, and each one's verdict and score.

A category is the group a grouped blacklist file puts concepts in (``{violence: [knife, gun]}``); a
flat blacklist is one category. A category is flagged when any of its concepts fires (the
per-concept rule of :mod:`latentguard.decision.rule`), and its score is the largest probability of
its concepts (:mod:`latentguard.decision.probability`), so a category's score is >= 0.5 exactly when
it is flagged. A concept may belong to several categories.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

from ..errors import LatentGuardError


class Categories:
    """Category name -> its concepts (in blacklist order), kept in step with the blacklist."""

    def __init__(self, default: str) -> None:
        if not isinstance(default, str) or not default.strip():
            raise LatentGuardError(f"the default category must be a non-empty name, got {default!r}")
        self.default = default.strip()
        self._members: dict[str, list[str]] = {}
        self._index: tuple[tuple[str, ...], dict[str, np.ndarray]] | None = None

    def as_dict(self) -> dict[str, list[str]]:
        return {name: list(members) for name, members in self._members.items()}

    def assign(self, concepts: Sequence[str], category: str | None = None) -> None:
        """Put ``concepts`` in ``category`` (the default one when ``None``)."""
        name = self.default if category is None else str(category).strip()
        if not name:
            raise LatentGuardError("a category needs a non-empty name")
        if not concepts and name not in self._members:  # never an empty category
            return
        members = self._members.setdefault(name, [])
        members.extend(c for c in concepts if c not in members)
        self._index = None

    def replace(self, mapping: Mapping[str, Sequence[str]], blacklist: Sequence[str]) -> None:
        """Set every category from ``mapping``; blacklisted concepts it leaves out go to the default one."""
        if not isinstance(mapping, Mapping):
            raise LatentGuardError(f"categories must map names to lists of concepts, got {type(mapping).__name__}")
        known = set(blacklist)
        mapping = {name: members if isinstance(members, str) else list(members) for name, members in mapping.items()}
        for name, members in mapping.items():  # all checked before anything changes: a refusal keeps the old ones
            if isinstance(members, str) or not all(isinstance(c, str) for c in members):
                raise LatentGuardError(f"category '{name}' must be a list of concepts, got {members!r}")
            if not members:  # a category no concept can flag: refused now, not at every later check()
                raise LatentGuardError(f"category '{name}' has no concepts; give it at least one or leave it out")
            if not str(name).strip():
                raise LatentGuardError("a category needs a non-empty name")
            unknown = [c for c in members if c not in known]
            if unknown:
                raise LatentGuardError(f"category '{name}' names concept(s) not on the blacklist: {', '.join(unknown)}")
        self._members = {}
        for name, members in mapping.items():
            self.assign(members, name)
        grouped = {c for members in self._members.values() for c in members}
        rest = [c for c in blacklist if c not in grouped]
        if rest:
            self.assign(rest)

    def remove(self, concepts: Sequence[str]) -> None:
        drop = set(concepts)
        self._members = {name: kept for name, members in self._members.items()
                         if (kept := [c for c in members if c not in drop])}
        self._index = None

    def judge(self, blacklist: Sequence[str], fired: np.ndarray,
              probability: np.ndarray) -> list[tuple[dict[str, bool], dict[str, float]]]:
        """Per prompt: ``({category: flagged}, {category: score})`` from per-concept ``fired`` and
        ``probability`` ``[P, C]`` (columns in ``blacklist`` order)."""
        index = self._columns(blacklist)
        flagged = {name: fired[:, cols].any(axis=1) for name, cols in index.items()}
        scores = {name: probability[:, cols].max(axis=1) for name, cols in index.items()}
        return [({name: bool(flagged[name][i]) for name in index}, {name: float(scores[name][i]) for name in index})
                for i in range(fired.shape[0])]

    def _columns(self, blacklist: Sequence[str]) -> dict[str, np.ndarray]:
        key = tuple(blacklist)
        if self._index is None or self._index[0] != key:
            where = {c: i for i, c in enumerate(blacklist)}
            self._index = (key, {name: np.array([where[c] for c in members], dtype=np.int64)
                                 for name, members in self._members.items()})
        return self._index[1]
