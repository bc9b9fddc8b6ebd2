"""Run directories: whose they are, one run at a time, and the outputs a command replaces.

A command that writes results (``main.py``, ``test.py``, ``latentguard benchmark``) writes only into a
directory that is new or empty, or that holds a previous run of the same command (recorded in the
directory's manifest, ``.latentguard-outputs.json``); any other directory is refused in one line naming
a file in it, so a user's ``model_parameters.pth`` or ``results.md`` is never replaced. A file that is an
input of the same call (``--config D/config.yaml``) is never written over either. The command then claims
the directory for as long as it runs, so two runs never write into one, and records what it wrote, so a
rerun removes only its own stale files. A run that fails before writing anything leaves no directory
and no lock behind.
"""
from __future__ import annotations

import atexit
import contextlib
import os
import sys
from pathlib import Path
from typing import Callable, Sequence

from ..constants import RUN_LOCK
from ..constants import RUN_OUTPUTS_RECORD as OUTPUTS
from ..errors import LatentGuardError
from ..io import atomic_write_text, open_regular, refuse_links, sha256_of
from ..protected import input_at, protect_inputs

_HELD: dict[str, int] = {}  # directories this process owns, with the open lock file keeping them
_CREATED: set[str] = set()   # the ones it also created (removed again when the command fails having written nothing)


def validate_ownership(directory: str | Path, command: str, *, writes: Sequence[str] = (),
                    inputs: Sequence[str | Path | None] = (),
                    previous_run: Callable[[Path], bool] | None = None) -> bool:
    """Refuse (one line) a ``directory`` that is neither new, empty, nor a previous run of ``command``, and any
    file in ``writes`` that is one of ``inputs``. Returns whether it holds a previous run.

    ``previous_run(directory)`` recognises a run of ``command`` made before runs were recorded (main.py: its
    ``resume.pt``).
    """
    directory = Path(directory)
    _refuse_inputs(directory, command, writes, inputs)
    if not directory.is_dir():
        return False
    entries = sorted(p.name for p in directory.iterdir() if p.name not in (RUN_LOCK, OUTPUTS))
    if not entries:
        return False
    if command in _manifest(directory) or (previous_run and previous_run(directory)):
        return True
    conflict = next((name for name in writes if name in entries), entries[0])
    raise LatentGuardError(f"--output-dir {directory} holds {conflict}, which {command} did not write (it is not a "
                           f"previous {command} run, so nothing in it is replaced); choose an empty or new "
                           "--output-dir")


def _refuse_inputs(directory: Path, command: str, writes: Sequence[str], inputs: Sequence[str | Path | None]) -> None:
    """Protect ``inputs`` from every write of this command (with the common flags' files, which
    load_command_config protects) and refuse now any of ``writes`` that is one of them."""
    protect_inputs(list(inputs))
    for name in writes:
        target = directory / name
        given = input_at(target)
        if given is not None:
            raise LatentGuardError(f"--output-dir {directory}: {command} would replace {target}, which is an input "
                                   f"of this command ({given}); choose another --output-dir")


def _manifest(directory: Path) -> dict:
    import json

    try:
        recorded = json.loads((directory / OUTPUTS).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return recorded if isinstance(recorded, dict) else {}


def run_record(directory: str | Path) -> dict:
    """The directory's run record (``{command: its outputs}``; empty when none or unreadable)."""
    return _manifest(Path(directory))


def claim_run_dir(directory: str | Path, command: str, *, writes: Sequence[str] = (),
                  inputs: Sequence[str | Path | None] = (),
                  previous_run: Callable[[Path], bool] | None = None) -> bool:
    """Make ``directory`` this process's run directory until it exits, or refuse in one line.

    First :func:`validate_ownership` (the directory is new, empty or a previous run of ``command``; no input is
    written over). The claim is an exclusive ``flock`` on ``directory/.latentguard-run.lock``, which also
    records the owner (command, pid, host, start time) for the refusal message. The kernel drops the lock
    when its process ends, however it ends (``kill -9`` included), so a lock left by a dead run is simply
    taken over; a claim made again by the same process is kept. The manifest records the directory as
    ``command``'s at once, so a run killed before it wrote anything is still recognised as one. Returns
    whether the directory held a previous run of ``command``.
    """
    import datetime
    import json
    import socket

    directory = Path(directory)
    was_run = False
    if os.path.realpath(directory) not in _HELD:
        was_run = validate_ownership(directory, command, writes=writes, inputs=inputs, previous_run=previous_run)
    else:  # claimed earlier by this process: its inputs are this call's all the same
        _refuse_inputs(directory, command, writes, inputs)
    created = not directory.exists()
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise LatentGuardError(f"--output-dir {directory} is a file (or lies under one), not a directory; "
                               "choose another path") from None
    key = os.path.realpath(directory)
    if key in _HELD:
        return was_run
    lock = directory / RUN_LOCK
    refuse_links(directory / OUTPUTS, what="run record")  # replaced atomically, but a user's link is not ours
    fd = open_regular(lock, os.O_RDWR | os.O_CREAT, "run lock")  # a link planted here is refused, never followed
    try:
        import fcntl
    except ImportError:  # pragma: no cover - no flock: one run per directory is the user's care
        _HELD[key] = fd
        return was_run
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
    atexit.register(_clear, fd)  # a normal exit leaves an empty lock file: nothing to take over
    _HELD[key] = fd
    if created:
        _CREATED.add(key)
    recorded = _manifest(directory)
    if command not in recorded:
        recorded[command] = {}
        atomic_write_text(directory / OUTPUTS, json.dumps(recorded, indent=1, sort_keys=True) + "\n")
    return was_run


def _clear(fd: int) -> None:
    with contextlib.suppress(OSError):  # released and closed already by release_failed_claims
        os.ftruncate(fd, 0)


def release_failed_claims() -> None:
    """After a command failed: remove each directory it created and wrote nothing into (lock and manifest
    only), so a run that fails on its inputs leaves nothing behind."""
    for key in list(_CREATED):
        directory = Path(key)
        with contextlib.suppress(OSError):
            if {p.name for p in directory.iterdir()} <= {RUN_LOCK, OUTPUTS}:
                for name in (OUTPUTS, RUN_LOCK):
                    (directory / name).unlink(missing_ok=True)
                directory.rmdir()
                fd = _HELD.pop(key, None)
                if fd is not None:
                    os.close(fd)
        _CREATED.discard(key)


# ---------------------------------------------------------------------- outputs a command replaces


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
        if name in now or Path(name).name != name or not stale.is_file() or input_at(stale) is not None:
            continue  # an input of this run (--set D/scores_x.csv) is never removed as a stale output
        if sha256_of(stale) == digest:
            stale.unlink()
            removed.append(stale)
    recorded[command] = now
    atomic_write_text(manifest, json.dumps(recorded, indent=1, sort_keys=True) + "\n")
    return removed


# ---------------------------------------------------------------------- outputs a command writes in place


def output_identity(path: Path, *, appended: bool = False) -> str | None:
    """What shows that ``path`` is still the output a command recorded (``None``: nothing there).

    A file replaced whole is known by its SHA-256, so a user's copy dropped under its name, or the file
    edited since, reads as another; a file appended to as the run goes (its log) by its size and the
    SHA-256 of those bytes, which it still begins with after appends (a copy of the whole run folder is the
    same run; another file in its place is not); a folder (a bundle) by the SHA-256 of its ``config.json``,
    written last. A link is never a command's output.
    """
    import stat

    try:
        info = path.lstat()
    except (FileNotFoundError, NotADirectoryError):
        return None
    if stat.S_ISLNK(info.st_mode):
        return "link"
    if appended and stat.S_ISREG(info.st_mode):
        return f"prefix:{info.st_size}:{_prefix_sha256(path, info.st_size)}"
    if stat.S_ISDIR(info.st_mode):
        config = path / "config.json"
        return f"folder:{sha256_of(config)}" if config.is_file() and not config.is_symlink() else "folder"
    return sha256_of(path) if stat.S_ISREG(info.st_mode) else "other"


def _prefix_sha256(path: Path, size: int) -> str:
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while size > 0:
            block = handle.read(min(size, 1 << 20))
            if not block:
                return "short"  # cut below the recorded size: not the file recorded
            digest.update(block)
            size -= len(block)
    return digest.hexdigest()


def _still_mine(path: Path, recorded: object, appended: bool) -> bool:
    """Whether ``path`` is the output recorded as ``recorded``; an appended file may have grown since."""
    if appended and isinstance(recorded, str) and recorded.startswith("prefix:") and recorded.count(":") == 2:
        _, size, digest = recorded.split(":")
        if path.is_file() and not path.is_symlink() and size.isdigit() and path.stat().st_size >= int(size):
            return _prefix_sha256(path, int(size)) == digest
        return False
    return output_identity(path, appended=appended) == recorded


def record_outputs(directory: str | Path, command: str, paths: Sequence[str | Path], *,
                   appended: Sequence[str] = ()) -> None:
    """Add the files ``command`` just wrote in ``directory`` to its run record, each with its identity
    (:func:`output_identity`), so a later run replaces them and nothing else."""
    import json

    directory = Path(directory)
    recorded = _manifest(directory)
    mine = recorded.get(command) if isinstance(recorded.get(command), dict) else {}
    for path in paths:
        name = Path(path).name
        mine[name] = output_identity(directory / name, appended=name in appended)
    recorded[command] = mine
    atomic_write_text(directory / OUTPUTS, json.dumps(recorded, indent=1, sort_keys=True) + "\n")


def refuse_unrecorded_outputs(directory: str | Path, command: str, names: Sequence[str], *,
                              appended: Sequence[str] = ()) -> None:
    """Refuse (one line) before anything is written when a path ``command`` writes in ``directory`` exists
    and is not one of its recorded outputs as recorded: a user's file there is never replaced, ``--force``
    included. A run recorded by an older latentguard lists no files, so its outputs are refused too
    (fail closed): moving them out is the user's call."""
    directory = Path(directory)
    mine = _manifest(directory).get(command)
    mine = mine if isinstance(mine, dict) else {}
    for name in names:
        if not os.path.lexists(directory / name) or _still_mine(directory / name, mine.get(name), name in appended):
            continue
        why = f"which has changed since {command} wrote it" if name in mine else f"which {command} did not write"
        raise LatentGuardError(f"--output-dir {directory} holds {name}, {why} (its record {OUTPUTS} "
                               f"{'differs' if name in mine else 'does not list it'}); {command} never replaces it "
                               f"(--force included): move {name} out of the folder, or choose another --output-dir")
