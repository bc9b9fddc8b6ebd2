"""Table 1's six conditions: ID / OOD x explicit / synonym / adversarial, for test and validation.

ID (ID concepts, ``ID_test_data``) and OOD (OOD concepts, ``OOD_test_data``), each Explicit (every
unsafe prompt = 1, every safe prompt = 0), Synonym and Adversarial (``CoPro.variant_pairs``: the
unsafe prompt rewritten, the safe one unchanged), as the released ``test.py`` builds them. (The
paper and the released score dumps call these "settings"; the CSV columns keep that name.)
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..published import DOMAINS, KINDS  # ID, OOD; explicit, synonym, adversarial

# The CoPro split each stage reads, per domain.
STAGE_SPLITS = {"test": {"ID": "ID_test_data", "OOD": "OOD_test_data"},
                "valid": {"ID": "ID_valid_data", "OOD": "OOD_valid_data"}}


@dataclass
class Condition:
    """The labelled prompts of one (domain, kind) condition; ``reason`` says why it is unavailable."""

    domain: str
    kind: str
    unsafe: list[str] = field(default_factory=list)
    safe: list[str] = field(default_factory=list)
    reason: str | None = None
    pairs: list = field(default_factory=list)  # the CoPro entries behind unsafe[i] / safe[i] (unvaried)

    @property
    def available(self) -> bool:
        return self.reason is None

    @property
    def name(self) -> str:
        return f"{self.domain} {self.kind}"

    @property
    def prompts(self) -> list[str]:
        return self.unsafe + self.safe

    @property
    def labels(self) -> np.ndarray:
        return np.concatenate([np.ones(len(self.unsafe), np.int64), np.zeros(len(self.safe), np.int64)])


Conditions = dict[tuple[str, str], Condition]


def build_conditions(copro, stage: str = "test") -> Conditions:
    """The six conditions of ``stage`` ("test" or "valid"), unavailable ones carrying their reason."""
    out: Conditions = {}
    for domain in DOMAINS:
        split = STAGE_SPLITS[stage][domain]
        has_concepts = bool(copro.concepts(domain))
        for kind in KINDS:
            condition = Condition(domain, kind)
            if not has_concepts:
                condition.reason = f"the dataset has no {domain} concepts"
            elif not copro.has_split(split):
                condition.reason = f"the dataset has no {split}"
            elif kind == "explicit":
                pairs = copro.split(split)
                condition.reason = None if pairs else f"{split} is empty"
                condition.unsafe = [p.unsafe_prompt for p in pairs]
                condition.safe = [p.safe_prompt for p in pairs]
                condition.pairs = list(pairs)
            else:
                pairs = copro.variant_pairs(split, kind)
                if pairs:
                    condition.unsafe = [p.unsafe_prompt for p in pairs]
                    condition.safe = [p.safe_prompt for p in pairs]
                    condition.pairs = [e for e in copro.split(split)
                                     if copro.variant_text(e.unsafe_prompt, e.concept, kind) is not None]
                elif not copro.synonyms or not copro.adversarial:
                    condition.reason = "the dataset has no concept_synonym / concept_adv entries"
                else:
                    condition.reason = (f"no {split} unsafe prompt contains a concept that has both a synonym "
                                      "and an adversarial replacement")
            out[(domain, kind)] = condition
    return out
