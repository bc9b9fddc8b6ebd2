"""The guard bundle's ``config.json``: its schema, written once here and checked at every load.

A bundle describes itself: the mapping layer's sizes, the SHA-256 of its ``model.safetensors``, the
encoder it was trained for (loadable name, family, revision, full identity, options), the threshold
with how it was chosen and the weights it belongs to, per-concept thresholds, the probability slope,
the categories, and the optional pre-encoded concept vectors. Unknown keys, missing keys, wrong
types and unknown versions are one-line errors naming the file and the key, as for the config.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Callable, Mapping

from ..constants import DEFAULT_WINDOW_STRIDE, ENCODER_DTYPES, ENCODER_FAMILIES
from ..errors import LatentGuardError
from ..io import strict_json

FORMAT = "latentguard-bundle"
FORMAT_VERSION = 1
CONFIG = "config.json"
WEIGHTS = "model.safetensors"
CONCEPTS = "concepts.yaml"
CARD = "README.md"
VECTORS = "concept_vectors.safetensors"
BUNDLE_FILES = (CONFIG, WEIGHTS, CONCEPTS, CARD, VECTORS)
FAMILIES = tuple(ENCODER_FAMILIES)  # the registered encoder families (latentguard.constants)
# The guard's options a bundle records in ``encoder.options`` (how its prompts are read), each with the value an
# unset one is written as. These are the file format's keys (frozen by FORMAT_VERSION; they happen to spell the
# options' names): the guard hands its values over by these keys (guard/options.py ``RECORDED``), and the
# writing code here copies whatever it is handed, so no other hub module names them.
RECORDED_OPTIONS = {"long_prompts": False, "window_stride": DEFAULT_WINDOW_STRIDE}

Check = Callable[[Any], "str | None"]  # None when fine, else what the value must be


# ------------------------------------------------------------------------------------ checks
def _text(value: Any) -> str | None:
    return None if isinstance(value, str) and value.strip() else "must be a non-empty string"


def _sha256(value: Any) -> str | None:
    ok = isinstance(value, str) and len(value) == 64 and all(c in "0123456789abcdef" for c in value)
    return None if ok else "must be a SHA-256 (64 lowercase hex digits)"


def _positive_int(value: Any) -> str | None:
    return None if isinstance(value, int) and not isinstance(value, bool) and value > 0 else "must be an integer > 0"


def _finite(value: Any) -> str | None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    return None if ok else "must be a finite number"


def _positive(value: Any) -> str | None:
    return _finite(value) or (None if value > 0 else "must be a number > 0")


def _bool(value: Any) -> str | None:
    return None if isinstance(value, bool) else "must be true or false"


def _equal(expected: Any) -> Check:
    return lambda value: None if value == expected else f"must be {expected!r}"


def _choice(*options: str) -> Check:
    return lambda value: None if value in options else f"must be one of {', '.join(options)}"


def _optional(check: Check) -> Check:
    return lambda value: None if value is None else check(value)


def _names(value: Any) -> str | None:
    ok = isinstance(value, list) and all(isinstance(v, str) and v.strip() for v in value)
    return None if ok else "must be a list of non-empty names"


def _numbers_by_name(value: Any) -> str | None:
    ok = isinstance(value, dict) and all(isinstance(k, str) and _finite(v) is None for k, v in value.items())
    return None if ok else "must map concepts to finite numbers"


def _mapping(value: Any) -> str | None:
    return None if isinstance(value, dict) else "must be a mapping"


# Each section: key -> check, or a nested section (a dict). ``OPTIONAL_SECTIONS`` may be null.
SCHEMA: dict[str, Any] = {
    "format": _equal(FORMAT),
    "format_version": _positive_int,
    "created_with": _text,
    "mapping_layer": {"in_dim": _positive_int, "num_heads": _positive_int, "head_dim": _positive_int,
                      "out_dim": _positive_int, "mask_padding": _bool},
    "weights": {"file": _equal(WEIGHTS), "sha256": _sha256, "source_sha256": _optional(_sha256)},
    "encoder": {"name": _text, "family": _choice(*FAMILIES), "revision": _optional(_text), "identity": _text,
                "weights_sha256": _optional(_sha256),
                "options": {"dtype": _choice(*ENCODER_DTYPES), "attention_mask": _bool,
                            "max_length": _optional(_positive_int), "long_prompts": _bool,
                            "window_stride": _positive_int, "trim_padding": _bool}},  # RECORDED_OPTIONS: same keys
    "threshold": {"value": _finite, "origin": _text, "weights_sha256": _sha256, "calibration": _optional(_mapping)},
    "concept_thresholds": _numbers_by_name,
    "slope": _optional(_positive),
    "categories": {"default": _text, "names": _names},
    "concepts": {"file": _equal(CONCEPTS), "count": _positive_int, "sha256": _sha256},
    "concept_vectors": {"file": _equal(VECTORS), "sha256": _sha256, "encoder_identity": _text,
                        "count": _positive_int},
}
OPTIONAL_SECTIONS = ("threshold", "concept_vectors")
# Keys added after format_version 1 was published: a config without them reads as these values
# (what every earlier bundle computed), so older bundles load unchanged.
LATER_KEYS = {("mapping_layer", "mask_padding"): False, ("encoder", "weights_sha256"): None,
              ("encoder", "options", "trim_padding"): False}


def _with_later_keys(data: dict[str, Any]) -> dict[str, Any]:
    for path, default in LATER_KEYS.items():
        node = data
        for part in path[:-1]:
            node = node.get(part) if isinstance(node, dict) else None
        if isinstance(node, dict) and path[-1] not in node:
            node[path[-1]] = default
    return data


def _training_files(value: Any) -> str | None:
    ok = isinstance(value, list) and all(
        (isinstance(v, str) and v.strip()) or (isinstance(v, dict) and isinstance(v.get("path"), str)
                                                and set(v) <= {"path", "sha256"}
                                                and (v.get("sha256") is None or _sha256(v["sha256"]) is None))
        for v in value)
    return None if ok else "must be a list of paths or {path, sha256} records"


# Keys a config may leave out (older bundles have none): ``training.files``, the files the weights were trained
# on, which `latentguard benchmark` checks every evaluated prompt set against (eval/benchmark/overlap.py).
ABSENT_OK: dict[str, Any] = {"training": {"files": _training_files}}


def _check(node: Any, schema: Mapping[str, Any], source: str, prefix: str = "") -> None:
    where = f"'{prefix[:-1]}'" if prefix else "the top level"
    if not isinstance(node, dict):
        raise LatentGuardError(f"{source}: {where} must be a JSON object, got {type(node).__name__}")
    unknown = sorted(set(node) - set(schema))
    if unknown:
        raise LatentGuardError(f"{source}: unknown key(s) {', '.join(prefix + k for k in unknown)} "
                               f"(known at {where}: {', '.join(schema)})")
    missing = [prefix + k for k in schema if k not in node]
    if missing:
        raise LatentGuardError(f"{source}: missing key(s) {', '.join(missing)}; save the bundle again "
                               "(guard.save_pretrained / latentguard export)")
    for key, rule in schema.items():
        value, dotted = node[key], prefix + key
        if isinstance(rule, dict):
            if value is None and dotted in OPTIONAL_SECTIONS:
                continue
            _check(value, rule, source, dotted + ".")
            continue
        problem = rule(value)
        if problem is not None:
            raise LatentGuardError(f"{source}: '{dotted}' {problem}, got {value!r}")


def validate_config(data: Any, source: str | Path) -> dict[str, Any]:
    """``data`` (a parsed ``config.json``) checked against the schema and against itself; returned as is.

    Besides types: the version must be one this release reads, the encoder identity must agree with
    the family and the mapping layer's width, and the threshold must be recorded for these weights.
    """
    source = str(source)
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise LatentGuardError(f"{source}: not a Latent Guard bundle config (no \"format\": \"{FORMAT}\")")
    version = data.get("format_version")
    if isinstance(version, int) and not isinstance(version, bool) and version > FORMAT_VERSION:
        raise LatentGuardError(f"{source}: bundle format_version {version} is newer than this latentguard reads "
                               f"({FORMAT_VERSION}); upgrade latentguard")
    _check(_with_later_keys(data), {**SCHEMA, **{k: v for k, v in ABSENT_OK.items() if k in data}}, source)
    from ..encoders.identity import identity_parts

    encoder, layer = data["encoder"], data["mapping_layer"]
    parts = identity_parts(encoder["identity"])
    if not parts["weights"]:
        raise LatentGuardError(f"{source}: 'encoder.identity' {encoder['identity']!r} is not an encoder identity "
                               "(family:name:h<width>:<weights fingerprint>...)")
    if parts["family"] != encoder["family"] or int(parts["width"]) != layer["in_dim"]:
        raise LatentGuardError(f"{source}: 'encoder.identity' ({parts['family']}, width {parts['width']}) disagrees "
                               f"with encoder.family {encoder['family']} / mapping_layer.in_dim {layer['in_dim']}")
    threshold = data["threshold"]
    if threshold is not None and threshold["weights_sha256"] != data["weights"]["sha256"]:
        raise LatentGuardError(
            f"{source}: the threshold was recorded for other weights (threshold.weights_sha256 "
            f"{threshold['weights_sha256'][:12]}..., weights.sha256 {data['weights']['sha256'][:12]}...); "
            "recalibrate and save the bundle again, or pass threshold=NUMBER")
    if threshold is not None and threshold["calibration"] is not None:
        record = calibration_record(data, source)
        if record.threshold != threshold["value"]:
            raise LatentGuardError(f"{source}: threshold.value {threshold['value']} differs from its calibration "
                                   f"record's threshold {record.threshold}")
        changed = reading_difference(encoder["options"], record.reading)
        if changed:
            raise LatentGuardError(f"{source}: encoder.options read prompts otherwise than its threshold was "
                                   f"calibrated with: {changed}; restore the calibrated values, or "
                                   "load with threshold=NUMBER and the options you want")
    return data


def reading_difference(options: Mapping[str, Any], reading: Mapping[str, Any] | None) -> str | None:
    """How ``options`` (``encoder.options``) read prompts otherwise than a calibration record's ``reading`` says it
    was measured, for a refusal; ``None`` when they agree or the record names no reading (an older one)."""
    if reading is None or all(options[key] == reading.get(key) for key in RECORDED_OPTIONS):
        return None
    differs = [key for key in RECORDED_OPTIONS if options[key] != reading.get(key)]
    return ", ".join(f"{key} {options[key]!r} (calibrated with {reading.get(key)!r})" for key in differs)


def calibration_record(data: Mapping[str, Any], source: str | Path):
    """The checked :class:`~latentguard.decision.threshold.CalibrationResult` of a checked config, or None."""
    threshold = data["threshold"]
    if threshold is None or threshold["calibration"] is None:
        return None
    from ..decision.threshold import calibration_from_mapping

    return calibration_from_mapping(threshold["calibration"], f"{source} (threshold.calibration)")


def read_config(path: str | Path) -> dict[str, Any]:
    """Read and check a bundle's ``config.json``; bad JSON is one line naming the file and the line."""
    from ..regular_files import open_regular_read

    path = Path(path)
    try:
        with open_regular_read(path, "bundle config") as handle:  # a FIFO there must not hang a reload
            text = handle.read().decode("utf-8")
    except UnicodeDecodeError:
        raise LatentGuardError(f"{path}: not UTF-8 text") from None
    except OSError as exc:
        raise LatentGuardError(f"cannot read {path} ({exc.strerror or exc})") from None
    data = strict_json(text, str(path))  # a key twice, NaN or Infinity, bad JSON: one line naming the file
    return validate_config(data, path)


def recorded_options(given: Mapping[str, Any] | None) -> dict[str, Any]:
    """The :data:`RECORDED_OPTIONS` part of ``encoder.options`` from the values a guard (or a config) hands over
    (``None`` or missing: the default); a key the format does not record is refused, never dropped silently."""
    given = dict(given or {})
    unknown = sorted(set(given) - set(RECORDED_OPTIONS))
    if unknown:
        raise LatentGuardError(f"a bundle records no encoder option {', '.join(unknown)}")
    return {key: default if given.get(key) is None else type(default)(given[key])
            for key, default in RECORDED_OPTIONS.items()}


def reads_long_prompts(config: Mapping[str, Any]) -> bool:
    """Whether a bundle's guard scores prompts longer than its encoder's context over windows."""
    return bool(config["encoder"]["options"]["long_prompts"])


def config_json(data: Mapping[str, Any]) -> str:
    """The text of a ``config.json`` (indented, keys in schema order, a final newline)."""
    return json.dumps(data, indent=2, ensure_ascii=False, allow_nan=False) + "\n"
