"""YAML configuration with dotted-key CLI overrides.

Every entry point loads ``configs/default.yaml`` (or ``--config``), then applies the flags the user
gave. Unknown keys are reported here; every value's type and range is checked once, at load, by the
typed sections of :mod:`latentguard.settings`, so a typo never trains for hours with a default.
"""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Mapping

import yaml

from .constants import DEFAULT_CHECKPOINT, DEFAULT_ENCODER, DEFAULT_WINDOW_STRIDE
from .errors import LatentGuardError
from .settings import Config

DEFAULT_CONFIG = Path(__file__).resolve().parent.parent / "configs" / "default.yaml"

# Built-in defaults, used when the YAML file omits a key (or no file ships, e.g. a wheel install).
DEFAULTS: dict[str, Any] = {
    "dataset": "dataset/CoPro_v1.0.json",
    "cache_dir": "cache",
    "output_dir": "runs/default",
    "checkpoint": DEFAULT_CHECKPOINT,
    "device": "auto",
    "precision": "exact",
    "encoder": {
        "name": DEFAULT_ENCODER,
        "type": "auto",
        "dtype": "float32",
        "batch_size": 64,
        "attention_mask": False,
        "long_prompts": False,
        "window_stride": DEFAULT_WINDOW_STRIDE,
    },
    "model": {"num_heads": 16, "head_dim": 32, "out_dim": 128},
    "store": {"dtype": "float16"},
    "data": {"valid_size": 3000, "seed": 0},
    "train": {
        "epochs": 1001,
        "batch_size": 64,
        "lr": 0.001,
        "weight_decay": 0.01,
        "seed": 0,
        "val_every": 50,
        "no_cache": False,
        "save_every": 10,
        "keep_best": False,
        "eval_batch_size": 256,
    },
    "eval": {"threshold": None, "baselines": [], "bert_model": None, "batch_size": 512,
             "blacklist_match": "substring"},
    "inference": {"threshold": "auto", "batch_size": 64, "concepts": None, "allowlist": None, "top_k": 3},
    "calibration": {"target_fpr": 0.01},
}

def _merge(base: dict, update: Mapping, source: str, prefix: str = "") -> None:
    for key, value in update.items():
        dotted = f"{prefix}{key}"
        if key not in base:
            raise LatentGuardError(f"{source}: unknown config key '{dotted}' (known: {', '.join(sorted(base))})")
        if isinstance(base[key], dict):
            if not isinstance(value, Mapping):
                raise LatentGuardError(f"{source}: '{dotted}' must be a mapping of keys, got {value!r}")
            _merge(base[key], value, source, dotted + ".")
        else:
            base[key] = value


def get(cfg: Mapping, dotted: str) -> Any:
    """Read ``cfg['a']['b']`` as ``get(cfg, 'a.b')``."""
    node: Any = cfg
    for part in dotted.split("."):
        node = node[part]
    return node


def set_value(cfg: dict, dotted: str, value: Any) -> None:
    """Set ``cfg['a']['b'] = value`` for ``dotted='a.b'``, refusing keys that do not exist."""
    parts = dotted.split(".")
    node = cfg
    for part in parts[:-1]:
        if part not in node or not isinstance(node[part], dict):
            raise LatentGuardError(f"unknown config key '{dotted}'")
        node = node[part]
    if parts[-1] not in node:
        raise LatentGuardError(f"unknown config key '{dotted}'")
    node[parts[-1]] = value


def validate(cfg: Mapping, source: str = "config") -> Config:
    """Check every key's type and range once; return the typed view (see :mod:`latentguard.settings`)."""
    return Config.from_mapping(cfg, source)


def load_config(path: str | Path | None = None, overrides: Mapping[str, Any] | None = None) -> dict:
    """Load defaults, then the YAML file, then ``overrides`` (dotted keys; ``None`` values are skipped).

    ``path=None`` uses ``configs/default.yaml`` when it exists. Errors name the file and the key.
    """
    cfg = copy.deepcopy(DEFAULTS)
    source = "built-in defaults"
    if path is None and DEFAULT_CONFIG.is_file():
        path = DEFAULT_CONFIG
    if path is not None:
        path = Path(path)
        source = str(path)
        if not path.is_file():
            raise LatentGuardError(f"config file not found: {path} (pass --config with an existing YAML file)")
        try:
            loaded = yaml.safe_load(path.read_bytes().decode("utf-8")) or {}
        except UnicodeDecodeError as exc:
            raise LatentGuardError(f"{path}: not UTF-8 text (bad byte at offset {exc.start}); save the config "
                                   "file as UTF-8") from None
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" at line {mark.line + 1}" if mark is not None else ""
            raise LatentGuardError(f"{path}: not valid YAML{where}; fix the syntax") from None
        if not isinstance(loaded, Mapping):
            raise LatentGuardError(f"{path}: the top level must be a mapping of keys")
        _merge(cfg, loaded, source)
    for key, value in (overrides or {}).items():
        if value is not None:
            set_value(cfg, key, value)
    validate(cfg, source if not overrides else f"{source} (with command-line overrides)")
    return cfg
