"""An output directory's records: the manifest (inputs, guard, options) and one done marker per shard.

The manifest is written once, atomically, before the first shard; a rerun reads it and resumes only
when its inputs, guard and options are the ones recorded, so shards made by two guards never mix.
A shard counts as done only when its marker exists and the shard's bytes still have the SHA-256
the marker recorded. Files starting with ``_`` or ``.`` are skipped by parquet dataset readers, so
``pandas.read_parquet(DIR)`` reads the shards alone.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Mapping

from ..constants import RUN_LOCK, RUN_OUTPUTS_RECORD
from ..errors import LatentGuardError
from ..io import atomic_write_text, sha256_of

MANIFEST = "_manifest.json"
DONE_DIR = "_done"
SUMMARY = "_summary.json"
DEDUP_DB = "_dedup.sqlite"
FORMAT = "latentguard-score/1"


def blacklist_digest(guard) -> str:
    """SHA-256 of everything that decides which concepts fire: concepts, categories, per-concept
    thresholds, the allowlist and the default category."""
    described = {"concepts": guard.concepts, "categories": guard.categories,
                 "concept_thresholds": guard.concept_thresholds, "allowlist": guard.allowlist,
                 "default_category": guard.default_category}
    return hashlib.sha256(json.dumps(described, sort_keys=True, ensure_ascii=False).encode("utf-8")).hexdigest()


def weights_digest(guard) -> str:
    """SHA-256 of the guard's weights: the checkpoint file's (the released one's published hash), a bundle's
    recorded one, else over the mapping layer's tensors (a guard built in memory)."""
    checkpoint = getattr(guard, "checkpoint", None)
    if checkpoint:
        return sha256_of(checkpoint)
    bundle = getattr(guard, "bundle", None)
    if bundle is not None:
        return bundle.weights_sha256
    h = hashlib.sha256()
    for name, tensor in sorted(guard.model.state_dict().items()):
        h.update(f"{name} {tensor.dtype} {tuple(tensor.shape)}".encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def guard_identity(guard) -> dict[str, Any]:
    """What makes two guards give the same verdicts: weights, encoder, blacklist, threshold, slope, long
    prompts, text defences."""
    return {"checkpoint_sha256": weights_digest(guard),
            "encoder": getattr(guard.encoder, "identity", None), "blacklist_sha256": blacklist_digest(guard),
            "concepts": len(guard.concepts), "categories": list(guard.categories), "threshold": guard.threshold,
            "slope": guard.slope, "long_prompts": guard.long_prompts, "window_stride": guard.window_stride,
            "normalize_text": guard.normalize_text, "split_sentences": guard.split_sentences}


def guard_differences(recorded: Mapping, now: Mapping) -> list[str]:
    """How two guard identities differ, one phrase each (the encoder's cosmetic name is ignored)."""
    from ..encoders.identity import same_embeddings

    out = []
    for key in sorted(set(recorded) | set(now)):
        a, b = recorded.get(key), now.get(key)
        if key == "encoder" and isinstance(a, str) and isinstance(b, str):
            if same_embeddings(a, b) is not True:
                out.append(f"encoder {a} vs {b}")
        elif a != b:
            out.append(f"{key} {a!r} vs {b!r}")
    return out


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
    for key in sorted(set(recorded.get("options", {})) | set(now["options"])):
        a, b = recorded.get("options", {}).get(key), now["options"].get(key)
        if a != b:
            out.append(f"option {key} {a!r} vs {b!r}")
    return out


def _input_change(old: list[dict], new: list[dict]) -> str:
    if len(old) != len(new):
        return f"{len(old)} files vs {len(new)}"
    for a, b in zip(old, new):
        if a != b:
            keys = [k for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
            return f"{b.get('path')}: {', '.join(keys)} changed"
    return ""


def check_directory(directory: Path, manifest: dict | None) -> None:
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
