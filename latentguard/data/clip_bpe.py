"""CLIP's byte-pair encoding of one word, read from the vocabulary file open_clip_torch ships.

The text defences need it for one thing: a word glued to another ("bloodycorpse", "oftorture",
"naked上woman") is one unknown word to a WordPiece guard, while CLIP's BPE cuts it into the very
pieces it reads in "bloody corpse". :func:`clip_pieces` gives those pieces, so the defences can write
them apart. The tokenizer rebuilt for tests and pipelines (``encoders/tokenizer.py``) reads the same
merges from :func:`clip_merges`.
"""
from __future__ import annotations

import functools
import gzip

# The CLIP vocabulary: 256 byte symbols, their end-of-word forms, 48,894 merges and 2 specials.
NUM_MERGES = 49152 - 256 - 2
END_OF_WORD = "</w>"


@functools.lru_cache(maxsize=1)
def clip_merges() -> tuple[tuple[str, str], ...]:
    """CLIP's merges, in rank order (the first is applied first), from open_clip_torch's vocabulary file."""
    from open_clip.tokenizer import default_bpe

    lines = gzip.open(default_bpe()).read().decode("utf-8").split("\n")
    return tuple(tuple(line.split()) for line in lines[1 : NUM_MERGES + 1])


@functools.lru_cache(maxsize=1)
def _ranks() -> dict[tuple[str, str], int]:
    return {pair: rank for rank, pair in enumerate(clip_merges())}


@functools.lru_cache(maxsize=1)
def _byte_symbols() -> tuple[dict[int, str], dict[str, int]]:
    from open_clip.tokenizer import bytes_to_unicode

    forward = bytes_to_unicode()
    return forward, {symbol: byte for byte, symbol in forward.items()}


@functools.lru_cache(maxsize=4096)
def clip_pieces(word: str) -> tuple[str | None, ...]:
    """The pieces CLIP's BPE cuts ``word`` (one of its pre-tokenizer words, lower case) into, as text; ``None``
    for a piece that is part of a character (a multi-byte character cut apart: a junk token to a reader)."""
    forward, backward = _byte_symbols()
    symbols = [forward[b] for b in word.encode("utf-8")]
    if not symbols:
        return ()
    symbols[-1] += END_OF_WORD
    ranks = _ranks()
    while len(symbols) > 1:
        best = min(zip(symbols, symbols[1:]), key=lambda pair: ranks.get(pair, NUM_MERGES))
        if best not in ranks:
            break
        merged, i = [], 0
        while i < len(symbols):  # every occurrence of the best pair, left to right
            if i + 1 < len(symbols) and (symbols[i], symbols[i + 1]) == best:
                merged.append(symbols[i] + symbols[i + 1])
                i += 2
            else:
                merged.append(symbols[i])
                i += 1
        symbols = merged
    return tuple(_as_text(s.removesuffix(END_OF_WORD), backward) for s in symbols)


def _as_text(piece: str, backward: dict[str, int]) -> str | None:
    try:
        return bytes(backward[ch] for ch in piece).decode("utf-8")
    except UnicodeDecodeError:
        return None
