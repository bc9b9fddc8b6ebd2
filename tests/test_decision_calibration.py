"""Threshold calibration, its YAML record beside the checkpoint, and named threshold profiles."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import yaml

from latentguard.decision.metrics import best_accuracy_threshold
from latentguard.decision.threshold import (
    CalibrationResult,
    calibrate,
    calibration_of,
    calibration_path,
    load_calibration,
    load_calibration_result,
    resolve_threshold,
    save_calibration,
    save_guard_calibration,
)
from latentguard.errors import LatentGuardError
from latentguard.model import EmbeddingMappingLayer
from latentguard.published import NAMED_THRESHOLDS as PROFILES

IDENTITY = "clip:openai/clip-vit-large-patch14:h768:0123456789abcdef"


@pytest.fixture
def checkpoint(tmp_path):
    torch.manual_seed(0)
    path = tmp_path / "model_parameters.pth"
    torch.save(EmbeddingMappingLayer(in_dim=32, num_heads=2, head_dim=4, out_dim=4).state_dict(), path)
    return path


# ----------------------------------------------------------------------------- calibrate()
def test_target_fpr_without_unsafe_prompts():
    safe = np.arange(200, dtype=float)  # 0 .. 199
    result = calibrate(safe, target_fpr=0.05)
    assert result.method == "target_fpr" and result.target_fpr == 0.05
    assert (safe >= result.threshold).sum() == 10 and result.fpr == 0.05  # exactly 5% of safe prompts flagged
    assert result.tpr is None and result.accuracy is None and result.n_unsafe == 0 and result.n_safe == 200
    strict = calibrate(safe, target_fpr=0.0)
    assert strict.threshold > safe.max() and strict.fpr == 0.0


def test_best_accuracy_with_unsafe_prompts():
    rng = np.random.default_rng(0)
    safe, unsafe = rng.normal(0, 1, 300), rng.normal(2.5, 1, 200)
    result = calibrate(torch.tensor(safe), unsafe.tolist())
    labels = np.r_[np.zeros(300), np.ones(200)]
    assert result.method == "best_accuracy" and result.target_fpr is None
    assert result.threshold == pytest.approx(best_accuracy_threshold(labels, np.r_[safe, unsafe]))
    accuracy = ((safe < result.threshold).sum() + (unsafe >= result.threshold).sum()) / 500
    assert result.accuracy == pytest.approx(accuracy) and result.accuracy > 0.85
    assert result.tpr == pytest.approx((unsafe >= result.threshold).mean())


def test_logit_matrices_are_reduced_to_scores():
    logits = np.array([[0.0, 5.0], [1.0, 2.0], [3.0, 0.5]])  # scores 5, 2, 3
    assert calibrate(logits, target_fpr=0.34).threshold == calibrate([5.0, 2.0, 3.0], target_fpr=0.34).threshold


@pytest.mark.parametrize("safe, kwargs, message", [
    ([], {}, "at least one safe"),
    ([1.0, float("nan")], {}, "NaN"),
    ([1.0, 2.0], {"target_fpr": 1.5}, "target FPR"),
    ([1.0, 2.0], {"target_fpr": True}, "target FPR"),
])
def test_bad_calibration_input(safe, kwargs, message):
    with pytest.raises(LatentGuardError, match=message):
        calibrate(safe, **kwargs)


# ---------------------------------------------------------------------------- YAML record
def test_save_and_load_beside_the_checkpoint(checkpoint):
    result = calibrate(np.arange(100.0), target_fpr=0.02)
    written = save_calibration(result, checkpoint, encoder_identity=IDENTITY)
    assert written == checkpoint.parent / "model_parameters.threshold.yaml" == calibration_path(checkpoint)
    record = yaml.safe_load(written.read_text(encoding="utf-8"))
    for key in ("threshold", "method", "target_fpr", "n_safe", "n_unsafe", "encoder_identity", "checkpoint_sha256",
                "date"):
        assert key in record
    assert record["encoder_identity"] == IDENTITY and len(record["checkpoint_sha256"]) == 64
    assert load_calibration(checkpoint, encoder_identity=IDENTITY) == result.threshold
    loaded = load_calibration_result(checkpoint)
    assert isinstance(loaded, CalibrationResult) and loaded.n_safe == 100 and loaded.method == "target_fpr"
    assert not list(checkpoint.parent.glob(".*.tmp"))  # atomic write left nothing behind


def test_no_record_is_none(checkpoint):
    assert load_calibration(checkpoint) is None


def test_record_for_other_weights_is_refused(checkpoint):
    save_calibration(calibrate([1.0, 2.0, 3.0]), checkpoint, encoder_identity=IDENTITY)
    torch.save(EmbeddingMappingLayer(in_dim=32, num_heads=2, head_dim=4, out_dim=4).state_dict(), checkpoint)
    with pytest.raises(LatentGuardError, match="calibrated for other weights"):
        load_calibration(checkpoint)


def test_record_for_another_encoder_is_refused_same_weights_other_name_accepted(checkpoint):
    save_calibration(calibrate([1.0, 2.0, 3.0]), checkpoint, encoder_identity=IDENTITY)
    with pytest.raises(LatentGuardError, match="calibrated with encoder"):
        load_calibration(checkpoint, encoder_identity=IDENTITY.replace("0123", "ffff"))
    with pytest.raises(LatentGuardError, match="calibrated with encoder"):
        load_calibration(checkpoint, encoder_identity=IDENTITY + ":mask")
    # the same weights loaded under another name (e.g. a Stable Diffusion pipeline's text encoder)
    renamed = IDENTITY.replace("openai/clip-vit-large-patch14", "runwayml/stable-diffusion-v1-5/text_encoder")
    assert load_calibration(checkpoint, encoder_identity=renamed) is not None
    with pytest.warns(UserWarning, match="float16"):
        assert load_calibration(checkpoint, encoder_identity=IDENTITY + ":float16") is not None


@pytest.mark.parametrize("text, message", [
    ("threshold: [unclosed", "not valid YAML at line"),
    ("threshold: 3.0\n", "not a Latent Guard calibration file"),
    ("format: latentguard-threshold\nthreshold: high\nmethod: x\nn_safe: 1\nn_unsafe: 0\n", "finite number"),
    ("format: latentguard-threshold\nthreshold: 1.0\nmethod: x\nn_safe: 1\nn_unsafe: 0\ncolour: red\n", "unknown keys "
                                                                                                        "colour"),
    ("format: latentguard-threshold\nthreshold: 1.0\n", "missing keys"),
    # a hand-written (or stripped) record names no weights: never applied to whatever checkpoint it sits beside
    ("format: latentguard-threshold\nthreshold: 1.0\nmethod: x\nn_safe: 1\nn_unsafe: 0\n", "no checkpoint_sha256"),
])
def test_broken_record_is_a_one_line_error(checkpoint, text, message):
    calibration_path(checkpoint).write_text(text, encoding="utf-8")
    with pytest.raises(LatentGuardError, match=message) as info:
        load_calibration(checkpoint)
    assert "\n" not in str(info.value) and "model_parameters.threshold.yaml" in str(info.value)


# ------------------------------------------------------------------------------- profiles
def test_resolve_threshold_numbers_and_profiles(checkpoint):
    assert resolve_threshold(4.2) == 4.2 and resolve_threshold(7) == 7.0 and resolve_threshold(" 3.5 ") == 3.5
    assert resolve_threshold("released") == 9.0131 == PROFILES["released"]
    assert resolve_threshold("Paper") == 4.47 == PROFILES["paper"]
    with pytest.raises(LatentGuardError, match="not the released checkpoint.*--calibrate-safe.*--threshold") as info:
        resolve_threshold("auto", checkpoint)  # no record, other weights: 9.0131 may never be reached
    assert "\n" not in str(info.value)
    with pytest.raises(LatentGuardError, match="calibrate first"):
        resolve_threshold("calibrated", checkpoint)
    with pytest.raises(LatentGuardError, match="needs the checkpoint"):
        resolve_threshold("calibrated")
    save_calibration(calibrate([1.0, 2.0, 3.0, 4.0], target_fpr=0.25), checkpoint, encoder_identity=IDENTITY)
    expected = load_calibration(checkpoint)
    assert resolve_threshold("calibrated", checkpoint, encoder_identity=IDENTITY) == expected
    assert resolve_threshold("auto", checkpoint) == expected


@pytest.mark.parametrize("value", ["strict", "", None, True, float("inf"), "nan",
                                   "\u0665", "\uff15", "1_0"])  # float() reads these as 5, 5, 10 (a forty-second pass)
def test_resolve_threshold_rejects_nonsense(value):
    with pytest.raises(LatentGuardError, match="threshold"):
        resolve_threshold(value)


# ---------------------------------------------------------------------------- guard level
class FakeGuard:
    """The slice of the LatentGuard API calibration uses: scores(), threshold, encoder, concepts."""

    def __init__(self, table):
        self.table = table
        self.threshold = 9.0131
        self.encoder = type("Enc", (), {"identity": IDENTITY})()
        self.concepts = ["knife", "blood", "gun"]
        self.checkpoint = None

    def scores(self, prompts):
        return np.array([self.table[p] for p in prompts])


def test_calibration_of_reads_the_guard_and_changes_nothing(checkpoint):
    guard = FakeGuard({"cat": 1.0, "dog": 2.0, "tree": 3.0, "car": 4.0, "knife attack": 6.0, "bloody": 5.0})
    before = guard.threshold
    result = calibration_of(guard, ["cat", "dog", "tree", "car"], ["knife attack", "bloody"])
    assert result.threshold == 4.5 and result.accuracy == 1.0 and guard.threshold == before
    assert result.encoder_identity == IDENTITY and result.n_concepts == 3
    with pytest.raises(LatentGuardError, match="no checkpoint path"):
        save_guard_calibration(result, guard, True)
    guard.checkpoint = checkpoint
    result = calibration_of(guard, ["cat", "dog", "tree", "car"], target_fpr=0.25)
    save_guard_calibration(result, guard, True)
    assert 3.0 < result.threshold <= 4.0
    assert load_calibration(checkpoint, encoder_identity=IDENTITY) == result.threshold


def test_calibrate_a_real_guard(tiny_encoder):
    """With target FPR 0 none of the calibration prompts is flagged; with 0.5 exactly half are."""
    from latentguard.guard import LatentGuard

    torch.manual_seed(0)
    guard = LatentGuard(EmbeddingMappingLayer(), tiny_encoder, ["knife", "blood", "gun"], cache_concepts=False)
    safe = ["a cat on a sofa", "a bowl of fruit", "mountains at dawn", "a red bicycle"]
    result = guard.calibrate(safe, target_fpr=0.0)
    assert guard.threshold == result.threshold and not any(v.unsafe for v in guard.check(safe, explain=False))
    guard.calibrate(safe, target_fpr=0.5)
    assert sum(v.unsafe for v in guard.check(safe, explain=False)) == 2


# -------------------------------------------------- LatentGuard integration (after the guard.py patch)
def _patched_guard():
    from latentguard.guard import LatentGuard

    if not hasattr(LatentGuard, "calibrate"):
        pytest.skip("LatentGuard.calibrate is not there yet (see the guard.py patch)")
    return LatentGuard


def test_from_pretrained_threshold_profiles_and_calibration_file(tiny_encoder, tmp_path):
    LatentGuard = _patched_guard()
    torch.manual_seed(0)
    checkpoint = tmp_path / "mine.pth"
    torch.save(EmbeddingMappingLayer().state_dict(), checkpoint)
    concepts = ["knife", "blood", "gun"]

    def load(threshold):
        return LatentGuard.from_pretrained(checkpoint, encoder=tiny_encoder, concepts=concepts, threshold=threshold,
                                           cache_concepts=False)

    assert load("paper").threshold == 4.47 and load("released").threshold == 9.0131 and load(3.25).threshold == 3.25
    with pytest.raises(LatentGuardError, match="not the released checkpoint.*--calibrate-safe.*--threshold"):
        load("auto")  # nothing calibrated yet, and these are not the released weights
    with pytest.raises(LatentGuardError, match="calibrate first"):
        load("calibrated")
    guard = load("paper")
    safe = ["a cat on a sofa", "a bowl of fruit", "mountains at dawn", "a red bicycle"]
    result = guard.calibrate(safe, target_fpr=0.25, save=True)
    assert calibration_path(checkpoint).is_file() and guard.threshold == result.threshold
    assert load("calibrated").threshold == result.threshold == load("auto").threshold
    with pytest.raises(LatentGuardError, match="calibrated with encoder"):
        from conftest import tiny_clip_text_model

        from latentguard.encoders import CLIPTextEncoder

        other = CLIPTextEncoder(tiny_clip_text_model(seed=5), device="cpu", tokenizer=tiny_encoder.tokenizer)
        LatentGuard.from_pretrained(checkpoint, encoder=other, concepts=concepts, threshold="auto",
                                    cache_concepts=False)


def test_non_utf8_calibration_file_is_a_one_line_error(tmp_path):
    from latentguard.decision.threshold import read_calibration
    from latentguard.errors import LatentGuardError

    bad = tmp_path / "model_parameters.threshold.yaml"
    bad.write_bytes(b"threshold: 4.5\nmethod: \xff\xfe\n")
    with pytest.raises(LatentGuardError, match="line 2 is not valid UTF-8"):
        read_calibration(bad)


def test_a_calibration_never_replaces_a_file_that_is_not_one(tmp_path):
    """guard.calibrate(save=PATH) replaced a user's data.threshold.yaml silently (a sixth hostile pass)."""
    from latentguard.decision.threshold import CalibrationResult, save_calibration
    from latentguard.errors import LatentGuardError

    weights = tmp_path / "data.csv"
    weights.write_text("id,text\n", encoding="utf-8")
    notes = tmp_path / "data.threshold.yaml"
    notes.write_text("MY NOTES\n", encoding="utf-8")
    result = CalibrationResult(1.0, "target_fpr", 0.01, 4, 0, 0.0, None, None)
    with pytest.raises(LatentGuardError, match="exists and is not a Latent Guard calibration file"):
        save_calibration(result, weights)
    assert notes.read_text(encoding="utf-8") == "MY NOTES\n"
    notes.unlink()
    assert save_calibration(result, weights) == notes and save_calibration(result, weights) == notes  # its own: fine


def test_too_few_safe_prompts_for_the_target_fpr_are_warned_about():
    """One safe prompt had been calibrated to "1% FPR" and saved as the record every `auto` user takes, silently (a
    thirty-sixth hostile pass): fewer than 1/target_fpr safe prompts cannot measure that rate, and it is said."""
    with pytest.warns(UserWarning, match=r"1 safe prompt\(s\) cannot measure a false-positive rate of 0.01.*at "
                      r"least 100 safe prompts"):
        calibrate([3.5], target_fpr=0.01)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        calibrate(np.arange(100.0), target_fpr=0.01)  # enough: no warning
        calibrate([1.0, 2.0], target_fpr=0.0)  # above every one is what 0 asks for
        calibrate([1.0, 2.0], [3.0])  # best accuracy on both classes


@pytest.mark.parametrize("kind", ["fifo", "directory", "dangling link"])
def test_a_calibration_record_path_that_is_no_regular_file_is_refused_not_read_as_none(tmp_path, kind):
    """A FIFO at `<ckpt>.threshold.yaml` was reported as "has no calibration file" (a thirty-sixth hostile pass);
    whatever stands there is said as what it is."""
    import os

    from latentguard.decision.threshold import calibration_path, load_calibration_result

    checkpoint = tmp_path / "ckpt.pth"
    checkpoint.write_bytes(b"x")
    record = calibration_path(checkpoint)
    {"fifo": lambda: os.mkfifo(record), "directory": record.mkdir,
     "dangling link": lambda: record.symlink_to(tmp_path / "gone.yaml")}[kind]()
    with pytest.raises(LatentGuardError, match="calibration record") as caught:
        load_calibration_result(checkpoint)
    assert "\n" not in str(caught.value)
    assert load_calibration_result(tmp_path / "other.pth") is None  # no record at all: still none


def test_labels_the_scores_do_not_separate_are_warned_about():
    """calibrate(safe, unsafe=safe[:5]) was accepted silently (a thirty-seventh hostile pass): best accuracy no better
    than calling every prompt the larger class says the labels or the guard are wrong."""
    safe = [0.1, 0.5, 0.9, 1.3, 2.0, 2.4]
    with pytest.warns(UserWarning, match="no better than guessing"):
        calibrate(safe, safe[:3])
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        calibrate(safe, [3.0, 4.0, 2.2])  # separated: no warning
