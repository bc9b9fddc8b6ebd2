"""Latent Guard in front of a diffusers text-to-image pipeline: no text reaches its text encoders
unchecked (:func:`guard_pipeline`; the contract, checked / reused / refused: ``docs/pipeline.md``)."""
from __future__ import annotations

from .arguments import text_arguments
from .wrapper import GuardedPipeline, GuardedResult, PromptBlocked, encoder_from_pipeline, guard_pipeline

__all__ = ["GuardedPipeline", "GuardedResult", "PromptBlocked", "encoder_from_pipeline", "guard_pipeline",
           "text_arguments"]
