#!/usr/bin/env python
"""The recipe's ablation table: each trained guard bundle on the same evaluation prompts, one row each.

For every ``--guard NAME=BUNDLE``: AUROC and FPR at 95% TPR of I2P against its COCO captions; at the
guard's own threshold, COCO FPR, P4D's benign subsets' FPR (art-styled and plain prompts that are not
unsafe), CoPro safe twins' FPR (the ``test`` split), attack success on Ring-A-Bell and P4D's unsafe
subsets, and CoProV2 test detection (a seeded sample of --coprov2-sample; every category). With
``--add-category NAME`` it also reports that category's CoProV2 AUROC against COCO before and after the
guard's own blacklist's concepts of that category are added at run time (the guard trained without it).

  python scripts/ablate_recipe.py --data-dir DATA/benchmarks --data-dir DATA/training \
      --guard full=runs/mini-s0/bundle --guard no-style=runs/ablate-no-style/bundle --output runs/ablation.md

The text defences are on (the deployed setting). Scripts read data from paths you pass; nothing here is
downloaded.
"""
from __future__ import annotations

import argparse
import csv
import json
import random
import sys
from pathlib import Path

import numpy as np

P4D_BENIGN = ("coco30k-car_esd", "small_imagenet_prompts_frenchhorn200", "small_imagenet_prompts_frenchhorn")


def read(path: Path) -> list[dict]:
    with path.open(encoding="utf-8", newline="") as handle:
        return list(csv.DictReader(handle))


def find(name: str, folders: list[Path]) -> Path:
    for folder in folders:
        if (folder / name).is_file():
            return folder / name
    raise SystemExit(f"ablate_recipe: {name} is in none of --data-dir {', '.join(map(str, folders))}")


def evaluation_sets(folders: list[Path], coprov2_sample: int, seed: int, max_prompts: int | None = None) -> dict:
    i2p = read(find("i2p_coco_released_scores.csv", folders))
    p4d = read(find("p4d_full.csv", folders))
    rng = random.Random(seed)
    v2 = read(find("coprov2_test.csv", folders))
    v2 = rng.sample(v2, min(coprov2_sample, len(v2)))
    copro = [r for r in read(find("copro_real.csv", folders)) if r["split"] == "test"]
    copro = rng.sample(copro, min(2000, len(copro)))
    sets = {
        "i2p": [r["prompt"] for r in i2p if r["target"] == "1"],
        "coco": [r["prompt"] for r in i2p if r["target"] == "0"],
        "p4d_unsafe": [r["prompt"] for r in p4d if r["subset"] not in P4D_BENIGN],
        "p4d_benign": [r["prompt"] for r in p4d if r["subset"] in P4D_BENIGN],
        "ring_a_bell": [r["prompt"] for r in read(find("ring_a_bell_full.csv", folders))],
        "coprov2": [r["prompt"] for r in v2],
        "coprov2_category": [r["category"].strip().lower().replace("harrasment", "harassment")
                             .replace("illegal activity", "illegal-activity") for r in v2],
        "copro_safe": [r["safe_prompt"] for r in copro],
    }
    if max_prompts:  # a seeded sample of each set (CoProV2 keeps its categories aligned)
        for key in ("i2p", "coco", "p4d_unsafe", "ring_a_bell", "copro_safe"):
            if len(sets[key]) > max_prompts:
                sets[key] = random.Random(seed).sample(sets[key], max_prompts)
    return sets


def evaluate(guard, sets: dict, add_category: str | None = None) -> dict:
    from latentguard.decision.metrics import fpr_at_tpr, roc_auc
    from latentguard.guard.refusals import logits_or_refused

    texts = sorted({t for key, value in sets.items() if key != "coprov2_category" for t in value})
    blocks = [logits_or_refused(guard, texts[i : i + 256]) for i in range(0, len(texts), 256)]
    scores = dict(zip(texts, np.concatenate([b[0].max(axis=1) for b in blocks])))
    refused_text = dict(zip(texts, np.concatenate([b[1] for b in blocks])))
    refused = {key: int(sum(refused_text[t] for t in sets[key])) for key in sets if key != "coprov2_category"}
    flagged = {t: scores[t] >= guard.threshold for t in texts}

    def share(key: str) -> float:
        return float(np.mean([flagged[t] for t in sets[key]]))

    labels = np.r_[np.ones(len(sets["i2p"])), np.zeros(len(sets["coco"]))]
    i2p_scores = np.array([scores[t] for t in sets["i2p"] + sets["coco"]])
    per_category = {}
    for category in sorted(set(sets["coprov2_category"])):
        members = [t for t, c in zip(sets["coprov2"], sets["coprov2_category"]) if c == category]
        per_category[category] = float(np.mean([flagged[t] for t in members]))
    owner = {c: name for name, members in guard.categories.items() for c in members}
    best = {}
    for i in range(0, len(sets["coprov2"]), 256):
        logits, _ = logits_or_refused(guard, sets["coprov2"][i : i + 256])
        best.update(zip(sets["coprov2"][i : i + 256], logits.argmax(axis=1)))
    pairs = zip(sets["coprov2"], sets["coprov2_category"])
    top1 = float(np.mean([owner.get(guard.concepts[best[t]]) == c for t, c in pairs]))
    row = {"refused": refused, "category_top1": top1, "i2p_auroc": roc_auc(labels, i2p_scores),
           "i2p_fpr_at_95tpr": fpr_at_tpr(labels, i2p_scores),
           "coco_fpr": share("coco"), "p4d_benign_fpr": share("p4d_benign"), "copro_safe_fpr": share("copro_safe"),
           "ring_a_bell_asr": 1 - share("ring_a_bell"), "p4d_asr": 1 - share("p4d_unsafe"),
           "ring_a_bell_asr_readable": float(np.mean([not flagged[t] for t in sets["ring_a_bell"]
                                                      if not refused_text[t]] or [0.0])),
           "coprov2_detection": share("coprov2"), "coprov2_min_category": min(per_category.values()),
           "coprov2_by_category": per_category, "threshold": guard.threshold}
    if add_category:
        row["added_category"] = category_auroc_before_after(guard, sets, add_category, scores)
    return row


def category_auroc_before_after(guard, sets: dict, category: str, scores: dict) -> dict:
    """That category's CoProV2 AUROC against COCO with the guard as trained, then with the mini blacklist's
    concepts of that category added at run time (no retraining)."""
    from latentguard.data.blacklist import load_blacklist
    from latentguard.decision.metrics import roc_auc
    from latentguard.guard.refusals import logits_or_refused
    from latentguard.hub.bundle import builtin_guard_path

    members = [t for t, c in zip(sets["coprov2"], sets["coprov2_category"]) if c == category]
    labels = np.r_[np.ones(len(members)), np.zeros(len(sets["coco"]))]
    before = roc_auc(labels, np.array([scores[t] for t in members + sets["coco"]]))
    concepts = load_blacklist(builtin_guard_path("mini") / "concepts.yaml").categories[category]
    guard.add_concepts(concepts, category=category)
    after_scores = np.concatenate([logits_or_refused(guard, (members + sets["coco"])[i : i + 256])[0].max(axis=1)
                                   for i in range(0, len(members) + len(sets["coco"]), 256)])
    detected = float(np.mean(after_scores[: len(members)] >= guard.threshold))
    others = [c for c in guard.concepts if c not in set(concepts)]
    guard.remove_concepts(others)  # the added concepts alone: does the space match a category it never saw?
    alone = np.concatenate([logits_or_refused(guard, (members + sets["coco"])[i : i + 256])[0].max(axis=1)
                            for i in range(0, len(members) + len(sets["coco"]), 256)])
    guard.add_concepts(others)
    guard.remove_concepts(concepts)
    return {"category": category, "concepts_added": len(concepts), "auroc_before": before,
            "auroc_after": roc_auc(labels, after_scores), "detection_after": detected,
            "auroc_added_concepts_alone": roc_auc(labels, alone), "prompts": len(members)}


def table(rows: dict[str, dict]) -> str:
    cols = [("I2P AUROC", "i2p_auroc", "{:.3f}"), ("FPR@95TPR", "i2p_fpr_at_95tpr", "{:.3f}"),
            ("COCO FPR", "coco_fpr", "{:.1%}"), ("P4D benign FPR", "p4d_benign_fpr", "{:.1%}"),
            ("CoPro safe FPR", "copro_safe_fpr", "{:.1%}"), ("RAB ASR", "ring_a_bell_asr", "{:.1%}"),
            ("P4D ASR", "p4d_asr", "{:.1%}"), ("CoProV2 det.", "coprov2_detection", "{:.1%}"),
            ("worst category", "coprov2_min_category", "{:.1%}"),
            ("right category first", "category_top1", "{:.1%}")]
    lines = ["| guard | " + " | ".join(c[0] for c in cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for name, row in rows.items():
        lines.append(f"| {name} | " + " | ".join(fmt.format(row[key]) for _, key, fmt in cols) + " |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--guard", action="append", required=True, metavar="NAME=BUNDLE")
    parser.add_argument("--data-dir", action="append", type=Path, required=True)
    parser.add_argument("--coprov2-sample", type=int, default=2000)
    parser.add_argument("--add-category", help="report this category's AUROC before/after adding its concepts")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-prompts", type=int, help="a seeded sample of at most this many prompts per set")
    parser.add_argument("--output", type=Path, help="markdown table here (and the figures as .json beside it)")
    args = parser.parse_args()
    from latentguard import LatentGuard

    sets = evaluation_sets(args.data_dir, args.coprov2_sample, args.seed, args.max_prompts)
    rows = {}
    for spec in args.guard:
        name, _, path = spec.partition("=")
        guard = LatentGuard.from_pretrained(path or name, batch_size=128)
        rows[name] = evaluate(guard, sets, args.add_category)
        print(json.dumps({name: rows[name]}, indent=1), flush=True)
    text = table(rows)
    print(text)
    if args.output:
        args.output.write_text(text + "\n", encoding="utf-8")
        args.output.with_suffix(".json").write_text(json.dumps(rows, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
