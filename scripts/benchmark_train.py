#!/usr/bin/env python
"""Training step time: fast loss (keys/values once per prompt) vs the released all-pairs expansion.

One step = forward + backward + AdamW step at batch n (64 concepts, as released), on random
embeddings of the real size (78 x 768), so no data or encoder is needed. Methods:

* ``fast``: ``latentguard.train.contrastive_loss`` - one ``logit_matrix`` call on the 2n prompts;
* ``naive``: what the released ``main.py`` does - every prompt repeated once per concept and the
  n x n pairs of each prompt set pushed through the module's aligned-pair ``forward``;
* ``reference`` (``--with-reference``): ``latentguard.reference.naive_contrastive_loss``, the
  loop-based formulation used by the tests (slowest; for completeness).

Peak memory: ``torch.cuda.max_memory_allocated`` on CUDA; on the CPU the peak growth of the
process's resident set during the timed steps (sampled every 2 ms). Also estimates the wall time
of the paper's schedule (1,001 epochs x 10 steps, plus validation every 50 epochs) from the
measured step time. Prints a markdown table; ``--output`` writes JSON.

Examples:
  python scripts/benchmark_train.py                      # CPU (and CUDA when present), n = 64
  python scripts/benchmark_train.py --devices cpu --repeats 5 --output bench_train.json
"""
from __future__ import annotations

import argparse
import math
import os
import platform
import statistics
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from _bench import write_figures  # noqa: E402
from reference import naive_contrastive_loss  # noqa: E402

from latentguard.constants import EMBEDDING_ROWS  # noqa: E402
from latentguard.model import EmbeddingMappingLayer  # noqa: E402
from latentguard.train import contrastive_loss, contrastive_loss_from_logits  # noqa: E402

PAPER_EPOCHS = 1001
ID_CONCEPTS = 578
VALID_PAIRS = 3000
VAL_EVERY = 50


def released_style_loss(model: EmbeddingMappingLayer, unsafe: torch.Tensor, safe: torch.Tensor,
                        concepts: torch.Tensor) -> torch.Tensor:
    """The released training computation: all n x n (prompt, concept) pairs through ``forward``."""
    n, length, dim = unsafe.shape
    pairs_c = concepts.unsqueeze(0).expand(n, -1, -1).reshape(-1, dim)  # pair (i, j) -> concept j
    logits = []
    for prompts in (unsafe, safe):
        pairs_p = prompts.unsqueeze(1).expand(-1, n, -1, -1).reshape(-1, length, dim)  # -> prompt i
        logits.append(model(pairs_p, pairs_c).view(n, n))
    return contrastive_loss_from_logits(torch.cat(logits))


def reference_loss(model: EmbeddingMappingLayer, unsafe, safe, concepts) -> torch.Tensor:
    return naive_contrastive_loss(dict(model.named_parameters()), unsafe, safe, concepts, num_heads=model.num_heads)


METHODS = {"fast": contrastive_loss, "naive": released_style_loss, "reference": reference_loss}


class RssPeak:
    """Peak resident-set growth over a code region, sampled in a thread (Linux /proc)."""

    def __init__(self, interval: float = 0.002) -> None:
        self.interval, self.peak, self._stop = interval, 0, threading.Event()
        self._page = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096

    def _rss(self) -> int:
        try:
            with open("/proc/self/statm") as f:
                return int(f.read().split()[1]) * self._page
        except OSError:
            return 0

    def __enter__(self) -> "RssPeak":
        self.base = self.peak = self._rss()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()
        return self

    def _watch(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._rss())
            time.sleep(self.interval)

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._rss())

    @property
    def grown(self) -> int:
        return max(0, self.peak - self.base)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class StepRunner:
    """One method's model, optimiser and inputs; ``step()`` is forward + backward + AdamW."""

    def __init__(self, name: str, device: torch.device, n: int, in_dim: int) -> None:
        gen = torch.Generator().manual_seed(0)
        torch.manual_seed(0)
        self.name, self.device = name, device
        self.model = EmbeddingMappingLayer(in_dim).to(device)
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=1e-3, weight_decay=0.01)
        self.inputs = [torch.randn(n, EMBEDDING_ROWS, in_dim, generator=gen).to(device),
                       torch.randn(n, EMBEDDING_ROWS, in_dim, generator=gen).to(device),
                       torch.randn(n, in_dim, generator=gen).to(device)]
        self.loss_fn = METHODS[name]
        self.times: list[float] = []
        self.peak = 0

    def step(self, record: bool = True) -> float:
        _sync(self.device)
        tick = time.perf_counter()
        self.optimizer.zero_grad(set_to_none=True)
        loss = self.loss_fn(self.model, *self.inputs)
        loss.backward()
        self.optimizer.step()
        _sync(self.device)
        elapsed = time.perf_counter() - tick
        if record:
            self.times.append(elapsed)
        return elapsed

    def measured_block(self, steps: int) -> list[float]:
        """Timed steps with the peak memory of the block recorded (max over blocks)."""
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            base = torch.cuda.memory_allocated(self.device)
        with RssPeak() as rss:
            times = [self.step() for _ in range(steps)]
        grown = (torch.cuda.max_memory_allocated(self.device) - base) if self.device.type == "cuda" else rss.grown
        self.peak = max(self.peak, int(grown))
        return times

    def summary(self) -> dict:
        return {"method": self.name, "device": str(self.device), "step_s": statistics.median(self.times),
                "step_s_min": min(self.times), "repeats": len(self.times), "peak_bytes": self.peak,
                "peak_kind": "cuda max_memory_allocated above inputs and model" if self.device.type == "cuda"
                else "RSS growth during the timed steps"}


def compare(device: torch.device, methods: list[str], n: int, in_dim: int, fast_steps: int, rounds: int,
            warmup: int) -> tuple[dict[str, dict], dict[str, float]]:
    """Time the methods interleaved, so each slow step is compared with fast steps taken just before
    and after it (load from other processes then affects both alike). Returns per-method summaries
    and, per slow method, the median over rounds of (slow step / mean of the neighbouring fast steps).

    The fast method's memory is measured first, before any slow step has grown the allocator's pool.
    """
    runners = {m: StepRunner(m, device, n, in_dim) for m in methods}
    fast = runners["fast"]
    for _ in range(warmup):
        fast.step(record=False)
    before = fast.measured_block(fast_steps)
    ratios: dict[str, list[float]] = {m: [] for m in methods if m != "fast"}
    for _ in range(rounds):
        for method in ratios:
            print(f"[{device}] timing {method} ...", file=sys.stderr, flush=True)
            slow = runners[method].measured_block(1)[0]
            after = fast.measured_block(fast_steps)
            ratios[method].append(slow / statistics.fmean(before + after))
            before = after
    return {m: r.summary() for m, r in runners.items()}, {m: statistics.median(v) for m, v in ratios.items()}


def loss_agreement(device: torch.device, n: int, in_dim: int) -> float:
    """Relative difference between the fast loss and the released expansion on the same inputs."""
    gen = torch.Generator().manual_seed(1)
    torch.manual_seed(1)
    model = EmbeddingMappingLayer(in_dim).to(device)
    u, s = (torch.randn(n, EMBEDDING_ROWS, in_dim, generator=gen).to(device) for _ in range(2))
    c = torch.randn(n, in_dim, generator=gen).to(device)
    with torch.no_grad():
        fast, naive = contrastive_loss(model, u, s, c).item(), released_style_loss(model, u, s, c).item()
    return abs(fast - naive) / abs(naive)


@torch.no_grad()
def validation_seconds(device: torch.device, in_dim: int, batch: int = 256) -> float:
    """One validation pass (3,000 pairs = 6,000 prompts x 578 concepts), from one timed batch."""
    gen = torch.Generator().manual_seed(2)
    model = EmbeddingMappingLayer(in_dim).to(device).eval()
    prompts = torch.randn(batch, EMBEDDING_ROWS, in_dim, generator=gen).to(device)
    concepts = torch.randn(ID_CONCEPTS, in_dim, generator=gen).to(device)
    model.logit_matrix(prompts[:8], concepts)  # warm-up
    _sync(device)
    tick = time.perf_counter()
    model.logit_matrix(prompts, concepts).max(dim=1)
    _sync(device)
    return (time.perf_counter() - tick) * (2 * VALID_PAIRS / batch)


def _fmt_bytes(n: int) -> str:
    return f"{n / 2**20:,.0f} MiB"


def _fmt_time(s: float) -> str:
    return f"{s / 3600:.1f} h" if s >= 3600 else f"{s / 60:.1f} min" if s >= 60 else f"{s:.1f} s"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--n", type=int, default=64, help="concepts per step (released: 64)")
    parser.add_argument("--in-dim", type=int, default=768, help="encoder width (CLIP ViT-L/14: 768)")
    parser.add_argument("--devices", default="auto", help="comma list of cpu,cuda; auto = cpu plus cuda if present")
    parser.add_argument("--repeats", type=int, default=2,
                        help="fast steps timed before and after each slow step (median reported)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed fast steps first")
    parser.add_argument("--naive-repeats", type=int, default=2,
                        help="rounds: timed steps of each slow method, interleaved with fast steps")
    parser.add_argument("--with-reference", action="store_true",
                        help="also time latentguard.reference.naive_contrastive_loss (slow, several GB on CPU)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--output", help="write the results as JSON here")
    args = parser.parse_args(argv)
    if args.n <= 0 or args.repeats <= 0 or args.naive_repeats <= 0 or args.warmup < 0:
        parser.error("--n, --repeats and --naive-repeats must be positive, --warmup >= 0")
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)  # as training does on the CPU
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else []) if args.devices == "auto" \
        else [d.strip() for d in args.devices.split(",") if d.strip()]
    methods = ["fast", "naive"] + (["reference"] if args.with_reference else [])
    steps_per_epoch = math.ceil(ID_CONCEPTS / args.n)
    schedule_steps = PAPER_EPOCHS * steps_per_epoch
    validations = PAPER_EPOCHS // VAL_EVERY + 1

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    rows, results = [], {"n": args.n, "in_dim": args.in_dim, "torch": torch.__version__, "load_avg_1min": load,
                         "cpu_threads": torch.get_num_threads(), "machine": platform.processor() or platform.machine(),
                         "schedule_steps": schedule_steps, "devices": {}}
    for name in devices:
        device = torch.device(name)
        if device.type == "cuda" and not torch.cuda.is_available():
            print(f"skipping {name}: CUDA is not available", file=sys.stderr)
            continue
        per, speedups = compare(device, methods, args.n, args.in_dim, args.repeats, args.naive_repeats, args.warmup)
        agreement = loss_agreement(device, min(args.n, 16), args.in_dim)
        val_s = validation_seconds(device, args.in_dim)
        fast = per["fast"]["step_s"]
        summary = {
            "methods": per,
            "speedup_vs_naive": speedups["naive"],
            "speedups_interleaved": speedups,
            "loss_rel_diff_fast_vs_naive": agreement,
            "schedule_train_s": schedule_steps * fast,
            "schedule_train_s_naive": schedule_steps * per["naive"]["step_s"],
            "validation_pass_s": val_s,
            "schedule_total_s": schedule_steps * fast + validations * val_s,
        }
        if device.type == "cuda":
            summary["gpu"] = torch.cuda.get_device_name(device)
        results["devices"][name] = summary
        for method in methods:
            r = per[method]
            ratio = 1.0 if method == "fast" else speedups[method]
            rows.append(f"| {name} | {method} | {r['step_s'] * 1000:,.1f} | {ratio:,.1f}x "
                        f"| {_fmt_bytes(r['peak_bytes'])} | {_fmt_time(schedule_steps * r['step_s'])} |")

    print(f"\nTraining step (forward + backward + AdamW), n = {args.n}, in_dim {args.in_dim}, "
          f"torch {torch.__version__}, {results['cpu_threads']} CPU threads, load average at start "
          f"{load if load is None else round(load, 2)} on {os.cpu_count()} cores\n")
    print("| device | method | step (ms, median) | slower than fast (interleaved) | peak memory | est. 1,001 epochs |")
    print("|---|---|---:|---:|---:|---:|")
    print("\n".join(rows))
    for name, summary in results["devices"].items():
        print(f"\n{name}: fast is {summary['speedup_vs_naive']:.1f}x faster per step than the released all-pairs "
              f"expansion (same loss, relative difference {summary['loss_rel_diff_fast_vs_naive']:.1e}); "
              f"paper schedule ({schedule_steps:,} steps) ~ {_fmt_time(summary['schedule_train_s'])} of steps "
              f"+ {validations} validations x {_fmt_time(summary['validation_pass_s'])} "
              f"= ~{_fmt_time(summary['schedule_total_s'])} (store reads not included)")
    if args.output:
        write_figures(args.output, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
