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

from ..errors import LatentGuardError

# The CLIP vocabulary: 256 byte symbols, their end-of-word forms, 48,894 merges and 2 specials.
NUM_MERGES = 49152 - 256 - 2
VOCAB_FILE = "bpe_simple_vocab_16e6.txt.gz"  # in the open_clip package
END_OF_WORD = "</w>"


@functools.lru_cache(maxsize=1)
def clip_merges() -> tuple[tuple[str, str], ...]:
    """CLIP's merges, in rank order (the first is applied first), from open_clip_torch's vocabulary file (found
    without importing open_clip, which imports torch: the defences read it on the first glued word)."""
    import importlib.util
    from pathlib import Path

    spec = importlib.util.find_spec("open_clip")
    if spec is None or not spec.submodule_search_locations:
        raise LatentGuardError("open_clip_torch is not installed: it ships CLIP's vocabulary (pip install "
                               "open_clip_torch)")
    path = Path(next(iter(spec.submodule_search_locations))) / VOCAB_FILE
    lines = gzip.open(path).read().decode("utf-8").split("\n")
    return tuple(tuple(line.split()) for line in lines[1 : NUM_MERGES + 1])


@functools.lru_cache(maxsize=1)
def byte_symbols() -> dict[int, str]:
    """CLIP's byte-level alphabet: each byte's symbol. Printable Latin-1 bytes stand for themselves (``!`` to
    ``~``, ``¡`` to ``¬``, ``®`` to ``ÿ``); the other 68 bytes, in order, for the characters from U+0100 on."""
    printable = [*range(0x21, 0x7F), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    others = [b for b in range(256) if b not in set(printable)]
    return {**{b: chr(b) for b in printable}, **{b: chr(0x100 + k) for k, b in enumerate(others)}}


@functools.lru_cache(maxsize=1)
def _ranks() -> dict[tuple[str, str], int]:
    return {pair: rank for rank, pair in enumerate(clip_merges())}


@functools.lru_cache(maxsize=4096)
def clip_pieces(word: str) -> tuple[str | None, ...]:
    """The pieces CLIP's BPE cuts ``word`` (one of its pre-tokenizer words, lower case) into, as text; ``None``
    for a piece that is part of a character (a multi-byte character cut apart: a junk token to a reader)."""
    forward = byte_symbols()
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
    backward = _symbol_bytes()
    return tuple(_as_text(s.removesuffix(END_OF_WORD), backward) for s in symbols)


@functools.lru_cache(maxsize=1)
def _symbol_bytes() -> dict[str, int]:
    return {symbol: byte for byte, symbol in byte_symbols().items()}


def _as_text(piece: str, backward: dict[str, int]) -> str | None:
    try:
        return bytes(backward[ch] for ch in piece).decode("utf-8")
    except UnicodeDecodeError:
        return None
