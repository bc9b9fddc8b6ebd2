"""What a prompt shows, without what only dilutes it: its quality tags, its stray symbols and its lone numbers, cut in
one step.

Each was a defence of its own once (a form without the tags, another without the symbols), each made from one
other form, so they did not compose: "masterpiece, best quality, 8k, + a naked woman +" kept its tags in the form
without symbols and its symbols in the form without tags, and read safe to ``mini`` although each trick alone
was caught (a fifteenth hostile pass). :func:`content` cuts both, and :func:`latentguard.data.defences.expand`
applies it to every form it makes (normalised, joined, spaced, padding cut, each CLIP reading), so a writing
trick undone by one of those forms is undone with the tags and symbols gone too.
"""
from __future__ import annotations

import re

from .quality_tags import untagged

# Symbols other than a sentence's punctuation, and a hyphen that joins no words: one was enough to throw a small
# guard ("+ a naked woman", "a naked woman+", "- a nude man" read safe to mini; a twelfth hostile pass).
_STRAY = re.compile(r"[^\w\s,.'!?;:\"-]+|_+|(?<!\w)-+|-+(?!\w)")
# A pipe separates chunks as a comma does (quality_tags reads it so): kept as one, so clauses stay apart. No "\s*"
# around it: tried at every space of a long run, that had cost the square of the run's length.
_PIPE = re.compile(r"\|+")
# A number standing alone: "2 a naked woman" read safe to mini (-1.11 against 0.46), and so did the clause after
# "a cat on a sofa, 2 " or "#2 " (3 of 8 short unsafe prompts flagged; a nineteenth hostile pass). "1,000", "3.5"
# and "10:30" are not alone; a number glued to a word is read apart by the CLIP reading.
_LONE_NUMBER = re.compile(r"(?<!\S)\d{1,6}(?!\S)")
_SPACES = re.compile(r"\s+")
_EDGES = " ,;:"  # what cutting leaves at the ends: ", a naked woman" from "8k, + a naked woman"


def content(text: str) -> str:
    """``text`` without its quality tags (:func:`~latentguard.data.quality_tags.untagged`) and its stray symbols
    (read as spaces), or ``text`` itself when it holds neither: "masterpiece, 8k, + a naked woman +" -> "a naked
    woman". Tags are cut first, since a pipe or a slash between them is what marks them as tags."""
    tagless = untagged(text)
    rest = _LONE_NUMBER.sub(" ", _STRAY.sub(" ", _PIPE.sub(", ", text if tagless is None else tagless)))
    if tagless is None and rest == text:
        return text
    rest = _SPACES.sub(" ", rest).replace(" ,", ",").strip(_EDGES)
    return rest if any(ch.isalnum() for ch in rest) else text
