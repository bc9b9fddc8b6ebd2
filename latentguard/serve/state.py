"""One serving state: a complete guard (weights, encoder, encoded blacklist, thresholds) and what
the server says about it. A reload builds a new state beside the serving one and swaps it whole.
"""
from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

from ..errors import LatentGuardError
from .protocol import slope_note

if TYPE_CHECKING:
    from ..guard import LatentGuard

GuardFactory = Callable[[Any], "LatentGuard"]  # encoder to reuse (None: load it) -> a new guard read from the files
PROBE = ["a photo of a cat sitting on a sofa"]  # scored once per state before it serves


@dataclass(frozen=True)
class GuardState:
    """The guard that scores a batch, with its name and load number; never changed once built."""

    guard: "LatentGuard"
    model: str
    generation: int
    loaded_at: float

    def describe(self) -> dict:
        """What ``/readyz`` and ``GET /v1/blacklist`` report about this state."""
        from ..decision.probability import DEFAULT_SLOPE
        from ..guard.options import scoring_slope, threshold_report

        g = self.guard
        note = slope_note(scoring_slope(g))
        out = {"model": self.model, "generation": self.generation,
               "loaded_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.loaded_at)),
               "encoder": getattr(g.encoder, "identity", None),
               "checkpoint": str(g.checkpoint) if g.checkpoint else None,
               **threshold_report(g), **note}
        if not note["scores_calibrated"]:
            out["scores_note"] = (f"category_scores use the default slope {DEFAULT_SLOPE:g} (uncalibrated); calibrate "
                                  "with safe and unsafe prompts (inference.py --calibrate-safe/--calibrate-unsafe) "
                                  "to fit one")
        return out

    def blacklist(self) -> dict:
        g = self.guard
        return {**self.describe(), "concepts": g.concepts, **g.options.listed()}


def model_name(guard: "LatentGuard") -> str:
    """``latentguard-<weights>-<encoder>``: the first 8 hex digits of the weights' SHA-256 and of the encoder's
    weight fingerprint, so two servers with the same name judge with the same model, and two bundles with
    other weights never share a name (to clients and in the audit log)."""
    identity = str(getattr(guard.encoder, "identity", "encoder"))
    parts = identity.split(":")
    encoder = parts[3][:8] if len(parts) > 3 else hashlib.sha256(identity.encode()).hexdigest()[:8]
    return f"latentguard-{weights_sha256(guard)[:8]}-{encoder}"


def weights_sha256(guard: "LatentGuard") -> str:
    """The SHA-256 of the guard's weights, the one identity every run directory uses too
    (:func:`latentguard.guard.identity.weights_digest`)."""
    from ..guard.identity import weights_digest

    return weights_digest(guard)


def build_state(factory: GuardFactory, generation: int, encoder: Any = None) -> GuardState:
    """A new state from the files, checked by scoring one prompt: a guard that cannot judge never serves.
    Every file is read only if it is a regular file, opened without blocking (:mod:`latentguard.regular_files`):
    an allowlist replaced by a FIFO had held the model thread, and every request behind it, for ever on a reload."""
    from ..regular_files import regular_files_only

    with regular_files_only():
        guard = factory(encoder)
    try:
        verdicts = guard.check(PROBE, explain=False)
    except LatentGuardError as exc:
        raise LatentGuardError(f"the guard cannot judge a prompt, so it will not serve: {exc}") from None
    except Exception as exc:  # a fault inside the model: the same refusal, in one line
        raise LatentGuardError(f"the guard cannot judge a prompt, so it will not serve: "
                               f"{type(exc).__name__}: {exc}") from None
    if len(verdicts) != 1 or not verdicts[0].categories:
        raise LatentGuardError("the guard gave no complete verdict for a test prompt, so it will not serve")
    return GuardState(guard, model_name(guard), generation, time.time())
