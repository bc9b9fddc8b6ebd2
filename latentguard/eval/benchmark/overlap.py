"""Overlap of the evaluated prompt sets with the data a guard was trained on.

A benchmark number means something only for prompts the guard never saw. Every evaluated set (unsafe
and benign) is compared with the training files by normalised exact match: NFKC, lower-cased,
whitespace collapsed, stripped. Training files are the ``--train-data`` paths and any a bundle records
in its ``config.json`` (``training.files``: paths, or ``{"path", "sha256"}`` records; a recorded file
not at its path is found among the ``--train-data`` files by its SHA-256, or by its name when none is
recorded). A run is called **clean** only when training files were read and no prompt of any set is
among them; a training file a bundle names that is missing here, or whose SHA-256 differs from the
recorded one, makes the check incomplete, never clean.

Files: CSV/TSV/parquet/JSON Lines/JSON records read by their prompt columns (``unsafe_prompt`` and
``safe_prompt`` of ``copro_real.csv``, ``prompt`` of ``coprov2_train.csv`` and
``coco_captions_train.csv``, or ``text``/``caption``), a CoPro JSON file (every split's prompts), or
``.txt`` with one prompt per line. Every row counts, so a file holding evaluation-only rows too (CoPro's
test split) is checked as a whole: the stricter reading.
"""
from __future__ import annotations

import unicodedata
from pathlib import Path
from typing import Any, Mapping, Sequence

from ...errors import LatentGuardError

TRAINING_COLUMNS = ("unsafe_prompt", "safe_prompt", "prompt", "text", "caption")
CLEAN, OVERLAP, INCOMPLETE, UNCHECKED = "clean", "overlap", "incomplete", "not checked"


def normalise(text: str) -> str:
    """The form two prompts are compared in: NFKC, lower-cased, whitespace collapsed, stripped."""
    return " ".join(unicodedata.normalize("NFKC", str(text)).lower().split())


def read_training_texts(path: str | Path) -> list[str]:
    """Every prompt of one training file (its prompt columns, every row); a file with none is refused."""
    from .loaders import read_columns

    path = Path(path).expanduser()
    if not path.is_file():
        raise LatentGuardError(f"--train-data {path}: no such file")
    if path.suffix.lower() == ".json":
        from ...io import read_text, strict_json

        raw = strict_json(read_text(path, "training file"), str(path))
        if isinstance(raw, dict):  # a CoPro file: the prompts of every split
            from ...data.copro import load_copro

            copro = load_copro(path, download=False)
            return [t for split in copro.splits.values() for e in split for t in (e.unsafe_prompt, e.safe_prompt)]
    header, cols = read_columns(path, list(TRAINING_COLUMNS), "prompt")
    found = [c for c in TRAINING_COLUMNS if c in cols]
    if not found:
        raise LatentGuardError(f"{path}: no prompt column ({', '.join(TRAINING_COLUMNS)}; columns: "
                               f"{', '.join(header) or 'none'}); a training file is read by its prompt columns")
    return [str(v) for c in found for v in cols[c] if v is not None and str(v).strip()]


def bundle_training_files(bundle) -> list[dict[str, Any]]:
    """The training files a bundle records (``config.json`` ``training.files``), as ``{"path", "sha256"}``."""
    if bundle is None:
        return []
    section = bundle.config.get("training") if isinstance(bundle.config, Mapping) else None
    files = section.get("files") if isinstance(section, Mapping) else None
    out = []
    for item in files or []:
        if isinstance(item, str):
            out.append({"path": item, "sha256": None})
        elif isinstance(item, Mapping) and isinstance(item.get("path"), str):
            out.append({"path": item["path"], "sha256": item.get("sha256")})
        else:
            raise LatentGuardError(f"bundle {bundle.name}: training.files entry {item!r} is neither a path nor a "
                                   "{path, sha256} record")
    return out


def training_index(given: Sequence[str | Path], recorded: Sequence[Mapping[str, Any]]) -> tuple[dict[str, str],
                                                                                               list[dict]]:
    """``({normalised text: file it came from}, [what was read or why not])`` over every training file."""
    from ...io import sha256_of

    index: dict[str, str] = {}
    files: list[dict[str, Any]] = []
    passed = {Path(p).expanduser() for p in given}
    for item in [{"path": str(p), "sha256": None, "origin": "--train-data"} for p in given] + \
            [{**r, "origin": "bundle"} for r in recorded]:
        path = Path(item["path"]).expanduser()
        entry = {"path": str(path), "origin": item["origin"]}
        if item["origin"] == "bundle" and not path.is_file():
            # a recorded file may live elsewhere here: a --train-data file with its SHA-256 (or, when none is
            # recorded, its name) stands for it, having been read above
            twin = next((p for p in passed if (sha256_of(p) == item["sha256"] if item.get("sha256")
                                              else p.name == path.name)), None)
            files.append({**entry, "read_as": str(twin)} if twin else
                         {**entry, "problem": "recorded by the bundle, not found here (pass it with --train-data)"})
            continue
        texts = read_training_texts(path)
        entry.update(sha256=sha256_of(path), prompts=len(texts))
        if item.get("sha256") and item["sha256"] != entry["sha256"]:
            entry["problem"] = f"SHA-256 differs from the {item['sha256'][:12]}... the bundle records"
        elif not texts:
            entry["problem"] = "no prompts in it (the wrong file?)"
        for text in texts:
            index.setdefault(normalise(text), path.name)
        files.append(entry)
    return index, files


def overlap_report(sets: Mapping[str, Any], index: Mapping[str, str], files: Sequence[Mapping]) -> dict[str, Any]:
    """Per evaluated set, how many of its rows (and distinct texts) are in the training files, with examples;
    ``status`` is clean only when files were read, all of them as recorded, and nothing overlaps."""
    per_set = {}
    for name, data in sets.items():
        hits = [normalise(t) in index for t in data.texts]
        rows = sum(1 for r in data.rows if hits[r])
        examples = [data.texts[i] for i, hit in enumerate(hits) if hit][:3]
        per_set[name] = {"rows": int(data.total), "overlap_rows": int(rows), "overlap_distinct": int(sum(hits)),
                         "examples": examples,
                         "files": sorted({index[normalise(t)] for t in examples})}
    if not files:
        status = UNCHECKED
    elif any(e["overlap_rows"] for e in per_set.values()):
        status = OVERLAP
    elif any("problem" in f for f in files):
        status = INCOMPLETE
    else:
        status = CLEAN
    return {"status": status, "clean": status == CLEAN, "files": list(files), "sets": per_set,
            "normalisation": "NFKC, lower-case, whitespace collapsed, stripped; exact match"}


def overlap_line(report: Mapping[str, Any]) -> str:
    """One line for the console and the top of ``benchmark.md``."""
    status = report["status"]
    if status == CLEAN:
        return (f"training overlap: clean (no prompt of {len(report['sets'])} sets is in the "
                f"{len(report['files'])} training files)")
    if status == UNCHECKED:
        return "training overlap: not checked (pass --train-data FILE for each training file); not called clean"
    if status == INCOMPLETE:
        bad = "; ".join(f"{f['path']}: {f['problem']}" for f in report["files"] if "problem" in f)
        return f"training overlap: incomplete, not clean ({bad})"
    hits = ", ".join(f"{n} {e['overlap_rows']:,} of {e['rows']:,} rows" for n, e in report["sets"].items()
                     if e["overlap_rows"])
    return f"training overlap: NOT clean: {hits} are in the training files"


def overlap_markdown(report: Mapping[str, Any]) -> list[str]:
    lines = ["## Overlap with the training data", "", f"**{overlap_line(report)}**", "",
             f"Compared by {report['normalisation']}.", ""]
    if report["files"]:
        lines += ["| training file | from | prompts | SHA-256 | problem |", "|---|---|---:|---|---|"]
        lines += [f"| {f['path']} | {f['origin']} | {f.get('prompts', '-')} | {str(f.get('sha256', '-'))[:16]} | "
                  f"{f.get('problem', '')} |" for f in report["files"]]
        lines += ["", "| set | rows | overlapping rows | overlapping distinct | examples |", "|---|---:|---:|---:|---|"]
        for name, e in report["sets"].items():
            examples = "; ".join(x[:60].replace("|", "/") for x in e["examples"])
            lines.append(f"| {name} | {e['rows']:,} | {e['overlap_rows']:,} | {e['overlap_distinct']:,} | {examples} |")
    return lines + [""]
