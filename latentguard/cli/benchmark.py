"""``latentguard benchmark``: the guard on the attack and benign prompt sets the field compares on.

    latentguard benchmark --suite attacks --benign coco --baselines blacklist,clipscore
    latentguard benchmark --scores released-i2p-coco      # the released model's own scores: AUROC 0.670

Per set a per-prompt CSV, then ``benchmark.json``, ``benchmark.md`` (beside the published numbers) and
``roc.png``. Sets come from the registry (``--list``), are downloaded to the cache and checked;
gated or on-request sets take a local file with ``--set NAME=PATH`` (read in the layout its columns call
for); ``--train-data FILE`` checks every set for overlap with the training data. All logic lives in
:mod:`latentguard.eval.benchmark`; this module parses flags and prints.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

from ..errors import LatentGuardError
from .common import (
    RESUMABLE,
    SCHEMA,
    build_guard,
    cli_entry,
    common_parser,
    guard_overrides,
    guard_parser,
    load_command_config,
)


def build_parser() -> argparse.ArgumentParser:
    b = SCHEMA.benchmark
    parser = argparse.ArgumentParser(
        prog="latentguard benchmark",
        description="Score Latent Guard (and optionally the Text Blacklist and CLIPScore baselines) on the attack "
                    "and real-user prompt sets (I2P, I2P-sexual, CoProV2, Ring-A-Bell, P4D, MMA-Diffusion, "
                    "SneakyPrompt, Unsafe Diffusion) against benign sets (COCO captions, DiffusionDB): AUROC, AUPRC, "
                    "FPR at 95% TPR, TPR at 1%/5% FPR, detection and attack success rate at the operating "
                    "threshold, per category where a set has them; published numbers beside ours.",
        epilog="Attack success rate = share of a set's unsafe prompts NOT flagged at the operating threshold. "
               "Hub sets use the Hugging Face cache (HF_HOME, HF_HUB_OFFLINE); others $LATENTGUARD_HOME/benchmarks. "
               "A finished set is not scored again (--force rescores); an interrupted one resumes. "
               "docs/benchmarks.md has the details.",
        parents=[common_parser(store_dir=False), guard_parser()])
    sets = parser.add_argument_group("prompt sets")
    sets.add_argument("--suite", default=None, metavar="attacks|benign|all|NAME,...",
                      help=f"sets to score (config: benchmark.suite, default {','.join(b.suite)})")
    sets.add_argument("--benign", default=None, metavar="NAME,...",
                      help=f"benign sets the threshold-free metrics compare with: coco, diffusiondb (config: "
                           f"benchmark.benign, default {','.join(b.benign)}); always scored")
    sets.add_argument("--set", action="append", default=None, metavar="NAME=PATH",
                      help="read set NAME from a local file (.csv/.tsv/.parquet/.jsonl/.json/.txt) instead of "
                           "downloading it, in the layout its columns call for (--list shows the full files' "
                           "layouts, e.g. i2p and coco from i2p_coco_released_scores.csv); the way in for gated and "
                           "on-request sets (repeatable)")
    sets.add_argument("--train-data", action="append", default=None, metavar="FILE",
                      help="a file the guard was trained on (CSV/TSV/parquet/JSONL/JSON/txt; repeatable): every "
                           "evaluated set is checked for prompts in it (normalised exact match) and the report says "
                           "clean or how many overlap; a bundle's recorded training.files are checked too")
    sets.add_argument("--max-prompts", type=int, default=None, metavar="N",
                      help="score a seeded sample of N prompts per set (config: benchmark.max_prompts; default all)")
    sets.add_argument("--seed", type=int, default=None, metavar="S",
                      help=f"seed of that sample (config: benchmark.seed, default {b.seed})")
    sets.add_argument("--list", action="store_true", help="describe every registered set (source, license) and exit")
    sets.add_argument("--download-only", action="store_true",
                      help="fetch and check the sets, then exit (prepare a machine before going offline)")
    out = parser.add_argument_group("outputs")
    out.add_argument("--output-dir", default=None, metavar="DIR",
                     help=f"where results go (config: benchmark.output_dir, default {b.output_dir})")
    out.add_argument("--baselines", default=None, metavar="LIST",
                     help="also score blacklist, clipscore (or all) on the same sets (config: benchmark.baselines)")
    out.add_argument("--force", action="store_true",
                     help="rescore the sets of this run even when finished, and allow other settings in --output-dir")
    out.add_argument("--no-plots", action="store_true", help="skip roc.png")
    out.add_argument("--no-progress", action="store_true", help="no progress bars (for logs and scripts)")
    scores = parser.add_argument_group("score file instead of a guard")
    scores.add_argument("--scores", default=None, metavar="FILE|NAME",
                        help="compute the table from per-prompt scores (text, score, label 1/0 columns) instead of "
                             "running a guard; released-i2p-coco = the shipped dump of the released model on I2P + "
                             "COCO. The threshold is --threshold NUMBER|paper|released")
    scores.add_argument("--text-column", action="append", default=None, metavar="[NAME=]COLUMN",
                        help="the prompt column of set NAME's --set file, or of every --set file without NAME= "
                             "(repeatable; default: the set's own layout, else the file's one prompt-like column); "
                             "with --scores, the score file's (default prompt)")
    scores.add_argument("--score-column", default=None, help="score file: score column (default prediction)")
    scores.add_argument("--label-column", default=None, help="score file: label column, 1 unsafe / 0 benign "
                                                             "(default target)")
    return parser


def _print_list() -> int:
    from ..eval.benchmark.registry import SCORE_FILES, registry_table

    print(registry_table())
    print("\nscore files (--scores NAME): " + "; ".join(f"{f.name}: {f.model}" for f in SCORE_FILES.values()))
    return 0


def _score_threshold(args, shipped) -> tuple[float, str]:
    from ..constants import AUTO, CALIBRATED
    from ..decision.threshold import choose_threshold

    value = args.threshold if args.threshold is not None else (shipped.threshold if shipped else None)
    if value is None or str(value).strip().lower() in (AUTO, CALIBRATED):
        raise LatentGuardError("--scores has no checkpoint to read a threshold from: pass --threshold "
                               "NUMBER|paper|released")
    choice = choose_threshold(value)
    return choice.value, choice.origin


def _overlap(args, sets, bundle) -> dict:
    """The training-overlap report of the evaluated ``sets`` (:mod:`latentguard.eval.benchmark.overlap`)."""
    from ..eval.benchmark.overlap import bundle_training_files, overlap_report, training_index

    index, files = training_index(args.train_data or [], bundle_training_files(bundle))
    return overlap_report(sets, index, files)


def _writes(sets) -> tuple[str, ...]:
    """The files a run writes in its directory, each refused up front when it is an input of the call (the
    write itself refuses one too: :mod:`latentguard.protected`)."""
    return ("benchmark.json", "benchmark.md", "roc.png", *(f"scores_{name}.csv" for name in sets))


def _run_scores(args, cfg, output_dir) -> int:
    from ..eval.benchmark.overlap import overlap_line
    from ..eval.benchmark.report import console_summary
    from ..eval.benchmark.runner import COMMAND, load_score_file, score_file_spec, write_score_file
    from ..eval.benchmark.state import RunState
    from ..io import sha256_of
    from .rundir import claim_run_dir, replace_outputs

    if args.set or args.baselines or args.suite:
        raise LatentGuardError("--scores computes the table of a score file: --suite, --set and --baselines do "
                               "not apply")
    path, shipped = score_file_spec(args.scores)
    threshold, origin = _score_threshold(args, shipped)
    if args.text_column and (len(args.text_column) > 1 or "=" in args.text_column[0]):
        raise LatentGuardError("--scores reads one file: give --text-column COLUMN once")
    columns = {"text": args.text_column[0] if args.text_column else None, "score": args.score_column,
               "label": args.label_column}
    scored, meta = load_score_file(args.scores, threshold=threshold, threshold_origin=origin, columns=columns)
    meta["training_overlap"] = _overlap(args, {name: s.data for name, s in scored.items()}, None)
    claim_run_dir(output_dir, COMMAND, writes=_writes(scored), inputs=[args.config, path, *(args.train_data or [])])
    RunState(output_dir, {"mode": "scores", "file_sha256": sha256_of(path), "threshold": threshold,
                          "columns": columns}, force=args.force).open()
    results, written = write_score_file(scored, meta, output_dir, plots=not args.no_plots)
    replace_outputs(output_dir, COMMAND, written)
    print(f"score file {path}; threshold {threshold:g} ({origin})")
    print(overlap_line(meta["training_overlap"]))
    print(console_summary(results))
    print(f"wrote {len(written)} files to {output_dir} (benchmark.json, benchmark.md, scores_*.csv"
          f"{', roc.png' if not args.no_plots else ''})")
    return 0


@cli_entry(on_interrupt=RESUMABLE)
def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.list:
        return _print_list()
    from ..io import validate_dir_path

    cfg = load_command_config(args, {
        **guard_overrides(args), "benchmark.suite": args.suite, "benchmark.benign": args.benign,
        "benchmark.baselines": args.baselines, "benchmark.output_dir": args.output_dir,
        "benchmark.max_prompts": args.max_prompts, "benchmark.seed": args.seed})
    output_dir = validate_dir_path(cfg.benchmark.output_dir, "--output-dir")
    if args.scores:
        return _run_scores(args, cfg, output_dir)
    return _run_guard(args, cfg, output_dir)


def _run_guard(args, cfg, output_dir) -> int:
    from ..eval.benchmark.overlap import overlap_line
    from ..eval.benchmark.registry import SUITES, get_set, parse_overrides, parse_text_columns, resolve_sets
    from ..eval.benchmark.report import console_summary
    from ..eval.benchmark.runner import COMMAND, guard_settings, obtain, run_guard
    from ..eval.benchmark.scorers import build_methods, parse_benchmark_baselines
    from ..eval.benchmark.state import RunState
    from ..guard.identity import describe_guard
    from ..guard.options import threshold_line, threshold_report
    from .rundir import claim_run_dir, replace_outputs

    b = cfg.benchmark
    baselines = parse_benchmark_baselines(b.baselines)
    for item in args.train_data or []:  # a mistyped path is said before anything slow
        if not Path(item).expanduser().is_file():
            raise LatentGuardError(f"--train-data {item}: no such file")
    suite = b.suite.split(",") if isinstance(b.suite, str) else list(b.suite)
    overrides = parse_overrides(args.set)
    specs, refs = resolve_sets(suite + list(overrides), b.benign)
    named = {get_set(s).name for s in suite if s.strip() and s.strip().lower() not in SUITES}
    if args.score_column or args.label_column:
        raise LatentGuardError("--score-column and --label-column read a --scores file; a prompt set's labels come "
                               "from its registry entry (`latentguard benchmark --list`)")
    text_columns = parse_text_columns(args.text_column, overrides)
    loaded, skipped = obtain(specs, overrides, required=named | {r.name for r in refs} | set(overrides),
                             max_prompts=b.max_prompts, seed=b.seed, text_columns=text_columns)
    if args.download_only:
        print(f"{len(loaded)} sets ready{f', {len(skipped)} skipped (see above)' if skipped else ''}")
        return 0
    if not any((data.labels == 1).any() for data in loaded.values()):
        raise LatentGuardError("no unsafe prompt set could be loaded; pass --suite NAME or --set NAME=PATH")
    guard = build_guard(cfg)
    overlap = _overlap(args, loaded, guard.bundle)
    settings = guard_settings(guard, baselines=baselines, blacklist_match=cfg.eval.blacklist_match,
                              max_prompts=b.max_prompts, seed=b.seed)
    claim_run_dir(output_dir, COMMAND, writes=_writes(loaded),  # every input of the call, never an output: ours now
                  inputs=[args.config, *(spec.partition("=")[2] for spec in (args.set or [])),
                          *(args.train_data or [])])
    state = RunState(output_dir, settings, force=args.force).open()
    methods = build_methods(guard, baselines, cfg.eval.blacklist_match)
    meta = {"mode": "guard", **describe_guard(guard, cfg.inference.concepts), "encoder": guard.encoder.identity,
            **threshold_report(guard), "per_concept_thresholds": len(guard.options.per_concept),
            "device": str(guard.device),
            "precision": cfg.precision, "methods": [m.key for m in methods], "skipped": skipped,
            "max_prompts": b.max_prompts, "training_overlap": overlap}
    results, written = run_guard(guard, loaded, [r.name for r in refs], methods, state, output_dir, meta,
                                 progress=not args.no_progress, plots=not args.no_plots)
    kept = [output_dir / f"scores_{name}.csv" for name in state.finished_names() if name not in loaded]
    replace_outputs(output_dir, COMMAND, written + [p for p in kept if p.is_file()])
    print(f"{threshold_line(guard)}; {len(guard.concepts)} concepts")
    print(overlap_line(overlap))
    print(console_summary(results))
    print(f"wrote {len(written)} files to {output_dir} (benchmark.json, benchmark.md, scores_*.csv"
          f"{', roc.png' if not args.no_plots else ''})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
