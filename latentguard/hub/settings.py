"""The config's ``guard`` key: a bundle instead of ``checkpoint`` + ``encoder`` + blacklist + threshold.

A bundle holds its encoder, options and sizes; a config key keeps its bundle value unless the config
(a ``--config`` file or a flag) changes it from its default, so ``--guard org/name --threshold 5`` is
the bundle with another threshold, and a changed ``--encoder`` is loaded and checked against the
bundle's identity. Every command that builds a guard through ``cli.common.build_guard`` (and so
:meth:`LatentGuard.from_config`) gets this; commands that read the weights themselves (``test.py``,
``verify``) use :func:`config_with_bundle`.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from ..config import Config
from ..constants import DEFAULT_CHECKPOINT
from ..errors import LatentGuardError

DEFAULTS = Config()


def validate_guard_key(cfg: Config) -> None:
    """``guard`` names a bundle (not a .pth file), and ``checkpoint`` is not set too."""
    if cfg.checkpoint != DEFAULT_CHECKPOINT:
        raise LatentGuardError(f"--guard {cfg.guard} and --checkpoint {cfg.checkpoint} both name weights; give one "
                               "(a bundle carries its own)")
    if Path(cfg.guard).expanduser().is_file():
        raise LatentGuardError(f"--guard {cfg.guard} is a file; --guard takes a bundle folder or a hub repo id "
                               "(org/name), --checkpoint a released-format .pth")
    from .bundle import BUILTIN_GUARDS, looks_like_repo_id

    if cfg.guard not in BUILTIN_GUARDS and not Path(cfg.guard).expanduser().is_dir() \
            and not looks_like_repo_id(cfg.guard):  # checked before anything is fetched
        raise LatentGuardError(f"--guard {cfg.guard!r}: no such folder, not a hub repo id (org/name) and not a "
                               f"built-in guard (built-in: {', '.join(BUILTIN_GUARDS)})")


def guard_options(cfg: Config) -> dict[str, Any]:
    """:meth:`LatentGuard.from_pretrained` loading arguments for ``cfg.guard``: what the config changes, else the
    bundle's (how the guard judges is ``GuardOptions.from_config``'s, :mod:`latentguard.guard.options`)."""
    validate_guard_key(cfg)
    enc, inf, model = cfg.encoder, cfg.inference, cfg.model

    def changed(value: Any, default: Any) -> Any:
        return value if value != default else None

    return dict(
        checkpoint=cfg.guard, revision=cfg.guard_revision, encoder=changed(enc.name, DEFAULTS.encoder.name),
        concepts=inf.concepts, device=cfg.device, encoder_type=enc.type, dataset=cfg.dataset,
        num_heads=changed(model.num_heads, DEFAULTS.model.num_heads),
        encoder_options={k: getattr(enc, k) for k in ("dtype", "attention_mask")
                         if getattr(enc, k) != getattr(DEFAULTS.encoder, k)},
    )


def config_with_bundle(cfg: Config):
    """``(cfg, bundle)``: the config with the bundle's encoder keys and sizes where it keeps the defaults, and
    the opened bundle; ``(cfg, None)`` without ``guard``."""
    if not cfg.guard:
        return cfg, None
    from .bundle import open_bundle

    validate_guard_key(cfg)
    bundle = open_bundle(cfg.guard, revision=cfg.guard_revision)
    if bundle is None:
        raise LatentGuardError(f"--guard {cfg.guard}: no such folder, and not a hub repo id (org/name)")
    spec, options, sizes = bundle.encoder, bundle.encoder["options"], bundle.config["mapping_layer"]
    updates: dict[str, Any] = {}
    recorded = [("encoder.name", spec["name"]), ("encoder.type", spec["family"])]
    # every encoder option the bundle records that the config's encoder section also has (dtype, attention mask,
    # long prompts and their stride, padding), by its own key: a new one needs no line here
    recorded += [(f"encoder.{key}", value) for key, value in options.items() if hasattr(DEFAULTS.encoder, key)]
    for dotted, value in recorded:
        section, key = dotted.split(".")
        if getattr(getattr(cfg, section), key) == getattr(getattr(DEFAULTS, section), key):
            updates[dotted] = value
    for key in ("num_heads", "head_dim", "out_dim"):
        given = getattr(cfg.model, key)
        if given != getattr(DEFAULTS.model, key) and given != sizes[key]:
            raise LatentGuardError(f"model.{key} is {given}, but bundle {bundle.name} has {sizes[key]}; leave it unset")
        updates[f"model.{key}"] = sizes[key]
    updates["model.mask_padding"] = sizes["mask_padding"]
    return cfg.updated(updates, f"bundle {bundle.name}"), bundle
