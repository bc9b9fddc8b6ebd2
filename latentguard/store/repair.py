"""Repair of a damaged embedding store, on request only (``prepare.py --repair STORE``).

Readers never modify a store and writers only drop what a crash leaves (a torn last index line,
rows beyond the index); anything else is refused until a person asks for this repair, which holds
the store's lock, keeps every row it can vouch for, saves the original index beside it and says
what it did in one line.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..io import atomic_path, atomic_write_text, free_name
from .damage import BAD_LINE, bad_rows, parse_index_line
from .store import ROWS, EmbeddingStore


def repair_store(path: str | Path) -> str:
    """Repair a damaged store on request, holding its lock; returns what was done, in one line.

    When the index has exactly one complete line per data row, rows are still where their lines
    say, so only the damaged lines (and rows holding non-finite values or zeros) are dropped: their
    line becomes ``null`` and ``prepare.py`` re-encodes their texts. Otherwise rows after the first
    damage may be out of line with their texts, so only the intact prefix is kept. The original
    index is first copied to ``index.jsonl.damaged-<n>`` beside it.
    """
    store = EmbeddingStore.__new__(EmbeddingStore)
    store._open(path, None, None, "float16", False)
    with store._locked(blocking=True):
        raw = store.index_file.read_bytes() if store.index_file.exists() else b""
        pieces = raw.split(b"\n")
        torn = pieces.pop()  # after the last newline: empty, or a torn line
        entries = [parse_index_line(piece) for piece in pieces]
        data_rows = store._data_rows()
        bad_lines = [i + 1 for i, e in enumerate(entries) if e is BAD_LINE]
        notes: list[str] = []
        if len(entries) == data_rows:
            entries = [None if e is BAD_LINE else e for e in entries]
            if bad_lines:
                notes.append(f"dropped damaged line(s) {_spans(bad_lines)}")
        else:
            keep = min([data_rows, len(entries)] + [line - 1 for line in bad_lines])
            if keep < len(entries):
                why = f"line {bad_lines[0]} is damaged" if bad_lines and bad_lines[0] - 1 == keep else "no data rows"
                notes.append(f"kept the intact first {keep} of {len(entries)} lines ({why}; {data_rows} data rows)")
            entries = entries[:keep]
        damaged_rows = _scan_rows(store, len(entries))
        for row in damaged_rows:
            entries[row] = None
        if damaged_rows:
            notes.append(f"dropped row(s) {_spans(damaged_rows)} (non-finite or zero values)")
        if torn:
            notes.append("dropped a torn last line")
        if data_rows * store.row_bytes != (store.data_file.stat().st_size if store.data_file.exists() else 0) \
                or data_rows > len(entries):
            notes.append(f"cut {store.data_file.name} to {len(entries)} rows")
        if not notes:
            return f"nothing to repair: {store.path} holds {len(entries)} intact rows"
        new_index = "".join(json.dumps(e, ensure_ascii=False) + "\n" for e in entries)
        if raw:
            saved = free_name(store.index_file, "damaged")
            with atomic_path(saved) as tmp:
                tmp.write_bytes(raw)
            notes.append(f"original index saved as {saved.name}")
        atomic_write_text(store.index_file, new_index)
        store._count = len(entries)
        store._index_bytes = len(new_index.encode("utf-8"))
        store._repair()  # cut the data file to the rows kept
    lost = sum(1 for e in entries if e is None)
    return (f"repaired {store.path}: {'; '.join(notes)}; {len(entries) - lost} texts kept; "
            "run prepare.py again to re-encode what is missing")


def _spans(numbers: list[int]) -> str:
    shown = ", ".join(str(n) for n in numbers[:5])
    return shown + (f" and {len(numbers) - 5} more" if len(numbers) > 5 else "")


def _scan_rows(store: EmbeddingStore, count: int, chunk: int = 256) -> list[int]:
    """Rows among the first ``count`` that hold non-finite values or only zeros (a full read)."""
    bad: list[int] = []
    if count == 0:
        return bad
    data = np.memmap(store.data_file, dtype=store._np_dtype, mode="r", shape=(count, ROWS * store.hidden_size))
    for start in range(0, count, chunk):
        nonfinite, zero = bad_rows(np.asarray(data[start : start + chunk]))
        bad.extend(start + int(i) for i in np.flatnonzero(nonfinite | zero))
    del data
    return bad
