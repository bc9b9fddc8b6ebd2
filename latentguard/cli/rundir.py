"""Run directories: one run per directory, and the outputs a command replaces.

A command that writes results (``main.py``, ``test.py``) claims its ``--output-dir`` for as long as it
runs, so two runs never write into one directory, and records what it wrote, so a rerun removes only
its own stale files, never a user's.
"""
from __future__ import annotations

import atexit
import contextlib
import os
import sys
from pathlib import Path
from typing import Sequence

from ..errors import LatentGuardError
from ..io import atomic_write_text, sha256_of

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
