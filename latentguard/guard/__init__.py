"""The guard: a frozen text encoder, the trained mapping layer and an encoded concept blacklist,
judging prompts (``LatentGuard.from_pretrained(...).check(prompts)``), with the argument checks that
make it fail closed and the loading of weights, encoder, blacklist and threshold from files."""
from __future__ import annotations

from .guard import LatentGuard
from .options import GuardOptions
from .sanitize import Sanitized
from .verdict import Verdict

__all__ = ["GuardOptions", "LatentGuard", "Sanitized", "Verdict"]
