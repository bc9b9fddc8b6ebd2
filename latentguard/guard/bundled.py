"""A guard from a bundle (:class:`latentguard.hub.Bundle`): the bundle's parts, each overridable, checked once.

What the bundle holds is the default for every argument of ``from_pretrained`` left unset (``None``,
or ``"auto"`` for the threshold and the encoder type); what is given overrides it: another blacklist,
threshold, encoder copy, option. Cheap checks (config, threshold, blacklist, weights and their
SHA-256) run before the slow encoder load; the encoder loaded must embed as the bundle's did.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterable, Mapping, Sequence

import torch

from ..data.blacklist import check_concepts, load_blacklist
from ..decision.threshold import check_record_encoder
from ..encoders.precision import resolve_device
from ..errors import LatentGuardError
from ..hub.format import CONFIG
from .checks import check_options, width_message


def _blacklist(bundle, concepts, dataset) -> tuple[list[str], dict[str, float], dict[str, list[str]]]:
    """The concepts, their own thresholds and groups: the bundle's ``concepts.yaml`` unless others are given."""
    if concepts is None:
        blacklist = bundle.blacklist()
    elif isinstance(concepts, (str, Path)):
        blacklist = load_blacklist(concepts, dataset=dataset)
    else:
        return check_concepts(concepts), {}, {}
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


def load_bundle_guard(cls, bundle, encoder, concepts: Sequence[str] | str | Path | None, threshold: float | str,
                      device: str | torch.device | None, *, encoder_type: str, batch_size: int,
                      concept_thresholds: Mapping[str, float] | None, allowlist: Iterable[str] | None, top_k: int,
                      dataset: str | Path | None, encoder_options: Mapping | None, num_heads: int | None,
                      cache_concepts: bool, long_prompts: bool | None, window_stride: int | None,
                      categories: Mapping[str, Sequence[str]] | None, default_category: str | None,
                      slope: float | None, normalize_text: bool = True, split_sentences: bool = True):
    """What :meth:`LatentGuard.from_pretrained` does with a bundle (see its docstring for the arguments)."""
    config = bundle.config
    sizes, options = config["mapping_layer"], bundle.encoder["options"]
    if num_heads is not None and num_heads != sizes["num_heads"]:
        raise LatentGuardError(f"bundle {bundle.name} has {sizes['num_heads']} attention heads, not num_heads="
                               f"{num_heads} (leave it unset: the bundle records it)")
    choice = bundle.threshold_choice(threshold)
    check_options(choice.value, batch_size, top_k)
    names, thresholds, groups = _blacklist(bundle, concepts, dataset)
    own = {c: t for c, t in config["concept_thresholds"].items() if c in set(names)}
    thresholds = {**own, **thresholds, **(concept_thresholds or {})}
    groups.update(categories or {})
    model = bundle.mapping_layer()  # format, SHA-256 and sizes checked before the slow encoder load
    encoder, device = _encoder(bundle, encoder, encoder_type, encoder_options, device)
    if model.in_dim != encoder.hidden_size:
        raise LatentGuardError(f"bundle {bundle.name}: " + width_message("the mapping layer", model.in_dim,
                                                                         encoder.hidden_size))
    bundle.check_encoder(encoder.identity)
    if choice.record is not None:
        check_record_encoder(choice.record, encoder.identity, choice.record_path)
    if slope is None and choice.record_path == bundle.path / CONFIG:
        slope = config["slope"]  # fitted with the bundle's threshold; another threshold gets the default slope
    guard = cls(model, encoder, names, choice.value, device=device, batch_size=batch_size,
                concept_thresholds=thresholds, allowlist=allowlist, top_k=top_k, cache_concepts=cache_concepts,
                long_prompts=options["long_prompts"] if long_prompts is None else long_prompts,
                window_stride=options["window_stride"] if window_stride is None else window_stride,
                categories=groups,
                default_category=config["categories"]["default"] if default_category is None else default_category,
                slope=slope, concept_vectors=bundle.concept_vectors(encoder.identity), normalize_text=normalize_text,
                split_sentences=split_sentences)
    guard.bundle = bundle
    guard.threshold_origin = choice.origin
    guard.threshold_record = choice.record
    return guard
