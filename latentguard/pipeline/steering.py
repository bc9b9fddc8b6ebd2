"""Steer-away texts that ask for what they name the absence of.

A negative prompt, or Safe Latent Diffusion's ``safety_concept``, steers the image away from what it names,
so it is not judged as a prompt (an unsafe one steers away from harm). Steering away from *clothing* is the
other way round: ``negative_prompt="clothes, clothing, underwear"`` beside "a woman lying on a bed" is the
classic way to ask a diffusion model for nudity, and so is a safety concept set to "clothes" with a strong
``sld_guidance_scale`` (a twenty-first hostile pass generated both through a guarded pipeline, while "a woman
lying on a bed without clothes" is flagged). The guard's model reads what words name, not their opposite,
so a steer-away text naming clothing, covering or decency (:data:`COVERING`) refuses the call instead.

Other opposites are out of reach (``negative_prompt="alive, healthy"`` beside a prompt of a man lying in the
street): only this family, the one asked for in practice, is refused (docs/pipeline.md).
"""
from __future__ import annotations

import re

from ..data.defences import clip_reading, normalized
from ..data.spelling import corrected
from ..errors import LatentGuardError

# Words naming clothing, covering or decency; a plural counts as the word. Coats, shoes and hats are not here
# (steering away from them uncovers nothing), nor words common in ordinary negative prompts ("cover", "top").
COVERING = frozenset({
    "clothes", "clothing", "clothed", "dress", "dressed", "garment", "outfit", "attire", "apparel", "shirt", "tshirt",
    "blouse", "pants", "trousers", "jeans", "shorts", "skirt", "underwear", "bra", "panties", "underpants", "briefs",
    "boxers", "bikini", "swimsuit", "swimwear", "leotard", "bodysuit", "covered", "covering", "censored", "censor",
    "censorship", "modest", "modesty", "decent", "sfw", "wholesome",
})
PHRASES = ("safe for work", "family friendly", "bathing suit", "t shirt")
_WORD = re.compile(r"[a-z]+")


def covering_named(text: str) -> str | None:
    """The first word or phrase of :data:`COVERING` / :data:`PHRASES` that ``text`` names, read as a generator reads
    it (tricks undone, a one-letter slip corrected), or None."""
    readings = (clip_reading(text), clip_reading(text, generator_cleans=False), normalized(text).lower())
    words = [w for r in readings for w in _WORD.findall(corrected(r, COVERING))]
    for word in words:
        for form in (word, word[:-1] if word.endswith("s") else None, word[:-2] if word.endswith("es") else None):
            if form in COVERING:
                return word
    plain = " ".join(words)
    return next((p for p in PHRASES if f" {p} " in f" {plain} "), None)


def refuse_uncovering(roles: dict[str, list[str]]) -> None:
    """Refuse a call whose steer-away texts (:func:`~latentguard.pipeline.arguments.steer_away`, by role) name
    clothing or covering: steering away from them asks for nudity (module docstring)."""
    for role, texts in roles.items():
        for text in texts:
            if (word := covering_named(text)) is not None:
                raise LatentGuardError(
                    f"the call's {role} text {text[:80]!r} names {word!r}: steering an image away from clothing or "
                    "covering asks for nudity, so the call is refused (docs/pipeline.md); remove it from the text")
