"""The documented Spark example (docs/bulk.md), run on a local Spark session: ``predict_batch_udf`` with a
``make_predict_fn`` that builds :class:`GuardBatchScorer` once per Python worker gives the guard's verdicts.

Needs pyspark (the spark extra, in the test extra) and a Java runtime; skipped without Java."""
from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
from test_bulk_local import SCORER_TEXTS, scorer_recipe

pytest.importorskip("pyspark")
if shutil.which("java") is None and not os.environ.get("JAVA_HOME"):
    pytest.skip("Spark needs a Java runtime", allow_module_level=True)
ROOT = Path(__file__).resolve().parent.parent


def test_the_documented_predict_batch_udf_example(tmp_path, tiny_encoder_dir, tiny_encoder, monkeypatch):
    from pyspark.ml.functions import predict_batch_udf
    from pyspark.sql import SparkSession
    from pyspark.sql.types import ByteType, FloatType, StringType, StructField, StructType

    texts = SCORER_TEXTS * 2
    guard, recipe = scorer_recipe(tmp_path, tiny_encoder_dir, tiny_encoder, texts)
    for name, value in {"PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "PYSPARK_PYTHON": sys.executable,
                        "LATENTGUARD_HOME": str(tmp_path / "lg_home")}.items():
        monkeypatch.setenv(name, value)

    def make_predict_fn():  # as in docs/bulk.md
        from latentguard.bulk import GuardBatchScorer
        scorer = GuardBatchScorer(**recipe)

        def predict(texts: np.ndarray) -> dict:
            out = scorer({"text": texts})
            return {"score": out["score"].astype(np.float32), "unsafe": out["unsafe"].astype(np.int8),
                    "concept": out["concept"], "truncated": out["truncated"].astype(np.int8)}
        return predict

    spark = (SparkSession.builder.master("local[1]").appName("latentguard-test")
             .config("spark.ui.enabled", "false").config("spark.sql.shuffle.partitions", "1").getOrCreate())
    try:
        verdict = predict_batch_udf(make_predict_fn, batch_size=4, return_type=StructType([
            StructField("score", FloatType()), StructField("unsafe", ByteType()),
            StructField("concept", StringType()), StructField("truncated", ByteType())]))
        df = spark.createDataFrame([(i, t) for i, t in enumerate(texts)], ["row", "prompt"])
        rows = df.withColumn("verdict", verdict("prompt")).orderBy("row").collect()
    finally:
        spark.stop()
    expected = guard.check(texts, explain=False)
    assert [bool(r["verdict"]["unsafe"]) for r in rows] == [v.unsafe for v in expected]
    assert [r["verdict"]["truncated"] for r in rows] == [0] * len(texts)
    assert 0 < sum(v.unsafe for v in expected) < len(texts)
    assert [r["verdict"]["concept"] for r in rows] == [v.concept for v in expected]
    np.testing.assert_allclose([r["verdict"]["score"] for r in rows], [v.score for v in expected], rtol=1e-5,
                               atol=1e-4)  # FloatType: float32
