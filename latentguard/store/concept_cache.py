"""The concept cache: a blacklist's encoded vectors, kept on disk per encoder.

Encoding 578 concepts through CLIP costs seconds on a CPU, so each concept's vector is kept, per
encoder identity, in ``$LATENTGUARD_HOME/concepts/<hash of the identity>.pt``: editing the blacklist
re-encodes only the concepts that are new to that encoder. Each entry carries a SHA-256 over the
encoder identity, the concept text and the vector's bytes; an entry that fails it (a zeroed vector,
another concept's vector in its place, a flipped bit) is dropped and re-encoded, with a warning.
"""
from __future__ import annotations

import hashlib
import warnings
from pathlib import Path
from typing import Mapping, Sequence

from ..io import atomic_torch_save, latentguard_home, unique

KNOWN_SAMPLE = 4  # stored vectors re-encoded at random on load, besides the first and the last
KNOWN_COSINE = 0.999  # the least cosine between a given vector and the encoder's own, precisions aside


def changed_vector(encoder, known: Mapping[str, "torch.Tensor"], concepts: Sequence[str],  # noqa: F821
                   batch_size: int = 64) -> str | None:
    """The first of a few given vectors (the first and last of ``concepts``, and :data:`KNOWN_SAMPLE` at random)
    that is not what ``encoder`` gives for its concept, said in words; None when all match. Checksums catch a
    torn file, not a rewrite with new checksums: a bundle whose every vector was replaced by the first, its
    SHA-256 in config.json updated, had loaded and flagged nothing (a hostile pass). A few rows changed among
    many can still pass the sample."""
    import random

    import torch

    if not concepts:
        return None
    sample = random.SystemRandom().sample(list(concepts), min(KNOWN_SAMPLE, len(concepts)))
    picked = [c for c in concepts if c in {concepts[0], concepts[-1], *sample}]
    fresh = encoder.encode_concepts(picked, batch_size=batch_size).float().cpu()
    for concept, own in zip(picked, fresh):
        given = known[concept].float().cpu()
        cosine = float(torch.nn.functional.cosine_similarity(given, own, dim=0))
        if not cosine >= KNOWN_COSINE or not abs(float(given.norm() / own.norm()) - 1.0) <= 1 - KNOWN_COSINE:
            return (f"the stored vector of concept {concept!r} is not what the encoder gives for it "
                    f"(cosine {cosine:.3f})")
    return None


def concept_cache_path(identity: str) -> Path:
    """The per-encoder cache file: one ``{concept: vector}`` table for each encoder identity."""
    digest = hashlib.sha256(identity.encode("utf-8")).hexdigest()[:24]
    return latentguard_home() / "concepts" / f"{digest}.pt"


def cached_concept_vectors(encoder, concepts: Sequence[str], *, batch_size: int = 64, use_cache: bool = True,
                           known: Mapping[str, "torch.Tensor"] | None = None) -> "torch.Tensor":  # noqa: F821
    """Concept vectors ``[C, hidden]`` (float32, CPU), encoding only concepts not cached for ``encoder``.

    ``known``: vectors already encoded by this very encoder (a guard bundle's ``concept_vectors.safetensors``,
    checked against the encoder's identity by the caller), taken as they are.

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
    if known:
        known = {c: v for c, v in known.items() if usable_vector(v)}  # a zeroed or non-finite one is re-encoded
        changed = changed_vector(encoder, known, [c for c in unique(concepts) if c in known], batch_size)
        if changed:
            from ..errors import LatentGuardError

            raise LatentGuardError(f"{changed}: the bundle's concept vectors were changed; copy the bundle again")
        rest = [c for c in unique(concepts) if c not in known]
        table = dict(zip(rest, cached_concept_vectors(encoder, rest, batch_size=batch_size, use_cache=use_cache)))
        return torch.stack([known[c].float().cpu() if c in known else table[c] for c in concepts])
    if not use_cache:
        return encoder.encode_concepts(concepts, batch_size=batch_size).float().cpu()
    path = concept_cache_path(encoder.identity)
    table = _read_cache(path, encoder.identity, encoder.hidden_size)
    changed = changed_vector(encoder, table, [c for c in unique(concepts) if c in table], batch_size)
    if changed:  # rewritten with fresh checksums: none of it is trusted, every concept is encoded again
        warnings.warn(f"{path}: {changed}; the concept cache was changed and is rebuilt", UserWarning, stacklevel=2)
        table = {}
    new = [c for c in unique(concepts) if c not in table]
    if new:
        vectors = encoder.encode_concepts(new, batch_size=batch_size).float().cpu()
        table.update(zip(new, vectors))
        _write_cache(path, encoder.identity, table)  # entries that failed their checksum are not written back
    return torch.stack([table[c] for c in concepts])


def entry_checksum(identity: str, concept: str, vector: "torch.Tensor") -> str:  # noqa: F821
    """SHA-256 over the encoder identity, the concept text and the vector's float32 bytes: a zeroed vector,
    another concept's vector in its place or a flipped bit no longer matches."""
    digest = hashlib.sha256()
    for part in (identity.encode("utf-8"), concept.encode("utf-8", "surrogatepass"),
                 vector.detach().float().cpu().contiguous().numpy().tobytes()):
        digest.update(len(part).to_bytes(8, "little"))
        digest.update(part)
    return digest.hexdigest()


def usable_vector(vector: "torch.Tensor") -> bool:  # noqa: F821
    """A vector an encoder can have written: finite and not all zero."""
    import torch

    return bool(torch.isfinite(vector).all()) and bool(vector.abs().sum() > 0)


def _read_cache(path: Path, identity: str, hidden_size: int) -> dict:
    """The entries of the cache file that pass their checksum; the others are dropped (and re-encoded), saying so."""
    import torch

    if not path.is_file():
        return {}
    try:
        from ..regular_files import open_regular_read

        with open_regular_read(path, "concept cache") as handle:  # a FIFO put there: a cache miss, not a hang
            blob = torch.load(handle, map_location="cpu", weights_only=True)
        names, vectors, sums = blob["concepts"], blob["vectors"], blob.get("checksums")
        if blob.get("identity") != identity or vectors.shape != (len(names), hidden_size):
            return {}  # a hash collision or another layout: start afresh
    except Exception:  # noqa: BLE001 - a damaged cache is only a cache miss
        warnings.warn(f"ignoring unreadable concept cache {path}; it will be rebuilt", stacklevel=3)
        return {}
    if not isinstance(sums, list) or len(sums) != len(names):  # written before entries had checksums
        warnings.warn(f"concept cache {path} has no checksums (an older version wrote it); re-encoding its "
                      "concepts", stacklevel=3)
        return {}
    table, failed = {}, []
    for name, vector, checksum in zip(names, vectors.float(), sums):
        if isinstance(name, str) and checksum == entry_checksum(identity, name, vector) and usable_vector(vector):
            table[name] = vector
        else:
            failed.append(str(name))
    if failed:
        shown = ", ".join(repr(n) for n in failed[:3]) + (f" and {len(failed) - 3} more" if len(failed) > 3 else "")
        warnings.warn(f"concept cache {path}: {len(failed)} entr{'y' if len(failed) == 1 else 'ies'} failed "
                      f"their checksum ({shown}); re-encoding them", stacklevel=3)
    return table


def _write_cache(path: Path, identity: str, table: Mapping) -> None:
    import torch

    names = list(table)
    vectors = torch.stack([table[c] for c in names]).float().contiguous()
    blob = {"identity": identity, "concepts": names, "vectors": vectors,
            "checksums": [entry_checksum(identity, c, v) for c, v in zip(names, vectors)]}
    try:
        atomic_torch_save(blob, path)
    except OSError as exc:
        warnings.warn(f"cannot write concept cache {path} ({exc.strerror or exc}); concepts will be "
                      "re-encoded next time", stacklevel=3)
