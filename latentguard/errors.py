"""One exception type for every user-facing failure.

Library code raises :class:`LatentGuardError` with a message that names the file, key or line and
says how to fix the problem; the command-line layer (:func:`latentguard.cli.common.cli_entry`)
prints it as one line and exits non-zero, so bad input never ends in a traceback. A safety filter
fails closed: anything it cannot judge raises this error, and never reads as "safe".
"""
from __future__ import annotations

# A message is one line a person reads: one that echoes a value (a YAML list, a text) is cut here, whatever the
# value (a 284-byte YAML file of nested aliases had made a 39 MB message; a forty-first hostile pass).
MAX_MESSAGE = 2000


class LatentGuardError(Exception):
    """A problem the user can fix: bad input, a missing file, a checkpoint that does not fit."""

    def __init__(self, *args: object) -> None:
        if len(args) == 1 and isinstance(args[0], str) and len(args[0]) > MAX_MESSAGE:
            left = len(args[0]) - MAX_MESSAGE
            args = (f"{args[0][:MAX_MESSAGE]}... ({left:,} more characters left out)",)
        super().__init__(*args)


class UnreadableTextError(LatentGuardError):
    """A prompt holds text the guard's tokenizer cannot read (it would become an unknown-token id, as if the
    characters were absent): the guard cannot judge it, so it refuses (the server answers 422)."""


class PromptTooLongError(UnreadableTextError):
    """A prompt longer than :data:`latentguard.constants.MAX_PROMPT_CHARS`: refused as one the guard cannot judge
    (bulk scoring writes it as a refused row; the server answers 413 before the guard sees it)."""
