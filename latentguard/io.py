"""Safe file I/O: atomic writes, checked downloads, strict text and prompt-file reading (YAML: yaml_files.py).

Every artefact (checkpoint, cache, results) is written to a temporary file in the same directory,
flushed to disk, then renamed over the target: a crash or ``kill -9`` leaves either the old file
or the new one, never half of one.
"""
from __future__ import annotations

import contextlib
import errno
import functools
import hashlib
import io
import os
import sys
import tempfile
from pathlib import Path
from typing import Iterator, Sequence

from .errors import LatentGuardError
from .protected import refuse_input
from .regular_files import open_regular_read, reading_regular_only


def latentguard_home() -> Path:
    """Where downloads and the concept cache live: ``$LATENTGUARD_HOME`` or ``~/.cache/latentguard``."""
    root = os.environ.get("LATENTGUARD_HOME")
    return Path(root) if root else Path.home() / ".cache" / "latentguard"


# Errors of the disk being written, not of what is being read: reported with the file being written, and with
# what to do as the errno says (a read-only filesystem had been told to free space); for any other: free space.
WRITE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EIO})
WRITE_ADVICE = {errno.EROFS: "the filesystem is read-only: choose a path on a writable one",
                errno.EACCES: "permission denied: choose a path this user can write, or change its permissions",
                errno.EIO: "a disk error: check the disk, or choose another path"}


@contextlib.contextmanager
def atomic_path(target: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``target``; on success fsync and rename it over ``target``.
    An input of the running command (:func:`protect_inputs`) is refused before anything is written."""
    target = Path(target)
    refuse_input(target, "output")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise LatentGuardError(f"cannot write {target}: a path above it is a file, not a directory "
                               f"(choose another output path)") from None
    if target.is_dir():
        raise LatentGuardError(f"cannot write {target}: it is a directory (choose a file name)")
    try:
        fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    except OSError as exc:
        raise LatentGuardError(f"cannot write {target}: {exc.strerror or exc}") from None
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        # mkstemp makes 0600 files; give the result the mode an ordinary open() would (umask applied).
        os.chmod(tmp, _default_file_mode())
        os.replace(tmp, target)
        fsync_dir(target.parent)
    except OSError as exc:
        if exc.errno in WRITE_ERRNOS:  # a full disk says only "No space left on device": name the file
            raise LatentGuardError(f"cannot write {target}: {exc.strerror or exc} (nothing was replaced; "
                                   f"{WRITE_ADVICE.get(exc.errno, 'free space or choose another path')})") from None
        raise
    finally:
        if tmp.exists():
            tmp.unlink()


@functools.lru_cache(maxsize=1)
def _default_file_mode() -> int:
    """``0o666`` less the process umask: what a plain ``open(path, "w")`` would create."""
    mask = os.umask(0o022)
    os.umask(mask)
    return 0o666 & ~mask


def fsync_dir(directory: Path) -> None:
    """Make a rename or a new file in ``directory`` durable (best effort where unsupported)."""
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def open_regular(path: str | Path, flags: int, what: str = "file", mode: int = 0o644) -> int:
    """``os.open`` for writing in an output directory that never follows a symbolic link and never opens a
    FIFO, device or socket: a link planted as a lock or log (``ln -s ~/precious.txt out/.latentguard-run.lock``)
    would otherwise have its target truncated or appended to. Returns the descriptor, or refuses in one line."""
    path = Path(path)
    refuse_input(path, what)  # appended to or truncated, an input would be changed as surely as replaced
    extra = getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags | extra, mode)
    except OSError as exc:
        if exc.errno == errno.ELOOP or path.is_symlink():
            raise LatentGuardError(f"{what} {path} is a symbolic link; latentguard never writes through one "
                                   "(remove the link, or choose another output directory)") from None
        if exc.errno == errno.ENXIO:  # a FIFO nobody reads (opened without blocking), a device without its driver
            raise _not_regular(what, path) from None
        if exc.errno in WRITE_ERRNOS or exc.errno in WRITE_ADVICE:
            raise LatentGuardError(f"cannot write {what} {path}: {exc.strerror or exc} "
                                   f"({WRITE_ADVICE.get(exc.errno, 'free space or choose another path')})") from None
        raise
    import stat

    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise _not_regular(what, path)
    if getattr(os, "O_NONBLOCK", 0):
        import fcntl

        fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~os.O_NONBLOCK)
    return fd


def _not_regular(what: str, path: Path) -> LatentGuardError:
    return LatentGuardError(f"{what} {path} is not a regular file (a FIFO, device or socket); latentguard writes "
                            "only regular files (remove it, or choose another output directory)")


def named_file_problem(path: str | Path, what: str, flag: str | None = None) -> str | None:
    """Why ``path``, a file the user named with ``flag``, cannot be read as one (``None`` when it can): missing,
    or present but no regular file (a directory, a FIFO, a device such as a link to /dev/zero), which would
    hang or read forever. One shared wording, so that a file that exists is never reported as missing."""
    import stat

    path, flag = Path(path), f" ({flag})" if flag else ""
    try:
        mode = os.stat(path).st_mode  # follows links: what would be read
    except FileNotFoundError:
        dangling = " (a symbolic link to a missing file)" if path.is_symlink() else ""
        return f"{what} not found: {path}{dangling}{flag}"
    except OSError as exc:
        return f"{what} {path} cannot be read: {exc.strerror or exc}{flag}"
    if stat.S_ISREG(mode):
        return None
    kind = "a directory" if stat.S_ISDIR(mode) else "a FIFO, device or socket"
    link = ", through a symbolic link" if path.is_symlink() else ""
    return (f"{what} {path} is not a regular file ({kind}{link}){flag}: copy the content into a regular "
            "file and name that")


def refuse_links(*paths: str | Path, what: str = "file") -> None:
    """Refuse (one line) any of ``paths`` that exists as a symbolic link or as anything but a regular file:
    for files a library opens by name (SQLite's database and its ``-wal``/``-shm``/``-journal`` files)."""
    import stat

    for path in map(Path, paths):
        try:
            info = os.lstat(path)
        except FileNotFoundError:
            continue
        if stat.S_ISLNK(info.st_mode):
            raise LatentGuardError(f"{what} {path} is a symbolic link; latentguard never writes through one "
                                   "(remove the link, or choose another output directory)")
        if not stat.S_ISREG(info.st_mode):
            raise _not_regular(what, path)


def atomic_write_text(target: str | Path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``target`` atomically."""
    with atomic_path(target) as tmp:
        tmp.write_text(text, encoding="utf-8")


def atomic_torch_save(obj: object, target: str | Path) -> None:
    """``torch.save`` to ``target`` atomically, so an interrupted save never corrupts a checkpoint."""
    import torch

    buffer = io.BytesIO()  # saved to a path, torch records the file's (temporary) name in the archive
    torch.save(obj, buffer)
    with atomic_path(target) as tmp:
        tmp.write_bytes(buffer.getbuffer())


def sha256_of(path: str | Path, chunk: int = 1 << 20) -> str:
    """The file's SHA-256; a FIFO, device or directory is refused without blocking (weights are hashed on reloads)."""
    digest = hashlib.sha256()
    with open_regular_read(path) as handle:
        for block in iter(lambda: handle.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


def git_blob_id(path: str | Path, chunk: int = 1 << 20) -> str:
    """The id git gives the file's bytes: SHA-1 of ``b"blob <size>\\0"`` and the bytes (as ``git hash-object``).

    Published repositories name every file by this id, so it verifies a download where no other
    checksum is published.
    """
    digest = hashlib.sha1(f"blob {os.path.getsize(path)}\0".encode("ascii"))
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


def free_name(path: str | Path, tag: str) -> Path:
    """``<path>.<tag>-<n>`` with the first ``n`` not taken, so nothing earlier is overwritten."""
    path = Path(path)
    n = 1
    while path.with_name(f"{path.name}.{tag}-{n}").exists():
        n += 1
    return path.with_name(f"{path.name}.{tag}-{n}")


def move_aside(path: str | Path, tag: str = "mismatch") -> Path:
    """Rename ``path`` to :func:`free_name` beside it and return the new name: set aside, never deleted."""
    aside = free_name(path, tag)
    os.replace(path, aside)
    fsync_dir(aside.parent)
    return aside


def read_regular_text(path: str | Path, what: str, max_bytes: int) -> str:
    """Read a UTF-8 text file that must be a regular file (a link to one is followed) of at most ``max_bytes``.

    For files a server re-reads while it serves (its key files): :func:`read_text` reads pipes, so a key file
    that was a FIFO, or a link to ``/dev/zero``, had hung startup for ever, and a reload had frozen every request
    with it (a hostile review). The file is opened without blocking
    (:func:`~latentguard.regular_files.open_regular_read`), refused unless it is regular, and read to ``max_bytes``
    at most; anything else is a one-line error naming it."""
    path = Path(path)
    with open_regular_read(path, what) as handle:
        try:
            raw = handle.read(max_bytes + 1)
        except OSError as exc:
            raise LatentGuardError(f"cannot read {what} {path}: {exc.strerror or exc}") from None
    if len(raw) > max_bytes:
        raise LatentGuardError(f"{what} {path} is larger than {max_bytes:,} bytes; it is not read")
    return _utf8(raw, path)


def read_text(path: str | Path, what: str = "file") -> str:
    """Read a UTF-8 text file (``-`` is standard input; pipes and ``/dev/stdin`` work too, except in a server's
    :func:`~latentguard.regular_files.regular_files_only`); a missing file or a bad byte: one line naming the line."""
    if reading_regular_only():
        if str(path) == "-":
            raise LatentGuardError(f"{what} '-' (standard input) cannot be re-read by a server; name a file")
        with open_regular_read(path, what) as handle:
            return _utf8(handle.read(), Path(path))
    if str(path) == "-":
        path, raw = Path("<standard input>"), sys.stdin.buffer.read()
    else:
        path = Path(path)
        if not path.exists():
            raise LatentGuardError(f"{what} not found: {path}")
        if path.is_dir():
            raise LatentGuardError(f"{what} is a directory, not a file: {path}")
        _refuse_device(path, what)
        with open(path, "rb") as handle:  # not read_bytes' size guess: a pipe has none
            raw = handle.read()
    return _utf8(raw, path)


def _utf8(raw: bytes, path: Path) -> str:
    """``raw`` decoded (a byte-order mark dropped); a bad byte is a one-line error naming its line."""
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise LatentGuardError(
            f"{path}: line {line} is not valid UTF-8 (byte {exc.start}); re-save the file as UTF-8"
        ) from None


def _refuse_device(path: Path, what: str) -> None:
    """A device or socket (``--concepts`` linked to /dev/zero would be read forever) is refused; pipes and the
    standard input by name (/dev/stdin, /dev/fd/N: a terminal is a device too) are read as pipes."""
    import stat

    mode = os.stat(path).st_mode
    named_input = str(path) == "/dev/stdin" or path.parent in (Path("/dev/fd"), Path("/proc/self/fd"))
    if not (stat.S_ISREG(mode) or stat.S_ISFIFO(mode) or named_input):
        raise LatentGuardError(named_file_problem(path, what) or f"{what} {path} is not a regular file")


def read_lines(path: str | Path, what: str = "prompt file") -> list[str]:
    """Read one item per line (UTF-8, blank lines skipped), with one-line errors for bad files; each line
    goes through :func:`prompt_line`, as ``latentguard score`` reads a ``.txt`` input."""
    return [line for _, line in numbered_lines(path, what)]


def numbered_lines(path: str | Path, what: str = "prompt file") -> list[tuple[int, str]]:
    """:func:`read_lines` with each item's line number (1-based, blank lines counted), so a later message
    can name the line an item came from."""
    text = read_text(path, what)
    name = "<standard input>" if str(path) == "-" else path
    lines = [(number, prompt_line(line, f"{name}: line {number}")) for number, line in enumerate(split_lines(text), 1)]
    lines = [(number, line) for number, line in lines if line]
    if not lines:
        raise LatentGuardError(f"{what} is empty: {path} (put one entry per line)")
    return lines


def split_lines(text: str, keepends: bool = False) -> list[str]:
    """Split on ``\\n`` and ``\\r\\n`` only, as the released script does.

    ``str.splitlines`` also breaks on U+2028, NEL, form feed, ``\\x1c``.. and lone ``\\r``; inside a
    prompt those are characters, and splitting there would shift every later verdict off its line
    (:func:`read_lines` refuses a ``\\r`` left inside a line: see :func:`prompt_line`).
    """
    pieces = text.split("\n")
    last = pieces.pop()
    if keepends:
        return [piece + "\n" for piece in pieces] + ([last] if last else [])
    return [piece[:-1] if piece.endswith("\r") else piece for piece in pieces] + ([last] if last else [])


def prompt_line(line: str, where: str) -> str:
    """The item one line of a one-per-line file holds: the line stripped (``""`` for a blank line).

    A carriage return left inside it is refused, a one-line error starting ``where``: a file with old Mac
    (lone ``\\r``) line endings would otherwise read as one item of many prompts, each scored as part of
    the others. ``\\n`` and ``\\r\\n`` files are unaffected (their line ends are stripped first).
    """
    text = line.strip()
    if "\r" in text:
        raise LatentGuardError(f"{where} holds a carriage return inside it (old Mac line endings?); convert the "
                               "file to \\n or \\r\\n line endings")
    return text


def unique(items: Sequence[str]) -> list[str]:
    """Deduplicate while keeping first-seen order."""
    return list(dict.fromkeys(items))


def validate_dir_path(path: str | Path, flag: str) -> Path:
    """Refuse a directory argument that is a file (or lies under one) now, before any slow work;
    nothing is created."""
    path = Path(path)
    for part in (path, *path.parents):
        if part.exists():
            if not part.is_dir():
                where = "is a file" if part == path else f"lies under {part}, which is a file"
                raise LatentGuardError(f"{flag} {path} {where}, not a directory; choose another path")
            break
    return path


# Line ends that JSON leaves raw in a string (it escapes only controls below U+0020) but that line readers split on:
# Python's str.splitlines() read a 2-row shard holding U+2028 as 4 lines (a thirty-eighth hostile pass).
_LINE_ENDS = str.maketrans({"\u2028": "\\u2028", "\u2029": "\\u2029", "\x85": "\\u0085"})


def jsonl_line(record: object) -> str:
    """``record`` as one line of JSON, ending in ``\\n``, the one way every JSONL file of the project is written (score
    shards, inference.py's output, the server's audit log): UTF-8 text kept readable (not ``\\u`` escaped), except
    the characters some readers take as line ends, which are escaped (JSON reads them back as the same text)."""
    import json

    return json.dumps(record, ensure_ascii=False).translate(_LINE_ENDS) + "\n"


def strict_json(text: str | bytes, where: str) -> object:
    """Parse JSON as one meaning only: a key given twice (which readers resolve differently), ``NaN`` or
    ``Infinity`` (not JSON), or nesting deeper than Python's stack is a one-line error starting ``where``."""
    import json

    def unique(pairs: list) -> dict:
        seen: dict = {}
        for key, value in pairs:
            if key in seen:
                raise LatentGuardError(f"{where}: key '{key}' is given twice; give each key once")
            seen[key] = value
        return seen

    def constant(name: str) -> None:
        raise LatentGuardError(f"{where}: {name} is not a JSON number; write a finite number")

    try:
        return json.loads(text, object_pairs_hook=unique, parse_constant=constant)
    except json.JSONDecodeError as exc:
        raise LatentGuardError(f"{where}: not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno})") from None
    except RecursionError:
        raise LatentGuardError(f"{where}: JSON nested too deeply to read") from None
    except ValueError as exc:  # an integer of more digits than Python converts (sys.get_int_max_str_digits)
        raise LatentGuardError(f"{where}: not valid JSON here ({str(exc).splitlines()[0][:120]})") from None
