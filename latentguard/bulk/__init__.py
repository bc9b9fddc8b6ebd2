"""Scoring corpora: millions of prompts, streamed, deduplicated, sharded and resumable on one machine
(``latentguard score``), or on Ray Data across many; :class:`GuardBatchScorer` adds verdict columns to
a batch in any engine (Ray Data, Hugging Face ``datasets``, Spark).

Modules: ``inputs`` (files, shard plan, streaming readers), ``scorer`` (verdict columns,
``GuardBatchScorer``), ``dedup`` (the on-disk digest -> verdict map), ``manifest`` (the run's record
and done markers), ``plan`` (opening a run), ``local`` (the single-process engine), ``ray_engine``.
Importing this package loads neither torch, pyarrow nor ray.
"""
from __future__ import annotations

from .plan import BulkOptions, open_run, plan_run
from .scorer import GuardBatchScorer, score_texts, verdict_columns

__all__ = ["BulkOptions", "GuardBatchScorer", "open_run", "plan_run", "score_texts", "verdict_columns"]
