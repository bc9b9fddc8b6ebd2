"""The inputs of the running command, protected from its own writes.

A command that writes into an output directory must never replace a file it reads: ``latentguard benchmark
--set coco=D/scores_coco.csv --output-dir D`` had written its results over that very input, because only the
names in a list were compared. Here the files a command reads are recorded by identity once (the common
flags when the config is loaded, each command's own inputs when it claims its directory), and every write
path of :mod:`latentguard.io` (:func:`~latentguard.io.atomic_path`, :func:`~latentguard.io.open_regular`)
and every removal of stale outputs asks :func:`input_at` first: the check sits where the bytes are written,
so no list of output names can miss one.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

from .errors import LatentGuardError

# Files the running command reads (its --config, --checkpoint, --set files...), by identity: never written over.
_INPUTS: dict[tuple[int, int, int, int], str] = {}


def protect_inputs(paths: Sequence[str | Path | None]) -> None:
    """Record ``paths`` (files this command reads) so that no write of this process replaces one of them, whatever
    name the write goes through (``D/scores_coco.csv`` given as ``--set coco=...`` and written as a result).
    Kept by device, inode, size and mtime, so a file deleted since and its inode reused is not mistaken for one."""
    import stat

    for path in paths:
        if not path or str(path) == "-":
            continue
        try:
            info = os.stat(path)
        except (OSError, ValueError):
            continue  # not there (yet): a missing input is its reader's to report
        if stat.S_ISREG(info.st_mode):
            _INPUTS[(info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns)] = str(path)


def forget_inputs() -> None:
    """End of a command: its inputs are no longer protected (a later command in this process has its own)."""
    _INPUTS.clear()


def input_at(target: str | Path) -> str | None:
    """The input of this command that ``target`` would replace (as the user named it), or ``None``."""
    try:
        info = os.stat(target)
    except (OSError, ValueError):
        return None
    return _INPUTS.get((info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns))


def refuse_input(target: str | Path, flag: str = "--output-dir") -> None:
    """Refuse (one line) to write ``target`` when it is an input of this command."""
    given = input_at(target)
    if given is not None:
        raise LatentGuardError(f"{flag}: this command would replace {target}, which is an input of it ({given}); "
                               f"choose another {flag} (nothing was replaced)")
