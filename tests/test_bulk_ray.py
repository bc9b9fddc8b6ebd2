"""Bulk scoring on Ray Data, on a local Ray instance (2 CPUs): ``latentguard score --engine ray`` gives the
local engine's rows, row for row; the documented ``map_batches(GuardBatchScorer, ...)`` example; a
worker whose guard differs from the driver's fails the run instead of writing anything."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from test_bulk_local import args, corpus, expected_rows, guard_for, snapshot, split_threshold  # noqa: F401

from latentguard.cli.score import main as score

ray = pytest.importorskip("ray")
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def local_ray(tmp_path_factory):
    """One local Ray instance for the module; workers import this checkout and stay offline."""
    env = {"PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1",
           "LATENTGUARD_HOME": str(tmp_path_factory.getbasetemp() / "lg_home")}
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, runtime_env={"env_vars": env})
    ray.data.DataContext.get_current().enable_progress_bars = False
    yield ray
    ray.shutdown()


def sorted_rows(directory: Path) -> list[dict]:
    return sorted(pq.read_table(directory).to_pylist(), key=lambda r: (r["input"], r["row"]))


def test_the_ray_engine_writes_the_local_engines_rows(local_ray, corpus, tiny_encoder_dir, tiny_encoder,  # noqa: F811
                                                      capsys):
    threshold = split_threshold(guard_for(corpus, tiny_encoder), [t for *_, t in expected_rows(corpus)])
    local, distributed = corpus / "local", corpus / "ray"
    assert score(args(corpus, tiny_encoder_dir, local, threshold, "--shard-size", "4")) == 0
    assert score(args(corpus, tiny_encoder_dir, distributed, threshold, "--shard-size", "4", "--engine", "ray",
                      "--workers", "2")) == 0
    a, b = sorted_rows(local), sorted_rows(distributed)
    assert len(b) == len(expected_rows(corpus)) and list(b[0]) == list(a[0])
    assert [{k: v for k, v in r.items() if k != "score"} for r in a] == \
        [{k: v for k, v in r.items() if k != "score"} for r in b]
    np.testing.assert_allclose([r["score"] for r in a], [r["score"] for r in b], rtol=1e-5, atol=1e-5)
    assert 0 < sum(r["unsafe"] for r in b) < len(b)
    part = next((distributed / "parts").glob("*.parquet"))
    assert pq.read_schema(part) == pq.read_schema(local / "shard-00000.parquet")
    console = capsys.readouterr().out
    assert f"{len(b)} rows in" in console and "deduplicated per batch of 4 rows" in console
    before = snapshot(distributed)  # finished: a rerun changes nothing but the summary
    assert score(args(corpus, tiny_encoder_dir, distributed, threshold, "--shard-size", "4", "--engine", "ray")) == 0
    assert {k: v for k, v in snapshot(distributed).items() if k != "_summary.json"} == \
        {k: v for k, v in before.items() if k != "_summary.json"}
    assert score(args(corpus, tiny_encoder_dir, distributed, threshold, "--shard-size", "4")) == 2
    assert "engine ray vs local" in capsys.readouterr().err


def test_the_documented_map_batches_example_and_a_worker_that_differs(local_ray, tmp_path, tiny_encoder_dir,
                                                                       tiny_encoder):
    from test_bulk_local import SCORER_TEXTS, scorer_recipe

    from latentguard.bulk import GuardBatchScorer
    from latentguard.bulk.manifest import guard_identity

    texts = SCORER_TEXTS * 3
    guard, recipe = scorer_recipe(tmp_path, tiny_encoder_dir, tiny_encoder, texts)
    ds = ray.data.from_items([{"row": i, "text": t} for i, t in enumerate(texts)], override_num_blocks=3)
    scored = ds.map_batches(GuardBatchScorer, fn_constructor_kwargs=recipe, batch_size=4,
                            compute=ray.data.ActorPoolStrategy(size=1), num_cpus=1).take_all()
    scored.sort(key=lambda r: r["row"])
    verdicts = guard.check(texts, explain=False)
    assert [r["unsafe"] for r in scored] == [v.unsafe for v in verdicts] and 0 < sum(v.unsafe for v in verdicts)
    assert [r["category_gore"] for r in scored] == [v.categories["gore"] for v in verdicts]
    np.testing.assert_allclose([r["score"] for r in scored], [v.score for v in verdicts], rtol=1e-5, atol=1e-5)
    other = {**guard_identity(guard), "threshold": guard.threshold + 1.0}
    with pytest.raises(Exception, match="not the one the run recorded"):
        ds.map_batches(GuardBatchScorer, fn_constructor_kwargs={**recipe, "expect": other}, batch_size=4,
                       compute=ray.data.ActorPoolStrategy(size=1), num_cpus=1).take_all()
