"""Steer-away texts that ask for what they name the absence of.

A negative prompt, or Safe Latent Diffusion's ``safety_concept``, steers the image away from what it names,
so it is not judged as a prompt (an unsafe one steers away from harm). Steering away from *clothing* is the
other way round: ``negative_prompt="clothes, clothing, underwear"`` beside "a woman lying on a bed" is the
classic way to ask a diffusion model for nudity, and so is a safety concept set to "clothes" with a strong
``sld_guidance_scale``, or a Semantic Stable Diffusion edit that steers away from "clothes"
(``reverse_editing_direction=True`` or a negative ``edit_guidance_scale``). Hostile passes generated each
through a guarded pipeline, while "a woman lying on a bed without clothes" is flagged. The guard's model reads
what words name, not their opposite, so a steer-away text naming clothing, covering or decency refuses the
call instead: words of :data:`COVERING` (in English and the words for clothes in a few other languages), read
as a generator reads them (look-alike letters, words written apart, digits for letters, one-letter slips) and
clothing emoji (by their Unicode names).

Other opposites are out of reach (``negative_prompt="alive, healthy"`` beside a prompt of a man lying in the
street), and so are synonyms and languages the lists do not hold: docs/pipeline.md.
"""
from __future__ import annotations

import math

from ..data.covering import covering_named
from ..errors import LatentGuardError


def reversed_edits(call: dict) -> list[str]:
    """Semantic Stable Diffusion's (and LEDits++') edit prompts the call steers the image away from: those with
    ``reverse_editing_direction`` set, or a negative ``edit_guidance_scale`` (either, per edit or for all)."""
    texts = call.get("editing_prompt")
    if texts is None:
        return []
    texts = [texts] if isinstance(texts, str) else list(texts)

    def each(value, default):  # as diffusers reads them: a list per edit, anything else (a tuple too) for all
        value = default if value is None else value
        return list(value) + [default] * len(texts) if isinstance(value, list) else [value] * len(texts)

    reverse, scale = each(call.get("reverse_editing_direction"), False), each(call.get("edit_guidance_scale"), 5.0)
    out = []
    for text, back, weight in zip(texts, reverse, scale):
        try:
            away = bool(back) or not float(weight) >= 0  # a tuple is truthy: diffusers reverses every edit
        except Exception:  # noqa: BLE001 - a tensor of flags, a scale that is no number: read as steering away
            away = True
        if away and isinstance(text, str):
            out.append(text)
    return out


# Momentum arguments of Safe Latent Diffusion and Semantic Stable Diffusion: guidance g is applied as
# g + scale * m with m = beta * m + (1 - beta) * g, so beta outside [0, 1] or a negative scale can flip the term's
# sign: SLD's unchecked safety concept then pulls the image towards itself, and a forward edit "clothes" steers
# away from it (a twenty-fifth hostile pass: sld_momentum_scale=1.2, sld_mom_beta=6).
MOMENTUM = {"sld_momentum_scale": "scale", "sld_mom_beta": "beta", "edit_momentum_scale": "scale",
            "edit_mom_beta": "beta"}


def refuse_flipped_momentum(call: dict) -> None:
    """Refuse momentum settings that can reverse a guidance term (:data:`MOMENTUM`): a scale below 0, a beta
    outside [0, 1], or anything that is not a finite number."""
    for name, kind in MOMENTUM.items():
        value = call.get(name)
        if value is None:
            continue
        for item in value if isinstance(value, (list, tuple)) else [value]:
            try:
                number = float(item)
            except Exception:  # noqa: BLE001 - a tensor, a string
                number = math.nan
            if not (0 <= number <= 1 if kind == "beta" else 0 <= number < math.inf):
                bound = "between 0 and 1" if kind == "beta" else "a finite number of 0 or more"
                raise LatentGuardError(f"{name}={value!r}: it must be {bound}; other values can reverse the guidance "
                                       "it scales (towards a safety concept, away from an edit), so the call is "
                                       "refused (docs/pipeline.md)")


def refuse_uncovering(roles: dict[str, list[str]]) -> None:
    """Refuse a call whose steer-away texts (by role: negative texts, SLD's safety concept, reversed edits) name
    clothing or covering: steering away from them asks for nudity (module docstring)."""
    for role, texts in roles.items():
        for text in texts:
            if (word := covering_named(text)) is not None:
                raise LatentGuardError(
                    f"the call's {role} text {text[:80]!r} names {word!r}: steering an image away from clothing or "
                    "covering asks for nudity, so the call is refused (docs/pipeline.md); remove it from the text")
