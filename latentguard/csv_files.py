"""CSV read strictly, and CSV reports a person may open in a spreadsheet (a text cell that starts like a formula is
written as text)."""
from __future__ import annotations

import csv
import re

# A cell a spreadsheet would run as a formula ("=HYPERLINK(...)", "@SUM(...)") when a moderator opens a report.
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
_NUMBER = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?")


def strict_reader(lines, **options):
    """``csv.reader`` that refuses what the lenient one reads silently into other rows: a quote never closed ran
    every later record of a file into one cell (four prompts became one row, exit 0: a thirty-sixth hostile pass),
    and ``"a"b`` read as ``ab``. Every CSV of prompts is read through it; its errors read as :func:`csv_problem`."""
    return csv.reader(lines, strict=True, **options)


def strict_dict_reader(lines, **options):
    """``csv.DictReader`` read as :func:`strict_reader` reads."""
    return csv.DictReader(lines, strict=True, **options)


def csv_problem(exc: csv.Error) -> str:
    """A CSV reader's error in words a user can act on."""
    if "unexpected end of data" in str(exc):
        return "a quoted cell is never closed (its opening quote, or a stray one, runs to the end of the file)"
    return f"malformed CSV ({exc})"


def csv_cell(text: str | None) -> str | None:
    """``text`` for a CSV report cell: one that starts like a formula gets a leading ``'`` (OWASP's advice), so
    Excel and LibreOffice show it as text instead of running it (inference.py's reports, the benchmark's scores)."""
    if not isinstance(text, str) or not text.startswith(_FORMULA_START) or _NUMBER.fullmatch(text):
        return text  # a plain number ("-2.500000", a score) is no formula
    return "'" + text



class report_writer:
    """``csv.writer`` for a report a person may open in a spreadsheet: every text cell goes through
    :func:`csv_cell`. One boundary, not a list of columns: a category named "=HYPERLINK(...)" in a blacklist had
    reached inference.py's ``categories`` cell, and user prompts test.py's ``scores_external.csv`` (a thirty-sixth
    hostile pass)."""

    def __init__(self, handle, **options) -> None:
        self._writer = csv.writer(handle, **options)

    def writerow(self, row) -> None:
        self._writer.writerow([csv_cell(c) if isinstance(c, str) else c for c in row])


__all__ = ["csv_cell", "csv_problem", "report_writer", "strict_dict_reader", "strict_reader"]
