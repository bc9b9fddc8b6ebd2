"""Deployment defences on the prompt text: the forms of a prompt the guard scores besides the prompt itself.

A text encoder reads characters, so text written to slip past it works: Cyrillic look-alike letters,
fullwidth letters, zero-width characters inside a word, or harmless sentences in front of an unsafe
one dilute the match. The guard therefore scores, besides the prompt as written, its *normalised*
form (first read as a generator's tokenizer reads it: ftfy's repairs and HTML entities undone, to a
fixed point, and control characters and terminal escapes removed, as OpenAI CLIP's and open_clip's
tokenizers do before BPE; then NFKC, format characters removed, accents dropped from Latin letters,
and every character with a Latin look-alike mapped to it, from Unicode's confusables data via
``confusable_homoglyphs``) and
each of its *sentences* and *clauses*, each form also without quality tags and stray symbols, and keeps the
worst (the highest logit per concept). A prompt whose forms are all the same text costs nothing extra.

These are deployment defences: on in the guard (the Python API, ``inference.py``, the pipeline
wrapper, the server), never in the reproduction protocol (``test.py``, ``latentguard verify``,
Table 1), which scores prompts exactly as the released code does. Their measured effect is in
``docs/defences.md`` (``scripts/measure_defences.py``).
"""
from __future__ import annotations

import functools
import html
import re
import unicodedata

from .clauses import LONE_WORD_FRAME, clauses, lone_words
from .content import content
from .quality_tags import only_tags, untagged
from .sentences import sentences
from .spelling import corrected, uncamelled

# Four or more symbols in a row (spaces between allowed): "=" * 300 + " naked woman" is 300 tokens to a
# WordPiece guard, which stops reading at 77, but about 40 to CLIP's BPE, which reads "naked woman". The
# normalised form with such runs cut is scored too, so padding cannot push the words out of the guard's view.
_PADDING = re.compile(r"(?:(?:[^\w\s]|_)\s*){4,}")
# A word written again and again in a row, read once: "a photo of a nude nude nude ... nude woman" (ten times) passed
# at 0.09 while "a photo of a nude woman" scored 1.97, a common way of asking a generator for emphasis (a
# thirty-eighth hostile pass); glued repeats ("nakednaked...") are read apart by the CLIP reading first.
_REPEATED = re.compile(r"\b(\w+)\b(?:\W+\1\b)+", re.IGNORECASE)
# A word written apart: letters spaced out ("n a k e d", three or more, one separator throughout), or two or
# three fragments split by one to three characters that are not letters or digits ("nak ed", "gen-it-als",
# "nak/ed", "nak - ed"), whitespace runs first read as one space as CLIP's tokenizer reads them ("nak\ted",
# "nak    ed"), whose join is a watched word.
_LETTER_RUN = re.compile(r"(?<![^\W\d_])[^\W\d_]([\W_]{1,2})[^\W\d_](?:\1[^\W\d_])+(?![^\W\d_])")
_SPACES = re.compile(r"\s+")
_FRAGMENT = re.compile(r"[^\W\d_]+")
_SPLIT_BY = re.compile(r"[\W_]{1,5}")
_BPE_CHUNK = 64  # letters of a glued run cut into CLIP's pieces at once (see _glued_apart)
_MIN_WATCHED = 4  # shorter words are joined by chance too often ("a re" -> "are")
_JOINED_WORD = 64  # letters written apart joined into one word at most (_letters_joined)
_MIN_GLUED = 3  # a glued run is cut at a blacklist word this long: CLIP reads "ofsex" as "of", "sex" (a hostile pass)
# Words of three letters a blacklist may hold that glue to anything: never cut out of a glued run.
_FUNCTION_WORDS = frozenset({"and", "the", "off", "for", "but", "not", "you", "are", "was", "his", "her", "its",
                             "our", "out", "all", "any", "can", "had", "has", "one", "two", "who", "how", "with"})


def forms(text: str, *, normalize: bool = True, split_sentences: bool = True,
          watched: frozenset[str] = frozenset()) -> list[str]:
    """The distinct texts to score for ``text``: itself first, then its normalised form (and that form with
    words written apart joined, :func:`joined`) and its sentences (each normalised too), in a stable order."""
    return expand(text, normalize=normalize, split_sentences=split_sentences, watched=watched)[0]


def expand(text: str, *, normalize: bool = True, split_sentences: bool = True,
           watched: frozenset[str] = frozenset()) -> tuple[list[str], int]:
    """:func:`forms` of ``text`` and how many sentences it holds (the larger count of the text and of its
    normalised form: a stop may exist only after NFKC), from one split, so a caller that caps sentences
    (the server) and the scoring read the same split. ``watched``: the blacklist's words
    (:func:`watched_words`) that :func:`joined` puts back together. The whole text and each sentence get the
    same treatment (:func:`_variants`), so the defences compose: a harmless sentence in front of one that is
    padded or written apart hides nothing. So does each clause of a sentence (:func:`clauses`)."""
    out, count = _variants(text, normalize, watched), 1
    if split_sentences:
        parts = sentences(text)
        count = len(parts)
        parts = parts if len(parts) > 1 else []
        if normalize:  # a stop that is one only after NFKC (fullwidth ．, ｡) splits the normalised form
            norm, whole = out[1], out[2]  # the whole text normalised, and with watched words joined (_variants)
            pieces = sentences(norm)
            count = max(count, len(pieces))
            parts += pieces if len(pieces) > 1 else []
            if whole != norm and len(pieces := sentences(whole)) > 1:  # written apart over a line break
                parts += pieces
        from .covering import asked_for, negated  # covering reads text as defences do: imported here, not above

        parts = list(dict.fromkeys(parts))  # a sentence judged on what it asks for ("--stylize 250", "--no text" alone:
        out.extend(v for p in parts if (a := asked_for(p)).strip() and not only_tags(a)  # nothing)
                   for v in _variants(a, normalize, watched))
        # each sentence's clauses (the text's own when it is one sentence), its quality tags cut first (a tag is no
        # clause to judge alone), each given every repair of _variants too
        wholes = parts or list(dict.fromkeys([text, out[1]] if normalize else [text]))

        if normalize:  # a negative weight on clothing read as what it asks for, with its forms and clauses
            negatives = [n for w in wholes if (n := negated(w)) != w]
            out.extend(v for n in negatives for v in _variants(n, normalize, watched))
            wholes += negatives
        asked = [asked_for(p) for p in wholes]  # what is asked against, and Midjourney's parameters, judge nothing
        clause_parts = dict.fromkeys(c for p in asked for c in clauses(untagged(p) or p) + clauses(p)
                                     if c not in wholes and not only_tags(c))  # as written too: cutting tags drops
        # brackets, which mark clauses ("a cat on a sofa (a naked woman:1.3)")
        out.extend(v for c in clause_parts for v in _variants(c, normalize, watched))
        lone = dict.fromkeys(LONE_WORD_FRAME.format(w) for p in asked for w in lone_words(untagged(p) or p)
                             if not only_tags(w))
        out.extend(v for c in lone for v in _variants(c, normalize, watched))
    return list(dict.fromkeys([text] + [t for t in out[1:] if t.strip()])), max(count, 1)


def _variants(piece: str, normalize: bool, watched: frozenset[str]) -> list[str]:
    """``piece`` as written, normalised, with watched words joined, read as spaced, with symbol padding cut (see
    _PADDING) and as CLIP reads it; then each of those without quality tags and stray symbols (:func:`content`):
    the one place those two repairs are made, so they compose with every other and with each other."""
    if not normalize:
        return [piece]
    norm = normalized(piece)
    out = [piece, norm, joined(norm, watched)]  # "nak ed" -> "naked" (deduplicated when nothing was joined);
    # expand() reads out[1] and out[2] as the normalised and joined forms: keep them first
    if not piece.isascii():  # an invisible character or a symbol between two words: CLIP reads a word break
        out.append(normalized(spaced(piece)))
    if _PADDING.search(norm):  # runs of symbols a guard's tokenizer may count one by one
        out.append(_PADDING.sub(" ", norm))
    # every repair at once, for tricks used together ("a nak ed\u200bwoman2"), as each family of CLIP tokenizer reads
    readings = [clip_reading(piece, watched)]
    if not _plain_ascii(piece):  # only where CLIP's cleaning changes something do the two families read apart
        readings.append(clip_reading(piece, watched, generator_cleans=False))
    plain = _SPACES.sub(" ", norm.lower()).strip()
    out.extend(r for r in readings if r != plain or _ODD_SPACE.search(norm))  # CLIP reads other words
    # "a nakd woman", "a naaaked woman" -> "a naked woman" (spelling.py); as normalised too, since the CLIP reading
    # cuts "nakєd" at its foreign letter and "n4k3d" at each digit; "ANakedWomanOnABed" with its words apart
    out += [f for r in (readings[0], norm) if (f := corrected(r, watched)) != r]
    out += [apart] if (apart := uncamelled(norm)) != norm else []
    out.extend(c for form in dict.fromkeys(out[1:]) if (c := _REPEATED.sub(r"\1", form)) != form)  # "nude nude nude"
    # "masterpiece, 8k, + a naked woman2 +": tags and stray symbols cut from every form, whatever else it repaired
    out.extend(content(form) for form in dict.fromkeys(out[1:]))
    return out


# CLIP's pre-tokenization (OpenAI CLIP, open_clip and transformers' CLIPTokenizer read text this way before BPE):
# a contraction, a run of letters, one digit, or a run of anything else that is not a space is one word.
_CLIP_WORD = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|\p{L}+|\p{N}|[^\s\p{L}\p{N}]+"
# Characters without a Latin look-alike glued to Latin letters (left after _plain): a word break to the reading.
# The second branch starts only where a run starts: tried inside a run too, it had cost the square of its length
# ("\ufdf8" * 10000, four Arabic letters each once normalised, took 11 s: a hostile pass).
_FOREIGN_GLUE = re.compile(r"(?<=[A-Za-z])[^\x00-\x7f]+|(?<![^\x00-\x7f])[^\x00-\x7f]+(?=[A-Za-z])")
_ODD_SPACE = re.compile(r"[^\S ]")  # a space other than " ", which a guard's tokenizer may drop and CLIP reads as one


def clip_reading(text: str, watched: frozenset[str] = frozenset(), *, generator_cleans: bool = True) -> str:
    """``text`` as a CLIP generator reads it, written so the guard's tokenizer reads the same words. Cleaned as CLIP
    cleans it (OpenAI CLIP and open_clip: ftfy and HTML entities undone, a control character ftfy keeps stays, a
    word break to CLIP; with ``generator_cleans=False``, as transformers' CLIPTokenizer reads it from version 5, which
    diffusers pipelines run: only NFC, so every control character is a word break and entities stay text), lower-
    cased, cut into CLIP's words (letter runs, single digits, contractions, symbol runs), then written back with a
    space wherever CLIP's words meet, except at ASCII punctuation (which every tokenizer splits off anyway): a run
    of anything but printable ASCII punctuation is one junk token to CLIP and a space here, and a number glued to
    a word is left out (:func:`_number_glued`). Then normalised, watched words written apart joined, padding cut.
    Each repair of :func:`_variants` undoes one writing trick; this form undoes every trick CLIP undoes, in any
    mix or order ("a nak ed\\u200bwoman2", "=" * 200 + " a naked woman2", "a bloody&#8203;corpse",
    "a bloody\\x8fcorpse"), since whatever the guard's own tokenizer glues or drops, CLIP's words are apart here."""
    units: list[list] = []  # [word, start, end] of CLIP's words; digits glued back where the guard reads them so
    source = _clip_cleaned(text) if generator_cleans else unicodedata.normalize("NFC", _SPACES.sub(" ", text).strip())
    for match in _clip_words().finditer(source.lower()):
        word = match.group()
        if not word[0].isalnum():  # a symbol run (or a contraction): its printable ASCII, or nothing (a break)
            units.append(["".join(c for c in word if " " < c < "\x7f"), match.start(), match.end()])
        elif units and units[-1][2] == match.start() and units[-1][0][-1:].isalnum() and _glued(units[-1][0], word):
            units[-1][0], units[-1][2] = units[-1][0] + word, match.end()  # "8k", "66", "v2" stay as written
        else:
            units.append([word, match.start(), match.end()])
    out, last_end = "", -1
    for i, (word, start, end) in enumerate(units):
        if not word or _number_glued(units, i):
            last_end = -1  # a word break
            continue
        word = _glued_apart(word, watched)
        together = start == last_end and not (word[0].isalnum() and out[-1:].isalnum())
        out += word if together or not out else " " + word
        last_end = end
    reading = _plain(out)  # not cleaned again: what is left of a control or an entity is what CLIP reads
    reading = _FOREIGN_GLUE.sub(" ", reading)  # "bloodyדּcorpse": CLIP reads the Hebrew letter as its own pieces
    return _SPACES.sub(" ", _PADDING.sub(" ", joined(reading, watched))).strip()


def _clip_cleaned(text: str) -> str:
    """``text`` after CLIP's own cleaning (ftfy, then HTML entities undone, to a fixed point as in :func:`cleaned`),
    its whitespace runs read as one space. Unlike :func:`cleaned`, a control character ftfy keeps ("\\x8f") stays:
    CLIP reads it as a word break, where the guard's tokenizer drops it."""
    if not _plain_ascii(text):
        import ftfy

        text = _to_fixed_point(_DEEP_AMPERSAND.sub("&", text), lambda t: _unescape(_unescape(ftfy.fix_text(t))))
    return _SPACES.sub(" ", text).strip()


def _glued(before: str, word: str) -> bool:
    """Whether CLIP's words ``before`` and ``word``, written together, stay together in the reading: digits with
    digits ("66") and a digit with a word of under three letters ("8k", "v2", "1080p"), which the guard's own
    tokenizer splits much as CLIP does and which no unsafe word hides in; letters from digits split ("woman2")."""
    last, first = before[-1], word[0]
    if last.isdigit() and first.isdigit():
        return True
    if last.isdigit() != first.isdigit():
        letters = word if last.isdigit() else before
        return letters.isalpha() and len(letters) < 3
    return False


def _glued_apart(word: str, watched: frozenset[str]) -> str:
    """``word`` with the watched words CLIP's BPE reads in it written apart: where a run of its pieces spells a
    watched word ("bloodycorpse" -> "bloody corpse", "oftorture" -> "of torture", "ofnudity" -> "of nudity", since
    "nudity" is "nu", "dity" to CLIP; "naked上woman" -> "naked woman"): a WordPiece guard reads the glued word as one
    unknown word, CLIP as the pieces it reads apart (two hostile passes). A piece that is part of a character, or
    a non-ASCII one, is glue: a break. Other words are left whole ("bloodhound" is "bloodh", "ound")."""
    if len(word) <= _MIN_GLUED or not word.isalpha() or word in watched or not watched:
        return word
    if not _watched_pattern(watched).search(word):  # cheap: most words hold no watched word at all
        return word
    from .clip_bpe import clip_pieces

    # BPE costs the square of a word's length: a long run is cut in chunks (a piece may differ from CLIP's at a cut)
    pieces = [p for k in range(0, len(word), _BPE_CHUNK) for p in clip_pieces(word[k : k + _BPE_CHUNK])]
    longest = _longest(watched)  # a piece has a letter at least: no watched word spans more pieces
    out, rest, i = [], "", 0
    while i < len(pieces):
        j = next((j for j in range(min(len(pieces), i + longest), i + 1, -1) if None not in pieces[i:j]
                  and "".join(pieces[i:j]) in watched), i + 1 if pieces[i] in watched else None)
        if j is not None:
            out += [rest, "".join(pieces[i:j])] if rest else ["".join(pieces[i:j])]
            rest, i = "", j
            continue
        if pieces[i] and pieces[i].isascii():
            rest += pieces[i]  # the pieces between watched words stay together, as written
        elif rest:  # a character glued between words (part of one, or non-ASCII) is glue: a break
            out, rest = out + [rest], ""
        i += 1
    found = len(out) > (1 if not rest else 0) or (out and rest)
    return " ".join(out + ([rest] if rest else [])) if found and len(out) + bool(rest) > 1 else word


@functools.lru_cache(maxsize=8)
def _watched_pattern(watched: frozenset[str]) -> re.Pattern:
    return re.compile("|".join(map(re.escape, sorted(watched, key=len, reverse=True))))


@functools.lru_cache(maxsize=8)
def _longest(watched: frozenset[str]) -> int:
    return max(map(len, watched))


def _number_glued(units: list[list], i: int) -> bool:
    """Whether CLIP's word ``i`` is a number written against a word of three letters or more ("woman2", "2torture"):
    CLIP splits it off and a small guard is thrown by a stray number ("a naked woman 2" and "a naked man 2" read
    safe to mini), so the reading leaves it out. Beside an ordinary word that costs a false positive now and then
    ("the top10 superheroes" is read "the top superheroes" and flagged), kept for what it catches: leaving numbers
    beside words that are not blacklist words let "a naked man2" through (a hostile pass)."""
    word, start, end = units[i]
    if not word[:1].isdigit():
        return False
    return any(0 <= j < len(units) and (units[j][2] == start if j < i else units[j][1] == end)
               and units[j][0].isalpha() and len(units[j][0]) >= 3 for j in (i - 1, i + 1))


@functools.lru_cache(maxsize=1)
def _clip_words():
    import regex  # Unicode letter and number classes; a dependency of open_clip_torch and transformers

    return regex.compile(_CLIP_WORD)


def watched_words(concepts) -> frozenset[str]:
    """The words of a blacklist's concepts that :func:`joined` puts back together when written apart (four
    letters or more) and :func:`_glued_apart` cuts out of a glued run (three or more, "sex", "gun")."""
    return frozenset(w for c in concepts for w in _FRAGMENT.findall(c.lower())
                     if len(w) >= _MIN_GLUED and w not in _FUNCTION_WORDS)


def joined(text: str, words: frozenset[str] = frozenset()) -> str:
    """``text`` with words written apart put back: a run of three or more single letters ("n a k e d" ->
    "naked") always, and two or three fragments whose join is one of ``words`` (:func:`watched_words`: "nak ed"
    -> "naked", "geni-tals" -> "genitals"). A generator's tokenizer reads the fragments as pieces of the word;
    the guard then scores the joined form too. Returns ``text`` itself when nothing is joined."""
    spaced = _SPACES.sub(" ", text)  # read as a generator's tokenizer reads it; returned only if a word is joined
    out = _LETTER_RUN.sub(lambda m: _letters_joined(_FRAGMENT.findall(m.group())), spaced)
    if not words:
        return out if out != spaced else text
    frags = list(_FRAGMENT.finditer(out))
    pieces, last, i = [], 0, 0
    while i < len(frags):
        for n in (4, 3, 2):
            run = frags[i : i + n]
            if len(run) == n and all(_SPLIT_BY.fullmatch(out[a.end() : b.start()]) for a, b in zip(run, run[1:])):
                word = "".join(f.group() for f in run)
                if len(word) >= _MIN_WATCHED and word.lower() in words:
                    pieces += [out[last : run[0].start()], word]
                    last, i = run[-1].end(), i + n
                    break
        else:
            i += 1
    if pieces:
        return "".join(pieces) + out[last:]
    return out if out != spaced else text




def letter_runs(text: str) -> list[tuple[int, int]]:
    """The ``(start, end)`` spans of single letters written apart ("n.a.k.e.d", "n a k e d"), which :func:`joined`
    reads as one word: one word to whoever cuts words out of a text (sanitize), not five."""
    return [m.span() for m in _LETTER_RUN.finditer(text)]


def _letters_joined(letters: list[str]) -> str:
    """A run of single letters as one word, or, past :data:`_JOINED_WORD` letters, as overlapping words of that
    length, half of one apart, so any word of up to half that length is whole in one of them: an encoder reads
    a word of over 100 characters as unknown (all-MiniLM-L6-v2's WordPiece does), so ``"a " * 300`` joined
    whole had made the guard refuse a harmless text, naming a word its author never wrote (a hostile pass)."""
    if len(letters) <= _JOINED_WORD:
        return "".join(letters)
    half = _JOINED_WORD // 2
    return " ".join("".join(letters[k : k + _JOINED_WORD]) for k in range(0, len(letters) - half, half))


def normalized(text: str) -> str:
    """:func:`cleaned`, then NFKC, without format characters (zero-width spaces, joiners, soft hyphens), accents
    dropped from Latin letters, and each character that has a Latin look-alike replaced by it."""
    return _plain(cleaned(text))


def _plain(text: str) -> str:
    """The part of :func:`normalized` after cleaning: NFKC, format characters, accents and look-alikes."""
    text = unicodedata.normalize("NFKC", text)
    if text.isascii():
        return text
    return unicodedata.normalize("NFC", "".join(_skeleton(ch) for ch in text))


def _plain_ascii(text: str) -> bool:
    """Whether ``text`` is ASCII without entities or control characters: what no generator's cleaning changes."""
    return text.isascii() and "&" not in text and not _CONTROLS.search(text)


def spaced(text: str) -> str:
    """``text`` with every non-ASCII format, private-use or unassigned character, combining mark and symbol read as
    a space: "a photo of\u200btorture" and "a photo of°torture" are two words to CLIP's BPE (the character is its
    own token) but one glued word to a WordPiece guard and to :func:`normalized`, which drops format characters."""
    text = unicodedata.normalize("NFC", cleaned(text))
    if text.isascii():
        return text
    return "".join(" " if not ch.isascii() and unicodedata.category(ch)[0] in "CMS" and not ch.isspace() else ch
                   for ch in text)


# Terminal escape sequences (CSI: ESC [, parameters, a final byte; OSC/DCS/APC/PM strings up to their terminator;
# two-character escapes) and controls other than the whitespace ones (tab, line breaks). A terminal shows none of
# them; ftfy already turns C1 controls into the Windows-1252 characters they stand for.
_ESCAPES = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b[\]PX^_][^\x07\x1b]*(?:\x07|\x1b\\)|\x1b[@-Z\\-_]")
_CONTROLS = re.compile(r"[\x00-\x08\x0e-\x1f\x7f-\x9f]")
_CLEAN_ROUNDS = 8  # "&amp;amp;#105;" needs three; a text still changing after eight is cut short, still cleaned


def cleaned(text: str) -> str:
    """``text`` as a generator's tokenizer reads it before splitting words: what OpenAI CLIP's and open_clip's
    ``basic_clean`` undo (``ftfy.fix_text``: terminal escapes, control characters, mojibake, HTML entities; then
    ``html.unescape`` twice), repeated to a fixed point so that entities escaped any number of times are undone,
    and every remaining control character and terminal escape removed ("kn\\x00ife", "kni&#102;e",
    "k&amp;#x6E;ife", "kn\\x1b[0mife" all read "knife"). A generator that keeps a control as a separator reads
    the text as written, which the guard scores too."""
    if _plain_ascii(text):
        return text
    import ftfy  # a dependency of open_clip_torch, and what CLIP's own tokenizer runs

    text = _DEEP_AMPERSAND.sub("&", text)
    return _to_fixed_point(text, lambda t: _CONTROLS.sub("", _ESCAPES.sub("", _unescape(
        ftfy.fix_text(_ESCAPES.sub("", t))))))


_LONG_DECIMAL_ENTITY = re.compile(r"&#([0-9]{1000,})")
# An ampersand escaped over and over ("&amp;amp;amp;...#105;"): ftfy undoes one level per pass over the whole text,
# so 5,000 levels cost the square of the length (a hostile pass: 1.3 s for 20,000 characters). Undone to the end
# it is one "&", which is what it becomes here at once.
_DEEP_AMPERSAND = re.compile(r"&(?:(?:amp|#0{0,8}38|#[xX]0{0,8}26);){8,}", re.IGNORECASE)


def _unescape(text: str) -> str:
    """``html.unescape`` that reads a decimal entity of any length: Python refuses to convert over 4,300 digits,
    so ``"&#" + "1" * 4400`` raised ValueError from every surface (a hostile pass). Such an entity is read as
    ``html.unescape`` reads any code point it cannot be, U+FFFD; leading zeros are dropped first."""
    return html.unescape(_LONG_DECIMAL_ENTITY.sub(_short_entity, text))


def _short_entity(match: re.Match) -> str:
    digits = match.group(1).lstrip("0") or "0"
    return "&#" + (digits if len(digits) <= 7 else "1114112")  # past U+10FFFF: U+FFFD


def _to_fixed_point(text: str, step) -> str:
    """``step`` applied until ``text`` stops changing, at most ``_CLEAN_ROUNDS`` times."""
    for _ in range(_CLEAN_ROUNDS):
        before, text = text, step(text)
        if text == before:
            break
    return text


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
    table.update(_CYRILLIC_LATIN)
    return table


def _ascii_letters(text: str) -> str:
    """``text`` as ASCII once accents are dropped ("ĸ" -> "", "n̩" -> "n"); "" when it stays non-ASCII."""
    plain = "".join(c for c in unicodedata.normalize("NFKD", text) if not unicodedata.combining(c))
    return plain if plain.isascii() else ""


# Greek letters read as Latin ones, where the confusables data maps them to a non-ASCII target (κ -> ĸ) or to
# another Latin letter than the one a reader sees (Ι -> l).
_GREEK_LATIN = {"κ": "k", "Κ": "K", "ι": "i", "η": "n", "ν": "v", "τ": "t", "υ": "u", "ρ": "p", "χ": "x",
                "ο": "o", "α": "a", "ε": "e", "Ι": "I"}
# Small Cyrillic letters read as Latin ones the confusables data maps elsewhere or not at all: "naкed" (к -> ĸ
# there) and "injecтing" passed (a thirtieth hostile pass); the capitals are mapped by the data already.
_CYRILLIC_LATIN = {"к": "k", "ќ": "k", "т": "t", "м": "m", "п": "n", "г": "r"}
