"""`python -m latentguard verify`: the release parity check, run as a real process.

Offline, a fixture is generated from the project's own scores (tiny random CLIP, random mapping
weights, synthetic CoPro with synonym/adversarial dictionaries): verify must PASS on it, fail naming
the row when one score is perturbed, and stop with one line when the dataset cannot be had. The
`release` test runs the real check against the real weights where they are present.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from latentguard.data import load_copro
from latentguard.encoders import load_encoder
from latentguard.eval import parity as verify
from latentguard.model import EmbeddingMappingLayer

ROOT = Path(__file__).resolve().parent.parent


def run_verify(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "latentguard", "verify", *args], capture_output=True, text=True,
                          cwd=ROOT, env=env, timeout=300)


@pytest.fixture(scope="module")
def parity_setup(tmp_path_factory, tiny_encoder_dir):
    """A dataset, random weights and a fixture of this project's own scores, in the shipped format."""
    import sys as _sys

    _sys.path.insert(0, str(Path(__file__).parent))
    from synthetic import make_synthetic_copro

    root = tmp_path_factory.mktemp("parity")
    dataset = make_synthetic_copro(root / "CoPro_synthetic.json")
    copro = load_copro(dataset)
    torch.manual_seed(3)
    checkpoint = root / "weights.pth"
    torch.save(EmbeddingMappingLayer(768).state_dict(), checkpoint)
    rows = []
    for domain, split in (("ID", "ID_test_data"), ("OOD", "OOD_test_data")):
        explicit = copro.split(split)[:2]
        for entry in explicit:
            rows.append(verify.ReleasedRow(0, domain, "explicit", 1, entry.unsafe_prompt, entry.safe_prompt,
                                           entry.concept, 0.0))
            rows.append(verify.ReleasedRow(0, domain, "explicit", 0, entry.unsafe_prompt, entry.safe_prompt,
                                           entry.concept, 0.0))
        for kind in ("synonym", "adversarial"):
            pair = copro.variant_pairs(split, kind)[0]
            original = next(e for e in copro.split(split)
                            if e.concept == pair.concept and e.safe_prompt == pair.safe_prompt)
            rows.append(verify.ReleasedRow(0, domain, kind, 1, original.unsafe_prompt, original.safe_prompt,
                                           original.concept, 0.0))
            rows.append(verify.ReleasedRow(0, domain, kind, 0, original.unsafe_prompt, original.safe_prompt,
                                           original.concept, 0.0))
    encoder = load_encoder(str(tiny_encoder_dir), device="cpu")
    from latentguard.model import load_mapping_layer

    scores = verify.score_rows(rows, copro, encoder, load_mapping_layer(checkpoint, in_dim=768))
    fixture = verify.write_fixture(root / "ours.csv", rows, scores)
    common = ["--encoder", str(tiny_encoder_dir), "--checkpoint", str(checkpoint), "--dataset", str(dataset),
              "--device", "cpu"]
    return {"root": root, "fixture": fixture, "rows": rows, "scores": scores, "common": common, "copro": copro}


def test_shipped_fixture_reads_and_every_text_rule_applies():
    rows = verify.read_fixture()
    assert len(rows) == 84
    assert {(r.domain, r.setting) for r in rows} == {(d, s) for d in verify.DOMAINS for s in verify.KINDS}
    assert all(r.safe_prompt.startswith(" ") for r in rows if r.label == 0)  # kept exactly as stored
    # Both decision thresholds are covered on each side in the shipped rows.
    for t in verify.DECISION_THRESHOLDS.values():
        assert any(r.released_score >= t for r in rows) and any(r.released_score < t for r in rows)


def test_variant_rows_are_built_with_the_projects_variant_rule(parity_setup):
    copro = parity_setup["copro"]
    for row in parity_setup["rows"]:
        text = verify.scored_text(row, copro)
        if row.label == 0:
            assert text == row.safe_prompt
        elif row.setting == "explicit":
            assert text == row.unsafe_prompt
        else:
            assert text != row.unsafe_prompt
            assert text in {p.unsafe_prompt for p in copro.variant_pairs(f"{row.domain}_test_data", row.setting)}


def test_verify_passes_on_its_own_scores(parity_setup):
    result = run_verify(*parity_setup["common"], "--fixture", str(parity_setup["fixture"]))
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.strip().splitlines()
    assert lines[-1].startswith("PASS: 16 rows")
    assert "NOT the released weights" in result.stdout  # provenance is stated, not assumed
    assert sum("ID synonym" in line for line in lines) == 2 and "MISMATCH" not in result.stdout


def test_verify_fails_naming_the_perturbed_row(parity_setup, tmp_path):
    rows, scores = parity_setup["rows"], list(parity_setup["scores"])
    scores[5] += 0.01  # above the 1e-3 tolerance, far from both decision thresholds
    fixture = verify.write_fixture(tmp_path / "perturbed.csv", rows, scores)
    result = run_verify(*parity_setup["common"], "--fixture", str(fixture))
    assert result.returncode == 1, result.stdout + result.stderr
    last = result.stdout.strip().splitlines()[-1]
    assert last.startswith("FAIL: 1 of 16 rows differ: line 7 (")  # row 5 is on line 7 (header is line 1)
    # A looser tolerance accepts the same difference.
    assert run_verify(*parity_setup["common"], "--fixture", str(fixture), "--tolerance", "0.02").returncode == 0


def test_a_decision_flip_fails_even_within_tolerance(parity_setup):
    row = parity_setup["rows"][0]
    near = verify.ReleasedRow(2, row.domain, row.setting, row.label, row.unsafe_prompt, row.safe_prompt,
                              row.concept, 4.4702)
    checks = verify.compare([near], [4.4698])
    assert checks[0].diff < 1e-3 and checks[0].disagree_at == ("paper",)
    passed, line = verify.verdict(checks, 1e-3)
    assert not passed and "line 2" in line
    assert not verify.compare([near], [float("nan")])[0].ok(1.0)  # a non-finite score never passes


def test_missing_dataset_offline_is_one_line_and_exit_2(parity_setup, tmp_path):
    missing = tmp_path / "data" / "CoPro_v1.0.json"  # the released name: verify tries to download it
    args = [a if a != parity_setup["common"][5] else str(missing) for a in parity_setup["common"]]
    result = run_verify(*args, "--fixture", str(parity_setup["fixture"]))
    assert result.returncode == 2
    # offline (the suite's HF_HUB_OFFLINE=1): said up front, nothing is tried
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("error: offline"), result.stderr
    assert "CoPro dataset" in result.stderr and "nothing was downloaded" in result.stderr
    assert "Traceback" not in result.stderr and result.stdout == ""


def test_the_cli_dispatcher_runs_verify_with_the_shared_flags():
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    dispatch = [sys.executable, "-m", "latentguard.cli"]
    listing = subprocess.run(dispatch + ["--help"], capture_output=True, text=True, cwd=ROOT, env=env, timeout=120)
    assert listing.returncode == 0 and "infer,verify" in listing.stdout  # later commands follow
    helped = subprocess.run(dispatch + ["verify", "--help"], capture_output=True, text=True, cwd=ROOT, env=env,
                            timeout=120)
    assert helped.returncode == 0
    assert all(flag in helped.stdout
               for flag in ("--fixture", "--tolerance", "--checkpoint", "--guard", "--config", "--encoder-type"))
    bad = subprocess.run(dispatch + ["verify", "--tolerance", "-1"], capture_output=True, text=True, cwd=ROOT,
                         env=env, timeout=120)
    assert bad.returncode == 2 and bad.stderr == "error: --tolerance must be a finite number >= 0, got -1.0\n"


# ------------------------------------------------------------------------ the real release check
def _release_files() -> tuple[dict | None, str]:
    """Where the real weights are, or why the release test cannot run here."""
    how = ("set LATENTGUARD_RELEASE_DIR to a directory holding model_parameters.pth, CoPro_v1.0.json and "
           "optionally clip-vit-large-patch14/ (else the Hugging Face cache must hold "
           "openai/clip-vit-large-patch14), then run: pytest -m release")
    base = os.environ.get("LATENTGUARD_RELEASE_DIR")
    if not base:
        return None, f"the released weights are not configured: {how}"
    base_path = Path(base)
    files = {"checkpoint": base_path / "model_parameters.pth", "dataset": base_path / "CoPro_v1.0.json"}
    missing = [str(p) for p in files.values() if not p.is_file()]
    if missing:
        return None, f"{', '.join(missing)} missing: {how}"
    local_clip = base_path / "clip-vit-large-patch14"
    if local_clip.is_dir():
        files["encoder"] = local_clip
    else:
        try:
            from huggingface_hub import try_to_load_from_cache

            cached = try_to_load_from_cache("openai/clip-vit-large-patch14", "config.json")
        except Exception:  # no hub library or an unreadable cache: treat as absent
            cached = None
        if not isinstance(cached, str):
            return None, f"CLIP ViT-L/14 is neither in {local_clip} nor in the Hugging Face cache: {how}"
        files["encoder"] = "openai/clip-vit-large-patch14"
    return files, ""


_RELEASE, _WHY_NOT = _release_files()


@pytest.mark.release
@pytest.mark.skipif(_RELEASE is None, reason=_WHY_NOT or "released weights absent")
def test_release_parity_with_the_real_weights():
    args = ["--encoder", str(_RELEASE["encoder"]), "--checkpoint", str(_RELEASE["checkpoint"]),
            "--dataset", str(_RELEASE["dataset"])]
    result = run_verify(*args)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr
    assert result.stdout.strip().splitlines()[-1].startswith("PASS: 84 rows")
