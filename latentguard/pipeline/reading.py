"""What a row of token ids spells, read from the tokenizer's vocabulary alone.

A tokenizer's normalizer, pre-tokenizer and decoder are code a checkpoint ships (``tokenizer.json``) and a
caller can replace at any time: a normalizer that turns "a cat on a sofa" into the ids of "a naked woman",
with a decoder that turns them back, makes the text the guard checked and the ids the encoder reads
disagree while every tokenizer call looks consistent. The vocabulary (id -> token string) is the one part
the text encoder's embedding rows were trained against, and the guard compares it with the one it saw at
wrapping; so the boundary judges the text the ids spell there, decoded here by the token strings' own
conventions, never by the tokenizer's decoder.
"""
from __future__ import annotations

import functools
import re

from ..data.clip_bpe import byte_symbols
from ..errors import LatentGuardError

_END_OF_WORD = "</w>"  # CLIP's word-final mark
_PIECE_START = "\u2581"  # sentencepiece's word-initial mark (T5, Gemma, Llama)
_PUNCTUATION_SPACE = re.compile(r"\s*([^\w\s])\s*")


@functools.lru_cache(maxsize=1)
def _byte_of() -> dict[str, int]:
    return {symbol: byte for byte, symbol in byte_symbols().items()}


def spelled(tokenizer, ids) -> str:
    """The text the ids spell in ``tokenizer``'s vocabulary (special ids already left out by the caller).

    Byte-level BPE tokens (CLIP's, GPT-2's) are mapped back to their bytes, sentencepiece pieces have their
    word marks read as spaces, WordPiece continuations (``##``) are glued. Refuses (one line) an id the
    vocabulary has no token for."""
    tokens = tokenizer.convert_ids_to_tokens(list(ids))
    if any(not isinstance(t, str) for t in tokens):
        raise LatentGuardError("a text encoder received an id its tokenizer's vocabulary has no token for; "
                               "refusing the call")
    byte_of = _byte_of()
    words = "".join(t.replace(_END_OF_WORD, " ") for t in tokens)
    if all(ch in byte_of or ch == " " for ch in words):
        return " ".join(bytes(byte_of[ch] for ch in word).decode("utf-8", errors="replace")
                        for word in words.split(" ")).strip()
    if any(t.startswith("##") for t in tokens):
        return " ".join(tokens).replace(" ##", "").strip()
    return "".join(tokens).replace(_PIECE_START, " ").strip()


def reading_key(text: str) -> str:
    """The same key for texts that differ at most in case and in spaces around punctuation (how tokenizers'
    decoding differs from what was typed): a text whose key was judged needs no second judgment."""
    return _PUNCTUATION_SPACE.sub(r"\1", " ".join(text.lower().split()))
