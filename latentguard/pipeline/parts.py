"""The parts of a pipeline the guard watches: its text encoders, their tokenizers and every other module.

A *text encoder* is any ``torch.nn.Module`` component whose ``forward`` takes ``input_ids`` (CLIP, T5,
BERT, LLM text towers); a *tokenizer* is any component with ``__call__``, ``decode`` and
``all_special_ids`` (a processor's ``.tokenizer`` included); every other module (UNet, transformer,
ControlNet, prior, VAE...) is watched for the text conditioning it receives. Also here: the
unmodified weights of a text encoder carrying PEFT adapters (LoRA), and a seal on their full content.
"""
from __future__ import annotations

import contextlib
import hashlib
import inspect
from dataclasses import dataclass, field
from typing import Iterator

import torch

from ..errors import LatentGuardError


@dataclass
class Parts:
    """What :func:`find_parts` found, by component name (``prior_text_encoder``, ``controlnet[1]``...)."""

    encoders: dict[str, torch.nn.Module] = field(default_factory=dict)
    tokenizers: dict[str, object] = field(default_factory=dict)
    others: dict[str, torch.nn.Module] = field(default_factory=dict)

    def tokenizers_for(self, encoder_name: str) -> list:
        """The tokenizer feeding ``encoder_name`` (``text_encoder_2`` -> ``tokenizer_2``), else all of them."""
        own = self.tokenizers.get(encoder_name.replace("text_encoder", "tokenizer"))
        return [own] if own is not None else list(self.tokenizers.values())


def find_parts(pipe) -> Parts:
    """Every text encoder, tokenizer and other module of ``pipe`` (nested pipelines included).

    Refuses (one line) a pipeline whose text encoders cannot be watched: none found, or a component
    named like one that is not a torch module (an ONNX session, a remote call).
    """
    parts = Parts()
    _collect(pipe, "", parts, depth=0)
    name = type(pipe).__name__
    if not parts.encoders:
        raise LatentGuardError(f"{name} has no text encoder module the guard can watch (a torch module taking "
                               "input_ids); the guard checks what reaches the text encoders, so it refuses to wrap it")
    if not parts.tokenizers:
        raise LatentGuardError(f"{name} has no tokenizer the guard can read token ids with; refusing to wrap it")
    return parts


def _components(obj) -> dict:
    components = getattr(obj, "components", None)
    if isinstance(components, dict):
        return components
    return {k: v for k, v in vars(obj).items() if not k.startswith("_")} if hasattr(obj, "__dict__") else {}


def _collect(obj, prefix: str, parts: Parts, depth: int) -> None:
    for key, value in _components(obj).items():
        name = f"{prefix}{key}"
        if isinstance(value, (list, tuple)):
            items = [(f"{name}[{i}]", v) for i, v in enumerate(value)]
        else:
            items = [(name, value)]
        for item_name, item in items:
            _classify(item_name, item, parts, depth)


def _classify(name: str, value, parts: Parts, depth: int) -> None:
    if value is None or isinstance(value, (str, bytes, int, float, bool, dict)):
        return
    if isinstance(value, torch.nn.Module):
        (parts.encoders if takes_token_ids(value) else parts.others)[name] = value
    elif is_tokenizer(value):
        parts.tokenizers[name] = value
    elif is_tokenizer(getattr(value, "tokenizer", None)):  # a processor (Qwen-VL, CLIP): its text half
        parts.tokenizers[name] = value.tokenizer
    elif "text_encoder" in name and callable(value):
        raise LatentGuardError(f"component {name} ({type(value).__name__}) is not a torch module, so the guard cannot "
                               "watch what reaches it; refusing to wrap the pipeline")
    elif depth < 2 and isinstance(getattr(value, "components", None), dict):  # a sub-pipeline
        _collect(value, f"{name}.", parts, depth + 1)


def takes_token_ids(module: torch.nn.Module) -> bool:
    """Whether ``module.forward`` takes ``input_ids`` (a text encoder)."""
    try:
        return "input_ids" in inspect.signature(module.forward).parameters
    except (TypeError, ValueError):
        return False


def is_tokenizer(value) -> bool:
    return (value is not None and callable(value) and callable(getattr(value, "decode", None))
            and hasattr(value, "all_special_ids"))


# ------------------------------------------------------------------------- adapters and weights
def _tuner_layers(module: torch.nn.Module) -> list:
    """PEFT adapter layers (LoRA and kin): each wraps a ``base_layer`` and can switch its adapters off."""
    return [m for m in module.modules() if hasattr(m, "base_layer") and callable(getattr(m, "enable_adapters", None))
            and hasattr(m, "disable_adapters")]


def has_adapters(module) -> bool:
    return isinstance(module, torch.nn.Module) and bool(_tuner_layers(module))


@contextlib.contextmanager
def unmodified_weights(module) -> Iterator[None]:
    """Run ``module`` on the weights the mapping layer was trained for: its PEFT adapters switched off.

    Restores each layer's adapter state and its parameters' ``requires_grad`` afterwards. Refuses a
    layer whose adapter is merged into its weights (there are no unmodified weights left to use).
    """
    layers = _tuner_layers(module) if isinstance(module, torch.nn.Module) else []
    if any(getattr(m, "merged", False) for m in layers):
        raise LatentGuardError("the guard's text encoder has an adapter (LoRA) fused into its weights, so its "
                               "unmodified weights are gone; unfuse it (pipe.unfuse_lora()) to guard this pipeline")
    grads = {p: p.requires_grad for m in layers for p in m.parameters()}
    was_disabled = [bool(m.disable_adapters) for m in layers]
    try:
        for m in layers:
            m.enable_adapters(False)
        yield
    finally:
        for m, disabled in zip(layers, was_disabled):
            m.enable_adapters(not disabled)
        for p, grad in grads.items():
            p.requires_grad_(grad)


def _base_tensors(module: torch.nn.Module):
    """``(name, tensor)`` of a module's own weights: PEFT adapter tensors (``lora_*``) left out and ``.base_layer``
    removed from names, so loading a LoRA keeps them and fusing one (or any other change) does not."""
    for name, tensor in module.state_dict().items():
        if "lora_" not in name:
            yield name.replace(".base_layer", ""), tensor


def _marks(module: torch.nn.Module) -> dict:
    """What torch tells of each tensor for free: shape, dtype, device, storage and its version counter (bumped by
    every in-place write through torch: ``weight[i] = ...``, ``copy_``, ``load_state_dict``, optimiser steps)."""
    return {name: (tuple(t.shape), t.dtype, t.device, t.data_ptr(), t._version) for name, t in _base_tensors(module)}


def base_fingerprint(module: torch.nn.Module) -> str:
    """A hash of the full content of a module's own weights (every byte of every tensor, with its name, shape and
    dtype; adapters aside as in :func:`_base_tensors`)."""
    digest = hashlib.sha256()
    for name, tensor in _base_tensors(module):
        flat = tensor.detach().reshape(-1).contiguous().cpu()
        digest.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype}".encode())
        digest.update(memoryview(flat.view(torch.uint8).numpy()))
    return digest.hexdigest()


class WeightsSeal:
    """The weights a guard reads, sealed when the pipeline is wrapped, checked at every call.

    The full content is hashed once (:func:`base_fingerprint`: about a second for CLIP ViT-L/14's text encoder on
    a CPU core), and each call compares torch's free per-tensor marks (:func:`_marks`); when any differ (an
    in-place edit of a middle row, a replaced or cast tensor, a fused LoRA) the full content is hashed again and
    must be the sealed one. Writes that bypass torch's version counter (``weight.data[i] = ...``, a NumPy view
    of a weight) are seen by :meth:`verify` with ``full=True`` only (docs/pipeline.md).
    """

    def __init__(self, name: str, module: torch.nn.Module) -> None:
        self.name = name
        self.marks, self.digest = _marks(module), base_fingerprint(module)

    def verify(self, module: torch.nn.Module, *, full: bool = False) -> bool:
        """Whether ``module`` still holds the sealed weights."""
        marks = _marks(module)
        if marks == self.marks and not full:
            return True
        if base_fingerprint(module) != self.digest:
            return False
        self.marks = marks  # the same bytes (moved to another device and back, written with equal values)
        return True


def weights_seal(name: str, module: torch.nn.Module) -> WeightsSeal:
    """:class:`WeightsSeal`, or a one-line refusal when the weights cannot be read."""
    try:
        return WeightsSeal(name, module)
    except (RuntimeError, NotImplementedError):  # weights on the meta device (sequential CPU offload)
        raise LatentGuardError(f"cannot read the weights of {name}, which the guard reads, to check they are "
                               "unchanged (sequential CPU offload?); use enable_model_cpu_offload()") from None


def weights_unchanged(seal: WeightsSeal, module: torch.nn.Module, *, full: bool = False) -> bool:
    """``seal.verify(module)``, or a one-line refusal when the weights cannot be read."""
    try:
        return seal.verify(module, full=full)
    except (RuntimeError, NotImplementedError):
        raise LatentGuardError(f"cannot read the weights of {seal.name}, which the guard reads, to check they are "
                               "unchanged (sequential CPU offload?); use enable_model_cpu_offload()") from None


def validate_concept_vectors(guard, module: torch.nn.Module, name: str, sample: int = 4) -> None:
    """The guard's concept vectors must come from the unmodified weights of the encoder it shares.

    A few concepts are re-encoded with adapters switched off and compared with the stored vectors:
    the same weights agree to float rounding (~1e-6 relative across batch shapes in float32, ~1e-3
    in half precision), so 1e-2 relative separates rounding from a LoRA loaded before the guard
    was built (a scale-0.5 LoRA moved them by ~0.5).
    """
    vectors, concepts = getattr(guard, "concept_vectors", None), getattr(guard, "concepts", None)
    if not isinstance(vectors, torch.Tensor) or not concepts or not hasattr(guard.encoder, "encode_concepts"):
        return
    with unmodified_weights(module):
        fresh = guard.encoder.encode_concepts(list(concepts[:sample])).float().cpu()
    stored = vectors[: len(fresh)].float().cpu()
    drift = float(((fresh - stored).norm(dim=-1) / stored.norm(dim=-1).clamp_min(1e-12)).max())
    if not drift <= 1e-2:
        raise LatentGuardError(f"the guard's concept vectors differ from what the unmodified {name} gives (relative "
                               f"drift {drift:.3g}): they were encoded with other weights (a LoRA?); build the guard "
                               "on the unmodified text encoder, then load the LoRA")
