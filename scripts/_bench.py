"""Helpers shared by the benchmark scripts (imported as ``_bench``: run the scripts as ``python scripts/NAME.py``)."""
from __future__ import annotations

from pathlib import Path


def peak_rss_mb() -> float:
    """This process's RSS high-water mark. VmHWM, not ru_maxrss: Linux carries ru_maxrss across
    fork+exec, so a child would report its parent's peak."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # not Linux: KiB (macOS: bytes)


def vit_l14_text_encoder(device: str, dtype: str, tokenizer_dir: Path):
    """A randomly initialised CLIP ViT-L/14 text tower (the real shape and cost, no download)."""
    import torch
    from transformers import CLIPTextConfig, CLIPTextModel

    from latentguard.constants import CONTEXT_LENGTH
    from latentguard.encoders import CLIPTextEncoder
    from latentguard.encoders.tokenizer import build_clip_tokenizer

    config = CLIPTextConfig(vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                            num_attention_heads=12, max_position_embeddings=CONTEXT_LENGTH, hidden_act="quick_gelu",
                            projection_dim=768, bos_token_id=49406, eos_token_id=49407, pad_token_id=1)
    torch.manual_seed(0)
    model = CLIPTextModel(config).eval()
    return CLIPTextEncoder(model, device=device, dtype=dtype, tokenizer=build_clip_tokenizer(tokenizer_dir),
                           name="vit-l14-text-random")


def write_figures(path: str | Path, figures: dict, indent: int = 2) -> None:
    """Write a benchmark's figures as JSON, atomically (a killed run never leaves half a file), and say where."""
    import json

    from latentguard.io import atomic_write_text

    atomic_write_text(path, json.dumps(figures, indent=indent) + "\n")
    print(f"\nwrote {path}")
