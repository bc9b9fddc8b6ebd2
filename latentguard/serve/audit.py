"""The audit trail: one event per judged prompt, appended to a JSONL file and handed to a hook.

Events are recorded on the model thread right after their batch is scored and before any of its
requests is answered, so no verdict leaves the server unrecorded: a failing write or hook fails
the batch (5xx), as a scoring error does. The log holds the prompt's SHA-256, not the prompt,
unless asked (``audit_prompts``).

A batch's lines are written with ``os.write`` on an ``O_APPEND`` descriptor, no buffer between: a
write that fails (the disk full) is cut back to the log's last good size, so a batch answered 500
leaves no record. Through a buffered file object the lines of a failed write had stayed in the
buffer and reached the file with the next batch's, so the log claimed verdicts no client got (a
hostile review), and closing the log on a full disk had failed the shutdown with a traceback.

One process writes one log: the server holds an exclusive ``flock`` on it while it is open, and a
second server given the same file is refused at start. Two servers sharing a log had cut each
other's answered records away (a hostile review); and a cut back removes only bytes this process
wrote, so it is made only while the log still ends where this process's write ended.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Sequence

from ..errors import LatentGuardError
from ..io import jsonl_line, open_regular

log = logging.getLogger("latentguard.serve")

if TYPE_CHECKING:  # the guard (and torch) load with the server, not with this module
    from ..guard.sanitize import Sanitized
    from ..guard.verdict import Verdict


class AuditError(Exception):
    """The audit log or hook failed; the batch is not answered."""


@dataclass(frozen=True)
class VerdictEvent:
    """One judged prompt, as the ``on_verdict`` hook and the audit log receive it."""

    time: float          # when its batch was scored (Unix seconds)
    request_id: str      # the response's ``id`` (and ``X-Request-ID`` header)
    endpoint: str        # /v1/moderations or /v1/check
    index: int           # the prompt's position in its request
    model: str           # the guard that judged it
    generation: int      # which blacklist load judged it (1 = the first; +1 per reload)
    verdict: "Verdict"
    sanitized: "Sanitized | None" = None  # /v1/sanitize: the guard's edit of a flagged prompt (None: left as it was)

    def record(self, include_prompt: bool = False) -> dict:
        """The audit-log line: time, request id, prompt digest (or prompt), verdict, categories, concept, score;
        from /v1/sanitize, a ``sanitized`` part too (:meth:`sanitized_record`)."""
        v = self.verdict
        out = {"time": datetime.fromtimestamp(self.time, timezone.utc).isoformat(timespec="milliseconds"),
               "request_id": self.request_id, "endpoint": self.endpoint, "index": self.index}
        out["prompt" if include_prompt else "prompt_sha256"] = (
            v.prompt if include_prompt else hashlib.sha256(v.prompt.encode("utf-8")).hexdigest())
        out.update(flagged=v.unsafe, categories=sorted(name for name, on in v.categories.items() if on),
                   concept=v.concept, score=round(v.score, 6), threshold=v.threshold,
                   probability=round(v.probability, 6), model=self.model, generation=self.generation)
        if self.endpoint == "/v1/sanitize":
            out["sanitized"] = self.sanitized_record(include_prompt)
        return out

    def sanitized_record(self, include_prompt: bool = False) -> dict:
        """What /v1/sanitize handed out for the prompt: the text the generator gets (``text``, or its SHA-256 as
        ``text_sha256``; null when no edit passes, as the answer's), the words removed (with the prompts only: they
        are the prompt's words; their count always), ``passes``, ``rounds`` and the verdict ``after`` (of the text).
        A safe prompt is handed out as it was: no words removed, ``after`` its own verdict."""
        edit, v = self.sanitized, self.verdict
        text, removed = (v.prompt, []) if edit is None else (edit.text if edit.passes else None, list(edit.removed))
        after = v if edit is None else edit.after
        out: dict = {"passes": True if edit is None else bool(edit.passes),
                     "rounds": 0 if edit is None else edit.rounds}
        if include_prompt:
            out.update(text=text, removed=removed)
        else:
            out["text_sha256"] = None if text is None else hashlib.sha256(text.encode("utf-8")).hexdigest()
        out.update(removed_count=len(removed),
                   after={"flagged": after.unsafe, "concept": after.concept, "score": round(after.score, 6),
                          "probability": round(after.probability, 6)})
        return out


AUDIT_KEYS = ("time", "request_id", "endpoint", "flagged")
TAIL_BYTES = 1 << 20  # read back from the end: the last complete record and a torn one (a prompt is 40 kB at most)


def _is_record(line: bytes) -> bool:
    try:
        record = json.loads(line.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        return False
    return isinstance(record, dict) and all(k in record for k in AUDIT_KEYS)


def validate_appendable(path: Path) -> int:
    """Refuse to append to an existing file that is not an audit log (a blacklist, a key file, the weights
    given by mistake): the audit trail only ever extends its own lines.

    Returns the length of a torn last record (a write cut short: disk full, then a kill), 0 when there is
    none. A torn record is recognised when the file does not end its last line and the complete line before
    it is an audit record (or it is the file's only line and begins as records do); it is kept as it is."""
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return 0
    except OSError as exc:
        raise LatentGuardError(f"cannot read --audit-log {path} ({exc.strerror or exc})") from None
    if size == 0:
        return 0
    from ..regular_files import open_regular_read

    with open_regular_read(path, "--audit-log") as handle:  # swapped for a FIFO since: refused, never waited on
        handle.seek(max(0, size - TAIL_BYTES))
        tail = handle.read()
    lines = tail.split(b"\n")
    if tail.endswith(b"\n"):
        last = tail.rstrip(b"\n").rsplit(b"\n", 1)[-1]
        if _is_record(last):
            return 0
        raise LatentGuardError(f"--audit-log {path} exists and is not an audit log (its last line is no audit "
                               "record); it is not appended to: give a new file name")
    torn, before = lines[-1], [line for line in lines[:-1] if line.strip()]
    if _is_record(torn):  # a whole record whose newline was lost
        return len(torn)
    whole = before[-1] if before else None
    if (whole is not None and _is_record(whole)) or (whole is None and size < TAIL_BYTES
                                                       and torn.startswith(b'{"time": "')):
        return len(torn)
    raise LatentGuardError(f"--audit-log {path} exists and is not an audit log (its last line is no audit record, "
                           "and no audit record comes before it); it is not appended to: give a new file name")


class Auditor:
    """Writes each batch's events to ``path`` (appended, unbuffered, one batch at a time) and calls ``on_verdict``
    per event."""

    def __init__(self, path: str | Path | None = None, *, include_prompts: bool = False,
                 on_verdict: Callable[[VerdictEvent], None] | None = None) -> None:
        self.include_prompts = include_prompts
        self.on_verdict = on_verdict
        self.path = Path(path) if path else None
        self._lock = threading.Lock()
        self._fd: int | None = None
        if self.path is not None:
            if self.path.is_dir():
                raise LatentGuardError(f"--audit-log {self.path} is a directory; give a .jsonl file name")
            self._fd = self._open_held("")

    @property
    def active(self) -> bool:
        return self._fd is not None or self.on_verdict is not None

    def __call__(self, events: Sequence[VerdictEvent]) -> None:
        """Record one batch: its lines appended, then the hook called per event. A failing hook cuts the batch's lines
        away again (:meth:`_cut_back`), so the log holds a record for each verdict answered and none for one that
        was not: the lines had stayed, and a batch that failed was then re-scored job by job and recorded again
        (29 records for 15 requests, a hostile review). The hook may be handed an event again when its batch is
        re-scored; the log never."""
        with self._lock:
            written = None
            if self._fd is not None:
                lines = "".join(jsonl_line(e.record(self.include_prompts)) for e in events)
                try:
                    stat = os.fstat(self._fd)
                    if stat.st_nlink == 0:  # deleted (rotated away, then removed): records would reach no file
                        raise AuditError(f"the audit log {self.path} was deleted while open; verdicts are not "
                                         "answered unrecorded: send SIGHUP or POST /admin/reload to open a new one")
                    written = _append(self._fd, lines.encode("utf-8"), self.path)
                except OSError as exc:
                    raise AuditError(f"cannot write the audit log {self.path} ({exc.strerror or exc}); verdicts are "
                                     "not answered unrecorded") from None
            elif self.path is not None:
                raise AuditError(f"cannot write the audit log {self.path} (the audit log is closed); verdicts are "
                                 "not answered unrecorded")
            if self.on_verdict is not None:
                for event in events:
                    try:
                        self.on_verdict(event)
                    except BaseException as exc:  # noqa: BLE001 - SystemExit from a hook had stopped the server
                        if written is not None:
                            self._cut_back(written)
                        raise AuditError(f"the on_verdict hook failed ({type(exc).__name__}: {exc}); "
                                         "verdicts are not answered unrecorded") from None

    def reopen(self) -> None:
        """Open the log at its path again, as log rotation expects (``mv audit.jsonl audit.jsonl.1``, then SIGHUP
        or ``POST /admin/reload``): the next records go to a new file at the path, not to the moved one (or, once
        that was removed, to no file at all: a hostile pass found every verdict answered 200 so). Raises
        :class:`LatentGuardError` and keeps the open log when the path cannot be opened."""
        if self.path is None:
            return
        with self._lock:
            if self._fd is not None and _same_file(self._fd, self.path):
                return  # not rotated: this is the log held now (a second descriptor's flock would conflict with it)
            fd = self._open_held(" again", "; the open log is kept")
            old, self._fd = self._fd, fd
        if old is not None:
            try:
                os.close(old)
            except OSError as exc:
                log.error("--audit-log %s: closing the rotated log failed (%s)", self.path, exc.strerror or exc)

    def _open_held(self, again: str, kept: str = "") -> int:
        """Open the log at its path for appending, hold its exclusive lock, and check it is an audit log (in that
        order: the tail is read with no other writer); a torn last record gets its line ended. Refuses in one
        line, closing what it opened, when another process holds the log."""
        def refused(exc: OSError) -> LatentGuardError:
            return LatentGuardError(f"cannot open --audit-log {self.path}{again} ({exc.strerror or exc}){kept}")

        try:
            fd = open_regular(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, "--audit-log")  # never a link
        except OSError as exc:
            raise refused(exc) from None
        try:
            _hold(fd, self.path, kept)
            torn = validate_appendable(self.path)
            if torn:  # the cut record stays; the next one starts on its own line
                _append(fd, b"\n")
                log.warning("--audit-log %s: its last line is a torn record (%d bytes: a write cut short, e.g. disk "
                            "full then a kill); it is kept as it was, and new records start on the next line",
                            self.path, torn)
        except OSError as exc:
            os.close(fd)
            raise refused(exc) from None
        except BaseException:
            os.close(fd)
            raise
        return fd

    def _cut_back(self, written: tuple[int | None, int | None]) -> None:
        """Remove a batch that is not answered, so it leaves no record: this process's bytes ``written`` (start,
        end), only while the log still ends where they end. A byte past them is another writer's (the flock keeps
        servers out, not a user's ``echo >> audit.jsonl``), and cutting the log back to its size before the write
        had deleted it too (a hostile review)."""
        _cut_back(self._fd, *written, self.path)

    def close(self) -> None:
        """Close the log: nothing is buffered, so nothing is left to write, and a full disk cannot fail it."""
        with self._lock:
            fd, self._fd = self._fd, None
            if fd is not None:
                try:
                    os.close(fd)
                except OSError as exc:
                    log.error("--audit-log %s: closing it failed (%s)", self.path, exc.strerror or exc)


def _hold(fd: int, path: Path, kept: str = "") -> None:
    """Take the exclusive ``flock`` that makes this process the log's one writer, or refuse in one line."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - no flock (not POSIX): one writer per log is the operator's care
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise LatentGuardError(f"--audit-log {path} is held by another process (a server writing it){kept}; one "
                               "process writes one audit log: give each server its own --audit-log") from None


def _same_file(fd: int, path: Path) -> bool:
    """Whether ``path`` still names the file open as ``fd`` (False once it was moved away or removed)."""
    try:
        here, there = os.fstat(fd), os.stat(path)
    except OSError:
        return False
    return (here.st_dev, here.st_ino) == (there.st_dev, there.st_ino)


def _append(fd: int, data: bytes, path: Path | None = None) -> tuple[int | None, int | None]:
    """``data`` appended to ``fd`` (``O_APPEND``) whole, or not at all: a write cut short (``ENOSPC``, ``EFBIG``)
    is cut back (:func:`_cut_back`), and the error raised. Returns where this process's bytes start and end in
    the log (each ``O_APPEND`` write leaves the offset at the end of its own bytes); start is None when another
    writer's bytes came between two parts of a short write, so this process's cannot be cut away alone."""
    view, start, end = memoryview(data), None, None
    try:
        while view:
            n = os.write(fd, view)  # a short write continues; a failing one raises
            at = os.lseek(fd, 0, os.SEEK_CUR)
            if end is None:
                start = at - n
            elif at - n != end:
                start = None
            view, end = view[n:], at
    except OSError:
        _cut_back(fd, start, end, path)
        raise
    return start, end


def _cut_back(fd: int, start: int | None, end: int | None, path: Path | None) -> None:
    """Truncate ``fd`` to ``start`` when this process's bytes run from ``start`` to ``end`` and nothing follows
    them; otherwise they stay, said in one log line (``end`` None: nothing was written, nothing to cut)."""
    if end is None:
        return
    try:
        size = os.fstat(fd).st_size
        if start is None or size != end:
            log.error("--audit-log %s: a batch that was not answered was not cut back: the log changed around its "
                      "write (%d bytes now, this process's write ended at %d), and a cut would remove bytes it "
                      "did not write; its records stay", path, size, end)
            return
        os.ftruncate(fd, start)
    except OSError as exc:  # the log now ends in part of a batch: said, and a restart recognises it
        log.error("--audit-log %s: a batch that was not answered could not be cut back (%s); its records stay",
                  path, exc.strerror or exc)
