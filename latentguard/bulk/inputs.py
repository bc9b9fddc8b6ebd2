"""Corpus inputs: find the files, plan their shards, and stream their rows with bounded memory.

An input is a ``.txt`` (one prompt per line), ``.jsonl``, ``.csv`` or ``.parquet`` file. A row's
number is its place in its file: the line (0-based) of a ``.txt`` or ``.jsonl`` file, the record
after the header of a ``.csv``, the row of a ``.parquet``. Blank lines are not rows (as in
``inference.py``) but keep their number, so ``row`` always points back at the input. Shards never
span two files: shard *k* of a file holds its rows ``[k*S, (k+1)*S)``, so boundaries depend only
on row numbers and the shard size. Planning scans text files once for the byte offset of every
shard's first row, so a resumed run or a Ray task reads only its own rows; the same pass checks the
UTF-8, finds whether any line is not blank, and reads every line that may hold what a row may not (a
``\\u`` escape of a surrogate in ``.jsonl``, a carriage return inside a ``.txt`` line) as the reader
will, so such a file is refused before the output directory is made.
"""
from __future__ import annotations

import csv
import glob
import json
import os
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

from ..csv_files import csv_problem, strict_reader
from ..data.text import validate_text
from ..errors import LatentGuardError
from ..io import named_file_problem, prompt_line, strict_json

FORMATS = {".txt": "txt", ".jsonl": "jsonl", ".ndjson": "jsonl", ".csv": "csv", ".parquet": "parquet"}
CHUNK = 1 << 22  # bytes per read when scanning text files for line offsets
READ_ROWS = 8192  # rows per chunk handed to the scorer
# Lines the planner reads in full, as the reader will: in .jsonl, a \u escape of a surrogate (a valid pair
# passes; a lone one is not text); in .txt, a carriage return that does not end its line.
SUSPECT = {"jsonl": re.compile(r"\\u[dD][89a-fA-F]"), "txt": re.compile(r"\r(?!\n)")}


@dataclass(frozen=True)
class InputFile:
    """One input: where it is, its format and size, and the first row and byte offset of each shard."""

    name: str             # the path as given (the output's ``input`` column)
    path: str             # the resolved path
    format: str
    size: int
    mtime_ns: int
    rows: int             # lines (txt/jsonl, blank ones included), records (csv) or rows (parquet)
    offsets: tuple[int, ...] = field(default=())  # byte offset of each shard's first row (text formats)
    has_rows: bool = True  # False when there is no row to score (no record, or only blank lines)

    def identity(self) -> dict:
        """What a resumed run must find unchanged."""
        return {"name": self.name, "path": self.path, "format": self.format, "size": self.size,
                "mtime_ns": self.mtime_ns, "rows": self.rows}

    def ensure_unchanged(self) -> None:
        """Refuse to go on when the file is no longer the one planned: shards are read at the byte offsets
        and row counts the plan found, so a file rewritten mid-run would give rows of the new file under
        the old numbering (fragments, shifts, rows never read). Size and ``mtime_ns`` are what the
        manifest records; a stat is cheap enough to take before and after every shard."""
        try:
            stat = os.stat(self.path)
        except OSError as exc:
            changed = f"it can no longer be read ({exc.strerror or exc})"
        else:
            keys = [k for k, a, b in (("mtime_ns", self.mtime_ns, stat.st_mtime_ns), ("size", self.size, stat.st_size))
                    if a != b]
            if not keys:
                return
            changed = f"{', '.join(keys)} changed"
        raise LatentGuardError(f"input {self.name} changed while this run was scoring it ({changed}); its rows are "
                               "no longer the ones planned, so it is not scored further (the shards already written "
                               "stay): score the file as it is now into another --output")


def expand_inputs(patterns: Sequence[str]) -> list[tuple[str, Path]]:
    """Files and globs -> ``(name as given, resolved path)`` in order; a glob's matches sorted.
    A pattern matching nothing, an unknown extension or a file named twice is refused."""
    found: list[tuple[str, Path]] = []
    for pattern in patterns:
        if glob.has_magic(pattern):  # a glob's directories are skipped, a named directory is refused
            names = sorted(n for n in glob.glob(pattern, recursive=True) if not Path(n).is_dir())
        else:
            names = [pattern]
        if not names:
            raise LatentGuardError(f"input {pattern!r} matches no file")
        for name in names:
            path = Path(name)
            if path.is_dir():
                raise LatentGuardError(f"input {name} is a directory; give its files or a glob ({name}/*.parquet)")
            problem = named_file_problem(path, "input")  # a FIFO or device: read once, it has no offsets to resume
            if problem:
                raise LatentGuardError(problem)
            input_format(path)
            found.append((name, path.resolve()))
    seen: dict[tuple[int, int], str] = {}
    for name, path in found:  # one file however it is named: a path, a link or a hard link (the same inode)
        if (key := (path.stat().st_dev, path.stat().st_ino)) in seen:
            raise LatentGuardError(f"input {name} is given twice (also as {seen[key]}); name each file once")
        seen[key] = name
    return found


def input_format(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix not in FORMATS:
        raise LatentGuardError(f"input {path}: unknown extension '{suffix or '(none)'}'; use .txt, .jsonl, .csv or "
                               ".parquet (uncompressed)")
    return FORMATS[suffix]


def plan_input(name: str, path: Path, text_column: str, id_column: str | None, shard_size: int) -> InputFile:
    """Check an input's columns and find its row count and shard offsets (one pass over a text file,
    metadata only for parquet), before any model is loaded."""
    fmt = input_format(path)
    stat = path.stat()
    if fmt == "parquet":
        rows, offsets = _parquet_rows(path, text_column, id_column), ()
        has_rows = rows > 0
    elif fmt == "csv":
        rows, offsets = _csv_offsets(path, text_column, id_column, shard_size)
        has_rows = rows > 0
    else:
        rows, offsets, has_rows = _line_offsets(path, shard_size, _LineCheck(name, path, fmt, text_column, id_column))
    return InputFile(name, str(path), fmt, stat.st_size, stat.st_mtime_ns, rows, tuple(offsets), has_rows)


def shard_count(item: InputFile, shard_size: int) -> int:
    return -(-item.rows // shard_size)


# ------------------------------------------------------------------------------------ planning
def _line_offsets(path: Path, shard_size: int, check: "_LineCheck") -> tuple[int, list[int], bool]:
    """Lines in the file, the byte offset of lines 0, S, 2S, ... (a last line without ``\\n`` counts), and
    whether any line is not blank; ``check`` sees the file's whole lines as they are read.

    Line *i* > 0 starts after the file's *i*-th newline; numpy finds a block's newlines at memory speed.
    """
    import numpy as np

    offsets, newlines, position, last = [0], 0, 0, b"\n"
    whole: list[bytes] = []  # the blocks since the last newline: a line not yet ended
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(CHUNK), b""):
            found = np.flatnonzero(np.frombuffer(block, dtype=np.uint8) == 10)
            first = -(-(newlines + 1) // shard_size) * shard_size  # the first boundary after line `newlines`
            for line in range(first, newlines + len(found) + 1, shard_size):
                offsets.append(position + int(found[line - newlines - 1]) + 1)
            if len(found):  # lines up to the block's last newline are whole: check them
                cut = int(found[-1]) + 1
                check(b"".join([*whole, block[:cut]]))
                whole = [block[cut:]]
            else:
                whole.append(block)
            newlines, position, last = newlines + len(found), position + len(block), block[-1:]
    check(b"".join(whole))
    lines = newlines + (1 if position and last != b"\n" else 0)
    return lines, offsets[: -(-lines // shard_size)], check.has_rows


class _LineCheck:
    """Whole lines of a ``.txt``/``.jsonl`` input, in order, checked as planning reads them: UTF-8 (a bad byte
    names its offset, as the reader does), whether any line is not blank, and every :data:`SUSPECT` line
    read by :func:`_line_record`, the reader's own code, so what it would refuse is refused now."""

    def __init__(self, name: str, path: Path, fmt: str, text_column: str, id_column: str | None) -> None:
        self.name, self.path, self.fmt, self.text_column, self.id_column = name, path, fmt, text_column, id_column
        self.position, self.line, self.has_rows = 0, 0, False  # byte offset and number of the next line

    def __call__(self, data: bytes) -> None:
        if not data:
            return
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise LatentGuardError(_not_utf8(self.path, self.position + exc.start)) from None
        if self.position == 0 and text.startswith("\ufeff"):
            text = text[1:]
        self.has_rows = self.has_rows or bool(text) and not text.isspace()  # a line holding more than whitespace
        line, at, checked = self.line, 0, -1
        for match in SUSPECT[self.fmt].finditer(text):
            line += text.count("\n", at, match.start())
            at = match.start()
            if line != checked:  # each line once, however many suspects it holds
                start, end = text.rfind("\n", 0, at) + 1, text.find("\n", at)
                _line_record(self.name, self.fmt, text[start:] if end < 0 else text[start : end + 1], line,
                             self.text_column, self.id_column)
                checked = line
        self.position += len(data)
        self.line += text.count("\n")


def _csv_header(path: Path, handle, text_column: str, id_column: str | None) -> tuple[list[str], int]:
    try:
        header = next(strict_reader(_decoded_lines(handle, path, 0)), None)
    except csv.Error as exc:  # a bare CR in the header had been a traceback (a thirty-sixth hostile pass)
        raise LatentGuardError(f"{path}: the header row is not valid CSV ({csv_problem(exc)})") from None
    if header is None:
        raise LatentGuardError(f"{path}: empty CSV file (it needs a header row naming the columns)")
    _unique_columns(path, header, "the header")
    for column, flag in ((text_column, "--text-column"), (id_column, "--id-column")):
        if column is not None and column not in header:
            raise LatentGuardError(f"{path}: no column '{column}' in the header ({', '.join(header)}); set {flag}")
    return header, handle.tell()


def _csv_offsets(path: Path, text_column: str, id_column: str | None, shard_size: int) -> tuple[int, list[int]]:
    """Records after the header and the byte offset of records 0, S, 2S, ... (quoted newlines respected)."""
    with open(path, "rb") as handle:
        _, start = _csv_header(path, handle, text_column, id_column)
        handle.seek(start)
        lines = _decoded_lines(handle, path, start)
        offsets, records, blank = [], 0, 0  # blank: the blank lines since the last record
        reader = strict_reader(lines)
        while True:
            if records % shard_size == 0 and not blank:
                offsets.append(lines.position)
            try:
                record = next(reader)
            except StopIteration:
                break
            except csv.Error as exc:
                raise LatentGuardError(f"{path}: record {records} is not valid CSV: {csv_problem(exc)}") from None
            if not record:  # a blank line: allowed at the end of the file only (an editor's trailing newline)
                blank += 1
                continue
            if blank:
                raise LatentGuardError(_blank_csv_line(path, records))
            records += 1
    return records, offsets[: -(-records // shard_size)]


def _blank_csv_line(path: Path | str, record: int) -> str:
    return (f"{path}: a blank line before record {record}; blank lines are allowed only at the end of a CSV file; "
            "remove the line")


def _parquet_rows(path: Path, text_column: str, id_column: str | None) -> int:
    import pyarrow.parquet as pq

    try:
        meta = pq.ParquetFile(path)
    except Exception as exc:  # pyarrow raises its own error types for a file that is not parquet
        raise LatentGuardError(f"{path}: not a readable parquet file ({exc})") from None
    names = meta.schema_arrow.names
    _unique_columns(path, names, "its schema")
    for column, flag in ((text_column, "--text-column"), (id_column, "--id-column")):
        if column is not None and column not in names:
            raise LatentGuardError(f"{path}: no column '{column}' ({', '.join(names)}); set {flag}")
    kind = meta.schema_arrow.field(text_column).type
    if getattr(kind, "value_type", None) is not None:  # a pandas categorical: its rows read as their texts
        kind = kind.value_type
    if str(kind) not in ("string", "large_string", "string_view"):
        raise LatentGuardError(f"{path}: column '{text_column}' holds {kind}, not text; set --text-column")
    return meta.metadata.num_rows


def _unique_columns(path: Path, names: list[str], where: str) -> None:
    """Refuse a column name given twice: which of the columns is the text (or id) would be a guess."""
    twice = [name for name, n in Counter(names).items() if n > 1]
    if twice:
        listed = ", ".join(f"'{name}'" for name in twice)
        raise LatentGuardError(f"{path}: column name(s) {listed} appear more than once in {where} "
                               f"({', '.join(names)}); give each column its own name")


def _not_utf8(path: Path, byte: int) -> str:
    return f"{path}: byte {byte} is not valid UTF-8; re-save the file as UTF-8"


class _decoded_lines:
    """UTF-8 lines of a binary file from byte ``position`` (a bad byte names its line), tracking the
    offset after the last line given out, so a CSV reader's record boundaries have byte offsets."""

    def __init__(self, handle, path: Path, position: int) -> None:
        self.handle, self.path, self.position = handle, path, position

    def __iter__(self):
        return self

    def __next__(self) -> str:
        raw = self.handle.readline()
        if not raw:
            raise StopIteration
        start, self.position = self.position, self.position + len(raw)
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise LatentGuardError(_not_utf8(self.path, start + exc.start)) from None
        return text[1:] if start == 0 and text.startswith("\ufeff") else text


# ------------------------------------------------------------------------------------- reading
@dataclass
class Rows:
    """A chunk of an input's rows: their numbers, texts and (optional) ids, in file order."""

    rows: list[int]
    texts: list[str]
    ids: list[str | None] | None


def read_rows(item: InputFile, text_column: str, id_column: str | None, start: int, stop: int,
              shard_size: int) -> Iterator[Rows]:
    """Stream rows ``[start, stop)`` of ``item`` (``start`` a shard boundary) in chunks of
    :data:`READ_ROWS`. A row whose text is missing or not a string is refused, naming it."""
    if start % shard_size:
        raise LatentGuardError(f"internal: reading must start at a shard boundary, got row {start}")
    stop = min(stop, item.rows)
    if start >= stop:
        return
    if item.format == "parquet":
        yield from _parquet_chunks(item, text_column, id_column, start, stop)
        return
    with open(item.path, "rb") as handle:
        offset = item.offsets[start // shard_size]
        handle.seek(offset)
        lines = _decoded_lines(handle, Path(item.path), offset)
        if item.format == "csv":
            records = _csv_records(item, lines, text_column, id_column, start)
        else:
            records = _line_records(item, lines, text_column, id_column, start)
        chunk = Rows([], [], [] if id_column else None)
        for row, text, ident in records:
            if row >= stop:
                break
            chunk.rows.append(row)
            chunk.texts.append(text)
            if chunk.ids is not None:
                chunk.ids.append(ident)
            if len(chunk.rows) == READ_ROWS:
                yield chunk
                chunk = Rows([], [], [] if id_column else None)
        if chunk.rows:
            yield chunk


def _line_records(item: InputFile, lines, text_column: str, id_column: str | None, start: int):
    for row, line in enumerate(lines, start):
        record = _line_record(item.name, item.format, line, row, text_column, id_column)
        if record is not None:
            yield row, *record


def _line_record(name: str, fmt: str, line: str, row: int, text_column: str,
                 id_column: str | None) -> tuple[str, str | None] | None:
    """Row ``row`` of a ``.txt``/``.jsonl`` input from its line: ``(text, id)``, or None for a blank line.
    The one reading of a line, for the reader and for the planner's checks. A ``.txt`` line is read as
    ``inference.py`` reads one (:func:`latentguard.io.prompt_line`); a ``.jsonl`` line must be one JSON object
    of one meaning (:func:`latentguard.io.strict_json`)."""
    where = f"line {row + 1}"
    if fmt == "txt":
        text = prompt_line(line, f"{name}: {where}")
        return (text, None) if text else None
    if not line.strip():
        return None
    record = strict_json(line, f"{name}: {where}")
    if not isinstance(record, dict):
        raise LatentGuardError(f"{name}: {where} is not a JSON object")
    return (_text(name, record.get(text_column, None), text_column, where),
            _ident(name, record.get(id_column), id_column, where) if id_column else None)


def _csv_records(item: InputFile, lines, text_column: str, id_column: str | None, start: int):
    with open(item.path, "rb") as handle:
        header, _ = _csv_header(Path(item.path), handle, text_column, id_column)
    at, id_at = header.index(text_column), header.index(id_column) if id_column else None
    reader = strict_reader(lines)
    row = start
    while True:
        try:
            record = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            raise LatentGuardError(f"{item.name}: record {row} is not valid CSV: {csv_problem(exc)}") from None
        if not record:  # a blank line: the end of the file's records (planning refused one in the middle)
            if row >= item.rows:
                return
            raise LatentGuardError(_blank_csv_line(item.name, row))
        if len(record) != len(header):
            raise LatentGuardError(f"{item.name}: record {row} has {len(record)} fields, the header {len(header)}")
        if not record[at]:  # an empty field is how pandas and spreadsheets write a missing value
            _text(item.name, None, text_column, f"record {row}")
        yield row, record[at], record[id_at] if id_at is not None else None
        row += 1


def _parquet_chunks(item: InputFile, text_column: str, id_column: str | None, start: int, stop: int):
    import pyarrow.parquet as pq

    handle = pq.ParquetFile(item.path)
    groups, first, begin = [], None, 0
    for g in range(handle.metadata.num_row_groups):
        n = handle.metadata.row_group(g).num_rows
        if begin + n > start and begin < stop:
            groups.append(g)
            first = begin if first is None else first
        begin += n
    columns = [text_column] + ([id_column] if id_column and id_column != text_column else [])
    row = first
    for batch in handle.iter_batches(batch_size=READ_ROWS, row_groups=groups, columns=columns):
        lo, hi = max(start - row, 0), min(stop - row, batch.num_rows)
        if lo < hi:
            texts = batch.column(text_column).slice(lo, hi - lo).to_pylist()
            for i, text in enumerate(texts):
                _text(item.name, text, text_column, f"row {row + lo + i}")
            ids = None
            if id_column:
                ids = [_ident(item.name, v, id_column, f"row {row + lo + i}")
                       for i, v in enumerate(batch.column(id_column).slice(lo, hi - lo).to_pylist())]
            yield Rows(list(range(row + lo, row + hi)), texts, ids)
        row += batch.num_rows
        if row >= stop:
            return


def _text(name: str, value, column: str, where: str) -> str:
    """A row's text: a string (else refused, naming the row), and readable text (:func:`validate_text`)."""
    if not isinstance(value, str):
        what = "no" if value is None else f"a {type(value).__name__}, not a"
        raise LatentGuardError(f"{name}: {where} has {what} text in column '{column}'; every row needs one "
                               "(drop or fill such rows first)")
    return validate_text(value, f"{name}: {where}: the text in column '{column}'")


def _ident(name: str, value, column: str, where: str) -> str | None:
    """An id as text, so one column has one type across files (``None`` stays null); it is written out,
    so it must be readable text (:func:`validate_text`); bytes are read as UTF-8 ("b'ok'" had been written)."""
    what = f"{name}: {where}: the id in column '{column}'"
    if value is None or (isinstance(value, float) and value != value):  # a float column's NaN is pandas' missing
        return None
    try:
        if isinstance(value, (list, dict)):
            value = json.dumps(value, ensure_ascii=False)
        elif isinstance(value, bytes):
            value = value.decode("utf-8")
    except RecursionError:
        raise LatentGuardError(f"{what} is nested too deeply") from None
    except UnicodeDecodeError:
        raise LatentGuardError(f"{what} is bytes that are not UTF-8 text; give a text id column") from None
    return validate_text(value if isinstance(value, str) else str(value), what)


__all__ = ["InputFile", "Rows", "expand_inputs", "plan_input", "read_rows", "shard_count"]
