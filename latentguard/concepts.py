"""The concept blacklist: where it comes from, and a disk cache of its encoded vectors.

A blacklist is a list of short texts (concepts). It is read from a text file, a YAML file, or by
default from the ``ID_concepts`` of CoPro. Encoding 578 concepts through CLIP costs seconds on a
CPU, so concept vectors are cached on disk per encoder, concept by concept: editing the blacklist
re-encodes only the concepts that are new to that encoder.

File formats accepted by :func:`load_concepts`:

* text (any extension other than ``.yaml``/``.yml``): one concept per line, UTF-8; blank lines
  and lines starting with ``#`` are skipped; surrounding whitespace is stripped.
* YAML (``.yaml``/``.yml``), one of:

  - a list of concepts: ``[knife, blood]``;
  - a mapping with the reserved key ``concepts`` (a list, or a mapping of groups) and optionally
    ``thresholds`` (``{concept: number}``: per-concept thresholds, see :func:`load_blacklist`);
  - a mapping of groups, ``{violence: [knife, gun], drugs: [cocaine]}``: the groups are flattened
    in file order (group names are for the reader; they are not concepts).

Duplicates are dropped (first occurrence kept); an empty blacklist is an error.
"""
from __future__ import annotations

import hashlib
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from .errors import LatentGuardError
from .io import cache_home, read_lines, unique

YAML_SUFFIXES = (".yaml", ".yml")


@dataclass
class Blacklist:
    """Concepts in order, plus optional per-concept thresholds read from the same file."""

    concepts: list[str]
    thresholds: dict[str, float] = field(default_factory=dict)


def load_concepts(path_or_none: str | Path | None = None, *, dataset: str | Path | None = None) -> list[str]:
    """Read a blacklist file (text or YAML), or CoPro's ``ID_concepts`` when ``path_or_none`` is None.

    ``dataset`` is the CoPro file used for the default (the released file is downloaded when it is
    the default name and missing). Errors name the file and the line or entry.
    """
    return load_blacklist(path_or_none, dataset=dataset).concepts


def load_blacklist(path_or_none: str | Path | None = None, *, dataset: str | Path | None = None) -> Blacklist:
    """Like :func:`load_concepts`, keeping the per-concept ``thresholds`` a YAML file may carry."""
    if path_or_none is None:
        from .data import load_copro

        return Blacklist(load_copro(dataset).concepts("ID"))
    path = Path(path_or_none)
    if path.suffix.lower() in YAML_SUFFIXES:
        return _load_yaml(path)
    return Blacklist(_load_text(path))


def check_concepts(concepts: Sequence[str], source: str = "concept list") -> list[str]:
    """Validate an in-memory blacklist: non-empty strings, stripped, deduplicated."""
    if isinstance(concepts, (str, bytes)):
        raise LatentGuardError(f"{source}: expected a list of concepts, got a single string {concepts!r}")
    out = []
    for i, item in enumerate(concepts):
        if not isinstance(item, str) or not item.strip():
            raise LatentGuardError(f"{source}: entry {i} must be a non-empty string, got {item!r}")
        out.append(item.strip())
    if not out:
        raise LatentGuardError(f"{source} is empty: the blacklist needs at least one concept")
    return unique(out)


def _load_text(path: Path) -> list[str]:
    lines = [line for line in read_lines(path, what="concepts file") if not line.startswith("#")]
    if not lines:
        raise LatentGuardError(f"concepts file has only comments: {path} (put one concept per line)")
    return unique(lines)


def _load_yaml(path: Path) -> Blacklist:
    import yaml

    if not path.is_file():
        raise LatentGuardError(f"concepts file not found: {path}")
    try:
        raw = yaml.safe_load(path.read_bytes().decode("utf-8-sig"))
    except UnicodeDecodeError as exc:
        raise LatentGuardError(f"{path}: not valid UTF-8 at byte {exc.start}; re-save the file as UTF-8") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise LatentGuardError(f"{path}: not valid YAML{where}; fix the syntax") from None
    thresholds: dict[str, float] = {}
    if isinstance(raw, Mapping) and "concepts" in raw:
        unknown = sorted(set(raw) - {"concepts", "thresholds"})
        if unknown:
            raise LatentGuardError(f"{path}: unknown key(s) {', '.join(map(str, unknown))} "
                                   "(a file with 'concepts' may only also have 'thresholds')")
        concepts = _flatten(path, raw["concepts"], "concepts")
        thresholds = _thresholds(path, raw.get("thresholds"))
    else:
        concepts = _flatten(path, raw, "")
    if not concepts:
        raise LatentGuardError(f"{path}: no concepts found (use a list, or 'concepts: [...]')")
    missing = [c for c in thresholds if c not in concepts]
    if missing:
        raise LatentGuardError(f"{path}: thresholds given for concept(s) not in the list: {', '.join(missing)}")
    return Blacklist(unique(concepts), thresholds)


def _flatten(path: Path, node: Any, where: str) -> list[str]:
    """A list of strings, or a mapping of group name -> list of strings, flattened in order."""
    label = f"'{where}'" if where else "the top level"
    if isinstance(node, list):
        out = []
        for i, item in enumerate(node):
            if not isinstance(item, (str, int, float)) or isinstance(item, bool) or not str(item).strip():
                raise LatentGuardError(f"{path}: {where or 'list'}[{i}] must be a non-empty concept text, got {item!r}")
            out.append(str(item).strip())
        return out
    if isinstance(node, Mapping):
        out = []
        for group, items in node.items():
            if not isinstance(items, list):
                raise LatentGuardError(f"{path}: group '{group}' must be a list of concepts, got {type(items).__name__}")
            out.extend(_flatten(path, items, f"{where + '.' if where else ''}{group}"))
        return out
    raise LatentGuardError(f"{path}: {label} must be a list of concepts or a mapping of groups, "
                           f"got {type(node).__name__}")


def _thresholds(path: Path, node: Any) -> dict[str, float]:
    if node is None:
        return {}
    if not isinstance(node, Mapping):
        raise LatentGuardError(f"{path}: 'thresholds' must map concepts to numbers, got {type(node).__name__}")
    out = {}
    for concept, value in node.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise LatentGuardError(f"{path}: thresholds['{concept}'] must be a number, got {value!r}")
        out[str(concept).strip()] = float(value)
    return out


# ------------------------------------------------------------------------------- vector cache
def concept_cache_path(identity: str) -> Path:
    """The per-encoder cache file: one ``{concept: vector}`` table for each encoder identity."""
    digest = hashlib.sha256(identity.encode("utf-8")).hexdigest()[:24]
    return cache_home() / "concepts" / f"{digest}.pt"


def cached_concept_vectors(encoder, concepts: Sequence[str], *, batch_size: int = 64,
                           use_cache: bool = True) -> "torch.Tensor":  # noqa: F821
    """Concept vectors ``[C, hidden]`` (float32, CPU), encoding only concepts not cached for ``encoder``.

    The cache holds, per encoder identity, the rows of every concept ever encoded with it, so a
    second run (or an edited blacklist) costs only the new concepts. It is written atomically; a
    concurrent writer can only cause a later cache miss, never a wrong vector, because rows are
    keyed by concept text and the file by the encoder's weights fingerprint. An unreadable cache
    is ignored (and rewritten); an unwritable one only costs the encoding next time.
    """
    import torch

    concepts = list(concepts)
    if not concepts:
        return torch.empty(0, encoder.hidden_size)
    if not use_cache:
        return encoder.encode_concepts(concepts, batch_size=batch_size).float().cpu()
    path = concept_cache_path(encoder.identity)
    table = _read_cache(path, encoder.identity, encoder.hidden_size)
    new = [c for c in unique(concepts) if c not in table]
    if new:
        vectors = encoder.encode_concepts(new, batch_size=batch_size).float().cpu()
        table.update(zip(new, vectors))
        _write_cache(path, encoder.identity, table)
    return torch.stack([table[c] for c in concepts])


def _read_cache(path: Path, identity: str, hidden_size: int) -> dict:
    import torch

    if not path.is_file():
        return {}
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
        names, vectors = blob["concepts"], blob["vectors"]
        if blob.get("identity") != identity or vectors.shape != (len(names), hidden_size):
            return {}  # a hash collision or another layout: start afresh
    except Exception:  # noqa: BLE001 - a damaged cache is only a cache miss
        warnings.warn(f"ignoring unreadable concept cache {path}; it will be rebuilt", stacklevel=3)
        return {}
    return dict(zip(names, vectors.float()))


def _write_cache(path: Path, identity: str, table: Mapping) -> None:
    import torch

    from .io import atomic_torch_save

    names = list(table)
    blob = {"identity": identity, "concepts": names, "vectors": torch.stack([table[c] for c in names]).contiguous()}
    try:
        atomic_torch_save(blob, path)
    except OSError as exc:
        warnings.warn(f"cannot write concept cache {path} ({exc.strerror or exc}); concepts will be "
                      "re-encoded next time", stacklevel=3)
