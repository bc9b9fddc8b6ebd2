"""Deployment defences on the prompt text: the forms of a prompt the guard scores besides the prompt itself.

A text encoder reads characters, so text written to slip past it works: Cyrillic look-alike letters,
fullwidth letters, zero-width characters inside a word, or harmless sentences in front of an unsafe
one dilute the match. The guard therefore scores, besides the prompt as written, its *normalised*
form (NFKC, format characters removed, accents dropped from Latin letters, and every character with
a Latin look-alike mapped to it, from Unicode's confusables data via ``confusable_homoglyphs``) and
each of its *sentences*, and keeps the worst (the highest logit per concept). A prompt whose forms
are all the same text costs nothing extra.

These are deployment defences: on in the guard (the Python API, ``inference.py``, the pipeline
wrapper, the server), never in the reproduction protocol (``test.py``, ``latentguard verify``,
Table 1), which scores prompts exactly as the released code does. Their measured effect is in
``docs/defences.md`` (``scripts/measure_defences.py``).
"""
from __future__ import annotations

import functools
import re
import unicodedata

# A sentence ends at . ! ? ; … (and their fullwidth forms), perhaps closed by quotes or brackets, followed by
# space; at a CJK full stop with or without space; before a capital right after a lower-case letter's stop
# ("sofa.A knife"); or at any line or paragraph break (\n \r \v \f NEL U+2028 U+2029). "3.5" and "a.m." stay whole.
_SENTENCE_END = re.compile(
    r"(?<=[.!?;…．！？；｡])[\"'”’»)\]]*\s+"
    r"|(?<=[。！？；])\s*"
    r"|(?<=[a-z][.!?;])(?=[A-Z])"
    r"|[\n\r\v\f\x85\u2028\u2029]+")
_MIN_SENTENCE_CHARS = 3  # "ok." or a stray "." are not worth an encoder pass


def forms(text: str, *, normalize: bool = True, split_sentences: bool = True) -> list[str]:
    """The distinct texts to score for ``text``: itself first, then its normalised form and its sentences
    (each normalised too), in a stable order."""
    return expand(text, normalize=normalize, split_sentences=split_sentences)[0]


def expand(text: str, *, normalize: bool = True, split_sentences: bool = True) -> tuple[list[str], int]:
    """:func:`forms` of ``text`` and how many sentences it holds (the larger count of the text and of its
    normalised form: a stop may exist only after NFKC), from one split, so a caller that caps sentences
    (the server) and the scoring read the same split."""
    out, count = [text], 1
    norm = normalized(text) if normalize else text
    if normalize:
        out.append(norm)
    if split_sentences:
        pieces = sentences(text)
        count = len(pieces)
        if len(pieces) > 1:
            out.extend(pieces)
            if normalize:
                out.extend(normalized(p) for p in pieces)
        if normalize:  # a stop that is one only after NFKC (fullwidth ．, ｡) splits the normalised form
            pieces = sentences(norm)
            count = max(count, len(pieces))
            if len(pieces) > 1:
                out.extend(pieces)
    return list(dict.fromkeys([text] + [t for t in out[1:] if t.strip()])), max(count, 1)


def sentences(text: str) -> list[str]:
    """``text`` split into sentences (stripped, empty and one- or two-character pieces dropped)."""
    return [p.strip() for p in _SENTENCE_END.split(text) if len(p.strip()) >= _MIN_SENTENCE_CHARS]


def normalized(text: str) -> str:
    """NFKC, without format characters (zero-width spaces, joiners, soft hyphens), accents dropped from
    Latin letters, and each character that has a Latin look-alike replaced by it."""
    text = unicodedata.normalize("NFKC", text)
    if text.isascii():
        return text
    return unicodedata.normalize("NFC", "".join(_skeleton(ch) for ch in text))


@functools.lru_cache(maxsize=8192)
def _skeleton(ch: str) -> str:
    """One character's replacement: '' for a format character, its Latin look-alike, or itself."""
    if ch.isascii():
        return ch
    if unicodedata.category(ch) == "Cf":
        return ""
    base = unicodedata.normalize("NFKD", ch)
    stripped = "".join(c for c in base if not unicodedata.combining(c))
    if stripped and stripped != base:  # accented: an accented Latin letter, or an accented look-alike (ї, ё, ӧ)
        return "".join(_skeleton(c) for c in stripped)
    if unicodedata.combining(ch):  # a stray combining mark on a look-alike carries no letter
        return ""
    return _latin_lookalikes().get(ch, ch)


@functools.lru_cache(maxsize=1)
def _latin_lookalikes() -> dict[str, str]:
    """Character -> the ASCII text Unicode's confusables data says it can be mistaken for."""
    from confusable_homoglyphs import confusables

    table = {}
    for ch, homoglyphs in confusables.confusables_data.items():
        for glyph in homoglyphs:
            candidate = _ascii_letters(glyph.get("c", ""))
            if candidate and candidate.isprintable() and not candidate.isspace():
                table[ch] = candidate
                break
    table.update(_GREEK_LATIN)
    return table


def _ascii_letters(text: str) -> str:
    """``text`` as ASCII once accents are dropped ("ĸ" -> "", "n̩" -> "n"); "" when it stays non-ASCII."""
    plain = "".join(c for c in unicodedata.normalize("NFKD", text) if not unicodedata.combining(c))
    return plain if plain.isascii() else ""


# Greek letters read as Latin ones, where the confusables data maps them to a non-ASCII target (κ -> ĸ) or to
# another Latin letter than the one a reader sees (Ι -> l).
_GREEK_LATIN = {"κ": "k", "Κ": "K", "ι": "i", "η": "n", "ν": "v", "τ": "t", "υ": "u", "ρ": "p", "χ": "x",
                "ο": "o", "α": "a", "ε": "e", "Ι": "I"}
