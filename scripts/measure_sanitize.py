#!/usr/bin/env python
"""Sanitize instead of block, measured on real prompts (issue 29; the table is in docs/sanitize.md).

With a trained guard (``--guard``: a bundle folder or hub name), on the files given:

* ``--copro``: CoPro triplets (``copro_real.csv``: split, concepts, variant, concept, unsafe_prompt,
  safe_prompt), test split, concepts on the guard's blacklist. Of the unsafe prompts the guard flags:
  the share whose sanitized text passes (by the number of rounds allowed: the search is greedy, so a
  bound of R rounds stops the same path at R); of the words the unsafe prompt has and its safe twin
  lacks, the share removed; of the words both have, the share kept; the share whose concept's own
  words (where the prompt has them) were removed.
* ``--coco``: benign captions (a ``prompt`` column): the share returned unchanged, byte for byte.
* ``--i2p`` (``prompt``, ``target``: 1 = I2P) and ``--ring-a-bell`` (``prompt``): of the flagged prompts,
  the share that sanitize to a passing text, and examples of each outcome.
* the time of one sanitize per flagged prompt against one check per prompt (both batched).

    python scripts/measure_sanitize.py --guard runs/guards/mini --copro DATA/training/copro_real.csv \\
        --coco DATA/training/coco_captions_train.csv --i2p DATA/benchmarks/i2p_coco_released_scores.csv \\
        --ring-a-bell DATA/benchmarks/ring_a_bell_full.csv --output runs/sanitize.json
"""
from __future__ import annotations

import argparse
import csv
import json
import random
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from latentguard.guard.sanitize import DEFAULT_ROUNDS, DEFAULT_WIDTH, key, words  # noqa: E402


def rows(path: Path) -> list[dict]:
    with open(path, encoding="utf-8", newline="") as handle:
        return list(csv.DictReader(handle))


def sample(items: list, n: int, seed: int) -> list:
    return items if len(items) <= n else random.Random(seed).sample(items, n)


def keys(text: str) -> set[str]:
    return {key(text[s:e]) for s, e in words(text)} - {""}


def run_sanitize(guard, prompts: list[str], options: dict) -> tuple[list, float]:
    """Sanitize ``prompts`` in one call; when the guard refuses a text an edit produced (an emoji left alone
    by a cut), prompt by prompt, the refused ones counted as not passing (they are left out of the results)."""
    from latentguard.errors import UnreadableTextError

    started = time.perf_counter()
    try:
        results = guard.sanitize(prompts, **options)
    except UnreadableTextError:
        results = []
        for prompt in prompts:
            try:
                results += guard.sanitize([prompt], **options)
            except UnreadableTextError:
                REFUSED_EDITS.append(prompt)
    return results, time.perf_counter() - started


REFUSED_EDITS: list[str] = []  # prompts whose sanitizing met text the guard refuses to read


def passing_by_round(results: list, rounds: int) -> dict[int, float]:
    n = len(results) or 1
    return {r: sum(x.passes and x.rounds <= r for x in results) / n for r in range(1, rounds + 1)}


def copro(guard, path: Path, limit: int, seed: int, options: dict) -> dict:
    blacklist = set(guard.concepts)
    triplets = [r for r in rows(path) if r["split"] == "test" and r["concept"] in blacklist]
    triplets = sample(triplets, limit, seed)
    verdicts = guard.check([t["unsafe_prompt"] for t in triplets], explain=False)
    flagged = [t for t, v in zip(triplets, verdicts) if v.unsafe]
    results, seconds = run_sanitize(guard, [t["unsafe_prompt"] for t in flagged], options)
    lacking = removed_lacking = shared = removed_shared = 0
    concept_present = concept_removed = 0
    for t, r in zip(flagged, results):
        unsafe, safe, gone = keys(t["unsafe_prompt"]), keys(t["safe_prompt"]), {key(w) for w in r.removed}
        lacking += len(unsafe - safe)
        removed_lacking += len((unsafe - safe) & gone)
        shared += len(unsafe & safe)
        removed_shared += len(unsafe & safe & gone)
        own = keys(t["concept"]) & unsafe
        if own:
            concept_present += 1
            concept_removed += own <= gone
    return {"triplets": len(triplets), "flagged": len(flagged), "seconds": seconds,
            "passes": sum(r.passes for r in results) / max(len(results), 1),
            "passes_by_round": passing_by_round(results, options["rounds"]),
            "removed_of_lacking": removed_lacking / max(lacking, 1),
            "kept_of_shared": 1 - removed_shared / max(shared, 1),
            "concept_words_removed": concept_removed / max(concept_present, 1), "concept_present": concept_present,
            "words_removed_mean": sum(len(r.removed) for r in results) / max(len(results), 1),
            "examples": examples(results, 10), "flagged_prompts": [t["unsafe_prompt"] for t in flagged]}


def benign(guard, path: Path, limit: int, seed: int, options: dict) -> dict:
    captions = sample([r["prompt"] for r in rows(path) if r["prompt"].strip()], limit, seed)
    results, seconds = run_sanitize(guard, captions, options)
    return {"captions": len(captions), "seconds": seconds,
            "unchanged": sum(r.text == r.prompt for r in results) / max(len(results), 1),
            "flagged": sum(r.before.unsafe for r in results) / max(len(results), 1),
            "examples": examples([r for r in results if r.before.unsafe], 10)}


def attack_set(guard, prompts: list[str], pool: int, limit: int, seed: int, options: dict) -> dict:
    total = len(prompts)
    from latentguard.guard.refusals import logits_or_refused

    prompts = sample(prompts, pool, seed)  # a seeded sample is checked, and its flagged prompts sanitized
    refused = logits_or_refused(guard, prompts)[1]  # text the guard cannot read: blocked, nothing to sanitize
    prompts = [p for p, r in zip(prompts, refused) if not r]
    verdicts = guard.check(prompts, explain=False)
    flagged = sample([p for p, v in zip(prompts, verdicts) if v.unsafe], limit, seed)
    results, seconds = run_sanitize(guard, flagged, options)
    return {"prompts": total, "checked": len(prompts), "refused_unreadable": int(refused.sum()),
            "flagged_share": sum(v.unsafe for v in verdicts) / max(len(prompts), 1),
            "sanitized": len(flagged), "seconds": seconds,
            "passes": sum(r.passes for r in results) / max(len(results), 1),
            "passes_by_round": passing_by_round(results, options["rounds"]), "examples": examples(results, 10)}


def examples(results: list, n: int) -> dict:
    def show(r) -> dict:
        return {"prompt": r.prompt, "text": r.text, "removed": r.removed, "concept": r.before.concept,
                "after": r.after.concept, "rounds": r.rounds}
    return {"passes": [show(r) for r in results if r.passes][:n],
            "fails": [show(r) for r in results if not r.passes][:n]}


def timing(guard, prompts: list[str], options: dict) -> dict:
    """Seconds per prompt: one batched check (with its evidence), and one batched sanitize."""
    started = time.perf_counter()
    guard.check(prompts, explain=True)
    check = (time.perf_counter() - started) / len(prompts)
    _, seconds = run_sanitize(guard, prompts, options)
    return {"prompts": len(prompts), "check_s": check, "sanitize_s": seconds / len(prompts),
            "ratio": seconds / len(prompts) / check}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--guard", required=True, help="a guard bundle folder or hub name")
    parser.add_argument("--copro", type=Path, help="copro_real.csv (test triplets are used)")
    parser.add_argument("--coco", type=Path, help="benign captions, a 'prompt' column")
    parser.add_argument("--i2p", type=Path, help="i2p_coco_released_scores.csv ('prompt', 'target' 1 = I2P)")
    parser.add_argument("--ring-a-bell", type=Path, help="ring_a_bell_full.csv ('prompt')")
    parser.add_argument("--limit", type=int, default=300, help="prompts sanitized per set (a seeded sample)")
    parser.add_argument("--coco-limit", type=int, default=2000, help="benign captions sanitized")
    parser.add_argument("--pool", type=int, default=1000, help="I2P / Ring-A-Bell prompts checked (a seeded sample)")
    parser.add_argument("--rounds", type=int, default=DEFAULT_ROUNDS)
    parser.add_argument("--width", type=int, default=DEFAULT_WIDTH)
    parser.add_argument("--replacement", default="", help="a word put where one is cut (default: none)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--output", type=Path, help="write the figures as JSON (a new file)")
    args = parser.parse_args()
    if args.output and args.output.exists():
        raise SystemExit(f"--output {args.output} exists; choose a new file")
    from latentguard.guard import LatentGuard

    guard = LatentGuard.from_pretrained(args.guard, device=args.device)
    options = {"rounds": args.rounds, "width": args.width, "replacement": args.replacement}
    out: dict = {"guard": args.guard, "concepts": len(guard.concepts), "threshold": guard.threshold,
                 "options": options}
    if args.copro:
        out["copro"] = copro(guard, args.copro, args.limit, args.seed, options)
        flagged = out["copro"].pop("flagged_prompts")
        print(json.dumps({k: v for k, v in out["copro"].items() if k != "examples"}, indent=1), flush=True)
    if args.coco:
        out["coco"] = benign(guard, args.coco, args.coco_limit, args.seed, options)
        print(json.dumps({k: v for k, v in out["coco"].items() if k != "examples"}, indent=1), flush=True)
    if args.i2p:
        prompts = [r["prompt"] for r in rows(args.i2p) if r.get("target", "1") == "1"]
        out["i2p"] = attack_set(guard, prompts, args.pool, args.limit, args.seed, options)
        print(json.dumps({k: v for k, v in out["i2p"].items() if k != "examples"}, indent=1), flush=True)
    if args.ring_a_bell:
        prompts = [r["prompt"] for r in rows(args.ring_a_bell)]
        out["ring_a_bell"] = attack_set(guard, prompts, args.pool, args.limit, args.seed, options)
        print(json.dumps({k: v for k, v in out["ring_a_bell"].items() if k != "examples"}, indent=1), flush=True)
    if args.copro and flagged:  # a seeded sample of the flagged CoPro prompts, as they come
        out["timing"] = timing(guard, sample(flagged, 40, args.seed), options)
        print(json.dumps(out["timing"], indent=1), flush=True)
    out["refused_edits"] = len(REFUSED_EDITS)
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps(out, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
