"""Mapping-layer checkpoints: the released state-dict format, read safely and strictly, written atomically.

Reading uses ``torch.load(weights_only=True)``: a pickle that holds anything but tensors is refused
and never run. A checkpoint is fitted to a layer by its shapes, and a missing, extra or mis-shaped
key is named in a one-line error. The released weights are downloaded on first use and checked
against their published SHA-256 and git blob id.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Mapping

import torch

from ..constants import DEFAULT_CHECKPOINT
from ..downloads import download
from ..errors import LatentGuardError
from ..io import latentguard_home, move_aside, sha256_of
from ..published import RELEASED_CHECKPOINT_GIT_BLOB, RELEASED_CHECKPOINT_SHA256, RELEASED_CHECKPOINT_URL
from .layer import EmbeddingMappingLayer
from .sanity import validate_weights


def expected_shapes(in_dim: int = 768, num_heads: int = 16, head_dim: int = 32, out_dim: int = 128) -> dict[str, tuple]:
    """The state-dict layout of a mapping layer with these sizes (released: the defaults)."""
    return {k: tuple(v.shape)
            for k, v in EmbeddingMappingLayer(in_dim, num_heads, head_dim, out_dim).state_dict().items()}


def infer_dims(state_dict: Mapping[str, torch.Tensor], num_heads: int = 16) -> dict[str, int]:
    """Read ``in_dim``/``out_dim``/inner width from a state dict (heads cannot be read: given).

    Each size is the one most of the layers agree on, so a single missing or mis-shaped tensor is
    reported by name by :func:`load_mapping_layer` instead of derailing the size inference.
    """
    def vote(keys: list[str]) -> tuple[int, int] | None:
        shapes = [tuple(state_dict[k].shape) for k in keys
                  if isinstance(state_dict.get(k), torch.Tensor) and state_dict[k].dim() == 2]
        return max(shapes, key=shapes.count) if shapes else None  # ties: the first key wins

    inputs = vote(["x1_to_key.weight", "x1_to_value.weight", "x2_to_query.weight"])
    outputs = vote(["final_mlp.weight", "mlp_query1.weight"])
    if inputs is None or outputs is None:
        raise LatentGuardError("no Embedding Mapping Layer weights found (expected x1_to_key.weight, "
                               "final_mlp.weight, ... as in the released model_parameters.pth)")
    inner, in_dim = inputs
    if inner % num_heads:
        raise LatentGuardError(f"checkpoint inner width {inner} is not divisible by {num_heads} heads")
    return {"in_dim": int(in_dim), "num_heads": num_heads, "head_dim": int(inner) // num_heads,
            "out_dim": int(outputs[0])}


def load_state_dict_file(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a plain state dict safely (``weights_only=True``); accept ``{"model": state_dict}`` too."""
    from ..io import named_file_problem

    path = Path(path)
    problem = named_file_problem(path, "checkpoint")
    if problem is not None:  # missing, or a FIFO / device / directory: said as such
        raise LatentGuardError(problem)
    if path.suffix == ".safetensors":  # never unpickled, whatever the bytes are
        return load_safetensors_file(path)
    from ..regular_files import open_regular_read

    with open_regular_read(path, "checkpoint") as handle:  # read through one descriptor, checked regular
        _check_archive(handle, path)
        handle.seek(0)
        try:
            obj = torch.load(handle, map_location="cpu", weights_only=True)
        except Exception as exc:  # pickle errors, truncated files, non-torch files
            # torch's own message for refused pickles advises weights_only=False: never pass that on.
            raise LatentGuardError(f"{path}: cannot read checkpoint ({type(exc).__name__}); it is not a PyTorch "
                                   "state-dict file, is truncated/corrupt, or pickles objects other than tensors "
                                   "(save model.state_dict(), not the model)") from None
    for wrapper in ("model", "state_dict"):
        if isinstance(obj, Mapping) and wrapper in obj and isinstance(obj[wrapper], Mapping):
            obj = obj[wrapper]
            break
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise LatentGuardError(f"{path}: not a state dict of tensors (expected the released model_parameters.pth "
                               "format)")
    return dict(obj)


def _check_archive(handle, path: Path) -> None:
    """A zip-format checkpoint (torch's default) carries a CRC-32 per entry, which ``torch.load`` does
    not check: a flipped byte in the tensor data would load silently. Check every entry of ``handle``
    (``path``, open) first."""
    import zipfile

    if not zipfile.is_zipfile(handle):
        return  # the legacy format has no checksums to check
    try:
        with zipfile.ZipFile(handle) as archive:
            bad = archive.testzip()
    except (zipfile.BadZipFile, OSError, RuntimeError, EOFError) as exc:
        raise LatentGuardError(f"{path}: damaged checkpoint archive ({type(exc).__name__}); restore it from its "
                               "source") from None
    if bad is not None:
        raise LatentGuardError(f"{path}: damaged checkpoint: the checksum (CRC-32) of {bad} does not match its data; "
                               "restore the file from its source")


def load_safetensors_file(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a safetensors state dict (a guard bundle's ``model.safetensors``); anything else, e.g. a pickle
    renamed, is refused in one line."""
    from safetensors import SafetensorError
    from safetensors.torch import load

    from ..regular_files import open_regular_read

    try:
        with open_regular_read(path, "weights file") as handle:  # read whole: safetensors' own open would block
            data = handle.read()  # on a FIFO
        return load(data)
    except (SafetensorError, OSError, ValueError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise LatentGuardError(f"{path}: not a safetensors file ({reason}); a bundle's weights are safetensors, never "
                               "a pickle: rebuild it with `latentguard export`") from None


def safetensors_metadata(path: str | Path) -> dict[str, str]:
    """The ``__metadata__`` of a safetensors file's header (empty when absent), read through a descriptor checked
    regular: safetensors' ``safe_open`` opens the path itself, and would block on a FIFO put in its place. The
    header is 8 bytes of little-endian length, then that much JSON."""
    import json
    import struct

    from ..regular_files import open_regular_read

    with open_regular_read(path, "weights file") as handle:
        head = handle.read(8)
        size = struct.unpack("<Q", head)[0] if len(head) == 8 else -1
        raw = handle.read(size) if 0 <= size <= 100_000_000 else b""  # safetensors' own header limit: 100 MB
    try:
        header = json.loads(raw)
    except ValueError:
        header = None
    if not isinstance(header, dict) or len(raw) != size:
        raise LatentGuardError(f"{path}: not a safetensors file (its header cannot be read); rebuild it with "
                               "`latentguard export`")
    metadata = header.get("__metadata__") or {}
    return metadata if isinstance(metadata, dict) else {}


def load_mapping_layer(path: str | Path, *, in_dim: int | None = None, num_heads: int = 16,
                       device: str | torch.device = "cpu") -> EmbeddingMappingLayer:
    """Build a mapping layer that fits the checkpoint at ``path`` and load it strictly.

    ``in_dim`` is the encoder's hidden size: a mismatch is reported as such. Missing keys, extra
    keys and wrong shapes are each named in a one-line error.
    """
    state = load_state_dict_file(path)
    try:
        dims = infer_dims(state, num_heads)
    except LatentGuardError as exc:
        raise LatentGuardError(f"{path}: {exc}") from None
    if in_dim is not None and dims["in_dim"] != in_dim:
        raise LatentGuardError(f"{path}: checkpoint expects encoder width {dims['in_dim']}, but the encoder's "
                               f"hidden size is {in_dim}; use the encoder the checkpoint was trained with")
    model = EmbeddingMappingLayer(**dims)
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    missing = sorted(set(expected) - set(state))
    extra = sorted(set(state) - set(expected))
    wrong = [f"{k} {list(state[k].shape)} (expected {list(expected[k])})" for k in expected
             if k in state and tuple(state[k].shape) != expected[k] and not (k == "tempr" and state[k].numel() == 1)]
    problems = []
    if missing:
        problems.append("missing keys: " + ", ".join(missing))
    if extra:
        problems.append("unexpected keys: " + ", ".join(extra))
    if wrong:
        problems.append("wrong shapes: " + ", ".join(wrong))
    if problems:
        raise LatentGuardError(f"{path}: checkpoint does not fit the Embedding Mapping Layer; " + "; ".join(problems))
    model.load_state_dict(state, strict=True)
    validate_weights(model, str(path))  # usable weights, or a one-line refusal (latentguard.model.sanity)
    return model.to(device).eval()


def released_checkpoint(path: str | Path = DEFAULT_CHECKPOINT) -> Path:
    """Return a path to the released weights: ``path`` if it exists, else a verified cached download.

    Only the bare released file name (no directory) triggers a download; any other missing path is
    an error, so a typo such as ``runs/tyop/model_parameters.pth`` never silently swaps in the
    released weights.
    """
    path = Path(path)
    if path.is_file():
        return path
    if os.path.lexists(path):  # there, but no regular file (a directory, a FIFO, a link to a device)
        from ..io import named_file_problem

        raise LatentGuardError(named_file_problem(path, "checkpoint", "--checkpoint"))
    if path.name != DEFAULT_CHECKPOINT or path.parent != Path("."):
        raise LatentGuardError(f"checkpoint not found: {path} (check --checkpoint; omit it to use the released "
                               "model_parameters.pth)")
    cached = latentguard_home() / DEFAULT_CHECKPOINT
    note = ""
    if cached.is_file():
        if sha256_of(cached) == RELEASED_CHECKPOINT_SHA256:
            return cached
        aside = move_aside(cached)  # not ours to delete: set it aside and fetch the released file again
        note = f"the cached {cached} is not the released file (SHA-256 differs) and was moved to {aside}"
        print(f"warning: {note}", file=sys.stderr)
    try:
        return download(RELEASED_CHECKPOINT_URL, cached, RELEASED_CHECKPOINT_SHA256, what="released checkpoint",
                        git_blob=RELEASED_CHECKPOINT_GIT_BLOB)
    except LatentGuardError as exc:
        raise LatentGuardError(f"{exc}; {note}" if note else str(exc)) from None


def plain_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """CPU copy of the state dict: the released ``model_parameters.pth`` format."""
    return {k: v.detach().to("cpu", copy=True).contiguous() for k, v in model.state_dict().items()}
