"""The one config schema: every key's default and check, in one frozen dataclass per section.

``load_config()`` starts from these defaults, merges a YAML file (``--config``) and the flags a
command was given (dotted keys), checks every value once and returns the typed :class:`Config`, so
code reads ``cfg.train.lr`` and a typo never trains for hours with a default. ``default.yaml`` beside
this module is the same defaults, commented, for people to read and copy (a test checks the two
agree). Adding a key is one field here and one line there.

Renamed keys are still read, with a one-line note: ``cache_dir`` is ``store_dir`` and
``train.no_cache`` is ``train.no_store`` (the embedding store is called the store everywhere).
"""
from __future__ import annotations

import dataclasses
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

from .constants import (
    AUTO,
    BLACKLIST_MATCHES,
    CALIBRATED,
    DEFAULT_CATEGORY,
    DEFAULT_CHECKPOINT,
    DEFAULT_ENCODER,
    DEFAULT_WINDOW_STRIDE,
    ENCODER_DTYPES,
    ENCODER_TYPES,
    MAX_PROMPT_CHARS,
    PRECISIONS,
    STORE_DTYPES,
)
from .errors import LatentGuardError
from .published import NAMED_THRESHOLDS

DEFAULT_YAML = Path(__file__).resolve().parent / "default.yaml"
THRESHOLD_NAMES = (*NAMED_THRESHOLDS, CALIBRATED, AUTO)  # every name a threshold key accepts
ALIASES = {"cache_dir": "store_dir", "train.no_cache": "train.no_store"}  # old key -> its name now

Check = Callable[[Any], "str | None"]  # None when the value is fine, else what it must be


# ------------------------------------------------------------------------------------ checks
def _number(value: Any) -> bool:
    return not isinstance(value, bool) and isinstance(value, (int, float))


def positive_int(value: Any) -> str | None:
    if not _number(value) or value <= 0:
        return "must be a positive number"
    return None if isinstance(value, int) else "must be an integer"


def optional_positive_int(value: Any) -> str | None:
    return None if value is None else positive_int(value)


def non_negative_int(value: Any) -> str | None:
    return None if not isinstance(value, bool) and isinstance(value, int) and value >= 0 else "must be an integer >= 0"


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


def optional_text(value: Any) -> str | None:
    return None if value is None or (isinstance(value, str) and value.strip()) else "must be a non-empty string or null"


def optional_non_negative_float(value: Any) -> str | None:
    return None if value is None else non_negative_float(value)


def number_in(low: float, high: float, *, open_low: bool = False, unit: str = "") -> Check:
    """A finite number in ``[low, high]`` (``(low, high]`` when ``open_low``)."""
    def check(value: Any) -> str | None:
        ok = _number(value) and math.isfinite(value) and (low < value if open_low else low <= value) and value <= high
        return None if ok else f"must be a number{unit} in {'(' if open_low else '['}{low:g}, {high:g}]"
    return check


def port_number(value: Any) -> str | None:
    return None if integer(value) is None and 0 <= value <= 65535 else "must be an integer in 0..65535"


def choice(*options: str) -> Check:
    def check(value: Any) -> str | None:
        return None if value in options else f"must be one of {sorted(options)}"
    return check


def threshold(optional: bool) -> Check:
    """A finite number, a numeric string or a threshold name (``null`` too when ``optional``)."""
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
    if isinstance(value, str) or (isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value)):
        return None
    return "must be a list of names or a comma-separated string"


def key(default: Any, check: Check) -> Any:
    """A config key: its default and the rule its value must pass."""
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata={"check": check})
    return field(default=default, metadata={"check": check})


def file_keys(section_value: Any) -> list[str]:
    """The keys of a loaded section that name input files (checked as paths), in schema order: a command that
    writes a file checks it is none of them without naming each."""
    return [f.name for f in dataclasses.fields(section_value) if f.metadata.get("check") is optional_path]


def section(cls: type) -> Any:
    return field(default_factory=cls, metadata={"section": cls})


# ---------------------------------------------------------------------------------- sections
@dataclass(frozen=True)
class EncoderConfig:
    name: str = key(DEFAULT_ENCODER, text)
    type: str = key("auto", choice(*ENCODER_TYPES))
    dtype: str = key("float32", choice(*ENCODER_DTYPES))
    batch_size: int = key(64, positive_int)
    attention_mask: bool = key(False, boolean)
    long_prompts: bool = key(False, boolean)
    window_stride: int = key(DEFAULT_WINDOW_STRIDE, positive_int)
    trim_padding: bool = key(False, boolean)


@dataclass(frozen=True)
class ModelConfig:
    num_heads: int = key(16, positive_int)
    head_dim: int = key(32, positive_int)
    out_dim: int = key(128, positive_int)
    mask_padding: bool = key(False, boolean)


@dataclass(frozen=True)
class StoreConfig:
    dtype: str = key("float16", choice(*STORE_DTYPES))


@dataclass(frozen=True)
class DataConfig:
    valid_size: int = key(3000, non_negative_int)
    seed: int = key(0, integer)


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = key(1001, positive_int)
    batch_size: int = key(64, positive_int)
    lr: float = key(0.001, positive_float)
    weight_decay: float = key(0.01, non_negative_float)
    seed: int = key(0, non_negative_int)
    val_every: int = key(50, positive_int)
    no_store: bool = key(False, boolean)
    save_every: int = key(10, positive_int)
    eval_batch_size: int = key(256, positive_int)
    keep_best: bool = key(False, boolean)


@dataclass(frozen=True)
class RecipeConfig:
    name: str = key("paper", choice("paper", "open"))
    copro: str | None = key(None, optional_path)
    copro_splits: list[str] | str = key(["valid"], names)
    coprov2: str | None = key(None, optional_path)
    coprov2_safe: bool = key(True, boolean)
    captions: str | None = key(None, optional_path)
    max_captions: int = key(10000, non_negative_int)
    calibration_captions: int = key(2000, non_negative_int)
    concepts: str | None = key(None, optional_path)
    exclude_categories: list[str] | str = key([], names)
    style_augment: float = key(0.15, fraction)
    short_prompts: bool = key(False, boolean)
    noise_augment: float = key(0.0, fraction)
    steps: int = key(3000, positive_int)
    prompts_per_step: int = key(256, positive_int)
    contrastive_weight: float = key(1.0, non_negative_float)
    detection_weight: float = key(1.0, non_negative_float)
    category_weight: float = key(0.5, non_negative_float)
    target_fpr: float = key(0.03, fraction)


@dataclass(frozen=True)
class EvalConfig:
    threshold: float | str | None = key(None, threshold(optional=True))
    baselines: list[str] | str = key([], names)
    bert_model: str | None = key(None, optional_path)
    blacklist_match: str = key("substring", choice(*BLACKLIST_MATCHES))
    batch_size: int = key(512, positive_int)


@dataclass(frozen=True)
class InferenceConfig:
    threshold: float | str = key(AUTO, threshold(optional=False))
    batch_size: int = key(64, positive_int)
    concepts: str | None = key(None, optional_path)
    allowlist: str | None = key(None, optional_path)
    top_k: int = key(3, positive_int)
    category: str = key(DEFAULT_CATEGORY, text)
    normalize_text: bool = key(True, boolean)
    split_sentences: bool = key(True, boolean)
    sanitize_margin: float = key(0.1, number_in(0, 1))


@dataclass(frozen=True)
class CalibrationConfig:
    target_fpr: float = key(0.01, fraction)


@dataclass(frozen=True)
class BenchmarkConfig:
    suite: list[str] | str = key(["attacks"], names)
    benign: list[str] | str = key(["coco"], names)
    baselines: list[str] | str = key([], names)
    output_dir: str = key("runs/benchmark", text)
    max_prompts: int | None = key(None, optional_positive_int)
    seed: int = key(0, non_negative_int)


@dataclass(frozen=True)
class ServeConfig:
    host: str = key("127.0.0.1", text)
    port: int = key(8000, port_number)
    max_batch_size: int = key(64, positive_int)
    max_wait_ms: float = key(5.0, number_in(0, 10_000, unit=" of milliseconds"))
    max_inputs: int = key(256, positive_int)
    max_chars: int = key(MAX_PROMPT_CHARS, lambda v: positive_int(v) or (
        f"must be at most {MAX_PROMPT_CHARS:,} (the longest prompt a guard reads)" if v > MAX_PROMPT_CHARS else None))
    max_sentences: int = key(32, positive_int)
    queue_size: int = key(4096, positive_int)
    max_in_flight: int = key(128, positive_int)
    body_timeout_s: float = key(30.0, number_in(0, 3600, open_low=True, unit=" of seconds"))
    header_timeout_s: float = key(10.0, number_in(0, 3600, open_low=True, unit=" of seconds"))
    write_timeout_s: float = key(30.0, number_in(0, 3600, open_low=True, unit=" of seconds"))
    shutdown_timeout_s: float = key(30.0, number_in(0, 3600, open_low=True, unit=" of seconds"))
    max_body_bytes: int | None = key(None, optional_positive_int)
    api_key_file: str | None = key(None, optional_path)
    admin_key_file: str | None = key(None, optional_path)
    insecure: bool = key(False, boolean)
    audit_log: str | None = key(None, optional_path)
    audit_prompts: bool = key(False, boolean)

    def __post_init__(self) -> None:  # the rules across keys or past a key's type (each key's own rule is above)
        if self.queue_size < self.max_inputs:
            raise LatentGuardError(f"serve.queue_size ({self.queue_size}) must be at least serve.max_inputs "
                                   f"({self.max_inputs}), or a full-size request could never be queued")
        if self.max_body_bytes is not None and self.max_body_bytes < 1024:
            raise LatentGuardError(f"serve.max_body_bytes ({self.max_body_bytes}) must be at least 1024, or no "
                                   "request body of a few prompts would fit")


@dataclass(frozen=True)
class BulkConfig:
    text_column: str = key("text", text)
    id_column: str | None = key(None, optional_text)
    format: str = key("parquet", choice("parquet", "jsonl"))
    shard_size: int = key(50_000, positive_int)
    dedup: bool = key(True, boolean)
    sanitize: bool = key(False, boolean)
    engine: str = key("local", choice("local", "ray"))
    address: str | None = key(None, optional_text)
    workers: int | None = key(None, optional_positive_int)
    cpus_per_worker: float = key(1.0, positive_float)
    gpus_per_worker: float | None = key(None, optional_non_negative_float)


@dataclass(frozen=True)
class Config:
    """The whole config, typed: top-level paths plus one object per section."""

    dataset: str = key("dataset/CoPro_v1.0.json", text)
    store_dir: str = key("cache", text)
    output_dir: str = key("runs/default", text)
    checkpoint: str = key(DEFAULT_CHECKPOINT, text)
    guard: str | None = key(None, optional_path)          # a guard bundle: folder or hub repo id (latentguard.hub)
    guard_revision: str | None = key(None, optional_text)  # its hub revision (branch, tag or commit)
    device: str = key("auto", text)
    precision: str = key("exact", choice(*PRECISIONS))
    encoder: EncoderConfig = section(EncoderConfig)
    model: ModelConfig = section(ModelConfig)
    store: StoreConfig = section(StoreConfig)
    data: DataConfig = section(DataConfig)
    train: TrainConfig = section(TrainConfig)
    recipe: RecipeConfig = section(RecipeConfig)
    eval: EvalConfig = section(EvalConfig)
    inference: InferenceConfig = section(InferenceConfig)
    calibration: CalibrationConfig = section(CalibrationConfig)
    benchmark: BenchmarkConfig = section(BenchmarkConfig)
    serve: ServeConfig = section(ServeConfig)
    bulk: BulkConfig = section(BulkConfig)

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any], source: str = "config") -> "Config":
        """Check every key of a complete mapping; the first bad key is named in a one-line error."""
        return _build(cls, values, source, "")

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dicts and lists (YAML- and JSON-ready)."""
        return dataclasses.asdict(self)

    def updated(self, overrides: Mapping[str, Any], source: str = "config") -> "Config":
        """A new, checked config with ``overrides`` (dotted keys; ``None`` values are skipped) applied."""
        values = self.to_dict()
        for dotted, value in overrides.items():
            if value is not None:
                _set(values, dotted, value, source)
        return Config.from_mapping(values, source)


def _build(cls: type, values: Mapping[str, Any], source: str, prefix: str) -> Any:
    kwargs = {}
    for item in dataclasses.fields(cls):
        dotted, value = f"{prefix}{item.name}", values[item.name]
        if "section" in item.metadata:
            kwargs[item.name] = _build(item.metadata["section"], value, source, dotted + ".")
            continue
        problem = item.metadata["check"](value)
        if problem is not None:
            raise LatentGuardError(f"{source}: '{dotted}' {problem}, got {value!r}")
        kwargs[item.name] = list(value) if isinstance(value, tuple) else value
    try:
        return cls(**kwargs)
    except LatentGuardError as exc:  # a rule across a section's keys: named with the file it came from
        raise LatentGuardError(f"{source}: {exc}") from None


def validate_section(section: Any, prefix: str, source: str) -> None:
    """Each key of a section built in code (not read from a file) against the rule the config applies to it,
    so a value refused in YAML is refused however it arrives."""
    for item in dataclasses.fields(section):
        if "check" in item.metadata:
            value = getattr(section, item.name)
            problem = item.metadata["check"](value)
            if problem is not None:
                raise LatentGuardError(f"{source}: '{prefix}{item.name}' {problem}, got {value!r}")


# ----------------------------------------------------------------------------------- loading
def _renamed(dotted: str, source: str) -> str:
    if dotted in ALIASES:
        new = ALIASES[dotted]
        print(f"note: {source}: config key '{dotted}' is now '{new}'; read as {new}", file=sys.stderr)
        return new
    return dotted


def _set(values: dict, dotted: str, value: Any, source: str) -> None:
    """``values['a']['b'] = value`` for ``dotted='a.b'``, refusing keys the schema does not have."""
    parts = _renamed(dotted, source).split(".")
    node = values
    for i, part in enumerate(parts):
        if not isinstance(node, dict) or part not in node:
            known = ", ".join(sorted(node)) if isinstance(node, dict) else ""
            raise LatentGuardError(f"{source}: unknown config key '{'.'.join(parts[: i + 1])}' (known: {known})")
        if i == len(parts) - 1:
            if isinstance(node[part], dict):
                raise LatentGuardError(f"{source}: '{dotted}' is a section; set its keys ({', '.join(node[part])})")
            node[part] = value
        else:
            node = node[part]


def _merge(values: dict, update: Mapping, source: str, prefix: str = "") -> None:
    """Merge a YAML mapping into ``values`` key by key (sections recursively, renamed keys read as their new name)."""
    for name, value in update.items():
        dotted = _renamed(f"{prefix}{name}", source)
        node: Any = values
        for part in dotted.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        if isinstance(node, dict):  # a section
            if not isinstance(value, Mapping):
                raise LatentGuardError(f"{source}: '{dotted}' must be a mapping of keys, got {value!r}")
            _merge(values, value, source, dotted + ".")
        else:
            _set(values, dotted, value, source)


def load_config(path: str | Path | None = None, overrides: Mapping[str, Any] | None = None) -> Config:
    """The defaults, then the YAML file at ``path`` (if any), then ``overrides`` (dotted keys;
    ``None`` values are skipped), checked once. Errors name the file and the key in one line."""
    from .yaml_files import read_yaml

    values = Config().to_dict()
    source = "built-in defaults"
    if path is not None:
        path = Path(path)
        source = str(path)
        if not path.is_file():
            from .io import named_file_problem

            problem = named_file_problem(path, "config file", "pass --config with an existing YAML file")
            raise LatentGuardError(problem or f"config file {path} is no longer there (--config)")
        loaded = read_yaml(path, "config file") or {}
        if not isinstance(loaded, Mapping):
            raise LatentGuardError(f"{path}: the top level must be a mapping of keys")
        _merge(values, loaded, source)
    overrides = {k: v for k, v in (overrides or {}).items() if v is not None}
    for dotted, value in overrides.items():
        _set(values, dotted, value, source)
    return Config.from_mapping(values, f"{source} (with command-line overrides)" if overrides else source)
