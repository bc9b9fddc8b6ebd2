"""``latentguard score``: score a corpus (millions of prompts) into resumable shards, on one machine or Ray.

    latentguard score 'diffusiondb/*.parquet' --text-column prompt --id-column image_name --output runs/ddb
    latentguard score prompts.txt --output runs/scored --engine ray --address auto

All the logic lives in :mod:`latentguard.bulk`; this file parses flags and prints the summary.
"""
from __future__ import annotations

import argparse
import sys

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

B = SCHEMA.bulk


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="latentguard score",
        description="Score a corpus of prompts with Latent Guard, streaming: each distinct text scored once, every "
                    "row kept, shards written atomically with done markers, so the same command resumes after a "
                    "crash and a rerun with another guard or options is refused. Output columns: input, row, "
                    "[id], the text, score, unsafe, concept, truncated, refused (+ category_<name> for a grouped "
                    "blacklist; + sanitized, removed, passes with --sanitize).",
        epilog="Read the result with pandas.read_parquet(DIR) or pyarrow.dataset.dataset(DIR) (files starting with _ "
               "are the run's records). Details and figures: docs/bulk.md.",
        parents=[common_parser(store_dir=False), guard_parser()])
    parser.add_argument("inputs", nargs="+", metavar="INPUT",
                        help=".txt (one prompt per line), .jsonl, .csv or .parquet files, or globs ('data/*.parquet')")
    parser.add_argument("--output", "--output-dir", dest="output", required=True, metavar="DIR",
                        help="output directory: new, empty, or holding this same run (which is then resumed)")
    flags = parser.add_argument_group("corpus flags (each overrides one config key)")
    flags.add_argument("--text-column", default=None, metavar="NAME",
                       help=f"column holding the prompts in .jsonl/.csv/.parquet inputs, and its name in the output "
                            f"(default: bulk.text_column = {B.text_column})")
    flags.add_argument("--id-column", default=None, metavar="NAME",
                       help="a column copied to the output as text beside input and row (e.g. image_name)")
    flags.add_argument("--format", default=None, choices=["parquet", "jsonl"],
                       help=f"shard format (default: bulk.format = {B.format})")
    flags.add_argument("--shard-size", type=int, default=None, metavar="N",
                       help=f"input rows per shard (default: bulk.shard_size = {B.shard_size}); memory grows with it")
    flags.add_argument("--no-dedup", dest="dedup", action="store_false", default=None,
                       help="score every row, repeats included (default: each distinct text once)")
    flags.add_argument("--sanitize", action="store_true", default=None,
                       help="also the columns sanitized, removed and passes: each flagged text edited until the guard "
                            "passes it (docs/sanitize.md; use a sanitized text only where passes is true); part of "
                            "the run's identity, so a resume never mixes shards with and without it")
    flags.add_argument("--no-progress", action="store_true", help="no progress bar")
    ray = parser.add_argument_group("engine flags")
    ray.add_argument("--engine", default=None, choices=["local", "ray"],
                     help=f"local: this process, resumable shard by shard; ray: Ray Data actors (default: bulk.engine "
                          f"= {B.engine})")
    ray.add_argument("--address", default=None, metavar="ADDR",
                     help="ray: an existing cluster (auto, or ray://host:10001); default: start a local instance")
    ray.add_argument("--workers", type=int, default=None, metavar="N",
                     help="ray: scoring actors, each loading the guard once (default: one per GPU, else one per "
                          "--cpus-per-worker CPUs)")
    ray.add_argument("--cpus-per-worker", type=float, default=None, metavar="C",
                     help=f"ray: CPUs each actor reserves (default: bulk.cpus_per_worker = {B.cpus_per_worker})")
    ray.add_argument("--gpus-per-worker", type=float, default=None, metavar="G",
                     help="ray: GPUs each actor reserves (default: 1 when the cluster has GPUs, else 0)")
    return parser


def bulk_overrides(args: argparse.Namespace) -> dict:
    return {"bulk.text_column": args.text_column, "bulk.id_column": args.id_column, "bulk.format": args.format,
            "bulk.shard_size": args.shard_size, "bulk.dedup": args.dedup, "bulk.sanitize": args.sanitize,
            "bulk.engine": args.engine,
            "bulk.address": args.address, "bulk.workers": args.workers, "bulk.cpus_per_worker": args.cpus_per_worker,
            "bulk.gpus_per_worker": args.gpus_per_worker}


def render_summary(summary: dict, resumed: bool) -> str:
    """The closing summary: rows, distinct, flagged, truncated, top concepts, categories."""
    rows = summary["rows"]

    def share(n: int) -> str:
        return f"{n:,} ({100 * n / rows:.2f}%)" if rows else f"{n:,}"

    done_before = summary["shards"] - summary["shards_scored_now"]
    lines = [f"{rows:,} rows in {summary['shards']} shard(s) -> {summary['directory']}"
             + (f" ({done_before} shard(s) were already done)" if resumed and done_before else "")]
    if summary.get("distinct") is not None:
        lines.append(f"  distinct texts scored: {share(summary['distinct'])}")
    elif summary.get("dedup"):
        lines.append(f"  deduplicated {summary['dedup']}")
    lines.append(f"  flagged unsafe:        {share(summary['flagged'])}")
    lines.append(f"  truncated at 77 tokens: {share(summary['truncated'])}"
                 + (" (--long-prompts scores them whole)" if summary["truncated"] else ""))
    if summary.get("refused"):
        lines.append(f"  refused, unreadable:   {share(summary['refused'])} (written as unsafe; column 'refused' "
                     "says why)")
    if summary["top_concepts"]:
        lines.append("  top concepts: " + ", ".join(f"{c} {n:,}" for c, n in summary["top_concepts"]))
    if summary["categories"]:
        lines.append("  categories:   " + ", ".join(f"{c} {n:,}" for c, n in summary["categories"].items()))
    return "\n".join(lines)


@cli_entry(on_interrupt=RESUMABLE)
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from ..bulk import BulkOptions, open_run, plan_run
    from ..bulk.manifest import MANIFEST
    from .rundir import claim_run_dir

    overrides = guard_overrides(args)
    cfg = load_command_config(args, {**overrides, **bulk_overrides(args)})
    options = BulkOptions.from_config(cfg)
    planned = plan_run(args.inputs, args.output, options)  # bad inputs or directory: refused before the model loads
    claim_run_dir(args.output, "latentguard score",  # a score run recorded before run manifests: its _manifest
                  previous_run=lambda d: (d / MANIFEST).is_file())
    guard = build_guard(cfg)
    run = open_run(planned, guard, cfg.bulk.engine, device=str(guard.device))
    progress = not args.no_progress
    if cfg.bulk.engine == "ray":
        from ..bulk.ray_engine import run_ray

        summary = run_ray(run, guard, {"config": cfg}, address=cfg.bulk.address, workers=cfg.bulk.workers,
                          cpus_per_worker=cfg.bulk.cpus_per_worker, gpus_per_worker=cfg.bulk.gpus_per_worker,
                          progress=progress)
    else:
        from ..bulk.local import run_local

        summary = run_local(run, guard, progress=progress)
    print(render_summary(summary, run.resumed))
    return 0


if __name__ == "__main__":
    sys.exit(main())
