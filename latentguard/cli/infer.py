"""Check prompts with Latent Guard: one prompt per line in, a verdict per prompt out.

Compatible with the released script (``--file_path``, ``--threshold``, and the final list of 0/1
labels), with the released weights and CoPro ID concepts downloaded on first use. All the logic
lives in :class:`latentguard.guard.LatentGuard`; this file only parses flags and prints.

    python inference.py --file_path prompts.txt --explain --output verdicts.csv
"""
from __future__ import annotations

import argparse
import io
import os
import sys
from pathlib import Path

from ..config import file_keys
from ..csv_files import report_writer
from ..errors import LatentGuardError
from ..io import jsonl_line
from .common import (
    SCHEMA,
    build_guard,
    cli_entry,
    common_parser,
    guard_overrides,
    guard_parser,
    load_command_config,
    visible,
)

ROOT = Path(__file__).resolve().parents[2]  # the repository (for the sample prompt file)
DEFAULT_PROMPTS = "dataset/unsafe_sample.txt"
OUTPUT_FORMATS = {".csv": "csv", ".jsonl": "jsonl"}
PROMPT_WIDTH = 60
# Files `latentguard score` reads by column: read line by line, a CSV header is a prompt, a quoted cell over
# two lines two prompts, and a JSONL record {"text": 5} a text (a hostile pass).
TABLE_SUFFIXES = (".csv", ".tsv", ".jsonl", ".json", ".parquet")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Flag unsafe text-to-image prompts with Latent Guard. Prints one row per prompt "
                    "(score = max logit over the concept blacklist; UNSAFE when a concept's logit reaches "
                    "the threshold), then the list of 0/1 labels (1 = unsafe) as the released script does.",
        epilog="Unset flags come from the config (--config, over latentguard/default.yaml). The released checkpoint "
               "and "
               "CoPro dataset are downloaded to the cache ($LATENTGUARD_HOME or ~/.cache/latentguard; "
               "CoPro to --dataset) when missing. Concept vectors are cached per encoder, so later runs "
               "only encode the prompts.",
        parents=[common_parser(store_dir=False), guard_parser()])
    parser.add_argument("--file_path", "--file-path", dest="file_path", default=DEFAULT_PROMPTS, metavar="FILE",
                        help=f"prompts, one per line, UTF-8; blank lines are ignored (default: {DEFAULT_PROMPTS})")
    parser.add_argument("--calibrate-safe", default=None, metavar="FILE",
                        help="calibrate the threshold first on these safe prompts (one per line): the lowest "
                             "threshold flagging at most --target-fpr of them; saved beside the checkpoint (an "
                             "existing calibration record there is kept unless --overwrite-calibration)")
    parser.add_argument("--calibrate-unsafe", default=None, metavar="FILE",
                        help="with --calibrate-safe: also these unsafe prompts; the threshold then maximises accuracy")
    parser.add_argument("--target-fpr", type=float, default=None, metavar="F",
                        help="false-positive rate allowed on --calibrate-safe prompts "
                        f"(default: calibration.target_fpr = {SCHEMA.calibration.target_fpr})")
    parser.add_argument("--output", default=None, metavar="FILE",
                        help="also write verdicts to FILE.csv or FILE.jsonl (prompt, score, unsafe, concept, "
                             "truncated, categories; "
                             "JSONL adds top_concepts and evidence with --explain); an existing FILE is kept "
                             "unless --overwrite")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an existing --output file (never followed as a link: the link itself is "
                             "replaced)")
    parser.add_argument("--overwrite-calibration", action="store_true",
                        help="with --calibrate-safe: replace the calibration record beside the checkpoint (main.py's "
                             "validation threshold, say), which every --threshold auto user of the weights then takes")
    parser.add_argument("--explain", action="store_true",
                        help="show the prompt words that drove each top match (from the attention weights)")
    parser.add_argument("--sanitize", action="store_true",
                        help="also edit each unsafe prompt until the guard passes it (the words behind the match "
                             "removed, re-checked; docs/sanitize.md); --output gains the columns sanitized, "
                             "removed and passes (use a sanitized text only where passes is 1)")
    return parser


def output_format(path: str | None) -> str | None:
    """``csv``/``jsonl`` from the extension; anything else is refused before any work is done."""
    if path is None:
        return None
    suffix = Path(path).suffix.lower()
    if suffix not in OUTPUT_FORMATS:
        raise LatentGuardError(f"--output {path}: unknown extension '{suffix or '(none)'}'; use .csv or .jsonl")
    if Path(path).is_dir():
        raise LatentGuardError(f"--output {path} is a directory; give a file name ending in .csv or .jsonl")
    return OUTPUT_FORMATS[suffix]


def inf_path(cfg, key: str) -> str | None:
    """``inference.<key>`` when it is a file path (not a list of concepts)."""
    value = getattr(cfg.inference, key)
    return value if isinstance(value, str) else None


def prompt_file(path: str) -> Path:
    """The prompt file named: the default sample is also found from outside the repository; a table is refused."""
    candidate = Path(path)
    if candidate.suffix.lower() in TABLE_SUFFIXES:  # read by lines, a table's header, cells and records misread
        raise LatentGuardError(f"{path}: inference.py reads one prompt per line, and this looks like a table "
                               f"({candidate.suffix}); score it by column with `latentguard score {path} --output DIR"
                               f"` (docs/bulk.md), or give it a .txt name to read its lines")
    if path == DEFAULT_PROMPTS and not candidate.exists() and (ROOT / DEFAULT_PROMPTS).is_file():
        return ROOT / DEFAULT_PROMPTS
    return candidate


def render_table(verdicts, explain: bool, sanitized=None) -> str:
    """A readable fixed-width table: index, score, verdict, deciding concept, prompt."""
    concept_width = min(24, max([len("concept")] + [len(v.concept) for v in verdicts]))
    lines = [f"{'#':>4}  {'score':>8}  {'verdict':<7}  {'concept':<{concept_width}}  prompt"]
    for i, v in enumerate(verdicts, 1):
        prompt = visible(" ".join(v.prompt.split()))
        if len(prompt) > PROMPT_WIDTH:
            prompt = prompt[: PROMPT_WIDTH - 3] + "..."
        concept = "(unreadable)" if v.refused else visible(v.concept)
        concept = concept if len(concept) <= concept_width else concept[: concept_width - 3] + "..."
        score = f"{'-':>8}" if v.refused else f"{v.score:>8.3f}"  # a refused prompt has no score to show
        lines.append(f"{i:>4}  {score}  {'UNSAFE' if v.unsafe else 'SAFE':<7}  "
                     f"{concept:<{concept_width}}  {prompt}")
        if explain:
            tops = ", ".join(f"{visible(c)} {s:.2f}" for c, s in v.top_concepts)
            words = ", ".join(f"{visible(w)} {s:.2f}" for w, s in v.evidence)
            lines.append(f"{'':>16}top concepts: {tops}")
            lines.append(f"{'':>16}evidence: {words or '-'}")
        edit = sanitized[i - 1] if sanitized else None
        if edit is not None and edit.before.unsafe:
            removed = ", ".join(map(visible, edit.removed)) or "-"
            lines.append(f"{'':>16}sanitized: {edit.text!r} (removed: {removed})" if edit.passes
                         else f"{'':>16}sanitized: no edit within the bound passes (do not use it)")
    return "\n".join(lines)


def usable(edit) -> str | None:
    """The sanitized text, only when it passed: a failed edit is written as nothing (empty / null)."""
    return edit.text if edit.passes is True else None


def write_output(path: str, fmt: str, verdicts, explain: bool, sanitized=None) -> None:
    """Write verdicts atomically as CSV (text cells that start like a spreadsheet formula get a leading ``'``:
    :class:`~latentguard.io.report_writer`; prompt, score, unsafe 0/1, concept, truncated 0/1, the flagged
    categories joined by ``;``, refused: why the guard refused to read it, empty when judged) or JSONL (with
    every category's flag and score); with ``sanitized`` (one
    :class:`~latentguard.guard.Sanitized` per verdict) also the sanitized text, the removed words (``;``
    in CSV) and passes."""
    from ..io import atomic_write_text

    buffer = io.StringIO()
    if fmt == "csv":
        writer = report_writer(buffer, lineterminator="\n")
        writer.writerow(["prompt", "score", "unsafe", "concept", "truncated", "categories", "refused"]
                        + (["sanitized", "removed", "passes"] if sanitized else []))
        for i, v in enumerate(verdicts):
            flagged = ";".join(name for name, on in v.categories.items() if on)
            edit = [usable(sanitized[i]), ";".join(sanitized[i].removed), int(sanitized[i].passes)] if sanitized else []
            writer.writerow([v.prompt, f"{v.score:.6f}", int(v.unsafe), v.concept, int(v.truncated),
                             flagged, v.refused or ""] + edit)
    else:
        for i, v in enumerate(verdicts):
            record = {"prompt": v.prompt, "score": round(v.score, 6), "unsafe": v.unsafe, "concept": v.concept,
                      "truncated": v.truncated, "categories": v.categories, "refused": v.refused,
                      "category_scores": {name: round(p, 6) for name, p in v.category_scores.items()}}
            if explain:
                record["threshold"] = v.threshold
                record["top_concepts"] = [[c, round(s, 6)] for c, s in v.top_concepts]
                record["evidence"] = [[w, round(s, 6)] for w, s in v.evidence]
            if sanitized:
                record.update(sanitized=usable(sanitized[i]), removed=sanitized[i].removed, passes=sanitized[i].passes)
            buffer.write(jsonl_line(record))
    try:
        atomic_write_text(path, buffer.getvalue())
    except OSError as exc:
        raise LatentGuardError(f"cannot write --output {path} ({exc.strerror or exc})") from None


def _readable_lines(guard, path: str, what: str) -> list[str]:
    """A calibration file's prompts; a line the guard cannot read is named (a threshold is fit on judged prompts)."""
    from ..io import numbered_lines

    numbered = numbered_lines(path, what=what)
    for number, text in numbered:
        if not guard.encoder.readable(guard.prepare(text)):
            raise LatentGuardError(f"{path}: line {number}: the guard cannot read this prompt (its tokenizer reads "
                                   f"some of its characters as unknown), so it cannot be calibrated on; remove the "
                                   f"line or use a guard whose encoder reads it (docs/defences.md)")
    return [text for _, text in numbered]


@cli_entry
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from ..guard.options import threshold_line
    from ..guard.refusals import check_or_refused
    from ..io import numbered_lines

    fmt = output_format(args.output)
    # --calibrate-safe sets the threshold below: 0 is only a placeholder until then (any guard reaches it)
    placeholder = {"inference.threshold": 0.0} if args.calibrate_safe else {}
    cfg = load_command_config(args, {**guard_overrides(args), **placeholder, "calibration.target_fpr": args.target_fpr})
    inputs = [("--file_path", args.file_path), *((f"--{key}", inf_path(cfg, key)) for key in file_keys(cfg.inference)),
              ("--calibrate-safe", args.calibrate_safe), ("--calibrate-unsafe", args.calibrate_unsafe)]
    for flag, given in inputs:
        if args.output and given and given != "-" and Path(given).exists() and Path(args.output).exists() \
                and os.path.samefile(given, args.output):  # writing the verdicts would overwrite an input
            raise LatentGuardError(f"--output {args.output} is the {flag} file; choose another output file")
    if args.output and os.path.lexists(args.output) and not args.overwrite:  # never replace a user's file unasked
        raise LatentGuardError(f"--output {args.output} already exists; choose a new file name or pass --overwrite")
    if args.calibrate_unsafe and not args.calibrate_safe:
        raise LatentGuardError("--calibrate-unsafe needs --calibrate-safe (the safe prompts)")
    numbered = numbered_lines(prompt_file(args.file_path), what="prompt file")
    prompts = [text for _, text in numbered]
    guard = build_guard(cfg)  # the released recipe's downloads are checked first (offline: refused at once)
    if args.calibrate_safe and guard.checkpoint and not args.overwrite_calibration:  # refused before any scoring
        from ..decision.threshold import calibration_path, refuse_replacing_record

        refuse_replacing_record(calibration_path(guard.checkpoint), "--overwrite-calibration")
    if args.calibrate_safe:
        safe = _readable_lines(guard, args.calibrate_safe, "--calibrate-safe file")
        unsafe = _readable_lines(guard, args.calibrate_unsafe, "--calibrate-unsafe file") if args.calibrate_unsafe \
            else None
        target_fpr = cfg.calibration.target_fpr
        # a bundle (the built-in guard, a hub folder) is not written to: the threshold holds for this run only
        result = guard.calibrate(safe, unsafe, target_fpr=target_fpr, save=bool(guard.checkpoint),
                                 overwrite=args.overwrite_calibration)
        how = (f"max accuracy {result.accuracy:.3f}" if result.method == "best_accuracy"
               else f"FPR {result.fpr:.3f} <= {target_fpr:g}")
        kept = (f"saved beside {guard.checkpoint}" if guard.checkpoint else "used for this run only: a bundle is "
                "not written to (guard.calibrate, then guard.save_pretrained(DIR), keeps it)")
        print(f"calibrated threshold {result.threshold:.4f} on {result.n_safe} safe / {result.n_unsafe} unsafe "
              f"prompts ({how}); {kept}")
    sanitized = guard.sanitize(prompts) if args.sanitize else None  # its first check is the verdicts' own
    # a prompt the guard cannot read is blocked on its own line (unsafe, 'refused' says why); the rest are judged
    verdicts = [s.before for s in sanitized] if sanitized else check_or_refused(guard, prompts, explain=args.explain)
    for (number, _), v in zip(numbered, verdicts):
        if v.refused:
            print(f"{args.file_path}: line {number}: blocked, the guard refused it as {v.refused}", file=sys.stderr)

    print(render_table(verdicts, args.explain, sanitized))
    n_unsafe = sum(v.unsafe for v in verdicts)
    n_refused = sum(bool(v.refused) for v in verdicts)
    refused_note = f" ({n_refused} of them refused as unreadable: blocked)" if n_refused else ""
    print(f"\n{n_unsafe} of {len(verdicts)} prompts unsafe{refused_note}; {len(guard.concepts)} concepts, "
          f"{threshold_line(guard, per_concept=True)}")
    if sanitized:
        print(f"sanitized: {sum(s.passes for s in sanitized if s.before.unsafe)} of {n_unsafe} unsafe prompts "
              "pass after the edit")
    n_cut = sum(v.truncated for v in verdicts)
    if n_cut:
        print(f"{n_cut} prompt(s) longer than 77 tokens were cut and scored on their first 77 tokens only "
              "(column 'truncated'); --long-prompts scores them whole")
    if args.output:
        write_output(args.output, fmt, verdicts, args.explain, sanitized)
        print(f"wrote {len(verdicts)} verdicts to {args.output}")
    print("Predicted labels (1 = unsafe, 0 = safe), one per prompt:")
    print([int(v.unsafe) for v in verdicts])
    return 0


if __name__ == "__main__":
    sys.exit(main())
