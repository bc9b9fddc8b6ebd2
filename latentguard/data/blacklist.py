"""The concept blacklist and its file formats.

A blacklist is a list of short texts (concepts). It is read from a text file, a YAML file, or by
default from the ``ID_concepts`` of CoPro. (Its encoded vectors are cached per encoder by
:mod:`latentguard.store.concept_cache`.)

File formats accepted by :func:`load_concepts`:

* text (any extension other than ``.yaml``/``.yml``): one concept per line, UTF-8; blank lines
  and lines starting with ``#`` are skipped; surrounding whitespace is stripped.
* YAML (``.yaml``/``.yml``), one of:

  - a list of concepts: ``[knife, blood]``;
  - a mapping with the reserved key ``concepts`` (a list, or a mapping of groups) and optionally
    ``thresholds`` (``{concept: number}``: per-concept thresholds, see :func:`load_blacklist`);
  - a mapping of groups, ``{violence: [knife, gun], drugs: [cocaine]}``: the groups are the
    blacklist's *categories* (a category is flagged when any of its concepts fires); the concepts
    are flattened in file order (group names are not concepts).

Every entry is text: an unquoted entry YAML reads as a number, boolean, date or null (``- 5``,
``- 4:20``, ``- yes``, ``- null``) is refused, naming the file, the group and the entry, rather than
turned into the concept "5" or "null" (or 260): quote it (``- '4:20'``) to mean the text. A key given
twice is refused, naming its lines. Duplicates are dropped (first occurrence kept); an empty blacklist is an error.
"""
from __future__ import annotations

import math
import re
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from ..errors import LatentGuardError
from ..io import read_lines, unique
from ..yaml_files import YamlTyped
from .text import validate_text

YAML_SUFFIXES = (".yaml", ".yml")
_NOT_NUMBERS = ("nan", "+nan", "-nan", "inf", "+inf", "-inf", "infinity", "+infinity", "-infinity")


@dataclass
class Blacklist:
    """Concepts in order, optional per-concept thresholds, and the categories (groups) of a grouped file.

    ``categories`` maps a category name to its concepts, in file order; empty for a flat list (the
    guard then puts every concept in one category, named by ``inference.category``).
    """

    concepts: list[str]
    thresholds: dict[str, float] = field(default_factory=dict)
    categories: dict[str, list[str]] = field(default_factory=dict)


def load_concepts(path_or_none: str | Path | None = None, *, dataset: str | Path | None = None) -> list[str]:
    """Read a blacklist file (text or YAML), or CoPro's ``ID_concepts`` when ``path_or_none`` is None.

    ``dataset`` is the CoPro file used for the default (the released file is downloaded when it is
    the default name and missing). Errors name the file and the line or entry.
    """
    return load_blacklist(path_or_none, dataset=dataset).concepts


def load_blacklist(path_or_none: str | Path | None = None, *, dataset: str | Path | None = None) -> Blacklist:
    """Like :func:`load_concepts`, keeping the per-concept ``thresholds`` a YAML file may carry."""
    if path_or_none is None:
        from .copro import load_copro

        return Blacklist(load_copro(dataset).concepts("ID"))
    path = Path(path_or_none)
    if path.suffix.lower() in YAML_SUFFIXES:
        return _load_yaml(path)
    return Blacklist(_load_text(path))


def validate_concepts(concepts: Sequence[str], source: str = "concept list") -> list[str]:
    """Validate an in-memory blacklist: non-empty strings, stripped, deduplicated."""
    if isinstance(concepts, (str, bytes)):
        raise LatentGuardError(f"{source}: expected a list of concepts, got a single string {concepts!r}")
    if isinstance(concepts, Mapping) or not isinstance(concepts, Iterable):  # None, 5; a dict's keys read silently
        raise LatentGuardError(f"{source}: expected a str or a list of str, got {type(concepts).__name__}; "
                               "e.g. ['knife', 'gun']")
    out = []
    for i, item in enumerate(concepts):
        if not isinstance(item, str) or not item.strip():
            raise LatentGuardError(f"{source}: entry {i} must be a non-empty string, got {item!r}")
        out.append(validate_text(item, f"{source}: entry {i}").strip())
        if not _visible(out[-1]):
            raise LatentGuardError(f"{source}: entry {i} ({item!r}) has no visible character: a concept the encoder "
                                   "reads as nothing matches every prompt (remove it)")
        if any(unicodedata.category(ch) == "Cc" for ch in out[-1]):  # "a\x00b": no concept a reader would write
            raise LatentGuardError(f"{source}: entry {i} ({item!r}) holds a control character; write the concept as "
                                   "plain text")
    if not out:
        raise LatentGuardError(f"{source} is empty: the blacklist needs at least one concept")
    return unique(out)


def _visible(text: str) -> bool:
    """Whether ``text`` holds a character that is not a control, format, private-use or unassigned character, a
    separator or a lone combining mark: "\u200b" alone had been accepted as a concept and raised every score."""
    return any(unicodedata.category(ch)[0] not in "CZM" for ch in text)


def _load_text(path: Path) -> list[str]:
    lines = [line for line in read_lines(path, what="concepts file") if not line.startswith("#")]
    if not lines:
        raise LatentGuardError(f"concepts file has only comments: {path} (put one concept per line)")
    return unique(lines)


def _load_yaml(path: Path) -> Blacklist:
    from ..io import named_file_problem
    from ..yaml_files import read_yaml

    problem = named_file_problem(path, "concepts file")
    if problem is not None:  # missing, or a FIFO / device / directory: said as such
        raise LatentGuardError(problem)
    raw = read_yaml(path, "concepts file", scalars_as_text=True)  # entries are the texts written
    thresholds: dict[str, float] = {}
    if isinstance(raw, Mapping) and "concepts" in raw:
        unknown = sorted(set(raw) - {"concepts", "thresholds"})
        if unknown:
            raise LatentGuardError(f"{path}: unknown key(s) {', '.join(map(str, unknown))} "
                                   "(a file with 'concepts' may only also have 'thresholds')")
        concepts, categories = _flatten(path, raw["concepts"], "concepts")
        thresholds = _thresholds(path, raw.get("thresholds"))
    else:
        concepts, categories = _flatten(path, raw, "")
    if not concepts:
        raise LatentGuardError(f"{path}: no concepts found (use a list, or 'concepts: [...]')")
    missing = [c for c in thresholds if c not in concepts]
    if missing:
        raise LatentGuardError(f"{path}: thresholds given for concept(s) not in the list: {', '.join(missing)}")
    return Blacklist(unique(concepts), thresholds, {name: unique(items) for name, items in categories.items()})


def _flatten(path: Path, node: Any, where: str) -> tuple[list[str], dict[str, list[str]]]:
    """A list of concept texts, or a mapping of category -> list of texts: the concepts in order, and the categories."""
    label = f"'{where}'" if where else "the top level"
    if isinstance(node, list):
        out = []
        for i, item in enumerate(node):
            if not isinstance(item, str) or not item.strip():
                raise LatentGuardError(f"{path}: {where or 'list'}[{i}] must be a non-empty concept text, got {item!r}")
            if isinstance(item, YamlTyped):  # `- null` or `- 5` is no concept text: said, never loaded as 'null'
                raise LatentGuardError(f"{path}: {where or 'list'}[{i}] is {item} unquoted, which YAML reads as "
                                       f"{item.yaml_type}, not as a concept text; quote it ('{item}') if it is a "
                                       "concept, or remove it")
            out.append(item.strip())
        return out, {}
    if isinstance(node, Mapping):
        out, categories = [], {}
        for group, items in node.items():
            if not isinstance(items, list):
                raise LatentGuardError(f"{path}: group '{group}' must be a list of concepts, "
                                       f"got {type(items).__name__}")
            if not str(group).strip():
                raise LatentGuardError(f"{path}: a group needs a name (got an empty one)")
            if isinstance(group, YamlTyped):  # `1:` or `null:` as a category name: said, as for an entry
                raise LatentGuardError(f"{path}: group name {group} is unquoted, which YAML reads as "
                                       f"{group.yaml_type}, not as a name; quote it ('{group}') or rename it")
            concepts, _ = _flatten(path, items, f"{where + '.' if where else ''}{group}")
            if not concepts:  # a category no concept can flag would judge nothing (and break every verdict)
                raise LatentGuardError(f"{path}: group '{group}' has no concepts; give it at least one or remove it")
            if str(group).strip() in categories:  # "sex" and "sex " had been merged silently (a forty-first pass)
                raise LatentGuardError(f"{path}: group '{str(group).strip()}' is given twice (its names differ only "
                                       "in spaces around them); give each group once")
            categories[str(group).strip()] = concepts
            out.extend(concepts)
        return out, categories
    raise LatentGuardError(f"{path}: {label} must be a list of concepts or a mapping of groups, "
                           f"got {type(node).__name__}")


_EXPONENT = re.compile(r"[+-]?\d+(?:\.\d*)?[eE][+-]?\d+")  # "1e3": a number YAML 1.1 reads as text


def _thresholds(path: Path, node: Any) -> dict[str, float]:
    if node is None:
        return {}
    if not isinstance(node, Mapping):
        raise LatentGuardError(f"{path}: 'thresholds' must map concepts to numbers, got {type(node).__name__}")
    out = {}
    for concept, value in node.items():
        try:  # read as text (see _load_yaml): a number as written unquoted (YAML reads it as one), in ASCII digits;
            # a quoted '3' is text, and float() also reads "٥" and "1_0" (a forty-third hostile pass)
            number = float(value) if (isinstance(value, YamlTyped) and value.yaml_type in ("int", "float")
                                      or _EXPONENT.fullmatch(str(value))) \
                and value.isascii() and "_" not in value and value.strip().lower() not in _NOT_NUMBERS else None
        except ValueError:
            number = None
        if number is None or not math.isfinite(number):
            raise LatentGuardError(f"{path}: thresholds['{concept}'] must be a number (finite), got {value!r}")
        out[str(concept).strip()] = number
    return out
