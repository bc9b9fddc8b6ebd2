"""Quality tags: the boilerplate of Stable Diffusion prompts ("masterpiece, best quality, 8k, ..."), which says how
an image should look, not what it shows.

A concept blacklist matched over a prompt's tokens is diluted by them: with "masterpiece, best quality, 8k, " in
front, "a naked woman" read safe to ``mini``, and 14 of 48 flagged CoPro prompts passed (two hostile passes). The
defences therefore also score a prompt without its tags (:func:`untagged`): whatever it shows is judged as if
written plainly. A benign prompt gains nothing it did not have, since its content alone is judged as it would be
without the tags. On the full benchmark sets this moved 84 I2P and 40 P4D prompts to flagged and no COCO caption
(I2P against COCO: AUROC 0.9146 -> 0.9210). The boilerplate of negative prompts written inline ("--no text",
"(blurry:-1)") is a tag too: no clause judged alone.
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
# The boilerplate of negative prompts, written inline ("..., (worst quality, lowres:-1.2)", "... --no text"): each
# read alone as a clause, "a photo of blurry", "bad anatomy", "no text" flagged 60 of 60 COCO captions it followed
# with `mini`. Words that could also say what an image shows ("deformed", "mutilated", "morbid", "nsfw") are left
# out: read alone they are judged, whatever their weight.
_DEFECTS = (r"worst quality|low quality|normal quality|bad quality|lowres|low[- ]res(?:olution)?|blurry|blurred|"
            r"out of focus|jpe?g artifacts?|jpe?g artefacts?|compression artifacts|artifacts|grainy|pixelated|noisy|"
            r"watermarks?|text|signature|username|logo|error|cropped|out of frame|cut off|duplicate|tiling|ugly|"
            r"bad anatomy|bad proportions|bad hands|bad fingers|extra fingers|fewer digits|missing fingers|"
            r"extra digits?|extra limbs|extra arms|extra legs|missing arms|missing legs|malformed (?:limbs|hands)|"
            r"poorly drawn (?:hands|face)|long neck|oversaturated|overexposed|underexposed|easynegative")
_TAG = re.compile(rf"(?:{_TAGS}|{_DEFECTS})", re.IGNORECASE)
# What a weight, brackets or "no" add to a tag: "(masterpiece:1.2)", "[[8k]]", "(blurry:-1)", "text::-0.5", "--no text"
_WEIGHT = re.compile(r"[()\[\]{}]|:{1,2}\s*-?\d{1,3}(?:\.\d{1,3})?|^\s*(?:--)?no\s")
_SEPARATOR = re.compile(r"(?<!\d),|,(?!\d)|\||\s/\s")  # not "1,000": rewritten "1, 000" it made a needless form
# Tags that mean nothing else, cut wherever they stand: "masterpiece best quality 8k a naked woman" and
# "masterpiece / best quality / 8k / a naked woman" had passed (a hostile pass). Words with another use
# ("detailed", "beautiful", "realistic") are cut only as a chunk of their own (_TAGS).
_ANYWHERE = re.compile(r"(?<![\w-])(?:masterpiece|best quality|high quality|highest quality|top quality|"
                       r"ultra[- ]?detailed|highly detailed|extremely detailed|hyper[- ]?detailed|photo[- ]?realistic|"
                       r"hyper[- ]?realistic|8k|4k|16k|uhd|hdr|sharp focus|cinematic lighting|trending on artstation|"
                       r"octane render|unreal engine|absurdres|highres|raw photo|award[- ]winning|dslr)(?![\w-])",
                       re.IGNORECASE)
_LEFT_OVER = re.compile(r"(?:\s*(?:(?<!\d),|,(?!\d)|[|/]|:\s*\d{1,3}(?:\.\d{1,3})?|[()\[\]{}])\s*)+")


def is_tag(text: str) -> bool:
    """Whether ``text`` is one quality tag (its weight and brackets aside): no clause to judge alone."""
    return bool(_TAG.fullmatch(_WEIGHT.sub("", text).strip()))


def only_tags(text: str) -> bool:
    """Whether ``text`` is quality tags and nothing else ("(worst quality, lowres:-1.2)", ", --no text"): a
    sentence or clause with nothing to judge alone."""
    chunks = [c.strip() for c in _SEPARATOR.split(text)]
    return any(chunks) and all(is_tag(c) for c in chunks if c)


def untagged(text: str) -> str | None:
    """``text`` without its quality tags, or None when it has none, or nothing else: "masterpiece, best quality,
    8k, a naked woman" -> "a naked woman". A chunk (what lies between commas, "|" or " / ") that is a tag is
    cut; so is a tag of :data:`_ANYWHERE` wherever it stands, and the separators it leaves."""
    chunks = [c.strip() for c in _SEPARATOR.split(text)]
    kept = [c for c in chunks if c and not is_tag(c)]
    rest = " ".join(_ANYWHERE.sub(" ", ", ".join(kept)).split())  # one space at most between: linear below
    rest = " ".join(_LEFT_OVER.sub(lambda m: ", " if "," in m.group() or "/" in m.group() else " ", rest).split())
    rest = rest.strip(" ,")
    if not any(ch.isalnum() for ch in rest) or " ".join(rest.split()) == " ".join(text.split()):
        return None
    return rest
