"""``save_pretrained`` and ``push_to_hub`` for :class:`~latentguard.guard.LatentGuard` (a mixin, so the guard's
module stays about judging prompts). ``LatentGuard.from_pretrained`` reads what these write."""
from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any, Mapping


class HubMixin:
    """Share a guard as one folder or hub repo: weights, encoder identity, blacklist, threshold, card."""

    def save_pretrained(self, directory: str | Path, *, overwrite: bool = False, concept_vectors: bool = True,
                        license: str | None = None, results: str | Path | Mapping | None = None,
                        repo_id: str | None = None) -> Path:
        """Write this guard as a bundle folder (``config.json``, ``model.safetensors``, ``concepts.yaml``, ``README.md``
        and, with ``concept_vectors``, the blacklist already encoded); see docs/sharing.md.

        The folder must be new or empty, or hold a bundle and ``overwrite=True``. ``results``: ``test.py``'s
        ``results.json`` for these weights, shown in the model card; ``license`` goes in the card (the released
        weights are BSD-3-Clause); ``repo_id`` is the name the card's examples use.
        """
        from ..model.checkpoint import plain_state_dict
        from .card import load_results
        from .write import encoder_of, write_bundle

        state = plain_state_dict(self.model)
        source_sha, unchanged, known = self._bundle_source(state)
        options = self.options
        settings = options.bundled_settings(self, unchanged)  # groups, threshold section, per-concept, slope
        if isinstance(results, (str, Path)):
            results = load_results(results, known)
        model, bundle = self.model, getattr(self, "bundle", None)
        source = {} if bundle is None else {  # kept only if they hold exactly these weights (write_bundle)
            "source_weights": bundle.weights_path.read_bytes(), "source_sections": bundle.config}
        return write_bundle(
            directory, state_dict=state, encoder=encoder_of(self.encoder, recorded=options.recorded()),
            sizes={"in_dim": model.in_dim, "num_heads": model.num_heads, "head_dim": model.head_dim,
                   "out_dim": model.out_dim, "mask_padding": model.mask_padding},
            concepts=self.concepts, **settings, vectors=self._vectors if concept_vectors else None,
            source_sha256=source_sha, overwrite=overwrite,
            card_options={"license": license, "results": results, "repo_id": repo_id}, **source)

    def push_to_hub(self, repo_id: str, *, private: bool | None = None, token: str | None = None,
                    commit_message: str | None = None, license: str | None = None,
                    results: str | Path | Mapping | None = None) -> str:
        """Publish this guard as hub repo ``repo_id`` (created when missing; ``private`` as the hub's default when
        None); returns the commit's URL. Needs credentials (``hf auth login`` or ``HF_TOKEN``)."""
        from .push import hub_token, push_folder

        token = hub_token(repo_id, token)  # refused before anything is written
        with tempfile.TemporaryDirectory(prefix="latentguard-bundle-") as tmp:
            folder = self.save_pretrained(Path(tmp) / "bundle", license=license, results=results, repo_id=repo_id)
            return push_folder(folder, repo_id, private=private, token=token, commit_message=commit_message)

    # --------------------------------------------------------------------------------- helpers
    def _bundle_source(self, state: Mapping[str, Any]) -> tuple[str | None, bool, set[str]]:
        """(SHA-256 of the released-format file these weights came from, whether the weights are still the
        loaded ones, the SHA-256s an evaluation of these weights may name)."""
        import torch

        from ..io import sha256_of
        from ..model.checkpoint import load_safetensors_file, load_state_dict_file

        bundle, checkpoint = getattr(self, "bundle", None), getattr(self, "checkpoint", None)
        if bundle is not None:
            original, source, known = load_safetensors_file(bundle.weights_path), bundle.source_sha256, \
                {bundle.weights_sha256, bundle.source_sha256}
        elif checkpoint is not None and Path(checkpoint).is_file():
            source = sha256_of(checkpoint)
            original, known = load_state_dict_file(checkpoint), {source}
        else:
            return None, False, set()
        unchanged = set(original) == set(state) and all(
            torch.equal(original[k].reshape(-1).to(state[k].dtype), state[k].reshape(-1)) for k in state)
        return (source, True, known - {None}) if unchanged else (None, False, set())
