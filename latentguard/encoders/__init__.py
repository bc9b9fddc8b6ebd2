"""Frozen text encoders that turn prompts into the 78-row embedding Latent Guard reads
(layout: :mod:`latentguard.encoders.base`).

Three families share that layout behind one interface (:class:`TextEncoder`):

* ``clip``: Hugging Face ``CLIPTextModel`` (the reference, ``openai/clip-vit-large-patch14``);
* ``openclip``: an OpenCLIP text tower (e.g. ``openclip:ViT-H-14`` as in SD 2.x, ``openclip:ViT-bigG-14``
  as in SDXL), pooled row = state at the end-of-text token;
* ``hf``: any Hugging Face encoder through ``AutoModel`` (T5 encoders, BERT family), run with its
  attention mask, pooled row = state at the last non-padding token.

:func:`load_encoder` picks the family from the model's own ``config.json`` (or the ``openclip:``
prefix); ``encoder_type`` overrides. Every family can also encode prompts longer than the context in
overlapping windows (:meth:`TextEncoder.encode_windows`), an option that is off by default.
"""
from __future__ import annotations

import importlib
from pathlib import Path

import torch

from ..constants import ENCODER_FAMILIES
from ..errors import LatentGuardError
from .base import (
    CONTEXT_LENGTH,
    DEFAULT_ENCODER,
    DEFAULT_WINDOW_STRIDE,
    EMBEDDING_ROWS,
    ENCODER_TYPES,
    LAYOUT_VERSION,
    TextEncoder,
    weights_fingerprint,
    window_starts,
)
from .clip import CLIPTextEncoder
from .hf import HFTextEncoder, _model_type
from .identity import identity_parts, same_embeddings
from .openclip import OPENCLIP_DEFAULT_WEIGHTS, OPENCLIP_PREFIX, OpenCLIPTextEncoder, parse_openclip_name
from .precision import resolve_device, resolve_dtype

__all__ = ["CONTEXT_LENGTH", "DEFAULT_ENCODER", "DEFAULT_WINDOW_STRIDE", "EMBEDDING_ROWS", "ENCODER_TYPES",
           "LAYOUT_VERSION", "OPENCLIP_DEFAULT_WEIGHTS", "OPENCLIP_PREFIX", "CLIPTextEncoder", "HFTextEncoder",
           "OpenCLIPTextEncoder", "TextEncoder", "detect_family", "family_class", "identity_parts", "load_encoder",
           "load_encoder_from_config", "parse_openclip_name", "resolve_device", "resolve_dtype", "same_embeddings",
           "weights_fingerprint", "window_starts"]


def family_class(family: str) -> type[TextEncoder]:
    """The class registered for ``family`` in :data:`latentguard.constants.ENCODER_FAMILIES`."""
    if family not in ENCODER_FAMILIES:
        raise LatentGuardError(f"unknown encoder type '{family}' (use {', '.join(ENCODER_TYPES)})")
    module, _, name = ENCODER_FAMILIES[family].partition(":")
    return getattr(importlib.import_module(module if "." in module else f"{__name__}.{module}"), name)


def _prefixed(name: str) -> str | None:
    """The family whose name prefix ``name`` carries (``openclip:...``), if any."""
    return next((f for f in ENCODER_FAMILIES if (p := family_class(f).prefix) and name.startswith(p)), None)


def detect_family(name_or_path: str | Path) -> str:
    """The family of a model name: the one whose prefix it carries (``openclip:``), else the first registered
    family that claims its ``config.json``'s ``model_type`` (CLIP's types and unreadable configs are CLIP,
    whose loader then explains; any other Hugging Face model is ``hf``)."""
    name = str(name_or_path)
    prefixed = _prefixed(name)
    if prefixed is not None:
        return prefixed
    if name == DEFAULT_ENCODER:
        return "clip"
    model_type = _model_type(name)
    return next((f for f in ENCODER_FAMILIES if family_class(f).claims(model_type)), next(iter(ENCODER_FAMILIES)))


def _looks_like_path(name: str) -> bool:
    """A local path rather than a hub id (``org/name`` has one slash, never a leading ``/``, ``.`` or ``~``)."""
    return (name.startswith(("/", ".", "~")) or name.count("/") > 1 or "\\" in name
            or (len(name) > 1 and name[1] == ":"))


def load_encoder(name_or_path: str | Path = DEFAULT_ENCODER, encoder_type: str = "auto",
                 device: str | torch.device | None = None, dtype: str | torch.dtype | None = None,
                 attention_mask: bool = False, *, max_length: int = CONTEXT_LENGTH,
                 trim_padding: bool = False) -> TextEncoder:
    """Open a text encoder by name; ``encoder_type`` (auto or a registered family) forces the family.

    Names: a hub name or local directory (the family comes from its ``config.json``), or
    ``openclip:MODEL[@TAG|@/path/weights.bin|@random]``. ``attention_mask`` is the CLIP option
    (Hugging Face encoders always get their mask; OpenCLIP towers are causal and need none);
    ``max_length`` applies to Hugging Face encoders (the 78-row store needs 77).
    """
    if encoder_type not in ENCODER_TYPES:
        raise LatentGuardError(f"unknown encoder type '{encoder_type}' (use {', '.join(ENCODER_TYPES)})")
    name = str(name_or_path)
    prefixed = _prefixed(name)
    named_by_prefix = prefixed is not None or (encoder_type != "auto" and family_class(encoder_type).prefix)
    if not named_by_prefix and _looks_like_path(name) and not Path(name).expanduser().exists():
        raise LatentGuardError(f"cannot load text encoder '{name}': no such directory; pass --encoder with an "
                               "existing directory saved with save_pretrained() or a hub name such as "
                               f"{DEFAULT_ENCODER}")
    from .known import KNOWN_ENCODERS, known_hub_id, resolve_known

    if name in KNOWN_ENCODERS and not Path(name).exists():  # hub id of weights we can check (and load offline)
        if encoder_type not in ("auto", "hf"):
            raise LatentGuardError(f"'{name}' is a Hugging Face (hf) encoder, not {encoder_type}")
        if attention_mask:
            raise LatentGuardError("encoder.attention_mask applies to CLIP encoders only")
        return HFTextEncoder(resolve_known(name), device=device, dtype=dtype, name=name, max_length=max_length,
                             trim_padding=trim_padding)
    if prefixed is None and Path(name).expanduser().is_dir():
        # One store per model directory, however the path is spelled (./m, m, /abs/m).
        name = str(Path(name).expanduser().resolve())
        hub_id = known_hub_id(name)  # a known encoder's exact weights: named portably, by its hub id
        if hub_id is not None and encoder_type in ("auto", "hf") and not attention_mask:
            return HFTextEncoder(name, device=device, dtype=dtype, name=hub_id, max_length=max_length,
                                 trim_padding=trim_padding)
    family = detect_family(name) if encoder_type == "auto" else encoder_type
    if prefixed is not None and family != prefixed:
        raise LatentGuardError(f"'{name}' names a '{prefixed}' encoder but the encoder type is '{encoder_type}' "
                               f"(use --encoder-type auto or {prefixed})")
    if trim_padding and family != "hf":
        raise LatentGuardError("encoder.trim_padding applies to Hugging Face (hf) encoders only")
    extra = {"trim_padding": True} if trim_padding else {}
    return family_class(family).open(name, device=device, dtype=dtype, attention_mask=attention_mask,
                                     max_length=max_length, forced=encoder_type != "auto", **extra)


def load_encoder_from_config(cfg: "Config", device: str | torch.device | None = None) -> TextEncoder:  # noqa: F821
    """The encoder a loaded config's ``encoder`` section names, on ``device`` (default: the config's)."""
    enc = cfg.encoder
    return load_encoder(enc.name, enc.type, device=cfg.device if device is None else device,
                        dtype=enc.dtype, attention_mask=enc.attention_mask, trim_padding=enc.trim_padding)
