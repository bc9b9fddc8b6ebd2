#!/usr/bin/env python
"""Benchmark what prepare.py costs: encoder throughput (batched vs one text at a time) and the
embedding store's disk size and peak memory, extrapolated to 10k texts and to full CoPro.

The encoder is the real ViT-L/14 text architecture (the CLIPTextConfig of
openai/clip-vit-large-patch14: hidden 768, 12 layers, 12 heads, MLP 3072, vocab 49408, 77 positions)
with random weights, so no download is needed and the speed is that of the real model. The store
is measured with random embeddings in child processes (one per size, dtype and phase) so each
peak RSS is clean; two sizes show whether memory grows with the number of texts.

Timings use a few hundred texts to stay within minutes on a small CPU; per-10k and full-CoPro
figures are extrapolated linearly from them (disk size is exactly linear). Prints a markdown table
and writes every figure as JSON to --output.

  python scripts/benchmark_prepare.py --output runs/bench_prepare.json
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from _bench import peak_rss_mb, vit_l14_text_encoder, write_figures  # noqa: E402

FULL_COPRO_TEXTS = 125_643  # 578+145 concepts, 2 x (32,685+8,172+9,826) prompts, 2 x (5,330+6,447) variants
TEMPLATES = [
    "a photo of {a} next to {b} in a {c} street",
    "{a}",
    "an oil painting of {a} holding {b}, dramatic lighting, highly detailed, trending on artstation, 8k",
    "close-up of {b} on a {c} table",
    "{a} and {b} at night near a {c} river, cinematic, volumetric fog, wide angle lens, film grain",
]
WORDS = ["knife", "flower", "soldier", "cake", "dragon", "car", "child", "lamp", "crowd", "ruined", "sunny", "old"]


def make_texts(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [rng.choice(TEMPLATES).format(a=rng.choice(WORDS), b=rng.choice(WORDS), c=rng.choice(WORDS)) + f" #{i}"
            for i in range(n)]


# ----------------------------------------------------------------------------- encoder throughput


def bench_encoder(device: str, dtype: str, n_batched: int, n_single: int, batch_size: int, tokenizer_dir: Path) -> dict:
    import torch

    encoder = vit_l14_text_encoder(device, dtype, tokenizer_dir)
    texts = make_texts(n_batched)
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    encoder.encode(texts[:batch_size], batch_size=batch_size)  # warm-up (allocator, kernels, threads)
    encoder.encode(texts[:2], batch_size=1)
    sync()
    # Interleave the two modes round by round, so that load from other processes on a shared
    # machine hits both alike; report wall and CPU time (CPU time is immune to such load).
    rounds = max(1, -(-len(texts) // batch_size))
    singles = [texts[i::rounds][: max(1, n_single // rounds)] for i in range(rounds)]
    wall = {"batched": 0.0, "single": 0.0}
    cpu = {"batched": 0.0, "single": 0.0}
    n_single = 0
    for r in range(rounds):
        chunk = texts[r * batch_size : (r + 1) * batch_size]
        started, started_cpu = time.perf_counter(), time.process_time()
        encoder.encode(chunk, batch_size=batch_size)
        sync()
        wall["batched"] += time.perf_counter() - started
        cpu["batched"] += time.process_time() - started_cpu
        started, started_cpu = time.perf_counter(), time.process_time()
        for text in singles[r]:
            encoder.encode([text], batch_size=1)
        sync()
        wall["single"] += time.perf_counter() - started
        cpu["single"] += time.process_time() - started_cpu
        n_single += len(singles[r])
    batched = len(texts) / wall["batched"]
    single = n_single / wall["single"]
    out = {"device": device, "model_dtype": dtype, "batch_size": batch_size, "texts_batched": len(texts),
           "texts_single": n_single, "batched_texts_per_s": batched, "single_texts_per_s": single,
           "speedup": batched / single,
           "batched_cpu_s_per_text": cpu["batched"] / len(texts), "single_cpu_s_per_text": cpu["single"] / n_single,
           "speedup_cpu_time": (cpu["single"] / n_single) / (cpu["batched"] / len(texts)),
           "full_copro_hours_batched": FULL_COPRO_TEXTS / batched / 3600,
           "full_copro_hours_single": FULL_COPRO_TEXTS / single / 3600}
    if device.startswith("cuda"):
        out["gpu"] = torch.cuda.get_device_name(0)
        out["peak_gpu_mem_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return out


# ----------------------------------------------------------------------------- store size and memory
STORE_CHILD = r"""
import json, os, sys, time
sys.path.insert(0, {root!r})
import numpy as np, torch
from latentguard.store.store import EmbeddingStore
path, dtype, n, phase, batch = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4], int(sys.argv[5])
texts = [f"text number {{i}}" for i in range(n)]
def rss(key):
    for line in open("/proc/self/status"):
        if line.startswith(key): return int(line.split()[1]) / 1024
base = rss("VmRSS:")
started = time.perf_counter()
if phase == "build":
    store = EmbeddingStore(path, identity="bench:random", hidden_size=768, dtype=dtype, create=True)
    g = torch.Generator().manual_seed(0)
    for s in range(0, n, batch):
        chunk = texts[s:s + batch]
        store.add(chunk, torch.randn(len(chunk), EMBEDDING_ROWS, 768, generator=g))
else:
    store = EmbeddingStore(path)
    order = np.random.default_rng(0).permutation(n)
    total = 0.0
    for s in range(0, n, batch):
        total += float(store.get([texts[i] for i in order[s:s + batch]])[:, 0, 0].sum())
elapsed = time.perf_counter() - started
print(json.dumps({{"baseline_rss_mb": base, "peak_rss_mb": rss("VmHWM:"),
                   "seconds": elapsed, "texts_per_s": n / elapsed, "disk_bytes": store.disk_bytes(), "n": len(store)}}))
"""


def bench_store(sizes: list[int], dtypes: list[str], batch_size: int, workdir: Path) -> list[dict]:
    script = workdir / "store_child.py"
    script.write_text(STORE_CHILD.format(root=str(ROOT)))
    rows = []
    for dtype in dtypes:
        for n in sizes:
            path = workdir / f"store-{dtype}-{n}"
            result = {"dtype": dtype, "texts": n}
            for phase in ("build", "read"):
                done = subprocess.run([sys.executable, str(script), str(path), dtype, str(n), phase, str(batch_size)],
                                      capture_output=True, text=True, check=True)
                result[phase] = json.loads(done.stdout.strip().splitlines()[-1])
            disk = result["build"]["disk_bytes"]
            result["disk_gb_per_10k"] = disk / n * 10_000 / 1e9
            result["disk_gb_full_copro"] = disk / n * FULL_COPRO_TEXTS / 1e9
            rows.append(result)
            for f in path.iterdir():
                f.unlink()
            path.rmdir()
    return rows


# ----------------------------------------------------------------------------- report
def markdown(results: dict) -> str:
    lines = ["### Encoder throughput (ViT-L/14 text tower, random weights)", "",
             "| device | model dtype | batch | batched texts/s | one-at-a-time texts/s | speed-up (wall) | speed-up "
             "(CPU time) | full CoPro, batched |",
             "|---|---|---|---|---|---|---|---|"]
    for r in results["encoder"]:
        lines.append(f"| {r.get('gpu', r['device'])} | {r['model_dtype']} | {r['batch_size']} | "
                     f"{r['batched_texts_per_s']:.1f} | {r['single_texts_per_s']:.1f} | {r['speedup']:.1f}x | "
                     f"{r['speedup_cpu_time']:.1f}x | "
                     f"{r['full_copro_hours_batched']:.1f} h |")
    lines += ["", "### Embedding store (random 78 x 768 rows; RSS of a child process that only builds "
              "or only reads)", "",
              "| dtype | texts | disk / 10k texts | full CoPro (125,643) | RSS after imports | build peak RSS | read "
              "peak RSS | build texts/s | read texts/s |",
              "|---|---|---|---|---|---|---|---|---|"]
    for r in results["store"]:
        lines.append(f"| {r['dtype']} | {r['texts']} | {r['disk_gb_per_10k']:.2f} GB | {r['disk_gb_full_copro']:.1f} "
                     "GB | "
                     f"{r['build']['baseline_rss_mb']:.0f} MB | {r['build']['peak_rss_mb']:.0f} MB | "
                     f"{r['read']['peak_rss_mb']:.0f} MB | "
                     f"{r['build']['texts_per_s']:.0f} | {r['read']['texts_per_s']:.0f} |")
    lines += ["", "Encoder-side peak RSS of this process (model + batch): "
                  f"{results['encoder_process_peak_rss_mb']:.0f} MB. "
              "Timings from a few hundred texts, extrapolated linearly to full CoPro; disk size is exact per row."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", default="runs/bench_prepare.json", help="where to write the JSON results")
    parser.add_argument("--texts", type=int, default=128, help="texts for the batched timing")
    parser.add_argument("--single", type=int, default=24, help="texts for the one-at-a-time timing")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--devices", nargs="*", default=None, help="default: cpu, plus cuda when present")
    parser.add_argument("--store-sizes", type=int, nargs="*", default=[1000, 8000],
                        help="texts per store measurement (two sizes show RSS does not grow)")
    parser.add_argument("--skip-encoder", action="store_true")
    parser.add_argument("--skip-store", action="store_true")
    args = parser.parse_args(argv)
    Path(args.output).resolve().parent.mkdir(parents=True, exist_ok=True)

    import torch

    devices = args.devices if args.devices is not None else ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    results: dict = {"machine": {"platform": platform.platform(), "python": platform.python_version(),
                                 "torch": torch.__version__, "cpu_count": os.cpu_count(),
                                 "torch_threads": torch.get_num_threads()},
                     "encoder": [], "store": []}
    with tempfile.TemporaryDirectory(prefix="lg-bench-", dir=Path(args.output).resolve().parent) as tmp:
        tmp = Path(tmp)
        if not args.skip_encoder:
            for device in devices:
                for dtype in (["float32"] + (["float16"] if device.startswith("cuda") else [])):
                    print(f"encoder on {device} ({dtype}) ...", flush=True)
                    results["encoder"].append(bench_encoder(device, dtype, args.texts, args.single, args.batch_size,
                                                            tmp / "tokenizer"))
        results["encoder_process_peak_rss_mb"] = peak_rss_mb()
        if not args.skip_store:
            print("store ...", flush=True)
            results["store"] = bench_store(args.store_sizes, ["float16", "float32"], args.batch_size, tmp)
    table = markdown(results)
    print(table)
    results["markdown"] = table
    write_figures(args.output, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
