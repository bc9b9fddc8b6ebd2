"""The allowlist: phrases cut out of a prompt before it is scored.

Each phrase is cut case-insensitively and as whole words only ("art" never matches inside "party"),
longest first, so an allowlisted phrase can never trigger the guard but cannot hide anything else:
"kill bill poster, covered in blood" with ``["kill bill"]`` is still judged on "poster, covered in blood".
The phrase's own words are never judged: allowing "naked eye" lets "a naked eye level portrait of a woman"
pass (docs/guard.md says which phrases to allow).
"""
from __future__ import annotations

import re
from collections.abc import Iterable

from ..errors import LatentGuardError


def compile_allowlist(phrases: str | Iterable[str]) -> tuple[list[str], re.Pattern | None]:
    """The phrases (whitespace collapsed, de-duplicated) and one pattern matching any of them; anything but a
    phrase or a list of them (None, a number, a dict, bytes) is a one-line error, not a TypeError."""
    if isinstance(phrases, str):
        phrases = [phrases]
    if isinstance(phrases, (bytes, bytearray, dict)) or not isinstance(phrases, Iterable):
        raise LatentGuardError(f"allowlist must be a list of phrases, got {type(phrases).__name__}; "
                               "use [] for none")
    cleaned = []
    for i, phrase in enumerate(phrases):
        if not isinstance(phrase, str) or not phrase.strip():
            raise LatentGuardError(f"allowlist entry {i} must be a non-empty phrase, got {phrase!r}")
        cleaned.append(" ".join(phrase.split()))
    cleaned = list(dict.fromkeys(cleaned))
    # Longest first, so "kill bill vol 2" is cut whole before "kill bill" could match.
    parts = [r"\s+".join(map(re.escape, p.split())) for p in sorted(cleaned, key=len, reverse=True)]
    pattern = re.compile(r"(?<!\w)(?:" + "|".join(parts) + r")(?!\w)", re.IGNORECASE) if parts else None
    return cleaned, pattern


_SPACES = re.compile(r"[ \t]+")  # collapsed where a phrase was; line and sentence separators are kept


def cut(pattern: re.Pattern | None, prompt: str) -> str:
    """``prompt`` with every allowlisted phrase removed, and nothing else changed.

    Only the phrases go: line breaks and every other separator stay, since the sentence defence splits on
    them (collapsing all whitespace once turned "...\n" * 3 + "a naked woman" into one diluted sentence)."""
    if pattern is None or not pattern.search(prompt):
        return prompt
    return _SPACES.sub(" ", pattern.sub(" ", prompt)).strip(" \t")
