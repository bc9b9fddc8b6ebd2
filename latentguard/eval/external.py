"""Table 2: Latent Guard on an external labelled prompt set (C_check = ID concepts): reading it,
scoring it, reporting it."""
from __future__ import annotations

import csv
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from ..csv_files import csv_problem, strict_reader
from ..errors import LatentGuardError
from ..published import PUBLISHED_TABLE2
from .report import fmt

# ------------------------------------------------------------------------- external (Table 2)
_LABELS = {"1": 1, "0": 0, "unsafe": 1, "safe": 0}


def read_labelled_prompts(path: str | Path) -> tuple[list[str], np.ndarray]:
    """A CSV with header ``prompt,label`` (label 1/0 or unsafe/safe); one-line errors name the line."""
    from ..io import read_text, split_lines

    path = Path(path)
    text = read_text(path, "external prompt file")
    if not text.strip():
        raise LatentGuardError(f"{path}: the file is empty; expected a CSV with header 'prompt,label'")
    reader = strict_reader(split_lines(text, keepends=True))
    try:
        header = [h.strip().lower() for h in next(reader)]
    except (StopIteration, csv.Error):
        raise LatentGuardError(f"{path}: line 1: cannot read a CSV header; expected 'prompt,label'") from None
    if "prompt" not in header or "label" not in header:
        raise LatentGuardError(f"{path}: line 1: the header must have 'prompt' and 'label' columns, got "
                               f"{','.join(header) or 'nothing'} (or pass two text files with --external UNSAFE "
                               "--external-safe SAFE)")
    p_col, l_col = header.index("prompt"), header.index("label")
    prompts, labels = [], []
    try:
        for row in reader:
            line = reader.line_num
            if not row or all(not cell.strip() for cell in row):
                continue
            if len(row) <= max(p_col, l_col):
                raise LatentGuardError(f"{path}: line {line}: expected {len(header)} columns, got {len(row)}")
            prompt, label = row[p_col].strip(), row[l_col].strip().lower()
            if not prompt:
                raise LatentGuardError(f"{path}: line {line}: empty prompt")
            if label not in _LABELS:
                raise LatentGuardError(f"{path}: line {line}: label {row[l_col]!r} must be 1/0 or unsafe/safe")
            prompts.append(prompt)
            labels.append(_LABELS[label])
    except csv.Error as exc:
        raise LatentGuardError(f"{path}: line {reader.line_num}: {csv_problem(exc)}") from None
    if not prompts:
        raise LatentGuardError(f"{path}: no prompts after the header line; add rows 'prompt,label'")
    return prompts, np.asarray(labels, np.int64)


def read_external(unsafe_or_csv: str | Path, safe: str | Path | None = None) -> tuple[list[str], np.ndarray]:
    """Labelled prompts from one CSV, or from an unsafe and a safe text file (one prompt per line)."""
    from ..io import read_lines

    if safe is None:
        return read_labelled_prompts(unsafe_or_csv)
    unsafe_lines = read_lines(unsafe_or_csv, what="unsafe prompt file (--external)")
    safe_lines = read_lines(safe, what="safe prompt file (--external-safe)")
    return unsafe_lines + safe_lines, np.concatenate([np.ones(len(unsafe_lines), np.int64),
                                                      np.zeros(len(safe_lines), np.int64)])


def external_threshold(copro, model, source, *, batch_size: int, device) -> tuple[float, str]:
    """Latent Guard's pooled-validation threshold for an external set, as Table 1 chooses it
    (9.0131, saying so, when the dataset has no validation data)."""
    from ..io import unique
    from ..published import RELEASED_THRESHOLD
    from ..store.sources import concept_vectors
    from .run import LATENT_GUARD, MethodScores, pooled_validation_threshold, score_prompts
    from .table1 import DOMAINS, build_conditions

    valid = build_conditions(copro, "valid")
    texts = {d: unique([t for c in valid.values() if c.available and c.domain == d for t in c.prompts])
             for d in DOMAINS if copro.concepts(d)}
    lg = MethodScores(LATENT_GUARD, {})
    for domain, domain_texts in texts.items():
        concept_emb = concept_vectors(source, copro.concepts(domain))
        lg.per_domain[domain], _ = score_prompts(model, source, domain_texts, concept_emb,
                                                 batch_size=batch_size, device=device)
    threshold, how = pooled_validation_threshold(valid, lg)
    if threshold is None:
        return RELEASED_THRESHOLD, f"released inference threshold ({how})"
    return threshold, how


def evaluate_external(prompts: Sequence[str], labels: np.ndarray, model, encoder, concept_source, concepts, *,
                      threshold: float, batch_size: int, encoder_batch_size: int, device,
                      progress: bool = False) -> tuple[dict[str, Any], np.ndarray, np.ndarray, float]:
    """Table 2: ``prompts`` (encoded on the fly) scored against ``concepts`` (vectors read from
    ``concept_source``): the metrics at ``threshold``, each prompt's score and best concept index, and
    the seconds scoring took (encoding included)."""
    from ..published import RELEASED_THRESHOLD
    from ..store.sources import EncoderSource, concept_vectors
    from .run import condition_metrics, score_prompts

    concept_emb = concept_vectors(concept_source, concepts)
    scores, seconds = score_prompts(model, EncoderSource(encoder, encoder_batch_size), prompts, concept_emb,
                                    batch_size=batch_size, device=device, progress=progress)
    values, best = scores.lookup(list(prompts))
    return condition_metrics(labels, values, threshold, released_threshold=RELEASED_THRESHOLD), values, best, seconds


def external_markdown(result: Mapping[str, Any]) -> str:
    lines = ["# Latent Guard on an external prompt set (Table 2 protocol: C_check = ID concepts)", ""]
    for key in ("file", "safe_file", "checkpoint", "encoder", "concepts"):
        if result.get(key) is not None:
            lines.append(f"- {key}: `{result[key]}`")
    lines += [f"- threshold: **{result['threshold']:.4f}** ({result['threshold_source']})", "",
              "| data | n unsafe | n safe | accuracy | AUC | TPR | FPR | FPR@95%TPR |",
              "|---|---:|---:|---:|---:|---:|---:|---:|",
              f"| this file (ours) | {result['n_unsafe']} | {result['n_safe']} | {fmt(result['accuracy'])} | "
              f"{fmt(result['auc'])} | {fmt(result['tpr'])} | {fmt(result['fpr'])} | {fmt(result['fpr_at_95tpr'])} "
              "|"]
    for name, values in PUBLISHED_TABLE2.items():
        lines.append(f"| paper: {name} | | | {fmt(values['accuracy'])} | {fmt(values['auc'])} | | | |")
    if result.get("auc") is None:
        lines += ["", "AUC needs both safe and unsafe prompts; this file has only one class."]
    return "\n".join(lines) + "\n"
