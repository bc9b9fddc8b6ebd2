"""Which embedding store serves an encoder request, and the one way the commands open it.

A store lives in ``store_dir/<slug>-<hash of the encoder identity>``, and the identity hashes the
loaded weights. To answer "is anything missing?" without loading a 500 MB model, the commands
remember, per store directory, which identity a given request (name, options, and the size and
mtime of every file it would be loaded from) produced last time. Any change to those files, the
options or the encoders' layout version (latentguard.constants.LAYOUT_VERSION) changes the key,
and the encoder is loaded as usual. :func:`open_configured_store` puts this together for
prepare.py, main.py and test.py.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import re
from pathlib import Path
from typing import Any

from ..constants import LAYOUT_VERSION
from ..errors import LatentGuardError
from ..io import atomic_write_text, validate_dir_path
from .store import META, EmbeddingStore


def store_path(store_dir: str | Path, identity: str) -> Path:
    """``store_dir/<readable slug>-<12 hex of SHA-256(identity)>``: one directory per encoder.

    The slug is only for people browsing the directory; the hash keeps distinct identities apart.
    """
    slug = re.sub(r"[^a-z0-9]+", "-", identity.lower()).strip("-")[:48].strip("-") or "encoder"
    digest = hashlib.sha256(identity.encode("utf-8")).hexdigest()[:12]
    return Path(store_dir) / f"{slug}-{digest}"


def validate_store_dir(store_dir: str | Path) -> Path:
    """Refuse a ``--store-dir`` that is a file (or lies under one) now, before any encoder loads."""
    return validate_dir_path(store_dir, "--store-dir")


def open_store_for(store_dir: str | Path, encoder: Any, *, dtype: str = "float16",
                   create: bool = False) -> EmbeddingStore:
    """The store of ``encoder`` under ``store_dir`` (made when ``create``)."""
    return EmbeddingStore(
        store_path(store_dir, encoder.identity),
        identity=encoder.identity,
        hidden_size=encoder.hidden_size,
        dtype=dtype,
        create=create,
    )


HINTS = "encoders.json"


def encoder_request_key(
    name: str | Path,
    encoder_type: str = "auto",
    dtype: Any = None,
    attention_mask: bool = False,
) -> str | None:
    """A key for "what ``load_encoder`` would load", from file metadata only; ``None`` if unknowable.

    Local directories (and files) are described by their top-level files; hub names by the cached
    snapshot, located offline. A name that is neither on disk nor cached has no key.
    """
    files = _source_files(str(name))
    if not files:
        return None
    described = {
        "name": str(name),
        "type": encoder_type,
        "dtype": str(dtype or "float32").replace("torch.", ""),
        "attention_mask": bool(attention_mask),
        "layout": LAYOUT_VERSION,
        "files": [[f.name, f.stat().st_size, f.stat().st_mtime_ns] for f in files],
    }
    return hashlib.sha256(json.dumps(described, sort_keys=True).encode("utf-8")).hexdigest()


def _source_files(name: str) -> list[Path]:
    path = Path(name)
    if path.is_file():
        return [path]
    if path.is_dir():
        return sorted(p for p in path.iterdir() if p.is_file())
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:  # pragma: no cover
        return []
    with contextlib.suppress(Exception):  # not a repo id, no cache: just no shortcut
        found = try_to_load_from_cache(name, "config.json")
        if isinstance(found, str):
            return sorted(p for p in Path(found).parent.iterdir() if p.is_file())
    return []


def recall_identity(store_dir: str | Path, key: str | None) -> str | None:
    """The identity recorded for request ``key`` under ``store_dir``, if any."""
    if key is None:
        return None
    try:
        hints = json.loads((Path(store_dir) / HINTS).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    value = hints.get(key) if isinstance(hints, dict) else None
    return value if isinstance(value, str) else None


def remember_identity(store_dir: str | Path, key: str | None, identity: str) -> None:
    """Record that request ``key`` loads the encoder ``identity`` (best effort, atomic)."""
    if key is None or recall_identity(store_dir, key) == identity:
        return
    file = Path(store_dir) / HINTS
    try:
        hints = json.loads(file.read_text(encoding="utf-8"))
        if not isinstance(hints, dict):
            hints = {}
    except (OSError, ValueError):
        hints = {}
    hints[key] = identity
    with contextlib.suppress(OSError):
        atomic_write_text(file, json.dumps(hints, indent=1, sort_keys=True) + "\n")


def recall_store_identity(store_dir: str | Path, enc: "EncoderConfig") -> tuple[str | None, str | None]:  # noqa: F821
    """``(request key, identity)`` for a config's ``encoder`` section, without loading the encoder.

    The identity is ``None`` unless a hint was recorded for this request and its store still exists.
    """
    key = encoder_request_key(enc.name, enc.type, enc.dtype, enc.attention_mask)
    identity = recall_identity(store_dir, key)
    if identity is None or not (store_path(store_dir, identity) / META).is_file():
        return key, None
    return key, identity


def open_configured_store(
    cfg: "Config",  # noqa: F821
    *,
    encoder: Any = None,
    device: Any = None,
    create: bool = False,
    missing_ok: bool = False,
    no_store: str | None = None,
) -> tuple[EmbeddingStore | None, Any]:
    """``(store, encoder)`` for a loaded config: the one way the commands open the store of the
    encoder its ``encoder`` section names.

    The encoder is loaded (on ``device``) only when no hint says which store it maps to, and is
    returned then (else ``None``, or the ``encoder`` passed in). ``create`` makes the store
    (prepare.py); otherwise an absent store is the one-line error ``no_store``, or ``(None,
    encoder)`` when ``missing_ok``. A ``--store-dir`` that is a file, and a damaged store, are
    always one-line errors.
    """
    store_dir = validate_store_dir(cfg.store_dir)
    no_store = no_store or (f"no embedding store for encoder {cfg.encoder.name} under {store_dir}; run "
                            "prepare.py with the same --dataset, --encoder and --store-dir first")
    key, identity = recall_store_identity(store_dir, cfg.encoder)
    if encoder is None and identity is None:
        if not create and not any(store_dir.glob(f"*/{META}")):  # nothing prepared: no need to load the encoder
            if missing_ok:
                return None, None
            raise LatentGuardError(no_store)
        from ..encoders import load_encoder_from_config

        encoder = load_encoder_from_config(cfg, device)
    if encoder is not None:
        identity = encoder.identity
    if not create and not (store_path(store_dir, identity) / META).is_file():
        if missing_ok:
            return None, encoder
        raise LatentGuardError(no_store)
    if encoder is not None:
        store = open_store_for(store_dir, encoder, dtype=cfg.store.dtype, create=create)
    else:  # create=True on an existing store only checks it (and refuses another --dtype)
        store = EmbeddingStore(store_path(store_dir, identity), identity=identity, dtype=cfg.store.dtype,
                               create=create)
    remember_identity(store_dir, key, identity)
    return store, encoder
