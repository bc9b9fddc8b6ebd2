"""Sharing a guard as Hugging Face models are shared: one self-describing folder or hub repo (a *bundle*).

A bundle holds ``config.json`` (format version, mapping-layer sizes, the encoder's loadable name and
full identity, the threshold and the weights it belongs to, per-concept thresholds, slope,
categories), ``model.safetensors`` (no pickle), ``concepts.yaml`` (the blacklist in plain text, with
its groups), a ``README.md`` model card and, optionally, ``concept_vectors.safetensors``.
:mod:`~latentguard.hub.format` checks the config, :mod:`~latentguard.hub.bundle` opens a folder or
fetches a repo (``huggingface_hub.snapshot_download``), :mod:`~latentguard.hub.write` writes one,
:mod:`~latentguard.hub.card` writes its card, :mod:`~latentguard.hub.push` publishes it and
:mod:`~latentguard.hub.mixin` gives :class:`~latentguard.guard.LatentGuard` ``save_pretrained`` /
``push_to_hub``. The guard itself loads them (``LatentGuard.from_pretrained("org/name")``).

Nothing here imports torch or huggingface_hub until a bundle is read or written.
"""
from __future__ import annotations

from .bundle import Bundle, looks_like_repo_id, open_bundle
from .format import BUNDLE_FILES, FORMAT, FORMAT_VERSION

__all__ = ["BUNDLE_FILES", "FORMAT", "FORMAT_VERSION", "Bundle", "looks_like_repo_id", "open_bundle"]
