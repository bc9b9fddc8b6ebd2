"""Scoring: prompt embeddings against every blacklisted concept in one batched pass (logits, each
text's best concept, long-prompt windows), and the attention evidence behind a match. The one place
non-finite logits are refused."""
from __future__ import annotations

from .logits import StopRequested, blacklist_logits, head_major_logits, max_scores, validate_finite
from .windows import max_over_windows, windowed_logit_matrix

__all__ = ["StopRequested", "blacklist_logits", "validate_finite", "head_major_logits", "max_over_windows",
           "max_scores", "windowed_logit_matrix"]
