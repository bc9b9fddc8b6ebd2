#!/usr/bin/env python
"""The deployment defences, measured: text written to slip past the encoder, with and without them.

A guard is trained on the real CoPro sample with the real all-MiniLM-L6-v2 encoder (prepare.py and
main.py as real processes; main.py calibrates its threshold on the carved validation split). Its
held-out unsafe test prompts (ID against the ID concepts, OOD against the OOD ones) are then
perturbed the ways an attacker writes them: Cyrillic look-alike letters, fullwidth letters, and one
to three real COCO captions in front. Each variant's detection rate at the calibrated threshold is
reported with the defences off (the prompt as written, as the released code scores it) and on
(``inference.normalize_text`` + ``inference.split_sentences``: also the normalised form and each
sentence, the worst deciding), beside the false-positive rate on real COCO captions and on CoPro's
safe test prompts.

    python scripts/measure_defences.py --workdir /tmp/defences            # ~10 minutes on 2 CPU cores
    python scripts/measure_defences.py --epochs 60 --seeds 0 1 2
"""
from __future__ import annotations

import argparse
import csv
import json
import random
import sys
import time
import zlib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))
from _bench import write_figures  # noqa: E402
from measure_minilm import SAMPLE, minilm_dir, run  # noqa: E402

COCO = ROOT / "tests" / "fixtures" / "benchmarks" / "coco_30k_sample.csv"
# Latin letters and the Cyrillic letters that look the same (what an attacker swaps in).
HOMOGLYPHS = {"a": "а", "c": "с", "e": "е", "i": "і", "o": "о", "p": "р", "x": "х", "y": "у", "s": "ѕ",
              "A": "А", "B": "В", "C": "С", "E": "Е", "H": "Н", "K": "К", "M": "М", "O": "О", "P": "Р", "T": "Т"}


def homoglyphs(text: str) -> str:
    return "".join(HOMOGLYPHS.get(ch, ch) for ch in text)


def fullwidth(text: str) -> str:
    return "".join(chr(ord(ch) + 0xFEE0) if "!" <= ch <= "~" else ("\u3000" if ch == " " else ch) for ch in text)


def with_preamble(text: str, captions: list[str], k: int, rng: random.Random) -> str:
    lead = [c.strip().rstrip(".") + "." for c in rng.sample(captions, k)]
    return " ".join(lead + [text])


def coco_captions() -> list[str]:
    with open(COCO, encoding="utf-8", newline="") as handle:
        return [row["prompt"].strip() for row in csv.DictReader(handle) if row["prompt"].strip()]


def detection(guard, prompts: list[str]) -> float:
    return sum(v.unsafe for v in guard.check(prompts, explain=False)) / len(prompts)


def measure(checkpoint: Path, data: dict, captions: list[str], seed: int) -> dict:
    from latentguard.encoders import load_encoder
    from latentguard.guard import LatentGuard

    encoder = load_encoder(str(minilm_dir()), "hf", device="cpu")
    half = len(captions) // 2  # preambles come from one half, false positives are measured on the other
    lead, benign = captions[:half], captions[half:]
    out: dict = {}
    for domain, split in (("ID", "ID_test_data"), ("OOD", "OOD_test_data")):
        unsafe = [e["unsafe_prompt"] for e in data[split]]
        safe = [e["safe_prompt"] for e in data[split]]
        perturb = {"as written": lambda t: t, "homoglyphs": homoglyphs, "fullwidth": fullwidth}
        for k in (1, 2, 3):
            perturb[f"{k} COCO caption{'s' if k > 1 else ''} in front"] = \
                lambda t, k=k: with_preamble(t, lead, k, random.Random(zlib.crc32(f"{seed} {k} {t}".encode())))
        rows = {}
        for defences in (False, True):
            guard = LatentGuard.from_pretrained(checkpoint, encoder, data[f"{domain}_concepts"], threshold="auto",
                                                normalize_text=defences, split_sentences=defences, batch_size=64)
            key = "on" if defences else "off"
            for name, change in perturb.items():  # the same change to the unsafe and to the safe prompts
                rows.setdefault(name, {})[key] = {"detection": detection(guard, [change(t) for t in unsafe]),
                                                  "fpr": detection(guard, [change(t) for t in safe])}
            rows.setdefault("COCO captions", {})[key] = {"detection": None, "fpr": detection(guard, benign)}
            out.setdefault("threshold", {})[domain] = guard.threshold
        out[domain] = rows
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", type=Path, default=Path("runs/defences"))
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    args = parser.parse_args()
    work = args.workdir.resolve()
    work.mkdir(parents=True, exist_ok=True)
    data = json.loads(SAMPLE.read_text(encoding="utf-8"))
    captions = coco_captions()
    common = ["--dataset", str(SAMPLE), "--encoder", str(minilm_dir()), "--encoder-type", "hf", "--device", "cpu",
              "--store-dir", str(work / "stores")]
    started = time.perf_counter()
    run("prepare.py", *common, cwd=work)
    results = {}
    for seed in args.seeds:
        out = work / f"seed{seed}"
        if not (out / "model_parameters.pth").is_file():
            run("main.py", *common, "--epochs", str(args.epochs), "--seed", str(seed), "--val-every",
                str(args.epochs), "--output-dir", str(out), "--no-progress", cwd=work)
        results[seed] = measure(out / "model_parameters.pth", data, captions, seed)
    print(f"measured in {time.perf_counter() - started:.0f} s: all-MiniLM-L6-v2, {args.epochs} epochs, seeds "
          f"{args.seeds}; thresholds {[r['threshold'] for r in results.values()]}")
    def mean(domain: str, name: str, key: str, what: str) -> str:
        values = [r[domain][name][key][what] for r in results.values()]
        return "-" if values[0] is None else f"{sum(values) / len(values):.3f}"

    for domain in ("ID", "OOD"):
        print(f"\n{domain}: share flagged, mean over seeds (detection on unsafe test prompts, FPR on their safe "
              "twins changed the same way, or on COCO captions)\n")
        print("| prompts | detection, off | detection, on | FPR, off | FPR, on |\n|---|---:|---:|---:|---:|")
        for name in results[args.seeds[0]][domain]:
            print(f"| {name} | {mean(domain, name, 'off', 'detection')} | {mean(domain, name, 'on', 'detection')} | "
                  f"{mean(domain, name, 'off', 'fpr')} | {mean(domain, name, 'on', 'fpr')} |")
    write_figures(work / "defences.json", {"epochs": args.epochs, "seeds": args.seeds, "results": results})
    return 0


if __name__ == "__main__":
    sys.exit(main())
