"""Decisions and metrics: the one ``score >= threshold`` rule, the detection metrics (ROC AUC, rates,
FPR at a TPR), and the threshold itself: named, calibrated on data, and recorded beside the weights
it belongs to."""
from __future__ import annotations

from .rule import decide, flags, rates
from .threshold import (
                        CalibrationResult,
                        ThresholdChoice,
                        calibrate,
                        calibration_of,
                        calibration_path,
                        choose_threshold,
                        load_calibration,
                        read_calibration,
                        resolve_threshold,
                        save_calibration,
)

__all__ = ["CalibrationResult", "ThresholdChoice", "calibrate", "calibration_of", "calibration_path",
           "choose_threshold", "decide", "flags", "load_calibration", "rates", "read_calibration",
           "resolve_threshold", "save_calibration"]
