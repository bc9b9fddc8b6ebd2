"""What a guarded call returns: a pipeline that returns conditioning instead of images hands it on.

A prior (Kandinsky's) runs ``prompt + negative_prompt`` through one model and returns both results:
``image_embeds`` and ``negative_image_embeds``, the prior's embedding of the negative text, which a
caller can give the decoder as a positive. So when an output carries embeddings, its negative texts
are products like any other and are checked before anything is returned.
"""
from __future__ import annotations

from typing import Sequence

from .boundary import BoundaryBlocked
from .result import validate_verdicts


def returns_conditioning(output) -> bool:
    """Whether a pipeline output carries embeddings (a prior's), not only images, latents or audio."""
    keys = output.keys() if hasattr(output, "keys") else []
    return any(isinstance(k, str) and k.endswith(("embeds", "embeddings")) for k in keys)


def check_returned_conditioning(output, negatives: Sequence[str], guard, session, pipeline: str) -> None:
    """Check ``negatives`` when ``output`` carries embeddings; an unsafe one raises :class:`BoundaryBlocked`
    (with ``annotate`` it is reported with the result instead, as a text met at an encoder)."""
    if not returns_conditioning(output):
        return
    texts = [t for t in dict.fromkeys(negatives) if t.strip()]
    if not texts:
        return
    with session.trusted():
        verdicts = list(guard.check(texts))
    validate_verdicts(verdicts, len(texts))
    where = f"the output of {pipeline} (its negative texts' embeddings, usable as conditioning)"
    session.verdicts.extend((where, v) for v in verdicts)
    unsafe = [v for v in verdicts if v.unsafe]
    if unsafe and not session.annotate:
        raise BoundaryBlocked(max(unsafe, key=lambda v: v.score), where)
