"""One identity for a guard: what makes two guards give the same scores and verdicts.

Every run directory that reuses results (``latentguard score``'s manifest, ``latentguard benchmark``'s
``.benchmark-state``) records :func:`guard_identity` and compares it with the guard of a rerun, so a
result made by one guard is never read back under another's name. Two bundles with different weights
but the same encoder, blacklist and threshold differ here by their weights' SHA-256: a bundle's is
the one its ``config.json`` records (checked against ``model.safetensors`` when it is loaded), a
released-format checkpoint's is its file's, and a guard built in memory hashes its tensors. The identity
also holds the code that judges (:mod:`latentguard.guard.code`: a result of older code is never read back as
this code's) and, for a run that sanitizes, the options that set an edit; the Ray engine's workers
(``GuardBatchScorer(expect=...)``) are checked against the same record.
:func:`describe_guard` says, for reports, which guard that was (bundle name or checkpoint path, weights
SHA-256, and where its blacklist came from).
"""
from __future__ import annotations

import hashlib
import json
from typing import Any, Mapping

CODE_CHANGED = "latentguard's judging code changed since"  # said wherever a code difference is refused


def blacklist_digest(guard) -> str:
    """SHA-256 of everything that decides which concepts fire: concepts, categories, per-concept
    thresholds, the allowlist and the default category."""
    described = {"concepts": guard.concepts, **guard.options.blacklist_settings()}
    return hashlib.sha256(json.dumps(described, sort_keys=True, ensure_ascii=False).encode("utf-8")).hexdigest()


def weights_digest(guard) -> str:
    """SHA-256 of the guard's weights: the checkpoint file's (the released one's published hash), a bundle's
    recorded one, else over the mapping layer's tensors (a guard built in memory)."""
    from ..io import sha256_of

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


def guard_identity(guard, sanitize: bool = False) -> dict[str, Any]:
    """What makes two guards give the same verdicts: weights, encoder, blacklist, threshold, slope, long
    prompts, text defences, and the code that judges (:func:`~latentguard.guard.code.code_identity`); with
    ``sanitize``, also the options that set a sanitized edit but no verdict (margin, evidence words). The edit
    search's rounds, width, budget and replacement are code defaults in bulk runs: the code identity covers them."""
    from .code import code_identity

    return {"checkpoint_sha256": weights_digest(guard),
            "encoder": getattr(guard.encoder, "identity", None), "blacklist_sha256": blacklist_digest(guard),
            "concepts": len(guard.concepts), **guard.options.decision_identity(edits=sanitize), "code": code_identity()}


def guard_differences(recorded: Mapping, now: Mapping) -> list[str]:
    """How two guard identities differ, one phrase each (the encoder's cosmetic name is ignored)."""
    from ..encoders.identity import same_embeddings

    out = []
    for key in sorted(set(recorded) | set(now)):
        a, b = recorded.get(key), now.get(key)
        if key == "encoder" and isinstance(a, str) and isinstance(b, str):
            if same_embeddings(a, b) is not True:
                out.append(f"encoder {a} vs {b}")
        elif key == "code" and a != b:
            out.append(f"code {a} vs {b} ({CODE_CHANGED})")
        elif a != b:
            out.append(f"{key} {a!r} vs {b!r}")
    return out


def describe_guard(guard, concepts_file: str | None = None) -> dict[str, Any]:
    """Which guard this is, for a report: ``guard`` (bundle name, or checkpoint path, or "in memory"),
    ``weights_sha256``, and ``concepts`` (how many, in which categories, from where: ``concepts_file`` when
    the user named one, else the bundle's own blacklist, else CoPro's ID concepts, a checkpoint's default)."""
    bundle, checkpoint = getattr(guard, "bundle", None), getattr(guard, "checkpoint", None)
    if bundle is not None:
        kind, name = "bundle", bundle.name
    elif checkpoint:
        kind, name = "checkpoint", str(checkpoint)
    else:
        kind, name = "in memory", None
    groups = guard.options.groups(filled=True)
    grouped = f" in {len(groups)} categories ({', '.join(groups)})" if len(groups) > 1 else ""
    if concepts_file:
        origin = str(concepts_file)
    elif bundle is not None:
        origin = f"the bundle's own blacklist, {bundle.name}"
    elif checkpoint:
        origin = "CoPro ID concepts"
    else:
        origin = "set in memory"
    return {"guard": name, "guard_kind": kind, "weights_sha256": weights_digest(guard),
            "concepts": f"{len(guard.concepts)} concepts{grouped} ({origin})"}
