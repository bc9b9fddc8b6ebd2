"""Where a conditioning tensor came from: the text encoders' outputs in this call, vector by vector.

Every floating tensor a text encoder returns during a guarded call (last states, every hidden
layer, pooled and projected vectors) is copied to the CPU with the role of its batch row:
``checked`` (a text the guard checked, or an all-zero row: no text at all), ``negative`` (an
unconditional or negative text, which the guard does not check) or ``safety`` (Safe Latent
Diffusion's ``safety_concept``, a steer-away text allowed only in that pipeline's guidance rows).
A tensor the denoiser receives is then traced one vector at a time (each token state, each pooled vector): it must be a
concatenation of recorded vectors and zero padding (SDXL joins two encoders' states feature-wise,
SD3 pads CLIP to T5's width; the pipeline may repeat, reorder and stack rows). Equality is exact,
after casting the recorded vectors to the received tensor's dtype (the pipeline's own cast). A row
takes the most restricted role of its vectors (``safety`` over ``negative`` over ``checked``); a vector
that texts of several roles give takes the least restricted one (a checked text's vector is checked content).
"""
from __future__ import annotations

import numpy as np
import torch

CHECKED, NEGATIVE, SAFETY = "checked", "negative", "safety"
_RANK = {CHECKED: 0, NEGATIVE: 1, SAFETY: 2}  # how far a row of that role is restricted


def looser(a: str | None, b: str) -> str:
    """The less restricted of two roles of one content (``a`` may be unknown yet)."""
    return b if a is None or _RANK[b] < _RANK[a] else a


def same_tensor(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Whether ``a`` and ``b`` are the same values in the same shape, dtype and device."""
    return a.shape == b.shape and a.dtype == b.dtype and a.device == b.device and torch.equal(a, b)


def stricter(a: str, b: str) -> str:
    """The more restricted of two roles (a row's role from its vectors')."""
    return b if _RANK[b] > _RANK[a] else a


class Provenance:
    """The encoder outputs of one guarded call, and the tracing of tensors back to them."""

    def __init__(self) -> None:
        self._records: list[tuple[torch.Tensor, list[str]]] = []
        self._index: dict[tuple[int, torch.dtype], dict[bytes, str]] = {}
        self._indexed: dict[tuple[int, torch.dtype], int] = {}

    def __len__(self) -> int:
        return len(self._records)

    def record(self, output, roles: list[str]) -> None:
        """Keep a CPU copy of every floating tensor in ``output`` whose first dim is the batch of ``roles``."""
        for tensor in _tensors(output):
            if tensor.is_floating_point() and tensor.dim() >= 2 and tensor.shape[0] == len(roles):
                self._records.append((tensor.detach().to("cpu", copy=True), list(roles)))

    def _vectors(self, width: int, dtype: torch.dtype) -> dict[bytes, str]:
        key = (width, dtype)
        index = self._index.setdefault(key, {})
        for tensor, roles in self._records[self._indexed.get(key, 0):]:
            if tensor.shape[-1] != width:
                continue
            rows = tensor.to(dtype).contiguous()
            per_row = rows[0].numel() // width
            flat = rows.reshape(-1, width).view(torch.uint8).numpy()
            for k, vector in enumerate(flat):
                role = roles[k // per_row]
                vector_key = vector.tobytes()
                index[vector_key] = looser(index.get(vector_key), role)  # a checked text's vector is checked
        self._indexed[key] = len(self._records)
        return index

    def roles(self, x: torch.Tensor) -> list[str] | None:
        """Per batch row of ``x``, its role (``checked``, ``negative``, ``safety``); ``None`` when a vector traces to
        no record."""
        x = x.detach().to("cpu").contiguous()
        if x.dim() == 1:
            x = x.unsqueeze(0)
        width = x.shape[-1]
        vectors = x.reshape(x.shape[0], -1, width)
        widths = sorted({t.shape[-1] for t, _ in self._records if t.shape[-1] <= width}, reverse=True)
        indexes = {w: self._vectors(w, x.dtype) for w in widths}
        size = x.element_size()
        raw = vectors.view(torch.uint8).numpy() if width else np.zeros(vectors.shape + (0,), np.uint8)
        zero = (vectors == 0).numpy()
        out = []
        for b in range(vectors.shape[0]):
            role = CHECKED
            for s in range(vectors.shape[1]):
                found = _trace(raw[b, s], zero[b, s], widths, indexes, size)
                if found is None:
                    return None
                role = stricter(role, found)
            out.append(role)
        return out


def _trace(raw: np.ndarray, zero: np.ndarray, widths: list[int], indexes: dict, size: int) -> str | None:
    """A vector as recorded segments and zero runs, left to right: its role, or ``None``."""
    offset, end, role = 0, len(zero), CHECKED
    while offset < end:
        if zero[offset:].all():
            return role
        for w in widths:
            if offset + w <= end:
                found = indexes[w].get(raw[offset * size:(offset + w) * size].tobytes())
                if found is not None:
                    offset += w
                    role = stricter(role, found)
                    break
        else:
            if not zero[offset]:
                return None
            offset += int(np.argmax(~zero[offset:]))  # skip the zero run (there is a non-zero after it)
    return role


def _tensors(value):
    """Every tensor inside a model output (a ModelOutput, tuple, list or dict of them)."""
    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from _tensors(item)
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from _tensors(item)
    elif hasattr(value, "to_tuple"):
        yield from _tensors(value.to_tuple())
