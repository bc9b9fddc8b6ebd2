"""One exception type for every user-facing failure.

Entry points catch :class:`LatentGuardError` and print its message as a single line, so bad input
never ends in a traceback. Library code raises it with a message that names the file, key or line
and says how to fix the problem.
"""
from __future__ import annotations

import functools
import sys
from typing import Callable




class LatentGuardError(Exception):
    """A problem the user can fix: bad input, a missing file, a checkpoint that does not fit."""


RESUMABLE = "interrupted: finished work was saved; run the same command again to resume"


def cli_entry(main: Callable[..., int | None] | None = None, *,
              on_interrupt: str = "interrupted (Ctrl-C)") -> Callable[..., int]:
    """Wrap a CLI ``main`` so known errors print one line and exit non-zero, never a traceback.

    Use as ``@cli_entry`` or ``@cli_entry(on_interrupt=RESUMABLE)`` for commands that resume.
    """
    if main is None:
        return functools.partial(cli_entry, on_interrupt=on_interrupt)

    @functools.wraps(main)
    def wrapper(*args, **kwargs) -> int:
        try:
            code = main(*args, **kwargs)
        except LatentGuardError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        except OSError as exc:  # disk full, permission denied, a path that is a file: the user's to fix
            where = f": {exc.filename}" if exc.filename else ""
            print(f"error: {exc.strerror or exc}{where}", file=sys.stderr)
            return 2
        except KeyboardInterrupt:
            print(on_interrupt, file=sys.stderr)
            return 130
        return int(code or 0)

    return wrapper
