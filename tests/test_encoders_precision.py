"""Precision profiles: resolution per device, the --precision flag end to end, and store/cache separation."""
from __future__ import annotations

import csv
import importlib

import numpy as np
import pytest
import torch
import yaml
from synthetic import make_synthetic_copro

import inference
import prepare
from latentguard.cli.common import load_command_config
from latentguard.config import load_config
from latentguard.data import load_copro
from latentguard.encoders import load_encoder, precision
from latentguard.encoders.precision import apply_precision, cpu_supports_bf16, resolve_precision
from latentguard.errors import LatentGuardError
from latentguard.model import EmbeddingMappingLayer
from latentguard.store.locate import encoder_request_key, open_store_for, store_path
from latentguard.store.store import EmbeddingStore

# Measured on the tiny CLIP with this test's checkpoint (tempr 30, scores of a few units): bf16 moved
# the four scores by 0.018-0.030 on the development CPU (AVX512-BF16). The bound, about 3x that,
# leaves room for other CPUs' bf16 kernels and still fails on real breakage (a wrong dtype path,
# another encoder's embeddings: differences of units).
TINY_CLIP_BF16_BOUND = 0.1


# ------------------------------------------------------------------------------------- resolution
@pytest.mark.parametrize("flags, expected", [
    ("fpu vme avx512f avx512_bf16 avx512_vnni", True),
    ("fpu vme amx_bf16 amx_tile amx_int8", True),
    ("fpu vme avx2 avx512f avx512_vnni", False),
])
def test_cpu_bf16_support_comes_from_the_cpu_flags(tmp_path, flags, expected):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(f"processor\t: 0\nmodel name\t: Some CPU\nflags\t\t: {flags}\n\n", encoding="utf-8")
    assert cpu_supports_bf16(cpuinfo) is expected


def test_exact_keeps_the_configured_dtype_and_prints_nothing():
    for device in ("cpu", "cuda"):
        choice = resolve_precision("exact", device, bf16_cpu=True)
        assert (choice.dtype, choice.note) == ("float32", None)
    assert resolve_precision("exact", "cuda", "float16").dtype == "float16"


@pytest.mark.parametrize("device, bf16_cpu, dtype", [
    ("cpu", True, "bfloat16"), ("cpu", False, "float32"), ("cuda", False, "float16"), ("mps", True, "float32"),
])
def test_fast_picks_the_fastest_measured_dtype_per_device(device, bf16_cpu, dtype):
    choice = resolve_precision("fast", device, bf16_cpu=bf16_cpu)
    assert choice.dtype == dtype
    assert choice.note.startswith(f"precision fast: {dtype} encoder on this")
    if dtype == "bfloat16":
        figures = precision.MEASURED["bfloat16"]
        assert f"max |Δscore| {figures['max_abs_dscore']:.3g}" in choice.note and "ΔAUC" in choice.note
        assert "docs/precision.md" in choice.note


def test_fast_refuses_a_configured_reduced_dtype_and_unknown_profiles():
    with pytest.raises(LatentGuardError, match="encoder.dtype is bfloat16"):
        resolve_precision("fast", "cuda", "bfloat16")
    with pytest.raises(LatentGuardError, match="encoder.dtype is float16"):
        resolve_precision("fast", "cpu", "float16", bf16_cpu=True)
    with pytest.raises(LatentGuardError, match="unknown precision 'turbo'"):
        resolve_precision("turbo", "cpu")
    with pytest.raises(LatentGuardError, match="'precision' must be one of"):
        load_config(None, overrides={"precision": "turbo"})


def test_apply_precision_sets_the_encoder_dtype_of_a_config(monkeypatch, tmp_path):
    cfg, note = apply_precision(load_config(None, overrides={"device": "cpu"}))
    assert cfg.precision == "exact" and note is None and cfg.encoder.dtype == "float32"
    monkeypatch.setattr(precision, "cpu_supports_bf16", lambda: True)
    cfg, note = apply_precision(load_config(None, overrides={"device": "cpu", "precision": "fast"}))
    assert "bfloat16 encoder on this CPU" in note and cfg.encoder.dtype == "bfloat16"
    saved = tmp_path / "config.yaml"  # what a fast training run saves beside its checkpoint loads again
    saved.write_text(yaml.safe_dump(cfg.to_dict()), encoding="utf-8")
    again, note = apply_precision(load_config(saved))
    assert note and again.encoder.dtype == "bfloat16"
    monkeypatch.setattr(precision, "cpu_supports_bf16", lambda: False)  # on a CPU without bf16 it refuses
    with pytest.raises(LatentGuardError, match=r"\(float32 here\), but encoder.dtype is bfloat16"):
        apply_precision(load_config(saved))


@pytest.mark.parametrize("command", ["prepare", "train", "evaluate", "infer"])
def test_every_command_applies_the_profile_where_it_loads_its_config(command, capsys, monkeypatch):
    monkeypatch.setattr(precision, "cpu_supports_bf16", lambda: True)
    parser = importlib.import_module(f"latentguard.cli.{command}").build_parser()
    cfg = load_command_config(parser.parse_args(["--device", "cpu", "--precision", "fast"]), {})
    assert cfg.precision == "fast" and cfg.encoder.dtype == "bfloat16"
    assert "precision fast: bfloat16 encoder on this CPU" in capsys.readouterr().out
    cfg = load_command_config(parser.parse_args(["--device", "cpu"]), {})
    assert cfg.encoder.dtype == "float32" and capsys.readouterr().out == ""
    with pytest.raises(SystemExit):
        parser.parse_args(["--precision", "turbo"])


# ------------------------------------------------------------------------------------ identities
def test_precision_separates_encoder_identity_stores_and_request_keys(tiny_encoder_dir, tmp_path):
    exact = load_encoder(str(tiny_encoder_dir), device="cpu", dtype="float32")
    fast = load_encoder(str(tiny_encoder_dir), device="cpu", dtype="bfloat16")
    assert exact.identity != fast.identity and fast.identity.endswith(":bfloat16")
    assert store_path(tmp_path, exact.identity) != store_path(tmp_path, fast.identity)
    assert (encoder_request_key(tiny_encoder_dir, dtype="float32")
            != encoder_request_key(tiny_encoder_dir, dtype="bfloat16"))
    store = open_store_for(tmp_path, exact, dtype="float32", create=True)
    store.build(["a knife"], exact, progress=False)
    with pytest.raises(LatentGuardError, match="was built with encoder"):
        store.build(["a gun"], fast, progress=False)  # bf16 rows never go into the fp32 store
    with pytest.raises(LatentGuardError, match="was built with encoder"):
        EmbeddingStore(store.path, identity=fast.identity)


def test_prepare_fast_builds_its_own_store_beside_the_exact_one(tiny_encoder_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(precision, "cpu_supports_bf16", lambda: True)  # bf16 runs (slowly) on any CPU
    dataset = make_synthetic_copro(tmp_path / "small.json", n_id=2, n_ood=1, train_per_concept=2, test_per_concept=1)
    base = ["--dataset", str(dataset), "--encoder", str(tiny_encoder_dir), "--store-dir", str(tmp_path / "cache"),
            "--device", "cpu", "--dtype", "float32"]
    assert prepare.main(base) == 0
    assert prepare.main(base + ["--precision", "fast"]) == 0
    out = capsys.readouterr().out
    assert "precision fast: bfloat16 encoder on this CPU; measured drift vs fp32" in out
    assert out.count("encoding ") == 2  # the fast run found nothing of its own to reuse
    stores = sorted(p.parent for p in (tmp_path / "cache").glob("*/meta.json"))
    identities = sorted(EmbeddingStore(p).identity for p in stores)
    assert len(stores) == 2 and [i.endswith(":bfloat16") for i in identities] == [False, True]
    texts = load_copro(dataset).all_texts()
    exact, fast = (EmbeddingStore(p) for p in sorted(stores, key=lambda p: EmbeddingStore(p).identity)[::-1])
    assert not exact.missing(texts) and not fast.missing(texts)
    assert 0 < (exact.get(texts) - fast.get(texts)).abs().max() < 0.5


# ----------------------------------------------------------------------------------- end to end
def test_inference_fast_scores_are_finite_and_close_to_exact(tiny_encoder_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("LATENTGUARD_HOME", str(tmp_path / "home"))
    monkeypatch.setattr(precision, "cpu_supports_bf16", lambda: True)
    torch.manual_seed(0)
    model = EmbeddingMappingLayer()
    with torch.no_grad():
        model.tempr.fill_(30.0)
    torch.save(model.state_dict(), tmp_path / "ckpt.pth")
    prompts = ["a photo of a knife on the table", "a red balloon in the sky", "blood on the kitchen floor",
               "two soldiers fighting in a ruined city, oil painting"]
    (tmp_path / "prompts.txt").write_text("\n".join(prompts) + "\n", encoding="utf-8")
    (tmp_path / "concepts.txt").write_text("knife\nblood\ngun\nbomb\n", encoding="utf-8")
    scores = {}
    for profile in ("exact", "fast"):
        out = tmp_path / f"{profile}.csv"
        argv = ["--file_path", str(tmp_path / "prompts.txt"), "--checkpoint", str(tmp_path / "ckpt.pth"),
                "--concepts", str(tmp_path / "concepts.txt"), "--encoder", str(tiny_encoder_dir), "--device", "cpu",
                "--threshold", "0", "--output", str(out), "--precision", profile]
        assert inference.main(argv) == 0
        with open(out, newline="", encoding="utf-8") as handle:
            scores[profile] = np.array([float(r["score"]) for r in csv.DictReader(handle)])
        printed = capsys.readouterr().out
        assert ("precision fast: bfloat16 encoder" in printed) == (profile == "fast")
    assert np.isfinite(scores["fast"]).all() and len(scores["fast"]) == len(prompts)
    drift = np.abs(scores["fast"] - scores["exact"])
    assert 0 < drift.max() <= TINY_CLIP_BF16_BOUND, drift


def test_a_precision_only_change_keeps_the_weights_part_of_the_identity_and_bundles_load(tiny_encoder_dir, tmp_path):
    """The weights hash is taken before the cast: taken after it, --precision fast (bf16 on a CPU) read as
    another encoder and refused every bundle; now it is the same weights in another precision: a warning."""
    import warnings

    from latentguard.encoders.identity import identity_parts, same_embeddings
    from latentguard.guard import LatentGuard
    from latentguard.model import EmbeddingMappingLayer

    exact = load_encoder(str(tiny_encoder_dir), device="cpu", dtype="float32")
    fast = load_encoder(str(tiny_encoder_dir), device="cpu", dtype="bfloat16")
    assert identity_parts(exact.identity)["weights"] == identity_parts(fast.identity)["weights"]
    assert same_embeddings(exact.identity, fast.identity) is None  # only the precision differs
    torch.manual_seed(0)
    guard = LatentGuard(EmbeddingMappingLayer(), exact, ["knife", "blood"], threshold=0.0, cache_concepts=False)
    guard.save_pretrained(tmp_path / "bundle")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        loaded = LatentGuard.from_pretrained(tmp_path / "bundle", encoder=fast)
    assert any("scores may shift slightly" in str(w.message) for w in caught)
    assert np.isfinite(loaded.scores(["a knife"])).all()
