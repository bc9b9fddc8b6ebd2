"""What counts as text: a ``str`` a tokenizer can read, checked where prompts, concepts and CoPro entries come in.

A lone surrogate (``"\\ud800"``, which JSON escapes can carry) is not text: a tokenizer meets it with a
``TypeError`` deep inside. It is refused in one line naming the entry.
"""
from __future__ import annotations

from ..errors import LatentGuardError


def validate_text(value, what: str = "prompt") -> str:
    """``value`` if it is readable text, else a one-line :class:`LatentGuardError` naming ``what``."""
    if not isinstance(value, str):
        raise LatentGuardError(f"{what} must be a string, got {type(value).__name__}")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise LatentGuardError(f"{what} {_short(value)!r} holds a lone surrogate ({value[exc.start]!r} at character "
                               f"{exc.start}), which is not text; fix how it was decoded") from None
    return value


def _short(text: str, limit: int = 40) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."
