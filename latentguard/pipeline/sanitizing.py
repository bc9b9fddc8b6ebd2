"""``on_unsafe="sanitize"``: the unsafe texts of a guarded call replaced by their sanitized forms.

The guard edits each unsafe text (:meth:`latentguard.guard.LatentGuard.sanitize`); only when every one
of them passes are the call's text arguments rewritten, and the edited texts then go through the same
boundary as any checked text (:mod:`latentguard.pipeline.boundary`): what reaches the encoders must be
their tokenization and what conditions the denoiser must come from those encoder outputs, so a step
callback cannot bring back the original's conditioning.
"""
from __future__ import annotations

import numpy as np

from ..errors import LatentGuardError
from .arguments import text_list


def sanitize_call(guard, call: dict, texts: list, verdicts: list, n: int) -> tuple[dict, list, list]:
    """Sanitize the unsafe texts of ``texts`` (``(prompt index, argument, text)``, one verdict each).

    Returns ``(sanitized, texts, verdicts)``: per argument, per prompt its ``Sanitized`` (``None`` where the
    text was safe), and the texts and verdicts to go on with. When every unsafe text passes, ``call``'s
    arguments hold the edited texts and the returned verdicts are theirs; otherwise ``call`` is left as it
    was and the original (unsafe) verdicts are returned, so the call is refused.
    """
    if not callable(getattr(guard, "sanitize", None)):
        raise LatentGuardError("on_unsafe='sanitize' needs a guard with a sanitize(prompts) method (a LatentGuard)")
    unsafe = [k for k, v in enumerate(verdicts) if v.unsafe]
    fixed = list(guard.sanitize([texts[k][2] for k in unsafe]))
    if len(fixed) != len(unsafe) or not all(_valid(s) for s in fixed):
        raise LatentGuardError(f"the guard gave {len(fixed)} sanitized texts for {len(unsafe)} unsafe texts (or one "
                               "without a bool 'passes', a text and a verdict); refusing")
    sanitized: dict = {}
    for k, s in zip(unsafe, fixed):
        i, name, _ = texts[k]
        sanitized.setdefault(name, [None] * n)[i] = s
    if not all(s.passes and not s.after.unsafe and s.text != texts[k][2] for k, s in zip(unsafe, fixed)):
        return sanitized, texts, verdicts
    texts, verdicts = list(texts), list(verdicts)
    for k, s in zip(unsafe, fixed):
        i, name, _ = texts[k]
        texts[k], verdicts[k] = (i, name, s.text), s.after
    for name in sanitized:
        value = call[name]
        values = text_list(value, name, n)
        for i, s in enumerate(sanitized[name]):
            if s is not None:
                values[i] = s.text
        call[name] = values[0] if isinstance(value, str) and n == 1 else values
    return sanitized, texts, verdicts


def _valid(s) -> bool:
    """A sanitized text the wrapper can act on: a bool ``passes``, a str ``text``, a bool ``after.unsafe``."""
    return (isinstance(getattr(s, "passes", None), (bool, np.bool_)) and isinstance(getattr(s, "text", None), str)
            and isinstance(getattr(getattr(s, "after", None), "unsafe", None), (bool, np.bool_)))
