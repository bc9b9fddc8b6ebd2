"""One exception type for every user-facing failure.

Library code raises :class:`LatentGuardError` with a message that names the file, key or line and
says how to fix the problem; the command-line layer (:func:`latentguard.cli.common.cli_entry`)
prints it as one line and exits non-zero, so bad input never ends in a traceback. A safety filter
fails closed: anything it cannot judge raises this error, and never reads as "safe".
"""
from __future__ import annotations


class LatentGuardError(Exception):
    """A problem the user can fix: bad input, a missing file, a checkpoint that does not fit."""


class UnreadableTextError(LatentGuardError):
    """A prompt holds text the guard's tokenizer cannot read (it would become an unknown-token id, as if the
    characters were absent): the guard cannot judge it, so it refuses (the server answers 422)."""
