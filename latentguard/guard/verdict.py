"""The guard's judgement of one prompt, as the API, the CLIs and the pipeline wrapper report it."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

from ..published import RELEASED_THRESHOLD


@dataclass
class Verdict:
    """One prompt's verdict (the decision rule: :mod:`latentguard.decision.rule`)."""

    prompt: str
    unsafe: bool
    score: float  # max logit over the blacklist
    concept: str  # the concept that decided the verdict
    top_concepts: list[tuple[str, float]] = field(default_factory=list)  # highest logits, best first
    evidence: list[tuple[str, float]] = field(default_factory=list)  # words that drove the match
    threshold: float = RELEASED_THRESHOLD  # the threshold ``concept`` was judged against
    truncated: bool = False  # the prompt was cut at the encoder's context (77 tokens); see ``long_prompts``
    probability: float = 0.0  # sigmoid(slope * (logit - threshold)) of ``concept``: >= 0.5 exactly when unsafe
    categories: dict[str, bool] = field(default_factory=dict)  # category -> flagged (any of its concepts fired)
    category_scores: dict[str, float] = field(default_factory=dict)  # category -> max probability of its concepts
    # Why the guard refused to judge it (None: judged): text it cannot read is blocked, never judged as if
    # absent (latentguard.guard.refusals); bulk jobs write such a row as unsafe with this reason.
    refused: str | None = None

    def to_dict(self) -> dict:
        """JSON-friendly form (tuples become lists)."""
        out = asdict(self)
        out["top_concepts"] = [[c, s] for c, s in self.top_concepts]
        out["evidence"] = [[t, w] for t, w in self.evidence]
        return out
