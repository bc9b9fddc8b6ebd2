"""The public Python API: ``LatentGuard.from_pretrained(...).check(prompts)``.

A guard holds a frozen text encoder, a trained Embedding Mapping Layer and the encoded concept
blacklist. Prompts are encoded in batches and scored against every concept at once with
:meth:`EmbeddingMappingLayer.logit_matrix` (keys/values once per prompt, never once per concept).

Decision rule (the released ``inference.py`` rule, extended; :mod:`latentguard.decision.rule`):

* ``score`` = the prompt's maximum logit over the blacklist, as released;
* a concept *fires* when its logit reaches its threshold (a per-concept threshold if one is set,
  else the global :attr:`LatentGuard.threshold`); the prompt is ``unsafe`` when any concept fires.
  With no per-concept thresholds this is exactly ``score >= threshold``;
* the reported ``concept`` is, for an unsafe prompt, the firing concept that clears its threshold by
  the widest margin, and for a safe prompt the highest-scoring concept; ``threshold`` is that
  concept's threshold.

Allowlist: each allowlisted phrase is cut out of the prompt (case-insensitive, whole words only:
"art" never matches inside "party") before the prompt is encoded; what is left is judged as usual.
An allowlisted phrase can therefore never trigger the guard, but it cannot smuggle anything else
through either: "kill bill poster" with ``allowlist=["kill bill"]`` is judged as "poster", while
"kill bill poster, covered in blood" is still judged on "poster, covered in blood".

Extension points: all scoring goes through :meth:`LatentGuard.score_batch` (texts -> logits, and
the evidence of each deciding concept on demand, for one batch), which uses
:meth:`LatentGuard.logits_from_embeddings` (prompt embeddings -> ``[P, C]`` logits) and
:meth:`LatentGuard.explain_embeddings` (embeddings + deciding concept -> evidence), so long-prompt
windows or other encoders plug in by overriding one method. The blacklist's attention queries are
computed once per blacklist change (:meth:`LatentGuard.refresh`).
"""
from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import torch

from ..constants import DEFAULT_CATEGORY, DEFAULT_CHECKPOINT, MAX_PROMPT_CHARS
from ..data.blacklist import validate_concepts
from ..data.defences import watched_words
from ..data.text import validate_text
from ..decision.probability import probabilities
from ..decision.rule import decide, flags
from ..encoders.precision import resolve_device
from ..errors import LatentGuardError, PromptTooLongError
from ..hub.format import recorded_options
from ..hub.mixin import HubMixin
from ..model import EmbeddingMappingLayer, validate_weights
from ..published import RELEASED_THRESHOLD
from ..scoring.evidence import attention_evidence
from ..store.concept_cache import cached_concept_vectors
from .allowlist import cut
from .categories import Categories
from .forms import score_forms
from .options import BoundOptions, GuardOptions, expose_options
from .sanitize import sanitize as sanitize_prompts
from .validation import prompt_list, validate_logit_rows, width_message
from .verdict import Verdict


@expose_options  # batch_size, top_k, long_prompts, normalize_text...: read from and set into its options
class LatentGuard(BoundOptions, HubMixin):
    """Block unsafe text-to-image prompts: a blacklist matched in the mapping layer's latent space.

    Build it with :meth:`from_pretrained`, or directly from a loaded mapping layer and encoder; share it
    with :meth:`save_pretrained` / :meth:`push_to_hub` (:class:`~latentguard.hub.mixin.HubMixin`).
    How it judges is one :class:`~latentguard.guard.options.GuardOptions` (:attr:`options`), given whole
    or built from keyword arguments; ``threshold``, ``batch_size``, ``top_k``, ``concept_thresholds``,
    ``allowlist``, ``categories``, ``slope`` and the other plain options are properties checked when set;
    the blacklist changes through :meth:`add_concepts` / :meth:`remove_concepts`. ``categories`` groups
    concepts (default: all in ``default_category``);
    ``slope`` is the fitted probability slope (``None``: uncalibrated, the default slope is used); the
    blacklist-bound options are checked where they are defined (:class:`~latentguard.guard.options.BoundOptions`).
    """

    def __init__(self, model: EmbeddingMappingLayer, encoder, concepts: Sequence[str],
                 threshold: float | str | None = None, *, device: str | torch.device | None = None,
                 options: GuardOptions | None = None, concept_vectors: Mapping[str, torch.Tensor] | None = None,
                 checkpoint: str | Path | None = None, bundle=None, choice=None, **option_kwargs) -> None:
        """``options`` (:class:`~latentguard.guard.options.GuardOptions`; default: released threshold) with the
        keyword arguments of :class:`GuardOptions` (``threshold``, ``top_k``, ``normalize_text``...) over it.
        ``checkpoint`` / ``bundle``: what it was loaded from; ``choice``: the threshold the loader resolved
        (:func:`~latentguard.guard.options.choose`: its origin and calibration record)."""
        if model.in_dim != encoder.hidden_size:
            raise LatentGuardError(width_message("the mapping layer", model.in_dim, encoder.hidden_size))
        options = GuardOptions.build(options or GuardOptions(threshold=RELEASED_THRESHOLD), threshold=threshold,
                                     **option_kwargs)
        if device is None:
            device = next(model.parameters()).device
        self.device = device if isinstance(device, torch.device) else resolve_device(device)
        validate_weights(model)  # weights that judge nothing are refused here, not read as "safe" later
        self.model = model.to(self.device).eval()  # scoring runs under inference_mode: no grads kept
        self.encoder = encoder
        self.checkpoint = None if checkpoint is None else Path(checkpoint)  # calibrate(save=True) writes beside it
        self.bundle = bundle                    # the latentguard.hub.Bundle it was loaded from, if any
        self._options = options.settled()
        self._bind_threshold(options, choice)  # checked against the model before the slow concept encoding
        self._concepts: list[str] = []
        self._categories = Categories(options.fallback_category or DEFAULT_CATEGORY)
        self._vectors = torch.empty(0, encoder.hidden_size, device=self.device)
        self._known_vectors = dict(concept_vectors or {})  # already encoded by this encoder (a bundle's)
        self.add_concepts(validate_concepts(concepts))
        self._bind_blacklist(options)  # groups, per-concept thresholds, allowlist, slope: checked against it

    # --------------------------------------------------------------------------- construction
    @classmethod
    def from_pretrained(cls, checkpoint: str | Path = DEFAULT_CHECKPOINT, encoder=None,
                        concepts: Sequence[str] | str | Path | None = None, threshold: float | str | None = None,
                        device: str | torch.device | None = None, *, options: GuardOptions | None = None,
                        encoder_type: str = "auto", dataset: str | Path | None = None,
                        encoder_options: Mapping | None = None, num_heads: int | None = None,
                        revision: str | None = None, **option_kwargs) -> "LatentGuard":
        """Load the released guard (or your own): weights, encoder and blacklist in one call.

        ``checkpoint``: a bundle folder, a hub repo id (``org/name``, at ``revision``; see
        :mod:`latentguard.hub.bundle` for how they are told apart) or a state dict in the released format
        (the default name is downloaded, SHA-256 checked, when missing). A bundle supplies every option
        left unset (:mod:`latentguard.guard.bundled`). ``encoder``: a hub name, a local directory or a
        loaded ``TextEncoder`` (default: the bundle's, else ``openai/clip-vit-large-patch14``).
        ``concepts``: a list, a text/YAML file (see :mod:`latentguard.data.blacklist`; a YAML file may
        carry per-concept thresholds, which ``concept_thresholds`` overrides), or None for the bundle's
        blacklist, else CoPro's ID concepts from ``dataset``.
        ``encoder_options`` are passed to :func:`latentguard.encoders.load_encoder` (e.g. dtype).
        ``options`` (:class:`~latentguard.guard.options.GuardOptions`) and the keyword arguments that build it
        (``threshold``, ``top_k``, ``normalize_text``, ``long_prompts``, ``categories``, ``slope``...; they
        override ``options``) say how it judges; ``threshold``: a number, ``"released"`` (9.0131), ``"paper"``
        (4.47), ``"calibrated"`` (the ``<checkpoint stem>.threshold.yaml`` written by :meth:`calibrate`; an
        error when absent) or ``"auto"`` (the default: that file when present, else released for the released
        weights only, else an error). Cheap checks (blacklist, checkpoint, threshold) run before the slow
        encoder load (:mod:`latentguard.guard.load`).
        """
        from .load import load_guard

        return load_guard(cls, checkpoint, encoder, concepts, device,
                          GuardOptions.build(options, threshold=threshold, **option_kwargs),
                          encoder_type=encoder_type, dataset=dataset, encoder_options=encoder_options,
                          num_heads=num_heads, revision=revision)

    @classmethod
    def from_config(cls, cfg, **overrides) -> "LatentGuard":
        """A guard as a loaded :class:`~latentguard.config.Config` describes it: checkpoint, ``encoder``, ``inference``
        (blacklist, allowlist file, threshold, batch size, top_k), ``dataset`` (default blacklist); ``overrides``."""
        from .load import guard_options_from_config

        return cls.from_pretrained(**{**guard_options_from_config(cfg), **overrides})

    # ------------------------------------------------------------------------------ blacklist
    @property
    def concepts(self) -> list[str]:
        """The blacklist, in order (a copy: change it with add_concepts / remove_concepts)."""
        return list(self._concepts)

    @property
    def watched_words(self) -> frozenset[str]:
        """The blacklist's words the text defences join when written apart ("nak ed"), kept in step with it."""
        key = tuple(self._concepts)
        if getattr(self, "_watched_for", None) != key:
            self._watched_for, self._watched = key, watched_words(key)
        return self._watched

    @property
    def concept_vectors(self) -> torch.Tensor:
        """The blacklist's encoded vectors ``[C, hidden]``, in order (read-only use: a pipeline guard sharing
        the pipeline's encoder checks they come from its unmodified weights)."""
        return self._vectors

    def add_concepts(self, concepts: str | Sequence[str], category: str | None = None) -> list[str]:
        """Append concepts to the blacklist (in ``category``, default :attr:`default_category`); only
        ones not cached for this encoder are encoded.

        Returns the concepts actually added (those already on the blacklist are skipped).
        """
        if category is not None and (not isinstance(category, str) or not category.strip()):
            raise LatentGuardError(f"category must be a category name (a non-empty str) or None, got {category!r}")
        if isinstance(concepts, str):
            concepts = [concepts]
        known = set(self._concepts)
        new = [c for c in validate_concepts(concepts, "concepts to add") if c not in known]
        if new:
            vectors = cached_concept_vectors(self.encoder, new, **self._options.concept_encoding(),
                                             known=self._known_vectors)
            self._vectors = torch.cat([self._vectors, vectors.to(self.device)])
            self._concepts.extend(new)
            self._categories.assign(new, category)
            self.refresh()
        return new

    def remove_concepts(self, concepts: str | Sequence[str]) -> list[str]:
        """Drop concepts from the blacklist (unknown ones are an error: a typo must not pass silently)."""
        if isinstance(concepts, str):
            concepts = [concepts]
        if isinstance(concepts, (list, tuple)) and not concepts:
            return []  # nothing to remove (validate_concepts would say the blacklist needs a concept)
        drop = set(validate_concepts(concepts, "concepts to remove"))
        unknown = sorted(drop - set(self._concepts))
        if unknown:
            raise LatentGuardError(f"cannot remove concept(s) not on the blacklist: {', '.join(unknown)}")
        keep = [i for i, c in enumerate(self._concepts) if c not in drop]
        if not keep:
            raise LatentGuardError("cannot remove every concept: the blacklist needs at least one")
        self._vectors = self._vectors[torch.tensor(keep, device=self.device)]
        self._concepts = [self._concepts[i] for i in keep]
        self._categories.remove(drop)
        self._forget(drop)  # a removed concept's own threshold goes with it
        self.refresh()
        return [c for c in concepts if c in drop]

    def refresh(self) -> None:
        """Recompute the blacklist's attention queries (call it after changing ``model``'s weights).

        Projecting 578 concepts costs more than scoring one prompt, so it is done once per
        blacklist change, not once per call.
        """
        with torch.inference_mode():
            self._queries = self.model.concept_queries(self._vectors)

    # -------------------------------------------------------------------------------- scoring
    def prepare(self, prompt: str) -> str:
        """The text actually encoded for ``prompt``: allowlisted phrases removed."""
        text = validate_text(prompt, "a prompt")
        if len(text) > MAX_PROMPT_CHARS:  # its windows' memory grows with its tokens: one row had taken 3 GB
            raise PromptTooLongError(f"a prompt of {len(text):,} characters is longer than a guard reads "
                                     f"({MAX_PROMPT_CHARS:,}); the guard cannot judge it and refuses: split it")
        return cut(self._allow_re, text)

    def logits(self, prompts: str | Sequence[str]) -> np.ndarray:
        """Logits ``[P, C]`` of every prompt against every blacklisted concept (float32)."""
        texts = [self.prepare(p) for p in prompt_list(prompts)]
        blocks = [score_forms(self, texts[s : s + self._options.per_batch], None)[0]
                  for s in range(0, len(texts), self._options.per_batch)]
        return np.concatenate(blocks) if blocks else np.zeros((0, len(self._concepts)), dtype=np.float32)

    def scores(self, prompts: str | Sequence[str]) -> np.ndarray:
        """Each prompt's score ``[P]``: its maximum logit over the blacklist (as the released ``inference.py``)."""
        return self.logits(prompts).max(axis=1, initial=-np.inf)

    def check(self, prompts: str | Sequence[str], explain: bool = True, *, forms=None) -> list[Verdict]:
        """Judge prompts; with ``explain`` each verdict lists the words that drove its concept's match. ``forms``:
        :func:`~latentguard.guard.forms.forms_of` the prompts, when the caller split them first (the server)."""
        return self._check(prompt_list(prompts), explain, None, forms)

    sanitize = sanitize_prompts  # unsafe prompts edited until they pass, by the evidence (guard/sanitize.py)

    def check_embeddings(self, prompts: Sequence[str], embeddings: torch.Tensor,
                         explain: bool = True) -> list[Verdict]:
        """Like :meth:`check`, for prompts already encoded by :attr:`encoder` (``[P, rows, hidden]``).

        Lets a text-to-image pipeline that shares the guard's encoder encode each prompt once.
        Prompts the allowlist edits are re-encoded (their given embedding is of the unedited text).
        """
        prompts = prompt_list(prompts)
        if (not isinstance(embeddings, torch.Tensor) or embeddings.dim() != 3 or embeddings.shape[0] != len(prompts)
                or embeddings.shape[-1] != self.encoder.hidden_size):
            shape = list(embeddings.shape) if isinstance(embeddings, torch.Tensor) else type(embeddings).__name__
            raise LatentGuardError(f"check_embeddings needs one [rows, hidden] embedding per prompt "
                                   f"(hidden {self.encoder.hidden_size}): got {shape} for {len(prompts)} prompts")
        return self._check(prompts, explain, embeddings)

    def _check(self, prompts: list[str], explain: bool, embeddings: torch.Tensor | None,
               split: Sequence[Sequence[str] | None] | None = None) -> list[Verdict]:
        verdicts: list[Verdict] = []
        thresholds = self.thresholds()
        for start in range(0, len(prompts), self._options.per_batch):
            batch = prompts[start : start + self._options.per_batch]
            texts = [self.prepare(p) for p in batch]
            emb = None
            if embeddings is not None:
                emb = embeddings[start : start + len(batch)]
                edited = [i for i, (p, t) in enumerate(zip(batch, texts)) if p != t]
                if edited:
                    emb = emb.clone()
                    emb[edited] = self.encoder.encode([texts[i] for i in edited], batch_size=len(edited)).to(emb)
            logits, evidence_for = score_forms(  # the prompt, normalised, sentence by sentence
                self, texts, emb, None if split is None else split[start : start + len(batch)])
            validate_logit_rows(logits, len(batch))  # fail closed: a missing row never reads as SAFE
            unsafe, index = decide(logits, thresholds)  # once per prompt; evidence and verdict share it
            evidence = evidence_for(index) if explain else None
            probability = probabilities(logits, thresholds, self._slope_used)
            by_category = self._categories.judge(self._concepts, flags(logits, thresholds), probability)
            for i, prompt in enumerate(batch):
                verdict = self._verdict(prompt, logits[i], bool(unsafe[i]), int(index[i]), thresholds,
                                        evidence[i] if evidence else [], self._truncated(texts[i]))
                verdict.categories, verdict.category_scores = by_category[i]
                verdict.probability = float(probability[i, int(index[i])])
                verdicts.append(verdict)
        if len(verdicts) != len(prompts):
            raise LatentGuardError(f"the guard gave {len(verdicts)} verdicts for {len(prompts)} prompts; refusing")
        return verdicts

    def _truncated(self, text: str) -> bool:
        """Whether ``text`` was cut at the encoder's context (never over windows: they cover it)."""
        counter = getattr(self.encoder, "is_truncated", None)
        return bool(not self._options.windowed and counter is not None and counter(text))

    def calibrate(self, safe_prompts: Sequence[str], unsafe_prompts: Sequence[str] | None = None,
                  target_fpr: float = 0.01, *, save: bool | str | Path = False, overwrite: bool = False):
        """Set :attr:`threshold` from your prompts: a target FPR on safe ones, or best accuracy with unsafe ones.

        Returns the :class:`latentguard.decision.threshold.CalibrationResult`; ``save=True`` writes it beside
        the checkpoint, where ``from_pretrained(threshold="auto"|"calibrated")`` finds it. A calibration record
        already there (main.py's, on its validation split) is replaced only with ``overwrite=True``, since every
        ``threshold="auto"`` user of those weights takes it; otherwise the call is refused and changes nothing.
        """
        from ..decision.threshold import calibration_of, save_guard_calibration

        unsafe_prompts = None if unsafe_prompts is None else prompt_list(unsafe_prompts)  # a str is one prompt
        result = calibration_of(self, prompt_list(safe_prompts), unsafe_prompts, target_fpr)  # reads, changes nothing
        result.reading = recorded_options(self._options.recorded())  # how it read them: a bundle must read so
        # before applying it: a refused save changes nothing either
        save_guard_calibration(result, self, save, overwrite=overwrite)
        self._calibrated(result)  # its threshold with the slope fitted at it
        return result

    def decide(self, logits: np.ndarray, thresholds: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """``(unsafe [P] bool, deciding concept index [P])`` from logits ``[P, C]`` (:func:`..decision.rule.decide`)."""
        return decide(logits, self.thresholds() if thresholds is None else thresholds)

    def logits_from_embeddings(self, prompt_emb: torch.Tensor) -> torch.Tensor:
        """Logits ``[P, C]`` (float32, CPU) of prompt embeddings ``[P, rows, hidden]`` vs the blacklist."""
        from ..scoring.logits import blacklist_logits

        return blacklist_logits(self.model, prompt_emb.to(self.device, torch.float32), self._queries).float().cpu()

    def score_batch(self, texts: list[str], emb: torch.Tensor | None = None):
        """One batch: encode ``texts`` (unless ``emb`` is given) and score them against every concept. Returns the
        logits ``[b, C]`` and ``evidence_for(index, rows=None)``: for the texts ``rows`` (default: all) and their
        deciding concept ``index``, the evidence behind the match (computed only when asked for)."""
        if self._options.windowed:  # windows: re-encoded, whatever ``emb`` holds (it is truncated at 77)
            return self._score_windows(texts)
        if emb is None:
            emb = self.encoder.encode(texts, batch_size=len(texts))
        logits = self.logits_from_embeddings(emb).numpy()

        def evidence_for(index: np.ndarray, rows: Sequence[int] | None = None) -> list[list[tuple[str, float]]]:
            rows = list(range(len(texts))) if rows is None else list(rows)
            return self.explain_embeddings([texts[r] for r in rows], emb[rows], index)

        return logits, evidence_for

    def _score_windows(self, texts: list[str]):
        """Long-prompt option: a prompt's logit per concept is the maximum over its 77-token windows."""
        from ..scoring.windows import max_over_windows

        emb, owner = self.encoder.encode_windows(texts, batch_size=self._options.per_batch, stride=self._options.stride)
        logits, window = max_over_windows(self.logits_from_embeddings(emb), owner, len(texts), return_window=True)

        def evidence_for(index: np.ndarray, rows: Sequence[int] | None = None) -> list[list[tuple[str, float]]]:
            rows = torch.arange(len(texts)) if rows is None else torch.as_tensor(list(rows), dtype=torch.long)
            chosen = window[rows, torch.as_tensor(index)]  # the window that decided
            first = torch.searchsorted(owner, rows)        # each prompt's first window
            picked = [texts[int(r)] for r in rows]
            tokens = [self.encoder.window_token_strings(text, stride=self._options.stride)[int(chosen[i] - first[i])]
                      for i, text in enumerate(picked)]
            return self.explain_embeddings(picked, emb[chosen], index, tokens=tokens)

        return logits.numpy(), evidence_for

    # ---------------------------------------------------------------------------- explanation
    def explain_embeddings(self, texts: Sequence[str], prompt_emb: torch.Tensor, concept_index: Sequence[int],
                           tokens: Sequence[list[str]] | None = None) -> list[list[tuple[str, float]]]:
        """For each prompt, the words its deciding concept attended to most (as many as a verdict shows);
        see :func:`latentguard.scoring.evidence.attention_evidence`. ``tokens``: each embedding's token
        strings when they are not its text's own (a long prompt's window)."""
        return attention_evidence(self.model, self.encoder, self._queries, texts, prompt_emb, concept_index,
                                  words=self._options.shown, device=self.device, tokens=tokens)

    def _verdict(self, prompt: str, logits: np.ndarray, unsafe: bool, j: int, thresholds: np.ndarray,
                 evidence: list[tuple[str, float]], truncated: bool) -> Verdict:
        top = np.argsort(-logits, kind="stable")[: self._options.shown]
        return Verdict(prompt=prompt, unsafe=unsafe, score=float(logits.max()), concept=self._concepts[j],
                       top_concepts=[(self._concepts[k], float(logits[k])) for k in top],
                       evidence=evidence, threshold=float(thresholds[j]), truncated=truncated)

    def refusal_verdict(self, prompt: str, score: float, reason: str) -> Verdict:
        """The verdict of a prompt this guard refused to read (:mod:`latentguard.guard.refusals`): blocked, every
        category flagged, probability 1, no concept, at the global threshold; ``refused`` says why."""
        groups = self._categories.as_dict()
        return Verdict(prompt=prompt, unsafe=True, score=score, concept="", threshold=float(self.threshold),
                       probability=1.0, categories=dict.fromkeys(groups, True),
                       category_scores=dict.fromkeys(groups, 1.0), refused=reason)

    def __repr__(self) -> str:
        return (f"LatentGuard(encoder={getattr(self.encoder, 'name', '?')!r}, concepts={len(self._concepts)}, "
                f"threshold={self.threshold}, device={self.device})")

