"""Validators of what the guard is given and what scoring gives back: any anomaly refuses.

(``check`` judges prompts; ``validate_*`` only validates arguments.) A safety filter fails closed: a
threshold that is not a finite number, bytes where text belongs, or a batch of logits without one row
per prompt raise
:class:`~latentguard.errors.LatentGuardError` and never read as "safe".
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from ..errors import LatentGuardError


def width_message(what: str, width: int, hidden: int) -> str:
    """Why a checkpoint and an encoder do not fit, and what to do."""
    return (f"{what} expects encoder width {width}, but the encoder's hidden size is {hidden}; "
            "use the encoder the checkpoint was trained with")


def validate_logit_rows(logits: np.ndarray, n_prompts: int) -> None:
    """One row of logits per prompt, or refuse (non-finite logits are refused in :mod:`latentguard.scoring.logits`)."""
    if logits.ndim != 2 or logits.shape[0] != n_prompts:
        raise LatentGuardError(f"scoring gave logits of shape {list(logits.shape)} for {n_prompts} prompts; refusing")


def finite_number(value, what: str) -> float:
    """``value`` as a float, or refuse: NaN, inf, None, bools and strings never become a threshold."""
    try:  # an int too large for a float (10**400) is not finite either
        finite = not isinstance(value, bool) and isinstance(value, (int, float, np.floating, np.integer)) \
            and bool(np.isfinite(float(value)))
    except OverflowError:
        finite = False
    if not finite:
        raise LatentGuardError(f"{what} must be a finite number, got {value!r}")
    return float(value)


def prompt_list(prompts: str | Sequence[str]) -> list[str]:
    """Prompts as a list: one str is one prompt; bytes are refused (``list(b"..")`` would be ints)."""
    if isinstance(prompts, str):
        return [prompts]
    if isinstance(prompts, (bytes, bytearray, memoryview)):  # list(b"..") would be ints
        raise LatentGuardError(f"prompts must be str, got {type(prompts).__name__}; decode them first, "
                               "e.g. check(data.decode('utf-8'))")
    try:
        return list(prompts)
    except TypeError:  # None, a number: no prompt list at all, which must not pass as "nothing to refuse"
        raise LatentGuardError(f"prompts must be a str or a list of str, got {type(prompts).__name__}") from None

