"""Building a guard from files: weights, encoder, blacklist and threshold, each read and checked once.

Cheap checks (blacklist, checkpoint, threshold record) run before the slow encoder load; the
checkpoint is hashed once and its threshold record read once, then checked against the encoder
when it is known.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterable, Mapping, Sequence

import torch

from ..constants import AUTO, CALIBRATED, DEFAULT_CATEGORY, DEFAULT_ENCODER
from ..data.blacklist import check_concepts, load_blacklist
from ..decision.threshold import check_record_encoder, choose_threshold
from ..encoders.precision import resolve_device
from ..errors import LatentGuardError
from ..io import sha256_of
from ..model import load_mapping_layer, released_checkpoint
from ..published import RELEASED_THRESHOLD
from .checks import check_options, width_message


def load_guard(cls, checkpoint: str | Path, encoder, concepts: Sequence[str] | str | Path | None,
               threshold: float | str, device: str | torch.device | None, *, encoder_type: str, batch_size: int,
               concept_thresholds: Mapping[str, float] | None, allowlist: Iterable[str] | None, top_k: int,
               dataset: str | Path | None, encoder_options: Mapping | None, num_heads: int, cache_concepts: bool,
               long_prompts: bool | None, window_stride: int | None,
               categories: Mapping[str, Sequence[str]] | None = None, default_category: str | None = None,
               slope: float | None = None, revision: str | None = None, normalize_text: bool = True,
               split_sentences: bool = True):
    """What :meth:`LatentGuard.from_pretrained` does (see its docstring for the arguments)."""
    from ..hub.bundle import open_bundle

    bundle = open_bundle(checkpoint, revision=revision)  # None: a released-format checkpoint path
    if bundle is not None:
        from .bundled import load_bundle_guard

        return load_bundle_guard(
            cls, bundle, encoder, concepts, threshold, device, encoder_type=encoder_type, batch_size=batch_size,
            concept_thresholds=concept_thresholds, allowlist=allowlist, top_k=top_k, dataset=dataset,
            encoder_options=encoder_options, num_heads=num_heads, cache_concepts=cache_concepts,
            long_prompts=long_prompts, window_stride=window_stride, categories=categories,
            default_category=default_category, slope=slope, normalize_text=normalize_text,
            split_sentences=split_sentences)
    encoder = DEFAULT_ENCODER if encoder is None else encoder
    num_heads, long_prompts = 16 if num_heads is None else num_heads, bool(long_prompts)
    default_category = DEFAULT_CATEGORY if default_category is None else default_category
    named = isinstance(threshold, str) and threshold.strip().lower() in (AUTO, CALIBRATED)
    choice = None if named else choose_threshold(threshold)  # a number or a published name
    check_options(RELEASED_THRESHOLD if choice is None else choice.value, batch_size, top_k)
    if isinstance(concepts, (str, Path)) or concepts is None:
        blacklist = load_blacklist(concepts, dataset=dataset)
        names, thresholds, groups = blacklist.concepts, dict(blacklist.thresholds), dict(blacklist.categories)
    else:
        names, thresholds, groups = check_concepts(concepts), {}, {}
    groups.update(categories or {})
    thresholds.update(concept_thresholds or {})
    path = released_checkpoint(checkpoint)
    if choice is None:  # the record beside the weights: read once, the weights hashed once, before the encoder
        choice = choose_threshold(threshold, path, sha256=sha256_of(path))
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
        check_record_encoder(choice.record, encoder.identity, choice.record_path)
    if slope is None and choice.record is not None:
        slope = choice.record.slope  # fitted with the threshold it belongs to (None: not fitted)
    guard = cls(model, encoder, names, choice.value, device=device, batch_size=batch_size,
                concept_thresholds=thresholds, allowlist=allowlist, top_k=top_k, cache_concepts=cache_concepts,
                long_prompts=long_prompts, window_stride=window_stride, categories=groups,
                default_category=default_category, slope=slope, normalize_text=normalize_text,
                split_sentences=split_sentences)
    guard.checkpoint = Path(path)
    guard.threshold_origin, guard.threshold_record = choice.origin, choice.record
    return guard


def guard_options_from_config(cfg) -> dict:
    """:meth:`LatentGuard.from_pretrained` arguments as a loaded :class:`~latentguard.config.Config` gives them."""
    from ..io import read_lines

    enc, inf = cfg.encoder, cfg.inference
    allowlist = read_lines(inf.allowlist, what="allowlist file") if inf.allowlist else None
    if cfg.guard:  # a bundle: its own encoder, options and sizes unless the config changes them
        from ..hub.settings import guard_options

        return {**guard_options(cfg), "allowlist": allowlist}
    return dict(
        checkpoint=cfg.checkpoint, encoder=enc.name, concepts=inf.concepts, threshold=inf.threshold,
        device=cfg.device, encoder_type=enc.type, batch_size=inf.batch_size, allowlist=allowlist,
        top_k=inf.top_k, dataset=cfg.dataset, num_heads=cfg.model.num_heads, default_category=inf.category,
        normalize_text=inf.normalize_text, split_sentences=inf.split_sentences,
        encoder_options={"dtype": enc.dtype, "attention_mask": enc.attention_mask},
        long_prompts=enc.long_prompts, window_stride=enc.window_stride,
    )
