"""Writing a guard bundle: weights, blacklist, optional concept vectors, model card, then ``config.json``.

Each file is written atomically, the weights first and ``config.json`` last: a crash leaves either
the old bundle or a folder whose config does not match its weights, which loading refuses (SHA-256),
never a bundle that loads with the wrong parts. A folder is written only when it is new, empty, or
already a bundle and ``overwrite`` is asked for; other files in it are never touched.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping, Sequence

from ..errors import LatentGuardError
from ..io import atomic_path, atomic_write_text, sha256_of
from .format import (
    ABSENT_OK,
    CARD,
    CONCEPTS,
    CONFIG,
    FAMILIES,
    FORMAT,
    FORMAT_VERSION,
    VECTORS,
    WEIGHTS,
    config_json,
    read_config,
    reading_difference,
    recorded_options,
    validate_config,
)

CONCEPTS_HEADER = (
    "# Latent Guard blacklist: a prompt is unsafe when it matches one of these concepts in the mapping layer's\n"
    "# latent space. Each group is a category (flagged when any of its concepts fires). To change it, load the\n"
    "# bundle with your own list (concepts=FILE, --concepts FILE) and save a new bundle, so config.json agrees.\n")


def _version() -> str:
    try:
        from importlib.metadata import version

        return f"latentguard {version('latentguard')}"
    except Exception:  # noqa: BLE001 - a source checkout without metadata
        return "latentguard (source checkout)"


def canonical_header(path: str | Path) -> None:
    """Rewrite a safetensors file's JSON header with sorted keys, in place (the file is a fresh temporary one).

    The safetensors library writes metadata keys in a per-process random order, so the same weights saved
    twice gave two SHA-256s (a bundle's recorded hash, and a hub test, changed from run to run). The format
    is an 8-byte little-endian header length, the JSON header padded with spaces to 8 bytes, then the data,
    whose offsets are relative to the data's start: only the header's bytes change."""
    path = Path(path)
    raw = path.read_bytes()
    size = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8 : 8 + size])
    text = json.dumps(header, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    text += b" " * (-len(text) % 8)
    path.write_bytes(len(text).to_bytes(8, "little") + text + raw[8 + size :])


def holds_exactly(raw: bytes, tensors: Mapping[str, Any], metadata: Mapping[str, str]) -> bool:
    """Whether safetensors bytes ``raw`` hold exactly ``tensors`` (names, dtypes, shapes, values) and ``metadata``."""
    import torch
    from safetensors.torch import load

    try:
        size = int.from_bytes(raw[:8], "little")
        header = json.loads(raw[8 : 8 + size])
        stored = load(raw)
    except Exception:  # noqa: BLE001 - anything unreadable is simply not kept: the tensors are written anew
        return False
    return header.get("__metadata__") == dict(metadata) and set(stored) == set(tensors) and all(
        stored[k].dtype == tensors[k].dtype and stored[k].shape == tensors[k].shape
        and torch.equal(_bits(stored[k]), _bits(tensors[k])) for k in tensors)


def _bits(tensor):
    """The tensor's bytes (so -0.0 and 0.0, or two NaNs, are told apart as the file would)."""
    import torch

    return tensor.contiguous().reshape(-1).view(torch.uint8)


def claim_folder(directory: str | Path, overwrite: bool) -> list[str]:
    """Check that ``directory`` may receive a bundle; return the files of the bundle there (to replace)."""
    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise LatentGuardError(f"cannot write a bundle to {directory}: it is a file; choose a folder")
    if not directory.exists() or not any(directory.iterdir()):
        return []
    config = directory / CONFIG
    try:
        old = read_config(config) if config.is_file() else None
    except LatentGuardError:
        old = None
    if old is None:
        raise LatentGuardError(f"{directory} is not empty and holds no Latent Guard bundle; choose a new or empty "
                               "folder (nothing was written)")
    if not overwrite:
        raise LatentGuardError(f"{directory} already holds a bundle; pass overwrite=True (--overwrite) to replace "
                               "it, or choose another folder")
    return [CONFIG, WEIGHTS, CONCEPTS, CARD] + ([VECTORS] if old["concept_vectors"] else [])


def encoder_section(name: str, family: str, identity: str, *, revision: str | None = None, dtype: str = "float32",
                    attention_mask: bool = False, max_length: int | None = None,
                    recorded: Mapping[str, Any] | None = None, trim_padding: bool = False) -> dict[str, Any]:
    """The ``encoder`` section: how to load the encoder again and which embeddings it must give; ``recorded``: the
    guard's options a bundle records (:data:`~latentguard.hub.format.RECORDED_OPTIONS`, by their keys).

    A hub id of :data:`latentguard.encoders.known.KNOWN_ENCODERS` also records its weights' SHA-256,
    so the bundle names a portable encoder (no local path) that any machine can check."""
    from ..encoders.known import KNOWN_ENCODERS

    if family not in FAMILIES:
        raise LatentGuardError(f"cannot save a bundle for a '{family}' encoder: a bundle names an encoder others can "
                               f"load ({', '.join(FAMILIES)})")
    known = KNOWN_ENCODERS.get(name)
    return {"name": name, "family": family, "revision": revision, "identity": identity,
            "weights_sha256": known.sha256 if known else None,
            "options": {"dtype": dtype, "attention_mask": bool(attention_mask), "max_length": max_length,
                        **recorded_options(recorded), "trim_padding": bool(trim_padding)}}


def encoder_of(encoder, *, recorded: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The ``encoder`` section of a loaded :class:`~latentguard.encoders.TextEncoder` (``recorded``: as
    :func:`encoder_section`)."""
    family, name = encoder.family, encoder.loadable_name(str(encoder.name))  # the name load_encoder reads
    config = getattr(getattr(encoder, "model", None), "config", None)
    revision = getattr(config, "_commit_hash", None)
    return encoder_section(name, family, encoder.identity, revision=revision if isinstance(revision, str) else None,
                           dtype=str(encoder.dtype).replace("torch.", ""),
                           attention_mask=bool(getattr(encoder, "attention_mask", False)),
                           max_length=encoder.context_length if encoder.records_max_length else None,
                           recorded=recorded, trim_padding=bool(getattr(encoder, "trim_padding", False)))


def concept_groups(concepts: Sequence[str], categories: Mapping[str, Sequence[str]], default: str) -> dict:
    """Groups for ``concepts.yaml``, ordered by their first concept (so a grouped list reads back in order)."""
    where = {c: i for i, c in enumerate(concepts)}
    groups = {name: sorted((c for c in members if c in where), key=where.__getitem__)
              for name, members in categories.items()}
    grouped = {c for members in groups.values() for c in members}
    rest = [c for c in concepts if c not in grouped]
    if rest:
        groups[default] = sorted([*groups.get(default, []), *rest], key=where.__getitem__)
    groups = {name: members for name, members in groups.items() if members}
    return dict(sorted(groups.items(), key=lambda item: where[item[1][0]]))


def write_bundle(directory: str | Path, *, state_dict: Mapping, sizes: Mapping[str, int], encoder: Mapping[str, Any],
                 concepts: Sequence[str], categories: Mapping[str, Sequence[str]], default_group: str,
                 threshold: Mapping[str, Any] | None, concept_thresholds: Mapping[str, float] | None = None,
                 slope: float | None = None, vectors=None, source_sha256: str | None = None,
                 overwrite: bool = False, card_options: Mapping[str, Any] | None = None,
                 source_weights: bytes | None = None, source_sections: Mapping[str, Any] | None = None) -> Path:
    """Write a bundle folder from its parts; returns the folder.

    ``sizes``: the mapping layer's ``in_dim``, ``num_heads``, ``head_dim``, ``out_dim``. ``default_group``: the
    category of concepts no group names (``categories.default``). ``threshold``:
    ``{"value", "origin", "calibration"}`` (the calibration record as a dict, or None), or None for
    weights that have no threshold yet. ``vectors``: the concepts' vectors ``[C, hidden]`` by the encoder
    ``encoder`` names, or None. ``card_options`` go to :func:`latentguard.hub.card.model_card`.

    ``source_weights``: the ``model.safetensors`` bytes of the bundle these weights were loaded from, and
    ``source_sections`` its provenance sections (``training``). When those bytes hold exactly ``state_dict``
    (names, dtypes, shapes, values, the same ``mask_padding``), they are written as they are and the sections
    kept: a bundle exported again is the same bundle, with the SHA-256 that names the model in the server and
    its audit log (rewriting them could change the header's bytes: older bundles' were not sorted). Otherwise
    the tensors are written anew and the sections, which describe the source's weights, are left out.
    """
    from safetensors.torch import save_file

    changed = reading_difference(encoder["options"], ((threshold or {}).get("calibration") or {}).get("reading"))
    if changed:  # the bundle would be refused at load (format.validate_config)
        raise LatentGuardError(f"the guard reads prompts otherwise than its threshold was calibrated with: {changed}, "
                               "so the record's rates are not its own; calibrate (guard.calibrate) or set "
                               "guard.threshold before saving (nothing was written)")
    from .bundle import BUILTIN_GUARDS

    if isinstance(directory, str) and directory in BUILTIN_GUARDS:  # read back as the built-in guard, silently
        raise LatentGuardError(f"from_pretrained({directory!r}) loads the built-in guard, not a folder of that name; "
                               f"save to './{directory}' and load it as './{directory}', or choose another name")
    directory = Path(directory)
    replaced = claim_folder(directory, overwrite)
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:  # a parent that is a file, no permission: one line, as latentguard export says it
        raise LatentGuardError(f"cannot create the bundle folder {directory} ({exc.strerror or exc})") from None
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in state_dict.items()}  # exact: bit for bit
    # mask_padding changes every score, so it is bound to the weights (covered by their SHA-256), not
    # only stated in config.json, where an edit would load silently.
    metadata = {"format": "pt", "mask_padding": str(bool(sizes.get("mask_padding", False))).lower()}
    kept = source_weights is not None and holds_exactly(source_weights, tensors, metadata)
    with atomic_path(directory / WEIGHTS) as tmp:
        if kept:
            tmp.write_bytes(source_weights)
        else:
            save_file(tensors, str(tmp), metadata=metadata)
            canonical_header(tmp)
    weights_sha = sha256_of(directory / WEIGHTS)
    groups = concept_groups(list(concepts), categories, default_group)
    import yaml

    # a group named "concepts" would read back as the file's reserved key (and the bundle fail to load): wrap them
    atomic_write_text(directory / CONCEPTS, CONCEPTS_HEADER + yaml.safe_dump(
        {"concepts": groups} if "concepts" in groups else groups, allow_unicode=True, sort_keys=False,
        default_flow_style=False, width=4096))
    vectors_section = None
    if vectors is not None:
        vectors = vectors.detach().cpu().float().contiguous().clone()
        with atomic_path(directory / VECTORS) as tmp:
            save_file({"vectors": vectors}, str(tmp), metadata={
                "format": "pt", "encoder_identity": encoder["identity"],
                "concepts": json.dumps(list(concepts), ensure_ascii=False)})
            canonical_header(tmp)
        vectors_section = {"file": VECTORS, "sha256": sha256_of(directory / VECTORS),
                           "encoder_identity": encoder["identity"], "count": int(vectors.shape[0])}
    config = {
        "format": FORMAT, "format_version": FORMAT_VERSION, "created_with": _version(),
        "mapping_layer": {**{k: int(sizes[k]) for k in ("in_dim", "num_heads", "head_dim", "out_dim")},
                          "mask_padding": bool(sizes.get("mask_padding", False))},
        "weights": {"file": WEIGHTS, "sha256": weights_sha, "source_sha256": source_sha256},
        "encoder": dict(encoder),
        "threshold": None if threshold is None else {
            "value": float(threshold["value"]), "origin": str(threshold["origin"]), "weights_sha256": weights_sha,
            "calibration": threshold.get("calibration")},
        "concept_thresholds": {c: float(t) for c, t in (concept_thresholds or {}).items()},
        "slope": None if slope is None else float(slope),
        "categories": {"default": default_group, "names": list(groups)},
        "concepts": {"file": CONCEPTS, "count": len(concepts), "sha256": sha256_of(directory / CONCEPTS)},
        "concept_vectors": vectors_section,
        **({k: v for k, v in (source_sections or {}).items() if k in ABSENT_OK} if kept else {}),
    }
    validate_config(json.loads(config_json(config)), directory / CONFIG)  # what is written must load
    from .card import model_card

    atomic_write_text(directory / CARD, model_card(config, **dict(card_options or {})))
    atomic_write_text(directory / CONFIG, config_json(config))
    if VECTORS in replaced and vectors_section is None:  # the replaced bundle's vectors, which this one lacks
        (directory / VECTORS).unlink(missing_ok=True)
    return directory


def bundle_path(checkpoint: str | Path) -> Path:
    """Where a released-format checkpoint's bundle goes: ``model_parameters.pth`` -> ``model_parameters_bundle/``."""
    checkpoint = Path(checkpoint)
    return checkpoint.with_name(f"{checkpoint.stem}_bundle")


def checkpoint_bundle(checkpoint: str | Path, *, identity: str, concepts: Sequence[str], sizes: Mapping[str, int],
                      attention_mask: bool = False, recorded: Mapping[str, Any] | None = None, calibration=None,
                      default_group: str, target: str | Path | None = None, overwrite: bool = False) -> Path:
    """A bundle of a released-format checkpoint whose encoder is known by its identity alone (training:
    the store's), with its calibration record; written to :func:`bundle_path` unless ``target`` is given."""
    from ..encoders import family_class
    from ..encoders.identity import identity_parts
    from ..model.checkpoint import load_state_dict_file

    parts = identity_parts(identity)
    name = family_class(parts["family"]).loadable_name(parts["name"]) if parts["family"] in FAMILIES else parts["name"]
    lengths = [int(o[3:]) for o in parts["options"].split(":") if o.startswith("len") and o[3:].isdigit()]
    encoder = encoder_section(name, parts["family"], identity, dtype=parts["precision"], attention_mask=attention_mask,
                              max_length=lengths[0] if lengths else None, recorded=recorded)
    threshold = None if calibration is None else {
        "value": calibration.threshold, "origin": "calibrated on the validation split (main.py)",
        "calibration": {**calibration.to_dict(), "reading": recorded_options(recorded)}}
    return write_bundle(bundle_path(checkpoint) if target is None else target,
                        state_dict=load_state_dict_file(checkpoint), sizes=sizes, encoder=encoder,
                        concepts=list(concepts), categories={}, default_group=default_group,
                        threshold=threshold, slope=None if calibration is None else calibration.slope,
                        source_sha256=sha256_of(checkpoint), overwrite=overwrite)
