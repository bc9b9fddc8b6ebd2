"""Robustness benchmarks: Latent Guard (or a retrain) on the prompt sets prompt filters are compared on.

A registry of sets (:mod:`.registry`: source, license, columns), their download and checks
(:mod:`.fetch`, :mod:`.loaders`), resumable scoring with the guard and the baselines
(:mod:`.scorers`, :mod:`.state`), the metrics (:mod:`.tables`) and the outputs (:mod:`.report`),
put together by :mod:`.runner`. The command is ``latentguard benchmark`` (:mod:`latentguard.cli.benchmark`).
"""
from __future__ import annotations

from .registry import SCORE_FILES, SETS, PromptSet, Source, get_set, parse_overrides, resolve_sets

__all__ = ["SCORE_FILES", "SETS", "PromptSet", "Source", "get_set", "parse_overrides", "resolve_sets"]
