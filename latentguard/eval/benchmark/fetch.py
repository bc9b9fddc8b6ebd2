"""Getting a prompt set's file: a local path (``--set NAME=PATH``), the cache, or a verified download.

Hub sets go through ``huggingface_hub`` (pinned revision, the hub cache; ``HF_HOME``,
``HF_ENDPOINT`` and ``HF_HUB_OFFLINE`` work as everywhere), raw-address sets through
:func:`latentguard.downloads.download` into ``$LATENTGUARD_HOME/benchmarks/NAME/``. A set that cannot be
had here (on request, or gated without a login) is one line naming where to get it and the flag
that takes a local copy. The file's content is checked by the loader (:mod:`.loaders`).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from ...errors import LatentGuardError
from .registry import GATED, REQUEST, PromptSet

DATA_SUFFIXES = (".csv", ".tsv", ".parquet", ".jsonl", ".json", ".txt")


class Unavailable(LatentGuardError):
    """A set that cannot be had on this machine as things stand; the message is the one line to print."""


@dataclass
class Located:
    """A set's file and where it came from; ``downloaded``: it came from the set's published source, so
    the published row count must hold (a local file may be a deliberate subset)."""

    path: Path
    origin: str                 # "local" | "cache" | "download"
    downloaded: bool
    provenance: dict[str, Any] = field(default_factory=dict)


def url_cache_path(spec: PromptSet) -> Path:
    """Where a raw-address set is kept: ``$LATENTGUARD_HOME/benchmarks/NAME/<address hash>/<file name>``
    (keyed by the address, so a registry pinned to another commit never reads an older copy)."""
    import hashlib

    from ...io import latentguard_home

    url = spec.source.where
    key = hashlib.sha256(url.encode("utf-8")).hexdigest()[:16]
    return latentguard_home() / "benchmarks" / spec.name / key / Path(urlparse(url).path).name


def locate(spec: PromptSet, local: str | None = None) -> Located:
    """The file of ``spec``: ``local`` when given, else the cache, else a download from the published source."""
    if local is not None:
        path = Path(local).expanduser()
        if not path.is_file():
            raise LatentGuardError(f"--set {spec.name}={local}: no such file")
        return Located(path, "local", False, {"source": "local file", "path": str(path)})
    if spec.access == REQUEST:
        raise Unavailable(spec.obtain_hint())
    if spec.source.kind == "hub":
        return _from_hub(spec)
    return _from_url(spec)


def _from_url(spec: PromptSet) -> Located:
    from ...downloads import download as fetch
    from ...io import sha256_of

    url = spec.source.where
    target = url_cache_path(spec)
    provenance = {"source": url, "sha256_published": spec.source.sha256}
    if target.is_file():
        if spec.source.sha256 and sha256_of(target) != spec.source.sha256:
            from ...io import move_aside

            aside = move_aside(target)
            raise LatentGuardError(f"{spec.name}: cached {target} does not match the published SHA-256 (set aside as "
                                   f"{aside}); run again to download it afresh")
        return Located(target, "cache", True, provenance)
    fetch(url, target, sha256=spec.source.sha256, what=f"prompt set {spec.name}")
    return Located(target, "download", True, provenance)


def _from_hub(spec: PromptSet) -> Located:
    """``hf_hub_download`` of the registered file (or, where the card names none, the repository's one
    data file via ``snapshot_download``); hub errors become one line."""
    import huggingface_hub
    from huggingface_hub import errors

    src = spec.source
    gated = spec.access == GATED
    # Gated without a token: only a copy already in the hub cache can serve; asking the hub would be refused.
    local_only = gated and huggingface_hub.get_token() is None
    common = dict(repo_type="dataset", revision=src.revision, local_files_only=local_only)
    try:
        if src.filename:
            path = Path(huggingface_hub.hf_hub_download(src.where, src.filename, **common))
        else:
            folder = Path(huggingface_hub.snapshot_download(src.where, allow_patterns=[f"*{s}" for s in DATA_SUFFIXES],
                                                            **common))
            path = _single_data_file(spec, folder)
    except (errors.GatedRepoError, errors.LocalEntryNotFoundError) as exc:
        if gated:
            raise Unavailable(spec.obtain_hint()) from None
        if isinstance(exc, errors.GatedRepoError):  # an open set turned gated: the hub says so
            raise Unavailable(f"{spec.name}: the hub now asks for access ({src.page}); accept its terms and log in, "
                              f"or pass --set {spec.name}=PATH") from None
        raise LatentGuardError(f"{spec.name}: {src.describe()} is not in the hub cache and cannot be downloaded "
                               f"(offline, HF_HUB_OFFLINE=1, or the hub is unreachable); download {src.page} "
                               f"yourself and pass --set {spec.name}=PATH") from None
    except (errors.RepositoryNotFoundError, errors.RevisionNotFoundError, errors.EntryNotFoundError) as exc:
        raise LatentGuardError(f"{spec.name}: {src.describe()} not found on the hub ({type(exc).__name__}); "
                               f"pass --set {spec.name}=PATH with your copy") from None
    except (errors.HfHubHTTPError, OSError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise LatentGuardError(f"{spec.name}: cannot download {src.describe()} ({first[:160]}); "
                               f"pass --set {spec.name}=PATH with your copy") from None
    commit = _snapshot_commit(path)
    provenance = {"source": f"hf://datasets/{src.where}/{path.name}", "revision_pinned": src.revision,
                  "revision": commit}
    return Located(path, "cache", True, provenance)


def _single_data_file(spec: PromptSet, folder: Path) -> Path:
    found = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in DATA_SUFFIXES
                   and p.name.lower() != "readme.md")
    if len(found) != 1:
        names = ", ".join(str(p.relative_to(folder)) for p in found[:6]) or "none"
        raise LatentGuardError(f"{spec.name}: expected one data file in hub dataset {spec.source.where}, found "
                               f"{len(found)} ({names}); pass --set {spec.name}=PATH with the one to read")
    return found[0]


def _snapshot_commit(path: Path) -> str | None:
    """The commit a hub-cache path belongs to (``.../snapshots/<commit>/...``), for the record; None if not one."""
    parts = path.parts
    if "snapshots" in parts:
        i = parts.index("snapshots")
        if i + 1 < len(parts) and len(parts[i + 1]) == 40:
            return parts[i + 1]
    return None
