"""Offline fixtures: a tiny random CLIP text model with the real CLIP tokenizer, and CoPro-format data.

Nothing here touches the network or files outside the repository: the tokenizer is rebuilt from the
BPE file inside open_clip_torch and the model is randomly initialised from a config.
"""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from synthetic import make_synthetic_copro  # noqa: E402


@pytest.fixture(autouse=True)
def _isolated_cache_home(tmp_path_factory, monkeypatch):
    """Downloads and concept caches go to a per-session temp dir, never to ~/.cache."""
    monkeypatch.setenv("LATENTGUARD_HOME", str(tmp_path_factory.getbasetemp() / "lg_home"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def tiny_clip_text_model(hidden_size: int = 768, seed: int = 0):
    """A 1-layer random ``CLIPTextModel`` with CLIP's real vocabulary size and context length."""
    from transformers import CLIPTextConfig, CLIPTextModel

    config = CLIPTextConfig(vocab_size=49408, hidden_size=hidden_size, intermediate_size=256,
                            num_hidden_layers=1, num_attention_heads=4, max_position_embeddings=77,
                            bos_token_id=49406, eos_token_id=49407, pad_token_id=49407)
    torch.manual_seed(seed)
    return CLIPTextModel(config).eval()


@pytest.fixture(scope="session")
def clip_tokenizer(tmp_path_factory):
    from latentguard.encoders.tokenizer import build_clip_tokenizer

    return build_clip_tokenizer(tmp_path_factory.mktemp("clip_tokenizer"))


@pytest.fixture(scope="session")
def tiny_encoder_dir(tmp_path_factory, clip_tokenizer) -> Path:
    """A saved tiny CLIP text model + tokenizer: pass it as ``--encoder`` to any entry point."""
    directory = tmp_path_factory.mktemp("tiny_clip")
    tiny_clip_text_model(seed=0).save_pretrained(directory)
    clip_tokenizer.save_pretrained(directory)
    return directory


@pytest.fixture(scope="session")
def tiny_encoder(tiny_encoder_dir):
    from latentguard.encoders import load_encoder

    return load_encoder(str(tiny_encoder_dir), device="cpu")


@pytest.fixture(scope="session")
def tiny_encoder_other(clip_tokenizer):
    """Same architecture and name, different weights: must never share a store with ``tiny_encoder``."""
    from latentguard.encoders import CLIPTextEncoder

    return CLIPTextEncoder(tiny_clip_text_model(seed=1), device="cpu", tokenizer=clip_tokenizer, name="tiny-other")


@pytest.fixture
def synthetic_copro(tmp_path) -> Path:
    return make_synthetic_copro(tmp_path / "dataset" / "CoPro_synthetic.json")


@pytest.fixture(scope="session")
def bag_of_tokens_encoder(clip_tokenizer):
    """A CLIP text encoder with no transformer layers: each token state is LN(token + position).

    A word's own direction then survives in its state whatever the context, which lets the test
    build an exact detector for it (random 1-layer models mix tokens too much for that).
    """
    from transformers import CLIPTextConfig, CLIPTextModel

    from latentguard.encoders import CLIPTextEncoder

    config = CLIPTextConfig(vocab_size=49408, hidden_size=768, intermediate_size=64, num_hidden_layers=0,
                            num_attention_heads=4, max_position_embeddings=77, bos_token_id=49406,
                            eos_token_id=49407, pad_token_id=49407)
    torch.manual_seed(0)
    return CLIPTextEncoder(CLIPTextModel(config), device="cpu", tokenizer=clip_tokenizer, name="bag-of-tokens")
