#!/usr/bin/env python
"""Throughput and memory of ``LatentGuard.check()`` for a trained guard (default: the built-in ``mini``).

Scores a fixed mix of real prompts (COCO captions, CoProV2 prompts, and the art-style prompts of the
package's fixtures, repeated to --prompts) with the text defences on (the deployment setting) and off,
in batches of --batch-size, after a warm-up; reports prompts/s (median of --repeats rounds), the
peak resident memory of the process, and the same guard with every prompt padded to 77 tokens (the
path every encoder took before ``encoder.trim_padding``), for the speed-up.

  python scripts/benchmark_mini.py                        # about 2 minutes on 2 CPU cores
  python scripts/benchmark_mini.py --guard runs/mini/bundle --prompts 2048 --output runs/bench_mini.json

Target (issue 28): >= 200 prompts/s on 2 CPU cores with the defences on. CPU timings on a shared machine
are noisy: rerun on a quiet machine for absolute figures.
"""
from __future__ import annotations

import argparse
import csv
import json
import platform
import resource
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures" / "open_data"


def prompts(n: int) -> list[str]:
    texts: list[str] = []
    for name, column in (("coco_captions.csv", "prompt"), ("coprov2_test.csv", "prompt"),
                         ("copro_triplets_sample.csv", "safe_prompt")):
        with (FIXTURES / name).open(encoding="utf-8", newline="") as handle:
            texts += [row[column] for row in csv.DictReader(handle)]
    styled = [t.rstrip(".") + ", highly detailed, trending on artstation, by greg rutkowski" for t in texts[:40]]
    pool = texts + styled
    return [pool[i % len(pool)] for i in range(n)]


def rate(guard, texts: list[str], batch: int, repeats: int) -> float:
    guard.check(texts[:batch], explain=False)  # warm-up
    rounds = []
    for _ in range(repeats):
        start = time.perf_counter()
        for i in range(0, len(texts), batch):
            guard.check(texts[i : i + batch], explain=False)
        rounds.append(len(texts) / (time.perf_counter() - start))
    return statistics.median(rounds)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--guard", default="mini", help="a guard name, bundle folder or hub id (default: mini)")
    parser.add_argument("--prompts", type=int, default=1024, help="prompts per round (default 1024)")
    parser.add_argument("--batch-size", type=int, default=64, help="prompts per check() call (default 64)")
    parser.add_argument("--repeats", type=int, default=3, help="timed rounds; the median is reported (default 3)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--output", help="write the figures as JSON here")
    args = parser.parse_args()

    import torch

    from latentguard import LatentGuard

    guard = LatentGuard.from_pretrained(args.guard, device=args.device)
    texts = prompts(args.prompts)
    figures = {"guard": args.guard, "prompts": len(texts), "batch_size": args.batch_size,
               "threads": torch.get_num_threads(), "cpu": platform.processor() or platform.machine()}
    figures["defences_on"] = rate(guard, texts, args.batch_size, args.repeats)
    guard.normalize_text = guard.split_sentences = False
    figures["defences_off"] = rate(guard, texts, args.batch_size, args.repeats)
    guard.normalize_text = guard.split_sentences = True
    encoder = guard.encoder
    if getattr(encoder, "trim_padding", False):
        encoder.trim_padding = False  # every prompt padded to 77 and its padding rows kept: the old path
        guard.model.mask_padding = False
        figures["defences_on_padded_77"] = rate(guard, texts, args.batch_size, max(1, args.repeats - 1))
        encoder.trim_padding, guard.model.mask_padding = True, True
    figures["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print("| guard | defences | prompts/s |\n|---|---|---|")
    print(f"| {args.guard} | on | {figures['defences_on']:.0f} |")
    print(f"| {args.guard} | off | {figures['defences_off']:.0f} |")
    if "defences_on_padded_77" in figures:
        print(f"| {args.guard}, padded to 77 (before) | on | {figures['defences_on_padded_77']:.0f} |")
    print(f"peak RSS {figures['peak_rss_mb']:.0f} MB; {figures['threads']} threads; batch {args.batch_size}")
    if args.output:
        Path(args.output).write_text(json.dumps(figures, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
