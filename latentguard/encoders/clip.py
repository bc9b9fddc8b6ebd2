"""The Hugging Face CLIP text tower: the released encoder (``openai/clip-vit-large-patch14``)."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch

from ..errors import LatentGuardError
from .base import CONTEXT_LENGTH, DEFAULT_ENCODER, TextEncoder, weights_fingerprint
from .hf import _HFTokenizerMixin, _load_hf, _model_type
from .precision import resolve_device, resolve_dtype

_CLIP_MODEL_TYPES = ("clip", "clip_text_model")
CLIP_VOCAB_SIZE = 49408  # the CLIP BPE: 49,152 merges and byte symbols, plus start and end of text


class CLIPTextEncoder(_HFTokenizerMixin, TextEncoder):
    """The Hugging Face CLIP text tower (default ``openai/clip-vit-large-patch14``), frozen.

    ``model`` is a hub name, a local directory, or an already-built ``CLIPTextModel`` (then pass
    ``tokenizer`` too, or the real CLIP tokenizer is rebuilt offline). ``attention_mask=True``
    departs from the reference, which encodes padding without a mask.

    An already-built model is moved to ``device``/``dtype`` in place (``nn.Module.to``): to share a
    text-to-image pipeline's encoder, pass its own device and dtype (see
    :func:`latentguard.pipeline.encoder_from_pipeline`).
    """

    family = "clip"
    reads = "English CLIP text"

    @classmethod
    def claims(cls, model_type: str | None) -> bool:
        return model_type is None or model_type in _CLIP_MODEL_TYPES  # unreadable: CLIP, whose loader explains

    @classmethod
    def open(cls, name: str, *, device, dtype, attention_mask: bool, max_length: int,
             forced: bool) -> "CLIPTextEncoder":
        model_type = _model_type(name) if forced else None
        if model_type is not None and model_type not in _CLIP_MODEL_TYPES:  # CLIPTextModel would fail deep inside
            raise LatentGuardError(f"--encoder-type clip, but '{name}' is a {model_type} model, not CLIP; use "
                                   "--encoder-type hf (or auto)")
        return cls(name, device=device, dtype=dtype, attention_mask=attention_mask)

    def __init__(self, model: str | Path | torch.nn.Module = DEFAULT_ENCODER, device: str | torch.device | None = None,
                 dtype: str | torch.dtype | None = None, *, tokenizer=None, name: str | None = None,
                 attention_mask: bool = False) -> None:
        self.device = device if isinstance(device, torch.device) else resolve_device(device)
        self.dtype = resolve_dtype(dtype, self.device)
        self.attention_mask = attention_mask
        if isinstance(model, torch.nn.Module):
            text_model = model
            self.name = name or getattr(getattr(model, "config", None), "_name_or_path", "") or "custom-clip"
        else:
            self.name = name or str(model)
            text_model = _load_hf(str(model), "CLIPTextModel")
        if tokenizer is None:
            vocab = int(getattr(text_model.config, "vocab_size", 0) or 0)
            tokenizer = _load_clip_tokenizer(None if isinstance(model, torch.nn.Module) else str(model), vocab,
                                             self.name)
        self.tokenizer = tokenizer
        self.model = text_model.to(device=self.device, dtype=self.dtype).eval().requires_grad_(False)
        self.hidden_size = int(self.model.config.hidden_size)

    @property
    def layout_tag(self) -> str:
        return ":mask" if self.attention_mask else ""

    def _fingerprint(self) -> str:
        return weights_fingerprint(self.model)

    def tokenize(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        return self.tokenizer(list(texts), padding="max_length", max_length=CONTEXT_LENGTH,
                              truncation=True, return_tensors="pt")

    def _token_ids(self, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        batch = self.tokenize(texts)
        return batch["input_ids"], batch["attention_mask"]

    def _forward_ids(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        input_ids = input_ids.to(self.device)
        kwargs = {"attention_mask": attention_mask.to(self.device)} if self.attention_mask else {}
        hidden = self.model(input_ids=input_ids, **kwargs).last_hidden_state
        return hidden, self._pooled_index(input_ids)

    def _pooled_index(self, input_ids: torch.Tensor) -> torch.Tensor:
        """The position of each row's first end-of-text token (row 0 of the layout).

        The released ``inference.py`` takes ``argmax(input_ids)``: the same position while end-of-text
        (49407) is the largest id, but a textual-inversion token (ids >= 49408) would win it, so the
        end-of-text id is looked for instead (rows without one keep the released argmax).
        """
        eos = getattr(self.tokenizer, "eos_token_id", None)
        released = input_ids.argmax(dim=-1)
        if not isinstance(eos, int):
            return released
        is_eos = input_ids == eos
        return torch.where(is_eos.any(dim=-1), is_eos.int().argmax(dim=-1), released)


def _load_clip_tokenizer(name: str | None, vocab_size: int, label: str):
    """The model's own tokenizer when it ships a working one, else the real CLIP BPE rebuilt offline.

    A directory without tokenizer files still "loads" a ``CLIPTokenizer`` in transformers, one that
    knows two tokens and maps every text to the same ids (so every prompt would get the same score):
    it is recognised by its vocabulary size and replaced. The rebuilt CLIP BPE is used only for a
    model with CLIP's vocabulary (49,408 ids); any other model needs its own tokenizer, so it is refused.
    """
    from transformers import CLIPTokenizer

    if name is not None:
        try:
            own = CLIPTokenizer.from_pretrained(name)
        except (OSError, ValueError, TypeError):
            own = None
        if own is not None and int(getattr(own, "vocab_size", 0) or 0) == vocab_size:
            return own
    if vocab_size != CLIP_VOCAB_SIZE:
        raise LatentGuardError(f"text encoder '{label}' has no usable CLIP tokenizer (its vocabulary has {vocab_size} "
                               f"ids, CLIP's {CLIP_VOCAB_SIZE}); save its tokenizer with tokenizer.save_pretrained() "
                               "into the model directory, or pass tokenizer=...")
    from ..io import latentguard_home
    from .tokenizer import build_clip_tokenizer

    return build_clip_tokenizer(latentguard_home() / "clip-tokenizer")
