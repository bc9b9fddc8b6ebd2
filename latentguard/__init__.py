"""Latent Guard: block unsafe text-to-image prompts in a latent space learned over the text encoder.

The data flow, one subpackage per stage: text (``data``) -> ``encoders`` -> ``store`` -> mapping
layer (``model``) -> ``scoring`` -> ``decision`` (the threshold rule and metrics), with the
applications on top: ``train``, ``eval``, ``guard``, ``pipeline`` and the ``cli``.

Importing the package is cheap: torch, transformers and the models load only when a name below is
first used.
"""
from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "LatentGuard": "latentguard.guard",
    "Verdict": "latentguard.guard",
    "EmbeddingMappingLayer": "latentguard.model",
    "load_mapping_layer": "latentguard.model",
    "load_encoder": "latentguard.encoders",
    "CLIPTextEncoder": "latentguard.encoders",
    "OpenCLIPTextEncoder": "latentguard.encoders",
    "HFTextEncoder": "latentguard.encoders",
    "load_copro": "latentguard.data",
    "EmbeddingStore": "latentguard.store",
    "LatentGuardError": "latentguard.errors",
    "load_config": "latentguard.config",
    "guard_pipeline": "latentguard.pipeline",
    "GuardedPipeline": "latentguard.pipeline",
    "PromptBlocked": "latentguard.pipeline",
    "encoder_from_pipeline": "latentguard.pipeline",
    "calibrate": "latentguard.decision",
    "resolve_threshold": "latentguard.decision",
}

__all__ = sorted(_EXPORTS) + ["__version__"]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'latentguard' has no attribute {name!r}")
