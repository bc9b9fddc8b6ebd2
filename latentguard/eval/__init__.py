"""Evaluation: the Table 1 settings, the scoring run with one calibrated threshold, the baselines,
report writers and external (Table 2) prompt sets. The ``test.py`` CLI is :mod:`latentguard.cli.evaluate`."""
from __future__ import annotations

from .external import StoreFirstSource, external_markdown, read_external, read_labelled_prompts
from .methods import BASELINES, Baseline, make_baselines
from .report import console_tables, results_markdown, table1_markdown, write_outputs, write_scores_csv
from .run import (LATENT_GUARD, METHOD_ORDER, Evaluation, MethodScores, TextScores, calibrate_threshold,
                  evaluate_copro, method_results, pooled_scores, score_prompts, setting_metrics)
from .settings import DOMAINS, KINDS, SPLITS, Setting, Settings, build_settings

__all__ = ["BASELINES", "DOMAINS", "KINDS", "LATENT_GUARD", "METHOD_ORDER", "SPLITS", "Baseline", "Evaluation",
           "MethodScores", "Setting", "Settings", "StoreFirstSource", "TextScores", "build_settings",
           "calibrate_threshold", "console_tables", "evaluate_copro", "external_markdown", "make_baselines",
           "method_results", "pooled_scores", "read_external", "read_labelled_prompts", "results_markdown",
           "score_prompts", "setting_metrics", "table1_markdown", "write_outputs", "write_scores_csv"]
