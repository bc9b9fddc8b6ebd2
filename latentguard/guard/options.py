"""The guard's options: one frozen object, built once, checked once, passed whole to the guard.

:class:`GuardOptions` is every setting that changes how a guard judges (threshold, per-concept
thresholds, categories, the text defences, long prompts, sizes...). It is built from keyword
arguments (``LatentGuard(..., top_k=5)`` or ``from_pretrained(..., normalize_text=False)``), from a
config (:meth:`GuardOptions.from_config`) or filled in from a bundle (:meth:`GuardOptions.with_bundle`),
and the loaders (:mod:`latentguard.guard.load`, :mod:`latentguard.guard.bundled`) hand it unchanged
to the constructor; nothing is set on a guard after it is built. Why one object: an option is then
named in one definition here, one config key (:data:`CONFIG_KEYS`) and one CLI flag, not re-typed in
every signature on its way from YAML to the decision.

To add an option: a field below (its default, its check in ``__post_init__``), its config key in
``latentguard/config.py`` + ``default.yaml`` and :data:`CONFIG_KEYS`, and where the guard reads it
(``guard.options.NAME``, or ``guard.NAME`` for the :data:`PLAIN` options a guard exposes as settable
attributes).
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from ..constants import AUTO, CALIBRATED
from ..data.defences import expand
from ..errors import LatentGuardError
from .validation import finite_number, warn_blacklist_differs, warn_published_for_other_weights

# option -> its config key; the ones a bundle records keep the bundle's value while the config keeps the default
CONFIG_KEYS = {"threshold": "inference.threshold", "batch_size": "inference.batch_size", "top_k": "inference.top_k",
               "default_category": "inference.category", "normalize_text": "inference.normalize_text",
               "split_sentences": "inference.split_sentences", "long_prompts": "encoder.long_prompts",
               "window_stride": "encoder.window_stride", "sanitize_margin": "inference.sanitize_margin"}
BUNDLED = ("default_category", "long_prompts", "window_stride")
# the options a bundle records in its encoder section (config.json's ``encoder.options``, same key names): written
# from :meth:`GuardOptions.recorded`, read back by :meth:`GuardOptions.with_bundle`; the hub code only copies them
RECORDED = ("long_prompts", "window_stride")


def _config_value(cfg, name: str) -> Any:
    """Option ``name``'s value in a loaded config (through :data:`CONFIG_KEYS`)."""
    section, key = CONFIG_KEYS[name].split(".")
    return getattr(getattr(cfg, section), key)


def _positive_int(value: Any, what: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise LatentGuardError(f"{what} must be a positive integer, got {value!r}")


@dataclass(frozen=True)
class GuardOptions:
    """How a guard judges. ``None`` means "unset": a bundle's value, else the default (see each field)."""

    threshold: float | str = "auto"           # a number, "released", "paper", "calibrated" or "auto"
    concept_thresholds: Mapping[str, float] | None = None  # {concept: threshold}; others use ``threshold``
    categories: Mapping[str, Sequence[str]] | None = None  # added to a grouped blacklist's own groups
    default_category: str | None = None      # the category of ungrouped concepts (None: the bundle's, else "unsafe")
    allowlist: Iterable[str] | None = None   # phrases cut out of every prompt before scoring
    slope: float | None = None               # the probability slope (None: the calibration record's)
    batch_size: int = 64                     # prompts encoded per batch
    top_k: int = 3                           # concepts and evidence words reported per verdict
    cache_concepts: bool = True              # reuse encoded concepts from the on-disk cache
    long_prompts: bool | None = None         # score > 77 tokens as the max over windows (None: bundle's, else off)
    window_stride: int | None = None         # tokens between windows (None: bundle's, else the encoder default)
    normalize_text: bool = True              # also score the NFKC + look-alike normalised form
    split_sentences: bool = True             # also score each sentence and clause (data.defences)
    sanitize_margin: float = 0.1             # a passing edit's logits stay this share of tempr below (guard/sanitize)

    def __post_init__(self) -> None:
        """Checked once, here: a bad option never reaches a guard (a threshold name is read by :func:`choose`)."""
        if not isinstance(self.threshold, str):
            object.__setattr__(self, "threshold", finite_number(self.threshold, "threshold"))
        _positive_int(self.batch_size, "batch size")
        _positive_int(self.top_k, "top_k")
        if not 0 <= finite_number(self.sanitize_margin, "sanitize_margin") <= 1:  # a cosine: 1 would pass nothing
            raise LatentGuardError(f"sanitize_margin must be a number in [0, 1], got {self.sanitize_margin!r}")
        if self.window_stride is not None:
            _positive_int(self.window_stride, "window_stride")
        for name in ("cache_concepts", "normalize_text", "split_sentences", "long_prompts"):  # a switch is a bool:
            value = getattr(self, name)  # split_sentences="" had turned a defence off, "false" left it on (a pass)
            if (value is not None or name != "long_prompts") and type(value).__name__ not in ("bool", "bool_"):
                raise LatentGuardError(f"{name} must be True or False, got {value!r}")
            object.__setattr__(self, name, None if value is None else bool(value))

    @classmethod
    def build(cls, base: "GuardOptions | None" = None, **given: Any) -> "GuardOptions":
        """``base`` (default: the defaults) with the keyword arguments that are not ``None``; an unknown name is an
        error (a misspelt option must not pass unnoticed)."""
        unknown = sorted(set(given) - {f.name for f in fields(cls)})
        if unknown:
            raise TypeError(f"unknown guard option(s): {', '.join(unknown)}")
        if base is not None and not isinstance(base, GuardOptions):
            raise LatentGuardError(f"options must be a GuardOptions, got {type(base).__name__}")
        return replace(base or cls(), **{k: v for k, v in given.items() if v is not None})

    @classmethod
    def from_config(cls, cfg, *, bundle: bool = False) -> "GuardOptions":
        """The options a loaded :class:`~latentguard.config.Config` gives; with ``bundle``, the :data:`BUNDLED` keys
        the config leaves at their default stay unset (the bundle's own values win)."""
        from ..config import Config
        from ..io import read_lines

        defaults = Config()
        values = {}
        for name in CONFIG_KEYS:
            value = _config_value(cfg, name)
            values[name] = None if bundle and name in BUNDLED and value == _config_value(defaults, name) else value
        allowlist = cfg.inference.allowlist
        return cls.build(**values, allowlist=read_lines(allowlist, what="allowlist file") if allowlist else None)

    @classmethod
    def recorded_in_config(cls, cfg) -> dict[str, Any]:
        """The :data:`RECORDED` options as a loaded config sets them (what training records in its bundle)."""
        return {name: _config_value(cfg, name) for name in RECORDED}

    def recorded(self) -> dict[str, Any]:
        """The :data:`RECORDED` options, by the names a bundle's ``encoder.options`` gives them (``None``: unset)."""
        return {name: getattr(self, name) for name in RECORDED}

    def with_bundle(self, bundle) -> "GuardOptions":
        """The unset :data:`BUNDLED` options filled in from a :class:`latentguard.hub.Bundle`."""
        recorded = bundle.encoder["options"]
        return self.build(self, default_category=self.default_category or bundle.config["categories"]["default"],
                          **{name: recorded[name] for name in RECORDED if getattr(self, name) is None})

    @property
    def reads_record(self) -> bool:
        """Whether the threshold is read from a calibration record (``auto``, ``calibrated``): a loader reads it."""
        return isinstance(self.threshold, str) and self.threshold.strip().lower() in (AUTO, CALIBRATED)

    def choice(self, **where: Any):
        """The threshold these options name, by :func:`choose` (``where``: checkpoint and sha256, or bundle)."""
        return choose(self.threshold, **where)

    def with_blacklist(self, thresholds: Mapping[str, float], groups: Mapping[str, Sequence[str]],
                       fitted: float | None) -> "GuardOptions":
        """These options over what the blacklist file holds (per-concept ``thresholds``, ``groups``) and the slope
        ``fitted`` with the chosen threshold: what the options give wins."""
        return self.build(self, concept_thresholds={**thresholds, **(self.concept_thresholds or {})},
                          categories={**groups, **(self.categories or {})},
                          slope=fitted if self.slope is None else None)

    def settled(self) -> "GuardOptions":  # as a built guard holds them: unset long prompts read as off
        return replace(self, long_prompts=self.windowed)

    def listed(self) -> dict[str, Any]:
        """What a served blacklist lists beside its concepts (``GET /v1/blacklist``): the groups, the per-concept
        thresholds and the allowlist, as plain JSON values."""
        return {"categories": {name: list(members) for name, members in (self.categories or {}).items()},
                "concept_thresholds": self.per_concept, "allowlist": list(self.allowlist or [])}

    def blacklist_settings(self) -> dict[str, Any]:
        """Everything besides the concepts that decides which concepts fire (a guard's blacklist digest)."""
        return {**self.listed(), "default_category": self.default_category}

    @property
    def per_concept(self) -> dict[str, float]:
        """The per-concept thresholds (``{}``: every concept uses the global threshold)."""
        return dict(self.concept_thresholds or {})

    @property
    def fallback_category(self) -> str | None:  # the category of concepts no group names (a flat blacklist's one)
        return self.default_category

    @property
    def windowed(self) -> bool:
        """Whether prompts longer than the encoder's context are scored whole, as the maximum over windows (else
        they are cut at the context and their verdicts say ``truncated``). Callers ask this, not the option."""
        return bool(self.long_prompts)

    @property
    def stride(self) -> int | None:  # tokens between long-prompt windows (None: the encoder's default)
        return self.window_stride

    @property
    def per_batch(self) -> int:  # how many prompts are encoded and scored together
        return self.batch_size

    @property
    def shown(self) -> int:  # how many concepts, and evidence words, a verdict reports
        return self.top_k

    def concept_encoding(self) -> dict[str, Any]:
        """The keyword arguments of :func:`latentguard.store.concept_cache.cached_concept_vectors` these options set
        (the batch size, whether to reuse the on-disk cache)."""
        return {"batch_size": self.batch_size, "use_cache": self.cache_concepts}

    @property
    def defended(self) -> bool:
        """Whether the text defences add forms to score (normalised text, sentences)."""
        return self.normalize_text or self.split_sentences

    def expand(self, text: str, watched: frozenset[str] = frozenset()) -> tuple[list[str], int]:
        """The forms of ``text`` these defences score, and its sentence count (:func:`..data.defences.expand`;
        ``watched``: the blacklist's words joined when written apart)."""
        return expand(text, normalize=self.normalize_text, split_sentences=self.split_sentences, watched=watched)

    def bundled_settings(self, guard, weights_unchanged: bool) -> dict[str, Any]:
        """What a bundle records of these options (a guard's :attr:`~latentguard.guard.LatentGuard.options`) at its
        top level, as :func:`latentguard.hub.write.write_bundle`'s keyword arguments: the groups and the default
        one, the threshold section (:func:`threshold_section`), the per-concept thresholds and the slope."""
        return {"categories": dict(self.categories or {}), "default_group": self.fallback_category,
                "threshold": threshold_section(guard, self.threshold, weights_unchanged),
                "concept_thresholds": self.per_concept, "slope": self.slope}

    def groups(self, filled: bool = False) -> list[str]:
        """The category names, in order (``filled``: only those with concepts). Callers count or list the groups
        through this, not through the option."""
        return [name for name, members in (self.categories or {}).items() if members or not filled]

    def group_listing(self) -> dict[str, list[str]]:  # the category names as /readyz and /admin/reload list them
        return {"categories": self.groups()}

    def decision_identity(self, edits: bool = False) -> dict[str, Any]:
        """The options in a guard's identity (:func:`..identity.guard_identity`): groups, threshold, slope and
        :meth:`verdict_settings`; with ``edits``, what sets a sanitized edit (the margin, the evidence words edits
        are drawn from). Under the keys run directories record (do not rename)."""
        edit = {"sanitize_margin": self.sanitize_margin, "sanitize_top_k": self.top_k} if edits else {}
        return {"categories": self.groups(), "threshold": self.threshold, "slope": self.slope,
                **self.verdict_settings(), **edit}

    def verdict_settings(self) -> dict[str, Any]:  # the options beyond threshold and slope that change verdicts
        return {n: getattr(self, n) for n in ("long_prompts", "window_stride", "normalize_text", "split_sentences")}


# options a guard exposes as plain settable attributes (guard.top_k = 5 replaces its options, checked again)
PLAIN = ("batch_size", "top_k", "cache_concepts", "long_prompts", "window_stride", "normalize_text",
         "split_sentences", "sanitize_margin")


def expose_options(cls):
    """Give ``cls`` (the guard) a property per :data:`PLAIN` option, read from and written to ``self._options``."""
    def prop(name: str) -> property:
        def get(self):
            return getattr(self._options, name)

        def put(self, value) -> None:
            self._options = replace(self._options, **{name: value})  # checked again by __post_init__

        return property(get, put, doc=f"The guard's ``{name}`` option (:class:`GuardOptions`).")

    for name in PLAIN:
        setattr(cls, name, prop(name))
    for method in (cls.__init__, cls.from_pretrained.__func__):  # help() and inspect list every option by name
        method.__signature__ = _with_options(inspect.signature(method))
    return cls


def _with_options(signature: inspect.Signature) -> inspect.Signature:
    """``signature`` with its ``**option_kwargs`` spelt out as the :class:`GuardOptions` keyword arguments."""
    params = [p for p in signature.parameters.values() if p.kind is not p.VAR_KEYWORD]
    named = {p.name for p in params}
    params += [inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=None, annotation=f.type)
               for f in fields(GuardOptions) if f.name not in named]
    return signature.replace(parameters=params)


def reads_long_prompts(guard) -> bool:
    """Whether ``guard`` scores prompts longer than its encoder's context whole (over windows), so no text past the
    context goes unjudged. Any guard object may say so as :class:`~latentguard.guard.LatentGuard` does (its option
    as an attribute); one that does not reads only the context."""
    return bool(getattr(guard, "long_prompts", False))


def encoding_batch(guard) -> int:
    """How many texts ``guard`` encodes at once (any guard object; 64 for one that does not say)."""
    return getattr(guard, "batch_size", 64)


def edit_margin(guard) -> float:
    """How far below its threshold a sanitized edit must score, as a share of the logit scale (any guard object)."""
    return getattr(getattr(guard, "options", None), "sanitize_margin", GuardOptions.sanitize_margin)


def threshold_section(guard, value: float, weights_unchanged: bool) -> dict[str, Any]:
    """A bundle's ``threshold`` section for ``guard`` at threshold ``value``: the value, how it was chosen, its
    calibration record when it has one. A threshold chosen for the weights the guard was loaded with is refused
    once they changed (it is not theirs)."""
    bundle, record = getattr(guard, "bundle", None), getattr(guard, "threshold_record", None)
    recorded = bundle.config["threshold"] if bundle is not None else None
    if recorded and guard.threshold_origin == bundle.threshold_origin and value == recorded["value"]:
        origin, calibration = recorded["origin"], recorded["calibration"]
    else:
        origin = guard.threshold_origin
        calibration = record.to_dict() if record is not None and record.threshold == value else None
    loaded = origin not in ("given", "calibrated now")  # chosen for the weights the guard was loaded with
    from_file = bundle is not None or getattr(guard, "checkpoint", None) is not None
    if loaded and from_file and not weights_unchanged:
        raise LatentGuardError(f"the guard's weights differ from those it was loaded with, so its threshold "
                               f"({origin}) is not theirs; calibrate (guard.calibrate) or set guard.threshold "
                               "before saving")
    return {"value": value, "origin": "calibrated" if origin == "calibrated now" else origin,
            "calibration": calibration}


def threshold_report(guard) -> dict[str, Any]:
    """The guard's threshold and where it came from, as reports and ``/readyz`` give them (JSON keys)."""
    return {"threshold": guard.threshold, "threshold_origin": guard.threshold_origin}


def threshold_line(guard, per_concept: bool = False) -> str:
    """The guard's threshold for a status line: ``threshold 9.01 (released)``; with ``per_concept``, how many
    concepts have their own (when any)."""
    own = len(guard.options.per_concept) if per_concept else 0
    return f"threshold {guard.threshold:g} ({guard.threshold_origin})" + (f" (+{own} per-concept)" if own else "")


def scoring_slope(guard) -> float | None:  # the probability slope the guard's scores use (None: the default)
    return guard.slope


def choose(value: float | str, *, checkpoint: str | Path | None = None, bundle=None, sha256: str | None = None,
           encoder_identity: str | None = None):
    """THE threshold resolution: a number, a published name, ``calibrated`` or ``auto`` (read from the bundle when
    there is one, else the record beside ``checkpoint``) -> a :class:`~latentguard.decision.threshold.ThresholdChoice`;
    with ``encoder_identity``, a calibration record is checked to be for that encoder."""
    from ..decision.threshold import choose_threshold, validate_record_encoder

    choice = bundle.threshold_choice(value) if bundle is not None else \
        choose_threshold(value, checkpoint, sha256=sha256)
    if choice.record is not None and encoder_identity is not None:
        validate_record_encoder(choice.record, encoder_identity, choice.record_path)
    return choice


class BoundOptions:
    """The options a guard checks against its blacklist and model, as its settable properties: ``threshold``,
    ``concept_thresholds``, ``categories``, ``default_category`` (read-only), ``allowlist``, ``slope``. Each is
    checked here when set, so no later call meets a bad one; :attr:`options` is the snapshot of all of them.
    Mixed into :class:`~latentguard.guard.LatentGuard` (which holds ``model``, ``encoder``, ``checkpoint``,
    ``bundle``, ``_concepts``, ``_categories`` and ``_options``), so its module names none of them."""

    def _bind_threshold(self, options: GuardOptions, choice) -> None:
        """The threshold of a guard being built: the loader's ``choice`` (:func:`choose`), else the options'."""
        self.threshold = options.threshold if choice is None else choice.value
        self.threshold_origin = "given" if choice is None else choice.origin  # where the threshold came from
        warn_published_for_other_weights(self, self.threshold_origin, self.threshold)
        self.threshold_record = None if choice is None else choice.record  # its CalibrationResult, if any

    def _bind_blacklist(self, options: GuardOptions) -> None:
        """The options of a guard being built that name its concepts, set once its blacklist is encoded."""
        if options.categories:
            self.categories = options.categories
        self.concept_thresholds = options.concept_thresholds or {}
        self.allowlist = options.allowlist or []
        self.slope = options.slope
        warn_blacklist_differs(self)

    def _forget(self, dropped: set[str]) -> None:
        """Concepts left the blacklist: their own thresholds go with them (added back, they start from the global)."""
        self._concept_thresholds = {c: t for c, t in self._concept_thresholds.items() if c not in dropped}

    def _calibrated(self, result) -> None:
        """Apply a :class:`~latentguard.decision.threshold.CalibrationResult`: its threshold with the slope fitted
        at it (a slope belongs to the threshold it was fit at)."""
        self.threshold, self.slope = result.threshold, result.slope
        self.threshold_origin, self.threshold_record = "calibrated now", result

    @property
    def threshold(self) -> float:
        """The global threshold; checked when set (a number or a name), so no later call meets a bad one."""
        return self._threshold

    @threshold.setter
    def threshold(self, value) -> None:
        from ..model import validate_reachable

        named = None
        if isinstance(value, str):
            choice = choose(value, checkpoint=self.checkpoint, bundle=self.bundle,
                            encoder_identity=getattr(self.encoder, "identity", None))
            value, named = choice.value, choice.origin
        self._threshold = validate_reachable(finite_number(value, "threshold"), self.model)
        self.threshold_origin = "given"
        warn_published_for_other_weights(self, named or "", self._threshold)  # a published name only

    @property
    def concept_thresholds(self) -> dict[str, float]:
        """Per-concept thresholds ``{concept: threshold}``; others use :attr:`threshold`."""
        return dict(self._concept_thresholds)

    @concept_thresholds.setter
    def concept_thresholds(self, value: Mapping[str, float]) -> None:
        from ..model import validate_reachable

        if not isinstance(value, Mapping) or not all(isinstance(c, str) for c in value):
            raise LatentGuardError(f"concept_thresholds must map concept names to numbers, got {value!r:.80}")
        unknown = sorted(set(value) - set(self._concepts))
        if unknown:
            raise LatentGuardError(f"concept_thresholds names concept(s) not on the blacklist: {', '.join(unknown)}")
        self._concept_thresholds = {c: validate_reachable(finite_number(t, f"threshold of '{c}'"), self.model,
                                                       f"the threshold of '{c}'") for c, t in value.items()}

    @property
    def allowlist(self) -> list[str]:
        """Phrases cut out of every prompt before scoring (see :mod:`latentguard.guard.guard`)."""
        return list(self._allowlist)

    @allowlist.setter
    def allowlist(self, phrases: Iterable[str]) -> None:
        from .allowlist import compile_allowlist

        self._allowlist, self._allow_re = compile_allowlist(phrases)

    @property
    def categories(self) -> dict[str, list[str]]:
        """Category name -> its concepts (a copy); a category is flagged when any of its concepts fires."""
        return self._categories.as_dict()

    @categories.setter
    def categories(self, mapping: Mapping[str, Sequence[str]]) -> None:
        self._categories.replace(mapping, self._concepts)

    @property
    def default_category(self) -> str:
        """The category of concepts no group names (a flat blacklist's one category)."""
        return self._categories.default

    @property
    def slope(self) -> float | None:
        """The fitted probability slope, or ``None`` when uncalibrated (the default slope is used)."""
        return self._slope

    @slope.setter
    def slope(self, value: float | None) -> None:
        from ..decision.probability import validate_slope

        self._slope = None if value is None else validate_slope(value)

    @property
    def _slope_used(self) -> float:
        """The slope probabilities are computed with: the fitted one, else the default."""
        from ..decision.probability import DEFAULT_SLOPE

        return self._slope or DEFAULT_SLOPE

    @property
    def options(self) -> GuardOptions:
        """How this guard judges now, as one :class:`GuardOptions` (a snapshot: the threshold, slope and
        blacklist-bound options as they stand after calibration or blacklist changes)."""
        return replace(self._options, threshold=self.threshold, concept_thresholds=self.concept_thresholds,
                       categories=self.categories, default_category=self.default_category,
                       allowlist=tuple(self.allowlist), slope=self.slope)

    def thresholds(self):
        """The threshold of every blacklisted concept, in blacklist order ``[C]`` (float64)."""
        import numpy as np

        return np.array([self._concept_thresholds.get(c, self.threshold) for c in self._concepts], dtype=np.float64)
