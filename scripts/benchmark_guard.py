#!/usr/bin/env python
"""Benchmark where a LatentGuard.check() spends its time, and what adding concepts costs.

Setup: the real ViT-L/14 text architecture (the CLIPTextConfig of openai/clip-vit-large-patch14:
hidden 768, 12 layers, 12 heads, MLP 3072, vocab 49408, 77 positions) with random weights, the
Embedding Mapping Layer at its released size (1.31 M parameters, random weights), and a
578-concept blacklist (the size of CoPro's ID concepts; synthetic texts). Random weights cost the
same as trained ones, and nothing is downloaded.

The 578 concept vectors are random (encoding them once costs 578 encoder passes, minutes on a CPU,
and their values do not change the cost of scoring; --encode-blacklist encodes them for real).

Measured (medians of --repeats interleaved rounds, after a warm-up):

* check(): the whole call on --prompts prompts (explain off, and on), split into the encoder
  (``encoder.encode``) and the mapping layer (``logit_matrix`` against all concepts). Target: the
  mapping layer is <= 10% of check() on a CPU.
* add_concepts(): adding 10 concepts to the 578-concept blacklist (concept cache off, so they are
  really encoded) against encoding the same 10 texts directly. Target: adding costs only the
  encoding (the blacklist's existing vectors are not recomputed).
* long prompts (optional, --long-prompts N): check() with the long-prompt option on ~150-token
  prompts (3 windows each) against the default truncation.

Prints a markdown table; --output writes every figure as JSON. CPU timings on a shared machine
are noisy: compare ratios, rerun on a quiet machine for absolute figures.

  python scripts/benchmark_guard.py                      # ~2-4 minutes on 2 CPU cores
  python scripts/benchmark_guard.py --prompts 1000 --device cuda --output runs/bench_guard.json
"""
from __future__ import annotations

import argparse
import inspect
import os
import platform
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from _bench import vit_l14_text_encoder, write_figures  # noqa: E402

N_CONCEPTS = 578
SUBJECTS = ["man", "woman", "child", "soldier", "dragon", "robot", "crowd", "cat", "horse", "old car", "ship", "castle"]
ACTIONS = ["standing in", "running through", "fighting in", "sleeping in", "painting", "burning", "flying over"]
PLACES = ["a ruined city", "a sunny meadow", "a dark forest", "the street at night", "a kitchen", "the desert"]
STYLES = ["oil painting", "photo, 35mm", "digital art, trending on artstation", "watercolor", "cinematic lighting, 8k"]
CONCEPT_WORDS = ["blood", "knife", "gun", "war", "drug", "fire", "skull", "bomb", "prison", "riot", "wound", "corpse",
                 "weapon", "attack", "violent", "dead", "scream", "torture", "explosion", "cocaine", "naked", "hate"]


def make_prompts(n: int, seed: int = 0, long: bool = False) -> list[str]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        parts = [f"{rng.choice(SUBJECTS)} {rng.choice(ACTIONS)} {rng.choice(PLACES)}" for _ in range(20 if long else 1)]
        out.append(", ".join(parts + [rng.choice(STYLES), f"#{i}"]))
    return out


def make_concepts(n: int, seed: int = 1) -> list[str]:
    rng = random.Random(seed)
    concepts: list[str] = []
    while len(concepts) < n:
        concept = " ".join(rng.sample(CONCEPT_WORDS, rng.choice([1, 2, 2, 3]))) + f" {len(concepts)}"
        concepts.append(concept)
    return concepts


class PresetConcepts:
    """The encoder, except that the initial blacklist's vectors are given (random) instead of encoded.

    Encoding 578 concepts through ViT-L/14 takes minutes on a CPU and is not what is measured here
    (their values do not change the cost of scoring); any other text goes to the real encoder.
    """

    def __init__(self, encoder, concepts: list[str], vectors) -> None:
        self._encoder = encoder
        self._preset = dict(zip(concepts, vectors))

    def encode_concepts(self, concepts, batch_size: int = 64):
        import torch

        if all(c in self._preset for c in concepts):
            return torch.stack([self._preset[c] for c in concepts])
        return self._encoder.encode_concepts(concepts, batch_size=batch_size)

    def __getattr__(self, name: str):
        return getattr(self._encoder, name)


def run(args: argparse.Namespace) -> dict:
    import torch

    from latentguard.encoders.precision import resolve_device
    from latentguard.model import EmbeddingMappingLayer

    device = resolve_device(args.device)
    sync = (lambda: torch.cuda.synchronize()) if device.type == "cuda" else (lambda: None)
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["LATENTGUARD_HOME"] = tmp  # no pollution of the user's concept cache
        started = time.perf_counter()
        encoder = vit_l14_text_encoder(str(device), args.dtype, Path(tmp) / "tokenizer")
        torch.manual_seed(0)
        mapping = EmbeddingMappingLayer().to(device).eval()
        concepts = make_concepts(N_CONCEPTS)
        prompts = make_prompts(args.prompts)
        load_s = time.perf_counter() - started

        try:
            from latentguard.guard import LatentGuard
        except ImportError:  # pragma: no cover - guard.py not there: time the pieces directly
            LatentGuard = None

        started = time.perf_counter()
        if args.encode_blacklist:
            concept_vectors = encoder.encode_concepts(concepts, batch_size=args.batch_size)
        else:
            concept_vectors = torch.randn(N_CONCEPTS, encoder.hidden_size)
        blacklist_s = time.perf_counter() - started if args.encode_blacklist else float("nan")
        guard = None
        if LatentGuard is not None:
            guard = LatentGuard(mapping, PresetConcepts(encoder, concepts, concept_vectors), concepts, device=device,
                                batch_size=args.batch_size, cache_concepts=False)
        concept_vectors = concept_vectors.to(device)

        # -------------------------------------------------------------- check(): encoder vs mapping
        # Interleaved rounds (encode, map, check, ...): on a shared machine the load drifts, and
        # shares computed within a round are far steadier than ratios of separately timed medians.
        few = prompts[:4]

        def encode_all():
            return encoder.encode(prompts, batch_size=args.batch_size)

        def mapping_only(emb):
            with torch.inference_mode():
                for s in range(0, len(prompts), args.batch_size):
                    mapping.logit_matrix(emb[s : s + args.batch_size].to(device), concept_vectors)

        def check(explain: bool):
            if guard is not None:
                guard.check(prompts, explain=explain)

        def clock(fn, *a):
            start = time.perf_counter()
            out = fn(*a)
            sync()
            return time.perf_counter() - start, out

        encoder.encode(few)  # warm-up
        if guard is not None:
            guard.check(few, explain=True)
        rounds = []
        for _ in range(args.repeats):
            t_encode, emb = clock(encode_all)
            t_map, _ = clock(mapping_only, emb)
            t_check, _ = clock(check, False)
            t_explain, _ = clock(check, True)
            if guard is None:
                t_check, t_explain = t_encode + t_map, float("nan")
            rounds.append((t_encode, t_map, t_check, t_explain))
        med = [statistics.median(r[i] for r in rounds) for i in range(4)]
        n = len(prompts)
        figures = {
            "prompts": n, "concepts": N_CONCEPTS, "batch_size": args.batch_size, "repeats": args.repeats,
            "encoder_ms_per_prompt": 1e3 * med[0] / n,
            "mapping_ms_per_prompt": 1e3 * med[1] / n,
            "check_ms_per_prompt": 1e3 * med[2] / n,
            "check_explain_ms_per_prompt": 1e3 * med[3] / n,
            "mapping_share_of_check": statistics.median(r[1] / r[2] for r in rounds),
            "encoder_share_of_check": statistics.median(r[0] / r[2] for r in rounds),
            "projected_check_s_per_1000_prompts": med[2] / n * 1000,
            "rounds_s": [list(r) for r in rounds],
            "setup_load_s": load_s, "blacklist_encode_s": blacklist_s,
            "used_latentguard": guard is not None,
        }

        # ------------------------------------------------------------ adding 10 concepts to 578
        new = [f"new concept {i} {CONCEPT_WORDS[i]}" for i in range(10)]
        add_times, remove_times, encode_times = [], [], []
        for _ in range(args.repeats + 1):  # the first round is a warm-up
            encode_times.append(clock(encoder.encode_concepts, new, args.batch_size)[0])
            if guard is not None:
                add_times.append(clock(guard.add_concepts, new)[0])
                remove_times.append(clock(guard.remove_concepts, new)[0])
        encode10_s = statistics.median(encode_times[1:])
        add_s = statistics.median(add_times[1:]) if add_times else float("nan")
        remove_s = statistics.median(remove_times[1:]) if remove_times else float("nan")
        figures.update({"add_10_concepts_ms": 1e3 * add_s, "encode_10_texts_ms": 1e3 * encode10_s,
                        "add_over_encode": (statistics.median(a / e for a, e in zip(add_times[1:], encode_times[1:]))
                                            if add_times else float("nan")),
                        "remove_10_concepts_ms": 1e3 * remove_s})

        # ------------------------------------------------------------------------ long prompts
        if (args.long_prompts and guard is not None
                and "long_prompts" in inspect.signature(LatentGuard.__init__).parameters):
            long = make_prompts(args.long_prompts, seed=2, long=True)
            n_tokens = [len(encoder._content_ids(p)) + 2 for p in long]
            windows = sum(len(encoder.window_ids(p)) for p in long)
            pairs = []
            for _ in range(max(1, args.repeats - 1)):
                guard.long_prompts = False
                truncated = clock(guard.check, long, False)[0]
                guard.long_prompts = True
                pairs.append((truncated, clock(guard.check, long, False)[0]))
            guard.long_prompts = False
            truncated_s = statistics.median(p[0] for p in pairs)
            windowed_s = statistics.median(p[1] for p in pairs)
            figures.update({"long_prompts": len(long), "long_mean_tokens": statistics.mean(n_tokens),
                            "long_windows_per_prompt": windows / len(long),
                            "long_truncated_ms_per_prompt": 1e3 * truncated_s / len(long),
                            "long_windowed_ms_per_prompt": 1e3 * windowed_s / len(long)})
    figures["environment"] = {
        "device": str(device), "dtype": args.dtype, "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
        "platform": platform.platform(), "python": platform.python_version(),
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
    }
    return figures


def table(f: dict) -> str:
    rows = [
        ("encoder (ViT-L/14 text, 12 layers)", f"{f['encoder_ms_per_prompt']:.2f} ms/prompt",
         f"{100 * f['encoder_share_of_check']:.1f}% of check()"),
        (f"mapping layer vs {f['concepts']} concepts", f"{f['mapping_ms_per_prompt']:.3f} ms/prompt",
         f"{100 * f['mapping_share_of_check']:.1f}% of check() (target <= 10%)"),
        ("check() total, explain off", f"{f['check_ms_per_prompt']:.2f} ms/prompt",
         f"{f['projected_check_s_per_1000_prompts']:.1f} s per 1,000 prompts"),
        ("check() total, explain on", f"{f['check_explain_ms_per_prompt']:.2f} ms/prompt", ""),
        (f"add 10 concepts to {f['concepts']}", f"{f['add_10_concepts_ms']:.1f} ms",
         f"{f['add_over_encode']:.2f}x encoding 10 texts ({f['encode_10_texts_ms']:.1f} ms; target ~1x)"),
        ("remove 10 concepts", f"{f['remove_10_concepts_ms']:.2f} ms", ""),
    ]
    if "long_prompts" in f:
        rows.append((f"check() ~{f['long_mean_tokens']:.0f}-token prompts, truncated (default)",
                     f"{f['long_truncated_ms_per_prompt']:.2f} ms/prompt", ""))
        rows.append(("check() same prompts, long_prompts=True", f"{f['long_windowed_ms_per_prompt']:.2f} ms/prompt",
                     f"{f['long_windows_per_prompt']:.1f} windows per prompt"))
    env = f["environment"]
    if f["blacklist_encode_s"] == f["blacklist_encode_s"]:  # not NaN
        rows.append((f"encode the {f['concepts']}-concept blacklist once", f"{f['blacklist_encode_s']:.1f} s", ""))
    head = (f"{f['prompts']} prompts x {f['concepts']} concepts, batch {f['batch_size']}, median of {f['repeats']}; "
            f"{env['device']} "
            f"({env['gpu'] or str(env['cpu_count']) + ' CPUs, ' + str(env['torch_threads']) + ' torch threads'}), "
            f"{env['dtype']}, torch {env['torch']}")
    lines = [head, "", "| what | time | note |", "|---|---|---|"]
    lines += [f"| {a} | {b} | {c} |" for a, b, c in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     epilog="Random weights, synthetic prompts and concepts: nothing is downloaded.")
    parser.add_argument("--prompts", type=int, default=64,
                        help="prompts per check() (default 64: ViT-L/14 costs ~0.2-0.5 s a prompt on 2 CPU cores; "
                             "1000 on a GPU)")
    parser.add_argument("--batch-size", type=int, default=64, help="prompts per encoder/scoring batch (default 64)")
    parser.add_argument("--repeats", type=int, default=3,
                        help="timed rounds, medians reported (default 3; long prompts: one round fewer)")
    parser.add_argument("--device", default="cpu", help="cpu (default), cuda, cuda:N or auto")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"],
                        help="encoder precision (float16 needs a GPU)")
    parser.add_argument("--long-prompts", type=int, default=8, metavar="N",
                        help="also time N ~150-token prompts with and without windows (0 = skip; default 8)")
    parser.add_argument("--encode-blacklist", action="store_true",
                        help="encode the 578 concepts for real (minutes on a CPU) instead of using random vectors")
    parser.add_argument("--output", help="write all figures as JSON here")
    args = parser.parse_args(argv)
    if args.prompts <= 0 or args.batch_size <= 0 or args.repeats <= 0 or args.long_prompts < 0:
        parser.error("--prompts, --batch-size and --repeats must be positive, --long-prompts >= 0")
    figures = run(args)
    print(table(figures))
    if args.output:
        write_figures(args.output, figures)
    return 0


if __name__ == "__main__":
    sys.exit(main())
