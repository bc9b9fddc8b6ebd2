"""An output directory's records: the manifest (inputs, guard, options) and one done marker per shard.

The manifest is written once, atomically, before the first shard; a rerun reads it and resumes only
when its inputs, guard (the code that judges included), options and device kind are the ones recorded,
so shards made by two guards, two versions of the code, or a cpu and a gpu never mix.
A shard counts as done only when its marker exists and the shard's bytes still have the SHA-256
the marker recorded. Files starting with ``_`` or ``.`` are skipped by parquet dataset readers, so
``pandas.read_parquet(DIR)`` reads the shards alone.

The guard's identity is :func:`latentguard.guard.identity.guard_identity`, the one every run directory
records (re-exported here for the engines).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping

from ..constants import RUN_LOCK, RUN_OUTPUTS_RECORD
from ..errors import LatentGuardError
from ..guard.identity import blacklist_digest, guard_differences, guard_identity, weights_digest  # noqa: F401
from ..io import atomic_write_text, sha256_of

MANIFEST = "_manifest.json"
DONE_DIR = "_done"
SUMMARY = "_summary.json"
DEDUP_DB = "_dedup.sqlite"
FORMAT = "latentguard-score/1"


def new_manifest(inputs: list[dict], guard: Mapping, options: Mapping, engine: str, shards: int,
                 columns: list[str], device: str) -> dict[str, Any]:
    import datetime

    from .. import __version__

    return {"format": FORMAT, "engine": engine, "inputs": inputs, "guard": dict(guard), "options": dict(options),
            "shards": shards, "columns": columns, "device": device, "latentguard": __version__,
            "created": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")}


def read_manifest(directory: Path) -> dict | None:
    path = directory / MANIFEST
    if not path.exists():
        return None
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise LatentGuardError(f"{path} is unreadable ({exc}); it was not written by a complete latentguard score "
                               "run start: choose another --output") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise LatentGuardError(f"{path} is not a latentguard score manifest ({FORMAT}); choose another --output")
    return manifest


def manifest_differences(recorded: Mapping, now: Mapping) -> list[str]:
    """Why a directory's run cannot be continued by this one (empty: it can)."""
    out = []
    if recorded.get("engine") != now["engine"]:
        out.append(f"engine {recorded.get('engine')} vs {now['engine']}")
    old_inputs = [{k: v for k, v in i.items() if k != "name"} for i in recorded.get("inputs", [])]
    new_inputs = [{k: v for k, v in i.items() if k != "name"} for i in now["inputs"]]
    if old_inputs != new_inputs:
        out.append("inputs (files, sizes or modification times) " + _input_change(old_inputs, new_inputs))
    out += [f"guard {d}" for d in guard_differences(recorded.get("guard", {}), now["guard"])]
    if device_kind(recorded.get("device")) != device_kind(now["device"]):  # as batch size: it sets a score's last bits
        out.append(f"device {device_kind(recorded.get('device'))} vs {device_kind(now['device'])}")
    if recorded.get("columns", now["columns"]) != now["columns"]:  # e.g. made before the refused column existed
        out.append(f"output columns {recorded.get('columns')} vs {now['columns']}")
    for key in sorted(set(recorded.get("options", {})) | set(now["options"])):
        a, b = recorded.get("options", {}).get(key), now["options"].get(key)
        if a != b:
            out.append(f"option {key} {a!r} vs {b!r}")
    return out


def device_kind(device: str | None) -> str | None:
    """``cuda`` of ``cuda:1``: two devices of one kind give the same bits; a cpu and a gpu do not."""
    return device.split(":")[0] if isinstance(device, str) else device


def _input_change(old: list[dict], new: list[dict]) -> str:
    if len(old) != len(new):
        return f"{len(old)} files vs {len(new)}"
    for a, b in zip(old, new):
        if a != b:
            keys = [k for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
            return f"{b.get('path')}: {', '.join(keys)} changed"
    return ""


def validate_directory(directory: Path, manifest: dict | None) -> None:
    """An output directory is new, empty, or holds a manifest: a user's files are never written among."""
    if manifest is not None or not directory.exists():
        return
    if not directory.is_dir():
        raise LatentGuardError(f"--output {directory} is a file, not a directory; choose another path")
    others = [p.name for p in directory.iterdir() if p.name not in (RUN_LOCK, RUN_OUTPUTS_RECORD)]
    if others:
        raise LatentGuardError(f"--output {directory} is not empty and holds no {MANIFEST} (it has {others[0]}"
                               f"{' and more' if len(others) > 1 else ''}); choose a new or empty directory")


def write_manifest(directory: Path, manifest: Mapping) -> None:
    atomic_write_text(directory / MANIFEST, json.dumps(manifest, indent=1, ensure_ascii=False) + "\n")


# ------------------------------------------------------------------------------------- markers
def shard_name(index: int, total: int, suffix: str) -> str:
    return f"shard-{index:0{max(5, len(str(max(total - 1, 0))))}d}.{suffix}"


def marker_path(directory: Path, shard_file: str) -> Path:
    return directory / DONE_DIR / (Path(shard_file).stem + ".json")


def write_marker(directory: Path, shard_file: str, stats: Mapping) -> None:
    record = {"file": shard_file, "sha256": sha256_of(directory / shard_file), **stats}
    atomic_write_text(marker_path(directory, shard_file), json.dumps(record, sort_keys=True) + "\n")


def read_marker(directory: Path, shard_file: str) -> dict | None:
    """The shard's marker when the shard is done; ``None`` when it is not. A marker whose shard is
    missing or changed is refused: no crash leaves that, so the directory was edited."""
    path = marker_path(directory, shard_file)
    if not path.exists():
        return None
    try:
        marker = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        raise LatentGuardError(f"{path} is unreadable; delete it to score {shard_file} again") from None
    shard = directory / shard_file
    if not shard.is_file() or sha256_of(shard) != marker.get("sha256"):
        raise LatentGuardError(f"{shard} is missing or changed since it was written ({path} records its SHA-256); "
                               f"delete {path} to score it again")
    return marker
