"""What every command shares: one-line errors (:func:`cli_entry`), the common flags (one parent
parser), and loading the config they override, checked once."""
from __future__ import annotations

import argparse
import functools
import sys
from pathlib import Path
from typing import Any, Callable

from ..config import Config, load_config
from ..constants import DEFAULT_ENCODER, ENCODER_TYPES, PRECISIONS
from ..errors import LatentGuardError

SCHEMA = Config()  # the defaults every --help text quotes
RESUMABLE = "interrupted: finished work was saved; run the same command again to resume"


def cli_entry(main: Callable[..., int | None] | None = None, *,
              on_interrupt: str = "interrupted (Ctrl-C)") -> Callable[..., int]:
    """Wrap a CLI ``main`` so known errors print one line and exit non-zero, never a traceback.

    Use as ``@cli_entry`` or ``@cli_entry(on_interrupt=RESUMABLE)`` for commands that resume.
    """
    if main is None:
        return functools.partial(cli_entry, on_interrupt=on_interrupt)

    @functools.wraps(main)
    def wrapper(*args, **kwargs) -> int:
        try:
            code = main(*args, **kwargs)
        except LatentGuardError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        except OSError as exc:  # disk full, permission denied, a path that is a file: the user's to fix
            where = f": {exc.filename}" if exc.filename else ""
            print(f"error: {exc.strerror or exc}{where}", file=sys.stderr)
            return 2
        except KeyboardInterrupt:
            print(on_interrupt, file=sys.stderr)
            return 130
        return int(code or 0)

    return wrapper


class _RenamedFlag(argparse.Action):
    """A flag kept under its old name: stores into the new destination, with a one-line note."""

    def __init__(self, *args, new: str, **kwargs) -> None:
        self.new = new
        super().__init__(*args, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        print(f"note: {option_string} is now {self.new}", file=sys.stderr)
        setattr(namespace, self.dest, True if self.nargs == 0 else values)


def common_parser(*, store_dir: bool = True) -> argparse.ArgumentParser:
    """Parent parser for ``--config --dataset --encoder --encoder-type [--store-dir] --device --precision``."""
    parent = argparse.ArgumentParser(add_help=False)
    flags = parent.add_argument_group("common flags (each overrides one config key)")
    flags.add_argument("--config", default=None, metavar="FILE",
                       help="YAML file of config keys to change (default: none; every key and its default: "
                            "latentguard/default.yaml; examples: configs/)")
    flags.add_argument("--dataset", default=None, metavar="FILE",
                       help=f"CoPro JSON file (config: dataset, default {SCHEMA.dataset}); the released file is "
                       "downloaded when the default path is missing")
    flags.add_argument("--encoder", default=None, metavar="NAME_OR_DIR",
                       help="text encoder: hub name or local directory (config: encoder.name; default "
                            f"{DEFAULT_ENCODER})")
    flags.add_argument("--encoder-type", default=None, choices=list(ENCODER_TYPES),
                       help="encoder family (config: encoder.type; auto = from the model's config)")
    if store_dir:
        flags.add_argument("--store-dir", default=None, metavar="DIR",
                           help="where the embedding stores live, one subdirectory per encoder (config: store_dir, "
                           f"default {SCHEMA.store_dir})")
        flags.add_argument("--cache-dir", dest="store_dir", action=_RenamedFlag, new="--store-dir",
                           help=argparse.SUPPRESS)
    flags.add_argument("--device", default=None, help=f"auto | cpu | cuda | cuda:N (config: device, default "
                       f"{SCHEMA.device}: cuda when present, else cpu)")
    flags.add_argument("--precision", default=None, choices=list(PRECISIONS),
                       help="exact (the default): encoder.dtype, fp32 by default (reproduction); fast: bf16 on CPUs "
                       "with native bf16, fp16 on CUDA, with its measured drift printed (config: precision; "
                       "docs/precision.md)")
    return parent


def common_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The config keys the common flags override (``None``: not given, the config's value stays)."""
    return {"dataset": args.dataset, "encoder.name": args.encoder, "encoder.type": args.encoder_type,
            "store_dir": getattr(args, "store_dir", None), "device": args.device, "precision": args.precision}


def load_command_config(args: argparse.Namespace, overrides: dict[str, Any]) -> Config:
    """The config a command runs with: defaults, ``--config``, the common flags, then ``overrides``;
    the precision profile applied.

    Every command loads its config here, so ``precision`` becomes ``encoder.dtype`` (and ``fast`` prints
    its measured drift) before anything reads the encoder's dtype: store paths, cache keys, the encoder.
    """
    from ..encoders.precision import apply_precision

    cfg = load_config(args.config, overrides={**common_overrides(args), **overrides})
    cfg, note = apply_precision(cfg)
    if note:
        print(note)
    return cfg


def load_model(cfg: Config, hidden_size: int, device) -> tuple[Path, Any]:
    """The checkpoint a loaded config names (the released one downloaded for the bare default name) and its layer."""
    from ..model import load_mapping_layer, released_checkpoint

    path = released_checkpoint(cfg.checkpoint)  # downloads only for the bare default name
    return path, load_mapping_layer(path, in_dim=hidden_size, num_heads=cfg.model.num_heads, device=device)


def guard_parser() -> argparse.ArgumentParser:
    """Parent parser for the flags that build a guard: ``--checkpoint --concepts --allowlist --threshold
    --batch-size --long-prompts`` (each overrides one config key; with :func:`common_parser` for the encoder,
    device and precision). Read them with :func:`guard_overrides`, build with :func:`build_guard`."""
    parent = argparse.ArgumentParser(add_help=False)
    flags = parent.add_argument_group("guard flags (each overrides one config key)")
    flags.add_argument("--checkpoint", default=None, metavar="FILE",
                       help="mapping-layer weights in the released format (config: checkpoint; the released "
                            "model_parameters.pth is downloaded and SHA-256 checked when missing)")
    flags.add_argument("--concepts", default=None, metavar="FILE",
                       help="blacklist: .txt (one concept per line) or .yaml (optionally with per-concept "
                            "thresholds) (config: inference.concepts; default: CoPro ID concepts)")
    flags.add_argument("--allowlist", default=None, metavar="FILE",
                       help="phrases cut out of every prompt before scoring (config: inference.allowlist)")
    flags.add_argument("--threshold", default=None, metavar="T",
                       help="operating threshold: a number, released (9.0131), paper (4.47), calibrated (the "
                            "record beside the checkpoint) or auto (that record, else released for the released "
                            f"weights only) (config: inference.threshold, default {SCHEMA.inference.threshold})")
    flags.add_argument("--batch-size", type=int, default=None, metavar="N",
                       help=f"prompts encoded and scored per batch (config: inference.batch_size, default "
                            f"{SCHEMA.inference.batch_size})")
    flags.add_argument("--long-prompts", action="store_true", default=None,
                       help="score prompts over 77 tokens as the maximum over windows (config: "
                            "encoder.long_prompts; default: truncate, as released)")
    return parent


def guard_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The config keys :func:`guard_parser`'s flags override (``None``: not given)."""
    return {"checkpoint": args.checkpoint, "inference.concepts": args.concepts,
            "inference.allowlist": args.allowlist, "inference.threshold": args.threshold,
            "inference.batch_size": args.batch_size, "encoder.long_prompts": args.long_prompts}


def build_guard(cfg: Config, **overrides: Any):
    """The guard a loaded config describes (:meth:`LatentGuard.from_config`; threshold rules included)."""
    from ..guard import LatentGuard

    return LatentGuard.from_config(cfg, **overrides)
