"""What every command shares: one-line errors (:func:`cli_entry`), the common flags (one parent
parser), and loading the config they override, checked once."""
from __future__ import annotations

import argparse
import functools
import os
import sys
from pathlib import Path
from typing import Any, Callable

from ..config import Config, load_config
from ..constants import DEFAULT_ENCODER, ENCODER_TYPES, PRECISIONS
from ..errors import LatentGuardError

SCHEMA = Config()  # the defaults every --help text quotes
RESUMABLE = "interrupted: finished work was saved; run the same command again to resume"


def _flat(message: object) -> str:
    """``message`` on one line: a wrapped library's error may hold line breaks (pyarrow's on a damaged parquet file
    had split one error over two lines; a forty-third hostile pass)."""
    return " ".join(str(message).split())


def cli_entry(main: Callable[..., int | None] | None = None, *,
              on_interrupt: str = "interrupted (Ctrl-C)") -> Callable[..., int]:
    """Wrap a CLI ``main`` so known errors print one line and exit non-zero, never a traceback.

    Use as ``@cli_entry`` or ``@cli_entry(on_interrupt=RESUMABLE)`` for commands that resume.
    """
    if main is None:
        return functools.partial(cli_entry, on_interrupt=on_interrupt)

    @functools.wraps(main)
    def wrapper(*args, **kwargs) -> int:
        import warnings

        from ..protected import forget_inputs
        from .rundir import release_failed_claims

        def one_line(message, category, filename, lineno, file=None, line=None) -> None:
            print(f"warning: {_flat(message)}", file=sys.stderr)  # a user's warning, not a library source line

        try:
            with warnings.catch_warnings():
                warnings.showwarning = one_line
                code = main(*args, **kwargs)
        except LatentGuardError as exc:
            release_failed_claims()
            print(f"error: {_flat(exc)}", file=sys.stderr)  # one line, whatever a library put in the message
            return 2
        except OSError as exc:  # disk full, permission denied, a path that is a file: the user's to fix
            release_failed_claims()
            where = f": {exc.filename}" if exc.filename else ""
            print(f"error: {exc.strerror or exc}{where}", file=sys.stderr)
            return 2
        except KeyboardInterrupt:
            release_failed_claims()
            print(on_interrupt, file=sys.stderr)
            return 130
        except BaseException as exc:
            # any other fault (a bug, torch's own error) keeps its traceback but leaves no claimed directory behind:
            # only the three kinds above had released it, so score's lock and manifest stayed (a hostile review)
            if not (isinstance(exc, SystemExit) and exc.code in (None, 0)):
                release_failed_claims()
            raise
        finally:
            forget_inputs()  # this command's inputs; a later command in this process names its own
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


def visible(text: str) -> str:
    """``text`` safe to print on a terminal: every character that is not printable (an escape sequence's ESC, a
    control, a bidirectional override) written as its Python escape. A prompt printed as it is can erase its own
    UNSAFE row and draw a SAFE one in its place (a hostile pass)."""
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)


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


def _bundle_flags(flags) -> None:
    flags.add_argument("--guard", default=None, metavar="DIR_OR_REPO",
                       help="a guard bundle: a folder (guard.save_pretrained, latentguard export) or a hub repo id "
                            "org/name; its weights, encoder, blacklist and threshold are the defaults, each flag "
                            "still overrides one (config: guard; docs/sharing.md)")
    flags.add_argument("--guard-revision", default=None, metavar="REV",
                       help="hub branch, tag or commit of --guard (config: guard_revision)")


def bundle_parser() -> argparse.ArgumentParser:
    """Parent parser for ``--guard`` / ``--guard-revision`` alone (commands that read a guard's weights
    themselves: test.py, verify); :func:`bundle_overrides` gives their config keys."""
    parent = argparse.ArgumentParser(add_help=False)
    _bundle_flags(parent.add_argument_group("guard bundle (config: guard, guard_revision)"))
    return parent


def bundle_overrides(args: argparse.Namespace) -> dict[str, Any]:
    return {"guard": args.guard, "guard_revision": args.guard_revision}


def guard_parser() -> argparse.ArgumentParser:
    """Parent parser for the flags that say which guard to run: a bundle, weights, blacklist, allowlist,
    threshold, batch size, long prompts, top-k. Every command that builds a guard (inference.py, and any
    command scoring prompts with one) takes them, through :func:`guard_overrides` and :func:`build_guard`."""
    parent = argparse.ArgumentParser(add_help=False)
    flags = parent.add_argument_group("guard flags (each overrides one config key)")
    _bundle_flags(flags)
    flags.add_argument("--checkpoint", default=None, metavar="FILE",
                       help="mapping-layer state dict in the released format (default: model_parameters.pth, "
                            "downloaded and SHA-256 checked when missing)")
    flags.add_argument("--concepts", default=None, metavar="FILE",
                       help="blacklist: .txt (one concept per line) or .yaml (a list, groups = categories, or "
                            "'concepts:' + optional per-concept 'thresholds:'); default: CoPro ID concepts")
    flags.add_argument("--allowlist", default=None, metavar="FILE",
                       help="phrases (one per line) cut out of every prompt before scoring, so they never "
                            "trigger the guard (whole words, case-insensitive)")
    flags.add_argument("--threshold", default=None, metavar="T",
                       help="unsafe when the score reaches this: a number, released (9.0131, the released "
                            "script's value), paper (4.47, reproduces the paper's Table 1 accuracies), calibrated "
                            "(the <checkpoint>.threshold.yaml written by --calibrate-safe) or auto (a --guard "
                            "bundle's own; else calibrated when that file exists, else released for the released "
                            "weights only, else an error; "
                            f"default: inference.threshold = {SCHEMA.inference.threshold})")
    flags.add_argument("--batch-size", type=int, default=None, metavar="N",
                       help="prompts encoded and scored per batch "
                            f"(default: inference.batch_size = {SCHEMA.inference.batch_size})")
    flags.add_argument("--long-prompts", action="store_true", default=None,
                       help="score prompts longer than 77 tokens as the maximum over overlapping 77-token windows "
                            "(default: encoder.long_prompts = off, truncate at 77 as released)")
    flags.add_argument("--top-k", type=int, default=None, metavar="K",
                       help="concepts and evidence words shown per prompt "
                            f"(default: inference.top_k = {SCHEMA.inference.top_k})")
    flags.add_argument("--no-defences", action="store_true", default=None,
                       help="score each prompt only as written, as the released script does (default: also its "
                            "normalised form, each sentence and clause; inference.normalize_text, "
                            "inference.split_sentences; docs/defences.md)")
    return parent


def guard_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The config keys the guard flags override (``None``: not given)."""
    return {**bundle_overrides(args), "checkpoint": args.checkpoint, "inference.concepts": args.concepts,
            "inference.allowlist": args.allowlist, "inference.threshold": args.threshold,
            "inference.batch_size": args.batch_size, "encoder.long_prompts": args.long_prompts,
            "inference.top_k": args.top_k,
            "inference.normalize_text": False if args.no_defences else None,
            "inference.split_sentences": False if args.no_defences else None}


def build_guard(cfg: Config, **overrides: Any):
    """The guard a loaded config describes (:meth:`LatentGuard.from_config`); ``overrides`` go to
    ``from_pretrained`` (e.g. ``threshold=...``)."""
    from ..guard import LatentGuard
    from .fetch import validate_fetchable

    if not cfg.guard:  # the released recipe: what it would download is checked (offline: refused) before any load
        validate_fetchable(cfg, dataset=cfg.inference.concepts is None, checkpoint=True,
                           encoder="encoder" not in overrides)
    return LatentGuard.from_config(cfg, **overrides)


def common_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The config keys the common flags override (``None``: not given, the config's value stays)."""
    return {"dataset": args.dataset, "encoder.name": args.encoder, "encoder.type": args.encoder_type,
            "store_dir": getattr(args, "store_dir", None), "device": args.device, "precision": args.precision}


def prepare_command(cfg: Config, args: argparse.Namespace) -> str:
    """The exact ``prepare.py`` call that builds the store a command with ``cfg`` looks for. A store is keyed
    by every encoder setting, and some have no flag (a bundle's trimmed padding, a config's ``encoder``
    keys), so the same ``--config`` and ``--guard`` travel with the dataset, encoder and store directory."""
    import shlex

    parts = ["python", "prepare.py"]
    if getattr(args, "config", None):
        parts += ["--config", str(args.config)]
    if cfg.guard:
        parts += ["--guard", str(cfg.guard)] + (["--guard-revision", str(cfg.guard_revision)]
                                                if cfg.guard_revision else [])
    parts += ["--dataset", str(cfg.dataset), "--encoder", str(cfg.encoder.name)]
    if cfg.encoder.type != "auto":
        parts += ["--encoder-type", cfg.encoder.type]
    if cfg.precision != SCHEMA.precision:  # it sets encoder.dtype, part of the store's key
        parts += ["--precision", cfg.precision]
    return shlex.join(parts + ["--store-dir", str(cfg.store_dir)])


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
    validate_named_files(cfg, overrides)
    from ..protected import protect_inputs

    # what the command reads is never written over by it, under whatever output name (latentguard.protected)
    protect_inputs([getattr(args, "config", None), cfg.dataset, cfg.checkpoint if "checkpoint" in overrides else None,
                    *(getattr(cfg.inference, key, None) for key in ("concepts", "allowlist")
                      if f"inference.{key}" in overrides)])
    return cfg


def validate_named_files(cfg: Config, overrides: dict[str, Any]) -> None:
    """Refuse, before anything is fetched, the files a user named that do not exist or are no regular file
    (a directory, a FIFO, a link to /dev/zero: said as such, never as missing), all in one line: a
    mistyped ``--checkpoint runs/tyop/model_parameters.pth`` is a missing checkpoint, not a CoPro or I2P
    download failure. Checked for the commands that read the key (it is among their ``overrides``); only
    the bare default ``model_parameters.pth`` may be fetched."""
    from ..constants import DEFAULT_CHECKPOINT
    from ..io import named_file_problem

    missing = []
    if "checkpoint" in overrides and cfg.checkpoint:
        path = Path(cfg.checkpoint)
        if os.path.lexists(path) or path.name != DEFAULT_CHECKPOINT or path.parent != Path("."):
            problem = named_file_problem(path, "checkpoint", "--checkpoint")
            if problem is not None:
                missing.append(problem.replace("(--checkpoint)", "(--checkpoint; omit it to use the released "
                                                                 "model_parameters.pth)"))
    for key, flag in (("concepts", "--concepts"), ("allowlist", "--allowlist")):
        value = getattr(cfg.inference, key, None) if f"inference.{key}" in overrides else None
        if isinstance(value, str) and value and value != "-":
            problem = named_file_problem(value, f"{key} file", flag)
            if problem is not None:
                missing.append(problem)
    if missing:
        raise LatentGuardError("; ".join(missing) + "; nothing was downloaded or written")


def refuse_standard_input(cfg: Config) -> None:
    """``--concepts -`` or ``--allowlist -`` refused for ``serve``: every reload (SIGHUP, POST /admin/reload) re-reads
    these files, and standard input can be read once (a reload had found it empty, and a terminal would block it).
    Refused, not read once and kept, so that a reload never silently keeps a list it says it re-read."""
    for key, flag in (("concepts", "--concepts"), ("allowlist", "--allowlist")):
        if getattr(cfg.inference, key, None) == "-":
            raise LatentGuardError(f"{flag} - (standard input): the server re-reads it on every reload, and standard "
                                   "input can be read only once; save it to a file and name that")


def load_model(cfg: Config, hidden_size: int, device, *, bundle=None, identity: str | None = None) -> tuple[Path, Any]:
    """The checkpoint a loaded config names (the released one downloaded for the bare default name) and its layer;
    with ``bundle`` (:func:`latentguard.hub.settings.config_with_bundle`), its weights, refused unless the
    encoder ``identity`` embeds as the bundle's."""
    from ..model import load_mapping_layer, released_checkpoint

    if bundle is not None:
        if identity is not None:
            bundle.validate_encoder(identity)
        return bundle.weights_path, bundle.mapping_layer(in_dim=hidden_size, device=device)

    path = released_checkpoint(cfg.checkpoint)  # downloads only for the bare default name
    return path, load_mapping_layer(path, in_dim=hidden_size, num_heads=cfg.model.num_heads, device=device)
