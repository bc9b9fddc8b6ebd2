"""A bundle's model card (``README.md``): what the guard is, its limits, its recorded results, parity, license.

The card is written from ``config.json`` alone (plus the evaluation a caller hands over), so it can
never describe parts the bundle does not have. Results from ``test.py``'s ``results.json`` are taken
only when they were computed for these weights (:func:`load_results`).
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Mapping

from ..errors import LatentGuardError
from ..published import DOMAINS, KINDS, PUBLISHED_TABLE1, RELEASED_CHECKPOINT_SHA256
from .format import reads_long_prompts

PAPER_URL = "https://arxiv.org/abs/2404.08031"
RELEASE_URL = "https://github.com/rt219/LatentGuard"
CITATION = """@inproceedings{liu2024latentguard,
  title     = {Latent Guard: a Safety Framework for Text-to-image Generation},
  author    = {Liu, Runtao and Khakzar, Ashkan and Gu, Jindong and Chen, Qifeng and Torr, Philip and Pizzati, Fabio},
  booktitle = {European Conference on Computer Vision (ECCV)},
  year      = {2024}
}"""


def load_results(path: str | Path, weights_sha256: set[str]) -> dict[str, Any]:
    """``test.py``'s ``results.json``, refused unless it was computed for weights with one of these SHA-256s."""
    from ..io import read_text, sha256_of

    path = Path(path)
    try:
        results = json.loads(read_text(path, what="results file"))
    except ValueError as exc:
        raise LatentGuardError(f"{path}: not valid JSON ({exc})") from None
    meta = results.get("meta") if isinstance(results, dict) else None
    if not isinstance(meta, dict) or "ID" not in results:
        raise LatentGuardError(f"{path}: not a test.py results.json (no 'meta' and 'ID' sections)")
    sha = meta.get("weights_sha256")
    if sha is None and isinstance(meta.get("checkpoint"), str) and Path(meta["checkpoint"]).is_file():
        sha = sha256_of(meta["checkpoint"])  # an older results.json: hash the file it names, if it is still there
    if sha not in weights_sha256:
        raise LatentGuardError(f"{path} was computed for other weights ({meta.get('checkpoint')}, SHA-256 "
                               f"{(sha or 'unknown')[:12]}...), not these; run test.py on these weights and pass "
                               "its results.json")
    return results


def _fmt(value: Any) -> str:
    return f"{value:.3f}" if isinstance(value, (int, float)) and math.isfinite(value) else "-"


def results_table(results: Mapping[str, Any]) -> str:
    """Table 1 of these weights (AUC and accuracy per condition) beside the paper's."""
    columns = [(d, k) for d in DOMAINS for k in KINDS]
    paper = PUBLISHED_TABLE1["latent_guard"]
    lines = ["| | " + " | ".join(f"{d} {k}" for d, k in columns) + " |", "|---|" + "---:|" * len(columns)]
    for metric, label in (("auc", "ROC AUC"), ("accuracy", "accuracy")):
        ours = [results.get(d, {}).get(k, {}).get(metric) for d, k in columns]
        lines.append(f"| {label}, these weights | " + " | ".join(_fmt(v) for v in ours) + " |")
        theirs = [paper[metric][d][k] for d, k in columns]
        lines.append(f"| {label}, paper (Table 1) | " + " | ".join(_fmt(v) for v in theirs) + " |")
    threshold = results.get("threshold")
    where = results.get("meta", {}).get("dataset", "CoPro")
    note = f"accuracy at threshold {_fmt(threshold)} ({results.get('threshold_source', 'test.py')})"
    return "\n".join(lines) + f"\n\nFrom `test.py` on {where}; {note}."


def _threshold_text(config: Mapping[str, Any]) -> str:
    threshold = config["threshold"]
    if threshold is None:
        return "none recorded: pass one (`threshold=`, `--threshold`) or calibrate before use"
    text = f"{threshold['value']:.4f} ({threshold['origin']})"
    record = threshold["calibration"]
    if record:
        measured = ", ".join(f"{k} {_fmt(record.get(k))}" for k in ("accuracy", "tpr", "fpr")
                             if record.get(k) is not None)
        text += f"; calibrated by {record.get('method')} on {record.get('n_safe')} safe / {record.get('n_unsafe')} " \
                f"unsafe prompts ({measured})"
    return text


def model_card(config: Mapping[str, Any], *, license: str | None = None, results: Mapping[str, Any] | None = None,
               repo_id: str | None = None, title: str | None = None) -> str:
    """The ``README.md`` of a bundle described by ``config`` (a checked ``config.json``)."""
    encoder, layer = config["encoder"], config["mapping_layer"]
    released = config["weights"]["source_sha256"] == RELEASED_CHECKPOINT_SHA256
    license = license or ("bsd-3-clause" if released else None)
    options = encoder["options"]
    from ..encoders import family_class  # what the registered family reads, and whether its names are its own

    family = family_class(encoder["family"])
    hub_name = "/" in encoder["name"] and not encoder["name"].startswith(("/", ".", "~")) and not family.prefix
    front = ["---", "library_name: latentguard", "tags:", "- latent-guard", "- safety", "- text-to-image",
             "- prompt-filter"] + ([f"license: {license}"] if license else []) + \
            ([f"base_model: {encoder['name']}"] if hub_name else []) + ["---", ""]
    where = repo_id or "PATH_OR_REPO_ID"
    text_kind = family.reads
    vectors = "yes (used when the loaded encoder's identity matches)" if config["concept_vectors"] else "no"
    revision = f", revision {encoder['revision']}" if encoder["revision"] else ""
    slope = _fmt(config["slope"]) if config["slope"] is not None else "not fitted (the default is used)"
    lines = front + [
        f"# {title or ('Latent Guard (released weights)' if released else 'Latent Guard')}",
        "",
        f"A [Latent Guard]({PAPER_URL}) safety filter for text-to-image generation: it blocks unsafe prompts "
        "*before* any image is generated, by matching the prompt against a blacklist of concepts in a latent space "
        "learned on top of a frozen text encoder (a prompt is unsafe when its best logit over the blacklist reaches "
        "the threshold).",
        "",
        "## Use",
        "",
        "```python",
        "from latentguard import LatentGuard",
        "",
        f'guard = LatentGuard.from_pretrained("{where}")',
        'verdict = guard.check(["a bloody knife on the kitchen floor"])[0]',
        "verdict.unsafe, verdict.score, verdict.concept, verdict.categories",
        "```",
        "",
        f"Command line: `python inference.py --guard {where} --file_path prompts.txt`. In front of a diffusers "
        f'pipeline: `LatentGuard.from_pretrained("{where}", encoder=encoder_from_pipeline(pipe))`, refused when the '
        "pipeline's text encoder is not this bundle's.",
        "",
        "## What is in it",
        "",
        "| part | value |",
        "|---|---|",
        f"| mapping layer | `model.safetensors`: width {layer['in_dim']} -> {layer['num_heads']} heads x "
        f"{layer['head_dim']} -> {layer['out_dim']}; SHA-256 `{config['weights']['sha256']}` |",
        f"| text encoder | `{encoder['name']}` ({encoder['family']}{revision}), "
        f"{options['dtype']}, attention mask {'on' if options['attention_mask'] else 'off'}, long prompts "
        f"{'as windows' if reads_long_prompts(config) else 'cut at 77 tokens'}; identity `{encoder['identity']}` |",
        f"| blacklist | `concepts.yaml`: {config['concepts']['count']} concepts in plain text; categories: "
        f"{', '.join(config['categories']['names'])} |",
        f"| threshold | {_threshold_text(config)} |",
        f"| per-concept thresholds | {len(config['concept_thresholds']) or 'none'} |",
        f"| probability slope | {slope} |",
        f"| pre-encoded concepts | {vectors} |",
        "",
        "## Intended use and limits",
        "",
        f"- It screens the **text** of a prompt, read as {text_kind} by the encoder above; it is not an image filter "
        "and never sees the generated image.",
        "- It is a **concept blacklist**: it flags prompts close to the listed concepts (including synonyms and "
        "obfuscations it learned), not every harmful request; concepts far from the list pass.",
        "- Scores only mean something with the encoder it was trained for: loading refuses any other encoder "
        "(its identity includes a fingerprint of the weights).",
        "- Prompts longer than 77 tokens are judged on their first 77 tokens unless long prompts are on.",
        "- Use it as one layer of a safety system, with its threshold calibrated on prompts like yours "
        "(`guard.calibrate(...)`).",
        "",
        "## Evaluation",
        "",
        results_table(results) if results else "No `test.py` results were recorded with these weights; "
        "run `python test.py --guard " + where + "` for Table 1.",
        "",
        "## Checking parity",
        "",
        f"`latentguard verify --guard {where}` recomputes the released model's own scores on 84 CoPro test prompts "
        "and compares them row by row (it passes for the released weights only); `python test.py --guard "
        f"{where}` gives Table 1 for any weights.",
        "",
        "## License and citation",
        "",
    ]
    if released:
        lines += ["The method, the CoPro concepts and these weights are by the paper's authors (Runtao Liu, Ashkan "
                  "Khakzar, Jindong Gu, Qifeng Chen, Philip Torr, Fabio Pizzati), released under the BSD-3-Clause "
                  f"license at {RELEASE_URL}; this bundle repackages them unchanged (safetensors).", ""]
    else:
        lines += [f"License: {license or 'not stated by whoever saved this bundle'}. The method is by the "
                  "Latent Guard paper's authors; please cite it.", ""]
    lines += ["```bibtex", CITATION, "```", ""]
    return "\n".join(lines)
