"""A scoring run before any text is scored: its options, inputs, shards and output directory.

:func:`plan_run` expands the inputs, plans their shards and checks the output directory (new, empty,
or holding a manifest), before the guard is loaded; :func:`open_run` then writes the manifest or
checks that the recorded run is this one, so an engine only fills shards.
"""
from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

from ..errors import LatentGuardError
from ..guard.identity import CODE_CHANGED
from .inputs import InputFile, expand_inputs, plan_input, shard_count
from .manifest import (
    guard_identity,
    manifest_differences,
    new_manifest,
    read_manifest,
    shard_name,
    validate_directory,
    write_manifest,
)
from .scorer import output_columns

ROW_COLUMNS = ("input", "row")  # where each output row came from: the input as given, its row number


@dataclass(frozen=True)
class BulkOptions:
    """How a corpus is read and written (config section ``bulk``)."""

    text_column: str = "text"
    id_column: str | None = None
    format: str = "parquet"
    shard_size: int = 50_000
    dedup: bool = True
    sanitize: bool = False  # part of the run's record: a resumed run never mixes shards with and without it

    @classmethod
    def from_config(cls, cfg) -> "BulkOptions":
        b = cfg.bulk
        return cls(b.text_column, b.id_column, b.format, b.shard_size, b.dedup, b.sanitize)

    def record(self, guard) -> dict:
        """The options a resumed run must share (the guard's batch size included: batches set the float bits);
        ``sanitize`` only when on, so the runs recorded before it existed still resume."""
        record = {**asdict(self), "batch_size": guard.batch_size}
        if not self.sanitize:
            del record["sanitize"]
        return record


@dataclass(frozen=True)
class Shard:
    """Rows ``[start, stop)`` of one input, written to ``file``."""

    index: int
    item: InputFile
    start: int
    stop: int
    file: str


@dataclass
class Run:
    """An opened run: its directory, options, inputs, shards, output columns and manifest."""

    directory: Path
    options: BulkOptions
    inputs: list[InputFile]
    shards: list[Shard]
    columns: list[str]
    manifest: dict
    resumed: bool


def table_columns(options: BulkOptions, guard) -> list[str]:
    """The output's columns, in order: where the row came from, its text, the verdict."""
    ident = [options.id_column] if options.id_column else []
    names = [*ROW_COLUMNS, *ident, options.text_column, *output_columns(guard, options.sanitize)]
    clash = sorted({n for n in names if names.count(n) > 1})
    if clash:
        raise LatentGuardError(f"column name(s) {', '.join(clash)} would appear twice in the output; rename the "
                               "--text-column/--id-column or the blacklist's categories")
    return names


@dataclass
class Planned:
    """A run's inputs, checked and planned, before any model is loaded."""

    directory: Path
    options: BulkOptions
    inputs: list[InputFile]


def plan_run(patterns: Sequence[str], directory: str | Path, options: BulkOptions) -> Planned:
    """Expand and check the inputs, check the output directory (new, empty, or holding a manifest) and
    plan every shard: everything that can be refused is refused before the slow guard load."""
    directory = Path(directory)
    if options.id_column is not None and options.id_column == options.text_column:
        raise LatentGuardError(f"--id-column and --text-column are both '{options.text_column}'; give two columns")
    found = expand_inputs(patterns)
    validate_not_output(found, directory)
    manifest = read_manifest(directory)
    validate_directory(directory, manifest)
    if manifest is not None:  # resumed: the recorded names, so rows written before and after agree
        names = {i.get("path"): i.get("name") for i in manifest.get("inputs", [])}
        found = [(names.get(str(path), name), path) for name, path in found]
    items = [plan_input(name, path, options.text_column, options.id_column, options.shard_size)
             for name, path in found]
    # nothing to score (no record, or blank lines only) is a mistaken input, not a run that found nothing unsafe
    if not any(i.has_rows for i in items):
        listed = ", ".join(str(path) for _, path in found[:3]) + (" and more" if len(found) > 3 else "")
        raise LatentGuardError(f"no prompts to score: {listed} hold(s) no rows; check the files and --text-column")
    return Planned(directory, options, items)


def open_run(planned: Planned, guard, engine: str = "local", device: str = "") -> Run:
    """Make the planned directory this run's output: a new run writes the manifest, a rerun of the same
    run resumes, and a rerun with other inputs, guard or options is refused, naming what differs.
    (Claim the directory first, e.g. ``cli.rundir.claim_run_dir``, so two runs never share it.)"""
    directory, options = planned.directory, planned.options
    manifest = read_manifest(directory)  # again: it may have appeared while the guard loaded
    validate_directory(directory, manifest)
    shards = _shards(planned.inputs, options)
    columns = table_columns(options, guard)
    now = new_manifest([i.identity() for i in planned.inputs], guard_identity(guard, sanitize=options.sanitize),
                       options.record(guard), engine, len(shards), columns, device)
    if manifest is not None:
        differences = manifest_differences(manifest, now)
        if differences:  # results of other code cannot be resumed by any command: only a new directory helps
            advice = "choose another --output" + ("" if any(CODE_CHANGED in d for d in differences) else
                                                  ", or rerun the recorded command")
            raise LatentGuardError(f"{directory} holds a run with other settings ({'; '.join(differences)}); it is "
                                   f"not mixed with this one: {advice}")
    else:
        directory.mkdir(parents=True, exist_ok=True)
        write_manifest(directory, now)
    return Run(directory, options, planned.inputs, shards, columns, manifest or now, manifest is not None)


def _shards(items: list[InputFile], options: BulkOptions) -> list[Shard]:
    total = sum(shard_count(i, options.shard_size) for i in items)
    suffix = "parquet" if options.format == "parquet" else "jsonl"
    shards, index = [], 0
    for item in items:
        for k in range(shard_count(item, options.shard_size)):
            start = k * options.shard_size
            shards.append(Shard(index, item, start, min(start + options.shard_size, item.rows),
                                shard_name(index, total, suffix)))
            index += 1
    return shards


def validate_not_output(inputs: Sequence[tuple[str, Path]], output: Path) -> None:
    """Refuse an input that is the output directory or lies inside it (reading our own shards back)."""
    out = Path(os.path.realpath(output))
    for name, path in inputs:
        if path == out or out in path.parents:
            raise LatentGuardError(f"input {name} lies in the output directory {output}; choose another --output")
