"""Rebuild the real CLIP BPE tokenizer offline from the vocabulary file that open_clip_torch ships.

The Hugging Face hub is not always reachable (CI, air-gapped servers), but the CLIP vocabulary is
inside the ``open_clip_torch`` wheel. This turns it into the ``vocab.json``/``merges.txt`` pair a
Hugging Face ``CLIPTokenizer`` reads, giving the same token ids as ``openai/clip-vit-large-patch14``.
"""
from __future__ import annotations

import json
from pathlib import Path

from ..constants import CONTEXT_LENGTH
from ..data.clip_bpe import byte_symbols, clip_merges


def write_clip_vocab(directory: str | Path) -> Path:
    """Write ``vocab.json``, ``merges.txt`` and a tokenizer config for CLIP into ``directory``."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    merges = clip_merges()
    symbols = list(byte_symbols().values())
    tokens = symbols + [s + "</w>" for s in symbols] + ["".join(m) for m in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    (directory / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(tokens)}), encoding="utf-8")
    (directory / "merges.txt").write_text(
        "#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n", encoding="utf-8"
    )
    config = {
        "tokenizer_class": "CLIPTokenizer",
        "model_max_length": CONTEXT_LENGTH,
        "bos_token": "<|startoftext|>",
        "eos_token": "<|endoftext|>",
        "unk_token": "<|endoftext|>",
        "pad_token": "<|endoftext|>",
        "do_lower_case": True,
    }
    (directory / "tokenizer_config.json").write_text(json.dumps(config), encoding="utf-8")
    return directory


def build_clip_tokenizer(directory: str | Path):
    """Return a Hugging Face ``CLIPTokenizer`` rebuilt offline (files are written to ``directory``)."""
    from transformers import CLIPTokenizer

    return CLIPTokenizer.from_pretrained(str(write_clip_vocab(directory)))
