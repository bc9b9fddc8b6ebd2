#!/usr/bin/env python
"""Aggregate the Table 1 results of several training seeds beside the published numbers.

Reads ``<run>/eval/results.json`` (written by ``test.py``) of every run directory given, and writes
``summary.json`` and ``summary.md`` to ``--output-dir``: mean +- standard deviation (sample, over
seeds) of AUC and accuracy in the six settings (ID/OOD x explicit/synonym/adversarial), next to
the paper's Latent Guard row (``latentguard.published``). The best validation AUC of each run is
taken from its ``train_log.jsonl`` when present.

Example:
  python scripts/aggregate_seeds.py runs/seed0 runs/seed1 runs/seed2 --output-dir runs/reproduce
"""
from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from latentguard.cli.common import cli_entry  # noqa: E402
from latentguard.errors import LatentGuardError  # noqa: E402
from latentguard.io import atomic_write_text  # noqa: E402
from latentguard.published import DOMAINS, KINDS, PUBLISHED_TABLE1  # noqa: E402

METRICS = ("auc", "accuracy")


def results_file(run: Path) -> Path:
    """``run`` may be a run directory, its eval directory, or a results.json itself."""
    for candidate in (run, run / "results.json", run / "eval" / "results.json"):
        if candidate.is_file():
            return candidate
    raise LatentGuardError(f"no results.json in {run} (expected {run / 'eval' / 'results.json'}; "
                           f"run test.py --checkpoint {run / 'model_parameters.pth'} --output-dir {run / 'eval'})")


def read_results(path: Path) -> dict[str, dict[str, dict[str, float | None]]]:
    """``{split: {setting: {metric: value}}}`` from one results.json, checked.

    A setting test.py marks unavailable (``"available": false``, e.g. no variants in the file) or a
    metric it could not compute (``null``) gives ``None``: left out of the mean, shown as n/a.
    """
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise LatentGuardError(f"{path}: cannot read results ({exc})") from None
    out: dict[str, dict[str, dict[str, float]]] = {}
    for split in DOMAINS:
        for setting in KINDS:
            node = raw.get(split, {}).get(setting) if isinstance(raw.get(split), dict) else None
            if not isinstance(node, dict):
                raise LatentGuardError(f"{path}: missing '{split}.{setting}' (expected test.py's results.json)")
            for metric in METRICS:
                value = node.get(metric) if node.get("available", True) else None
                if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
                    raise LatentGuardError(f"{path}: '{split}.{setting}.{metric}' must be a number, got {value!r}")
                out.setdefault(split, {}).setdefault(setting, {})[metric] = None if value is None else float(value)
    if "threshold" in raw:
        out["threshold"] = raw["threshold"]  # type: ignore[assignment]
    return out


def best_val_auc(run: Path) -> float | None:
    """The best validation AUC in a run's train_log.jsonl, if there is one."""
    log = run / "train_log.jsonl"
    if not log.is_file():
        return None
    best = None
    for line in log.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        value = record.get("val_auc")
        if isinstance(value, (int, float)) and not math.isnan(value):
            best = value if best is None else max(best, value)
    return best


def mean_std(values: list[float | None]) -> tuple[float | None, float | None]:
    """Mean and sample standard deviation of the available values (std 0 for one value)."""
    present = [v for v in values if v is not None and not math.isnan(v)]
    if not present:
        return None, None
    return statistics.fmean(present), (statistics.stdev(present) if len(present) > 1 else 0.0)


def aggregate(runs: list[Path]) -> dict[str, Any]:
    per_run = {str(run): read_results(results_file(run)) for run in runs}
    published = PUBLISHED_TABLE1["latent_guard"]
    table: dict[str, Any] = {}
    for split in DOMAINS:
        for setting in KINDS:
            row: dict[str, Any] = {}
            for metric in METRICS:
                values = [r[split][setting][metric] for r in per_run.values()]
                mean, std = mean_std(values)
                paper = published[metric][split][setting]
                row[metric] = {"mean": mean, "std": std, "values": values, "paper": paper,
                               "diff": None if mean is None else mean - paper}
            table[f"{split}/{setting}"] = row
    return {
        "runs": list(per_run),
        "n_seeds": len(per_run),
        "table1": table,
        "thresholds": {run: r.get("threshold") for run, r in per_run.items()},
        "best_val_auc": {str(run): best_val_auc(run) for run in runs},
    }


def to_markdown(summary: dict[str, Any]) -> str:
    n = summary["n_seeds"]
    lines = [
        f"# Latent Guard reproduction: Table 1 over {n} seed{'s' if n != 1 else ''}",
        "",
        "Mean +- sample standard deviation over seeds; paper = Liu et al., ECCV 2024, Table 1 (Latent Guard row).",
        "",
        "| split | setting | AUC (ours) | AUC (paper) | diff | accuracy (ours) | accuracy (paper) | diff |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for key, row in summary["table1"].items():
        split, setting = key.split("/")
        cells = []
        for metric in METRICS:
            m = row[metric]
            if m["mean"] is None:
                cells += ["n/a", f"{m['paper']:.3f}", "-"]
            else:
                cells += [f"{m['mean']:.3f} +- {m['std']:.3f}", f"{m['paper']:.3f}", f"{m['diff']:+.3f}"]
        lines.append(f"| {split} | {setting} | " + " | ".join(cells) + " |")
    lines += ["", "| run | threshold | best validation AUC |", "|---|---:|---:|"]
    for run in summary["runs"]:
        threshold = summary["thresholds"].get(run)
        val = summary["best_val_auc"].get(run)
        t = (f"{threshold:.4f}" if isinstance(threshold, (int, float))
             else ("-" if threshold is None else str(threshold)))
        lines.append(f"| {run} | {t} | {f'{val:.4f}' if val is not None else '-'} |")
    return "\n".join(lines) + "\n"


@cli_entry
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", type=Path, help="run directories (each with eval/results.json)")
    parser.add_argument("--output-dir", type=Path, default=Path("runs/reproduce"),
                        help="where summary.json and summary.md go (default: runs/reproduce)")
    args = parser.parse_args(argv)
    summary = aggregate(args.runs)
    markdown = to_markdown(summary)
    atomic_write_text(args.output_dir / "summary.json", json.dumps(summary, indent=2) + "\n")
    atomic_write_text(args.output_dir / "summary.md", markdown)
    print(markdown)
    print(f"wrote {args.output_dir / 'summary.md'} and {args.output_dir / 'summary.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
