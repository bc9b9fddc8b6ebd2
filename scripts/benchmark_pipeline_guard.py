#!/usr/bin/env python
"""Benchmark what the pipeline guard's boundary checks add to a generation (latentguard/pipeline).

1. End to end: an SD 1.x-shaped diffusers pipeline with the real ViT-L/14 text tower (random
   weights, the real CLIP tokenizer) and a tiny UNet (cross-attention width 768, 8x8 latents, so
   the text encoder dominates and the boundary's cost shows), called unguarded, guarded by a guard
   that costs nothing (only the hooks, tracing and re-tokenization are left), and guarded by a
   LatentGuard sharing the text encoder (--concepts concepts, random mapping layer; the one-pass
   path). The boundary's cost is per call (plus a tensor comparison per step), not per UNet FLOP.
2. Tracing at real sizes: recording the text encoders' outputs and tracing the first denoiser
   call's conditioning back to them, for the tensor shapes of SDXL (CLIP-L + CLIP-G, every hidden
   layer kept), SD3 (+ T5-XXL at 256 tokens) and Flux (T5-XXL at 512 tokens, bf16), and the
   per-step check of a later call (an equality test against the first step's tensor).

Medians of --repeats interleaved rounds after a warm-up. CPU timings on a shared machine are noisy:
compare ratios, rerun on a quiet machine for absolute figures.

  python scripts/benchmark_pipeline_guard.py                 # ~1-2 minutes on 2 CPU cores
  python scripts/benchmark_pipeline_guard.py --output runs/bench_pipeline_guard.json
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from _bench import peak_rss_mb, vit_l14_text_encoder, write_figures  # noqa: E402


def _median_ms(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def end_to_end(repeats: int, steps: int, concepts_n: int) -> dict:
    import diffusers

    from latentguard.guard import LatentGuard, Verdict
    from latentguard.model import EmbeddingMappingLayer
    from latentguard.pipeline import guard_pipeline

    encoder = vit_l14_text_encoder("cpu", "float32", Path(tempfile.mkdtemp()))
    torch.manual_seed(0)
    unet = diffusers.UNet2DConditionModel(block_out_channels=(4, 8), layers_per_block=1, sample_size=8, in_channels=4,
                                          out_channels=4, cross_attention_dim=768, norm_num_groups=2,
                                          down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                                          up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"))
    vae = diffusers.AutoencoderKL(block_out_channels=[4, 8], latent_channels=4, norm_num_groups=2,
                                  down_block_types=["DownEncoderBlock2D"] * 2, up_block_types=["UpDecoderBlock2D"] * 2)
    scheduler = diffusers.DDIMScheduler(steps_offset=1, clip_sample=False)
    pipe = diffusers.StableDiffusionPipeline(vae=vae, text_encoder=encoder.model, tokenizer=encoder.tokenizer,
                                             unet=unet, scheduler=scheduler, safety_checker=None,
                                             feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)

    class Free:  # checks nothing worth timing: what is left is the boundary's own cost
        def __init__(self, own):
            self.encoder, self.long_prompts = own, False

        def check(self, texts):
            return [Verdict(prompt=t, unsafe=False, score=0.0, concept="-") for t in texts]

    free = guard_pipeline(pipe, Free(vit_l14_text_encoder("cpu", "float32", Path(tempfile.mkdtemp()))))
    torch.manual_seed(0)
    concepts = [f"concept number {i}" for i in range(concepts_n)]
    shared = LatentGuard(EmbeddingMappingLayer(), encoder, concepts, cache_concepts=False, threshold=1e9)
    one_pass = guard_pipeline(pipe, shared)
    call = dict(prompt="a photo of a cat on a sofa", negative_prompt="blurry", height=64, width=64,
                num_inference_steps=steps, output_type="latent")
    for fn in (pipe, free, one_pass):
        fn(**call)  # warm-up
    rounds = {"unguarded": [], "boundary only": [], "shared LatentGuard (one pass)": []}
    for _ in range(repeats):
        for name, fn in zip(rounds, (pipe, free, one_pass)):
            rounds[name].append(_median_ms(lambda fn=fn: fn(**call), 1))
    figures = {name: statistics.median(v) for name, v in rounds.items()}
    figures["boundary overhead ms"] = figures["boundary only"] - figures["unguarded"]
    return figures


def tracing(repeats: int) -> dict:
    from latentguard.pipeline.provenance import CHECKED, NEGATIVE, Provenance

    torch.manual_seed(0)
    roles = [NEGATIVE, CHECKED]
    shapes = {
        "SDXL": {"clip_l": (13, 2, 77, 768), "clip_g": (33, 2, 77, 1280), "pooled": (2, 1280)},
        "SD3": {"clip_l": (13, 2, 77, 768), "clip_g": (33, 2, 77, 1280), "pooled": (2, 1280),
                "t5": (1, 2, 256, 4096)},
        "Flux": {"pooled": (1, 768), "t5": (1, 1, 512, 4096)},
    }
    out = {}
    for name, parts in shapes.items():
        dtype = torch.bfloat16 if name == "Flux" else torch.float16
        rows = roles[-parts["pooled"][0]:]
        outputs = {k: torch.randn(*s, dtype=dtype) for k, s in parts.items()}
        hidden = {k: tuple(v) for k, v in outputs.items() if k != "pooled"}
        if name == "SDXL":
            cond = torch.cat([hidden["clip_l"][-2], hidden["clip_g"][-2]], dim=-1)
        elif name == "SD3":
            clip = torch.nn.functional.pad(torch.cat([hidden["clip_l"][-2], hidden["clip_g"][-2]], dim=-1), (0, 2048))
            cond = torch.cat([clip, hidden["t5"][-1]], dim=1)
        else:
            cond = hidden["t5"][-1]

        def record():
            provenance = Provenance()
            for k, v in outputs.items():
                provenance.record({"hidden_states": tuple(v)} if k != "pooled" else {"pooled": v}, rows)
            return provenance

        assert record().roles(cond) == rows
        records, traces = [], []
        for _ in range(repeats):
            start = time.perf_counter()
            provenance = record()
            records.append((time.perf_counter() - start) * 1000)
            start = time.perf_counter()
            provenance.roles(cond)  # the first call also builds the index of recorded vectors
            traces.append((time.perf_counter() - start) * 1000)
        later = cond.clone()
        out[name] = {
            "record ms": statistics.median(records),
            "trace first call ms": statistics.median(traces),
            "later step ms": _median_ms(lambda: torch.equal(later, cond), repeats),
            "conditioning": list(cond.shape),
            "copies MB": sum(v.numel() * v.element_size() for v in outputs.values()) / 2**20,
        }
    return out


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--concepts", type=int, default=64, help="the shared guard's blacklist size (encoded for real)")
    parser.add_argument("--output", help="write every figure as JSON here")
    args = parser.parse_args(argv)
    figures = {"end to end (ms per call)": end_to_end(args.repeats, args.steps, args.concepts),
               "tracing": tracing(args.repeats)}
    e2e = figures["end to end (ms per call)"]
    print(f"| call ({args.steps} steps, ViT-L/14 text tower, tiny UNet) | ms |\n|---|---|")
    for name, value in e2e.items():
        print(f"| {name} | {value:.1f} |")
    print("\n| tracing | record ms | first call ms | later step ms | conditioning | CPU copies MB |")
    print("|---|---|---|---|---|---|")
    for name, f in figures["tracing"].items():
        print(f"| {name} | {f['record ms']:.1f} | {f['trace first call ms']:.1f} | {f['later step ms']:.2f} | "
              f"{f['conditioning']} | {f['copies MB']:.0f} |")
    figures["peak RSS MB"] = peak_rss_mb()
    print(f"\npeak RSS {figures['peak RSS MB']:.0f} MB")
    if args.output:
        write_figures(args.output, figures)


if __name__ == "__main__":
    main()
