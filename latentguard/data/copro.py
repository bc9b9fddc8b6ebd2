"""CoPro: loading, strict validation, a leakage-free validation split and the synonym/adversarial
test variants (as the released test.py builds them).

Everything downstream (prepare, train, evaluate) reads the dataset through :func:`load_copro`, so
the rules that decide which texts exist live in one place: which splits there are, how a missing
validation split is carved out of the training data, and how the Synonym / Adversarial variants
of the released ``test.py`` are built. A bad file stops here with one line that names the file,
the key and the entry, instead of failing hours later inside training.
"""
from __future__ import annotations

import json
import random
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..downloads import download as _download
from ..errors import LatentGuardError
from ..io import atomic_write_text, sha256_of, unique
from ..published import COPRO_GIT_BLOB, COPRO_URL
from .text import validate_text

DEFAULT_DATASET = Path("dataset/CoPro_v1.0.json")
RELEASED_NAME = DEFAULT_DATASET.name

SPLIT_NAMES = ("ID_train_data", "ID_valid_data", "ID_test_data", "OOD_valid_data", "OOD_test_data")
# The splits a usable file must have; the OOD part may be absent (a custom blacklist has no OOD
# concepts), but OOD concepts and OOD test data must then be absent together.
REQUIRED_KEYS = ("ID_concepts", "ID_train_data", "ID_test_data")
VARIANT_KINDS = ("synonym", "adversarial")
_ENTRY_FIELDS = ("concept", "unsafe_prompt", "safe_prompt")


@dataclass(frozen=True)
class Triplet:
    """One CoPro entry: an unsafe prompt, its safe rewrite, and the blacklisted concept it shows."""

    concept: str
    unsafe_prompt: str
    safe_prompt: str


@dataclass
class CoPro:
    """A validated CoPro file. Splits hold :class:`Triplet` lists; extra entry fields are dropped."""

    path: Path
    id_concepts: list[str]
    ood_concepts: list[str]
    splits: dict[str, list[Triplet]]
    synonyms: dict[str, str] = field(default_factory=dict)
    adversarial: dict[str, str] = field(default_factory=dict)
    valid_source: dict[str, str] = field(default_factory=dict)

    def concepts(self, domain: str) -> list[str]:
        """The blacklist of ``domain`` ("ID" or "OOD")."""
        if domain == "ID":
            return list(self.id_concepts)
        if domain == "OOD":
            return list(self.ood_concepts)
        raise LatentGuardError(f"unknown concept domain '{domain}' (use ID or OOD)")

    def has_split(self, name: str) -> bool:
        return name in self.splits

    def split(self, name: str) -> list[Triplet]:
        """The entries of split ``name``; a clear error when the file has no such split."""
        if name not in SPLIT_NAMES:
            raise LatentGuardError(f"unknown split '{name}' (known: {', '.join(SPLIT_NAMES)})")
        if name not in self.splits:
            have = ", ".join(s for s in SPLIT_NAMES if s in self.splits)
            raise LatentGuardError(f"{self.path}: has no '{name}' (it has {have})")
        return self.splits[name]

    def variant_pairs(self, split_name: str, kind: str) -> list[Triplet]:
        """The Synonym or Adversarial version of ``split_name`` (as the released ``test.py`` builds it).

        An entry is kept when its concept has *both* a synonym and an adversarial replacement and
        its unsafe prompt contains the concept literally, or else in ``str.capitalize()`` form; every
        occurrence of that form is replaced by the replacement text (``str.replace``). The safe
        prompt is unchanged, so the pairs stay balanced. ``[]`` when the file has no such data.
        """
        if kind not in VARIANT_KINDS:
            raise LatentGuardError(f"unknown variant kind '{kind}' (use synonym or adversarial)")
        pairs: list[Triplet] = []
        for entry in self.split(split_name):
            varied = self.variant_text(entry.unsafe_prompt, entry.concept, kind)
            if varied is not None:
                pairs.append(Triplet(entry.concept, varied, entry.safe_prompt))
        return pairs

    def variant_text(self, unsafe_prompt: str, concept: str, kind: str) -> str | None:
        """The Synonym or Adversarial version of one unsafe prompt, or ``None`` when the rule skips it.

        The one place the released replacement rule lives (see :meth:`variant_pairs`); the release
        parity check (:mod:`latentguard.eval.parity`) rebuilds single scored texts with it.
        """
        if kind not in VARIANT_KINDS:
            raise LatentGuardError(f"unknown variant kind '{kind}' (use synonym or adversarial)")
        if concept not in self.synonyms or concept not in self.adversarial:
            return None
        replacement = (self.synonyms if kind == "synonym" else self.adversarial)[concept]
        if concept in unsafe_prompt:
            return unsafe_prompt.replace(concept, replacement)
        if concept.capitalize() in unsafe_prompt:
            return unsafe_prompt.replace(concept.capitalize(), replacement)
        return None

    def all_texts(self) -> list[str]:
        """Every text prepare.py must encode, deduplicated in a stable order.

        Concepts (ID then OOD), the unsafe and safe prompts of every split, then the variant unsafe
        prompts of the test and validation splits (training never sees variants).
        """
        texts: list[str] = list(self.id_concepts) + list(self.ood_concepts)
        for name in SPLIT_NAMES:
            for entry in self.splits.get(name, []):
                texts.append(entry.unsafe_prompt)
                texts.append(entry.safe_prompt)
        for name in SPLIT_NAMES:
            if name == "ID_train_data" or name not in self.splits:
                continue
            for kind in VARIANT_KINDS:
                texts.extend(pair.unsafe_prompt for pair in self.variant_pairs(name, kind))
        return unique(texts)

    def summary(self) -> str:
        """One line per split, for logs."""
        parts = [f"{len(self.id_concepts)} ID / {len(self.ood_concepts)} OOD concepts"]
        for name in SPLIT_NAMES:
            if name in self.splits:
                source = f" [{self.valid_source[name]}]" if name in self.valid_source else ""
                parts.append(f"{name}: {len(self.splits[name])}{source}")
        return "; ".join(parts)


def load_copro(
    path: str | Path | None = None,
    *,
    download: bool = True,
    valid_size: int = 3000,
    seed: int = 0,
) -> CoPro:
    """Load and validate a CoPro file; fetch the released one when the default file is missing.

    Only a missing file named like the released one (``CoPro_v1.0.json``, the default) is
    downloaded, so a typo in a custom path is an error rather than a silent swap of data. No
    SHA-256 is published for CoPro, so the digest of what was downloaded is printed and recorded
    beside the file in ``<file>.sha256``: later runs (and colleagues) can compare against it.

    When the file has no ``ID_valid_data``, ``valid_size`` entries (at most 10% of the training
    data) are carved out of ``ID_train_data`` with ``seed`` and removed from it, so validation never
    overlaps training; test splits are never touched. ``OOD_valid_data`` is only ever read from the
    file: there is no OOD training data to carve it from.
    """
    path = Path(path) if path is not None else DEFAULT_DATASET
    if not path.exists():
        if download and path.name == RELEASED_NAME:
            fetch_copro(path)
        else:
            hint = f"download {COPRO_URL} and save it as {path}"
            if path.name == RELEASED_NAME:
                hint += " (or allow the automatic download)"
            raise LatentGuardError(f"dataset not found: {path}; {hint}")
    if not path.is_file():
        raise LatentGuardError(f"dataset path is not a regular file: {path}")
    raw = _read_json(path)
    return _build(path, raw, valid_size=valid_size, seed=seed)


def fetch_copro(path: str | Path) -> Path:
    """Download the released CoPro to ``path``, verified against the git blob id the released
    repository publishes for it, and record its SHA-256 in ``<path>.sha256``."""
    path = Path(path)
    _download(COPRO_URL, path, sha256=None, what="CoPro dataset", git_blob=COPRO_GIT_BLOB)
    digest = sha256_of(path)
    record = path.with_name(path.name + ".sha256")
    atomic_write_text(record, f"{digest}  {path.name}\n")
    print(f"downloaded CoPro to {path}; verified against the released git blob {COPRO_GIT_BLOB}; "
          f"SHA-256 {digest} recorded in {record}")
    return path


def _read_json(path: Path) -> Any:
    from ..regular_files import open_regular_read

    try:
        with open_regular_read(path, "dataset") as handle:  # a FIFO in its place is refused, never waited on
            text = handle.read().decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise LatentGuardError(f"{path}: not valid UTF-8 at byte {exc.start}; re-save the file as UTF-8") from None
    except OSError as exc:
        raise LatentGuardError(f"cannot read dataset {path}: {exc.strerror or exc}") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise LatentGuardError(
            f"{path}: not valid JSON at line {exc.lineno}, column {exc.colno} ({exc.msg})"
        ) from None


def _build(path: Path, raw: Any, *, valid_size: int, seed: int) -> CoPro:
    if not isinstance(raw, dict):
        raise LatentGuardError(f"{path}: the top level must be a JSON object with CoPro keys, got {type(raw).__name__}")
    for key in REQUIRED_KEYS:
        if key not in raw:
            raise LatentGuardError(f"{path}: missing required key '{key}'")
    has_ood = ("OOD_concepts" in raw, "OOD_test_data" in raw)
    if has_ood[0] != has_ood[1]:
        present, absent = ("OOD_concepts", "OOD_test_data") if has_ood[0] else ("OOD_test_data", "OOD_concepts")
        raise LatentGuardError(f"{path}: has '{present}' but is missing '{absent}'")
    if "OOD_valid_data" in raw and not has_ood[0]:
        raise LatentGuardError(f"{path}: has 'OOD_valid_data' but is missing 'OOD_concepts'")

    id_concepts = _concept_list(path, raw, "ID_concepts")
    ood_concepts = _concept_list(path, raw, "OOD_concepts") if has_ood[0] else []
    splits = {name: _entries(path, raw, name) for name in SPLIT_NAMES if name in raw}
    if not splits["ID_train_data"]:
        raise LatentGuardError(f"{path}: 'ID_train_data' is empty; training needs at least one entry")
    synonyms = _replacements(path, raw, "concept_synonym")
    adversarial = _replacements(path, raw, "concept_adv")
    _warn_unknown_concepts(path, splits, set(id_concepts), set(ood_concepts))

    valid_source: dict[str, str] = {}
    for name in ("ID_valid_data", "OOD_valid_data"):
        if name in splits:
            valid_source[name] = "file"
    if "ID_valid_data" not in splits:
        train, valid = carve_validation(splits["ID_train_data"], valid_size, seed)
        if valid:
            splits["ID_train_data"] = train
            splits["ID_valid_data"] = valid
            valid_source["ID_valid_data"] = f"carved from ID_train_data (seed {seed}, {len(valid)} entries)"
    return CoPro(
        path=path,
        id_concepts=id_concepts,
        ood_concepts=ood_concepts,
        splits=splits,
        synonyms=synonyms,
        adversarial=adversarial,
        valid_source=valid_source,
    )


def _concept_list(path: Path, raw: dict, key: str) -> list[str]:
    value = raw[key]
    if not isinstance(value, list):
        raise LatentGuardError(f"{path}: '{key}' must be a list of strings, got {type(value).__name__}")
    for i, item in enumerate(value):
        if not isinstance(item, str) or not item.strip():
            raise LatentGuardError(f"{path}: {key}[{i}] must be a non-empty string, got {item!r}")
        validate_text(item, f"{path}: {key}[{i}]")
    if not value and key == "ID_concepts":
        raise LatentGuardError(f"{path}: 'ID_concepts' is empty; the blacklist needs at least one concept")
    return unique(value)


def _entries(path: Path, raw: dict, key: str) -> list[Triplet]:
    value = raw[key]
    if not isinstance(value, list):
        raise LatentGuardError(f"{path}: '{key}' must be a list of entries, got {type(value).__name__}")
    out: list[Triplet] = []
    for i, item in enumerate(value):
        if not isinstance(item, dict):
            raise LatentGuardError(f"{path}: {key}[{i}] must be an object with {', '.join(_ENTRY_FIELDS)}")
        for name in _ENTRY_FIELDS:
            if name not in item:
                raise LatentGuardError(f"{path}: {key}[{i}] is missing '{name}'")
            if not isinstance(item[name], str):
                raise LatentGuardError(
                    f"{path}: {key}[{i}] '{name}' must be a string, got {type(item[name]).__name__}"
                )
            validate_text(item[name], f"{path}: {key}[{i}] '{name}'")
        if not item["concept"].strip():
            raise LatentGuardError(f"{path}: {key}[{i}] has an empty 'concept'")
        out.append(Triplet(item["concept"], item["unsafe_prompt"], item["safe_prompt"]))
    return out


def _replacements(path: Path, raw: dict, key: str) -> dict[str, str]:
    """concept -> replacement text; a list value contributes its first element (as released)."""
    value = raw.get(key)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise LatentGuardError(f"{path}: '{key}' must be an object mapping concepts to text, "
                               f"got {type(value).__name__}")
    out: dict[str, str] = {}
    for concept, text in value.items():
        if isinstance(text, list):
            if not text:
                continue  # nothing to take the first element of: the concept has no entry
            text = text[0]
        if not isinstance(text, str):
            raise LatentGuardError(
                f"{path}: {key}[{concept!r}] must be a string or a list of strings, got {type(text).__name__}"
            )
        out[concept] = text
    return out


def _warn_unknown_concepts(path: Path, splits: dict[str, list[Triplet]], id_set: set[str], ood_set: set[str]) -> None:
    """Entries whose concept is not on their domain's blacklist still load, but say so once."""
    for name, entries in splits.items():
        known = id_set if name.startswith("ID_") else ood_set
        unknown = unique([e.concept for e in entries if e.concept not in known])
        if unknown:
            shown = ", ".join(repr(c) for c in unknown[:3]) + (" ..." if len(unknown) > 3 else "")
            domain = "ID" if name.startswith("ID_") else "OOD"
            warnings.warn(
                f"{path}: {name} uses {len(unknown)} concept(s) not in {domain}_concepts: {shown}",
                stacklevel=3,
            )


def carve_validation(train: list[Triplet], valid_size: int, seed: int) -> tuple[list[Triplet], list[Triplet]]:
    """Split ``train`` into (rest, validation) with a seeded draw, without leakage.

    At most 10% of the training entries are taken. Entries sharing an unsafe prompt move together
    (a duplicated prompt never sits on both sides), and every concept keeps at least one training
    entry, because training draws one pair per concept. Both lists keep the file's order.
    """
    if isinstance(valid_size, bool) or not isinstance(valid_size, int) or valid_size < 0:
        raise LatentGuardError(f"data.valid_size must be an integer >= 0, got {valid_size!r}")
    target = min(int(valid_size), len(train) // 10)
    if target <= 0:
        return list(train), []
    groups: dict[str, list[int]] = {}
    for i, entry in enumerate(train):
        groups.setdefault(entry.unsafe_prompt, []).append(i)
    order = list(groups)
    random.Random(seed).shuffle(order)
    left: dict[str, int] = {}
    for entry in train:
        left[entry.concept] = left.get(entry.concept, 0) + 1
    chosen: set[int] = set()
    for prompt in order:
        if len(chosen) >= target:
            break
        members = groups[prompt]
        if len(chosen) + len(members) > target:
            continue
        need: dict[str, int] = {}
        for i in members:
            need[train[i].concept] = need.get(train[i].concept, 0) + 1
        if any(left[c] - n < 1 for c, n in need.items()):
            continue
        for c, n in need.items():
            left[c] -= n
        chosen.update(members)
    rest = [e for i, e in enumerate(train) if i not in chosen]
    valid = [e for i, e in enumerate(train) if i in chosen]
    return rest, valid
