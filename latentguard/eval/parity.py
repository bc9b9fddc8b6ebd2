"""Release parity: recompute the released model's scores and compare them row by row.

``latentguard/resources/released_scores.csv`` holds 84 CoPro test prompts with the score the
released code gave each (real CLIP ViT-L/14, the released ``model_parameters.pth``, the released
CoPro file). This module rebuilds every scored text (synonym / adversarial variants with the
project's own replacement rule, :meth:`latentguard.data.copro.CoPro.variant_text`), scores it against its
domain's blacklist with the project's encoder and mapping layer, and compares (the command is
:mod:`latentguard.cli.verify`):

    latentguard verify                                # downloads what it needs, as inference.py does
    latentguard verify --device cuda --tolerance 1e-3  # the same, through the command dispatcher

PASS when every |ours - released| is within the tolerance and every decision at 4.47 (paper) and
9.0131 (released inference) is the same. Exit codes: 0 pass, 1 mismatch, 2 setup error (one line).
"""
from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from ..csv_files import csv_problem, strict_dict_reader
from ..decision.rule import flags
from ..errors import LatentGuardError
from ..published import DOMAINS, KINDS, RELEASED_THRESHOLD, TABLE1_ACCURACY_THRESHOLD

RELEASED_SCORES = Path(__file__).resolve().parent.parent / "resources" / "released_scores.csv"
DEFAULT_TOLERANCE = 1e-3
# Decisions that must agree: the paper's Table 1(a) threshold and the released inference.py's.
DECISION_THRESHOLDS = {"paper": TABLE1_ACCURACY_THRESHOLD, "released": RELEASED_THRESHOLD}
FIXTURE_COLUMNS = ("domain", "setting", "label", "unsafe_prompt", "safe_prompt", "concept", "released_score")


@dataclass(frozen=True)
class ReleasedRow:
    """One row of a parity fixture; ``line`` is its line in the CSV (for messages)."""

    line: int
    domain: str
    setting: str
    label: int
    unsafe_prompt: str
    safe_prompt: str
    concept: str
    released_score: float


@dataclass(frozen=True)
class RowCheck:
    """One compared row: our score, the difference, and whether each decision agrees."""

    row: ReleasedRow
    ours: float
    diff: float
    disagree_at: tuple[str, ...]

    def ok(self, tolerance: float) -> bool:
        return math.isfinite(self.ours) and self.diff <= tolerance and not self.disagree_at


def read_fixture(path: str | Path = RELEASED_SCORES) -> list[ReleasedRow]:
    """Read a parity CSV (columns :data:`FIXTURE_COLUMNS`); a bad row is a one-line error naming its line."""
    from ..io import read_text

    path = Path(path)
    text = read_text(path, what="parity fixture")
    reader = strict_dict_reader(text.splitlines(keepends=True))
    missing = [c for c in FIXTURE_COLUMNS if c not in (reader.fieldnames or [])]
    if missing:
        raise LatentGuardError(f"{path}: missing column(s) {', '.join(missing)} (need {', '.join(FIXTURE_COLUMNS)})")
    rows: list[ReleasedRow] = []
    for line, record in _records(reader, path):
        domain, setting, label = record["domain"], record["setting"], record["label"]
        if domain not in DOMAINS or setting not in KINDS or label not in ("0", "1"):
            raise LatentGuardError(f"{path}: line {line}: need domain ID/OOD, setting explicit/synonym/adversarial "
                                   f"and label 0/1, got {domain!r}, {setting!r}, {label!r}")
        try:
            score = float(record["released_score"])
        except (TypeError, ValueError):
            score = float("nan")
        if not math.isfinite(score):
            raise LatentGuardError(f"{path}: line {line}: released_score {record['released_score']!r} is not a finite "
                                   "number")
        rows.append(ReleasedRow(line, domain, setting, int(label), record["unsafe_prompt"], record["safe_prompt"],
                                record["concept"], score))
    if not rows:
        raise LatentGuardError(f"{path}: no rows")
    return rows


def _records(reader, path: Path):
    """``(line, record)`` of a strict reader, its errors one line naming the file and line."""
    try:
        for record in reader:
            yield reader.line_num, record
    except csv.Error as exc:
        raise LatentGuardError(f"{path}: line {reader.line_num}: {csv_problem(exc)}") from None


def scored_text(row: ReleasedRow, copro) -> str:
    """The text the released code scored for ``row`` (see the fixture's README)."""
    if row.label == 0:
        return row.safe_prompt  # exactly as stored, leading space included
    if row.setting == "explicit":
        return row.unsafe_prompt
    varied = copro.variant_text(row.unsafe_prompt, row.concept, row.setting)
    if varied is None:
        raise LatentGuardError(
            f"line {row.line}: {copro.path} cannot build the {row.setting} variant of this prompt (concept "
            f"{row.concept!r} lacks a synonym/adversarial entry or is not in the prompt); use the released CoPro file")
    return varied


def score_rows(rows: Sequence[ReleasedRow], copro, encoder, model, *, batch_size: int = 64,
               device=None) -> np.ndarray:
    """Each row's score: max logit of its scored text over its domain's blacklist, through the one
    scoring pass (:func:`latentguard.scoring.logits.max_scores`) that evaluation and the guard use."""
    from ..io import unique
    from ..scoring.logits import max_scores
    from ..store.sources import EncoderSource

    texts = [scored_text(row, copro) for row in rows]
    source = EncoderSource(encoder, batch_size=batch_size)
    scores = np.full(len(rows), np.nan, dtype=np.float64)
    for domain in DOMAINS:
        index = [i for i, row in enumerate(rows) if row.domain == domain]
        if not index:
            continue
        concepts = copro.concepts(domain)
        if not concepts:
            raise LatentGuardError(f"{copro.path}: has no {domain}_concepts, but the fixture has {domain} rows")
        distinct = unique([texts[i] for i in index])
        values, _ = max_scores(model, source, distinct, encoder.encode_concepts(concepts, batch_size=batch_size),
                               batch_size=batch_size, device=device)
        where = {text: value for text, value in zip(distinct, values)}
        scores[index] = [where[texts[i]] for i in index]
    return scores


def compare(rows: Sequence[ReleasedRow], ours: np.ndarray,
            thresholds: dict[str, float] = DECISION_THRESHOLDS) -> list[RowCheck]:
    """Pair each released score with ours; a non-finite score of ours never passes."""
    checks = []
    for row, value in zip(rows, ours):
        value = float(value)
        finite = math.isfinite(value)
        diff = abs(value - row.released_score) if finite else math.inf
        disagree = tuple(name for name, t in thresholds.items()
                         if not finite or bool(flags(value, t)) != bool(flags(row.released_score, t)))
        checks.append(RowCheck(row, value, diff, disagree))
    return checks


def render_table(checks: Sequence[RowCheck], tolerance: float) -> str:
    """setting, label, released score, ours, |diff|; failing rows marked with the reason."""
    lines = [f"{'line':>4}  {'setting':<16}  {'label':>5}  {'released':>10}  {'ours':>10}  {'|diff|':>9}"]
    for c in checks:
        note = ""
        if not c.ok(tolerance):
            reasons = ([f"|diff| > {tolerance:g}"] if not c.diff <= tolerance else []) + \
                      [f"decision differs at {DECISION_THRESHOLDS.get(n, n)}" for n in c.disagree_at]
            note = "  MISMATCH: " + "; ".join(reasons)
        lines.append(f"{c.row.line:>4}  {c.row.domain + ' ' + c.row.setting:<16}  {c.row.label:>5}  "
                     f"{c.row.released_score:>10.4f}  {c.ours:>10.4f}  {c.diff:>9.2e}{note}")
    return "\n".join(lines)


def verdict(checks: Sequence[RowCheck], tolerance: float) -> tuple[bool, str]:
    """(passed, the closing line)."""
    bad = [c for c in checks if not c.ok(tolerance)]
    worst = max((c.diff for c in checks), default=0.0)
    if not bad:
        return True, (f"PASS: {len(checks)} rows, max |diff| {worst:.2e} <= {tolerance:g}; decisions at "
                      f"{' and '.join(f'{t:g}' for t in DECISION_THRESHOLDS.values())} all agree")
    named = ", ".join(f"line {c.row.line} ({c.row.domain} {c.row.setting} label {c.row.label})" for c in bad[:5])
    more = f" and {len(bad) - 5} more" if len(bad) > 5 else ""
    return False, f"FAIL: {len(bad)} of {len(checks)} rows differ: {named}{more}; max |diff| {worst:.2e}"


def write_fixture(path: str | Path, rows: Sequence[ReleasedRow], scores: Sequence[float]) -> Path:
    """Write rows with ``scores`` as a parity CSV (the shipped file's format), atomically."""
    import io as _io

    from ..io import atomic_write_text

    buffer = _io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(FIXTURE_COLUMNS)
    for row, score in zip(rows, scores):
        writer.writerow([row.domain, row.setting, row.label, row.unsafe_prompt, row.safe_prompt, row.concept,
                         f"{float(score):.8g}"])
    atomic_write_text(path, buffer.getvalue())
    return Path(path)
