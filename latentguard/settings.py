"""Typed config: one dataclass per section, every key's type and range checked once, at load.

:func:`latentguard.config.load_config` merges defaults, the YAML file and the CLI flags into a plain
mapping and hands it to :meth:`Config.from_mapping`, which checks each key with the rule in its
field's metadata and raises a one-line :class:`LatentGuardError` naming the file and the key. Code
that wants attribute access reads the returned :class:`Config` (``cfg.train.lr``); code that reads
the mapping may rely on every value having been checked.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from .calibration import THRESHOLD_NAMES  # names resolve_threshold accepts
from .constants import BLACKLIST_MATCHES, ENCODER_DTYPES, ENCODER_TYPES, STORE_DTYPES
from .errors import LatentGuardError
from .precision import PRECISIONS  # exact | fast


Check = Callable[[Any], str | None]  # None when the value is fine, else what it must be


def _number(value: Any) -> bool:
    return not isinstance(value, bool) and isinstance(value, (int, float))


def positive_int(value: Any) -> str | None:
    if not _number(value) or value <= 0:
        return "must be a positive number"
    return None if isinstance(value, int) else "must be an integer"


def non_negative_int(value: Any) -> str | None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        return "must be an integer >= 0"
    return None


def integer(value: Any) -> str | None:
    return None if not isinstance(value, bool) and isinstance(value, int) else "must be an integer"


def positive_float(value: Any) -> str | None:
    if not _number(value) or value <= 0:
        return "must be a positive number"
    return None if math.isfinite(value) else "must be a finite number"


def non_negative_float(value: Any) -> str | None:
    return None if _number(value) and math.isfinite(value) and value >= 0 else "must be a finite number >= 0"


def fraction(value: Any) -> str | None:
    return None if _number(value) and 0.0 <= value < 1.0 else "must be a number in [0, 1)"


def boolean(value: Any) -> str | None:
    return None if isinstance(value, bool) else "must be true or false (unquoted)"


def text(value: Any) -> str | None:
    return None if isinstance(value, str) and value.strip() else "must be a non-empty string"


def optional_path(value: Any) -> str | None:
    return None if value is None or (isinstance(value, str) and value.strip()) else "must be a file path or null"


def choice(*options: str) -> Check:
    def check(value: Any) -> str | None:
        return None if value in options else f"must be one of {sorted(options)}"
    return check


def threshold(optional: bool) -> Check:
    def check(value: Any) -> str | None:
        if value is None and optional:
            return None
        if _number(value):
            return None if math.isfinite(value) else "must be a finite number"
        if isinstance(value, str):
            try:
                return None if math.isfinite(float(value)) else "must be a finite number"
            except ValueError:
                if value.strip().lower() in THRESHOLD_NAMES:
                    return None
        return f"must be a number or one of {', '.join(THRESHOLD_NAMES)}{' or null' if optional else ''}"
    return check


def names(value: Any) -> str | None:
    if isinstance(value, str) or (isinstance(value, list) and all(isinstance(v, str) for v in value)):
        return None
    return "must be a list of names or a comma-separated string"


def key(check: Check) -> Any:
    """A config field checked by ``check``."""
    return field(metadata={"check": check})


def _build(cls: type, values: Mapping[str, Any], source: str, prefix: str) -> Any:
    kwargs = {}
    for item in dataclasses.fields(cls):
        dotted, value = f"{prefix}{item.name}", values[item.name]
        if "check" not in item.metadata:  # a section of Config
            kwargs[item.name] = _build(_SECTIONS[item.name], value, source, dotted + ".")
            continue
        problem = item.metadata["check"](value)
        if problem is not None:
            raise LatentGuardError(f"{source}: '{dotted}' {problem}, got {value!r}")
        kwargs[item.name] = value
    return cls(**kwargs)


# --------------------------------------------------------------------------------- sections
@dataclass(frozen=True)
class EncoderSettings:
    name: str = key(text)
    type: str = key(choice(*ENCODER_TYPES))
    dtype: str = key(choice(*ENCODER_DTYPES))
    batch_size: int = key(positive_int)
    attention_mask: bool = key(boolean)
    long_prompts: bool = key(boolean)
    window_stride: int = key(positive_int)


@dataclass(frozen=True)
class ModelSettings:
    num_heads: int = key(positive_int)
    head_dim: int = key(positive_int)
    out_dim: int = key(positive_int)


@dataclass(frozen=True)
class StoreSettings:
    dtype: str = key(choice(*STORE_DTYPES))


@dataclass(frozen=True)
class DataSettings:
    valid_size: int = key(non_negative_int)
    seed: int = key(integer)


@dataclass(frozen=True)
class TrainSettings:
    epochs: int = key(positive_int)
    batch_size: int = key(positive_int)
    lr: float = key(positive_float)
    weight_decay: float = key(non_negative_float)
    seed: int = key(non_negative_int)
    val_every: int = key(positive_int)
    no_cache: bool = key(boolean)
    save_every: int = key(positive_int)
    eval_batch_size: int = key(positive_int)
    keep_best: bool = key(boolean)


@dataclass(frozen=True)
class EvalSettings:
    threshold: float | str | None = key(threshold(optional=True))
    baselines: list[str] | str = key(names)
    bert_model: str | None = key(optional_path)
    batch_size: int = key(positive_int)
    blacklist_match: str = key(choice(*BLACKLIST_MATCHES))


@dataclass(frozen=True)
class InferenceSettings:
    threshold: float | str = key(threshold(optional=False))
    batch_size: int = key(positive_int)
    concepts: str | None = key(optional_path)
    allowlist: str | None = key(optional_path)
    top_k: int = key(positive_int)


@dataclass(frozen=True)
class CalibrationSettings:
    target_fpr: float = key(fraction)


_SECTIONS: dict[str, type] = {
    "encoder": EncoderSettings, "model": ModelSettings, "store": StoreSettings, "data": DataSettings,
    "train": TrainSettings, "eval": EvalSettings, "inference": InferenceSettings,
    "calibration": CalibrationSettings,
}


@dataclass(frozen=True)
class Config:
    """The whole config, typed: top-level paths plus one object per section."""

    dataset: str = key(text)
    cache_dir: str = key(text)
    output_dir: str = key(text)
    checkpoint: str = key(text)
    device: str = key(text)
    precision: str = key(choice(*PRECISIONS))
    encoder: EncoderSettings = None  # type: ignore[assignment]
    model: ModelSettings = None  # type: ignore[assignment]
    store: StoreSettings = None  # type: ignore[assignment]
    data: DataSettings = None  # type: ignore[assignment]
    train: TrainSettings = None  # type: ignore[assignment]
    eval: EvalSettings = None  # type: ignore[assignment]
    inference: InferenceSettings = None  # type: ignore[assignment]
    calibration: CalibrationSettings = None  # type: ignore[assignment]

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any], source: str = "config") -> "Config":
        """Check every key of a merged config mapping; the first bad key is named in a one-line error."""
        return _build(cls, values, source, "")
