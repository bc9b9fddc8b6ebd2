"""Scoring speed: ``logit_matrix`` (keys/values once per prompt) vs the released repeat-per-concept loop.

The released inference repeats each prompt once per concept and runs the mapping layer on the
aligned pairs, recomputing the prompt's keys and values |C| times. Here that loop is timed with our
own layer's ``forward`` (the fairer, faster version of it: same fused GEMMs, no Python per-pair
work) on a few prompts, and ``logit_matrix`` on batches of prompts, both as a plain call and with
the blacklist's query projections computed once (``latentguard.scoring.blacklist_logits``' default),
and the scoring module's head-major formulation (``latentguard.scoring.head_major_logits``). The
encoder is excluded: inputs are random [78, 768] embeddings and 578 concept vectors (CoPro's ID
blacklist size).

Each measurement runs in a fresh child process so that its peak memory (CPU: peak RSS above the
process's baseline; CUDA: ``max_memory_allocated``) is its own. Timings on a shared machine are
noisy: the median of several repeats is reported.

    python scripts/benchmark_scoring.py                       # CPU, and CUDA when present
    python scripts/benchmark_scoring.py --output bench.json --batch-sizes 1,16,64,256
"""
from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import resource
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from _bench import write_figures  # noqa: E402

from latentguard.constants import EMBEDDING_ROWS  # noqa: E402

CACHED = "logit_matrix, cached queries"  # concept projections done once
HEAD_MAJOR = "head-major blocks, cached queries"  # latentguard.scoring.head_major_logits
LOOP = "released loop"
GFLOP_PER_PROMPT_NOTE = "~0.29 GFLOP/prompt for logit_matrix at 578 concepts; ~71 GFLOP for the released loop"


def _rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as handle:
            return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return 0


def _measure(job: dict) -> dict:
    """Run one (method, batch) timing in this (child) process and report time and peak memory."""
    import torch

    from latentguard.model import EmbeddingMappingLayer

    torch.set_num_threads(job["threads"])
    device = torch.device(job["device"])
    torch.manual_seed(0)
    model = EmbeddingMappingLayer().to(device).eval()
    n_prompts = job["batch"]
    prompts = torch.randn(n_prompts, EMBEDDING_ROWS, 768, device=device)
    concepts = torch.randn(job["concepts"], 768, device=device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    if job["method"] == "logit_matrix":
        def run():
            return model.logit_matrix(prompts, concepts)
    elif job["method"] == CACHED:
        with torch.inference_mode():
            queries = model.concept_queries(concepts)  # once per blacklist, as LatentGuard does

        def run():
            return model.logit_matrix(prompts, None, queries=queries)
    elif job["method"] == HEAD_MAJOR:
        from latentguard.scoring.logits import PROMPTS_PER_BLOCK, blacklist_logits

        with torch.inference_mode():
            queries = model.concept_queries(concepts)

        def run():
            return blacklist_logits(model, prompts, queries, prompts_per_block=PROMPTS_PER_BLOCK)
    else:  # the released loop: one prompt at a time, repeated once per concept
        def run():
            return torch.stack([model(p.unsqueeze(0).expand(concepts.shape[0], -1, -1), concepts) for p in prompts])

    with torch.inference_mode():
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
            base = torch.cuda.memory_allocated(device)
        else:
            base = _rss_bytes()
        run()  # warm-up (also part of the peak: same shapes)
        sync()
        times = []
        deadline = time.perf_counter() + job["min_time"]
        while len(times) < job["repeats"] or (time.perf_counter() < deadline and len(times) < 50):
            start = time.perf_counter()
            run()
            sync()
            times.append(time.perf_counter() - start)
        if device.type == "cuda":
            peak = torch.cuda.max_memory_allocated(device) - base
        else:
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base
    seconds = statistics.median(times)
    return {**job, "seconds": seconds, "ms_per_prompt": 1000 * seconds / n_prompts,
            "prompts_per_s": n_prompts / seconds, "peak_mb": max(peak, 0) / 2**20, "runs": len(times)}


def _max_abs_diff(device: str, n_concepts: int, n_prompts: int, threads: int) -> float:
    """Largest |scoring.blacklist_logits - released loop| over a few prompts (fp32)."""
    import torch

    from latentguard.model import EmbeddingMappingLayer

    torch.set_num_threads(threads)
    torch.manual_seed(1)
    model = EmbeddingMappingLayer().to(device).eval()
    with torch.no_grad():  # spread the weights so the comparison is not between near-constants
        for name, p in model.named_parameters():
            if name != "tempr":
                p.normal_(0, 0.05)
        prompts = torch.randn(n_prompts, EMBEDDING_ROWS, 768, device=device)
        concepts = torch.randn(n_concepts, 768, device=device)
        from latentguard.scoring import blacklist_logits

        fast = blacklist_logits(model, prompts, model.concept_queries(concepts))  # what scoring runs
        slow = torch.stack([model(p.unsqueeze(0).expand(n_concepts, -1, -1), concepts) for p in prompts])
    return float((fast - slow).abs().max())


def _in_child(job: dict) -> dict:
    ctx = mp.get_context("spawn")
    with ctx.Pool(1) as pool:
        return pool.apply(_measure, (job,))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Prompts/s of logit_matrix vs the released repeat-per-concept "
                                     "loop (encoder excluded). Prints a markdown table; --output writes JSON.")
    parser.add_argument("--concepts", type=int, default=578, help="blacklist size (default: 578, CoPro ID)")
    parser.add_argument("--batch-sizes", default="1,16,64,256", help="prompt batch sizes for logit_matrix")
    parser.add_argument("--loop-prompts", type=int, default=3,
                        help="prompts timed through the released loop (slow: ~1 s each on a 2-core CPU)")
    parser.add_argument("--devices", default="auto", help="comma list of cpu,cuda; auto = cpu (+cuda if present)")
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="CPU threads (default: all)")
    parser.add_argument("--repeats", type=int, default=3, help="minimum timed runs per row (median reported)")
    parser.add_argument("--min-time", type=float, default=2.0, help="keep repeating a row for this many seconds")
    parser.add_argument("--output", default=None, help="write the results as JSON here")
    args = parser.parse_args(argv)

    import torch

    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else []) if args.devices == "auto" \
        else [d.strip() for d in args.devices.split(",") if d.strip()]
    batches = [int(b) for b in args.batch_sizes.split(",") if b.strip()]
    rows = []
    for device in devices:
        common = {"device": device, "concepts": args.concepts, "threads": args.threads, "repeats": args.repeats}
        loop = _in_child({**common, "method": LOOP, "batch": args.loop_prompts, "min_time": 0.0, "repeats": 1})
        rows.append(loop)
        for method in ("logit_matrix", CACHED, HEAD_MAJOR):
            for batch in batches:
                row = _in_child({**common, "method": method, "batch": batch, "min_time": args.min_time})
                row["speedup"] = loop["ms_per_prompt"] / row["ms_per_prompt"]
                rows.append(row)
        diff = _max_abs_diff(device, args.concepts, 4, args.threads)
        for row in rows:
            if row["device"] == device:
                row["max_abs_diff_vs_loop"] = diff

    name = torch.cuda.get_device_name(0) if "cuda" in devices else ""
    print(f"## Scoring speed, {args.concepts} concepts, [78, 768] prompts, encoder excluded "
          f"(CPU threads: {args.threads}{'; GPU: ' + name if name else ''})\n")
    print("| device | method | prompt batch | ms / prompt | prompts / s | speed-up | peak memory (MB) |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for r in rows:
        speed = f"{r['speedup']:.0f}x" if "speedup" in r else "1x"
        print(f"| {r['device']} | {r['method']} | {r['batch']} | {r['ms_per_prompt']:.3f} | {r['prompts_per_s']:.1f} "
              f"| {speed} | {r['peak_mb']:.0f} |")
    for device in devices:
        diff = next(r["max_abs_diff_vs_loop"] for r in rows if r["device"] == device)
        print(f"\n{device}: max |scoring.blacklist_logits - released loop| = {diff:.2e} (fp32)")
    print(f"\n{GFLOP_PER_PROMPT_NOTE}. Released loop timed on {args.loop_prompts} prompt(s) per device.")
    if args.output:
        meta = {"concepts": args.concepts, "threads": args.threads, "torch": torch.__version__, "gpu": name}
        write_figures(args.output, {"meta": meta, "rows": rows}, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
