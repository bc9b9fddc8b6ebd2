"""Evaluation: Table 1's six conditions, the scoring run with one calibrated threshold, the baselines
(Text Blacklist, CLIPScore, BERTScore), report writers and plots, external (Table 2) prompt sets, and
release parity. The ``test.py`` and ``verify`` commands are :mod:`latentguard.cli`."""
from __future__ import annotations

from .external import evaluate_external, external_markdown, external_threshold, read_external, read_labelled_prompts
from .methods import BASELINES, Baseline, make_baselines, parse_baselines
from .report import console_tables, results_markdown, table1_markdown, write_outputs, write_scores_csv
from .run import (
                  LATENT_GUARD,
                  METHOD_ORDER,
                  Evaluation,
                  MethodScores,
                  TextScores,
                  condition_metrics,
                  evaluate_copro,
                  method_results,
                  pooled_scores,
                  pooled_validation_threshold,
                  score_prompts,
)
from .table1 import DOMAINS, KINDS, STAGE_SPLITS, Condition, Conditions, build_conditions

__all__ = ["BASELINES", "DOMAINS", "KINDS", "LATENT_GUARD", "METHOD_ORDER", "STAGE_SPLITS", "Baseline", "Condition",
           "Conditions", "Evaluation", "MethodScores", "TextScores", "build_conditions", "condition_metrics",
           "console_tables", "evaluate_copro", "evaluate_external", "external_markdown", "external_threshold",
           "make_baselines", "method_results", "parse_baselines", "pooled_scores", "pooled_validation_threshold",
           "read_external", "read_labelled_prompts", "results_markdown", "score_prompts", "table1_markdown",
           "write_outputs", "write_scores_csv"]
