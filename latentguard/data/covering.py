"""Words naming clothing, covering or decency, read as a generator reads them: steering away from them asks for
nudity. The pipeline refuses a negative prompt, safety concept or reversed edit that names them
(:mod:`latentguard.pipeline.steering`), and the text defences read a negative weight on them in a prompt,
"(clothes:-1.5)", as what it asks for (:func:`negated`)."""
from __future__ import annotations

import bisect
import functools
import re
import unicodedata

from .defences import clip_reading, joined, normalized
from .spelling import DIGIT_LETTERS, corrected

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
    # underwear, swimwear and everyday garments a thirty-seventh pass found missing (43 of 62 words passed); words
    # with a common other sense stay out ("brief", "trunks", "tee", "polo", "teddy", "slip")
    "undies", "undergarment", "undergarments", "chemise", "romper", "bloomers", "shawl", "gstring", "bodystocking",
    "babydoll", "garter", "garters", "pantyhose", "speedo", "tankini", "monokini", "bralette", "bustier",
    "petticoat", "miniskirt", "halter", "singlet", "blazer", "dungarees", "khakis", "capris", "culottes", "pajama",
    "pyjama", "loincloth", "girdle", "raiment", "clad", "nightshirt", "lederhosen", "sundress",
    "censor", "censorship", "modest", "modesty", "decent", "decency", "sfw", "wholesome",
    # the words for clothes and underwear in a few languages CLIP has read (after look-alikes are mapped to Latin)
    "kleidung", "kleider", "unterwasche", "vetements", "vetement", "ropa", "vestido", "vestiti", "roupa", "roupas",
    "odezhda", "ubrania", "kleding", "klader",
})
PHRASES = ("safe for work", "family friendly", "bathing suit", "t shirt", "swim suit", "under wear", "tank top",
           "bed sheet", "bed sheets", "g string", "crop top", "swim trunks", "tee shirt", "fig leaf", "nipple covers",
           "polo shirt")
# CJK and Cyrillic words for clothes, matched as written (no Latin look-alike maps them).
FOREIGN = ("衣服", "服装", "衣裳", "内衣", "下着", "옷", "одежд", "белье", "бельё", "服", "衣")
# Words in the Unicode names of clothing emoji (👗 DRESS, 👙 BIKINI, 👕 T-SHIRT, 🩲 BRIEFS ...).
EMOJI_NAMES = frozenset({"DRESS", "BIKINI", "SHIRT", "T-SHIRT", "JEANS", "BRIEFS", "SWIMSUIT", "KIMONO", "SARI",
                         "CLOTHES", "SHORTS", "BLOUSE", "NECKTIE", "COAT"})
_WORD = re.compile(r"[a-z]+")
_STRETCHED = re.compile(r"([a-z])\1{2,}")  # a letter three times or more: CLIP reads the word in pieces
_LEET = str.maketrans({**DIGIT_LETTERS, "@": "a", "$": "s"})
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


# A negative weight in SD front ends' syntax steers the image away from what it names, as a negative prompt does:
# "(clothes:-1.5)" (A1111, ComfyUI; groups nest: "(((clothes)):-1.5)", the weights multiplied), "clothes::-0.5"
# (Midjourney), "-1::clothes::" (NovelAI's numeric emphasis) and "a woman AND clothes :-1" (A1111's composable
# diffusion reads a signed weight at the end of each side of AND). "a woman lying on a bed, (clothes:-1.5)" passed (a
# twenty-eighth hostile pass), and the nested, NovelAI and AND forms 40 to 44 of 48 such prompts (a thirty-seventh).
# Read only where it names covering: "(worst quality:-1)" read "without worst quality" was flagged by mini at 7.36,
# and other opposites are out of reach as they are for negative prompts. A weight as Python's float() reads it
# (ComfyUI parses it so): "-1.5", "-.5", "-15e-1", "-1_5" (a thirty-second pass).
# One way only to read a run of digits (two runs side by side, "[\d_]*\.?[\d_]*", had split "-" + "1" * 16000 in n^2
# ways: 17 s for one prompt, a thirty-ninth hostile pass).
_WEIGHT = r"-\s*(?:\d[\d_]*(?:\.[\d_]*)?|\.\d[\d_]*)(?:[eE][+-]?\d[\d_]*)?"
_GROUP_END = re.compile(r":\s*" + _WEIGHT + r"\s*\)")  # the end of "(... :-1.5)"; its "(" found by depth
_MIDJOURNEY = re.compile(r"::\s*" + _WEIGHT)  # "X::-w": X runs back to the separator before it
_MIDJOURNEY_STOP = re.compile(r"[,;:()\[\]|]")
_NOVELAI = re.compile(r"(?<![\w.])" + _WEIGHT + r"\s*::([^:]+)::")
_AND = re.compile(r"\bAND\b")
_PARENTHESIS = re.compile(r"[()]")
# Midjourney's "--no clothes, towel" is its shorthand for "clothes::-0.5": a negative prompt inside the prompt, up to
# the next parameter (59 of 306 covering words had passed after "--no": a thirty-ninth hostile pass).
_MIDJOURNEY_NO = re.compile(r"(?<!\S)--no\s+([^\n]*?)(?=\s+--[a-z]|\s*$)")
_SIDE_WEIGHT = re.compile(r"(.*?):\s*" + _WEIGHT + r"\s*", re.DOTALL)  # a side of AND ending in its weight


def negated(text: str) -> str:
    """``text`` with each negatively weighted part that names covering read as what it asks for: "a woman lying on a
    bed, (clothes:-1.5)" -> "a woman lying on a bed, naked, without clothes"; ``text`` itself when it has none."""
    parts = [(start, end, named) for start, end, named in negative_parts(text) if covering_named(named)]
    out, last = [], 0
    for start, end, named in sorted(parts):
        if start < last:  # inside a part read already ("((clothes):-1):-1")
            continue
        whole = text[start:end]  # the spaces around it are kept: " clothes::-1", "AND clothes :-1 AND"
        lead, trail = whole[: len(whole) - len(whole.lstrip())], whole[len(whole.rstrip()):]
        before = text[:start].rstrip()
        if before[-1:].isalnum() and not before.endswith("AND"):  # "a woman in a shower --no towel": a clause
            lead = ", "
        words = " ".join(named.replace("(", " ").replace(")", " ").split())
        out += [text[last:start], f"{lead}naked, without {words}{trail}"]
        last = end
    return "".join(out) + text[last:] if out else text


@functools.lru_cache(maxsize=256)  # negated() and asked_for() read the same forms of a prompt, one after the other
def negative_parts(text: str) -> tuple[tuple[int, int, str], ...]:
    """``(start, end, words)`` of each negatively weighted part of ``text``, in every syntax above; in time linear in
    the text (a backward search per weight had taken 35 s for "x:-1)" * 10000: this runs on every prompt)."""
    if "-" not in text:  # cheap: most texts hold no weight at all
        return ()
    parts = []
    if ends := list(_GROUP_END.finditer(text)):  # each ")" and the "(" it closes, once, only where a weight ends one
        opened, opener = [], {}
        for bracket in _PARENTHESIS.finditer(text):
            if bracket.group() == "(":
                opened.append(bracket.start())
            elif opened:
                opener[bracket.start()] = opened.pop()
        parts += [(opener[m.end() - 1], m.end(), text[opener[m.end() - 1] + 1 : m.start()])
                  for m in ends if m.end() - 1 in opener]
    if weights := list(_MIDJOURNEY.finditer(text)):
        stops = [m.start() for m in _MIDJOURNEY_STOP.finditer(text)]
        for m in weights:
            before = bisect.bisect_left(stops, m.start()) - 1
            begin = stops[before] + 1 if before >= 0 else 0
            if text[begin : m.start()].strip():
                parts.append((begin, m.end(), text[begin : m.start()]))
    parts += [(m.start(), m.end(), m.group(1)) for m in _NOVELAI.finditer(text)]
    parts += [(m.start(), m.end(), m.group(1)) for m in _MIDJOURNEY_NO.finditer(text) if m.group(1).strip()]
    ands = list(_AND.finditer(text))
    for begin, end in zip([m.end() for m in ands], [m.start() for m in ands][1:] + [len(text)]):
        if (side := _SIDE_WEIGHT.fullmatch(text, begin, end)) is not None:
            parts.append((begin, end, side.group(1)))
    return tuple(parts)


# Midjourney's parameters ("--ar 16:9", "--v 6", "--stylize 250", "--tile"): settings, not what the image shows. Only a
# value holding a digit goes with its flag: "--ar naked" leaves "naked" to be judged.
_MIDJOURNEY_PARAMETER = re.compile(r"(?<!\S)--(?!no\b)[a-z]+(?:\s+(?!--)[^\s,]*\d[^\s,]*)?(?=\s|,|$)")


def asked_for(text: str) -> str:
    """``text`` without Midjourney's parameters: what its sentences, clauses and words are judged on ("--stylize 250"
    had been judged as "stylize", flagging 40 of 40 COCO captions it followed: a thirty-ninth hostile pass). What a
    prompt asks against ("(blurry:-1)", "--no text") is still judged: a generator that reads text as written (a plain
    diffusers pipeline) renders "a cat, (a naked woman:-1)" and "a cat --no x, a naked woman" as they read, and
    leaving those parts out had let both through; covering asked against is read by :func:`negated`."""
    return _MIDJOURNEY_PARAMETER.sub(" ", text) if "--" in text else text
