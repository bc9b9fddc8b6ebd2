"""The single-process engine: shards scored in order, each written atomically with a done marker.

Per shard: read its rows, look up the verdicts of texts already scored (:class:`VerdictMap`), score
the new distinct texts with the guard in order, write the shard to a temporary file and rename it
into place, record the new verdicts, then write the marker. A ``kill -9`` at any instant leaves
whole shards and markers only; the same command then resumes at the first shard without a marker,
forgetting the verdicts that shard and later ones had recorded, so every shard's bytes are the
ones an uninterrupted run writes. Each input is checked against its plan (size, ``mtime_ns``) before
and after its shard is read, and every input again at the end: a file rewritten mid-run stops the
run, naming it, so no shard mixes rows of two versions of a file.
"""
from __future__ import annotations

import json
import time
from collections import Counter
from typing import Callable

import numpy as np

from ..errors import LatentGuardError
from ..io import atomic_path, atomic_write_text, jsonl_line
from .dedup import VerdictMap, digest
from .inputs import Rows, read_rows
from .manifest import DEDUP_DB, DONE_DIR, MANIFEST, SUMMARY, read_marker, write_marker
from .plan import Run, Shard
from .scorer import category_columns, sanitize_columns, verdict_columns

SCORE_PIECE = 16  # guard batches per progress update (pieces are whole batches: the batches stay the same)


def run_local(run: Run, guard, progress: bool = True) -> dict:
    """Score every shard not yet done; return the run's summary (also written to ``_summary.json``)."""
    started = time.monotonic()
    markers, first = [], len(run.shards)
    for shard in run.shards:
        marker = read_marker(run.directory, shard.file)
        if marker is None:
            first = shard.index
            break
        markers.append(marker)
    todo = run.shards[first:]
    _remove_stale_temporaries(run)
    try:
        verdicts = VerdictMap(run.directory / DEDUP_DB, len(category_columns(guard))) if run.options.dedup else None
    except LatentGuardError:
        if not run.resumed and not markers:  # this process made the manifest a moment ago: leave no half-made run
            (run.directory / MANIFEST).unlink(missing_ok=True)
        raise
    bar = _progress(run, markers, progress)
    try:
        if verdicts is not None:
            verdicts.forget_from(first)
        for shard in todo:
            shard.item.ensure_unchanged()  # before reading its rows, and again before writing them
            try:
                rows = _gather(run, shard)
                shard.item.ensure_unchanged()
                table, stats, pending = _score_shard(run, guard, shard, rows, verdicts, bar)
            except LatentGuardError as exc:
                shard.item.ensure_unchanged()  # a file rewritten under the reader is named as such
                kept = "fix the input and run again: nothing of this run was kept" if not run.resumed and not markers \
                    else "nothing of this shard was written, a rerun resumes here"
                raise LatentGuardError(f"{shard.item.name} rows {shard.start}-{shard.stop - 1} ({shard.file}): {exc}; "
                                       f"{kept}") from None
            _write(run, shard, table)
            if verdicts is not None:  # recorded before the marker: a done shard's verdicts are always known
                verdicts.add(shard.index, *pending)
            write_marker(run.directory, shard.file, stats)
            markers.append(read_marker(run.directory, shard.file))
            if bar is not None:
                bar.n = sum(m["stop"] - m["start"] for m in markers)
                bar.set_postfix(flagged=sum(m["flagged"] for m in markers), refresh=True)
    except LatentGuardError:
        if not run.resumed and not markers:  # a new run that finished no shard: its folder holds nothing to resume
            _forget(run)
        raise
    finally:
        if bar is not None:
            bar.close()
        if verdicts is not None:
            verdicts.close()
    for item in run.inputs:  # a file changed after its last shard was read: the output is not of the file now
        item.ensure_unchanged()
    summary = summarize(run, markers, time.monotonic() - started, len(todo))
    atomic_write_text(run.directory / SUMMARY, json.dumps(summary, indent=1, ensure_ascii=False) + "\n")
    return summary


def _forget(run: Run) -> None:
    """Remove what a new run wrote before its first shard was done (the manifest and the dedup database): a bad row
    in shard 0 had left a folder whose rerun, once the input was fixed, was refused as "inputs changed" (a
    forty-first hostile pass). The command then removes the folder it made (cli/rundir.py)."""
    for name in (MANIFEST, DEDUP_DB, f"{DEDUP_DB}-journal", f"{DEDUP_DB}-wal", f"{DEDUP_DB}-shm"):
        (run.directory / name).unlink(missing_ok=True)


def _remove_stale_temporaries(run: Run) -> None:
    """A ``kill -9`` during a write leaves the temporary file ``atomic_path`` was filling
    (``.shard-00003.parquet.<random>.tmp``); this run owns the directory, so those are removed."""
    for folder, pattern in ((run.directory, ".shard-*.tmp"), (run.directory / DONE_DIR, ".shard-*.json.*.tmp"),
                            (run.directory, f".{SUMMARY}.*.tmp")):
        for stale in folder.glob(pattern) if folder.is_dir() else ():
            stale.unlink()


def _progress(run: Run, markers: list[dict], enabled: bool):
    if not enabled:
        return None
    from tqdm import tqdm

    total = sum(i.rows for i in run.inputs)
    return tqdm(total=total, initial=sum(m["stop"] - m["start"] for m in markers), unit="row", unit_scale=True,
                desc="scoring", smoothing=0.05, dynamic_ncols=True)


def _gather(run: Run, shard: Shard) -> Rows:
    rows = Rows([], [], [] if run.options.id_column else None)
    for chunk in read_rows(shard.item, run.options.text_column, run.options.id_column, shard.start, shard.stop,
                           run.options.shard_size):
        rows.rows += chunk.rows
        rows.texts += chunk.texts
        if rows.ids is not None:
            rows.ids += chunk.ids
    return rows


def _score_shard(run: Run, guard, shard: Shard, rows: Rows, verdicts: VerdictMap | None, bar):
    """The shard's output table, its marker stats and the new verdicts to record (``None`` without dedup)."""
    cats = list(category_columns(guard))
    concept_index = {c: i for i, c in enumerate(guard.concepts)}
    n = len(rows.texts)
    if verdicts is None:
        inverse, todo, known = np.arange(n), list(rows.texts), {}
        keys: list[bytes] = []
    else:
        firsts: dict[bytes, int] = {}
        inverse = np.fromiter((firsts.setdefault(digest(t), len(firsts)) for t in rows.texts), np.int64, count=n)
        keys = list(firsts)
        known = verdicts.lookup(keys)
        first_row = np.unique(inverse, return_index=True)[1]  # each distinct text's first row
        todo = [rows.texts[first_row[j]] for j, k in enumerate(keys) if k not in known]
    fresh = _score_in_pieces(guard, todo, _advance(bar, n, len(todo)))
    d = len(keys) if verdicts is not None else n
    score = np.zeros(d, np.float32)
    unsafe, truncated = np.zeros(d, bool), np.zeros(d, bool)
    concept = np.zeros(d, np.int64)  # an index into guard.concepts; -1: none (a refused row)
    refused = np.full(d, None, dtype=object)
    flags = np.zeros((d, len(cats)), bool)
    new_at = [j for j, k in enumerate(keys) if k not in known] if verdicts is not None else list(range(n))
    if new_at:
        score[new_at], unsafe[new_at], truncated[new_at] = fresh["score"], fresh["unsafe"], fresh["truncated"]
        concept[new_at] = [-1 if c is None else concept_index[c] for c in fresh["concept"]]
        refused[new_at] = fresh["refused"]
        for c, name in enumerate(cats):
            flags[new_at, c] = fresh[name]
    for j, k in enumerate(keys):
        if k in known:
            s, u, c, t, f = known[k]
            score[j], unsafe[j], concept[j], truncated[j] = s, bool(u), c, bool(t)
            flags[j] = np.frombuffer(f, dtype=np.uint8).astype(bool)
    names = np.array([*guard.concepts, None], dtype=object)  # index -1: None
    columns = {"score": score[inverse], "unsafe": unsafe[inverse],
               "concept": names[concept[inverse]] if n else np.array([], object),
               "truncated": truncated[inverse], "refused": refused[inverse]}
    for c, name in enumerate(cats):
        columns[name] = flags[inverse, c]
    if run.options.sanitize:
        columns.update(sanitize_columns(guard, rows.texts, columns["unsafe"]))
    table = _table(run, shard, rows, columns)
    flagged = columns["unsafe"]
    refused_rows = np.array([r is not None for r in columns["refused"]], dtype=bool)
    stats = {"input": shard.item.name, "start": shard.start, "stop": shard.stop, "rows": n, "scored": len(todo),
             "flagged": int(flagged.sum()), "truncated": int(columns["truncated"].sum()),
             "refused": int(refused_rows.sum()),
             "concepts": dict(Counter(columns["concept"][flagged & ~refused_rows].tolist())),
             "categories": {category: int(columns[name].sum()) for name, category in category_columns(guard).items()}}
    pending = None
    if verdicts is not None:  # a refused text is not recorded: a later shard refuses it again, naming why
        new_at = [j for j in new_at if refused[j] is None]
        pending = ([keys[j] for j in new_at], score[new_at], unsafe[new_at], concept[new_at], truncated[new_at],
                   flags[new_at])
    return table, stats, pending


def _score_in_pieces(guard, texts: list[str], advance: Callable[[int], None]) -> dict[str, np.ndarray]:
    """``verdict_columns`` over ``texts`` in pieces of whole guard batches (so the batches are the ones
    one call would make), reporting progress after each."""
    piece = guard.batch_size * SCORE_PIECE
    parts = []
    for start in range(0, len(texts), piece):
        parts.append(verdict_columns(guard, texts[start : start + piece]))
        advance(min(start + piece, len(texts)))
    if not parts:
        return {}
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def _advance(bar, rows: int, todo: int) -> Callable[[int], None]:
    """Move the bar through this shard's rows in proportion to the new texts scored."""
    base = bar.n if bar is not None else 0

    def advance(done: int) -> None:
        if bar is not None and todo:
            bar.n = base + rows * done // todo
            bar.refresh()
    return advance


def _table(run: Run, shard: Shard, rows: Rows, columns: dict[str, np.ndarray]):
    """The shard as a pyarrow Table with the output's columns, in order and typed."""
    import pyarrow as pa

    n = len(rows.rows)
    data = {"input": pa.array([shard.item.name] * n, pa.string()), "row": pa.array(rows.rows, pa.int64())}
    if run.options.id_column:
        data[run.options.id_column] = pa.array(rows.ids, pa.string())
    data[run.options.text_column] = pa.array(rows.texts, pa.string())
    data["score"] = pa.array(columns["score"], pa.float32())
    data["concept"] = pa.array(columns["concept"].tolist(), pa.string())
    for name in ("refused", "sanitized", "removed"):
        if name in columns:
            data[name] = pa.array(columns[name].tolist(), pa.string())
    for name in columns:
        if name not in data:
            data[name] = pa.array(columns[name], pa.bool_())
    return pa.table({name: data[name] for name in run.columns})


def _write(run: Run, shard: Shard, table) -> None:
    """Write the shard atomically (same rows, same bytes: no timestamps, fixed compression)."""
    with atomic_path(run.directory / shard.file) as tmp:
        if run.options.format == "parquet":
            import pyarrow.parquet as pq

            pq.write_table(table, tmp, compression="zstd")
        else:
            with open(tmp, "w", encoding="utf-8", newline="\n") as out:
                for record in table.to_pylist():
                    out.write(jsonl_line(record))


def summarize(run: Run, markers: list[dict], seconds: float, shards_scored: int) -> dict:
    """Totals over every done shard: rows, distinct texts scored, flagged, truncated, top concepts."""
    concepts: Counter = Counter()
    categories: Counter = Counter()
    for m in markers:
        concepts.update(m["concepts"])
        categories.update(m["categories"])
    rows = sum(m["rows"] for m in markers)
    return {"directory": str(run.directory), "shards": len(markers), "shards_total": len(run.shards),
            "complete": len(markers) == len(run.shards), "rows": rows,
            "distinct": sum(m["scored"] for m in markers) if run.options.dedup else None,
            "flagged": sum(m["flagged"] for m in markers), "truncated": sum(m["truncated"] for m in markers),
            "refused": sum(m.get("refused", 0) for m in markers),
            "top_concepts": concepts.most_common(10), "categories": dict(categories),
            "shards_scored_now": shards_scored, "seconds_now": round(seconds, 3)}
