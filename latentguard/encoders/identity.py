"""Encoder identities: which stored embeddings two encoders can share.

An identity is ``family:name:h<width>:<weights hash>:tok<tokenizer digest>[:options][:precision]``
(:attr:`latentguard.encoders.base.TextEncoder.identity`); stores and concept caches are keyed by it.
"""
from __future__ import annotations

import re

_TOKENIZER = re.compile(r"tok[0-9a-f]{8}")  # the tokenizer's digest (TextEncoder.tokenizer_digest)
_IDENTITY = re.compile(r"^(?P<family>[^:]+):(?P<name>.*):h(?P<width>\d+):(?P<weights>[0-9a-f]{16})"
                       r"(?P<options>(?::[^:]*)*)$")


def identity_parts(identity: str) -> dict[str, str]:
    """Split an :attr:`TextEncoder.identity` into family, name, width, weights, tokenizer, options, precision.

    ``name`` is cosmetic (the same weights may be loaded under two names, e.g. CLIP ViT-L/14 as
    ``openai/clip-vit-large-patch14`` or as a Stable Diffusion pipeline's ``text_encoder``); the
    other parts decide whether two encoders give the same embeddings. An identity that does not
    parse comes back whole as ``name`` with the other parts empty.
    """
    match = _IDENTITY.match(identity)
    if match is None:
        return {"family": "", "name": identity, "width": "", "weights": "", "tokenizer": "", "options": "",
                "precision": "float32"}
    parts = match.groupdict()
    options = [o for o in parts["options"].split(":") if o]
    precision = options.pop() if options and options[-1] in ("float16", "bfloat16") else "float32"
    parts["tokenizer"] = next((o[3:] for o in options if _TOKENIZER.fullmatch(o)), "")
    parts["options"] = ":".join(o for o in options if not _TOKENIZER.fullmatch(o))
    parts["precision"] = precision
    return parts


def same_embeddings(a: str, b: str) -> bool | None:
    """Whether encoders ``a`` and ``b`` (identities) embed alike: True, False, or None if only precision differs."""
    pa, pb = identity_parts(a), identity_parts(b)
    if not pa["weights"] or not pb["weights"]:
        return a == b
    keys = ("family", "width", "weights", "options")
    if any(pa[k] != pb[k] for k in keys):
        return False
    if pa["tokenizer"] and pb["tokenizer"] and pa["tokenizer"] != pb["tokenizer"]:
        return False  # one made before identities held the tokenizer is taken on its weights alone
    return True if pa["precision"] == pb["precision"] else None
