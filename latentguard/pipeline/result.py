"""What a guarded pipeline call returns (:class:`GuardedResult`) and raises (:class:`PromptBlocked`)."""
from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any

import numpy as np

from ..errors import LatentGuardError


class OnUnsafe(str, Enum):
    """What an unsafe prompt does to a guarded call: each action and its behaviour, defined once here.

    ``block_all`` (alias ``block``): refuse the whole call, the pipeline is not run. ``skip``: generate only
    the safe prompts. ``raise``: refuse by raising :class:`PromptBlocked`. ``annotate``: generate as usual and
    attach the verdicts (observe only: collect a false-positive rate before enforcing). ``sanitize``: edit
    each unsafe text until the guard passes it (:mod:`latentguard.guard.sanitize`) and generate from the
    edited texts; when any of them does not pass, refuse the whole call as ``block_all`` does.
    """

    BLOCK_ALL = "block_all"
    SKIP = "skip"
    RAISE = "raise"
    ANNOTATE = "annotate"
    SANITIZE = "sanitize"

    def __str__(self) -> str:
        return self.value

    @classmethod
    def parse(cls, value) -> "OnUnsafe":
        """The action ``value`` names (an :class:`OnUnsafe` or its name), or a one-line error listing them."""
        try:
            return cls(_ALIASES.get(value, value) if isinstance(value, str) else value)
        except (ValueError, TypeError):
            raise LatentGuardError(f"on_unsafe must be one of {', '.join(ON_UNSAFE)}, got {value!r}") from None

    @property
    def enforces(self) -> bool:
        """Whether an unsafe text is kept from the pipeline (all but ``annotate``)."""
        return self is not OnUnsafe.ANNOTATE

    @property
    def raises(self) -> bool:
        """Whether a refused call raises :class:`PromptBlocked` instead of returning its result."""
        return self is OnUnsafe.RAISE

    def generated(self, unsafe: list[bool]) -> list[int]:
        """The prompts sent to the pipeline, given which are (still) unsafe: all, the safe ones, or none."""
        if self is OnUnsafe.ANNOTATE or not any(unsafe):
            return list(range(len(unsafe)))
        return [i for i, u in enumerate(unsafe) if not u] if self is OnUnsafe.SKIP else []


_ALIASES = {"block": "block_all"}
ON_UNSAFE = tuple(action.value for action in OnUnsafe)  # the names, in order (and the alias "block")


@dataclass
class GuardedResult:
    """What a guarded pipeline call did, prompt by prompt.

    ``blocked``: at least one prompt was refused (never with ``annotate``). ``verdicts``: one per
    input prompt, in order (the worst of its texts). ``passed``: indices of the prompts sent to the
    pipeline. ``output``: the pipeline's own return value (``None`` when it was not called).
    ``images``: per input prompt, its image (or list of images with ``num_images_per_prompt > 1``)
    and ``None`` where refused; ``None`` altogether when the pipeline was not called or returned no
    images. ``concept``/``score``: of the highest-scoring unsafe verdict (``None`` when none).
    ``text_verdicts``: per checked argument (``prompt``, ``prompt_2``...) its verdicts, and per
    text encoder (``text_encoder_2``...) the verdicts of texts first met there.
    ``blocked_at``: the text encoder where an unsafe text was found mid-call (else ``None``).
    """

    blocked: bool
    verdicts: list
    prompts: list[str]
    passed: list[int] = field(default_factory=list)
    output: Any = None
    images: list | None = None
    concept: str | None = None
    score: float | None = None
    reused_embeddings: bool = False  # the pipeline got the guard's prompt_embeds (one encoder pass)
    text_verdicts: dict = field(default_factory=dict)
    on_unsafe: str = "block_all"  # an OnUnsafe (a str)
    blocked_at: str | None = None
    sanitized: dict = field(default_factory=dict)  # sanitize: per argument, per prompt its Sanitized (None: safe)

    @property
    def flagged_prompts(self) -> list[str]:
        """Prompts judged unsafe, whatever was done about it (``annotate`` generates them)."""
        return [p for p, v in zip(self.prompts, self.verdicts) if v.unsafe]

    @property
    def blocked_prompts(self) -> list[str]:
        """Prompts refused for being unsafe (none with ``annotate``; with ``sanitize`` only when refused)."""
        action = OnUnsafe.parse(self.on_unsafe)
        if not action.enforces or (action is OnUnsafe.SANITIZE and not self.blocked):
            return []
        return self.flagged_prompts

    @property
    def generated_prompts(self) -> list[str | None]:
        """Per input prompt, the text the pipeline was given (a sanitized one where edited); ``None`` where refused."""
        edited = self.sanitized.get("prompt") or [None] * len(self.prompts)
        return [(s.text if s is not None else p) if i in self.passed else None
                for i, (p, s) in enumerate(zip(self.prompts, edited))]

    @property
    def generated_texts(self) -> dict[str, list[str | None]]:
        """Per text argument checked before the call (``prompt``, ``prompt_2``, ``negative_prompt``...), per input
        prompt the text the pipeline was given (a sanitized one where edited); ``None`` where refused. An edit of
        ``prompt_2`` shows here, not in :attr:`generated_prompts` (``prompt`` only)."""
        out = {}
        for name, verdicts in self.text_verdicts.items():
            if "prompt" in name:  # an argument's, not an encoder's
                edited = self.sanitized.get(name) or [None] * len(verdicts)
                out[name] = [(s.text if s is not None else v.prompt) if i in self.passed else None
                             for i, (v, s) in enumerate(zip(verdicts, edited))]
        return out

    def note_worst(self, verdicts) -> None:
        """Set ``concept``/``score`` from the highest-scoring unsafe verdict among these and those noted before."""
        for v in verdicts:
            if v.unsafe and (self.score is None or float(v.score) > self.score):
                self.concept, self.score = v.concept, float(v.score)


class PromptBlocked(LatentGuardError):
    """Raised by a guarded pipeline with ``on_unsafe="raise"``; ``.result`` holds the verdicts."""

    def __init__(self, result: GuardedResult) -> None:
        self.result = result
        worst = f": '{result.concept}' (score {result.score:.3f})" if result.concept is not None else ""
        where = f" at {result.blocked_at}" if result.blocked_at else ""
        super().__init__(f"{len(result.flagged_prompts) or 1} of {len(result.prompts)} prompt(s) blocked by Latent "
                         f"Guard{where}{worst}")


def validate_verdicts(verdicts: list, n_texts: int) -> None:
    """One verdict per text, each with a bool ``unsafe``, or refuse (``None`` or ``0`` must not read as safe)."""
    if len(verdicts) != n_texts or not all(isinstance(getattr(v, "unsafe", None), (bool, np.bool_)) for v in verdicts):
        raise LatentGuardError(f"the guard gave {len(verdicts)} verdicts for {n_texts} texts (or a verdict without "
                               "a bool 'unsafe'); refusing")


def images_by_prompt(output: Any, passed: list[int], n_prompts: int) -> list | None:
    """Spread the pipeline's images back over the input prompts (``None`` where refused)."""
    images = getattr(output, "images", None)
    if images is None and isinstance(output, (tuple, list)) and output:
        images = output[0]
    if images is None:
        return None
    images = list(images)
    if not images or len(images) % len(passed):
        return None
    per = len(images) // len(passed)
    spread: list = [None] * n_prompts
    for k, i in enumerate(passed):
        chunk = images[k * per : (k + 1) * per]
        spread[i] = chunk[0] if per == 1 else chunk
    return spread
