"""Choosing the decision threshold: calibration, a YAML record beside the checkpoint, named thresholds.

A prompt is unsafe when its score (max logit over the blacklist) reaches the threshold
(:mod:`latentguard.decision.rule`, as the released ``inference.py`` decides). The right threshold
depends on the weights, the encoder, the concept list and the data: the released inference uses
9.0131, while the paper's Table 1(a) accuracies come from about 4.47. So the threshold is
calibrated, not assumed:

* with safe prompts only, pick the lowest threshold whose false-positive rate on them is at most
  ``target_fpr`` (:func:`latentguard.decision.metrics.threshold_at_fpr`);
* with unsafe prompts as well, pick the threshold that maximises accuracy
  (:func:`latentguard.decision.metrics.best_accuracy_threshold`).

The result is saved as ``<checkpoint stem>.threshold.yaml`` beside the checkpoint (for
``model_parameters.pth``: ``model_parameters.threshold.yaml``) with what it was computed for:
the checkpoint's SHA-256 and the encoder's identity. Loading refuses a record made for other
weights or another encoder (its scores are on another scale: a different family, width, weights
fingerprint or option), accepts the same weights under another name (e.g. a Stable Diffusion
pipeline's own CLIP ViT-L/14), and only warns when the precision alone differs (float16 vs float32
runs of the same weights).
"""
from __future__ import annotations

import datetime as _dt
import math
import os
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..constants import AUTO, CALIBRATED
from ..errors import LatentGuardError
from ..io import atomic_write_text, sha256_of
from ..published import NAMED_THRESHOLDS, RELEASED, RELEASED_CHECKPOINT_SHA256
from ..yaml_files import read_yaml
from .rule import rates

FORMAT = "latentguard-threshold"
DEFAULT_TARGET_FPR = 0.01


@dataclass
class CalibrationResult:
    """A calibrated threshold and what it was computed from (serialised to YAML as is)."""

    threshold: float
    method: str                      # "target_fpr" | "best_accuracy"
    target_fpr: float | None
    n_safe: int
    n_unsafe: int
    fpr: float                       # measured on the calibration safe prompts
    tpr: float | None                # measured on the calibration unsafe prompts (None without them)
    accuracy: float | None
    encoder_identity: str | None = None
    checkpoint_sha256: str | None = None
    n_concepts: int | None = None
    slope: float | None = None       # probability slope fitted with unsafe prompts (decision.probability)
    # how the guard read its prompts (a bundle's recorded reading options, e.g. long_prompts): a bundle whose
    # config.json reads otherwise is refused, since its threshold's rates were not measured that way
    reading: dict[str, Any] | None = None
    date: str = field(default_factory=lambda: _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))

    def to_dict(self) -> dict[str, Any]:
        return {"format": FORMAT, **asdict(self)}


def _scores(values: Any, what: str) -> np.ndarray:
    if values is None:
        return np.empty(0)
    if hasattr(values, "detach"):
        values = values.detach().float().cpu().numpy()
    array = np.asarray(values, dtype=np.float64)
    if array.ndim == 2:  # [N, C] logits: a prompt's score is its maximum over concepts
        array = array.max(axis=1) if array.shape[1] else np.full(array.shape[0], -np.inf)
    array = array.reshape(-1)
    if np.isnan(array).any():
        raise LatentGuardError(f"{what} scores contain NaN; check the checkpoint and the encoder")
    return array


def calibrate(scores_safe, scores_unsafe=None, target_fpr: float = DEFAULT_TARGET_FPR) -> CalibrationResult:
    """Threshold from scores: target FPR on safe scores alone, best accuracy when unsafe scores are given.

    Scores may be sequences, numpy arrays or tensors of shape ``[N]`` (or ``[N, C]`` logits).
    """
    from .metrics import best_accuracy_threshold, threshold_at_fpr  # scikit-learn loads with them

    safe = _scores(scores_safe, "safe")
    unsafe = _scores(scores_unsafe, "unsafe")
    if safe.size == 0:
        raise LatentGuardError("calibration needs at least one safe prompt")
    every = np.r_[safe, unsafe]
    if not np.isfinite(every).all():
        raise LatentGuardError("calibration scores are not finite; check the checkpoint and the encoder")
    if every.size > 1 and every.max() == every.min():  # e.g. all-zero weights: a threshold separates nothing
        raise LatentGuardError(f"every calibration prompt scores {every[0]:g}: the weights separate nothing, so no "
                               "threshold can be calibrated (check the checkpoint)")
    if unsafe.size == 0:
        if isinstance(target_fpr, bool) or not isinstance(target_fpr, (int, float)) or not 0.0 <= target_fpr < 1.0:
            raise LatentGuardError(f"target FPR must be a number in [0, 1), got {target_fpr!r}")
        threshold = threshold_at_fpr(safe, float(target_fpr))
        method, used_fpr = "target_fpr", float(target_fpr)
        if target_fpr > 0 and safe.size * target_fpr < 1:  # one prompt had made the record every `auto` user takes
            warnings.warn(f"{safe.size} safe prompt(s) cannot measure a false-positive rate of {target_fpr:g}: the "
                          f"threshold ({threshold:.4g}) is only above every one of them; calibrate on at least "
                          f"{math.ceil(1 / target_fpr)} safe prompts like the ones you will check", stacklevel=2)
    else:
        labels = np.concatenate([np.zeros(safe.size, dtype=np.int64), np.ones(unsafe.size, dtype=np.int64)])
        threshold = best_accuracy_threshold(labels, np.concatenate([safe, unsafe]))
        method, used_fpr = "best_accuracy", None
    slope = None
    if unsafe.size:  # with both classes the probability slope is fitted at the chosen threshold
        from .probability import fit_slope

        slope = fit_slope(np.r_[safe, unsafe], np.r_[np.zeros(safe.size), np.ones(unsafe.size)], threshold)
    measured = rates(np.r_[np.zeros(safe.size), np.ones(unsafe.size)], np.r_[safe, unsafe], threshold)
    fpr = measured["fpr"]
    tpr = measured["tpr"] if unsafe.size else None
    accuracy = measured["accuracy"] if unsafe.size else None
    if accuracy is not None and accuracy <= max(safe.size, unsafe.size) / every.size:  # the same prompts as both had
        warnings.warn(f"the scores separate the {unsafe.size} unsafe prompts from the {safe.size} safe ones no better "
                      f"than guessing (best accuracy {accuracy:.3f}): check the labels and the guard", stacklevel=2)
    return CalibrationResult(threshold=float(threshold), method=method, target_fpr=used_fpr, n_safe=int(safe.size),
                             n_unsafe=int(unsafe.size), fpr=fpr, tpr=tpr, accuracy=accuracy, slope=slope)


def calibration_path(checkpoint: str | Path) -> Path:
    """Where the record of ``checkpoint`` lives: ``model_parameters.pth`` -> ``model_parameters.threshold.yaml``."""
    checkpoint = Path(checkpoint)
    return checkpoint.with_name(f"{checkpoint.stem}.threshold.yaml")


def save_calibration(result: CalibrationResult, checkpoint: str | Path, *, encoder_identity: str | None = None,
                     path: str | Path | None = None) -> Path:
    """Write ``result`` as YAML beside ``checkpoint`` (atomically), stamped with the checkpoint's SHA-256.

    ``encoder_identity`` (if given) overrides the one in ``result``. Returns the file written.
    """
    checkpoint = Path(checkpoint)
    if not checkpoint.is_file():
        raise LatentGuardError(f"checkpoint not found: {checkpoint} (calibration is saved beside it)")
    result.checkpoint_sha256 = sha256_of(checkpoint)
    if encoder_identity is not None:
        result.encoder_identity = encoder_identity
    target = Path(path) if path is not None else calibration_path(checkpoint)
    if target.is_symlink() or (target.exists() and not _is_calibration_file(target)):  # never replace a user's file
        raise LatentGuardError(f"{target} exists and is not a Latent Guard calibration file; move it away or save "
                               "the calibration elsewhere (save=PATH)")
    header = (f"# Latent Guard threshold calibrated for {checkpoint.name}; prompts scoring >= threshold are "
              f"blocked.\n# Delete this file (or pass --threshold released|paper|NUMBER) to stop using it.\n")
    import yaml

    atomic_write_text(target, header + yaml.safe_dump(result.to_dict(), sort_keys=False))
    return target


def _is_calibration_file(path: Path) -> bool:
    """Whether ``path`` is a calibration file this project wrote (its YAML says ``format: FORMAT``)."""
    try:
        read_calibration(path)
    except LatentGuardError:
        return False
    return True


def read_calibration(path: str | Path) -> CalibrationResult:
    """Parse a calibration YAML file (no checks against a checkpoint; see :func:`load_calibration`)."""
    path = Path(path)
    data = read_yaml(path, "calibration file")  # missing file, bad UTF-8 or YAML, duplicate keys: one line
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise LatentGuardError(f"{path}: not a Latent Guard calibration file (no 'format: {FORMAT}')")
    return calibration_from_mapping(data, path)


def calibration_from_mapping(data: dict, path: str | Path) -> CalibrationResult:
    """A calibration record from its mapping (a YAML file's, or a guard bundle's ``config.json``), checked;
    ``path`` names where it was read in the one-line errors."""
    data = dict(data)
    data.pop("format", None)
    threshold = data.get("threshold")
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not math.isfinite(threshold):
        raise LatentGuardError(f"{path}: 'threshold' must be a finite number, got {threshold!r}")
    known = set(CalibrationResult.__dataclass_fields__)
    unknown = sorted(set(data) - known)
    if unknown:
        raise LatentGuardError(f"{path}: unknown keys {', '.join(unknown)}; recalibrate to rewrite the file")
    missing = sorted({"threshold", "method", "n_safe", "n_unsafe"} - set(data))
    if missing:
        raise LatentGuardError(f"{path}: missing keys {', '.join(missing)}; recalibrate to rewrite the file")
    for key in ("target_fpr", "fpr", "tpr", "accuracy", "encoder_identity", "checkpoint_sha256", "n_concepts", "slope",
                "reading"):
        data.setdefault(key, None)
    if data["reading"] is not None and not (isinstance(data["reading"], dict)
                                            and all(isinstance(k, str) for k in data["reading"])):
        raise LatentGuardError(f"{path}: 'reading' must be a mapping of option names to values; recalibrate to "
                               "rewrite the file")
    if data["slope"] is not None:
        from .probability import validate_slope

        try:
            data["slope"] = validate_slope(data["slope"])
        except LatentGuardError as exc:
            raise LatentGuardError(f"{path}: {exc}; recalibrate to rewrite the file") from None
    data["threshold"] = float(threshold)
    if data.get("date") is not None:
        data["date"] = str(data["date"])
    else:
        data.pop("date", None)
    return CalibrationResult(**data)


def load_calibration_result(checkpoint: str | Path, *, encoder_identity: str | None = None,
                            path: str | Path | None = None, sha256: str | None = None) -> CalibrationResult | None:
    """The record beside ``checkpoint``, checked against it; ``None`` when there is no record.

    Refuses (one-line error) a record made for other weights (SHA-256 differs; ``sha256`` is the
    checkpoint's when the caller has hashed it already) or another encoder (identity differs beyond
    precision); warns when only the encoder's precision differs.
    """
    checkpoint = Path(checkpoint)
    file = Path(path) if path is not None else calibration_path(checkpoint)
    if not os.path.lexists(file):
        return None
    from ..io import named_file_problem

    problem = named_file_problem(file, "calibration record")  # a FIFO there had read as "no calibration file"
    if problem is not None:
        raise LatentGuardError(problem)
    result = read_calibration(file)
    if result.checkpoint_sha256 is None:  # a record that names no weights cannot be shown to be for these
        raise LatentGuardError(f"{file} records no checkpoint_sha256, so it cannot be matched to {checkpoint}; "
                               "recalibrate (guard.calibrate / --calibrate-safe) or delete the file")
    if sha256 is None and checkpoint.is_file():
        sha256 = sha256_of(checkpoint)
    if sha256 is not None and sha256 != result.checkpoint_sha256:
        raise LatentGuardError(
            f"{file} was calibrated for other weights (checkpoint SHA-256 {result.checkpoint_sha256[:12]}..., "
            f"{checkpoint} has {sha256[:12]}...); recalibrate (guard.calibrate / --calibrate) or delete the file")
    if encoder_identity is not None:
        validate_record_encoder(result, encoder_identity, file)
    return result


def validate_record_encoder(result: CalibrationResult, encoder_identity: str, file: str | Path) -> None:
    """Refuse a record made with another encoder (its scores are on another scale); warn on precision alone."""
    if result.encoder_identity is None:
        return
    from ..encoders.identity import identity_parts, same_embeddings

    same = same_embeddings(result.encoder_identity, encoder_identity)
    if same is False:
        raise LatentGuardError(
            f"{file} was calibrated with encoder {result.encoder_identity}, but the encoder now is "
            f"{encoder_identity}; recalibrate or delete the file")
    if same is None:
        warnings.warn(f"{file} was calibrated with the encoder in "
                      f"{identity_parts(result.encoder_identity)['precision']}, "
                      f"now it runs in {identity_parts(encoder_identity)['precision']}; scores may shift "
                      f"slightly (recalibrate to be exact)", stacklevel=3)


def load_calibration(checkpoint: str | Path, *, encoder_identity: str | None = None) -> float | None:
    """The calibrated threshold saved beside ``checkpoint``, or ``None`` when there is none."""
    result = load_calibration_result(checkpoint, encoder_identity=encoder_identity)
    return None if result is None else result.threshold


@dataclass(frozen=True)
class ThresholdChoice:
    """A resolved threshold, where it came from (for messages and reports) and the record it was read from."""

    value: float
    origin: str                          # "released", "paper", "--threshold" or "calibrated, <file>"
    record: CalibrationResult | None = None
    record_path: Path | None = None

    @property
    def fitted_slope(self) -> float | None:
        """The probability slope fitted with this threshold (its record's), or ``None``."""
        return None if self.record is None else self.record.slope


def choose_threshold(value: float | int | str | None, checkpoint: str | Path | None = None, *,
                     sha256: str | None = None) -> ThresholdChoice:
    """A number, a numeric string, a name (``released``, ``paper``), ``calibrated`` or ``auto``, resolved.

    ``calibrated`` reads the record beside ``checkpoint`` and fails with a clear message if absent;
    ``auto`` reads it when present, else gives 9.0131 for the released weights only (recognised by
    SHA-256): other weights may never reach it (nothing would ever be flagged), so without their
    record ``auto`` refuses, saying how to calibrate or pick a threshold. The record is read once and
    the checkpoint hashed at most once (``sha256``: its hash, when the caller has it); the record's
    encoder is checked by :func:`validate_record_encoder` once the encoder is known.
    """
    names = f"{', '.join(NAMED_THRESHOLDS)}, {CALIBRATED} or {AUTO}"
    if isinstance(value, bool) or value is None:
        raise LatentGuardError(f"threshold must be a number, {names}, got {value!r}")
    if isinstance(value, (int, float)):
        return ThresholdChoice(_finite(value, value), "--threshold")
    text = str(value).strip()
    key = text.lower()
    if key in NAMED_THRESHOLDS:
        return ThresholdChoice(NAMED_THRESHOLDS[key], key)
    if key in (AUTO, CALIBRATED):
        how = ("calibrate with --calibrate-safe SAFE_PROMPTS.txt (guard.calibrate(safe_prompts, save=True)) "
               "or pass --threshold NUMBER|released|paper")
        if checkpoint is None:
            raise (LatentGuardError(f"threshold 'auto' needs the checkpoint it is for; {how}") if key == AUTO else
                   LatentGuardError("threshold 'calibrated' needs the checkpoint whose calibration file to read"))
        checkpoint = Path(checkpoint)
        if sha256 is None and checkpoint.is_file():
            sha256 = sha256_of(checkpoint)
        record = load_calibration_result(checkpoint, sha256=sha256)
        file = calibration_path(checkpoint)
        if record is not None:
            return ThresholdChoice(record.threshold, f"calibrated, {file}", record, file)
        if key == CALIBRATED:
            raise LatentGuardError(
                f"threshold 'calibrated' but no calibration file {file}; calibrate first "
                f"(guard.calibrate(safe_prompts, ..., save=True)) or pass --threshold released|paper|NUMBER")
        if sha256 == RELEASED_CHECKPOINT_SHA256:
            return ThresholdChoice(NAMED_THRESHOLDS[RELEASED], RELEASED)
        raise LatentGuardError(f"threshold 'auto': {checkpoint} is not the released checkpoint (SHA-256) and has "
                               f"no calibration file {file.name} beside it; {how}")
    try:  # written in ASCII digits: float() also reads "٥", "５" and "1_0" (a forty-second hostile pass)
        number = float(text) if text.isascii() and "_" not in text else float("x")
    except ValueError:
        raise LatentGuardError(f"unknown threshold '{text}' (use a number in ASCII digits, {names})") from None
    return ThresholdChoice(_finite(number, value), "--threshold")


def _finite(number: float, given: Any) -> float:
    try:
        number = float(number)
    except OverflowError:  # an int too large for a float
        number = math.inf
    if not math.isfinite(number):
        raise LatentGuardError(f"threshold must be finite, got {given!r}")
    return number


def resolve_threshold(value: float | int | str | None, checkpoint: str | Path | None = None, *,
                      encoder_identity: str | None = None) -> float:
    """:func:`choose_threshold`'s value, its record checked against ``encoder_identity`` too."""
    choice = choose_threshold(value, checkpoint)
    if choice.record is not None and encoder_identity is not None:
        validate_record_encoder(choice.record, encoder_identity, choice.record_path)
    return choice.value


def calibration_of(guard, safe_prompts: Sequence[str], unsafe_prompts: Sequence[str] | None = None,
                   target_fpr: float = DEFAULT_TARGET_FPR) -> CalibrationResult:
    """The calibration record of ``guard`` on prompts, scored with ``guard.scores(prompts)``.

    Reads the guard and changes nothing: the guard applies the record itself (``LatentGuard.calibrate``),
    so nothing below the guard sets its threshold. Any guard-like object works: it needs
    ``scores(prompts)`` and optionally ``encoder`` and ``concepts``.
    """
    safe_prompts = list(safe_prompts)
    unsafe_prompts = list(unsafe_prompts) if unsafe_prompts else []
    if not safe_prompts:
        raise LatentGuardError("calibration needs at least one safe prompt")
    result = calibrate(guard.scores(safe_prompts), guard.scores(unsafe_prompts) if unsafe_prompts else None,
                       target_fpr=target_fpr)
    encoder = getattr(guard, "encoder", None)
    result.encoder_identity = getattr(encoder, "identity", None)
    concepts = getattr(guard, "concepts", None)
    result.n_concepts = len(concepts) if concepts is not None else None
    return result


def save_guard_calibration(result: CalibrationResult, guard, save: bool | str | Path, *, overwrite: bool = False,
                           flag: str = "overwrite=True") -> None:
    """``save=True``: write ``result`` beside the guard's checkpoint; ``save=<path>``: beside that path.

    An existing calibration record there is replaced only with ``overwrite``: every ``--threshold auto``
    user of those weights (inference, score, a server at its next reload) takes its threshold, so a
    calibration on other prompts (a safe file with an unsafe line, ``--target-fpr 0``) must not replace
    the one ``main.py`` fitted on its validation split unasked. ``flag`` names the opt-in in the refusal.
    """
    if not save:
        return
    checkpoint = save if not isinstance(save, bool) else (getattr(guard, "checkpoint", None)
                                                          or getattr(guard, "checkpoint_path", None))
    if checkpoint is None:
        raise LatentGuardError("cannot save the calibration: the guard has no checkpoint path (pass "
                               "save=<checkpoint path>; a bundle's guard keeps it with guard.save_pretrained)")
    if not overwrite:
        refuse_replacing_record(calibration_path(checkpoint), flag)
    save_calibration(result, checkpoint)


def refuse_replacing_record(target: Path, flag: str) -> None:
    """Refuse (one line) to replace the calibration record ``target`` unless the caller opted in with ``flag``;
    a file there that is not a record is refused by :func:`save_calibration` itself."""
    if target.is_symlink() or not target.is_file() or not _is_calibration_file(target):
        return
    threshold = read_calibration(target).threshold
    raise LatentGuardError(f"{target} already holds a calibration record (threshold {threshold:.4f}), which "
                           f"--threshold auto uses with these weights; pass {flag} to replace it, or move the file "
                           "away first")
