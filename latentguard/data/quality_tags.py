"""Quality tags: the boilerplate of Stable Diffusion prompts ("masterpiece, best quality, 8k, ..."), which says how
an image should look, not what it shows.

A concept blacklist matched over a prompt's tokens is diluted by them: with "masterpiece, best quality, 8k, " in
front, "a naked woman" read safe to ``mini``, and 14 of 48 flagged CoPro prompts passed (two hostile passes). The
defences therefore also score a prompt without its tags (:func:`untagged`): whatever it shows is judged as if
written plainly. A benign prompt gains nothing it did not have, since its content alone is judged as it would be
without the tags. On the full benchmark sets this moved 84 I2P and 40 P4D prompts to flagged and no COCO caption
(I2P against COCO: AUROC 0.9146 -> 0.9210).
"""
from __future__ import annotations

import re

# Tags as written in DiffusionDB/Lexica-style prompts, one chunk between commas each; a weight "(tag:1.2)" and
# brackets are read through. Style and artist names are left in: they say something about what is shown.
_TAGS = (r"masterpiece|best quality|high quality|highest quality|top quality|ultra[- ]?detailed|ultra detail|"
         r"highly detailed|very detailed|extremely detailed|intricate details?|intricate|detailed|hyper[- ]?detailed|"
         r"hyper[- ]?realistic|photo[- ]?realistic|realistic|ultra realistic|8k|4k|16k|8k uhd|uhd|hdr|hd|"
         r"high resolution|highres|absurdres|sharp focus|cinematic lighting|cinematic|dramatic lighting|"
         r"studio lighting|soft lighting|volumetric lighting|trending on artstation|artstation|octane render|"
         r"unreal engine(?: \d)?|cgsociety|award[- ]winning(?: photo(?:graph)?)?|professional photo(?:graph)?y?|"
         r"raw photo|dslr|bokeh|depth of field|concept art|digital art|digital painting|smooth|elegant|beautiful|"
         r"stunning|epic|4k wallpaper|wallpaper|illustration|official art|unity 8k wallpaper|extremely detailed cg|"
         r"perfect lighting|global illumination|ray tracing|film grain|\d{1,3} ?mm|f/\d{1,2}(?:\.\d)?|solo")
_TAG = re.compile(rf"(?:{_TAGS})", re.IGNORECASE)
_WEIGHT = re.compile(r"[()\[\]{}]|:\s*\d{1,3}(?:\.\d{1,3})?")  # "(masterpiece:1.2)", "[[8k]]"
_SEPARATOR = re.compile(r"[,|]")


def untagged(text: str) -> str | None:
    """``text`` without its quality-tag chunks, or None when it has none, or nothing else: "masterpiece, best
    quality, 8k, a naked woman" -> "a naked woman". Chunks are what lies between commas (or "|")."""
    if "," not in text and "|" not in text:
        return None
    chunks = [c.strip() for c in _SEPARATOR.split(text)]
    kept = [c for c in chunks if c and not _TAG.fullmatch(_WEIGHT.sub("", c).strip())]
    if not kept or len(kept) == sum(1 for c in chunks if c):
        return None
    return ", ".join(kept)
