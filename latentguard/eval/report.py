"""Report writers: Table 1 in Markdown beside the paper's numbers, console tables, JSON and CSV files, plots."""
from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from ..csv_files import report_writer
from ..io import atomic_path, atomic_write_text
from ..published import METHOD_NAMES, PUBLISHED_TABLE1
from .run import LATENT_GUARD, METHOD_ORDER, Evaluation, json_safe
from .table1 import DOMAINS, KINDS, Condition


# ------------------------------------------------------------------------------------- tables
def fmt(value: Any, signed: bool = False) -> str:
    """A metric as the tables print it (three decimals; ``-`` for a missing or non-finite value, never ``nan``)."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    return f"{value:+.3f}" if signed else f"{value:.3f}"


def _ours(results: Mapping[str, Any], key: str) -> Mapping[str, Any] | None:
    return results if key == LATENT_GUARD else results.get("baselines", {}).get(key)


def table1_markdown(results: Mapping[str, Any], metric: str) -> str:
    """Our Table 1 rows for ``metric`` ("accuracy" or "auc") beside the paper's, with differences."""
    columns = [(d, k) for d in DOMAINS for k in KINDS]
    lines = ["| method | " + " | ".join(f"{d} {k}" for d, k in columns) + " |",
             "|---|" + "---:|" * len(columns)]
    for key in ("text_blacklist", "clipscore", "bertscore", "llm", LATENT_GUARD):
        ours = _ours(results, key)
        paper = PUBLISHED_TABLE1.get(key, {}).get(metric)
        if ours is None and paper is None:
            continue
        name = METHOD_NAMES.get(key, key)
        mine = [ours.get(d, {}).get(k, {}).get(metric) if ours is not None else None for d, k in columns]
        theirs = [paper[d][k] if paper is not None else None for d, k in columns]
        if paper is None and all(v is None for v in mine):
            continue  # e.g. AUC of the Text Blacklist: neither we nor the paper have one
        if ours is not None:
            lines.append(f"| {name} (ours) | " + " | ".join(fmt(v) for v in mine) + " |")
        if paper is not None or ours is not None:
            lines.append(f"| {name} (paper) | " + " | ".join(fmt(v) for v in theirs) + " |")
        if ours is not None and paper is not None:
            diff = [m - t if m is not None and t is not None else None for m, t in zip(mine, theirs)]
            lines.append("| difference | " + " | ".join(fmt(v, signed=True) for v in diff) + " |")
    return "\n".join(lines)


def details_markdown(results: Mapping[str, Any]) -> str:
    """Every number of every condition, Latent Guard first, then the baselines."""
    head = ("| method | setting | n unsafe | n safe | AUC | accuracy | TPR | FPR | FPR@95%TPR | threshold |\n"
            "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    lines = [head]
    for key in (LATENT_GUARD, *METHOD_ORDER[:-1]):
        ours = _ours(results, key)
        if ours is None:
            continue
        for d in DOMAINS:
            for k in KINDS:
                m = ours.get(d, {}).get(k, {})
                if not m.get("available"):
                    lines.append(f"| {METHOD_NAMES.get(key, key)} | {d} {k} | not available: {m.get('reason', '')} "
                                 "| | | | | | | |")
                    continue
                lines.append(f"| {METHOD_NAMES.get(key, key)} | {d} {k} | {m['n_unsafe']} | {m['n_safe']} | "
                             f"{fmt(m['auc'])} | {fmt(m['accuracy'])} | {fmt(m['tpr'])} | {fmt(m['fpr'])} | "
                             f"{fmt(m['fpr_at_95tpr'])} | {fmt(ours.get('threshold'))} |")
    return "\n".join(lines)


def released_markdown(results: Mapping[str, Any]) -> str:
    columns = [(d, k) for d in DOMAINS for k in KINDS]
    values = [results.get(d, {}).get(k, {}).get("released_threshold_accuracy") for d, k in columns]
    return ("| threshold | " + " | ".join(f"{d} {k}" for d, k in columns) + " |\n|---|" + "---:|" * len(columns) +
            f"\n| {results['released_threshold']} (released inference) | " + " | ".join(fmt(v) for v in values) + " |")


def results_markdown(results: Mapping[str, Any], meta: Mapping[str, Any]) -> str:
    """The whole results.md: provenance, Table 1 (accuracy, AUC) against the paper, details."""
    parts = ["# Latent Guard evaluation on CoPro (Table 1)", ""]
    for name, value in meta.items():
        if name != "skipped":
            parts.append(f"- {name}: `{value}`")
    for split, source in results.get("validation", {}).get("sources", {}).items():
        parts.append(f"- {split}: {source}")
    parts += [f"- threshold: **{results['threshold']:.4f}** ({results['threshold_source']})",
              "- baseline thresholds: " + (", ".join(f"{METHOD_NAMES[k]} {fmt(v.get('threshold'))} "
                                                     f"({v['threshold_source']})"
                                                      for k, v in results.get("baselines", {}).items()) or "none run"),
              ""]
    for reason in (meta.get("skipped") or {}).values():
        parts.append(f"- {reason}")
    parts += ["## Accuracy", "", table1_markdown(results, "accuracy"), "",
              "## ROC AUC", "", table1_markdown(results, "auc"), "",
              "## Latent Guard at the released inference threshold (accuracy)", "", released_markdown(results), "",
              "## All numbers", "", details_markdown(results), ""]
    timing = results.get("timing", {})
    if timing.get("prompts_scored"):
        parts.append(f"Scoring: {timing['prompts_scored']} distinct prompts in {timing['seconds']:.2f} s "
                     f"({timing['ms_per_prompt']:.3f} ms per prompt, all concepts, encoder excluded).")
    return "\n".join(parts) + "\n"


def console_tables(results: Mapping[str, Any]) -> str:
    return (f"threshold {results['threshold']:.4f} ({results['threshold_source']})\n\nAccuracy\n"
            + table1_markdown(results, "accuracy") + "\n\nROC AUC\n" + table1_markdown(results, "auc"))


# ------------------------------------------------------------------------------------- writers
def write_scores_csv(path: str | Path, prompts: Sequence[str], labels: np.ndarray, scores: np.ndarray,
                     best: np.ndarray, concepts: Sequence[str], condition: Condition | None = None) -> Path:
    """Per-prompt scores, atomically.

    Without ``condition``: ``prompt, concept, label, score`` (concept = the best-matching one). With a
    CoPro ``condition``, the columns of the released per-prompt dumps come first, so the two join row
    by row on (domain, setting, label, unsafe_prompt, safe_prompt, concept): ``domain, setting,
    label, unsafe_prompt, safe_prompt, concept`` (the entry's own, unvaried), then ``prompt`` (the
    text scored: the variant for synonym/adversarial unsafe rows), ``score`` (fp32, 8 digits) and
    ``best_concept``.
    """
    path = Path(path)
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8", newline="") as handle:
            if condition is None:  # a user's prompts (test.py --external): a cell that starts like a formula is text
                writer = report_writer(handle)
                writer.writerow(["prompt", "concept", "label", "score"])
                for prompt, label, score, index in zip(prompts, labels, scores, best):
                    writer.writerow([prompt, concepts[index] if index >= 0 else "", int(label), f"{float(score):.6g}"])
                return path
            # CoPro's own texts byte for byte, so the rows join with the released per-prompt dumps on them
            writer = csv.writer(handle)
            writer.writerow(["domain", "setting", "label", "unsafe_prompt", "safe_prompt", "concept", "prompt",
                             "score", "best_concept"])
            n = len(condition.pairs)
            for row, (prompt, label, score, index) in enumerate(zip(prompts, labels, scores, best)):
                pair = condition.pairs[row % n]
                writer.writerow([condition.domain, condition.kind, int(label), pair.unsafe_prompt, pair.safe_prompt,
                                 pair.concept, prompt, f"{float(score):.8g}", concepts[index] if index >= 0 else ""])
    return path


def write_outputs(evaluation: Evaluation, output_dir: str | Path, meta: Mapping[str, Any],
                  plots: bool = True) -> list[Path]:
    """results.json, results.md, per-condition score CSVs and (unless ``plots`` is False) the figures."""
    output_dir = Path(output_dir)
    results = dict(evaluation.results)
    results["meta"] = json_safe(dict(meta))
    written = []
    target = output_dir / "results.json"
    atomic_write_text(target, json.dumps(results, indent=2) + "\n")
    written.append(target)
    target = output_dir / "results.md"
    atomic_write_text(target, results_markdown(evaluation.results, meta))
    written.append(target)
    curves = {}
    for key, method in evaluation.methods.items():
        for (domain, kind), condition in evaluation.test.items():
            if not condition.available:
                continue
            scores, best = method.condition_scores(condition)
            prefix = "scores" if key == LATENT_GUARD else f"scores_{key}"
            written.append(write_scores_csv(output_dir / f"{prefix}_{domain}_{kind}.csv", condition.prompts,
                                            condition.labels, scores, best, evaluation.concepts[domain], condition))
            if key == LATENT_GUARD:
                curves[(domain, kind)] = (condition.labels, scores)
    if plots:
        from .plots import plot_histograms, plot_roc

        threshold = evaluation.thresholds[LATENT_GUARD]
        domains = [d for d in DOMAINS if any(dom == d for dom, _ in curves)] or list(DOMAINS)
        written.append(plot_roc(curves, threshold, output_dir / "roc.png", domains=domains))
        written.append(plot_histograms(curves, threshold, output_dir / "score_hist.png", domains=domains))
    return written
