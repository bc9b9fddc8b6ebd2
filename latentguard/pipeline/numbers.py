"""Numbers a guarded call is steered by, read as diffusers reads them.

The guard reads a guidance setting with ``float()`` and comparisons; diffusers, Python arithmetic and torch use
the object itself. A ``float`` subclass can answer each differently: ``guidance_scale`` whose ``> 1`` is True
while its value is -7 turns classifier-free guidance on and makes the negative prompt (never checked) the
direction the image is pulled in, and an ``edit_guidance_scale`` or ``sld_mom_beta`` whose ``__float__`` says 5
passed the steering checks while diffusers used -10 (a fortieth hostile pass: each image identical to the
refused plain call), as did a ``torch.Tensor`` subclass or a numpy scalar subclass calling its module "numpy"
(a forty-second). So every number or array among a call's arguments, and among the pipeline's own attributes at
each denoiser step (a step callback may set ``pipe._guidance_scale``), must be of a plain type (``int``,
``float``, ``bool``, ``complex``, numpy's own scalar types exactly, ``torch.Tensor``, ``numpy.ndarray``), and a
guidance scale must be a number (a tensor's or an array's every value) that is finite and not negative: a
negative scale pulls the image towards the unconditional or negative text wherever a pipeline turns guidance
on for any value other than 1. A pipeline that turns guidance on for a scale between 0 and 1 (diffusers'
``Cosmos3OmniPipeline`` turns it on for any value but 1) would mix its negative text in with a positive weight:
out of reach of this rule (docs/pipeline.md).
"""
from __future__ import annotations

import functools
import math
import numbers
import re
from typing import Any

import numpy as np
import torch

from ..errors import LatentGuardError

_PLAIN = (bool, int, float, complex)
# A guidance scale of the call or the pipeline ("guidance_scale", "true_cfg_scale", "image_guidance_scale",
# "_guidance_scale"); Semantic Stable Diffusion's per-edit scale is read by steering.reversed_edits instead.
_GUIDANCE = re.compile(r"^_?(?!edit_)(\w+_)?(guidance_scale|cfg_scale)$")


@functools.lru_cache(maxsize=1)
def _numpy_scalars() -> frozenset[type]:
    """numpy's own scalar types, exactly (a subclass can name its module "numpy": a forty-second hostile pass)."""
    return frozenset(t for t in np.sctypeDict.values() if issubclass(t, np.number) or t is np.bool_)


def _disguised(value: Any) -> bool:
    """Whether ``value`` is a number or an array of a type other than the plain ones: a subclass can redefine its
    arithmetic and comparisons (a ``torch.Tensor`` subclass whose ``>`` is always True, a numpy scalar subclass)."""
    kind = type(value)
    if isinstance(value, torch.Tensor):
        return kind not in (torch.Tensor, torch.nn.Parameter)
    if isinstance(value, np.ndarray):
        return kind is not np.ndarray
    return isinstance(value, numbers.Number) and kind not in _PLAIN and kind not in _numpy_scalars()


def _guidance_values(name: str, value: Any) -> list[float] | None:
    """A guidance scale's values as plain floats (a tensor's or an array's each), or None when it is no number."""
    if isinstance(value, (torch.Tensor, np.ndarray)):
        array = value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else value
        return [float(v) for v in np.asarray(array, dtype=np.float64).reshape(-1)] if array.dtype.kind in "biuf" \
            else None
    if isinstance(value, (bool, int, float)) or type(value) in _numpy_scalars():
        return [float(value)]
    return None


def refuse_disguised_numbers(values: dict[str, Any], where: str) -> None:
    """Refuse a number or an array (alone, or in a list, tuple or dict among ``values``) of any type but the plain
    ones, and a guidance scale that is no number, negative or not finite: see the module docstring. ``where`` names
    the values."""
    for name, value in values.items():
        items = value.values() if isinstance(value, dict) else value if isinstance(value, (list, tuple)) else [value]
        for item in items:
            if _disguised(item):
                raise LatentGuardError(f"{where} {name} is a {type(item).__name__}, not a plain number: its arithmetic "
                                       "and comparisons can differ from the value the guard reads, so the call is "
                                       "refused (pass a float or an int)")
            if not _GUIDANCE.match(str(name)) or item is None:
                continue
            read = _guidance_values(name, item)
            if read is None or not all(0 <= v < math.inf for v in read):
                raise LatentGuardError(f"{where} {name}={item!r}: a guidance scale must be a finite number of 0 or "
                                       "more; a negative one pulls the image towards the negative or unconditional "
                                       "text, which is not checked, so the call is refused")
