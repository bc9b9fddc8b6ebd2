"""Open training data beyond CoPro's JSON: CoPro triplets as CSV, CoProV2 pairs, COCO captions.

These are the files the project's own training recipe (``configs/mini.yaml``, docs/recipe.md) reads.
Each known file's public source is recorded in :data:`DATA_FILES` (repository at a pinned commit,
path, license) with the SHA-256 of the exact bytes the built-in guard was trained on, so a run names
what it read and a different file is noticed (a warning: a user may train on their own files).

Every reader refuses a malformed file in one line naming the file, the line and what to fix: a
missing column, an empty prompt, an unpaired CoProV2 row, an unknown split. Nothing here decides
what is train or test: the CoPro ``test`` split and the CoProV2 test file are evaluation sets, and
the recipe refuses to train on them (:func:`load_copro_triplets` takes the splits to read).
"""
from __future__ import annotations

import csv
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

from ..csv_files import csv_problem, strict_dict_reader
from ..errors import LatentGuardError

__all__ = ["DATA_FILES", "CaptionSet", "CoProTriplet", "CoProV2Pair", "DataFile", "validate_known_file",
           "load_captions", "load_copro_triplets", "load_coprov2_pairs", "load_coprov2_test", "normalise_category"]


@dataclass(frozen=True)
class DataFile:
    """Where a data file comes from: public repository, pinned commit, path in it, license, SHA-256."""

    repository: str
    commit: str
    path: str
    license: str
    sha256: str
    note: str = ""

    @property
    def url(self) -> str:
        return f"https://raw.githubusercontent.com/{self.repository}/{self.commit}/{self.path}"


DATA_FILES: dict[str, DataFile] = {
    "copro_real.csv": DataFile(
        "cmu-anlp-spring25/LatentGuard", "fa041b555bebc00e5c1a0166b110b70ba951abbe",
        "predictions/{valid,test}/is_train_concepts_{True,False}/explicit.csv", "BSD-3-Clause",
        "7cade9cd78c2c121d011515e08fee6fb4b3f03a79419c8a9f8a4540c98e04fb3",
        "the four explicit.csv files joined (split, concepts columns added), exact repeats dropped, the leading "
        "space of safe prompts stripped"),
    "coprov2_train.csv": DataFile(
        "Visualignment/SafetyDPO", "5f71f8db885f096f84abd391f48e49e78b32e8d1", "data/CoProv2_train.csv", "MIT",
        "ab6f8b3d5b654fa9fce729b3dbddc66e5ebced9eeecedb7515c7ee75e4e5bff0",
        "less the 906 pairs whose unsafe prompt is in the CoProV2 test file"),
    "coprov2_test.csv": DataFile(
        "Visualignment/SafetyDPO", "5f71f8db885f096f84abd391f48e49e78b32e8d1", "data/CoProv2_test.csv", "MIT",
        "b197ed86d7a8aefcb82774c296371b12dbca2b4a7fd0c760d95a399f04901ae5", "byte-identical; evaluation only"),
    "coco_captions_train.csv": DataFile(
        "rohitgandikota/erasing", "25613d27892326e0c7770f7f3555bea4be150089", "data/coco_30k.csv",
        "CC BY 4.0 (COCO annotations)", "91ff906d63397f2a3f4107a9dfefdea934808ddeb7a337f3a8fae8db5f59f76b",
        "less the rows whose caption is in an evaluation set (I2P's COCO captions, P4D, the COCO-30k sample)"),
}

# CoProV2's category spellings (one misspelt upstream) -> the guard's category names.
CATEGORIES = {"hate": "hate", "harrasment": "harassment", "harassment": "harassment", "violence": "violence",
              "self-harm": "self-harm", "sexual": "sexual", "shocking": "shocking",
              "illegal activity": "illegal-activity"}
_COPROV2_IMAGE = re.compile(r"(?:(?P<side>[us])_idx_)?(?P<n>\d+)_\d+\.jpg")


def normalise_category(name: str, where: str) -> str:
    """The guard's name of a CoProV2 category (``Harrasment`` -> ``harassment``); unknown ones refused."""
    key = name.strip().lower()
    if key not in CATEGORIES:
        raise LatentGuardError(f"{where}: unknown category {name!r} (known: {', '.join(sorted(set(CATEGORIES)))})")
    return CATEGORIES[key]


@dataclass(frozen=True)
class CoProTriplet:
    unsafe: str
    safe: str
    concept: str
    split: str      # valid | test
    in_domain: bool  # one of Latent Guard's 578 training concepts (ID) or an unseen one (OOD)


@dataclass(frozen=True)
class CoProV2Pair:
    unsafe: str
    safe: str
    category: str
    pair: int


@dataclass(frozen=True)
class CaptionSet:
    path: Path
    captions: list[str]


def validate_known_file(path: str | Path) -> str:
    """The file's SHA-256; warns when a file named like a known one holds other bytes (a user's own
    data is allowed, but the run must not claim to be the documented one)."""
    from ..io import sha256_of

    path = Path(path)
    digest = sha256_of(path)
    known = DATA_FILES.get(path.name)
    if known is not None and digest != known.sha256:
        warnings.warn(f"{path}: SHA-256 {digest[:12]}... is not that of the documented {path.name} "
                      f"({known.sha256[:12]}...); results will not match docs/recipe.md", stacklevel=2)
    return digest


def _rows(path: str | Path, columns: Sequence[str], refused: dict[str, str] | None = None
          ) -> Iterator[tuple[int, dict[str, str]]]:
    """``(line number, row)`` of a CSV file that must have ``columns`` and none of ``refused`` (column -> why,
    said in the refusal); one-line errors otherwise."""
    path = Path(path)
    if not path.is_file():
        raise LatentGuardError(f"{path}: no such file; pass the path of the data file (docs/recipe.md lists "
                               "where each one comes from)")
    try:
        handle = path.open(encoding="utf-8-sig", newline="")
    except OSError as exc:
        raise LatentGuardError(f"cannot read {path} ({exc.strerror or exc})") from None
    with handle:
        reader = strict_dict_reader(handle)
        try:
            header = reader.fieldnames or []
        except UnicodeDecodeError as exc:
            raise LatentGuardError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
        except csv.Error as exc:
            raise LatentGuardError(f"{path}, line 1: malformed CSV header ({csv_problem(exc)})") from None
        missing = [c for c in columns if c not in header]
        if missing:
            raise LatentGuardError(f"{path}: missing column(s) {', '.join(missing)} (the header has "
                                   f"{', '.join(header) or 'nothing'}); expected {', '.join(columns)}")
        wrong = [c for c in (refused or {}) if c in header]
        if wrong:
            raise LatentGuardError(f"{path}: has a {wrong[0]!r} column: {(refused or {})[wrong[0]]}")
        if len(set(header)) != len(header):
            raise LatentGuardError(f"{path}: a column is named twice in the header ({', '.join(header)})")
        try:
            for row in reader:
                line = reader.line_num
                if None in row or any(row.get(c) is None for c in columns):
                    raise LatentGuardError(f"{path}, line {line}: {len(header)} columns expected; quote cells "
                                           "that hold commas")
                for column in columns:
                    if not row[column].strip():
                        raise LatentGuardError(f"{path}, line {line}: empty {column!r}; remove the row or fill it")
                yield line, row
        except UnicodeDecodeError as exc:
            raise LatentGuardError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
        except csv.Error as exc:
            raise LatentGuardError(f"{path}, line {reader.line_num}: {csv_problem(exc)}") from None


def load_copro_triplets(path: str | Path, splits: Sequence[str] = ("valid",)) -> list[CoProTriplet]:
    """CoPro triplets of ``splits`` from a CSV with split, concepts, concept, unsafe_prompt, safe_prompt."""
    allowed = {"valid", "test"}
    bad = [s for s in splits if s not in allowed]
    if bad:
        raise LatentGuardError(f"unknown CoPro split(s) {', '.join(bad)} (use valid or test)")
    out = []
    for line, row in _rows(path, ("split", "concepts", "concept", "unsafe_prompt", "safe_prompt")):
        split, domain = row["split"].strip(), row["concepts"].strip()
        if split not in allowed:
            raise LatentGuardError(f"{path}, line {line}: split {split!r} is not valid or test")
        if domain not in ("ID", "OOD"):
            raise LatentGuardError(f"{path}, line {line}: concepts {domain!r} is not ID or OOD")
        if split in splits:
            out.append(CoProTriplet(row["unsafe_prompt"], row["safe_prompt"], row["concept"].strip(), split,
                                    domain == "ID"))
    if not out:
        raise LatentGuardError(f"{path}: no triplets of split(s) {', '.join(splits)}")
    return out


def load_coprov2_pairs(path: str | Path) -> list[CoProV2Pair]:
    """CoProV2 train pairs: ``u_idx_N_0.jpg`` (unsafe) and ``s_idx_N_0.jpg`` (safe) rows of the same N
    and category form a pair; a row without its twin, or a test-format row, is refused."""
    unsafe: dict[tuple[int, str], tuple[int, str]] = {}
    safe: dict[tuple[int, str], tuple[int, str]] = {}
    for line, row in _rows(path, ("prompt", "image", "category")):
        match = _COPROV2_IMAGE.fullmatch(row["image"].strip())
        if match is None or match["side"] is None:
            raise LatentGuardError(f"{path}, line {line}: image {row['image']!r} is not u_idx_N_0.jpg or "
                                   "s_idx_N_0.jpg (a CoProV2 test file has no safe twins: it is for evaluation)")
        key = (int(match["n"]), normalise_category(row["category"], f"{path}, line {line}"))
        side = unsafe if match["side"] == "u" else safe
        if key in side:
            raise LatentGuardError(f"{path}, line {line}: pair {key[0]} ({key[1]}) has a second "
                                   f"{'unsafe' if side is unsafe else 'safe'} row (first at line {side[key][0]})")
        side[key] = (line, row["prompt"])
    lonely = sorted(set(unsafe) ^ set(safe))
    if lonely:
        n, category = lonely[0]
        line = (unsafe.get(lonely[0]) or safe.get(lonely[0]))[0]
        raise LatentGuardError(f"{path}, line {line}: pair {n} ({category}) has no "
                               f"{'safe' if lonely[0] in unsafe else 'unsafe'} twin ({len(lonely)} such rows)")
    return [CoProV2Pair(unsafe[k][1], safe[k][1], k[1], k[0]) for k in sorted(unsafe, key=lambda k: unsafe[k][0])]


def load_coprov2_test(path: str | Path) -> list[tuple[str, str]]:
    """``(prompt, category)`` of a CoProV2 test file (all unsafe; evaluation only)."""
    out = []
    for line, row in _rows(path, ("prompt", "image", "category")):
        out.append((row["prompt"], normalise_category(row["category"], f"{path}, line {line}")))
    return out


def load_captions(path: str | Path, column: str = "prompt") -> CaptionSet:
    """Benign captions (COCO) from a CSV ``column``; distinct, in file order. A file with a harm ``category``
    column (CoProV2's) holds unsafe prompts: calibrated on as benign, they raise the threshold until the guard
    flags nothing, so it is refused."""
    seen: dict[str, None] = {}
    why = ("a harm category marks unsafe prompts (a CoProV2 file?), and captions are the benign text the guard is "
           f"calibrated on; give a CSV of benign captions (a {column!r} column, no 'category'), such as COCO's")
    for _, row in _rows(path, (column,), {"category": why}):
        seen.setdefault(row[column], None)
    return CaptionSet(Path(path), list(seen))
