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
from ..io import open_regular

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
    with open(path, "rb") as handle:
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
            torn = validate_appendable(self.path)
            try:
                self._fd = open_regular(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, "--audit-log")  # no link
                if torn:  # the cut record stays; the next one starts on its own line
                    self._append(b"\n")
            except OSError as exc:
                self.close()
                raise LatentGuardError(f"cannot open --audit-log {self.path} ({exc.strerror or exc})") from None
            if torn:
                log.warning("--audit-log %s: its last line is a torn record (%d bytes: a write cut short, e.g. disk "
                            "full then a kill); it is kept as it was, and new records start on the next line",
                            self.path, torn)

    @property
    def active(self) -> bool:
        return self._fd is not None or self.on_verdict is not None

    def __call__(self, events: Sequence[VerdictEvent]) -> None:
        """Record one batch: its lines appended, then the hook called per event. A failing hook cuts the log back
        to its size before the batch, so the log holds a record for each verdict answered and none for one that
        was not: the lines had stayed, and a batch that failed was then re-scored job by job and recorded again
        (29 records for 15 requests, a hostile review). The hook may be handed an event again when its batch is
        re-scored; the log never."""
        with self._lock:
            good = None
            if self._fd is not None:
                lines = "".join(json.dumps(e.record(self.include_prompts), ensure_ascii=False) + "\n" for e in events)
                try:
                    stat = os.fstat(self._fd)
                    if stat.st_nlink == 0:  # deleted (rotated away, then removed): records would reach no file
                        raise AuditError(f"the audit log {self.path} was deleted while open; verdicts are not "
                                         "answered unrecorded: send SIGHUP or POST /admin/reload to open a new one")
                    good = stat.st_size
                    self._append(lines.encode("utf-8"))
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
                        if good is not None:
                            self._cut_back(good)
                        raise AuditError(f"the on_verdict hook failed ({type(exc).__name__}: {exc}); "
                                         "verdicts are not answered unrecorded") from None

    def reopen(self) -> None:
        """Open the log at its path again, as log rotation expects (``mv audit.jsonl audit.jsonl.1``, then SIGHUP
        or ``POST /admin/reload``): the next records go to a new file at the path, not to the moved one (or, once
        that was removed, to no file at all: a hostile pass found every verdict answered 200 so). Raises
        :class:`LatentGuardError` and keeps the open log when the path cannot be opened."""
        if self.path is None:
            return
        torn = validate_appendable(self.path)
        try:
            fd = open_regular(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, "--audit-log")
        except OSError as exc:
            raise LatentGuardError(f"cannot open --audit-log {self.path} again ({exc.strerror or exc}); "
                                   "the open log is kept") from None
        with self._lock:
            old, self._fd = self._fd, fd
            if torn:
                self._append(b"\n")
        if old is not None:
            try:
                os.close(old)
            except OSError as exc:
                log.error("--audit-log %s: closing the rotated log failed (%s)", self.path, exc.strerror or exc)

    def _append(self, data: bytes) -> None:
        """``data`` appended whole, or not at all: a write cut short (``ENOSPC``, ``EFBIG``) is truncated back to
        the size the log had, and the error raised. One writer (the lock) appends at a time."""
        fd = self._fd
        good = os.fstat(fd).st_size
        view = memoryview(data)
        try:
            while view:
                view = view[os.write(fd, view):]  # a short write continues; a failing one raises
        except OSError:
            self._cut_back(good)
            raise

    def _cut_back(self, good: int) -> None:
        """Truncate the log to ``good`` bytes: a batch that is not answered leaves no record."""
        try:
            os.ftruncate(self._fd, good)
        except OSError as exc:  # the log now ends in part of a batch: said, and a restart recognises it
            log.error("--audit-log %s: a batch that was not answered could not be cut back (%s); its records stay",
                      self.path, exc.strerror or exc)

    def close(self) -> None:
        """Close the log: nothing is buffered, so nothing is left to write, and a full disk cannot fail it."""
        with self._lock:
            fd, self._fd = self._fd, None
            if fd is not None:
                try:
                    os.close(fd)
                except OSError as exc:
                    log.error("--audit-log %s: closing it failed (%s)", self.path, exc.strerror or exc)
