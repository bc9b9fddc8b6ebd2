"""What every command shares: the common flags (one parent parser) and their config keys."""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Mapping

from ..config import DEFAULTS
from ..constants import DEFAULT_ENCODER, ENCODER_TYPES
from ..precision import PRECISIONS


def common_parser(*, cache_dir: bool = True) -> argparse.ArgumentParser:
    """Parent parser for ``--config --dataset --encoder --encoder-type [--cache-dir] --device --precision``."""
    parent = argparse.ArgumentParser(add_help=False)
    flags = parent.add_argument_group("common flags (each overrides one config key)")
    flags.add_argument("--config", default=None, metavar="FILE", help="YAML config file (default: configs/default.yaml)")
    flags.add_argument("--dataset", default=None, metavar="FILE",
                       help=f"CoPro JSON file (config: dataset, default {DEFAULTS['dataset']}); the released file is "
                       "downloaded when the default path is missing")
    flags.add_argument("--encoder", default=None, metavar="NAME_OR_DIR",
                       help=f"text encoder: hub name or local directory (config: encoder.name; default {DEFAULT_ENCODER})")
    flags.add_argument("--encoder-type", default=None, choices=list(ENCODER_TYPES),
                       help="encoder family (config: encoder.type; auto = from the model's config)")
    if cache_dir:
        flags.add_argument("--cache-dir", default=None, help="where the embedding stores live, one subdirectory per "
                           f"encoder (config: cache_dir, default {DEFAULTS['cache_dir']})")
    flags.add_argument("--device", default=None, help=f"auto | cpu | cuda | cuda:N (config: device, default {DEFAULTS['device']}: cuda when "
                       "present, else cpu)")
    flags.add_argument("--precision", default=None, choices=list(PRECISIONS),
                       help="exact (the default): encoder.dtype, fp32 by default (reproduction); fast: bf16 on CPUs with native "
                       "bf16, fp16 on CUDA, with its measured drift printed (config: precision; docs/precision.md)")
    return parent


def load_model(cfg: Mapping[str, Any], hidden_size: int, device) -> tuple[Path, Any]:
    """The checkpoint a loaded config names (the released one downloaded for the bare default name) and its layer."""
    from ..io import released_checkpoint
    from ..model import load_mapping_layer

    path = released_checkpoint(cfg["checkpoint"])  # downloads only for the bare default name
    return path, load_mapping_layer(path, in_dim=hidden_size, num_heads=cfg["model"]["num_heads"], device=device)


def common_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The config keys the common flags override (``None``: not given, the config's value stays)."""
    return {"dataset": args.dataset, "encoder.name": args.encoder, "encoder.type": args.encoder_type,
            "cache_dir": getattr(args, "cache_dir", None), "device": args.device, "precision": args.precision}


def load_command_config(args: argparse.Namespace, overrides: dict[str, Any]) -> dict:
    """The config a command runs with: file, common flags, then ``overrides``; precision profile applied.

    Every command loads its config here, so ``precision`` becomes ``encoder.dtype`` (and ``fast`` prints
    its measured drift) before anything reads the encoder's dtype: store paths, cache keys, the encoder.
    """
    from ..config import load_config
    from ..precision import apply_precision

    cfg = load_config(args.config, overrides={**common_overrides(args), **overrides})
    if note := apply_precision(cfg):
        print(note)
    return cfg
