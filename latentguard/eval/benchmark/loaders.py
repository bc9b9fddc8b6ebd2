"""Reading a prompt set's file into distinct texts with their counts, labels and categories.

Formats by extension: CSV/TSV (header row), parquet (only the needed columns are read; needs
pyarrow), JSON Lines / JSON (a list of records), and plain text (one prompt per line). The entry's
columns must be there; a file downloaded from the set's source must also have the published row
count (a local ``--set`` file may be a deliberate subset, so there a difference is only noted).
Each distinct text is kept once (scored once); every row keeps its label and categories, so the
metrics still count every prompt of the set.
"""
from __future__ import annotations

import csv
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ...csv_files import csv_problem, strict_reader
from ...errors import LatentGuardError
from .registry import PromptSet

_LABELS = {"1": 1, "0": 0, "unsafe": 1, "safe": 0, "true": 1, "false": 0, "1.0": 1, "0.0": 0}


class ContentMismatch(LatentGuardError):
    """A downloaded file whose content is not the published set (columns or row count)."""


@dataclass
class LoadedSet:
    """A set as rows over distinct texts: ``texts[rows[i]]`` is row ``i``'s prompt."""

    name: str
    spec: PromptSet | None
    texts: list[str]                      # distinct, first-seen order: each is scored once
    rows: np.ndarray                      # [total] index into texts
    labels: np.ndarray                    # [total] 1 unsafe / 0 benign
    categories: list[tuple[str, ...]] | None = None   # [total] a row's categories, when the set has them
    info: dict[str, Any] = field(default_factory=dict)  # file, sha256, rows read, skipped, notes
    _distinct: bool | None = field(default=None, repr=False)

    @property
    def total(self) -> int:
        return int(self.rows.size)

    def unique_count(self, mask: np.ndarray | None = None) -> int:
        """Distinct texts among all rows (or the rows ``mask`` selects)."""
        rows = self.rows if mask is None else self.rows[mask]
        if self._distinct is None:  # a score file keeps one entry per row, repeats included
            self._distinct = len(set(self.texts)) == len(self.texts)
        return int(np.unique(rows).size) if self._distinct else len({self.texts[i] for i in rows})


def read_columns(path: str | Path, wanted: Sequence[str], text_column: str) -> tuple[list[str], dict[str, list]]:
    """``(every column name, {column: values})`` for the ``wanted`` columns the file has."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        return _parquet(path, wanted)
    if suffix in (".jsonl", ".json"):
        return _json(path, wanted, suffix == ".jsonl")
    if suffix == ".txt":
        from ...io import read_lines

        return [text_column], {text_column: read_lines(path, what="prompt file")}
    return _csv(path, wanted, "\t" if suffix == ".tsv" else ",")


def _csv(path: Path, wanted: Sequence[str], delimiter: str) -> tuple[list[str], dict[str, list]]:
    from ...io import read_text, split_lines

    csv.field_size_limit(min(sys.maxsize, 2**31 - 1))  # I2P has prompts of several kB
    reader = strict_reader(split_lines(read_text(path, "prompt set"), keepends=True), delimiter=delimiter)
    try:
        header = [h.strip() for h in next(reader)]
    except StopIteration:
        raise LatentGuardError(f"{path}: the file is empty; expected a header row") from None
    except csv.Error as exc:
        raise LatentGuardError(f"{path}: line 1: cannot read a CSV header ({exc})") from None
    index = {name: header.index(name) for name in wanted if name in header}
    out: dict[str, list] = {name: [] for name in index}
    try:
        for row in reader:
            if not row:
                continue
            if len(row) != len(header):
                raise LatentGuardError(f"{path}: line {reader.line_num}: expected {len(header)} columns, "
                                       f"got {len(row)}")
            for name, i in index.items():
                out[name].append(row[i])
    except csv.Error as exc:
        raise LatentGuardError(f"{path}: line {reader.line_num}: {csv_problem(exc)}") from None
    return header, out


def _parquet(path: Path, wanted: Sequence[str]) -> tuple[list[str], dict[str, list]]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise LatentGuardError(f"{path}: reading parquet needs pyarrow (pip install "
                               "'latentguard[benchmark]')") from None
    try:
        names = list(pq.read_schema(path).names)
        table = pq.read_table(path, columns=[c for c in wanted if c in names])
    except Exception as exc:  # noqa: BLE001 - any pyarrow failure is a bad file
        raise LatentGuardError(f"{path}: not a readable parquet file ({str(exc).splitlines()[0][:160]})") from None
    return names, {name: table.column(name).to_pylist() for name in table.column_names}


def _json(path: Path, wanted: Sequence[str], lines: bool) -> tuple[list[str], dict[str, list]]:
    from ...io import read_text, split_lines, strict_json

    text = read_text(path, "prompt set")
    if lines:
        records = [strict_json(line, f"{path}: line {n}") for n, line in enumerate(split_lines(text), 1)
                   if line.strip()]
    else:
        records = strict_json(text, str(path))
    if not isinstance(records, list) or not all(isinstance(r, dict) for r in records):
        raise LatentGuardError(f"{path}: expected a list of records ({{column: value}} objects)")
    names = list(dict.fromkeys(k for r in records for k in r))
    return names, {name: [r.get(name) for r in records] for name in wanted if name in names}


def parse_label(value: Any, path: Path, row: int, column: str) -> int:
    key = str(value).strip().lower()
    if key not in _LABELS:
        raise LatentGuardError(f"{path}: row {row}: {column} {value!r} must be 1/0 or unsafe/safe")
    return _LABELS[key]


def _split(value: Any, multi: bool) -> tuple[str, ...]:
    text = "" if value is None else str(value).strip()
    if not text:
        return ()
    return tuple(c.strip() for c in text.split(",") if c.strip()) if multi else (text,)


PROMPT_COLUMNS = ("prompt", "text", "adv_prompt", "caption", "prompts", "sentence", "Prompt", "Text")


def _wanted(spec: PromptSet, text_column: str | None) -> list[str]:
    """Every column any layout of ``spec`` reads, so one pass over the file serves whichever matches."""
    names: list[str] = [text_column] if text_column else []
    for reading in spec.readings():
        names += [*reading.columns, *((reading.label,) if isinstance(reading.label, str) else ())]
    return list(dict.fromkeys(names + list(PROMPT_COLUMNS)))


def choose_layout(spec: PromptSet, header: Sequence[str], path: Path, text_column: str | None = None,
                  downloaded: bool = False) -> PromptSet:
    """The reading of ``spec`` this file's columns call for: the first layout whose columns it has; for a local
    file with none of them, its prompts alone (the ``text_column`` given, else the one prompt-like column).
    ``text_column`` (``--text-column``) always names the prompt column; a file without it is refused."""
    present = set(header)
    if text_column is not None and text_column not in present:
        raise LatentGuardError(f"{path}: no column {text_column!r} (--text-column; columns: "
                               f"{', '.join(header) or 'none'})")
    readings = [spec] if downloaded else spec.readings()
    for reading in readings:
        needed = [c for c in reading.columns if c != reading.text_column]
        if all(c in present for c in needed) and (text_column or reading.text_column) in present:
            return replace(reading, text_column=text_column) if text_column else reading
    if downloaded:
        missing = [c for c in spec.columns if c not in present]
        raise ContentMismatch(f"{path}: no column {', '.join(repr(m) for m in missing)} (columns: "
                              f"{', '.join(header) or 'none'}); {spec.name} reads its prompts from "
                              f"'{spec.text_column}'")
    if spec.keep and spec.keep[0] not in present:
        raise LatentGuardError(f"{path}: no column '{spec.keep[0]}', which {spec.name} keeps rows by (columns: "
                               f"{', '.join(header) or 'none'})")
    if isinstance(spec.label, str) and spec.label not in present and spec.label_default is None:
        raise LatentGuardError(f"{path}: no label column '{spec.label}' (columns: {', '.join(header) or 'none'})")
    column = text_column
    if column is None:
        found = [c for c in PROMPT_COLUMNS if c in present] or (list(header) if len(header) == 1 else [])
        if len(found) != 1:
            raise LatentGuardError(f"{path}: which column holds the prompts? {spec.name} reads "
                                   f"'{spec.text_column}' and the file has {', '.join(header) or 'none'}; name it "
                                   "with --text-column COLUMN")
        column = found[0]
    return replace(spec, text_column=column, categories=tuple(c for c in spec.categories if c in present),
                   required_columns=(), layouts=(), layout=f"prompts only, from column '{column}'")


def _label(spec: PromptSet, value: Any, path: Path, row: int, column: str) -> int:
    if not spec.label_values:
        return parse_label(value, path, row, column)
    key = "" if value is None else str(value).strip()
    known = dict(spec.label_values)
    if key in known:
        return known[key]
    if spec.label_default is not None:
        return int(spec.label_default)
    raise LatentGuardError(f"{path}: row {row}: {column} {value!r} is not one {spec.name} knows "
                           f"({', '.join(known)}); a prompt of unknown label is neither counted safe nor unsafe")


def load_set(spec: PromptSet, path: str | Path, *, downloaded: bool, max_prompts: int | None = None,
             seed: int = 0, text_column: str | None = None) -> LoadedSet:
    """Read, check and deduplicate one set's file (``downloaded``: the published row count must hold, in the
    entry's own layout; a local file is read in the layout its columns call for, :func:`choose_layout`)."""
    path = Path(path)
    header, cols = read_columns(path, _wanted(spec, text_column), text_column or spec.text_column)
    spec = choose_layout(spec, header, path, text_column, downloaded)
    n_file = len(cols[spec.text_column])
    keep = np.ones(n_file, dtype=bool)
    if spec.keep:
        column, value = spec.keep
        keep = np.array([value in _split(v, True) for v in cols[column]], dtype=bool)
    n_kept = int(keep.sum())
    info: dict[str, Any] = {"file": str(path), "rows_in_file": n_file, "rows": n_kept, "text_column": spec.text_column}
    if spec.layout:
        info["layout"] = spec.layout
    if spec.expected_rows is not None and n_kept != spec.expected_rows:
        if downloaded:
            raise ContentMismatch(f"{path}: {n_kept} rows{' after ' + spec.keep[0] + ' filter' if spec.keep else ''}, "
                                  f"but {spec.name} has {spec.expected_rows} published; the download is not the "
                                  f"published set")
        info["note"] = f"{n_kept} rows; the published set has {spec.expected_rows}"
    index = np.flatnonzero(keep)
    if max_prompts is not None and max_prompts < index.size:
        rng = np.random.default_rng(seed)
        index = np.sort(rng.choice(index, size=max_prompts, replace=False))
        info["sampled"] = {"max_prompts": max_prompts, "seed": seed}
    label_col = spec.label if isinstance(spec.label, str) and spec.label in cols else None
    texts: list[str] = []
    position: dict[str, int] = {}
    rows, labels, cats = [], [], []
    skipped = 0
    for i in index:
        raw = cols[spec.text_column][i]
        if raw is not None and not isinstance(raw, str):  # a JSON number or true is no prompt; scored, it skewed rates
            raise LatentGuardError(f"{path}: row {int(i) + 1}: {spec.text_column} is {type(raw).__name__} {raw!r}, not "
                                   "text; every prompt must be a string (write it in quotes)")
        text = "" if raw is None else raw.strip()
        if not text:
            skipped += 1
            continue
        if text not in position:
            position[text] = len(texts)
            texts.append(text)
        rows.append(position[text])
        if label_col is not None:
            labels.append(_label(spec, cols[label_col][i], path, int(i) + 1, label_col))
        else:
            labels.append(spec.label if isinstance(spec.label, int) else int(spec.label_default))
        if spec.categories:
            cats.append(tuple(c for col in spec.categories for c in _split(cols[col][i], spec.multi_label)))
    if not rows:
        raise LatentGuardError(f"{path}: no prompts in column '{spec.text_column}'")
    if skipped:
        info["empty_rows_skipped"] = skipped
    return LoadedSet(spec.name, spec, texts, np.asarray(rows, np.int64), np.asarray(labels, np.int8),
                     cats if spec.categories else None, info)
