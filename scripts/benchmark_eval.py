#!/usr/bin/env python
"""Benchmark a full Table 1 evaluation pass: our batched path vs the released per-prompt loop.

What is timed is what test.py does once the embedding store exists: read every distinct prompt's
[78, 768] embedding from an fp16 store and score it against all concepts of its domain (578 ID,
145 OOD), keeping the best logit. The encoder is not involved (prepare.py did that once).

* batched (ours): ``latentguard.eval.run.score_prompts``: batches of --batch-size prompts streamed
  from the store (the next batch is read while this one is scored), each batch against all
  concepts at once through ``logit_matrix`` (keys/values once per prompt).
* released loop: one prompt at a time, the prompt repeated once per concept and the aligned pair
  forward run on the repeat (what the released inference/test code does), so keys/values are
  recomputed |C| times. Timed on --loop-prompts prompts and extrapolated linearly.

The store holds random fp16 embeddings (speed does not depend on the values) in a temporary
directory (or --store-dir). Full CoPro evaluation scores about 37,000 distinct ID prompts (test:
8,172 unsafe + 8,172 safe + 2 x 5,330 variants; validation: 3,000 + 3,000 + variants) and about
32,500 OOD prompts (9,826 + 9,826 + 2 x 6,447): the defaults. On a CPU the default is a tenth of
that (fp16 store of ~0.8 GB instead of ~8 GB) and full-size figures are extrapolated; pass
--id-prompts/--ood-prompts to change it. Prints a markdown table; --output writes JSON.

  python scripts/benchmark_eval.py --output runs/bench_eval.json
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from _bench import peak_rss_mb, write_figures  # noqa: E402

from latentguard.constants import EMBEDDING_ROWS  # noqa: E402

FULL_ID_PROMPTS = 37_000
FULL_OOD_PROMPTS = 32_500


def build_store(path: Path, texts: list[str], hidden: int, chunk: int = 1024):
    """A fp16 store of random embeddings for ``texts``, written in chunks (memory stays flat)."""
    import torch

    from latentguard.store.store import EmbeddingStore

    store = EmbeddingStore(path, identity="benchmark:random", hidden_size=hidden, dtype="float16", create=True)
    generator = torch.Generator().manual_seed(0)
    for start in range(0, len(texts), chunk):
        batch = texts[start : start + chunk]
        store.add(batch, torch.randn(len(batch), EMBEDDING_ROWS, hidden, generator=generator,
                                     dtype=torch.float32).half())
    return store


def sync(device) -> None:
    import torch

    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def released_loop_seconds(model, store, texts: list[str], concept_emb, device) -> tuple[float, "object"]:
    """One prompt at a time, repeated once per concept, aligned-pair forward: the released loop."""
    import torch

    concepts = concept_emb.to(device)
    best = []
    with torch.inference_mode():
        emb = store.get(texts[:1]).to(device)
        model(emb[0].unsqueeze(0).expand(concepts.shape[0], -1, -1), concepts)  # warm-up
        sync(device)
        started = time.perf_counter()
        for text in texts:
            prompt = store.get([text]).to(device)[0]
            repeated = prompt.unsqueeze(0).repeat(concepts.shape[0], 1, 1)
            best.append(model(repeated, concepts).max())
        sync(device)
        seconds = time.perf_counter() - started
    return seconds, torch.stack(best).cpu()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--id-prompts", type=int, help=f"distinct ID prompts (default {FULL_ID_PROMPTS} on a GPU, "
                        "a tenth on a CPU)")
    parser.add_argument("--ood-prompts", type=int, help=f"distinct OOD prompts (default {FULL_OOD_PROMPTS} on a GPU, "
                        "a tenth on a CPU)")
    parser.add_argument("--id-concepts", type=int, default=578)
    parser.add_argument("--ood-concepts", type=int, default=145)
    parser.add_argument("--batch-size", type=int, default=512, help="prompts per scoring batch (test.py default)")
    parser.add_argument("--loop-prompts", type=int, help="prompts timed through the released loop "
                        "(default 20 on a CPU, 300 on a GPU)")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--store-dir", help="where the temporary store goes (default: a temp dir, removed after)")
    parser.add_argument("--output", help="write the figures as JSON here")
    args = parser.parse_args(argv)

    import torch

    from latentguard.encoders.precision import resolve_device
    from latentguard.eval.run import score_prompts
    from latentguard.model import EmbeddingMappingLayer
    from latentguard.store.sources import concept_vectors

    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    gpu = device.type == "cuda"
    n_id = args.id_prompts or (FULL_ID_PROMPTS if gpu else FULL_ID_PROMPTS // 10)
    n_ood = args.ood_prompts or (FULL_OOD_PROMPTS if gpu else FULL_OOD_PROMPTS // 10)
    n_loop = args.loop_prompts or (300 if gpu else 20)
    hidden = 768
    domains = {"ID": ([f"id prompt {i}" for i in range(n_id)], [f"id concept {j}" for j in range(args.id_concepts)]),
               "OOD": ([f"ood prompt {i}" for i in range(n_ood)],
                       [f"ood concept {j}" for j in range(args.ood_concepts)])}
    all_texts = [t for prompts, concepts in domains.values() for t in concepts + prompts]

    torch.manual_seed(0)
    model = EmbeddingMappingLayer(in_dim=hidden).to(device).eval()
    with tempfile.TemporaryDirectory(dir=args.store_dir) as tmp:
        started = time.perf_counter()
        store = build_store(Path(tmp) / "store", all_texts, hidden)
        build_s = time.perf_counter() - started
        print(f"built a {store.disk_bytes() / 1e9:.2f} GB fp16 store of {len(store)} random embeddings in "
              f"{build_s:.1f} s (not part of the evaluation)", file=sys.stderr)

        # warm-up (kernel selection, allocator), then the timed passes
        warm_concepts = concept_vectors(store, domains["ID"][1])
        score_prompts(model, store, domains["ID"][0][: min(64, n_id)], warm_concepts, batch_size=64, device=device)

        rows, total_s, total_n = [], 0.0, 0
        for domain, (prompts, concepts) in domains.items():
            concept_emb = concept_vectors(store, concepts)
            lg, seconds = score_prompts(model, store, prompts, concept_emb, batch_size=args.batch_size,
                                           device=device)
            rows.append({"domain": domain, "prompts": len(prompts), "concepts": len(concepts), "seconds": seconds,
                         "ms_per_prompt": 1000 * seconds / len(prompts)})
            total_s += seconds
            total_n += len(prompts)

        started = time.perf_counter()  # store reads alone (page cache is warm now: best case)
        for start in range(0, len(domains["ID"][0]), args.batch_size):
            store.get(domains["ID"][0][start : start + args.batch_size])
        read_ms = 1000 * (time.perf_counter() - started) / len(domains["ID"][0])

        id_prompts, id_concepts = domains["ID"]
        loop_texts = id_prompts[:n_loop]
        concept_emb = concept_vectors(store, id_concepts)
        loop_s, loop_best = released_loop_seconds(model, store, loop_texts, concept_emb, device)
        ours, _ = score_prompts(model, store, loop_texts, concept_emb, batch_size=args.batch_size, device=device)
        agree = float((torch.from_numpy(ours.score).float() - loop_best.float()).abs().max())
        store.close()

    loop_ms = 1000 * loop_s / len(loop_texts)
    # The released loop's cost grows with |C|: extrapolate OOD from the ID per-concept cost.
    loop_full_s = (loop_ms / 1000) * (FULL_ID_PROMPTS + FULL_OOD_PROMPTS * args.ood_concepts / args.id_concepts)
    ours_full_s = sum(r["ms_per_prompt"] / 1000 * (FULL_ID_PROMPTS if r["domain"] == "ID" else FULL_OOD_PROMPTS)
                      for r in rows)
    result = {
        "device": str(device), "cpu_threads": torch.get_num_threads(), "platform": platform.platform(),
        "cpu_count": os.cpu_count(), "torch": torch.__version__, "batch_size": args.batch_size,
        "store_build_seconds": build_s, "batched": rows, "batched_total_seconds": total_s,
        "batched_total_prompts": total_n, "store_read_ms_per_prompt": read_ms,
        "released_loop": {"prompts": len(loop_texts), "concepts": len(id_concepts), "seconds": loop_s,
                          "ms_per_prompt": loop_ms},
        "max_abs_difference_vs_loop": agree,
        "full_copro_estimate_seconds": {"batched": ours_full_s, "released_loop": loop_full_s,
                                        "prompts": FULL_ID_PROMPTS + FULL_OOD_PROMPTS},
        "speedup_vs_released_loop": loop_ms / rows[0]["ms_per_prompt"],
        "peak_rss_mb": peak_rss_mb(),
    }
    print(f"\n## Evaluation pass ({device}, {torch.get_num_threads()} threads; store reads included; encoder "
          "excluded)\n")
    print("| path | prompts | concepts | seconds | ms / prompt |")
    print("|---|---:|---:|---:|---:|")
    for r in rows:
        print(f"| batched, {r['domain']} (batch {args.batch_size}) | {r['prompts']:,} | {r['concepts']} | "
              f"{r['seconds']:.2f} | {r['ms_per_prompt']:.3f} |")
    print(f"| released per-prompt loop, ID | {len(loop_texts):,} | {len(id_concepts)} | {loop_s:.2f} | {loop_ms:.3f} |")
    print(f"\nstore read alone: {read_ms:.3f} ms/prompt; batched vs loop max |difference| {agree:.2e}; "
          f"peak RSS {result['peak_rss_mb']:.0f} MB")
    print(f"\nFull CoPro evaluation (~{FULL_ID_PROMPTS + FULL_OOD_PROMPTS:,} distinct prompts, "
          f"{'measured' if (n_id, n_ood) == (FULL_ID_PROMPTS, FULL_OOD_PROMPTS) else 'extrapolated'}): "
          f"batched {ours_full_s:.1f} s vs released loop {loop_full_s:.0f} s "
          f"({loop_full_s / 60:.1f} min, extrapolated); ID speed-up x{result['speedup_vs_released_loop']:.1f}")
    if args.output:
        write_figures(args.output, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
