"""Safe file I/O: atomic writes, checked downloads and strict prompt-file reading.

Every artefact (checkpoint, cache, results) is written to a temporary file in the same directory,
flushed to disk, then renamed over the target: a crash or ``kill -9`` leaves either the old file
or the new one, never half of one.
"""
from __future__ import annotations

import atexit
import contextlib
import functools
import hashlib
import io
import os
import sys
import tempfile
import urllib.error
import urllib.request
from pathlib import Path
from typing import Iterator, Sequence

from .constants import DEFAULT_CHECKPOINT
from .errors import LatentGuardError

RELEASED_CHECKPOINT_URL = "https://github.com/rt219/LatentGuard/raw/main/model_parameters.pth"
RELEASED_CHECKPOINT_SHA256 = "02315494f35e819dc627ba858408d571e06a594590e8bd4026ba63f0922da231"
RELEASED_CHECKPOINT_GIT_BLOB = "0a21262abdf7aa36db8cba927a22cee6857bd24d"  # as the released repository's tree names it
COPRO_URL = "https://raw.githubusercontent.com/rt219/LatentGuard/main/dataset/CoPro_v1.0.json"
COPRO_GIT_BLOB = "e56717a7c4c5b8f5ead376079f8ecee62e29a06c"  # the only checksum published for CoPro v1.0


def cache_home() -> Path:
    """Where downloads and concept caches live: ``$LATENTGUARD_HOME`` or ``~/.cache/latentguard``."""
    root = os.environ.get("LATENTGUARD_HOME")
    return Path(root) if root else Path.home() / ".cache" / "latentguard"


@contextlib.contextmanager
def atomic_path(target: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``target``; on success fsync and rename it over ``target``."""
    target = Path(target)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise LatentGuardError(f"cannot write {target}: a path above it is a file, not a directory "
                               f"(choose another output path)") from None
    if target.is_dir():
        raise LatentGuardError(f"cannot write {target}: it is a directory (choose a file name)")
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
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
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
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


def download(url: str, target: str | Path, sha256: str | None = None, what: str = "file",
             git_blob: str | None = None) -> Path:
    """Download ``url`` to ``target`` with a progress bar, atomically, checking ``sha256`` and the git
    blob id ``git_blob`` when given.

    Failure raises a one-line :class:`LatentGuardError` that names the address and the place to put
    the file by hand; a download that fails a check is moved aside to ``<target>.mismatch-<n>``
    (named in the message), never used.
    """
    from tqdm import tqdm

    target = Path(target)
    by_hand = f"download {url} yourself and save it as {target}"
    try:
        with atomic_path(target) as tmp:
            with urllib.request.urlopen(url, timeout=60) as response, open(tmp, "wb") as out:
                total = int(response.headers.get("Content-Length") or 0) or None
                digest = hashlib.sha256()
                with tqdm(total=total, unit="B", unit_scale=True, desc=f"downloading {what}") as bar:
                    for block in iter(lambda: response.read(1 << 20), b""):
                        out.write(block)
                        digest.update(block)
                        bar.update(len(block))
            found = None
            if sha256 is not None and digest.hexdigest() != sha256:
                found = f"SHA-256 {digest.hexdigest()}, expected {sha256}"
            elif git_blob is not None and git_blob_id(tmp) != git_blob:
                found = f"git blob id {git_blob_id(tmp)}, expected {git_blob}"
            if found:
                aside = free_name(target, "mismatch")
                os.replace(tmp, aside)
                raise LatentGuardError(
                    f"{what} from {url} has {found}; the download is corrupt or was tampered with and was not "
                    f"used (kept as {aside}): {by_hand}"
                )
    except (urllib.error.URLError, OSError, TimeoutError) as exc:
        reason = getattr(exc, "reason", exc)
        raise LatentGuardError(f"cannot download {what} from {url} ({reason}); {by_hand}") from None
    return target


def released_checkpoint(path: str | Path = DEFAULT_CHECKPOINT) -> Path:
    """Return a path to the released weights: ``path`` if it exists, else a verified cached download.

    Only the bare released file name (no directory) triggers a download; any other missing path is
    an error, so a typo such as ``runs/tyop/model_parameters.pth`` never silently swaps in the
    released weights.
    """
    path = Path(path)
    if path.is_file():
        return path
    if path.name != DEFAULT_CHECKPOINT or path.parent != Path("."):
        raise LatentGuardError(f"checkpoint not found: {path} (check --checkpoint; omit it to use the released "
                               "model_parameters.pth)")
    cached = cache_home() / DEFAULT_CHECKPOINT
    note = ""
    if cached.is_file():
        if sha256_of(cached) == RELEASED_CHECKPOINT_SHA256:
            return cached
        aside = move_aside(cached)  # not ours to delete: set it aside and fetch the released file again
        note = f"the cached {cached} is not the released file (SHA-256 differs) and was moved to {aside}"
        print(f"warning: {note}", file=sys.stderr)
    try:
        return download(RELEASED_CHECKPOINT_URL, cached, RELEASED_CHECKPOINT_SHA256, what="released checkpoint",
                        git_blob=RELEASED_CHECKPOINT_GIT_BLOB)
    except LatentGuardError as exc:
        raise LatentGuardError(f"{exc}; {note}" if note else str(exc)) from None


def read_text(path: str | Path, what: str = "file") -> str:
    """Read a UTF-8 text file (``-`` is standard input; pipes and ``/dev/stdin`` work too); a missing
    file or a bad byte is a one-line error naming the line."""
    if str(path) == "-":
        path, raw = Path("<standard input>"), sys.stdin.buffer.read()
    else:
        path = Path(path)
        if not path.exists():
            raise LatentGuardError(f"{what} not found: {path}")
        if path.is_dir():
            raise LatentGuardError(f"{what} is a directory, not a file: {path}")
        with open(path, "rb") as handle:  # not read_bytes' size guess: a pipe has none
            raw = handle.read()
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise LatentGuardError(
            f"{path}: line {line} is not valid UTF-8 (byte {exc.start}); re-save the file as UTF-8"
        ) from None


def read_lines(path: str | Path, what: str = "prompt file") -> list[str]:
    """Read one item per line (UTF-8, blank lines skipped), with one-line errors for bad files."""
    text = read_text(path, what)
    lines = [line.strip() for line in split_lines(text)]
    lines = [line for line in lines if line]
    if not lines:
        raise LatentGuardError(f"{what} is empty: {path} (put one entry per line)")
    return lines


def split_lines(text: str, keepends: bool = False) -> list[str]:
    """Split on ``\\n`` and ``\\r\\n`` only, as the released script does.

    ``str.splitlines`` also breaks on U+2028, NEL, form feed, ``\\x1c``.. and lone ``\\r``; inside a
    prompt those are characters, and splitting there would shift every later verdict off its line.
    """
    pieces = text.split("\n")
    last = pieces.pop()
    if keepends:
        return [piece + "\n" for piece in pieces] + ([last] if last else [])
    return [piece[:-1] if piece.endswith("\r") else piece for piece in pieces] + ([last] if last else [])


def resolve_device(device: str | None = None) -> "torch.device":  # noqa: F821
    """``None``/``'auto'`` picks CUDA when present, else CPU; anything else is passed to torch."""
    import torch

    if device in (None, "", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError):
        raise LatentGuardError(f"unknown device '{device}' (use auto, cpu, cuda or cuda:N)") from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise LatentGuardError(f"device '{device}' requested but CUDA is not available here (use --device cpu)")
    return resolved


def unique(items: Sequence[str]) -> list[str]:
    """Deduplicate while keeping first-seen order."""
    return list(dict.fromkeys(items))


# ---------------------------------------------------------------------- one run per directory
def check_dir_path(path: str | Path, flag: str) -> Path:
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


RUN_LOCK = ".latentguard-run.lock"
_HELD: dict[str, int] = {}  # directories this process owns, with the open lock file keeping them


def claim_run_dir(directory: str | Path, command: str) -> Path:
    """Make ``directory`` this process's run directory until it exits, or refuse in one line.

    The claim is an exclusive ``flock`` on ``directory/.latentguard-run.lock``, which also records
    the owner (command, pid, host, start time) for the refusal message. The kernel drops the lock
    when its process ends, however it ends (``kill -9`` included), so a lock left by a dead run is
    simply taken over; a claim made again by the same process is kept.
    """
    import datetime
    import json
    import socket

    directory = Path(directory)
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise LatentGuardError(f"--output-dir {directory} is a file (or lies under one), not a directory; "
                               "choose another path") from None
    key = os.path.realpath(directory)
    if key in _HELD:
        return directory
    lock = directory / RUN_LOCK
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        import fcntl
    except ImportError:  # pragma: no cover - no flock: one run per directory is the user's care
        _HELD[key] = fd
        return directory
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        try:
            owner = json.loads(lock.read_text(encoding="utf-8"))
            who = (f"{owner['command']} (pid {owner['pid']} on {owner['host']}, started {owner['started']})")
        except (OSError, ValueError, KeyError, TypeError):
            who = "another run (its details are being written)"
        raise LatentGuardError(f"{directory} is in use by {who}; wait for it to finish or choose another "
                               "--output-dir") from None
    previous = os.pread(fd, 1 << 16, 0)  # left only by a run that did not exit normally
    with contextlib.suppress(ValueError, UnicodeDecodeError, KeyError, TypeError):
        old = json.loads(previous.decode("utf-8"))
        print(f"note: taking over {directory} from {old['command']} (pid {old['pid']} on {old['host']}, started "
              f"{old['started']}), which ended without finishing", file=sys.stderr)
    started = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
    record = json.dumps({"command": command, "pid": os.getpid(), "host": socket.gethostname(),
                         "started": started}) + "\n"
    os.ftruncate(fd, 0)
    os.pwrite(fd, record.encode("utf-8"), 0)
    atexit.register(os.ftruncate, fd, 0)  # a normal exit leaves an empty lock file: nothing to take over
    _HELD[key] = fd
    return directory


# ---------------------------------------------------------------------- outputs a command replaces
OUTPUTS = ".latentguard-outputs.json"


def replace_outputs(directory: str | Path, command: str, written: Sequence[str | Path]) -> list[Path]:
    """Record what ``command`` just wrote in ``directory`` and remove what its previous run wrote and
    this one did not (a baseline's CSVs, say), so old results never sit beside new ones.

    Only files listed in the manifest, and only while their bytes are still the ones written then
    (SHA-256), are removed: a user's file, or one the user has since edited, stays. Returns them.
    """
    import json

    directory = Path(directory)
    manifest = directory / OUTPUTS
    try:
        recorded = json.loads(manifest.read_text(encoding="utf-8"))
        recorded = recorded if isinstance(recorded, dict) else {}
    except (OSError, ValueError):
        recorded = {}
    now = {Path(p).name: sha256_of(p) for p in written if Path(p).parent.resolve() == directory.resolve()}
    removed = []
    previous = recorded.get(command)
    for name, digest in (previous.items() if isinstance(previous, dict) else ()):
        stale = directory / name
        if name in now or Path(name).name != name or not stale.is_file():
            continue
        if sha256_of(stale) == digest:
            stale.unlink()
            removed.append(stale)
    recorded[command] = now
    atomic_write_text(manifest, json.dumps(recorded, indent=1, sort_keys=True) + "\n")
    return removed
