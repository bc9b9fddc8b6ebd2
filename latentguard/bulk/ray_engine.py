"""The Ray Data engine: the same shards, read on the workers, scored by :class:`GuardBatchScorer`
actors (the guard loaded once per actor) and written with ``Dataset.write_parquet``.

``from_items(shards) -> map_batches(read) -> map_batches(GuardBatchScorer) -> write_parquet``: Ray
schedules, retries lost tasks and restarts lost actors; nothing here schedules. Reading goes through
:mod:`latentguard.bulk.inputs`, so rows carry the same ``input`` and ``row`` as the local engine's.
Ray writes into ``DIR/_ray-staging``; only a finished pipeline is renamed to ``DIR/parts`` and marked
done, so a failed batch is reported and never read as a result. Ray Data does not resume a pipeline:
an interrupted Ray run starts over (its staging files are removed); the local engine resumes shard
by shard. Dedup is per batch of ``shard_size`` rows (a corpus-wide dedup would need a shuffle).
``DIR`` must be a path every node sees (a shared filesystem).
"""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
import time
from collections import Counter
from typing import Any, Mapping

from ..errors import LatentGuardError
from ..io import atomic_write_text, fsync_dir, sha256_of
from .inputs import InputFile, read_rows
from .manifest import DONE_DIR, SUMMARY
from .plan import BulkOptions, Run
from .scorer import CATEGORY_PREFIX, GuardBatchScorer

STAGING = "_ray-staging"
PARTS = "parts"
RAY_MARKER = "ray.json"


def read_shards(batch, shards: list[dict], options: dict):
    """A Ray read step: a batch of shard numbers in, those shards' rows out (``input``, ``row``, id, text)."""
    import pyarrow as pa

    opts = BulkOptions(**options)
    tables = []
    for index in batch.column("shard").to_pylist():
        spec = shards[index]
        item = InputFile(**spec["item"])
        item.ensure_unchanged()  # the planned offsets are of the planned file: a rewritten one fails the run
        data: dict[str, list] = {"input": [], "row": [], options["text_column"]: []}
        if opts.id_column:
            data[opts.id_column] = []
        for chunk in read_rows(item, opts.text_column, opts.id_column, spec["start"], spec["stop"], opts.shard_size):
            data["row"] += chunk.rows
            data[opts.text_column] += chunk.texts
            if opts.id_column:
                data[opts.id_column] += chunk.ids
        item.ensure_unchanged()
        data["input"] = [item.name] * len(data["row"])
        ident = {opts.id_column: pa.array(data[opts.id_column], pa.string())} if opts.id_column else {}
        tables.append(pa.table({"input": pa.array(data["input"], pa.string()), "row": pa.array(data["row"], pa.int64()),
                                **ident, opts.text_column: pa.array(data[opts.text_column], pa.string())}))
    return pa.concat_tables(tables)


def run_ray(run: Run, guard, scorer_kwargs: Mapping[str, Any], *, address: str | None = None,
            workers: int | None = None, cpus_per_worker: float = 1.0, gpus_per_worker: float | None = None,
            progress: bool = True) -> dict:
    """Score the run's shards on Ray Data; return the summary (also in ``_summary.json``).

    ``scorer_kwargs``: how each actor builds the guard (:class:`GuardBatchScorer` arguments, e.g.
    ``{"config": cfg}``); the driver's ``guard`` is only the reference every actor must match.
    """
    started = time.monotonic()
    done = _finished(run)
    if done is not None:
        return _summary(run, done, time.monotonic() - started, scored_now=False)
    try:
        import ray
        import ray.data
    except ImportError:
        raise LatentGuardError("--engine ray needs Ray Data: pip install 'latentguard[bulk]'") from None
    if run.options.format != "parquet":
        raise LatentGuardError("--engine ray writes parquet (Ray's write_parquet); use --format parquet, or the "
                               "local engine for jsonl")
    staging = run.directory / STAGING
    if staging.exists():  # an interrupted Ray run of this directory left it: Ray runs start over
        shutil.rmtree(staging)
    from .manifest import guard_identity

    kwargs = {"text_column": run.options.text_column, "dedup": run.options.dedup, "sanitize": run.options.sanitize,
              "expect": guard_identity(guard, sanitize=run.options.sanitize),
              **scorer_kwargs}
    started_here = not ray.is_initialized()
    if started_here:
        ray.init(address=address, include_dashboard=False, log_to_driver=progress)
    try:
        ray.data.DataContext.get_current().enable_progress_bars = progress
        resources = ray.cluster_resources()
        gpus = gpus_per_worker if gpus_per_worker is not None else (1.0 if resources.get("GPU", 0) else 0.0)
        if workers is None:
            workers = int(resources.get("GPU", 0) // gpus) if gpus else int(resources.get("CPU", 1) // cpus_per_worker)
        specs = [{"item": dataclasses.asdict(s.item), "start": s.start, "stop": s.stop} for s in run.shards]
        ds = ray.data.from_items([{"shard": s.index} for s in run.shards], override_num_blocks=max(len(specs), 1))
        ds = ds.map_batches(read_shards, fn_kwargs={"shards": specs, "options": dataclasses.asdict(run.options)},
                            batch_size=1, batch_format="pyarrow")
        ds = ds.map_batches(GuardBatchScorer, fn_constructor_kwargs=kwargs, batch_size=run.options.shard_size,
                            batch_format="pyarrow", compute=ray.data.ActorPoolStrategy(size=max(1, workers)),
                            num_cpus=cpus_per_worker, num_gpus=gpus)
        ds.write_parquet(str(staging))
    except Exception as exc:  # a failed batch: reported, nothing marked done
        raise LatentGuardError(f"the Ray run failed, nothing was marked done ({_reason(exc)}); rerun to start over") \
            from None
    finally:
        if started_here:
            ray.shutdown()
    for item in run.inputs:  # changed after its rows were read: nothing is marked done
        try:
            item.ensure_unchanged()
        except LatentGuardError as exc:
            raise LatentGuardError(f"{exc}; nothing was marked done") from None
    parts = run.directory / PARTS
    if not staging.exists():
        staging.mkdir()  # no rows at all: Ray wrote nothing
    os.replace(staging, parts)  # one rename: the parts appear whole or not at all
    fsync_dir(run.directory)
    return _summary(run, _mark(run), time.monotonic() - started, scored_now=True)


def _finished(run: Run) -> dict | None:
    """The Ray marker when the run is complete; a ``parts`` folder without one is a finished pipeline
    whose marker was not yet written (the rename comes first), so it is marked now."""
    marker = run.directory / DONE_DIR / RAY_MARKER
    if marker.exists():
        record = json.loads(marker.read_text(encoding="utf-8"))
        for name, digest in record["files"].items():
            path = run.directory / PARTS / name
            if not path.is_file() or sha256_of(path) != digest:
                raise LatentGuardError(f"{path} is missing or changed since the Ray run wrote it; choose another "
                                       "--output")
        return record
    return _mark(run) if (run.directory / PARTS).is_dir() else None


def _mark(run: Run) -> dict:
    """Count the written rows (a streaming pass over a few columns) and write the Ray marker."""
    import pyarrow.parquet as pq

    cats = list(category_columns_of(run))
    stats = {"rows": 0, "flagged": 0, "truncated": 0, "refused": 0}
    concepts, categories, files = Counter(), Counter(), {}
    for path in sorted((run.directory / PARTS).glob("*.parquet")):
        files[path.name] = sha256_of(path)
        for batch in pq.ParquetFile(path).iter_batches(columns=["unsafe", "concept", "truncated", "refused",
                                                                      *cats]):
            unsafe = batch.column("unsafe").to_numpy(zero_copy_only=False)
            stats["rows"] += batch.num_rows
            stats["flagged"] += int(unsafe.sum())
            stats["truncated"] += int(batch.column("truncated").to_numpy(zero_copy_only=False).sum())
            stats["refused"] += batch.num_rows - batch.column("refused").null_count
            concept = batch.column("concept").to_numpy(zero_copy_only=False)
            concepts.update(c for c in concept[unsafe].tolist() if c is not None)  # None: a refused row
            for name in cats:
                categories[name[len(CATEGORY_PREFIX):]] += int(batch.column(name).to_numpy(zero_copy_only=False).sum())
    record = {**stats, "concepts": dict(concepts), "categories": dict(categories), "files": files}
    atomic_write_text(run.directory / DONE_DIR / RAY_MARKER, json.dumps(record, sort_keys=True) + "\n")
    return record


def category_columns_of(run: Run) -> list[str]:
    return [c for c in run.columns if c.startswith(CATEGORY_PREFIX)]


def _summary(run: Run, record: dict, seconds: float, scored_now: bool) -> dict:
    summary = {"directory": str(run.directory), "engine": "ray", "complete": True, "rows": record["rows"],
               "distinct": None, "dedup": f"per batch of {run.options.shard_size} rows" if run.options.dedup else None,
               "flagged": record["flagged"], "truncated": record["truncated"], "refused": record.get("refused", 0),
               "top_concepts": Counter(record["concepts"]).most_common(10), "categories": record["categories"],
               "files": len(record["files"]), "shards_total": len(run.shards), "shards": len(run.shards),
               "shards_scored_now": len(run.shards) if scored_now else 0, "seconds_now": round(seconds, 3)}
    atomic_write_text(run.directory / SUMMARY, json.dumps(summary, indent=1, ensure_ascii=False) + "\n")
    return summary


def _reason(exc: BaseException) -> str:
    """The innermost message of a Ray error chain: a worker's LatentGuardError reads as itself."""
    seen, found = set(), exc
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, LatentGuardError):
            return str(exc)
        found = exc
        exc = exc.__cause__ or getattr(exc, "cause", None)
    text = str(found).strip().splitlines()
    guard_line = [line for line in text if "LatentGuardError" in line]
    return (guard_line[-1] if guard_line else text[-1] if text else type(found).__name__).strip()

