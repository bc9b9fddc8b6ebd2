"""A benchmark run, start to finish: obtain and check the sets, score them (resumably) or read a score
file, then write the per-prompt CSVs, ``benchmark.json``, ``benchmark.md`` and ``roc.png``.

The command line (:mod:`latentguard.cli.benchmark`) builds the guard and calls :func:`run_guard`, or
:func:`run_score_file` for ``--scores`` (scores computed elsewhere, e.g. by the released model).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from ...errors import LatentGuardError
from ...io import sha256_of
from ..run import LATENT_GUARD
from .fetch import Located, Unavailable, locate
from .loaders import ContentMismatch, LoadedSet, load_set, read_columns
from .registry import SCORE_FILES, PromptSet, ScoreFile
from .scorers import MethodOutput
from .tables import Scored, build_tables

RESOURCES = Path(__file__).resolve().parents[2] / "resources"
COMMAND = "latentguard benchmark"


def obtain(specs: Sequence[PromptSet], overrides: dict[str, str], *, required: set[str], max_prompts: int | None = None,
           seed: int = 0, log: Callable[[str], None] = print,
           text_columns: dict[str, str] | None = None) -> tuple[dict[str, LoadedSet], dict[str, str]]:
    """Locate, check and load every set; a set that cannot be had here is skipped with its one line, unless
    it is ``required`` (named on the command line, or a benign reference): then that line is the error.
    ``text_columns`` (``--text-column``): the prompt column of a local (``--set``) file, by set name."""
    loaded, skipped = {}, {}
    for spec in specs:
        try:
            located = locate(spec, overrides.get(spec.name))
        except Unavailable as exc:
            if spec.name in required:
                raise
            skipped[spec.name] = str(exc)
            log(f"skipped {exc}")
            continue
        column = (text_columns or {}).get(spec.name) if spec.name in overrides else None
        loaded[spec.name] = _load(spec, located, max_prompts, seed, column)
        info = loaded[spec.name].info
        layout = f"; read as {info['layout']}" if info.get("layout") else ""
        log(f"{spec.name}: {info['rows']:,} prompts ({len(loaded[spec.name].texts):,} distinct) from {located.path}"
            f" [{located.origin}]{layout}{'; note: ' + info['note'] if info.get('note') else ''}")
    return loaded, skipped


def _load(spec: PromptSet, located: Located, max_prompts: int | None, seed: int,
          text_column: str | None = None) -> LoadedSet:
    try:
        data = load_set(spec, located.path, downloaded=located.downloaded, max_prompts=max_prompts, seed=seed,
                        text_column=text_column)
    except ContentMismatch as exc:
        if spec.source.kind == "url" and located.origin in ("cache", "download"):
            from ...io import move_aside

            aside = move_aside(located.path)  # our own download: set aside, never used, never deleted
            raise LatentGuardError(f"{exc} (set aside as {aside}); pass --set {spec.name}=PATH to use a file "
                                   "of your own") from None
        raise LatentGuardError(f"{exc}; pass --set {spec.name}=PATH to use a file of your own") from None
    data.info.update(located.provenance, origin=located.origin, sha256=sha256_of(located.path),
                     license=spec.license, redistributable=spec.redistributable)
    return data


def guard_settings(guard, *, baselines: Sequence[str], blacklist_match: str, max_prompts: int | None,
                   seed: int) -> dict[str, Any]:
    """Everything a benchmark score or decision depends on (batch size and device do not count): the guard's
    one identity (:func:`latentguard.guard.identity.guard_identity`: weights SHA-256 of a checkpoint or a
    bundle, encoder, blacklist, threshold, text defences, the code that judges), the baselines and the sampling."""
    from ...guard.identity import guard_identity

    return {"mode": "guard", **guard_identity(guard), "baselines": list(baselines),
            "blacklist_match": blacklist_match if "text_blacklist" in baselines else None,
            "max_prompts": max_prompts, "seed": seed if max_prompts else None}


def run_guard(guard, loaded: dict[str, LoadedSet], references: Sequence[str], methods: Sequence, state,
              output_dir: str | Path, meta: dict[str, Any], *, progress: bool = True, plots: bool = True,
              log: Callable[[str], None] = print) -> tuple[dict[str, Any], list[Path]]:
    """Score every set with every method (finished sets and chunks are read back), then write everything."""
    keys = [m.key for m in methods]
    scored = {}
    for name, data in loaded.items():
        outputs = state.finished(name, data.texts, keys)
        if outputs is not None:
            log(f"{name}: finished earlier with these settings; read back (--force rescores it)")
        else:
            outputs = state.score(name, data.texts, methods, data.info, progress=progress)
        scored[name] = Scored(data, outputs)
    return write_all(scored, references, methods, output_dir, meta, guard.concepts, plots=plots)


def write_all(scored: dict[str, Scored], references: Sequence[str], methods: Sequence, output_dir: str | Path,
              meta: dict[str, Any], concepts: Sequence[str], *,
              plots: bool = True) -> tuple[dict[str, Any], list[Path]]:
    from .report import benchmark_markdown, plot_benchmark_roc, write_json, write_prompt_csv

    output_dir = Path(output_dir)
    written = [write_prompt_csv(output_dir / f"scores_{name}.csv", s, concepts) for name, s in scored.items()]
    results = build_tables(scored, references, methods)
    if meta.get("mode") == "guard":
        from .released import released_beside

        results["released_beside"] = released_beside(scored, references)
    meta = {**meta, "sets": {name: s.data.info for name, s in scored.items()}}
    written.append(write_json(output_dir / "benchmark.json", results, meta))
    from ...io import atomic_write_text

    atomic_write_text(output_dir / "benchmark.md", benchmark_markdown(results, meta))
    written.append(output_dir / "benchmark.md")
    if plots:
        label = f"threshold {meta['threshold']:.4g}"
        written.append(plot_benchmark_roc(scored, references, output_dir / "roc.png", label))
    return results, written


# ---------------------------------------------------------------------------------- score files
class _FileMethod:
    """The scores of a file, as a method (graded; its decisions are ``score >= threshold``)."""

    key, graded = LATENT_GUARD, True


def score_file_spec(value: str) -> tuple[Path, ScoreFile | None]:
    """``--scores NAME`` (a shipped file) or ``--scores PATH``."""
    if value in SCORE_FILES:
        return RESOURCES / SCORE_FILES[value].resource, SCORE_FILES[value]
    path = Path(value).expanduser()
    if not path.is_file():
        raise LatentGuardError(f"--scores {value}: no such file (or a shipped name: {', '.join(SCORE_FILES)})")
    return path, None


def read_score_file(path: Path, *, text: str, score: str, label: str, threshold: float,
                    unsafe_name: str, benign_name: str) -> dict[str, Scored]:
    """A file of ``text, score, label`` rows -> its unsafe rows and its benign rows as two scored sets
    (decisions: ``score >= threshold``, via :func:`latentguard.decision.rule.flags`)."""
    from ...decision.rule import flags
    from .loaders import parse_label

    header, cols = read_columns(path, [text, score, label], text)
    missing = [c for c in (text, score, label) if c not in cols]
    if missing:
        raise LatentGuardError(f"{path}: no column {', '.join(repr(m) for m in missing)} (columns: "
                               f"{', '.join(header)}); name them with --text-column/--score-column/--label-column")
    values = np.empty(len(cols[text]))
    for i, raw in enumerate(cols[score]):
        try:
            values[i] = float(raw)
        except (TypeError, ValueError):
            values[i] = np.nan
        if not np.isfinite(values[i]):
            raise LatentGuardError(f"{path}: row {i + 1}: score {raw!r} is not a finite number; a missing score "
                                   "never counts as safe")
    labels = np.array([parse_label(v, path, i + 1, label) for i, v in enumerate(cols[label])], dtype=np.int8)
    info = {"file": str(path), "sha256": sha256_of(path), "rows_in_file": int(labels.size)}
    out = {}
    for name, lab in ((unsafe_name, 1), (benign_name, 0)):
        index = np.flatnonzero(labels == lab)
        if index.size == 0:
            raise LatentGuardError(f"{path}: no rows with {label} = {lab}; a score file needs unsafe and benign rows")
        texts = [str(cols[text][i]).strip() for i in index]
        data = LoadedSet(name, None, texts, np.arange(index.size), np.full(index.size, lab, np.int8), None,
                         {**info, "rows": int(index.size), "label": lab})
        s = values[index]
        out[name] = Scored(data, {LATENT_GUARD: MethodOutput(s, flags(s, threshold), np.full(index.size, -1))})
    return out


def load_score_file(value: str, *, threshold: float, threshold_origin: str,
                    columns: dict[str, str | None]) -> tuple[dict[str, Scored], dict[str, Any]]:
    """``--scores``: a score file read and checked as two scored sets (no guard, no scoring), and its meta."""
    path, shipped = score_file_spec(value)
    text = columns.get("text") or (shipped.text if shipped else "prompt")
    score = columns.get("score") or (shipped.score if shipped else "prediction")
    label = columns.get("label") or (shipped.label if shipped else "target")
    unsafe_name = shipped.unsafe_name if shipped else f"{path.stem}-unsafe"
    benign_name = shipped.benign_name if shipped else f"{path.stem}-benign"
    scored = read_score_file(path, text=text, score=score, label=label, threshold=threshold,
                             unsafe_name=unsafe_name, benign_name=benign_name)
    meta = {"mode": "scores", "scores_file": str(path), "model": shipped.model if shipped else None,
            "threshold": threshold, "threshold_origin": threshold_origin, "methods": [LATENT_GUARD],
            "reference": benign_name}
    return scored, meta


def write_score_file(scored: dict[str, Scored], meta: dict[str, Any], output_dir: str | Path, *,
                     plots: bool = True) -> tuple[dict[str, Any], list[Path]]:
    return write_all(scored, [meta["reference"]], [_FileMethod()], output_dir, meta, [], plots=plots)
