"""A prompt's sentences, each scored alone by the defences (:func:`latentguard.data.defences.expand`): a harmless
sentence in front of an unsafe one dilutes the match, so each is judged on its own too, as a generator reads them
all. Stops inside addresses, file names, abbreviations and entities end no sentence, except where a hostile pass
used them to hide one (see :func:`sentences`)."""
from __future__ import annotations

import bisect
import re

# A sentence ends at . ! ? ; … (and their fullwidth forms), perhaps closed by quotes or brackets, followed by
# space; at a CJK full stop with or without space; before a capital right after a lower-case letter's stop
# ("sofa.A knife"); or at any line or paragraph break (\n \r \v \f NEL U+2028 U+2029). "3.5" and "a.m." stay whole.
_SENTENCE_END = re.compile(
    r"(?<=[.!?;…．！？；｡।॥])[\"'”’»)\]]*\s+"
    r"|(?<=[。！？；])\s*"
    r"|(?<=\D[.!?;…।॥])(?=\S)"
    r"|(?<=\d[.!?;…।॥])(?=[^\s\d])"
    r"|[\n\r\v\f\x85\u2028\u2029]+")
_MIN_SENTENCE_CHARS = 3  # "ok." or a stray "." are not worth an encoder pass
_MIN_SENTENCE_LETTERS = 3  # an ASCII sentence needs three letters to be scored on its own ("Sex." is, "Dr." not)


# An address or a file name, whose stops do not end sentences ("www.example.com", "photo.jpg"): a stop right
# before a letter does, since a generator's tokenizer reads "sofa.a naked woman" as "sofa. a naked woman".
_ADDRESS = re.compile(r"\b(?:[Hh][Tt][Tt][Pp][Ss]?://|[Ww][Ww][Ww]\.)\S+"
                      r"|(?<![\w-])[\w-]+\.(?:html?|php|jpe?g|png|gif|webp|pdf|txt)\b")
# Abbreviations whose stop ends no sentence ("a St. Bernard dog" is one), and an HTML entity's ";" ("AT&amp;T").
_ABBREVIATION = re.compile(r"\b(?:Dr|Mr|Mrs|Ms|St|Jr|Sr|Mt|Prof|Capt|Gen|Col|Lt|Sgt|vs|etc|No|Fig|approx)\."
                           r"|\b[eE]\.g\.|\b[iI]\.e\.")
_ENTITY = re.compile(r"&#?\w+;")
_HELD_STOP, _HELD_SEMICOLON = "\ue000", "\ue001"  # private-use characters standing for held stops while splitting
_HELD_ABBREVIATION = "\ue002"
_HELD = re.compile(f"[{_HELD_STOP}{_HELD_SEMICOLON}{_HELD_ABBREVIATION}]")
# Where a held stop may end a sentence: after an abbreviation, always ("etc.A"); after an entity or an address, before
# a space, or an address's stop before words ("www.example.com.A naked woman")
_TAIL = re.compile(f"{_HELD_ABBREVIATION}|[{_HELD_STOP}{_HELD_SEMICOLON}](?=\\s)"
                   f"|{_HELD_STOP}(?=[^\\s{_HELD_STOP}]*\\s\\S)")


def _unheld(piece: str) -> str:
    return piece.strip().replace(_HELD_STOP, ".").replace(_HELD_ABBREVIATION, ".").replace(_HELD_SEMICOLON, ";")


def sentences(text: str) -> list[str]:
    """``text`` split into sentences (stripped, empty and one- or two-character pieces dropped)."""
    held = text
    if not _HELD.search(text):  # a text that holds the marks is split as written
        for pattern, mark, held_mark in ((_ADDRESS, ".", _HELD_STOP), (_ABBREVIATION, ".", _HELD_ABBREVIATION),
                                         (_ENTITY, ";", _HELD_SEMICOLON)):
            held = pattern.sub(lambda m: m.group().replace(mark, held_mark), held)
    pieces = [_unheld(p) for p in _SENTENCE_END.split(held)]
    if held != text:  # a held stop may end a sentence all the same: "a cat on a sofa etc. A bloody corpse" and
        # "... etc.A bloody corpse" had passed (two hostile passes): what follows it is a sentence too, the piece it
        # ends is not ("a St. Bernard dog" also gives "Bernard dog"); an address's inner stops make no scraps
        # ("www.example.com" gives no "example" or "com" alone, which mini flags), its last one may
        marks = list(_TAIL.finditer(held))
        for k, mark in enumerate(marks):
            nxt = marks[k + 1] if k + 1 < len(marks) else None
            parts = _SENTENCE_END.split(held[mark.end() : nxt.start() if nxt else len(held)])
            if nxt is not None and nxt.group() == _HELD_ABBREVIATION:
                parts = parts[:-1]  # ends at an abbreviation, not a sentence ("e.g. a St. Bernard" made "a St"):
                # _heads reads that piece, from its start, when it has two words
            pieces += [_unheld(p) for p in parts]
        pieces += _heads(text, held)
    return list(dict.fromkeys(p for p in pieces if len(p) >= _MIN_SENTENCE_CHARS
                              and not (p.isascii() and _few_letters(p))))


def _heads(text: str, held: str) -> list[str]:
    """What an abbreviation, or an address before a space, ends, without it: "a naked woman etc. A cat on a
    sofa" gives "a naked woman", "a naked woman www.x.com. A cat" too (a fourteenth hostile pass: the held stop
    had hidden the sentence before it). Two words at least, so "the Dr. Who" or "Visit www.x.com" make no scrap.
    From the last sentence end or held match before, so the cost stays in proportion to the text."""
    ends = [m.end() for m in _SENTENCE_END.finditer(held)]
    marks = sorted([*((m.start(), m.end()) for m in _ABBREVIATION.finditer(text)),
                    *((m.start(), m.end()) for m in _ADDRESS.finditer(text) if held[m.end():m.end() + 1].isspace())])
    out, last = [], 0
    for start, end in marks:
        k = bisect.bisect_right(ends, start)
        head = _unheld(held[max(last, ends[k - 1] if k else 0) : start])
        if len(head.split()) >= 2:
            out.append(head)
        last = end
    return out


def _few_letters(piece: str) -> bool:
    """An abbreviation or a scrap ("Mr.", "Dr.", "e.", "ok."): a small guard scores such scraps erratically (mini
    gave "Dr." 3.7 against a threshold of 0.46); three letters can be unsafe alone ("Sex.", "Gun.")."""
    return sum(ch.isalpha() for ch in piece) < _MIN_SENTENCE_LETTERS
