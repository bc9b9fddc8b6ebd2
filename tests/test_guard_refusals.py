"""The guard fails closed: any anomaly refuses (an error, exit 2), never reads as SAFE."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import tiny_clip_text_model

from latentguard.encoders import CLIPTextEncoder
from latentguard.errors import LatentGuardError
from latentguard.guard import LatentGuard
from latentguard.model import EmbeddingMappingLayer
from latentguard.store.concept_cache import concept_cache_path

CONCEPTS = ["knife", "blood", "gun"]
LONG = "a quiet village street at dusk with " + "lanterns and flowers and cats and " * 20 + "a gun"


@pytest.fixture
def guard(tiny_encoder):
    torch.manual_seed(0)
    return LatentGuard(EmbeddingMappingLayer(), tiny_encoder, CONCEPTS, threshold=1.0, cache_concepts=False)


# --------------------------------------------------------------- 3: settings checked when set
@pytest.mark.parametrize("value", [-1, 0, 1.5, True, "2", None])
def test_a_bad_batch_size_is_refused_when_set(guard, value):
    with pytest.raises(LatentGuardError, match="batch size must be a positive integer"):
        guard.batch_size = value
    assert guard.batch_size == 64 and len(guard.check(["a gun"])) == 1  # unchanged, still one verdict per prompt


@pytest.mark.parametrize("value", [float("nan"), None, float("inf"), "strict", "", True,
                                   pytest.param(10**400, id="10**400")])
def test_a_bad_threshold_is_refused_when_set(guard, value):
    with pytest.raises(LatentGuardError, match="threshold"):
        guard.threshold = value
    assert guard.threshold == 1.0


def test_threshold_names_resolve_when_set(guard):
    guard.threshold = "paper"
    assert guard.threshold == 4.47
    guard.threshold = " 2.5 "
    assert guard.threshold == 2.5
    guard.threshold = np.float32(3.0)
    assert guard.threshold == 3.0 and isinstance(guard.threshold, float)
    with pytest.raises(LatentGuardError, match="auto"):  # no checkpoint to read a calibration for
        guard.threshold = "auto"


# ------------------------------------------------------------ 4: NaN never reads as SAFE
def test_nan_in_the_checkpoint_weights_refuses(tiny_encoder, tmp_path):
    model = EmbeddingMappingLayer()
    with torch.no_grad():
        model.final_mlp.weight.view(-1)[0] = float("nan")
    torch.save(model.state_dict(), tmp_path / "nan.pth")
    with pytest.raises(LatentGuardError, match="final_mlp.weight is not finite") as caught:
        LatentGuard.from_pretrained(tmp_path / "nan.pth", tiny_encoder, CONCEPTS, threshold=1.0, cache_concepts=False)
    assert "\n" not in str(caught.value)
    # weights that turn non-finite after loading are refused where they are used: at scoring
    guard = LatentGuard(EmbeddingMappingLayer(), tiny_encoder, CONCEPTS, threshold=1.0, cache_concepts=False)
    with torch.no_grad():
        guard.model.final_mlp.weight.view(-1)[0] = float("nan")
    for call in (lambda: guard.check(["a cat"]), lambda: guard.check(["a cat"], explain=False),
                 lambda: guard.check_embeddings(["a cat"], tiny_encoder.encode(["a cat"]))):
        with pytest.raises(LatentGuardError, match="not finite"):
            call()


def test_nan_in_a_cached_concept_vector_is_re_encoded(clip_tokenizer, tmp_path, monkeypatch):
    monkeypatch.setenv("LATENTGUARD_HOME", str(tmp_path / "home"))
    encoder = CLIPTextEncoder(tiny_clip_text_model(seed=7), device="cpu", tokenizer=clip_tokenizer, name="nan-cache")
    torch.manual_seed(0)
    model = EmbeddingMappingLayer()
    fresh = LatentGuard(model, encoder, CONCEPTS, threshold=1.0)  # writes the concept cache
    path = concept_cache_path(encoder.identity)
    blob = torch.load(path, weights_only=True)
    blob["vectors"][1, 0] = float("nan")  # "blood"
    torch.save(blob, path)
    with pytest.warns(UserWarning, match="1 entry failed their checksum \\('blood'\\); re-encoding"):
        guard = LatentGuard(model, encoder, CONCEPTS, threshold=1.0)  # reads it back
    assert torch.equal(guard.concept_vectors, fresh.concept_vectors)


def test_a_missing_verdict_refuses(guard):
    class Dropping(LatentGuard):
        def logits_from_embeddings(self, prompt_emb):
            return super().logits_from_embeddings(prompt_emb)[:-1]  # one prompt's row lost

    guard.__class__ = Dropping
    with pytest.raises(LatentGuardError, match="for 2 prompts; refusing"):
        guard.check(["a cat", "a dog"])


@pytest.mark.parametrize("prompts", [None, 5])
def test_no_prompt_list_at_all_is_an_error_not_an_empty_answer(guard, prompts):
    with pytest.raises(LatentGuardError, match="prompts must be a str or a list of str"):
        guard.check(prompts)


def test_inference_on_a_nan_checkpoint_prints_one_line_and_exits_2(tiny_encoder_dir, tmp_path, monkeypatch, capsys):
    import inference

    monkeypatch.setenv("LATENTGUARD_HOME", str(tmp_path / "home"))
    model = EmbeddingMappingLayer()
    with torch.no_grad():
        model.tempr.fill_(float("nan"))
    torch.save(model.state_dict(), tmp_path / "nan.pth")
    (tmp_path / "prompts.txt").write_text("a cat on a sofa\na red car\n", encoding="utf-8")
    (tmp_path / "concepts.txt").write_text("\n".join(CONCEPTS) + "\n", encoding="utf-8")
    code = inference.main(["--file_path", str(tmp_path / "prompts.txt"), "--checkpoint", str(tmp_path / "nan.pth"),
                           "--concepts", str(tmp_path / "concepts.txt"), "--encoder", str(tiny_encoder_dir),
                           "--device", "cpu", "--threshold", "0"])
    captured = capsys.readouterr()
    assert code == 2
    assert captured.err.count("\n") == 1 and "not finite" in captured.err and "Traceback" not in captured.err
    assert "SAFE" not in captured.out


# ------------------------------------------------------------------------ truncation
def test_verdicts_say_when_a_prompt_was_cut(guard, tiny_encoder):
    assert tiny_encoder.is_truncated(LONG) and not tiny_encoder.is_truncated("a gun")
    short, long = guard.check(["a gun", LONG])
    assert not short.truncated and long.truncated and long.to_dict()["truncated"] is True
    guard.long_prompts = True  # windows cover the whole prompt: nothing is cut
    assert [v.truncated for v in guard.check(["a gun", LONG])] == [False, False]


def test_inference_reports_cut_prompts(tiny_encoder_dir, tmp_path, monkeypatch, capsys):
    import csv
    import json

    import inference

    monkeypatch.setenv("LATENTGUARD_HOME", str(tmp_path / "home"))
    torch.manual_seed(0)
    torch.save(EmbeddingMappingLayer().state_dict(), tmp_path / "ckpt.pth")
    (tmp_path / "prompts.txt").write_text(f"a cat on a sofa\n{LONG}\n", encoding="utf-8")
    (tmp_path / "concepts.txt").write_text("\n".join(CONCEPTS) + "\n", encoding="utf-8")
    base = ["--file_path", str(tmp_path / "prompts.txt"), "--checkpoint", str(tmp_path / "ckpt.pth"),
            "--concepts", str(tmp_path / "concepts.txt"), "--encoder", str(tiny_encoder_dir), "--device", "cpu",
            "--threshold", "0"]
    assert inference.main([*base, "--output", str(tmp_path / "out.csv")]) == 0
    out = capsys.readouterr().out
    assert "1 prompt(s) longer than 77 tokens were cut" in out and "--long-prompts" in out
    rows = list(csv.DictReader((tmp_path / "out.csv").open(encoding="utf-8")))
    assert [r["truncated"] for r in rows] == ["0", "1"]
    assert inference.main([*base, "--output", str(tmp_path / "out.jsonl"), "--long-prompts"]) == 0
    assert "were cut" not in capsys.readouterr().out
    records = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert [r["truncated"] for r in records] == [False, False]


# ------------------------------------------------------------------ 5: "auto" thresholds
def test_auto_on_other_weights_needs_their_calibration(tiny_encoder_dir, tmp_path, monkeypatch, capsys):
    import inference

    monkeypatch.setenv("LATENTGUARD_HOME", str(tmp_path / "home"))
    torch.manual_seed(0)
    torch.save(EmbeddingMappingLayer().state_dict(), tmp_path / "last.pth")
    (tmp_path / "prompts.txt").write_text("a cat on a sofa\na gun\n", encoding="utf-8")
    (tmp_path / "safe.txt").write_text("a bowl of fruit\nmountains at dawn\na red bicycle\n", encoding="utf-8")
    (tmp_path / "concepts.txt").write_text("\n".join(CONCEPTS) + "\n", encoding="utf-8")
    base = ["--file_path", str(tmp_path / "prompts.txt"), "--checkpoint", str(tmp_path / "last.pth"),
            "--concepts", str(tmp_path / "concepts.txt"), "--encoder", str(tiny_encoder_dir), "--device", "cpu"]
    assert inference.main(base) == 2  # default "auto": never the released 9.0131 for these weights
    captured = capsys.readouterr()
    assert "9.0131" not in captured.out and "--calibrate-safe" in captured.err and captured.err.count("\n") == 1
    assert inference.main([*base, "--calibrate-safe", str(tmp_path / "safe.txt")]) == 0
    assert "calibrated threshold" in capsys.readouterr().out
    assert inference.main(base) == 0  # now "auto" finds the calibration beside the weights
    out = capsys.readouterr().out
    assert "(calibrated, " in out and "threshold 9.0131" not in out


def test_a_calibration_never_replaces_the_record_beside_the_weights_unasked(tiny_encoder, tiny_encoder_dir, tmp_path,
                                                                            monkeypatch, capsys):
    """inference.py --calibrate-safe (and guard.calibrate(save=True)) replaced main.py's validation threshold
    silently, for every --threshold auto user after it (a hostile review): now only with the opt-in."""
    import inference
    from latentguard.decision.threshold import CalibrationResult, calibration_path, save_calibration

    monkeypatch.setenv("LATENTGUARD_HOME", str(tmp_path / "home"))
    torch.manual_seed(0)
    weights = tmp_path / "model_parameters.pth"
    torch.save(EmbeddingMappingLayer().state_dict(), weights)
    record = calibration_path(weights)
    save_calibration(CalibrationResult(1.5, "best_accuracy", None, 4, 4, 0.0, 1.0, 1.0), weights)  # main.py's
    before = record.read_bytes()
    (tmp_path / "prompts.txt").write_text("a cat on a sofa\n", encoding="utf-8")
    (tmp_path / "safe.txt").write_text("a bowl of fruit\na gun and blood\n", encoding="utf-8")  # an unsafe line
    (tmp_path / "concepts.txt").write_text("\n".join(CONCEPTS) + "\n", encoding="utf-8")
    argv = ["--file_path", str(tmp_path / "prompts.txt"), "--checkpoint", str(weights), "--concepts",
            str(tmp_path / "concepts.txt"), "--encoder", str(tiny_encoder_dir), "--device", "cpu",
            "--calibrate-safe", str(tmp_path / "safe.txt"), "--target-fpr", "0"]
    assert inference.main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{record} already holds a calibration record" in err, err
    assert "--overwrite-calibration" in err and record.read_bytes() == before
    guard = LatentGuard.from_pretrained(weights, tiny_encoder, CONCEPTS, threshold="released", cache_concepts=False)
    with pytest.raises(LatentGuardError, match="already holds a calibration record.*overwrite=True"):
        guard.calibrate(["a bowl of fruit"], target_fpr=0.0, save=True)
    assert record.read_bytes() == before and guard.threshold == 9.0131  # refused: nothing changed
    assert inference.main([*argv, "--overwrite-calibration"]) == 0
    assert record.read_bytes() != before
    capsys.readouterr()
    result = guard.calibrate(["a bowl of fruit"], target_fpr=0.0, save=True, overwrite=True)
    assert LatentGuard.from_pretrained(weights, tiny_encoder, CONCEPTS, cache_concepts=False).threshold == \
        pytest.approx(result.threshold)


def test_from_config_follows_the_auto_rule_and_checks_settings_when_set(tiny_encoder_dir, tmp_path, monkeypatch):
    from latentguard.config import load_config

    monkeypatch.setenv("LATENTGUARD_HOME", str(tmp_path / "home"))
    torch.manual_seed(0)
    torch.save(EmbeddingMappingLayer().state_dict(), tmp_path / "last.pth")
    (tmp_path / "concepts.txt").write_text("\n".join(CONCEPTS) + "\n", encoding="utf-8")
    cfg = load_config(None, overrides={"checkpoint": str(tmp_path / "last.pth"), "device": "cpu",
                                       "encoder.name": str(tmp_path / "no-such-encoder"),
                                       "inference.concepts": str(tmp_path / "concepts.txt")})
    assert cfg.inference.threshold == "auto"
    # refused before the (here impossible) encoder load: these weights are not the released ones
    with pytest.raises(LatentGuardError, match="not the released checkpoint.*--calibrate-safe"):
        LatentGuard.from_config(cfg)
    cfg = cfg.updated({"encoder.name": str(tiny_encoder_dir)})
    calibrated = LatentGuard.from_config(cfg, threshold="released").calibrate(
        ["a bowl of fruit", "mountains at dawn", "a red bicycle"], save=True).threshold
    guard = LatentGuard.from_config(cfg)  # "auto" now reads the calibration beside the weights
    assert guard.threshold == pytest.approx(calibrated) and guard.threshold != 9.0131
    with pytest.raises(LatentGuardError, match="batch size"):
        guard.batch_size = 0
    with pytest.raises(LatentGuardError, match="threshold"):
        guard.threshold = float("nan")
    guard.threshold = "paper"
    assert guard.threshold == 4.47 and len(guard.check(["a gun"])) == 1
