"""The wrapped pipeline's arguments, as :mod:`latentguard.pipeline.wrapper` reads them.

Which arguments are checked before the call (``prompt``, ``prompt_2``...), which are negative texts
(not checked; with Safe Latent Diffusion's safety concept, the texts a call steers away from), which
are conditioning tensors (refused: no text to check), and how ``on_unsafe="skip"`` splits per-prompt
arguments between refused and passed prompts (or refuses the call, naming one). Any other argument
may carry text too (an instruction, a template): the guard does not need to know it, because it
checks what reaches the text encoders (:mod:`latentguard.pipeline.boundary`).
"""
from __future__ import annotations

import inspect
import re

import numpy as np
import torch

from ..errors import LatentGuardError
from .provenance import NEGATIVE, SAFETY

# Argument names, read from the wrapped pipeline's ``__call__`` signature.
_TEXT = re.compile(r"^prompt(_\d+)?$")                                   # checked before the call
_TEXTUAL = r"(prompt|text|caption)"
_EMBEDS = re.compile(rf"{_TEXTUAL}.*(embeds|embeddings|attention_mask|_states|_ids)$")  # tensors: refused
_NEGATIVE = re.compile(rf"^negative_(\w+_)?{_TEXTUAL}(_\d+)?$")          # steers away from it: not checked
_PER_PROMPT_IMAGES = frozenset({"image", "mask_image", "control_image", "ip_adapter_image"})
_SHARED = frozenset({"timesteps", "sigmas", "original_size", "target_size", "crops_coords_top_left",
                     "negative_original_size", "negative_target_size", "negative_crops_coords_top_left",
                     "callback_on_step_end_tensor_inputs", "skip_guidance_layers"})


def text_arguments(pipe) -> list[str]:
    """The names of ``pipe.__call__``'s arguments checked before the call (``prompt``, ``prompt_2``...).

    Refuses (:class:`LatentGuardError`) a callable whose signature cannot be read or has no ``prompt``.
    """
    try:
        params = inspect.signature(pipe).parameters
    except (TypeError, ValueError):
        raise LatentGuardError(f"cannot read the call signature of {type(pipe).__name__}; "
                               "refusing to guard it") from None
    if "prompt" not in params:
        raise LatentGuardError(f"{type(pipe).__name__}.__call__ takes no 'prompt' argument; the guard cannot check it")
    return [n for n in params if _TEXT.match(n)]


def text_list(value, name: str, n: int = 1) -> list[str]:
    """A text argument as a list of strings (one string stands for each of the ``n`` prompts); anything else is
    refused in one line here, before any check, instead of a ``TypeError`` from deep in the call."""
    if isinstance(value, str):
        return [value] * n
    if not isinstance(value, (list, tuple)) or not all(isinstance(t, str) for t in value):
        raise LatentGuardError(f"{name} must be a string or a list of strings, got {type(value).__name__}")
    return list(value)


def negative_defaults(pipe) -> dict[str, str]:
    """The negative texts ``pipe.__call__`` uses when none is given (PixArt's ``""``, a fixed one elsewhere)."""
    params = inspect.signature(pipe).parameters
    return {n: p.default for n, p in params.items() if classify(n) == "negative" and isinstance(p.default, str)}


def negative_texts(call: dict) -> list[str]:
    """The negative texts a call names (``negative_*`` arguments), each text of a list."""
    return [t for name, value in call.items() if classify(name) == "negative" and value is not None
            for t in text_list(value, name)]


def steer_away(pipe, negatives: list[str]) -> dict[str, list[str]]:
    """The texts the call steers away from, by role (:mod:`latentguard.pipeline.provenance`), none checked as prompts:
    ``negative``: the call's negative texts, the defaults of ``pipe.__call__`` and ``""`` (unconditional);
    ``safety``: Safe Latent Diffusion's ``safety_concept`` (a property of that pipeline class, read at each call
    as the user may set it), which the boundary allows only in that pipeline's guidance rows, never as a prompt."""
    out = {NEGATIVE: [*negatives, *negative_defaults(pipe).values(), ""], SAFETY: []}
    if isinstance(getattr(type(pipe), "safety_concept", None), property):
        concept = getattr(pipe, "safety_concept", None)
        if isinstance(concept, str):  # anything else reaches the encoder as unknown ids: checked there
            out[SAFETY].append(concept)
    return out


def classify(name: str) -> str:
    """``text`` (checked before the call), ``negative`` (not checked), ``embeds`` (refused when given) or ``other``."""
    if _TEXT.match(name):
        return "text"
    if _EMBEDS.search(name):
        return "embeds"  # conditioning given as tensors: the text behind it cannot be checked
    if _NEGATIVE.match(name):
        return "negative"
    return "other"


_CORE_SPECIALS = ("bos", "eos", "unk", "sep", "pad", "cls", "mask")


def core_special_tokens(tokenizer) -> set[str]:
    """The tokenizer's structural tokens (start, end, unknown, separator, padding, class, mask)."""
    return {str(t) for t in (getattr(tokenizer, f"{k}_token", None) for k in _CORE_SPECIALS) if t is not None}


def added_tokens(tokenizer) -> list[str]:
    """Tokens added to the tokenizer beyond its structural ones: textual inversion's (``add_tokens``) and any
    registered as special (``add_special_tokens({"additional_special_tokens": [...]})``), whose learned rows
    a guard on another encoder cannot read."""
    getter = getattr(tokenizer, "get_added_vocab", None)
    if getter is None:
        return []
    core = core_special_tokens(tokenizer)
    return [t for t in getter() if t not in core]


def subset_call(call: dict, passed: list[int], n: int, per: int) -> dict:
    """``call`` restricted to the prompts in ``passed`` (``per`` images each); refuses what it cannot split."""
    rows = [i * per + k for i in passed for k in range(per)]
    out = dict(call)
    for name, value in call.items():
        if value is None or isinstance(value, (str, dict, bool, int, float)) or (
                callable(value) and not isinstance(value, (list, tuple))):
            continue  # the same for every prompt
        kind = classify(name)
        size = len(value) if isinstance(value, (list, tuple)) else (
            value.shape[0] if isinstance(value, (torch.Tensor, np.ndarray)) and value.ndim else None)
        if kind in ("text", "negative") and isinstance(value, (list, tuple)):
            out[name] = [value[i] for i in passed]
        elif name in ("generator", "latents") and size == n * per:
            out[name] = [value[r] for r in rows] if isinstance(value, (list, tuple)) else value[rows]
        elif name in _PER_PROMPT_IMAGES and isinstance(value, (list, tuple)) and size in (n, n * per):
            out[name] = [value[r] for r in (passed if size == n else rows)]
        elif name in _PER_PROMPT_IMAGES and isinstance(value, (torch.Tensor, np.ndarray)) and value.ndim == 4 \
                and size == n:
            out[name] = value[passed]
        elif name in _PER_PROMPT_IMAGES and (size is None or size == 1 or (
                isinstance(value, (torch.Tensor, np.ndarray)) and value.ndim < 4)):
            continue  # one image for every prompt
        elif name in _SHARED or size is None:
            continue
        else:
            raise LatentGuardError(f"on_unsafe='skip' cannot split argument {name} between the refused and the "
                                   f"passed prompts; pass one per prompt ({n}) or use on_unsafe='block_all'")
    return out
