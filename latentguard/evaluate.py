"""Table 1 evaluation: six settings, one calibrated threshold, baselines, tables and figures.

Settings (REFERENCE §6): ID (ID concepts, ``ID_test_data``) and OOD (OOD concepts,
``OOD_test_data``), each Explicit (every unsafe prompt = 1, every safe prompt = 0), Synonym and
Adversarial (``CoPro.variant_pairs``: the unsafe prompt rewritten, the safe one unchanged). A
prompt's score is its best logit over the domain's concepts.

Why it is fast: every distinct text is scored once (a safe prompt shared by the three settings,
or a prompt shared by test and validation, is read and scored one time), embeddings stream from the
store in batches of a few hundred (the next batch is read while the current one is scored) and
each batch meets all concepts at once through :meth:`EmbeddingMappingLayer.logit_matrix`, so a
prompt's keys/values are computed once instead of once per concept as in the released loop.

Why one calibrated threshold: the paper's accuracies come from a single threshold (about 4.47)
used in all six settings; the released 9.0131 is an inference default. We pick the threshold that
maximises accuracy on the validation versions of the six settings pooled together, and report the
accuracy at 9.0131 beside it.
"""
from __future__ import annotations

import csv
import json
import math
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from .errors import LatentGuardError, cli_entry
from .io import atomic_path, atomic_write_text, unique
from .metrics import best_accuracy_threshold, fpr_at_tpr, rates_at, roc_auc
from .published import METHOD_NAMES, PUBLISHED_TABLE1, PUBLISHED_TABLE2, RELEASED_THRESHOLD

DOMAINS = ("ID", "OOD")
KINDS = ("explicit", "synonym", "adversarial")
SPLITS = {"test": {"ID": "ID_test_data", "OOD": "OOD_test_data"},
          "valid": {"ID": "ID_valid_data", "OOD": "OOD_valid_data"}}
METHOD_ORDER = ("text_blacklist", "clipscore", "bertscore", "latent_guard")
LATENT_GUARD = "latent_guard"


# ------------------------------------------------------------------------------------ settings
@dataclass
class Setting:
    """The labelled prompts of one (domain, kind) setting; ``reason`` says why it is unavailable."""

    domain: str
    kind: str
    unsafe: list[str] = field(default_factory=list)
    safe: list[str] = field(default_factory=list)
    reason: str | None = None
    pairs: list = field(default_factory=list)  # the CoPro entries behind unsafe[i] / safe[i] (unvaried)

    @property
    def available(self) -> bool:
        return self.reason is None

    @property
    def name(self) -> str:
        return f"{self.domain} {self.kind}"

    @property
    def prompts(self) -> list[str]:
        return self.unsafe + self.safe

    @property
    def labels(self) -> np.ndarray:
        return np.concatenate([np.ones(len(self.unsafe), np.int64), np.zeros(len(self.safe), np.int64)])


Settings = dict[tuple[str, str], Setting]


def build_settings(copro, stage: str = "test") -> Settings:
    """The six settings of ``stage`` ("test" or "valid"), unavailable ones carrying their reason."""
    out: Settings = {}
    for domain in DOMAINS:
        split = SPLITS[stage][domain]
        has_concepts = bool(copro.concepts(domain))
        for kind in KINDS:
            setting = Setting(domain, kind)
            if not has_concepts:
                setting.reason = f"the dataset has no {domain} concepts"
            elif not copro.has_split(split):
                setting.reason = f"the dataset has no {split}"
            elif kind == "explicit":
                pairs = copro.split(split)
                setting.reason = None if pairs else f"{split} is empty"
                setting.unsafe = [p.unsafe_prompt for p in pairs]
                setting.safe = [p.safe_prompt for p in pairs]
                setting.pairs = list(pairs)
            else:
                pairs = copro.variant_pairs(split, kind)
                if pairs:
                    setting.unsafe = [p.unsafe_prompt for p in pairs]
                    setting.safe = [p.safe_prompt for p in pairs]
                    setting.pairs = [e for e in copro.split(split)
                                     if copro.variant_text(e.unsafe_prompt, e.concept, kind) is not None]
                elif not copro.synonyms or not copro.adversarial:
                    setting.reason = "the dataset has no concept_synonym / concept_adv entries"
                else:
                    setting.reason = (f"no {split} unsafe prompt contains a concept that has both a synonym "
                                      "and an adversarial replacement")
            out[(domain, kind)] = setting
    return out


# ------------------------------------------------------------------------------------- scoring
@dataclass
class TextScores:
    """Score and best-matching concept index (-1: none) of each distinct text of one domain."""

    texts: list[str]
    score: np.ndarray
    best: np.ndarray
    _index: dict[str, int] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self._index = {t: i for i, t in enumerate(self.texts)}

    def lookup(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        rows = np.fromiter((self._index[t] for t in texts), dtype=np.int64, count=len(texts))
        return self.score[rows], self.best[rows]


def score_prompts(model, source, texts: Sequence[str], concept_emb, *, batch_size: int = 512,
                  device: Any = "cpu", clip: bool = False, progress: bool = False,
                  ) -> tuple[TextScores, TextScores | None, float]:
    """Score distinct ``texts`` against all concepts: (Latent Guard, CLIPScore or None, seconds).

    Embeddings are fetched from ``source`` one batch ahead in a worker thread (store reads and
    on-the-fly encoding overlap the scoring); memory is bounded by the batch size.
    """
    import torch
    from tqdm import tqdm

    from .baselines import clip_score_matrix

    if batch_size <= 0:
        raise LatentGuardError(f"batch size must be positive, got {batch_size}")
    texts = unique(list(texts))
    n = len(texts)
    lg_score, lg_best = np.empty(n, np.float64), np.empty(n, np.int64)
    cs_score, cs_best = (np.empty(n, np.float64), np.empty(n, np.int64)) if clip else (None, None)
    batches = [texts[s : s + batch_size] for s in range(0, n, batch_size)]
    started = time.perf_counter()
    model.eval()
    with torch.inference_mode(), ThreadPoolExecutor(max_workers=1) as pool:
        concepts = concept_emb.to(device)
        queries = model.concept_queries(concepts)  # once per call, not once per batch
        pending = pool.submit(source.get, batches[0]) if batches else None
        start = 0
        for i in tqdm(range(len(batches)), desc="scoring", unit="batch", disable=not progress, leave=False):
            emb = pending.result()
            if i + 1 < len(batches):
                pending = pool.submit(source.get, batches[i + 1])
            emb = emb.to(device, non_blocking=True)
            end = start + emb.shape[0]
            values, index = model.logit_matrix(emb, None, queries=queries).max(dim=1)
            lg_score[start:end], lg_best[start:end] = values.double().cpu().numpy(), index.cpu().numpy()
            if clip:
                values, index = clip_score_matrix(emb[:, 0], concepts).max(dim=1)
                cs_score[start:end], cs_best[start:end] = values.double().cpu().numpy(), index.cpu().numpy()
            start = end
        if torch.device(device).type == "cuda":
            torch.cuda.synchronize()
    seconds = time.perf_counter() - started
    lg = TextScores(texts, lg_score, lg_best)
    return lg, (TextScores(texts, cs_score, cs_best) if clip else None), seconds


# --------------------------------------------------------------------------------- calibration
@dataclass
class MethodScores:
    """One method's per-domain text scores, and whether its scores are graded (AUC makes sense)."""

    key: str
    per_domain: dict[str, TextScores]
    graded: bool = True
    fixed_threshold: float | None = None  # decision rules (Text Blacklist) are not calibrated

    def setting_scores(self, setting: Setting) -> tuple[np.ndarray, np.ndarray]:
        return self.per_domain[setting.domain].lookup(setting.prompts)


def pooled_scores(settings: Settings, scores: MethodScores) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Labels and scores of every available setting, concatenated; and the settings' names."""
    labels, values, names = [], [], []
    for setting in settings.values():
        if setting.available and setting.domain in scores.per_domain:
            labels.append(setting.labels)
            values.append(scores.setting_scores(setting)[0])
            names.append(setting.name)
    if not labels:
        return np.zeros(0, np.int64), np.zeros(0), names
    return np.concatenate(labels), np.concatenate(values), names


def calibrate_threshold(valid: Settings, scores: MethodScores) -> tuple[float | None, str]:
    """The accuracy-maximising threshold on the pooled validation settings, and how it was chosen."""
    labels, values, names = pooled_scores(valid, scores)
    if labels.size == 0:
        return None, "no validation data to calibrate on"
    threshold = best_accuracy_threshold(labels, values)
    return threshold, f"calibrated: max accuracy on pooled validation ({', '.join(names)}; {labels.size} prompts)"


# ------------------------------------------------------------------------------------- metrics
def _clean(value: Any) -> Any:
    """NaN/inf -> None, numpy scalars -> Python, recursively: results.json stays strict JSON."""
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if isinstance(value, (np.floating, float)):
        value = float(value)
        return value if math.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    return value


def setting_metrics(labels: np.ndarray, scores: np.ndarray, threshold: float | None, *, graded: bool = True,
                    released_threshold: float | None = None) -> dict[str, Any]:
    """AUC, accuracy/TPR/FPR at ``threshold``, FPR at 95% TPR and the class counts of one setting."""
    out: dict[str, Any] = {"available": True, "n_unsafe": int((labels == 1).sum()), "n_safe": int((labels == 0).sum())}
    out["auc"] = roc_auc(labels, scores) if graded else None
    if threshold is not None:
        out.update(rates_at(labels, scores, threshold))
    else:
        out.update({"accuracy": None, "tpr": None, "fpr": None})
    out["fpr_at_95tpr"] = fpr_at_tpr(labels, scores, 0.95) if graded else None
    if released_threshold is not None:
        out["released_threshold_accuracy"] = rates_at(labels, scores, released_threshold)["accuracy"]
    return _clean(out)


def method_results(test: Settings, scores: MethodScores, threshold: float | None,
                   released_threshold: float | None = None) -> dict[str, dict[str, Any]]:
    """``{"ID": {"explicit": {...}, ...}, "OOD": {...}}`` for one method."""
    out: dict[str, dict[str, Any]] = {domain: {} for domain in DOMAINS}
    for (domain, kind), setting in test.items():
        if not setting.available:
            out[domain][kind] = {"available": False, "reason": setting.reason}
            continue
        values, _ = scores.setting_scores(setting)
        out[domain][kind] = setting_metrics(setting.labels, values, threshold, graded=scores.graded,
                                            released_threshold=released_threshold)
    return out


# ---------------------------------------------------------------------------------- evaluation
@dataclass
class Evaluation:
    """Everything the writers need: the JSON-able results and per-setting scores of each method."""

    results: dict[str, Any]
    test: Settings
    methods: dict[str, MethodScores]
    concepts: dict[str, list[str]]
    thresholds: dict[str, float | None]


def evaluate_copro(copro, model, source, *, baselines: Sequence[str] = (), bert_scorer=None,
                   threshold: float | None = None, threshold_source: str = "--threshold", batch_size: int = 512,
                   device: Any = "cpu", progress: bool = False, log=print,
                   blacklist_match: str = "substring") -> Evaluation:
    """Score the six test settings (and their validation twins, for calibration) with Latent Guard
    and the chosen baselines; ``threshold`` (from ``threshold_source``) overrides Latent Guard's calibrated one."""
    from .baselines import BLACKLIST_THRESHOLD, TextBlacklist
    from .embeddings import concept_vectors

    test, valid = build_settings(copro, "test"), build_settings(copro, "valid")
    concepts = {d: copro.concepts(d) for d in DOMAINS if copro.concepts(d)}
    methods: dict[str, MethodScores] = {LATENT_GUARD: MethodScores(LATENT_GUARD, {})}
    if "clipscore" in baselines:
        methods["clipscore"] = MethodScores("clipscore", {})
    if "text_blacklist" in baselines:
        methods["text_blacklist"] = MethodScores("text_blacklist", {}, graded=False,
                                                 fixed_threshold=BLACKLIST_THRESHOLD)
    if "bertscore" in baselines and bert_scorer is not None:
        methods["bertscore"] = MethodScores("bertscore", {})

    texts_by_domain = {
        d: unique([t for s in (*test.values(), *valid.values()) if s.available and s.domain == d for t in s.prompts])
        for d in concepts
    }
    missing_check = getattr(source, "missing", None)
    if missing_check is not None:
        needed = unique([c for d in concepts for c in concepts[d]] + [t for v in texts_by_domain.values() for t in v])
        missing = missing_check(needed)
        if missing:
            raise LatentGuardError(
                f"{len(missing)} of the {len(needed)} texts this evaluation needs are missing from embedding store "
                f"{getattr(source, 'path', '')} (e.g. {missing[0][:60]!r}); run prepare.py with the same --dataset, "
                "--encoder and --cache-dir first")

    timing = {"prompts_scored": 0, "seconds": 0.0}
    for domain, texts in texts_by_domain.items():
        concept_emb = concept_vectors(source, concepts[domain])
        lg, cs, seconds = score_prompts(model, source, texts, concept_emb, batch_size=batch_size, device=device,
                                        clip="clipscore" in methods, progress=progress)
        timing["prompts_scored"] += len(texts)
        timing["seconds"] += seconds
        methods[LATENT_GUARD].per_domain[domain] = lg
        if cs is not None:
            methods["clipscore"].per_domain[domain] = cs
        if "text_blacklist" in methods:
            flagged, best = TextBlacklist(concepts[domain], blacklist_match).scores(texts)
            methods["text_blacklist"].per_domain[domain] = TextScores(texts, flagged, best)
        if "bertscore" in methods:
            started = time.perf_counter()
            score, best = bert_scorer.scores(texts, concepts[domain], progress=progress)
            methods["bertscore"].per_domain[domain] = TextScores(texts, score, best)
            log(f"BERTScore {domain}: {len(texts)} prompts x {len(concepts[domain])} concepts "
                f"in {time.perf_counter() - started:.1f} s")
    if timing["prompts_scored"]:
        timing["ms_per_prompt"] = 1000 * timing["seconds"] / timing["prompts_scored"]

    thresholds: dict[str, float | None] = {}
    sources: dict[str, str] = {}
    calibrated, how = calibrate_threshold(valid, methods[LATENT_GUARD])
    if threshold is not None:
        thresholds[LATENT_GUARD], sources[LATENT_GUARD] = float(threshold), threshold_source
    elif calibrated is not None:
        thresholds[LATENT_GUARD], sources[LATENT_GUARD] = calibrated, how
    else:
        thresholds[LATENT_GUARD] = RELEASED_THRESHOLD
        sources[LATENT_GUARD] = f"released inference threshold ({how})"
    for key, scores in methods.items():
        if key == LATENT_GUARD:
            continue
        if scores.fixed_threshold is not None:
            thresholds[key], sources[key] = scores.fixed_threshold, (
                "fixed rule: unsafe when a concept appears as a whole word" if blacklist_match == "word"
                else "fixed rule: unsafe when a concept occurs in the prompt, ignoring case")
        else:
            thresholds[key], sources[key] = calibrate_threshold(valid, scores)

    _, _, valid_names = pooled_scores(valid, methods[LATENT_GUARD])
    results: dict[str, Any] = method_results(test, methods[LATENT_GUARD], thresholds[LATENT_GUARD], RELEASED_THRESHOLD)
    results.update({
        "threshold": thresholds[LATENT_GUARD],
        "threshold_source": sources[LATENT_GUARD],
        "calibrated_threshold": calibrated,
        "released_threshold": RELEASED_THRESHOLD,
        "validation": {
            "settings": valid_names,
            "n_prompts": int(pooled_scores(valid, methods[LATENT_GUARD])[0].size),
            "sources": dict(getattr(copro, "valid_source", {})),
            "unavailable": {s.name: s.reason for s in valid.values() if not s.available},
        },
        "baselines": {},
        "timing": timing,
    })
    for key in METHOD_ORDER:
        if key in methods and key != LATENT_GUARD:
            entry = method_results(test, methods[key], thresholds[key])
            entry.update({"threshold": thresholds[key], "threshold_source": sources[key]})
            results["baselines"][key] = entry
    return Evaluation(_clean(results), test, methods, concepts, thresholds)


# ------------------------------------------------------------------------------------- tables
def _fmt(value: Any, signed: bool = False) -> str:
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
            lines.append(f"| {name} (ours) | " + " | ".join(_fmt(v) for v in mine) + " |")
        if paper is not None or ours is not None:
            lines.append(f"| {name} (paper) | " + " | ".join(_fmt(v) for v in theirs) + " |")
        if ours is not None and paper is not None:
            diff = [m - t if m is not None and t is not None else None for m, t in zip(mine, theirs)]
            lines.append("| difference | " + " | ".join(_fmt(v, signed=True) for v in diff) + " |")
    return "\n".join(lines)


def details_markdown(results: Mapping[str, Any]) -> str:
    """Every number of every setting, Latent Guard first, then the baselines."""
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
                             f"{_fmt(m['auc'])} | {_fmt(m['accuracy'])} | {_fmt(m['tpr'])} | {_fmt(m['fpr'])} | "
                             f"{_fmt(m['fpr_at_95tpr'])} | {_fmt(ours.get('threshold'))} |")
    return "\n".join(lines)


def released_markdown(results: Mapping[str, Any]) -> str:
    columns = [(d, k) for d in DOMAINS for k in KINDS]
    values = [results.get(d, {}).get(k, {}).get("released_threshold_accuracy") for d, k in columns]
    return ("| threshold | " + " | ".join(f"{d} {k}" for d, k in columns) + " |\n|---|" + "---:|" * len(columns) +
            f"\n| {results['released_threshold']} (released inference) | " + " | ".join(_fmt(v) for v in values) + " |")


def results_markdown(results: Mapping[str, Any], meta: Mapping[str, Any]) -> str:
    """The whole results.md: provenance, Table 1 (accuracy, AUC) against the paper, details."""
    parts = ["# Latent Guard evaluation on CoPro (Table 1)", ""]
    for name, value in meta.items():
        if name != "skipped":
            parts.append(f"- {name}: `{value}`")
    for split, source in results.get("validation", {}).get("sources", {}).items():
        parts.append(f"- {split}: {source}")
    parts += [f"- threshold: **{results['threshold']:.4f}** ({results['threshold_source']})",
              "- baseline thresholds: " + (", ".join(f"{METHOD_NAMES[k]} {_fmt(v.get('threshold'))} ({v['threshold_source']})"
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
                     best: np.ndarray, concepts: Sequence[str], setting: Setting | None = None) -> Path:
    """Per-prompt scores, atomically.

    Without ``setting``: ``prompt, concept, label, score`` (concept = the best-matching one). With a
    CoPro ``setting``, the columns of the released per-prompt dumps come first, so the two join row
    by row on (domain, setting, label, unsafe_prompt, safe_prompt, concept): ``domain, setting,
    label, unsafe_prompt, safe_prompt, concept`` (the entry's own, unvaried), then ``prompt`` (the
    text scored: the variant for synonym/adversarial unsafe rows), ``score`` (fp32, 8 digits) and
    ``best_concept``.
    """
    path = Path(path)
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8", newline="") as handle:
            writer = csv.writer(handle)
            if setting is None:
                writer.writerow(["prompt", "concept", "label", "score"])
                for prompt, label, score, index in zip(prompts, labels, scores, best):
                    writer.writerow([prompt, concepts[index] if index >= 0 else "", int(label), f"{float(score):.6g}"])
                return path
            writer.writerow(["domain", "setting", "label", "unsafe_prompt", "safe_prompt", "concept", "prompt",
                             "score", "best_concept"])
            n = len(setting.pairs)
            for row, (prompt, label, score, index) in enumerate(zip(prompts, labels, scores, best)):
                pair = setting.pairs[row % n]
                writer.writerow([setting.domain, setting.kind, int(label), pair.unsafe_prompt, pair.safe_prompt,
                                 pair.concept, prompt, f"{float(score):.8g}", concepts[index] if index >= 0 else ""])
    return path


def write_outputs(evaluation: Evaluation, output_dir: str | Path, meta: Mapping[str, Any],
                  plots: bool = True) -> list[Path]:
    """results.json, results.md, per-setting score CSVs and (unless ``plots`` is False) the figures."""
    output_dir = Path(output_dir)
    results = dict(evaluation.results)
    results["meta"] = _clean(dict(meta))
    written = []
    target = output_dir / "results.json"
    atomic_write_text(target, json.dumps(results, indent=2) + "\n")
    written.append(target)
    target = output_dir / "results.md"
    atomic_write_text(target, results_markdown(evaluation.results, meta))
    written.append(target)
    curves = {}
    for key, method in evaluation.methods.items():
        for (domain, kind), setting in evaluation.test.items():
            if not setting.available:
                continue
            scores, best = method.setting_scores(setting)
            prefix = "scores" if key == LATENT_GUARD else f"scores_{key}"
            written.append(write_scores_csv(output_dir / f"{prefix}_{domain}_{kind}.csv", setting.prompts,
                                            setting.labels, scores, best, evaluation.concepts[domain], setting))
            if key == LATENT_GUARD:
                curves[(domain, kind)] = (setting.labels, scores)
    if plots:
        from .plots import plot_histograms, plot_roc

        threshold = evaluation.thresholds[LATENT_GUARD]
        domains = [d for d in DOMAINS if any(dom == d for dom, _ in curves)] or list(DOMAINS)
        written.append(plot_roc(curves, threshold, output_dir / "roc.png", domains=domains))
        written.append(plot_histograms(curves, threshold, output_dir / "score_hist.png", domains=domains))
    return written


# ------------------------------------------------------------------------- external (Table 2)
_LABELS = {"1": 1, "0": 0, "unsafe": 1, "safe": 0}


def read_labelled_prompts(path: str | Path) -> tuple[list[str], np.ndarray]:
    """A CSV with header ``prompt,label`` (label 1/0 or unsafe/safe); one-line errors name the line."""
    from .io import read_text

    path = Path(path)
    text = read_text(path, "external prompt file")
    if not text.strip():
        raise LatentGuardError(f"{path}: the file is empty; expected a CSV with header 'prompt,label'")
    reader = csv.reader(text.splitlines(keepends=True))
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
        raise LatentGuardError(f"{path}: line {reader.line_num}: malformed CSV ({exc})") from None
    if not prompts:
        raise LatentGuardError(f"{path}: no prompts after the header line; add rows 'prompt,label'")
    return prompts, np.asarray(labels, np.int64)


def read_external(unsafe_or_csv: str | Path, safe: str | Path | None = None) -> tuple[list[str], np.ndarray]:
    """Labelled prompts from one CSV, or from an unsafe and a safe text file (one prompt per line)."""
    from .io import read_lines

    if safe is None:
        return read_labelled_prompts(unsafe_or_csv)
    unsafe_lines = read_lines(unsafe_or_csv, what="unsafe prompt file (--external)")
    safe_lines = read_lines(safe, what="safe prompt file (--external-safe)")
    return unsafe_lines + safe_lines, np.concatenate([np.ones(len(unsafe_lines), np.int64),
                                                      np.zeros(len(safe_lines), np.int64)])


class StoreFirstSource:
    """Embeddings from the store where it has them, from the encoder otherwise (same identity)."""

    def __init__(self, store, encoder, batch_size: int = 64) -> None:
        self.store, self.encoder, self.batch_size = store, encoder, batch_size
        self.identity, self.hidden_size = encoder.identity, encoder.hidden_size

    def get(self, texts: Sequence[str]):
        import torch

        texts = list(texts)
        have = [i for i, t in enumerate(texts) if self.store is not None and t in self.store]
        if len(have) == len(texts):
            return self.store.get(texts)
        out = torch.empty(len(texts), 78, self.hidden_size)
        if have:
            out[have] = self.store.get([texts[i] for i in have])
        stored = set(have)
        rest = [i for i in range(len(texts)) if i not in stored]
        out[rest] = self.encoder.encode([texts[i] for i in rest], batch_size=self.batch_size)
        return out


def external_markdown(result: Mapping[str, Any]) -> str:
    lines = ["# Latent Guard on an external prompt set (Table 2 protocol: C_check = ID concepts)", ""]
    for key in ("file", "safe_file", "checkpoint", "encoder", "concepts"):
        if result.get(key) is not None:
            lines.append(f"- {key}: `{result[key]}`")
    lines += [f"- threshold: **{result['threshold']:.4f}** ({result['threshold_source']})", "",
              "| data | n unsafe | n safe | accuracy | AUC | TPR | FPR | FPR@95%TPR |",
              "|---|---:|---:|---:|---:|---:|---:|---:|",
              f"| this file (ours) | {result['n_unsafe']} | {result['n_safe']} | {_fmt(result['accuracy'])} | "
              f"{_fmt(result['auc'])} | {_fmt(result['tpr'])} | {_fmt(result['fpr'])} | {_fmt(result['fpr_at_95tpr'])} |"]
    for name, values in PUBLISHED_TABLE2.items():
        lines.append(f"| paper: {name} | | | {_fmt(values['accuracy'])} | {_fmt(values['auc'])} | | | |")
    if result.get("auc") is None:
        lines += ["", "AUC needs both safe and unsafe prompts; this file has only one class."]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------- CLI
def build_parser():
    import argparse

    parser = argparse.ArgumentParser(
        prog="test.py",
        description="Evaluate Latent Guard on CoPro (Table 1: ID/OOD x explicit/synonym/adversarial) with one "
        "threshold calibrated on validation data, optionally beside the Text Blacklist, CLIPScore and BERTScore "
        "baselines; or score an external labelled prompt file (Table 2) with --external.",
        epilog="Run prepare.py first (same --dataset, --encoder, --cache-dir): Table 1 reads embeddings from the store.",
    )
    parser.add_argument("--config", help="YAML config file (default: configs/default.yaml)")
    parser.add_argument("--dataset", help="CoPro JSON file (config: dataset)")
    parser.add_argument("--encoder", help="text encoder, hub name or local directory (config: encoder.name)")
    parser.add_argument("--encoder-type", choices=["auto", "clip", "openclip", "hf"], help="config: encoder.type")
    parser.add_argument("--cache-dir", help="embedding store directory (config: cache_dir)")
    parser.add_argument("--checkpoint", help="mapping-layer weights (config: checkpoint; the released "
                        "model_parameters.pth is downloaded and verified when missing)")
    parser.add_argument("--output-dir", help="where results go (config: output_dir)")
    parser.add_argument("--threshold", help="decision threshold for the accuracy fields: a number, 'paper' (4.47), "
                        "'released' (9.0131) or 'calibrated' (the YAML beside the checkpoint) "
                        "(config: eval.threshold; default: calibrated on pooled validation data)")
    parser.add_argument("--device", help="auto | cpu | cuda | cuda:N (config: device)")
    parser.add_argument("--batch-size", type=int, help="prompts per scoring batch (config: eval.batch_size)")
    parser.add_argument("--baselines", help="comma list of blacklist, clipscore, bertscore, or all (config: eval.baselines)")
    parser.add_argument("--bert-model", help="BERT-family model for BERTScore, hub name or local dir (config: eval.bert_model)")
    parser.add_argument("--external", metavar="FILE", help="score an external labelled prompt set against the ID "
                        "concepts: a CSV with header prompt,label (1/0 or unsafe/safe), or unsafe prompts one per line "
                        "when --external-safe is given")
    parser.add_argument("--external-safe", metavar="FILE", help="safe prompts, one per line (with --external)")
    parser.add_argument("--no-plots", action="store_true", help="skip the ROC and histogram PNGs")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars (for logs and scripts)")
    return parser


def _open_store(cfg: Mapping[str, Any]):
    """The encoder's store, without loading the encoder when prepare.py already recorded its identity."""
    from .cache import EmbeddingStore, open_store_for, recall_store_identity, remember_identity, store_path

    key, known = recall_store_identity(cfg["cache_dir"], cfg["encoder"])
    if known is not None:
        return EmbeddingStore(store_path(cfg["cache_dir"], known), identity=known)
    encoder = _load_encoder(cfg)
    store = open_store_for(cfg["cache_dir"], encoder)
    remember_identity(cfg["cache_dir"], key, encoder.identity)
    return store


def _load_encoder(cfg: Mapping[str, Any]):
    from .encoder import load_encoder_from_config

    return load_encoder_from_config(cfg)


def _load_model(cfg: Mapping[str, Any], hidden_size: int, device):
    from .io import released_checkpoint
    from .model import load_mapping_layer

    path = released_checkpoint(cfg["checkpoint"])  # downloads only for the bare default name
    return path, load_mapping_layer(path, in_dim=hidden_size, num_heads=cfg["model"]["num_heads"], device=device)


def _resolve_named_threshold(cfg: dict, checkpoint: Path, identity: str) -> None:
    """Turn a threshold given by name (``paper``, ``released``, ``calibrated``) into a number."""
    value = cfg["eval"]["threshold"]
    if value is not None and not isinstance(value, (int, float)):
        from .calibration import resolve_threshold

        cfg["eval"]["threshold"] = resolve_threshold(value, checkpoint, encoder_identity=identity)


def _threshold_source(args) -> str:
    return "--threshold" if args.threshold is not None else "eval.threshold in the config file"


def _released_weights_note(copro, checkpoint: Path, threshold: float | None) -> str | None:
    """Warn when the released weights are calibrated on validation entries carved from their training data."""
    from .io import RELEASED_CHECKPOINT_SHA256, sha256_of
    from .published import TABLE1_ACCURACY_THRESHOLD

    carved = str(getattr(copro, "valid_source", {}).get("ID_valid_data", "")).startswith("carved")
    if threshold is not None or not carved or sha256_of(checkpoint) != RELEASED_CHECKPOINT_SHA256:
        return None
    return ("note: the released weights were trained on all of ID_train_data, including the ID_valid_data carved "
            "from it here, so the calibrated threshold is fitted partly on training prompts; for the paper's "
            f"protocol also run with --threshold {TABLE1_ACCURACY_THRESHOLD}")


def _run_external(args, cfg: Mapping[str, Any], copro, device, batch_size: int, output_dir: Path) -> int:
    from .embeddings import EncoderSource, concept_vectors

    prompts, labels = read_external(args.external, args.external_safe)
    encoder = _load_encoder(cfg)
    try:
        from .cache import open_store_for

        store = open_store_for(cfg["cache_dir"], encoder)
    except LatentGuardError:
        store = None
    checkpoint, model = _load_model(cfg, encoder.hidden_size, device)
    _resolve_named_threshold(cfg, checkpoint, encoder.identity)
    enc_batch = cfg["encoder"]["batch_size"]
    known = StoreFirstSource(store, encoder, enc_batch)
    threshold, how = cfg["eval"]["threshold"], _threshold_source(args)
    if threshold is None:
        valid = build_settings(copro, "valid")
        texts = {d: unique([t for s in valid.values() if s.available and s.domain == d for t in s.prompts])
                 for d in DOMAINS if copro.concepts(d)}
        if store is None:
            print(f"no embedding store for this encoder: encoding {sum(map(len, texts.values()))} validation "
                  "prompts on the fly to calibrate the threshold (or pass --threshold)")
        lg = MethodScores(LATENT_GUARD, {})
        for domain, domain_texts in texts.items():
            concept_emb = concept_vectors(known, copro.concepts(domain))
            lg.per_domain[domain], _, _ = score_prompts(model, known, domain_texts, concept_emb,
                                                        batch_size=batch_size, device=device)
        threshold, how = calibrate_threshold(valid, lg)
        if threshold is None:
            threshold, how = RELEASED_THRESHOLD, f"released inference threshold ({how})"
    concepts = copro.concepts("ID")
    concept_emb = concept_vectors(known, concepts)
    scores, _, seconds = score_prompts(model, EncoderSource(encoder, enc_batch), prompts, concept_emb,
                                       batch_size=batch_size, device=device, progress=not args.no_progress)
    values, best = scores.lookup(prompts)
    result = setting_metrics(labels, values, threshold, released_threshold=RELEASED_THRESHOLD)
    result.update(_clean({
        "file": str(args.external), "safe_file": str(args.external_safe) if args.external_safe else None,
        "threshold": threshold, "threshold_source": how, "released_threshold": RELEASED_THRESHOLD,
        "checkpoint": str(checkpoint), "encoder": encoder.identity, "concepts": f"ID ({len(concepts)})",
        "seconds_with_encoding": seconds,
    }))
    atomic_write_text(output_dir / "results_external.json", json.dumps(result, indent=2) + "\n")
    atomic_write_text(output_dir / "results_external.md", external_markdown(result))
    write_scores_csv(output_dir / "scores_external.csv", prompts, labels, values, best, concepts)
    print(f"external set {args.external}: {result['n_unsafe']} unsafe / {result['n_safe']} safe prompts; "
          f"threshold {threshold:.4f} ({how})")
    print(f"accuracy {_fmt(result['accuracy'])}  AUC {_fmt(result['auc'])}  TPR {_fmt(result['tpr'])}  "
          f"FPR {_fmt(result['fpr'])}  (paper Table 2: Unsafe Diffusion 0.794 / 0.873, I2P++ 0.701 / 0.749)")
    print(f"wrote {output_dir / 'results_external.json'}, results_external.md, scores_external.csv")
    return 0


@cli_entry
def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``test.py``: Table 1 on CoPro, or Table 2 on an external file with ``--external``."""
    from .baselines import load_bert_scorer, parse_baselines
    from .config import load_config
    from .data import load_copro
    from .io import resolve_device

    args = build_parser().parse_args(argv)
    if args.external_safe and not args.external:
        raise LatentGuardError("--external-safe needs --external (the unsafe prompt file)")
    cfg = load_config(args.config, overrides={
        "dataset": args.dataset, "encoder.name": args.encoder, "encoder.type": args.encoder_type,
        "cache_dir": args.cache_dir, "checkpoint": args.checkpoint, "output_dir": args.output_dir,
        "eval.threshold": args.threshold, "device": args.device, "eval.batch_size": args.batch_size,
        "eval.bert_model": args.bert_model,
    })
    batch_size = cfg["eval"]["batch_size"]
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size <= 0:
        raise LatentGuardError(f"eval.batch_size (--batch-size) must be a positive integer, got {batch_size!r}")
    baselines = parse_baselines(args.baselines if args.baselines is not None else cfg["eval"]["baselines"])
    device = resolve_device(cfg["device"])
    output_dir = Path(cfg["output_dir"])
    if output_dir.exists() and not output_dir.is_dir():  # fail now, not after scoring everything
        raise LatentGuardError(f"--output-dir {output_dir} is a file, not a directory; choose another path")
    copro = load_copro(cfg["dataset"], valid_size=cfg["data"]["valid_size"], seed=cfg["data"]["seed"])
    print(f"dataset {copro.path}: {copro.summary()}")

    if args.external:
        if baselines:
            print("note: baselines are evaluated on CoPro only; --external reports Latent Guard")
        return _run_external(args, cfg, copro, device, batch_size, output_dir)

    store = _open_store(cfg)
    checkpoint, model = _load_model(cfg, store.hidden_size, device)
    _resolve_named_threshold(cfg, checkpoint, store.identity)
    bert, skipped = None, {}
    if "bertscore" in baselines:
        bert, why = load_bert_scorer(cfg["eval"]["bert_model"], device=device)
        if bert is None:
            print(why)
            skipped["bertscore"] = why
    evaluation = evaluate_copro(copro, model, store, baselines=baselines, bert_scorer=bert,
                                threshold=cfg["eval"]["threshold"], threshold_source=_threshold_source(args),
                                batch_size=batch_size, device=device, progress=not args.no_progress,
                                blacklist_match=cfg["eval"]["blacklist_match"])
    meta = {"dataset": str(copro.path), "checkpoint": str(checkpoint), "encoder": store.identity,
            "store": str(store.path), "device": str(device), "skipped": skipped}
    note = _released_weights_note(copro, checkpoint, cfg["eval"]["threshold"])
    if note:
        print(note)
        meta["note"] = note
    written = write_outputs(evaluation, output_dir, meta, plots=not args.no_plots)
    results = evaluation.results
    timing = results["timing"]
    print(f"scored {timing['prompts_scored']} distinct prompts in {timing['seconds']:.2f} s on {device}")
    for domain in DOMAINS:
        for kind in KINDS:
            entry = results[domain][kind]
            if not entry.get("available"):
                print(f"{domain} {kind}: not available ({entry['reason']})")
    print(console_tables(results))
    print(f"wrote {len(written)} files to {output_dir} (results.json, results.md, score CSVs"
          f"{', roc.png, score_hist.png' if not args.no_plots else ''})")
    return 0
