"""The wrapped pipeline's arguments, as :mod:`latentguard.pipeline.wrapper` reads them.

Which arguments carry text for the text encoders (checked), which are negative (not checked),
which are conditioning tensors (refused: no text to check), and how ``on_unsafe="skip"`` splits
per-prompt arguments between refused and passed prompts (or refuses the call, naming one).
"""
from __future__ import annotations

import inspect
import re

import numpy as np
import torch

from ..errors import LatentGuardError

# Argument names, read from the wrapped pipeline's ``__call__`` signature.
_TEXT = re.compile(r"^prompt(_\d+)?$")                        # text for the text encoders: checked
_NEGATIVE = re.compile(r"^negative_prompt(_\d+)?$")           # steers away from what it names: not checked
_NEGATIVE_TENSORS = re.compile(r"^negative_.*(embeds|attention_mask)$")  # per prompt; subset by "skip"
_TEXT_LIKE = re.compile(r"(^|_)(prompt|text|caption)s?(_|$)", re.IGNORECASE)  # any such argument must be classified
_COUNTS = frozenset({"num_images_per_prompt", "max_sequence_length"})
_PER_PROMPT_IMAGES = frozenset({"image", "mask_image", "control_image", "ip_adapter_image"})
_SHARED = frozenset({"timesteps", "sigmas", "original_size", "target_size", "crops_coords_top_left",
                     "negative_original_size", "negative_target_size", "negative_crops_coords_top_left",
                     "callback_on_step_end_tensor_inputs", "skip_guidance_layers"})


def text_arguments(pipe) -> list[str]:
    """The names of ``pipe.__call__``'s text arguments the guard checks (``prompt``, ``prompt_2``...).

    Raises :class:`LatentGuardError` when the signature has a text-like argument the guard does not
    know how to treat (it could reach a text encoder unchecked).
    """
    try:
        params = inspect.signature(pipe).parameters
    except (TypeError, ValueError):
        raise LatentGuardError(f"cannot read the call signature of {type(pipe).__name__}; "
                               "refusing to guard it") from None
    if "prompt" not in params:
        raise LatentGuardError(f"{type(pipe).__name__}.__call__ takes no 'prompt' argument; the guard cannot check it")
    if any(p.kind is p.VAR_POSITIONAL for p in params.values()):
        raise LatentGuardError(f"{type(pipe).__name__}.__call__ takes *args; the guard cannot tell its texts apart")
    unknown = [n for n in params if classify(n) == "unknown"]
    if unknown:
        raise LatentGuardError(f"{type(pipe).__name__}.__call__ takes text argument(s) {', '.join(unknown)} that "
                               "Latent Guard cannot check; refusing to guard it partially")
    return [n for n in params if _TEXT.match(n)]


def classify(name: str) -> str:
    """``text`` (checked), ``negative``, ``embeds`` (refused when given), ``other`` or ``unknown`` (refused)."""
    if _TEXT.match(name):
        return "text"
    if _NEGATIVE.match(name) or _NEGATIVE_TENSORS.match(name):
        return "negative"
    if name.endswith(("_embeds", "attention_mask")) and "prompt" in name:
        return "embeds"  # conditioning given as tensors: the text behind it cannot be checked
    if name in _COUNTS or not _TEXT_LIKE.search(name):
        return "other"
    return "unknown"


def added_tokens(tokenizer) -> list[str]:
    """Tokens added to the tokenizer beyond its special ones (textual inversion adds them)."""
    getter = getattr(tokenizer, "get_added_vocab", None)
    if getter is None:
        return []
    special = set(getattr(tokenizer, "all_special_tokens", []) or [])
    return [t for t in getter() if t not in special]


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
        elif kind == "negative" and size == n:
            out[name] = value[passed]
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
