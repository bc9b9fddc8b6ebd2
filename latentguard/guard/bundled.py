"""A guard from a bundle (:class:`latentguard.hub.Bundle`): the bundle's parts, each overridable, checked once.

What the bundle holds is the default for every argument of ``from_pretrained`` left unset (``None``,
or ``"auto"`` for the threshold and the encoder type); what is given overrides it: another blacklist,
threshold, encoder copy, option. Cheap checks (config, threshold, blacklist, weights and their
SHA-256) run before the slow encoder load; the encoder loaded must embed as the bundle's did.
"""
from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import torch

from ..data.blacklist import load_blacklist, validate_concepts
from ..decision.threshold import validate_record_encoder
from ..encoders.precision import resolve_device
from ..errors import LatentGuardError
from .options import GuardOptions
from .validation import width_message


def _blacklist(bundle, concepts, dataset) -> tuple[list[str], dict[str, float], dict[str, list[str]]]:
    """The concepts, their own thresholds and groups: the bundle's ``concepts.yaml`` unless others are given."""
    if concepts is None:
        blacklist = bundle.blacklist()
    elif isinstance(concepts, (str, Path)):
        blacklist = load_blacklist(concepts, dataset=dataset)
    else:
        return validate_concepts(concepts), {}, {}
    return blacklist.concepts, dict(blacklist.thresholds), dict(blacklist.categories)


def _encoder(bundle, encoder, encoder_type: str, encoder_options: Mapping | None, device):
    """The encoder given, or the one the bundle names, loaded with the bundle's options (overridable)."""
    spec, options = bundle.encoder, bundle.encoder["options"]
    if encoder is not None and not isinstance(encoder, (str, Path)):
        return encoder, encoder.device if device is None else device
    from ..encoders import load_encoder

    device = resolve_device(device)
    kwargs = {"dtype": options["dtype"], "attention_mask": options["attention_mask"]}
    if options["max_length"] is not None:
        kwargs["max_length"] = options["max_length"]
    if options["trim_padding"]:
        kwargs["trim_padding"] = True
    kwargs.update(encoder_options or {})
    if encoder is not None:
        return load_encoder(str(encoder), encoder_type, device=device, **kwargs), device
    family = spec["family"] if encoder_type == "auto" else encoder_type
    try:
        return load_encoder(spec["name"], family, device=device, **kwargs), device
    except LatentGuardError as exc:
        raise LatentGuardError(f"bundle {bundle.name}: {exc}; or pass your copy of that encoder (encoder=..., "
                               "--encoder)") from None


def load_bundle_guard(cls, bundle, encoder, concepts: Sequence[str] | str | Path | None,
                      device: str | torch.device | None, options: GuardOptions, *, encoder_type: str,
                      dataset: str | Path | None, encoder_options: Mapping | None, num_heads: int | None):
    """What :meth:`LatentGuard.from_pretrained` does with a bundle (see its docstring for the arguments)."""
    config = bundle.config
    sizes = config["mapping_layer"]
    if num_heads is not None and num_heads != sizes["num_heads"]:
        raise LatentGuardError(f"bundle {bundle.name} has {sizes['num_heads']} attention heads, not num_heads="
                               f"{num_heads} (leave it unset: the bundle records it)")
    choice = options.choice(bundle=bundle)
    names, thresholds, groups = _blacklist(bundle, concepts, dataset)
    own = bundle.own_thresholds(names)  # warns when one is raised above the calibration
    model = bundle.mapping_layer()  # format, SHA-256 and sizes checked before the slow encoder load
    encoder, device = _encoder(bundle, encoder, encoder_type, encoder_options, device)
    if model.in_dim != encoder.hidden_size:
        raise LatentGuardError(f"bundle {bundle.name}: " + width_message("the mapping layer", model.in_dim,
                                                                         encoder.hidden_size))
    bundle.validate_encoder(encoder.identity)
    if choice.record is not None:
        validate_record_encoder(choice.record, encoder.identity, choice.record_path)
    options = options.with_bundle(bundle).with_blacklist({**own, **thresholds}, groups, bundle.fitted_slope(choice))
    return cls(model, encoder, names, device=device, options=options, choice=choice, bundle=bundle,
               concept_vectors=bundle.concept_vectors(encoder.identity))

