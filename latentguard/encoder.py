"""Frozen text encoders that turn prompts into the 78-row embedding Latent Guard reads.

Layout (REFERENCE §2): prompts are padded/truncated to 77 tokens and encoded without an attention
mask; the stored embedding is ``[pooled state, state_0 .. state_76]`` -> ``[78, hidden]``, where the
pooled state is the one at the first end-of-text token (``input_ids.argmax(-1)`` for CLIP).
"""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Iterator, Sequence

import torch

from .errors import LatentGuardError
from .io import resolve_device

DEFAULT_ENCODER = "openai/clip-vit-large-patch14"
CONTEXT_LENGTH = 77
EMBEDDING_ROWS = CONTEXT_LENGTH + 1

_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16,
           "fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def resolve_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    """fp32 unless asked otherwise; half precision only where it is fast and supported (GPU)."""
    if dtype is None:
        return torch.float32
    if isinstance(dtype, str):
        if dtype not in _DTYPES:
            raise LatentGuardError(f"unknown dtype '{dtype}' (use float32, float16 or bfloat16)")
        dtype = _DTYPES[dtype]
    if dtype == torch.float16 and device.type == "cpu":
        raise LatentGuardError("float16 encoding needs a GPU; use --dtype float32 on the CPU")
    return dtype


def weights_fingerprint(module: torch.nn.Module) -> str:
    """A cheap hash of a model's weights (names, shapes and a sample of values of every tensor).

    Stores and caches are keyed by it, so embeddings from two different encoders never mix, even
    when both carry the same name (e.g. two local fine-tunes saved in the same directory).
    """
    digest = hashlib.sha256()
    for name, tensor in module.state_dict().items():
        flat = tensor.detach().reshape(-1)
        sample = torch.cat([flat[:512], flat[-512:]]).float().cpu().numpy().tobytes()
        digest.update(name.encode())
        digest.update(str(tuple(tensor.shape)).encode())
        digest.update(sample)
    return digest.hexdigest()[:16]


class TextEncoder:
    """Base class: batching, no-grad eval mode and the 78-row layout shared by every family.

    Subclasses implement :meth:`_hidden_states`, returning the 77 token states and the index of
    the pooled (end-of-text) token of each text.
    """

    family = "base"
    name: str
    hidden_size: int
    device: torch.device
    dtype: torch.dtype

    def _hidden_states(self, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def token_strings(self, text: str) -> list[str]:
        """The 77 token strings the model sees for ``text`` (for explanations)."""
        raise NotImplementedError

    @property
    def layout_tag(self) -> str:
        """Options that change the embedding (they are part of :attr:`identity`)."""
        return ""

    @property
    def identity(self) -> str:
        """A stable string naming this exact encoder: family, name, width, weights and options."""
        if not hasattr(self, "_identity"):
            precision = "" if self.dtype == torch.float32 else f":{str(self.dtype).replace('torch.', '')}"
            self._identity = (f"{self.family}:{self.name}:h{self.hidden_size}:{self._fingerprint()}"
                              f"{self.layout_tag}{precision}")
        return self._identity

    def _fingerprint(self) -> str:
        raise NotImplementedError

    def iter_encode(self, texts: Sequence[str], batch_size: int = 64) -> Iterator[tuple[int, torch.Tensor]]:
        """Yield ``(start, [b, 78, hidden] float32 CPU)`` batch by batch: streams, never holds all."""
        if batch_size <= 0:
            raise LatentGuardError(f"batch size must be positive, got {batch_size}")
        texts = list(texts)
        with torch.inference_mode():
            for start in range(0, len(texts), batch_size):
                hidden, pooled_index = self._hidden_states(texts[start : start + batch_size])
                rows = torch.arange(hidden.shape[0], device=hidden.device)
                pooled = hidden[rows, pooled_index].unsqueeze(1)
                yield start, torch.cat([pooled, hidden], dim=1).float().cpu()

    def encode(self, texts: Sequence[str], batch_size: int = 64) -> torch.Tensor:
        """Encode ``texts`` to ``[N, 78, hidden]`` float32 on the CPU, in batches of ``batch_size``."""
        texts = list(texts)
        out = torch.empty(len(texts), EMBEDDING_ROWS, self.hidden_size)
        for start, block in self.iter_encode(texts, batch_size):
            out[start : start + block.shape[0]] = block
        return out

    def encode_concepts(self, concepts: Sequence[str], batch_size: int = 64) -> torch.Tensor:
        """A concept's vector is the pooled row of its own embedding (REFERENCE §2): ``[C, hidden]``."""
        out = torch.empty(len(concepts), self.hidden_size)
        for start, block in self.iter_encode(list(concepts), batch_size):
            out[start : start + block.shape[0]] = block[:, 0]
        return out


class CLIPTextEncoder(TextEncoder):
    """The Hugging Face CLIP text tower (default ``openai/clip-vit-large-patch14``), frozen.

    ``model`` is a hub name, a local directory, or an already-built ``CLIPTextModel`` (then pass
    ``tokenizer`` too, or the real CLIP tokenizer is rebuilt offline). ``attention_mask=True``
    departs from the reference, which encodes padding without a mask.
    """

    family = "clip"

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
            tokenizer = _load_clip_tokenizer(None if isinstance(model, torch.nn.Module) else str(model))
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

    def _hidden_states(self, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        batch = self.tokenize(texts)
        input_ids = batch["input_ids"].to(self.device)
        kwargs = {"attention_mask": batch["attention_mask"].to(self.device)} if self.attention_mask else {}
        hidden = self.model(input_ids=input_ids, **kwargs).last_hidden_state
        # The first end-of-text token has the largest id in CLIP's vocabulary (REFERENCE §2).
        return hidden, input_ids.argmax(dim=-1)

    def token_strings(self, text: str) -> list[str]:
        ids = self.tokenize([text])["input_ids"][0].tolist()
        return self.tokenizer.convert_ids_to_tokens(ids)


def _load_hf(name: str, class_name: str) -> torch.nn.Module:
    import transformers

    cls = getattr(transformers, class_name)
    try:
        return cls.from_pretrained(name)
    except (OSError, ValueError, EnvironmentError) as exc:
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise LatentGuardError(
            f"cannot load text encoder '{name}' ({first_line}); pass --encoder with a hub name you can "
            f"reach or a local directory saved with save_pretrained()"
        ) from None


def _load_clip_tokenizer(name: str | None):
    """The model's own tokenizer when it ships one, else the real CLIP BPE rebuilt offline."""
    from transformers import CLIPTokenizer

    if name is not None:
        try:
            return CLIPTokenizer.from_pretrained(name)
        except (OSError, ValueError, TypeError):
            pass
    from .io import cache_home
    from .tokenizer import build_clip_tokenizer

    return build_clip_tokenizer(cache_home() / "clip-tokenizer")


def load_encoder(name_or_path: str | Path = DEFAULT_ENCODER, encoder_type: str = "auto",
                 device: str | torch.device | None = None, dtype: str | torch.dtype | None = None,
                 attention_mask: bool = False) -> TextEncoder:
    """Open a text encoder by hub name or local directory; ``encoder_type`` forces the family."""
    if encoder_type not in ("auto", "clip"):
        raise LatentGuardError(f"unknown encoder type '{encoder_type}' (use auto or clip)")
    return CLIPTextEncoder(name_or_path, device=device, dtype=dtype, attention_mask=attention_mask)
