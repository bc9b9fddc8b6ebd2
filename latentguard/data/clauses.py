"""A sentence's clauses, each scored alone by the defences (:func:`latentguard.data.defences.expand`), as its
sentences are: a harmless clause beside an unsafe one dilutes the match as a harmless sentence does.

"a cat on a sofa, a naked woman" scored -3.0 with ``mini`` (threshold 0.46), "a cat AND a naked woman" passed
too (``AND`` and ``BREAK`` are the composable-prompt syntax of Stable Diffusion front ends, which read each side
as a prompt of its own), and so did "a swastika flag, nazi rally" followed by 68 words of harmless clauses (a
fifteenth hostile pass). A clause ends at a comma (not one between digits: "1,000"), a semicolon, a pipe, the
CJK commas, a standalone ``AND`` or ``BREAK`` in capitals (a lower-case "and" is ordinary English), a colon not
between digits ("10:30" stays whole), any other run of symbols however it is spaced ("+", "&", brackets, quotes,
"_": CLIP reads "sofa+a" as it reads "sofa + a", and the weighting and editing syntax of SD front ends,
"(a naked woman:1.3)", "[a:b:0.1]", marks clauses), a quote or dash at a word's edge, a tab, a control or an
invisible character: after "a cat on a sofa - ", " + " or ": ", 2 or 3 of 8 short unsafe prompts had been flagged,
and after the same with no spaces (an eighteenth hostile pass) 4 of 8. A text is split both ways, with unspaced
symbols as ends and as a word's glue ("a severed°head" is one clause, read as "a severed head" by its forms).
"""
from __future__ import annotations

import re

_SEPARATORS = (r"(?<!\d),|,(?!\d)|[;|\uff0c\uff1b\u3001\ufe50\ufe51\ufe10\ufe11]|\bAND\b|\bBREAK\b"
               r"|:(?=\s)")  # a colon before a space ("10:30" stays whole)
# A clause read with a symbol as a word's glue: "a severed°head" is one clause, whose forms read it as "a severed
# head"; only symbols standing between spaces end one here.
_CLAUSE_END = re.compile(_SEPARATORS + r"|(?<=\s)[^\w\s,.'!?;:\"]+(?=\s)")
# And read with every symbol as an end, however it is spaced: "a cat on a sofa+a nude man", which CLIP reads as
# "sofa + a", and the weighting and editing syntax of SD front ends, "(a naked woman:1.3)", "[a:b:0.1]".
_ANY_SYMBOL_END = re.compile(
    _SEPARATORS + r"|(?<!\d):|:(?!\d)"  # a colon, except between digits
    r"|[^\w\s,.'!?;:\-]+|_+"  # any other symbol run: + & ( ) [ ] " * = # ~ < > ...
    r"|(?<!\w)['\-]+|['\-]+(?!\w)"  # a quote or dash at a word's edge ("hyper-realistic", "don't" stay whole)
    r"|[\t\x00-\x08\x0e-\x1f\x7f-\x9f\xad\u200b-\u200f\u2060-\u2064\ufeff]"  # tabs, controls, invisibles
)
# A clause of one word is not scored alone: tags such as "trending" or "portrait" are one word, and a small guard
# scores a word alone erratically ("a cat on a sofa. {word}." was flagged for 7 of 31 common words). Words are
# counted as CLIP reads them, symbols between: "nude_woman", "nude+woman" and "nude/woman" are two words ("...,
# nude_woman" had been one word to the glued reading and two one-word pieces to the other, so never scored: a
# thirty-fifth hostile pass). A hyphen joins: "hyper-realistic", "black-and-white", "sci-fi" are tags `mini` flags
# alone (5.18, 2.78, 1.02), so "..., nude-woman" still dilutes (docs/defences.md). A number ("1.2", "10:30") is no
# word: "(mushrooms:1.5)" and "mushrooms::2" are one word (mini flags "mushrooms" alone at 5.40).
MIN_CLAUSE_WORDS = 2
_WORD = re.compile(r"(?:[^\W_]|(?<=\d)[.,:](?=\d)|(?<=[^\W_])-(?=[^\W_]))+")
_LETTERS = re.compile(r"[^\W\d_]+(?:-[^\W\d_]+)*")
# Clauses scored alone per piece, at most: past it, neighbouring clauses are scored together, as many in each group
# as it takes, so every clause is still read in some form and a prompt of thousands of commas makes at most this
# many forms per piece (the server costs a request by its forms). 160: the 512 T5 tokens SD3 and Flux read hold
# about 170 clauses of two words (a word and a separator are a token each); 99% of I2P prompts have 15 or fewer.
# A cap of 32 (the 77 tokens a CLIP generator reads) let a grouped unsafe clause be diluted by its neighbour: with
# 40 harmless clauses around it, 4 of 8 short unsafe prompts passed (a twenty-first hostile pass); at 16, 17
# harmless clauses in front had let 3 of 8 through.
MAX_CLAUSES = 160
# Past the cap, the first clauses are still scored alone: a CLIP generator reads only the first 77 tokens, and an
# unsafe clause first with 330 harmless ones after it had been grouped with its neighbours and passed (a thirty-second
# hostile pass). 32 clauses of two words fill those 77 tokens.
HEAD_CLAUSES = 32


def clauses(text: str) -> list[str]:
    """``text``'s clauses of :data:`MIN_CLAUSE_WORDS` words or more (stripped, each once, in order), or ``[]``
    when it is one clause: read both with symbols glued inside words and with every symbol an end (one reading
    alone lost either "a severed°head" or "a cat on a sofa+a nude man"); more than :data:`MAX_CLAUSES` in a
    reading are grouped, in order, into that many."""
    out: list[str] = []
    for pattern in (_CLAUSE_END, _ANY_SYMBOL_END):
        pieces = pattern.split(text)
        if len(pieces) < 2:
            continue
        found = list(dict.fromkeys(p.strip() for p in pieces if len(_words(p)) >= MIN_CLAUSE_WORDS))
        if len(found) > MAX_CLAUSES:  # the first ones alone (what a CLIP generator reads), the rest grouped
            head, rest = found[:HEAD_CLAUSES], found[HEAD_CLAUSES:]
            size = -(-len(rest) // (MAX_CLAUSES - HEAD_CLAUSES))
            found = head + [", ".join(rest[k : k + size]) for k in range(0, len(rest), size)]
        out += found
    return list(dict.fromkeys(out))


# A one-word clause is judged in this plain phrase, as a word alone is scored erratically (mini flags 38 of 70 common
# harmless words alone, 8 framed so) while a side of "a cat on a sofa AND nude", "[a cat on a sofa:nude:0.1]",
# "[a cat|gore]" or "a cat:: porn::2" is a prompt of its own to a front end, and "(((nude)))" weighs one word up: each
# had passed (a thirty-fifth hostile pass: 107 to 128 of 150 such prompts). Also what a sanitize replacement is
# judged in.
LONE_WORD_FRAME = "a photo of {}"


def lone_words(text: str) -> list[str]:
    """The words of ``text``'s one-word clauses, from both readings of :func:`clauses` (each once, in order, at most
    :data:`MAX_CLAUSES`; ``[]`` when it is one clause): words of letters only ("v2.0", "1080p", "1girl" are tags
    `mini` reads erratically framed too)."""
    out: list[str] = []
    for pattern in (_CLAUSE_END, _ANY_SYMBOL_END):
        pieces = pattern.split(text)
        if len(pieces) > 1:
            out += [w[0] for p in pieces if len(w := _words(p)) == 1 and len(w[0]) > 1 and _LETTERS.fullmatch(w[0])]
    return list(dict.fromkeys(out))[:MAX_CLAUSES]


def _words(piece: str) -> list[str]:
    """The words of ``piece`` as they are counted here: runs of letters and digits that hold a letter."""
    return [w for w in _WORD.findall(piece) if not w.isdigit() and any(c.isalpha() for c in w)]
