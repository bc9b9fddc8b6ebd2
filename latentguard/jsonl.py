"""One JSON Lines record: the one way every JSONL file of the project is written (score shards, inference.py's
output, the server's audit log)."""
from __future__ import annotations

import json

# Line ends that JSON leaves raw in a string (it escapes only controls below U+0020) but that line readers split on:
# Python's str.splitlines() read a 2-row shard holding U+2028 as 4 lines (a thirty-eighth hostile pass).
_LINE_ENDS = str.maketrans({"\u2028": "\\u2028", "\u2029": "\\u2029", "\x85": "\\u0085"})


def jsonl_line(record: object) -> str:
    """``record`` as one line of JSON, ending in ``\\n``: UTF-8 text kept readable (not ``\\u`` escaped), except the
    characters some readers take as line ends, which are escaped (JSON reads them back as the same text)."""
    return json.dumps(record, ensure_ascii=False).translate(_LINE_ENDS) + "\n"


__all__ = ["jsonl_line"]
