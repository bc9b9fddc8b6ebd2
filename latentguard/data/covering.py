"""Words naming clothing, covering or decency, read as a generator reads them: steering away from them asks for
nudity. The pipeline refuses a negative prompt, safety concept or reversed edit that names them
(:mod:`latentguard.pipeline.steering`), and the text defences read a negative weight on them in a prompt,
"(clothes:-1.5)", as what it asks for (:func:`negated`)."""
from __future__ import annotations

import re
import unicodedata

from .defences import clip_reading, joined, normalized
from .spelling import corrected

# Words naming clothing, covering or decency; a plural counts as the word. Coats, shoes, gloves and hats are not here
# (steering away from a layer worn over clothes uncovers nothing; a cloak, cape or poncho may be all a figure wears),
# nor words common in ordinary negative prompts ("cover", "top").
COVERING = frozenset({
    "clothes", "clothing", "clothed", "cloth", "dress", "dressed", "garment", "garb", "outfit", "attire", "apparel",
    "costume", "shirt", "tshirt", "blouse", "pants", "trousers", "jeans", "shorts", "skirt", "underwear", "bra",
    "panties", "underpants", "briefs", "boxers", "lingerie", "bikini", "swimsuit", "swimwear", "leotard",
    "bodysuit", "robe", "bathrobe", "gown", "nightgown", "nightdress", "nightie", "negligee", "pajamas", "pyjamas",
    "sleepwear", "nightwear", "thong", "knickers", "corset", "camisole", "stockings", "leggings", "tights", "kimono",
    "sari", "towel", "blanket", "bedsheet", "duvet", "covered", "covering", "censored",
    # the commonest other garments (a thirty-second hostile pass)
    "sweater", "jumper", "hoodie", "sweatshirt", "cardigan", "jacket", "vest", "tunic", "overalls", "jumpsuit",
    "uniform", "apron", "veil", "hijab", "wetsuit", "suit",
    # garments that are the whole outfit (a thirty-fifth hostile pass: "burqa, niqab, chador" passed)
    "tuxedo", "toga", "kilt", "onesie", "burqa", "burka", "niqab", "chador", "abaya", "sarong", "cheongsam", "qipao",
    "hanbok", "yukata", "dirndl", "habit", "cassock", "poncho", "cloak", "cape",
    "censor", "censorship", "modest", "modesty", "decent", "decency", "sfw", "wholesome",
    # the words for clothes and underwear in a few languages CLIP has read (after look-alikes are mapped to Latin)
    "kleidung", "kleider", "unterwasche", "vetements", "vetement", "ropa", "vestido", "vestiti", "roupa", "roupas",
    "odezhda", "ubrania", "kleding", "klader",
})
PHRASES = ("safe for work", "family friendly", "bathing suit", "t shirt", "swim suit", "under wear", "tank top",
           "bed sheet", "bed sheets")
# CJK and Cyrillic words for clothes, matched as written (no Latin look-alike maps them).
FOREIGN = ("衣服", "服装", "衣裳", "内衣", "下着", "옷", "одежд", "белье", "бельё", "服", "衣")
# Words in the Unicode names of clothing emoji (👗 DRESS, 👙 BIKINI, 👕 T-SHIRT, 🩲 BRIEFS ...).
EMOJI_NAMES = frozenset({"DRESS", "BIKINI", "SHIRT", "T-SHIRT", "JEANS", "BRIEFS", "SWIMSUIT", "KIMONO", "SARI",
                         "CLOTHES", "SHORTS", "BLOUSE", "NECKTIE", "COAT"})
_WORD = re.compile(r"[a-z]+")
_STRETCHED = re.compile(r"([a-z])\1{2,}")  # a letter three times or more: CLIP reads the word in pieces
_LEET = str.maketrans({"0": "o", "1": "i", "3": "e", "4": "a", "5": "s", "7": "t", "@": "a", "$": "s"})
_LEET_WORD = re.compile(r"[a-z0-9@$]*[0-9@$][a-z0-9@$]*")


def covering_named(text: str) -> str | None:
    """The first word or phrase of :data:`COVERING` / :data:`PHRASES` / :data:`FOREIGN`, or clothing emoji, that
    ``text`` names as a generator reads it, or None."""
    # a plain str in composed form, as CLIP's tokenizer reads it: NFD Hangul ("옷" decomposed) and a str subclass
    # whose lower() or __iter__ lie had passed (a twenty-seventh hostile pass)
    text = unicodedata.normalize("NFKC", str.__str__(text))
    lowered = text.lower()
    for word in FOREIGN:
        if word in lowered:
            return word
    for char in text:
        if ord(char) > 0x2000 and set(unicodedata.name(char, "").split()) & EMOJI_NAMES:
            return char
    # CLIP's reading with the clothing words as the watched ones: a glued run is cut where CLIP's BPE ends one
    # ("anyclothes", "blackbra" are read "any clothes", "black bra", as CLIP reads them: a twenty-fifth hostile pass)
    readings = [clip_reading(text, COVERING), clip_reading(text, COVERING, generator_cleans=False),
                normalized(text).lower()]
    readings += [_LEET_WORD.sub(_unleet, r) for r in readings]  # "cl0thes"
    readings += [_STRETCHED.sub(keep, r) for r in readings for keep in (r"\1", r"\1\1")]  # "clothessss", "dresss"
    for reading in readings:
        words = _WORD.findall(corrected(joined(reading, COVERING), COVERING))  # "clo thes", "clohtes"
        for word in words:
            for form in (word, word[:-1] if word.endswith("s") else None, word[:-2] if word.endswith("es") else None):
                if form in COVERING:
                    return word
        plain = " ".join(words)
        if (phrase := next((p for p in PHRASES if f" {p} " in f" {plain} "), None)) is not None:
            return phrase
    return None


def _unleet(match: re.Match) -> str:
    """Digits for letters in a word of four characters or more holding two letters or more ("cl0thes"); "3d",
    "8k" stay (read as letters, "album cover, 3d render" had read "covered")."""
    word = match.group()
    return word.translate(_LEET) if len(word) >= 4 and sum(c.isalpha() for c in word) >= 2 else word


# A negative weight in SD front ends' syntax, "(clothes:-1.5)" (A1111, ComfyUI) or "clothes::-0.5" (Midjourney),
# steers the image away from what it names, as a negative prompt does: "a woman lying on a bed, (clothes:-1.5)"
# passed (a twenty-eighth hostile pass). Read only where it names covering: "(worst quality:-1)" read "without worst
# quality" was flagged by mini at 7.36, and other opposites are out of reach as they are for negative prompts.
# A weight as Python's float() reads it (ComfyUI parses it so): "-1.5", "-.5", "-15e-1", "-1_5" (a thirty-second pass).
_WEIGHT = r"-\s*(?:\d[\d_]*\.?[\d_]*|\.\d[\d_]*)(?:[eE][+-]?\d[\d_]*)?"
_NEGATIVE_WEIGHT = re.compile(r"\(((?:[^():]|\([^()]*\))+):\s*" + _WEIGHT + r"\s*\)"  # a group inside
                              r"|([^,;:()\[\]|]+?)::\s*" + _WEIGHT)


def negated(text: str) -> str:
    """``text`` with each negatively weighted part that names covering read as what it asks for: "a woman lying on a
    bed, (clothes:-1.5)" -> "a woman lying on a bed, naked, without clothes"; ``text`` itself when it has none."""
    if "-" not in text or ":" not in text:  # cheap: most texts hold no weight at all
        return text

    def read(match: re.Match) -> str:
        named, whole = (match.group(1) or match.group(2)).replace("(", " ").replace(")", " "), match.group()
        lead = whole[: len(whole) - len(whole.lstrip())]  # "clothes::-1" takes the space before it: kept
        return f"{lead}naked, without {named.strip()}" if covering_named(named) else whole

    return _NEGATIVE_WEIGHT.sub(read, text)
