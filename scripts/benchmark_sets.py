"""What `latentguard benchmark` itself costs on a DiffusionDB-sized set (2M prompts), beside the scoring.

Reading a parquet file's prompt column and keeping each distinct text once, the metrics over every
row, the per-prompt CSV and the resumable state: the seconds and the peak memory of each, on a
synthetic file shaped like DiffusionDB's metadata.parquet (random prompts, ~10% repeats). Scoring
throughput is scripts/benchmark_guard.py's job (the harness adds nothing to it per prompt).

    python scripts/benchmark_sets.py --rows 2000000 --out runs/bench_sets.json
"""
from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from _bench import peak_rss_mb, write_figures  # noqa: E402

WORDS = ("castle cat neon city portrait oil painting dragon forest sunset cyberpunk girl robot ocean "
         "mountain detailed artstation octane render by greg rutkowski trending 4k photo of a in the").split()


def synthetic_parquet(path: Path, rows: int, seed: int = 0) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = random.Random(seed)
    distinct = int(rows * 0.9)
    pool = [" ".join(rng.choices(WORDS, k=rng.randint(6, 30))) + f" {i}" for i in range(distinct)]
    prompts = pool + [pool[rng.randrange(distinct)] for _ in range(rows - distinct)]
    rng.shuffle(prompts)
    pq.write_table(pa.table({"prompt": prompts, "prompt_nsfw": [rng.random() for _ in prompts]}), path)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=2_000_000)
    parser.add_argument("--out", default=None, help="write the figures as JSON here")
    args = parser.parse_args(argv)

    import numpy as np

    from latentguard.eval.benchmark.loaders import load_set
    from latentguard.eval.benchmark.registry import SETS
    from latentguard.eval.benchmark.report import write_prompt_csv
    from latentguard.eval.benchmark.scorers import MethodOutput
    from latentguard.eval.benchmark.state import _pack, _save_npz, content_id
    from latentguard.eval.benchmark.tables import Scored, build_tables

    class LG:
        key, graded = "latent_guard", True

    figures: dict = {"rows": args.rows, "rss_mb_at_start": round(peak_rss_mb(), 1)}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        import multiprocessing

        child = multiprocessing.get_context("spawn").Process(target=synthetic_parquet,
                                                             args=(tmp / "metadata.parquet", args.rows))
        child.start()  # made in a child process, so this one's peak memory is the harness's alone
        child.join()
        rss_before = peak_rss_mb()
        started = time.perf_counter()
        benign = load_set(SETS["diffusiondb"], tmp / "metadata.parquet", downloaded=False)
        figures["load_and_dedup_s"] = round(time.perf_counter() - started, 2)
        figures["distinct_texts"] = len(benign.texts)
        figures["rss_mb_added_by_load"] = round(peak_rss_mb() - rss_before, 1)
        rng = np.random.default_rng(0)
        started = time.perf_counter()
        content_id(benign.texts)
        figures["content_id_s"] = round(time.perf_counter() - started, 2)
        n = len(benign.texts)
        out = {"latent_guard": MethodOutput(rng.normal(0, 1, n), rng.random(n) < 0.05, rng.integers(0, 578, n))}
        i2p_texts = [f"unsafe {i}" for i in range(4703)]
        unsafe = Scored(type(benign)("i2p", SETS["i2p"], i2p_texts, np.arange(4703), np.ones(4703, np.int8)),
                        {"latent_guard": MethodOutput(rng.normal(1, 1, 4703), rng.random(4703) < 0.4,
                                                      np.zeros(4703, np.int64))})
        scored = {"i2p": unsafe, "diffusiondb": Scored(benign, out)}
        started = time.perf_counter()
        build_tables(scored, ["diffusiondb"], [LG()])
        figures["metrics_s"] = round(time.perf_counter() - started, 2)
        started = time.perf_counter()
        write_prompt_csv(tmp / "scores_diffusiondb.csv", scored["diffusiondb"], [f"c{i}" for i in range(578)])
        figures["per_prompt_csv_s"] = round(time.perf_counter() - started, 2)
        figures["per_prompt_csv_mb"] = round((tmp / "scores_diffusiondb.csv").stat().st_size / 2**20, 1)
        started = time.perf_counter()
        _save_npz(tmp / "state.npz", _pack(out))
        figures["state_save_s"] = round(time.perf_counter() - started, 2)
        figures["peak_rss_mb"] = round(peak_rss_mb(), 1)
    for key, value in figures.items():
        print(f"{key:>24}: {value}")
    if args.out:
        write_figures(args.out, figures)
    return figures


if __name__ == "__main__":
    main()
