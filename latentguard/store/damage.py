"""What counts as damage in an embedding store, shared by its reader and its repair.

An index line is damaged when it is not a JSON string (``null`` marks a row a repair dropped); a
row is damaged when it holds non-finite values or only zero bytes (a hole in the file), neither of
which an encoder writes. Rows are checked with integer bit tests, cheap enough for every read.
"""
from __future__ import annotations

import json
from typing import Any

import numpy as np

BAD_LINE = object()  # what parse_index_line returns for a damaged line
_EXPONENT = {2: (np.uint16, 0x7C00), 4: (np.uint32, 0x7F800000)}  # all-ones exponent: inf or NaN


def bad_rows(buf: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(non-finite, all zero bytes)`` per row of ``buf`` (float16 or float32), by integer bit tests."""
    flat = np.ascontiguousarray(buf).reshape(len(buf), int(np.prod(buf.shape[1:])))
    uint, mask = _EXPONENT[flat.dtype.itemsize]
    nonfinite = np.bitwise_and(flat.view(uint), uint(mask)).max(axis=1, initial=0) == mask
    words = flat.view(np.uint64 if flat.shape[1] * flat.dtype.itemsize % 8 == 0 else np.uint8)
    return nonfinite, ~words.any(axis=1)


def parse_index_line(raw: bytes) -> Any:
    """An index line's text, ``None`` for a row a repair dropped, or :data:`BAD_LINE`."""
    try:
        value = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return BAD_LINE
    return value if value is None or isinstance(value, str) else BAD_LINE
