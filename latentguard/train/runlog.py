"""Reading back a run's own ``train_log.jsonl`` on resume, for both recipes.

The log is appended to line by line, so a crash or a full disk can leave its last line torn: that line
is dropped (said in a note), every complete record is kept. A damaged line before the last one is not
a torn write but an edit or another program's bytes: the run refuses in one line naming the file and
the line, rather than guess which records to keep (a traceback had ended the resume before).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

from ..errors import LatentGuardError
from ..io import atomic_write_text


def trim_log(path: Path, keep: Callable[[dict[str, Any]], bool]) -> None:
    """Rewrite ``path`` with the records ``keep`` accepts (those of the steps the run resumes from)."""
    path = Path(path)
    if not path.is_file():
        return
    try:
        lines = path.read_text(encoding="utf-8").split("\n")
    except (UnicodeDecodeError, OSError) as exc:
        raise LatentGuardError(f"{path}: the run's log cannot be read ({exc}); delete it (the weights do not depend "
                               "on it) or restore it, then run the same command again") from None
    if lines and lines[-1] == "":
        lines.pop()
    records = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            if not isinstance(record, dict) or not isinstance(record.get("step", 0), int):
                raise ValueError("not a record")
        except ValueError:
            if number == len(lines):  # torn by a crash or a full disk: its step is redone
                print(f"note: {path}: dropped its last line, which is not a complete record ({line[:40]!r})",
                      flush=True)
                continue
            raise LatentGuardError(f"{path}: line {number} is not a JSON record of the run ({line[:40]!r}); delete "
                                   "that line (or the file: the weights do not depend on it), then run the same "
                                   "command again") from None
        if keep(record):
            records.append(line)
    atomic_write_text(path, "".join(line + "\n" for line in records))
