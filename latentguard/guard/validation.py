"""Validators of what the guard is given and what scoring gives back: any anomaly refuses.

(``check`` judges prompts; ``validate_*`` only validates arguments.) A safety filter fails closed: a
threshold that is not a finite number, bytes where text belongs, or a batch of logits without one row
per prompt raise
:class:`~latentguard.errors.LatentGuardError` and never read as "safe".
"""
from __future__ import annotations

from typing import AbstractSet, Mapping, Sequence

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


def prompt_list(prompts: str | Sequence[str], call: str = "check") -> list[str]:
    """Prompts as a list: one str is one prompt; else any ordered iterable of them (a list, a tuple). Bytes are
    refused (``list(b"..")`` would be ints), and so are a dict (``list({"a": 1})`` judges the keys, silently) and
    a set (no order for the verdicts to follow). ``call`` names the method in the message."""
    if isinstance(prompts, str):
        return [prompts]
    if isinstance(prompts, (bytes, bytearray, memoryview)):  # list(b"..") would be ints
        raise LatentGuardError(f"prompts must be str, got {type(prompts).__name__}; decode them first, "
                               f"e.g. {call}(data.decode('utf-8'))")
    refused = f"prompts must be a str or a list of str, got {type(prompts).__name__}; e.g. {call}(['a cat', 'a dog'])"
    if isinstance(prompts, (Mapping, AbstractSet)):
        raise LatentGuardError(refused)
    try:
        return list(prompts)
    except TypeError:  # None, a number: no prompt list at all, which must not pass as "nothing to refuse"
        raise LatentGuardError(refused) from None



def warn_published_for_other_weights(guard, origin: str, value: float) -> None:
    """Warn when a published threshold (``released``, ``paper``) is put on weights that are not the released ones.

    9.0131 and 4.47 are the released CLIP model's operating points; on other weights they mean nothing (on the
    built-in ``mini``, whose calibrated threshold is 0.46, ``released`` flagged 0 of 8 unsafe samples: a hostile
    review). Reachable, so not refused; said once, naming what to use instead."""
    import warnings

    from ..io import sha256_of
    from ..published import NAMED_THRESHOLDS, RELEASED_CHECKPOINT_SHA256

    origin = origin.split(", bundle ")[0]  # a bundle's recorded origin ("released, bundle b2") names it too: an
    # export with --threshold released had stayed silent at every later load (a twenty-ninth hostile pass)
    if origin not in NAMED_THRESHOLDS:
        return
    bundle = getattr(guard, "bundle", None)
    if bundle is not None:
        source = bundle.source_sha256
    else:
        path = getattr(guard, "checkpoint", None)
        try:
            source = sha256_of(path) if path is not None else None
        except (OSError, LatentGuardError):
            source = None
    if source == RELEASED_CHECKPOINT_SHA256:
        return
    warnings.warn(f"threshold {origin!r} ({value:g}) is the released model's operating point, but these weights are "
                  "not the released ones, so it may flag almost nothing; use 'auto' (the weights' calibration) or "
                  "calibrate (guard.calibrate / --calibrate-safe)", UserWarning, stacklevel=4)


def warn_blacklist_differs(guard) -> None:
    """Warn when a guard's threshold was calibrated with another blacklist size than the guard now has.

    A threshold is calibrated on the best match over one blacklist: ``mini``'s 0.46 over its 85 concepts, many of
    which fire on prompts of other categories. Loaded with a user's three concepts it kept that threshold and
    caught little ("a naked woman" passed with [nudity, gore, violence]: a hostile review)."""
    import warnings

    record = getattr(guard, "threshold_record", None)
    calibrated = getattr(record, "n_concepts", None)
    if calibrated and calibrated != len(guard.concepts):
        warnings.warn(f"the threshold {record.threshold:g} was calibrated with a blacklist of {calibrated} concepts, "
                      f"this guard has {len(guard.concepts)}: its rates no longer hold; recalibrate on your own "
                      "prompts (guard.calibrate / --calibrate-safe)", UserWarning, stacklevel=5)
