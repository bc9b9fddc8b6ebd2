"""Building a guard from files: weights, encoder, blacklist and threshold, each read and checked once.

Cheap checks (blacklist, checkpoint, threshold record) run before the slow encoder load; the
checkpoint is hashed once and its threshold record read once, then checked against the encoder
when it is known.
"""
from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import torch

from ..constants import DEFAULT_ENCODER
from ..data.blacklist import load_blacklist, validate_concepts
from ..decision.threshold import validate_record_encoder
from ..encoders.precision import resolve_device
from ..errors import LatentGuardError
from ..io import sha256_of
from ..model import load_mapping_layer, released_checkpoint
from .options import GuardOptions
from .validation import width_message


def load_guard(cls, checkpoint: str | Path, encoder, concepts: Sequence[str] | str | Path | None,
               device: str | torch.device | None, options: GuardOptions, *, encoder_type: str,
               dataset: str | Path | None, encoder_options: Mapping | None, num_heads: int | None,
               revision: str | None = None):
    """What :meth:`LatentGuard.from_pretrained` does (see its docstring for the arguments); ``options`` goes to
    the constructor whole, with the blacklist file's thresholds and groups and the record's slope merged in."""
    from ..hub.bundle import open_bundle

    bundle = open_bundle(checkpoint, revision=revision)  # None: a released-format checkpoint path
    if bundle is not None:
        from .bundled import load_bundle_guard

        return load_bundle_guard(cls, bundle, encoder, concepts, device, options, encoder_type=encoder_type,
                                 dataset=dataset, encoder_options=encoder_options, num_heads=num_heads)
    encoder = DEFAULT_ENCODER if encoder is None else encoder
    num_heads = 16 if num_heads is None else num_heads
    choice = None if options.reads_record else options.choice()  # a number or a published name
    if isinstance(concepts, (str, Path)) or concepts is None:
        blacklist = load_blacklist(concepts, dataset=dataset)
        names, thresholds, groups = blacklist.concepts, dict(blacklist.thresholds), dict(blacklist.categories)
    else:
        names, thresholds, groups = validate_concepts(concepts), {}, {}
    path = released_checkpoint(checkpoint)
    if choice is None:  # the record beside the weights: read once, the weights hashed once, before the encoder
        choice = options.choice(checkpoint=path, sha256=sha256_of(path))
    if isinstance(encoder, (str, Path)):
        model = load_mapping_layer(path, num_heads=num_heads)
        from ..encoders import load_encoder

        device = resolve_device(device)
        encoder = load_encoder(str(encoder), encoder_type, device=device, **dict(encoder_options or {}))
        if model.in_dim != encoder.hidden_size:
            raise LatentGuardError(f"{path}: " + width_message("the checkpoint", model.in_dim, encoder.hidden_size))
    else:
        model = load_mapping_layer(path, in_dim=encoder.hidden_size, num_heads=num_heads)
        device = encoder.device if device is None else device
    if choice.record is not None:  # a calibration record must match this encoder too
        validate_record_encoder(choice.record, encoder.identity, choice.record_path)
    # the record's slope was fitted with the threshold it belongs to
    return cls(model, encoder, names, device=device, choice=choice, checkpoint=path,
               options=options.with_blacklist(thresholds, groups, choice.fitted_slope))


def guard_options_from_config(cfg) -> dict:
    """:meth:`LatentGuard.from_pretrained` arguments as a loaded :class:`~latentguard.config.Config` gives them."""
    options = GuardOptions.from_config(cfg, bundle=bool(cfg.guard))
    if cfg.guard:  # a bundle: its own encoder, options and sizes unless the config changes them
        from ..hub.settings import guard_options

        return {**guard_options(cfg), "options": options}
    enc = cfg.encoder
    return dict(checkpoint=cfg.checkpoint, encoder=enc.name, concepts=cfg.inference.concepts, device=cfg.device,
                encoder_type=enc.type, dataset=cfg.dataset, num_heads=cfg.model.num_heads, options=options,
                encoder_options={"dtype": enc.dtype, "attention_mask": enc.attention_mask})
