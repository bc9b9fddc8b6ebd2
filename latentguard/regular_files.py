"""Opening a file to read it only when it is a regular file, never blocking: what a running server reads.

``open()`` of a FIFO blocks until a writer comes, and a device such as ``/dev/zero`` reads for ever. A server
re-reads its files on every reload (SIGHUP, ``POST /admin/reload``) on its one model thread, so an allowlist
replaced by a FIFO (``rm al.txt; mkfifo al.txt``) had frozen every request, while the probes said ready and
SIGTERM could not stop it (a hostile review). Checking the path first leaves a race with the open; opening
with ``O_NONBLOCK`` and checking the open descriptor (``fstat``) does not: a FIFO opens at once, and is refused.

:func:`open_regular_read` is used by every reader of a guard's files (checkpoint, bundle, calibration record,
concept cache, dataset); :func:`io.read_text <latentguard.io.read_text>` reads pipes and standard input on
purpose (``inference.py --allowlist <(...)``), except inside :func:`regular_files_only`, which the server puts
around every build of its guard.
"""
from __future__ import annotations

import contextlib
import contextvars
import os
import stat
from pathlib import Path
from typing import BinaryIO, Iterator

from .errors import LatentGuardError

_REGULAR_ONLY = contextvars.ContextVar("latentguard_regular_only", default=False)


@contextlib.contextmanager
def regular_files_only() -> Iterator[None]:
    """Within this block (on this thread), :func:`latentguard.io.read_text` reads regular files only, and
    refuses ``-`` (standard input): for a guard a server builds, at start and on each reload."""
    token = _REGULAR_ONLY.set(True)
    try:
        yield
    finally:
        _REGULAR_ONLY.reset(token)


def reading_regular_only() -> bool:
    """Whether this thread is inside :func:`regular_files_only`."""
    return _REGULAR_ONLY.get()


def open_regular_read(path: str | Path, what: str = "file") -> BinaryIO:
    """``open(path, "rb")`` for a regular file (a link to one is followed); a directory, FIFO, device or socket
    is refused in one line naming ``what`` and the path, without blocking and without reading it."""
    path = Path(path)
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise LatentGuardError(f"{what} not found: {path}") from None
    except OSError as exc:
        raise LatentGuardError(f"cannot read {what} {path}: {exc.strerror or exc}") from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise LatentGuardError(f"{what} {path} is not a regular file (a directory, FIFO, device or socket); "
                                   "give a regular file")
        if getattr(os, "O_NONBLOCK", 0):  # no effect on a regular file; cleared so the handle reads as usual
            os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise
