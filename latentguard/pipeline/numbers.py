"""Numbers a guarded call is steered by, read as diffusers reads them.

The guard reads a guidance setting with ``float()`` and comparisons; diffusers, Python arithmetic and torch use
the object itself. A ``float`` subclass can answer each differently: ``guidance_scale`` whose ``> 1`` is True
while its value is -7 turns classifier-free guidance on and makes the negative prompt (never checked) the
direction the image is pulled in, and an ``edit_guidance_scale`` or ``sld_mom_beta`` whose ``__float__`` says 5
passed the steering checks while diffusers used -10 (a fortieth hostile pass: each image identical to the
refused plain call). So every number among a call's arguments, and among the pipeline's own attributes at each
denoiser step (a step callback may set ``pipe._guidance_scale``), must be a plain one (``int``, ``float``,
``bool``, ``complex`` or numpy's own scalars), and a guidance scale must not be negative: a negative scale pulls
the image towards the unconditional or negative text wherever a pipeline turns guidance on for any value
other than 1.
"""
from __future__ import annotations

import math
import numbers
import re
from typing import Any

from ..errors import LatentGuardError

_PLAIN = (bool, int, float, complex)
# A guidance scale of the call or the pipeline ("guidance_scale", "true_cfg_scale", "image_guidance_scale",
# "_guidance_scale"); Semantic Stable Diffusion's per-edit scale is read by steering.reversed_edits instead.
_GUIDANCE = re.compile(r"^_?(?!edit_)(\w+_)?(guidance_scale|cfg_scale)$")


def _disguised(value: Any) -> bool:
    """Whether ``value`` is a number of a type other than the plain ones (a subclass can redefine its arithmetic)."""
    if not isinstance(value, numbers.Number) or type(value) in _PLAIN:
        return False
    return type(value).__module__ != "numpy"  # numpy's own scalars (np.float32, np.int64) read as their value


def refuse_disguised_numbers(values: dict[str, Any], where: str) -> None:
    """Refuse a number (alone, or in a list, tuple or dict among ``values``) that is not a plain one, and a
    guidance scale that is negative or not finite: see the module docstring. ``where`` names the values."""
    for name, value in values.items():
        items = value.values() if isinstance(value, dict) else value if isinstance(value, (list, tuple)) else [value]
        for item in items:
            if _disguised(item):
                raise LatentGuardError(f"{where} {name} is a {type(item).__name__}, not a plain number: its arithmetic "
                                       "and comparisons can differ from the value the guard reads, so the call is "
                                       "refused (pass a float or an int)")
            if _GUIDANCE.match(str(name)) and isinstance(item, (int, float)) and not 0 <= item < math.inf:
                raise LatentGuardError(f"{where} {name}={item!r}: a guidance scale must be a finite number of 0 or "
                                       "more; a negative one pulls the image towards the negative or unconditional "
                                       "text, which is not checked, so the call is refused")
