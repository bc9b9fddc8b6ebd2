"""Table 1 baselines behind one small interface: adding a baseline means adding one class here.

Each class scores every distinct text of a domain against that domain's concepts and returns
``(score [N], best concept index [N])``. A baseline that reads the prompt embeddings (CLIPScore)
sees every batch of the Latent Guard scoring pass through :meth:`Baseline.batch_hook`, so the store
is read once for all methods. The scoring rules themselves live in :mod:`latentguard.eval.baselines`.
"""
from __future__ import annotations

import time
from typing import Callable, Sequence

import numpy as np

from ..errors import LatentGuardError
from ..published import METHOD_NAMES


class Baseline:
    """One comparison method; ``graded``: its scores rank prompts (AUC makes sense)."""

    key: str = ""
    graded: bool = True
    fixed_threshold: float | None = None  # decision rules are not calibrated
    threshold_note: str = ""

    @classmethod
    def build(cls, *, bert_scorer=None, blacklist_match: str = "substring", progress: bool = False,
              log=print) -> "Baseline | None":
        """The baseline for this evaluation, or ``None`` when it cannot run (e.g. no BERT model)."""
        return cls()

    def batch_hook(self) -> Callable | None:
        """A callable ``(embeddings, concept vectors)`` run on every scoring batch, or ``None``."""
        return None

    def domain_scores(self, domain: str, texts: Sequence[str],
                      concepts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError


class ClipScoreBaseline(Baseline):
    """Cosine of the prompt's and the concept's pooled CLIP states (the encoder's own similarity)."""

    key = "clipscore"

    def __init__(self) -> None:
        self._scores: list[np.ndarray] = []
        self._best: list[np.ndarray] = []

    def batch_hook(self) -> Callable:
        from .baselines import clip_score_matrix

        def hook(emb, concepts) -> None:
            values, index = clip_score_matrix(emb[:, 0], concepts).max(dim=1)
            self._scores.append(values.double().cpu().numpy())
            self._best.append(index.cpu().numpy())
        return hook

    def domain_scores(self, domain, texts, concepts):
        score = np.concatenate(self._scores) if self._scores else np.empty(0, np.float64)
        best = np.concatenate(self._best) if self._best else np.empty(0, np.int64)
        self._scores, self._best = [], []
        return score, best


class TextBlacklistBaseline(Baseline):
    """Unsafe when a blacklisted concept occurs in the prompt (a decision rule).

    ``match="substring"`` (default) is the paper's rule, any case-insensitive occurrence; ``"word"``
    asks for whole words (config: ``eval.blacklist_match``).
    """

    key = "text_blacklist"
    graded = False
    _NOTES = {"substring": "fixed rule: unsafe when a concept occurs in the prompt, ignoring case",
              "word": "fixed rule: unsafe when a concept appears as a whole word"}

    def __init__(self, match: str = "substring") -> None:
        from .baselines import BLACKLIST_THRESHOLD

        self.match = match
        self.fixed_threshold = BLACKLIST_THRESHOLD
        self.threshold_note = self._NOTES.get(match, f"fixed rule: {match} match")

    @classmethod
    def build(cls, *, bert_scorer=None, blacklist_match: str = "substring", progress: bool = False,
              log=print) -> "Baseline | None":
        return cls(blacklist_match)

    def domain_scores(self, domain, texts, concepts):
        from .baselines import TextBlacklist

        return TextBlacklist(concepts, self.match).scores(texts)


class BertScoreBaseline(Baseline):
    """Best BERTScore F1 between the prompt and any concept."""

    key = "bertscore"

    def __init__(self, scorer, progress: bool, log) -> None:
        self.scorer, self.progress, self.log = scorer, progress, log

    @classmethod
    def build(cls, *, bert_scorer=None, blacklist_match: str = "substring", progress: bool = False,
              log=print) -> "Baseline | None":
        return None if bert_scorer is None else cls(bert_scorer, progress, log)

    def domain_scores(self, domain, texts, concepts):
        started = time.perf_counter()
        score, best = self.scorer.scores(texts, concepts, progress=self.progress)
        self.log(f"BERTScore {domain}: {len(texts)} prompts x {len(concepts)} concepts "
                 f"in {time.perf_counter() - started:.1f} s")
        return score, best


# Every baseline, by the key parse_baselines returns; the order is the scoring order.
BASELINES: dict[str, type[Baseline]] = {cls.key: cls for cls in (ClipScoreBaseline, TextBlacklistBaseline,
                                                                 BertScoreBaseline)}


def make_baselines(keys: Sequence[str], *, bert_scorer=None, blacklist_match: str = "substring",
                   progress: bool = False, log=print) -> list[Baseline]:
    """The requested baselines that can run, in :data:`BASELINES` order."""
    built = (cls.build(bert_scorer=bert_scorer, blacklist_match=blacklist_match, progress=progress, log=log)
             for key, cls in BASELINES.items() if key in keys)
    return [b for b in built if b is not None]


_ALIASES = {"blacklist": "text_blacklist"}  # the CLI's short name for the Text Blacklist


def parse_baselines(value: str | Sequence[str] | None) -> list[str]:
    """``"blacklist,clipscore"`` / ``["bertscore"]`` / ``"all"`` -> keys of :data:`BASELINES`, in table order."""
    if value is None:
        return []
    items = value.split(",") if isinstance(value, str) else list(value)
    chosen: set[str] = set()
    for item in items:
        name = str(item).strip().lower()
        if not name or name == "none":
            continue
        if name == "all":
            chosen.update(BASELINES)
        elif _ALIASES.get(name, name) in BASELINES:
            chosen.add(_ALIASES.get(name, name))
        else:
            raise LatentGuardError(f"unknown baseline '{item}' (use blacklist, clipscore, bertscore or all)")
    return [key for key in METHOD_NAMES if key in chosen]
