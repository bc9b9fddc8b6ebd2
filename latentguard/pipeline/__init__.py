"""Latent Guard in front of a diffusers text-to-image pipeline: no unchecked text conditions an image
(:func:`guard_pipeline`; the contract, checked / reused / refused / out of reach: ``docs/pipeline.md``)."""
from __future__ import annotations

from .arguments import text_arguments
from .boundary import BoundaryBlocked
from .result import GuardedResult, PromptBlocked
from .wrapper import GuardedPipeline, encoder_from_pipeline, from_pipe, guard_pipeline

__all__ = ["BoundaryBlocked", "GuardedPipeline", "GuardedResult", "PromptBlocked", "encoder_from_pipeline",
           "from_pipe", "guard_pipeline", "text_arguments"]
