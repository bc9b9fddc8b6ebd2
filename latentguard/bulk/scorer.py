"""Verdict columns for a batch of texts, and :class:`GuardBatchScorer`, the callable that adds them
to a batch in any engine (Ray Data, Hugging Face ``datasets``, Spark, plain Python).

Every number comes from the guard: ``LatentGuard.check`` scores the texts in its own batches and
decides them with :mod:`latentguard.decision.rule`; this module only lays the verdicts out as columns.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from ..errors import LatentGuardError

# refused: null when judged; why the guard refused to judge the row (text it cannot read: the row is blocked)
VERDICT_COLUMNS = ("score", "unsafe", "concept", "truncated", "refused")
TEXT_COLUMNS = ("concept", "refused", "sanitized", "removed")  # the string columns a scorer adds
SANITIZE_COLUMNS = ("sanitized", "removed", "passes")  # the edited text, the words cut (";"-joined), it passes
CATEGORY_PREFIX = "category_"


def category_columns(guard) -> dict[str, str]:
    """Column name -> category: one boolean column per category of a grouped blacklist; none for a flat
    one, whose single category is the verdict itself (``unsafe``)."""
    options = guard.options
    groups = options.groups()
    if groups == [options.fallback_category]:
        return {}
    return {CATEGORY_PREFIX + name: name for name in groups}


def output_columns(guard, sanitize: bool = False) -> list[str]:
    """The columns a scorer adds, in order."""
    return [*VERDICT_COLUMNS, *category_columns(guard), *(SANITIZE_COLUMNS if sanitize else ())]


def sanitize_columns(guard, texts: Sequence[str], unsafe: np.ndarray) -> dict[str, np.ndarray]:
    """``sanitized``, ``removed`` and ``passes`` for ``texts``: a safe text is its own sanitized text (passes);
    each distinct flagged one is edited by ``guard.sanitize`` (:mod:`latentguard.guard.sanitize`) once."""
    texts = list(texts)
    edited = np.array(texts, dtype=object)
    removed = np.full(len(texts), "", dtype=object)
    passes = ~np.asarray(unsafe, dtype=bool)
    flagged, inverse = distinct([t for t, u in zip(texts, unsafe) if u])
    if flagged:
        results = guard.sanitize(flagged)
        if len(results) != len(flagged) or any(r.prompt != t for r, t in zip(results, flagged)):
            raise LatentGuardError(f"the guard gave {len(results)} sanitized texts for {len(flagged)}; refusing")
        at = np.flatnonzero(np.asarray(unsafe, dtype=bool))
        # A text that does not pass is never written as "sanitized" (None: nothing a consumer could use).
        edited[at] = np.array([results[k].text if results[k].passes is True else None for k in inverse],
                              dtype=object)
        removed[at] = np.array([";".join(results[k].removed) for k in inverse], dtype=object)
        passes[at] = [results[k].passes is True for k in inverse]
    return {"sanitized": edited, "removed": removed, "passes": passes}


def verdict_columns(guard, texts: Sequence[str]) -> dict[str, np.ndarray]:
    """``score`` (float32, the best logit), ``unsafe``, ``concept`` (the deciding one), ``truncated``,
    ``refused`` and the category columns for ``texts``, from ``guard.check`` (explanations off). A text the
    guard refuses to read fails closed on its own row (:func:`~latentguard.guard.refusals.check_or_refused`:
    unsafe, every category flagged, no concept, ``refused`` naming why); the other rows are judged as usual."""
    from ..guard.refusals import check_or_refused

    verdicts = check_or_refused(guard, list(texts), explain=False)
    if len(verdicts) != len(texts):  # fail closed: a missing verdict never becomes a safe row
        raise LatentGuardError(f"the guard gave {len(verdicts)} verdicts for {len(texts)} texts; refusing")
    score = np.array([v.score for v in verdicts], dtype=np.float32)
    if not np.isfinite(score).all():
        raise LatentGuardError("the guard gave a non-finite score; refusing")
    columns = {"score": score, "unsafe": np.array([v.unsafe for v in verdicts], dtype=bool),
               "concept": np.array([None if v.refused else v.concept for v in verdicts], dtype=object),
               "truncated": np.array([v.truncated for v in verdicts], dtype=bool),
               "refused": np.array([v.refused for v in verdicts], dtype=object)}
    for column, name in category_columns(guard).items():
        columns[column] = np.array([v.categories[name] for v in verdicts], dtype=bool)
    return columns


def distinct(texts: Sequence[str]) -> tuple[list[str], np.ndarray]:
    """The distinct texts in first-seen order and, for each text, its place among them."""
    index: dict[str, int] = {}
    inverse = np.fromiter((index.setdefault(t, len(index)) for t in texts), dtype=np.int64, count=len(texts))
    return list(index), inverse


def score_texts(guard, texts: Sequence[str], dedup: bool = True, sanitize: bool = False) -> dict[str, np.ndarray]:
    """Verdict columns for every text; with ``dedup`` each distinct text is scored once; with ``sanitize``
    also :func:`sanitize_columns`."""
    if not dedup:
        columns = verdict_columns(guard, texts)
    else:
        unique, inverse = distinct(texts)
        columns = {name: values[inverse] for name, values in verdict_columns(guard, unique).items()}
    if sanitize:
        columns.update(sanitize_columns(guard, texts, columns["unsafe"]))
    return columns


def validate_texts(values: Sequence, where: str) -> list[str]:
    """The batch's texts as ``str``, or refuse naming the first row that has none (a null never passes)."""
    if isinstance(values, (str, bytes)):  # one example (datasets.map without batched=True): never its characters
        raise LatentGuardError(f"{where} holds one {type(values).__name__}, not a column of texts; pass batches "
                               "(datasets.map(..., batched=True)) or a list of texts")
    texts = []
    for i, value in enumerate(values):
        if not isinstance(value, str):  # numpy's str_ is a str
            what = "no text" if value is None else f"a {type(value).__name__}, not text"
            raise LatentGuardError(f"{where}: row {i} of the batch has {what}; every row needs a text")
        texts.append(str(value))
    return texts


class GuardBatchScorer:
    """Add verdict columns to a batch: a dict of columns, a pandas DataFrame or a pyarrow Table in,
    the same kind out with ``score``, ``unsafe``, ``concept``, ``truncated`` (and ``category_<name>``
    for a grouped blacklist) added.

    The guard is built on first use, once per copy: pickling drops it (so Ray, Spark or ``datasets``
    ship only the recipe and each worker loads the model once). Describe it with ``config`` (a
    :class:`~latentguard.config.Config` or a YAML path) and/or ``LatentGuard.from_pretrained`` keyword
    arguments (``checkpoint=``, ``encoder=``, ``concepts=``, ``threshold=``, ``device=``, ...), or
    pass a built ``guard`` for in-process use. ``expect``: the guard identity a driver recorded
    (:func:`latentguard.bulk.manifest.guard_identity`, with ``sanitize=`` as here: the edit options and the
    code are in it); a worker whose guard differs refuses.
    ``dedup``: each distinct text of a batch is scored once. ``sanitize``: also the columns ``sanitized``,
    ``removed`` and ``passes`` (:func:`sanitize_columns`).
    """

    def __init__(self, config: Any = None, *, text_column: str = "text", dedup: bool = True,
                 expect: Mapping | None = None, guard=None, sanitize: bool = False, **guard_options: Any) -> None:
        if not isinstance(text_column, str) or not text_column:
            raise LatentGuardError(f"text_column must be a column name, got {text_column!r}")
        self.config = config
        self.text_column = text_column
        self.dedup = bool(dedup)
        self.sanitize = bool(sanitize)
        self.expect = dict(expect) if expect is not None else None
        self.guard_options = guard_options
        self._guard = guard
        self._given = guard is not None

    @property
    def guard(self):
        """The guard, built on first use (checked against ``expect``)."""
        if self._guard is None:
            self._guard = self._build()
        return self._guard

    def _build(self):
        from ..guard import LatentGuard

        if self.config is None:
            guard = LatentGuard.from_pretrained(**self.guard_options)
        else:
            cfg = self.config
            if isinstance(cfg, (str, Path)):
                from ..config import load_config
                from ..encoders.precision import apply_precision

                cfg, _ = apply_precision(load_config(cfg))
            guard = LatentGuard.from_config(cfg, **self.guard_options)
        if self.expect is not None:
            from .manifest import guard_differences, guard_identity

            differences = guard_differences(self.expect, guard_identity(guard, sanitize=self.sanitize))
            if differences:
                raise LatentGuardError("this worker's guard is not the one the run recorded (" + "; ".join(differences)
                                       + "): every worker must see the same weights, encoder, blacklist files, "
                                         "options and latentguard code")
        return guard

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        if not self._given:
            state["_guard"] = None  # the recipe travels, the model is loaded where it runs
        return state

    def columns(self) -> list[str]:
        """The columns this scorer adds."""
        return output_columns(self.guard, self.sanitize)

    def __call__(self, batch):
        """``batch`` with the verdict columns added (the same type: dict, DataFrame or pyarrow Table)."""
        kind, names, values = _texts_of(batch, self.text_column)
        taken = [c for c in self.columns() if c in names]
        if taken:
            raise LatentGuardError(f"the batch already has column(s) {', '.join(taken)}; rename them before scoring")
        texts = validate_texts(values, f"column '{self.text_column}'")
        columns = score_texts(self.guard, texts, self.dedup, self.sanitize)
        return _with_columns(batch, kind, columns)


def _texts_of(batch, column: str) -> tuple[str, list[str], Sequence]:
    """(kind, column names, the text column's values) of a dict, DataFrame or pyarrow Table."""
    if isinstance(batch, Mapping):
        kind, names = "dict", list(batch)
        values = batch.get(column) if column in batch else None
    elif type(batch).__module__.startswith("pyarrow") and hasattr(batch, "schema"):
        kind, names = "arrow", list(batch.schema.names)
        values = batch.column(column).to_pylist() if column in names else None
    elif type(batch).__module__.startswith("pandas") and hasattr(batch, "columns"):
        kind, names = "pandas", [str(c) for c in batch.columns]
        labels = [c for c in batch.columns if str(c) == column]
        if len(labels) > 1:
            raise LatentGuardError(f"the batch has {len(labels)} columns named '{column}'; rename them before scoring")
        values = batch[labels[0]].tolist() if labels else None
    else:
        raise LatentGuardError(f"a batch must be a dict of columns, a pandas DataFrame or a pyarrow Table, got "
                               f"{type(batch).__name__}")
    if values is None:
        raise LatentGuardError(f"the batch has no column '{column}' (it has {', '.join(map(str, names))}); "
                               "set text_column")
    if isinstance(values, np.ndarray):
        values = values.tolist()
    return kind, names, values


def _with_columns(batch, kind: str, columns: dict[str, np.ndarray]):
    if kind == "dict":
        as_lists = any(isinstance(v, list) for v in batch.values())  # datasets.map gives lists: answer in kind
        added = {k: (v.tolist() if as_lists else v) for k, v in columns.items()}
        return {**batch, **added}
    if kind == "pandas":
        return batch.assign(**{k: v for k, v in columns.items()})
    import pyarrow as pa

    for name, values in columns.items():
        text = name in TEXT_COLUMNS
        kind_of = pa.float32() if name == "score" else pa.string() if text else pa.bool_()
        batch = batch.append_column(name, pa.array(values.tolist() if text else values, type=kind_of))
    return batch
