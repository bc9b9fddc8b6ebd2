"""Frozen text encoders that turn prompts into the 78-row embedding Latent Guard reads.

Layout (REFERENCE §2): prompts are padded/truncated to 77 tokens and encoded without an attention
mask; the stored embedding is ``[pooled state, state_0 .. state_76]`` -> ``[78, hidden]``, where the
pooled state is the one at the first end-of-text token (``input_ids.argmax(-1)`` for CLIP).

Three families share that layout behind one interface (:class:`TextEncoder`):

* ``clip``: Hugging Face ``CLIPTextModel`` (the reference, ``openai/clip-vit-large-patch14``);
* ``openclip``: an OpenCLIP text tower (e.g. ``openclip:ViT-H-14`` as in SD 2.x, ``openclip:ViT-bigG-14``
  as in SDXL), pooled row = state at the end-of-text token;
* ``hf``: any Hugging Face encoder through ``AutoModel`` (T5 encoders, BERT family), run with its
  attention mask, pooled row = state at the last non-padding token.

:func:`load_encoder` picks the family from the model's own ``config.json`` (or the ``openclip:``
prefix); ``encoder_type`` overrides. Every family can also encode prompts longer than the context in
overlapping windows (:meth:`TextEncoder.encode_windows`), an option that is off by default.
"""
from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import torch

from .errors import LatentGuardError
from .io import resolve_device

DEFAULT_ENCODER = "openai/clip-vit-large-patch14"
CONTEXT_LENGTH = 77
EMBEDDING_ROWS = CONTEXT_LENGTH + 1
# Long-prompt windows advance by this many content tokens; with 75 content tokens per 77-token
# window, neighbours overlap by 25 tokens, so any phrase of up to 25 tokens is seen whole somewhere.
DEFAULT_WINDOW_STRIDE = 50
ENCODER_TYPES = ("auto", "clip", "openclip", "hf")
OPENCLIP_PREFIX = "openclip:"
# Weights used when an OpenCLIP name gives none: the text towers of the Stable Diffusion releases.
OPENCLIP_DEFAULT_WEIGHTS = {
    "ViT-H-14": "laion2b_s32b_b79k",     # SD 2.x
    "ViT-bigG-14": "laion2b_s39b_b160k",  # SDXL (second text encoder)
    "ViT-L-14": "openai",                 # the same weights as openai/clip-vit-large-patch14
}
_RANDOM_WEIGHTS = ("random", "none")
_CLIP_MODEL_TYPES = ("clip", "clip_text_model")
# Encoder-decoder families whose encoder-only class avoids loading the decoder at all.
_ENCODER_ONLY_CLASSES = {"t5": "T5EncoderModel", "mt5": "MT5EncoderModel", "umt5": "UMT5EncoderModel"}

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


_IDENTITY = re.compile(r"^(?P<family>[^:]+):(?P<name>.*):h(?P<width>\d+):(?P<weights>[0-9a-f]{16})(?P<options>(?::[^:]*)*)$")


def identity_parts(identity: str) -> dict[str, str]:
    """Split an :attr:`TextEncoder.identity` into family, name, width, weights, options, precision.

    ``name`` is cosmetic (the same weights may be loaded under two names, e.g. CLIP ViT-L/14 as
    ``openai/clip-vit-large-patch14`` or as a Stable Diffusion pipeline's ``text_encoder``); the
    other parts decide whether two encoders give the same embeddings. An identity that does not
    parse comes back whole as ``name`` with the other parts empty.
    """
    match = _IDENTITY.match(identity)
    if match is None:
        return {"family": "", "name": identity, "width": "", "weights": "", "options": "", "precision": "float32"}
    parts = match.groupdict()
    options = [o for o in parts["options"].split(":") if o]
    precision = options.pop() if options and options[-1] in ("float16", "bfloat16") else "float32"
    parts["options"] = ":".join(options)
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
    return True if pa["precision"] == pb["precision"] else None


def window_starts(n_tokens: int, span: int, stride: int) -> list[int]:
    """Start offsets of overlapping windows of ``span`` tokens over ``n_tokens`` content tokens.

    One window when the content fits; otherwise windows every ``stride`` tokens plus one aligned
    with the end, so the last token is always covered and no gap exceeds ``stride``.
    """
    if n_tokens <= span:
        return [0]
    return list(range(0, n_tokens - span, stride)) + [n_tokens - span]


class TextEncoder:
    """Base class: batching, no-grad eval mode, the 78-row layout and long-prompt windows.

    A family implements :meth:`_token_ids` (texts -> padded ids and attention mask),
    :meth:`_forward_ids` (ids -> token states and the pooled token's index), and, for windows,
    :meth:`_content_ids` (a text's tokens without special tokens), :meth:`_special_ids`
    (prefix, suffix, padding id) and :meth:`_ids_to_tokens`.
    """

    family = "base"
    context_length = CONTEXT_LENGTH
    name: str
    hidden_size: int
    device: torch.device
    dtype: torch.dtype

    # ------------------------------------------------------------------------- family hooks
    def _token_ids(self, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def _forward_ids(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def _content_ids(self, text: str) -> list[int]:
        raise LatentGuardError(f"{self.family} encoder '{self.name}' cannot split long prompts into windows")

    def _special_ids(self) -> tuple[list[int], list[int], int]:
        raise LatentGuardError(f"{self.family} encoder '{self.name}' cannot split long prompts into windows")

    def _ids_to_tokens(self, ids: list[int]) -> list[str]:
        raise NotImplementedError

    def _fingerprint(self) -> str:
        raise NotImplementedError

    def _hidden_states(self, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Token states ``[b, L, hidden]`` and the pooled token index ``[b]`` of each text."""
        input_ids, attention_mask = self._token_ids(texts)
        return self._forward_ids(input_ids, attention_mask)

    # ------------------------------------------------------------------------------ identity
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

    def token_strings(self, text: str) -> list[str]:
        """The 77 token strings the model sees for ``text`` (for explanations)."""
        input_ids, _ = self._token_ids([text])
        return self._ids_to_tokens(input_ids[0].tolist())

    # ------------------------------------------------------------------------------ encoding
    def _layout(self, hidden: torch.Tensor, pooled_index: torch.Tensor) -> torch.Tensor:
        rows = torch.arange(hidden.shape[0], device=hidden.device)
        pooled = hidden[rows, pooled_index].unsqueeze(1)
        return torch.cat([pooled, hidden], dim=1).float().cpu()

    def iter_encode(self, texts: Sequence[str], batch_size: int = 64) -> Iterator[tuple[int, torch.Tensor]]:
        """Yield ``(start, [b, 78, hidden] float32 CPU)`` batch by batch: streams, never holds all."""
        if batch_size <= 0:
            raise LatentGuardError(f"batch size must be positive, got {batch_size}")
        texts = list(texts)
        with torch.inference_mode():
            for start in range(0, len(texts), batch_size):
                hidden, pooled_index = self._hidden_states(texts[start : start + batch_size])
                yield start, self._layout(hidden, pooled_index)

    def encode(self, texts: Sequence[str], batch_size: int = 64) -> torch.Tensor:
        """Encode ``texts`` to ``[N, 78, hidden]`` float32 on the CPU, in batches of ``batch_size``."""
        texts = list(texts)
        out = torch.empty(len(texts), self.context_length + 1, self.hidden_size)
        for start, block in self.iter_encode(texts, batch_size):
            out[start : start + block.shape[0]] = block
        return out

    def encode_concepts(self, concepts: Sequence[str], batch_size: int = 64) -> torch.Tensor:
        """A concept's vector is the pooled row of its own embedding (REFERENCE §2): ``[C, hidden]``."""
        out = torch.empty(len(concepts), self.hidden_size)
        for start, block in self.iter_encode(list(concepts), batch_size):
            out[start : start + block.shape[0]] = block[:, 0]
        return out

    def is_truncated(self, text: str) -> bool:
        """Whether ``text`` has more tokens than the context (``encode`` cuts it; ``encode_windows`` does not)."""
        try:
            prefix, suffix, _ = self._special_ids()
            return len(prefix) + len(self._content_ids(text)) + len(suffix) > self.context_length
        except LatentGuardError:  # an encoder that cannot count tokens: no claim either way
            return False

    # ------------------------------------------------------------------------- long prompts
    def window_ids(self, text: str, window: int | None = None, stride: int | None = None) -> list[list[int]]:
        """Token ids of each window of ``text``: prefix specials, a slice of its tokens, suffix specials.

        A text that fits yields one window equal to its ordinary (unpadded) tokenisation.
        """
        window = self.context_length if window is None else int(window)
        stride = DEFAULT_WINDOW_STRIDE if stride is None else int(stride)
        prefix, suffix, _ = self._special_ids()
        span = window - len(prefix) - len(suffix)
        if window > self.context_length or span <= 0:
            raise LatentGuardError(f"window must be between {len(prefix) + len(suffix) + 1} and "
                                   f"{self.context_length} tokens for {self.family} encoder '{self.name}', got {window}")
        if not 0 < stride <= span:
            raise LatentGuardError(f"window stride must be between 1 and {span} tokens (the content of one "
                                   f"window), got {stride}; a larger stride would skip tokens")
        content = self._content_ids(text)
        return [prefix + content[s : s + span] + suffix for s in window_starts(len(content), span, stride)]

    def window_token_strings(self, text: str, window: int | None = None, stride: int | None = None) -> list[list[str]]:
        """The token strings of each window of ``text`` (padded to 77), in :meth:`encode_windows` order."""
        _, _, pad = self._special_ids()
        return [self._ids_to_tokens(ids + [pad] * (self.context_length - len(ids)))
                for ids in self.window_ids(text, window, stride)]

    def iter_encode_windows(self, texts: Sequence[str], batch_size: int = 64, window: int | None = None,
                            stride: int | None = None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Yield ``(owner [b], [b, 78, hidden])`` batches of windows; ``owner`` indexes ``texts``."""
        if batch_size <= 0:
            raise LatentGuardError(f"batch size must be positive, got {batch_size}")
        _, _, pad = self._special_ids()
        length = self.context_length
        windows: list[list[int]] = []
        owners: list[int] = []
        for i, text in enumerate(texts):
            for ids in self.window_ids(text, window, stride):
                windows.append(ids)
                owners.append(i)
        with torch.inference_mode():
            for start in range(0, len(windows), batch_size):
                chunk = windows[start : start + batch_size]
                input_ids = torch.full((len(chunk), length), pad, dtype=torch.long)
                attention_mask = torch.zeros(len(chunk), length, dtype=torch.long)
                for row, ids in enumerate(chunk):
                    input_ids[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
                    attention_mask[row, : len(ids)] = 1
                hidden, pooled_index = self._forward_ids(input_ids, attention_mask)
                yield torch.tensor(owners[start : start + batch_size], dtype=torch.long), self._layout(hidden, pooled_index)

    def encode_windows(self, texts: Sequence[str], batch_size: int = 64, window: int | None = None,
                       stride: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Encode prompts of any length as overlapping windows: ``(emb [W, 78, hidden], owner [W])``.

        Each window is a complete input of its own (start token, up to 75 tokens of the prompt, end
        token, padding to 77) in the usual 78-row layout; ``owner[w]`` is the index of the prompt
        window ``w`` came from. A prompt that fits the context gives exactly one window, identical
        to :meth:`encode`. Score each window and take the maximum per prompt
        (:func:`latentguard.windows.max_over_windows`).
        """
        owners, blocks = [], []
        for owner, block in self.iter_encode_windows(list(texts), batch_size, window, stride):
            owners.append(owner)
            blocks.append(block)
        if not blocks:
            return torch.empty(0, self.context_length + 1, self.hidden_size), torch.empty(0, dtype=torch.long)
        return torch.cat(blocks), torch.cat(owners)


# ================================================================================== HF CLIP
class _HFTokenizerMixin:
    """Token-id plumbing shared by encoders that use a Hugging Face tokenizer."""

    def _content_ids(self, text: str) -> list[int]:
        return _hf_content_ids(self.tokenizer, text)

    def _special_ids(self) -> tuple[list[int], list[int], int]:
        if not hasattr(self, "_specials"):
            self._specials = _hf_special_ids(self.tokenizer, self.name)
        return self._specials

    def _ids_to_tokens(self, ids: list[int]) -> list[str]:
        return self.tokenizer.convert_ids_to_tokens(ids)


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

    def _token_ids(self, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        batch = self.tokenize(texts)
        return batch["input_ids"], batch["attention_mask"]

    def _forward_ids(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        input_ids = input_ids.to(self.device)
        kwargs = {"attention_mask": attention_mask.to(self.device)} if self.attention_mask else {}
        hidden = self.model(input_ids=input_ids, **kwargs).last_hidden_state
        # The first end-of-text token has the largest id in CLIP's vocabulary (REFERENCE §2).
        return hidden, input_ids.argmax(dim=-1)



# ============================================================================= any HF model
class HFTextEncoder(_HFTokenizerMixin, TextEncoder):
    """Any Hugging Face text encoder through ``AutoModel`` (T5 encoders, BERT family, ...), frozen.

    The model always gets its attention mask (padding is masked, unlike the CLIP reference). The
    pooled row is the state at the last non-padding token (``attention_mask.sum() - 1``: ``</s>``
    for T5, ``[SEP]`` for BERT). Encoder-decoder models run their encoder only. ``model`` is a hub
    name, a local directory or a built module (then pass ``tokenizer``).
    """

    family = "hf"

    def __init__(self, model: str | Path | torch.nn.Module, device: str | torch.device | None = None,
                 dtype: str | torch.dtype | None = None, *, tokenizer=None, name: str | None = None,
                 max_length: int = CONTEXT_LENGTH) -> None:
        self.device = device if isinstance(device, torch.device) else resolve_device(device)
        self.dtype = resolve_dtype(dtype, self.device)
        if not isinstance(max_length, int) or max_length < 2:
            raise LatentGuardError(f"max_length must be an integer >= 2, got {max_length!r}")
        self.context_length = max_length
        if isinstance(model, torch.nn.Module):
            module = model
            self.name = name or getattr(getattr(model, "config", None), "_name_or_path", "") or "custom-hf"
            if tokenizer is None:
                raise LatentGuardError("HFTextEncoder built from a module needs its tokenizer (tokenizer=...)")
        else:
            self.name = name or str(model)
            module = _load_hf_encoder(str(model))
            if tokenizer is None:
                tokenizer = _load_auto_tokenizer(str(model))
        if getattr(module.config, "is_encoder_decoder", False) and hasattr(module, "get_encoder"):
            module = module.get_encoder()
        if tokenizer.pad_token_id is None:
            if tokenizer.eos_token is None:
                raise LatentGuardError(f"tokenizer of '{self.name}' has neither a padding nor an end token; "
                                       f"set tokenizer.pad_token before building the encoder")
            tokenizer.pad_token = tokenizer.eos_token
        self.tokenizer = tokenizer
        self.model = module.to(device=self.device, dtype=self.dtype).eval().requires_grad_(False)
        config = self.model.config
        width = getattr(config, "hidden_size", None) or getattr(config, "d_model", None)
        if not width:
            raise LatentGuardError(f"cannot read the hidden size of '{self.name}' from its config")
        self.hidden_size = int(width)
        positions = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)
        if isinstance(positions, int) and 0 < positions < max_length:
            raise LatentGuardError(f"'{self.name}' accepts at most {positions} tokens; use max_length <= {positions}")

    @property
    def layout_tag(self) -> str:
        return "" if self.context_length == CONTEXT_LENGTH else f":len{self.context_length}"

    def _fingerprint(self) -> str:
        return weights_fingerprint(self.model)

    def tokenize(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        side = getattr(self.tokenizer, "padding_side", "right")
        self.tokenizer.padding_side = "right"  # the pooled index below assumes right padding
        try:
            return self.tokenizer(list(texts), padding="max_length", max_length=self.context_length,
                                  truncation=True, return_tensors="pt")
        finally:
            self.tokenizer.padding_side = side

    def _token_ids(self, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        batch = self.tokenize(texts)
        return batch["input_ids"], batch["attention_mask"]

    def _forward_ids(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        attention_mask = attention_mask.to(self.device)
        hidden = self.model(input_ids=input_ids.to(self.device), attention_mask=attention_mask).last_hidden_state
        return hidden, (attention_mask.sum(dim=-1) - 1).clamp(min=0)



def _hf_content_ids(tokenizer, text: str) -> list[int]:
    """A text's token ids without special tokens and without truncation."""
    return list(tokenizer(text, add_special_tokens=False, truncation=False, verbose=False)["input_ids"])


def _hf_special_ids(tokenizer, name: str) -> tuple[list[int], list[int], int]:
    """The special tokens a Hugging Face tokenizer puts before and after a text, and its padding id."""
    probe = "a photo"
    bare = _hf_content_ids(tokenizer, probe)
    full = list(tokenizer(probe, add_special_tokens=True)["input_ids"])
    for i in range(len(full) - len(bare) + 1):
        if full[i : i + len(bare)] == bare:
            return full[:i], full[i + len(bare) :], int(tokenizer.pad_token_id)
    raise LatentGuardError(f"cannot tell the special tokens of the tokenizer of '{name}', so long prompts "
                           f"cannot be split into windows for it")


# =============================================================================== OpenCLIP
class _OpenCLIPTextTower(torch.nn.Module):
    """The text half of an OpenCLIP model: token + position embeddings, causal transformer, final norm."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        text = getattr(model, "text", None)
        source = text if isinstance(text, torch.nn.Module) else model  # CustomTextCLIP keeps it in .text
        missing = [a for a in ("token_embedding", "positional_embedding", "transformer", "ln_final")
                   if not hasattr(source, a)]
        if missing:
            raise LatentGuardError("this OpenCLIP model has no plain transformer text tower (it lacks "
                                   f"{', '.join(missing)}); for a Hugging Face text tower use --encoder-type hf")
        if getattr(source, "cls_emb", None) is not None:
            raise LatentGuardError("OpenCLIP text towers with a class token (CoCa) are not supported")
        pool = getattr(source, "pool_type", None) or getattr(model, "text_pool_type", "argmax")
        if pool != "argmax":
            raise LatentGuardError(f"this OpenCLIP text tower pools with '{pool}'; only end-of-text (argmax) "
                                   f"pooling towers are supported")
        if getattr(source, "use_pad_mask", False):
            raise LatentGuardError("OpenCLIP text towers with a padding mask are not supported")
        self.token_embedding = source.token_embedding
        self.positional_embedding = source.positional_embedding
        self.transformer = source.transformer
        self.ln_final = source.ln_final
        mask = getattr(source, "attn_mask", None)
        self.register_buffer("attn_mask", None if mask is None else mask.detach().clone(), persistent=False)
        self.width = int(self.positional_embedding.shape[-1])
        self.context_length = int(self.positional_embedding.shape[0])

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Per-token states ``[N, L, width]`` after the final LayerNorm (what SD 2.x/SDXL read)."""
        length = input_ids.shape[1]
        dtype = self.positional_embedding.dtype
        x = self.token_embedding(input_ids).to(dtype) + self.positional_embedding[:length].to(dtype)
        mask = None if self.attn_mask is None else self.attn_mask[:length, :length].to(dtype)
        x = self.transformer(x, attn_mask=mask)
        return self.ln_final(x)


def parse_openclip_name(spec: str, pretrained: str | None = None) -> tuple[str, str | None]:
    """``'openclip:ViT-H-14@laion2b_s32b_b79k'`` -> (``'ViT-H-14'``, ``'laion2b_s32b_b79k'``).

    The part after ``@`` is a pretrained tag, a local weights file, or ``random`` (no weights). A bare
    ``ViT-H-14``/``ViT-bigG-14``/``ViT-L-14`` gets the weights Stable Diffusion uses; other bare names
    are refused, so no one runs a randomly initialised guard by accident. ``hf-hub:``/``local-dir:``
    names carry their own weights.
    """
    spec = spec[len(OPENCLIP_PREFIX):] if spec.startswith(OPENCLIP_PREFIX) else spec
    model_name, at, weights = spec.partition("@")
    if not model_name:
        raise LatentGuardError(f"empty OpenCLIP model name in '{spec}' (use e.g. openclip:ViT-H-14)")
    if at and pretrained is not None and weights != pretrained:
        raise LatentGuardError(f"OpenCLIP weights given twice: '@{weights}' in the name and '{pretrained}'")
    weights = weights or pretrained
    if model_name.startswith(("hf-hub:", "local-dir:")):
        return model_name, None if not weights or weights in _RANDOM_WEIGHTS else weights
    if not weights:
        if model_name not in OPENCLIP_DEFAULT_WEIGHTS:
            raise LatentGuardError(
                f"say which weights OpenCLIP model '{model_name}' should load: openclip:{model_name}@TAG "
                f"(a pretrained tag of open_clip), openclip:{model_name}@/path/to/open_clip_pytorch_model.bin, "
                f"or openclip:{model_name}@random")
        weights = OPENCLIP_DEFAULT_WEIGHTS[model_name]
    return model_name, None if weights in _RANDOM_WEIGHTS else weights


class OpenCLIPTextEncoder(TextEncoder):
    """An OpenCLIP text tower (e.g. ViT-H-14 of SD 2.x, ViT-bigG-14 of SDXL), frozen.

    ``model`` is an OpenCLIP model name (``'ViT-H-14'``, ``'openclip:ViT-H-14@/path/weights.bin'``,
    ``'hf-hub:org/repo'``) or a built OpenCLIP model (then ``tokenizer`` defaults to the CLIP BPE
    with 77 tokens). ``pretrained`` is a pretrained tag, a weights file or ``'random'``.
    ``open_clip`` is imported only when a model is built by name. Padding (id 0 after the end
    token) is encoded under the causal mask, so it never changes the prompt's token states.
    """

    family = "openclip"

    def __init__(self, model: str | torch.nn.Module = "ViT-H-14", pretrained: str | None = None,
                 device: str | torch.device | None = None, dtype: str | torch.dtype | None = None, *,
                 tokenizer=None, name: str | None = None) -> None:
        self.device = device if isinstance(device, torch.device) else resolve_device(device)
        self.dtype = resolve_dtype(dtype, self.device)
        if isinstance(model, torch.nn.Module):
            full = model
            self.name = name or "custom-openclip"
        else:
            model_name, weights = parse_openclip_name(str(model), pretrained)
            self.name = name or f"{model_name}@{weights or 'random'}"
            full = _create_openclip(model_name, weights)
            if tokenizer is None:
                tokenizer = _openclip_tokenizer(model_name)
        self.tower = _OpenCLIPTextTower(full).to(device=self.device, dtype=self.dtype).eval().requires_grad_(False)
        del full  # the image tower is not needed: let it be freed
        if tokenizer is None:
            from open_clip.tokenizer import SimpleTokenizer

            tokenizer = SimpleTokenizer(context_length=self.tower.context_length)
        self.tokenizer = tokenizer
        self.context_length = self.tower.context_length
        self.hidden_size = self.tower.width

    def _fingerprint(self) -> str:
        return weights_fingerprint(self.tower)

    def tokenize(self, texts: Sequence[str]) -> torch.Tensor:
        return self.tokenizer(list(texts), context_length=self.context_length)

    def _token_ids(self, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        input_ids = self.tokenize(texts)
        ends = input_ids.argmax(dim=-1, keepdim=True)
        mask = (torch.arange(input_ids.shape[1]).unsqueeze(0) <= ends).long()
        return input_ids, mask

    def _forward_ids(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        input_ids = input_ids.to(self.device)
        # The end-of-text token has the largest id (open_clip pools the same way): the last real token.
        return self.tower(input_ids), input_ids.argmax(dim=-1)

    def _content_ids(self, text: str) -> list[int]:
        if not hasattr(self.tokenizer, "encode") or not hasattr(self.tokenizer, "eot_token_id"):
            raise LatentGuardError(f"the tokenizer of OpenCLIP model '{self.name}' cannot split long prompts")
        return list(self.tokenizer.encode(text))

    def _special_ids(self) -> tuple[list[int], list[int], int]:
        if not hasattr(self.tokenizer, "sot_token_id"):
            raise LatentGuardError(f"the tokenizer of OpenCLIP model '{self.name}' cannot split long prompts")
        return [int(self.tokenizer.sot_token_id)], [int(self.tokenizer.eot_token_id)], 0

    def _ids_to_tokens(self, ids: list[int]) -> list[str]:
        """BPE strings as Hugging Face CLIP spells them (``<|startoftext|>``, ``knife</w>``); padding is ``<pad>``."""
        decoder = getattr(self.tokenizer, "decoder", {})
        sot, eot = getattr(self.tokenizer, "sot_token_id", None), getattr(self.tokenizer, "eot_token_id", None)
        end = max(range(len(ids)), key=lambda i: ids[i]) if ids else -1  # the end-of-text token
        names = {sot: "<|startoftext|>", eot: "<|endoftext|>"}
        return [("<pad>" if i > end else names.get(t) or decoder.get(t, str(t))) for i, t in enumerate(ids)]


def _create_openclip(model_name: str, pretrained: str | None) -> torch.nn.Module:
    """Build an OpenCLIP model on the CPU (random weights are seeded, so identical every time)."""
    try:
        import open_clip
    except ImportError:
        raise LatentGuardError("OpenCLIP encoders need open_clip_torch: pip install open_clip_torch") from None
    if pretrained is not None and ("/" in pretrained or pretrained.endswith((".bin", ".pt", ".pth", ".safetensors"))):
        if not Path(pretrained).is_file():
            raise LatentGuardError(f"OpenCLIP weights file not found: {pretrained}")
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            return open_clip.create_model(model_name, pretrained=pretrained, device="cpu")
    except Exception as exc:  # unknown names, missing tags, download failures, bad files
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise LatentGuardError(
            f"cannot load OpenCLIP model '{model_name}' with weights '{pretrained or 'random'}' ({first}); "
            f"check the name (open_clip.list_models()) and pass a local file as openclip:{model_name}@/path/to/weights.bin"
        ) from None


def _openclip_tokenizer(model_name: str):
    import open_clip

    try:
        return open_clip.get_tokenizer(model_name)
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise LatentGuardError(f"cannot build the tokenizer of OpenCLIP model '{model_name}' ({first})") from None


# ================================================================================= loading
def _load_hf(name: str, class_name: str) -> torch.nn.Module:
    import transformers

    cls = getattr(transformers, class_name)
    # The weight-loading progress bar would break the one-line error contract of the CLIs.
    transformers.utils.logging.disable_progress_bar()
    try:
        return cls.from_pretrained(name)
    except (OSError, ValueError, EnvironmentError) as exc:
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise LatentGuardError(
            f"cannot load text encoder '{name}' ({first_line}); pass --encoder with a hub name you can "
            f"reach or a local directory saved with save_pretrained()"
        ) from None


def _load_hf_encoder(name: str) -> torch.nn.Module:
    """An encoder-only model when the family has one (T5: no decoder weights loaded), else AutoModel."""
    model_type = _model_type(name)
    return _load_hf(name, _ENCODER_ONLY_CLASSES.get(model_type or "", "AutoModel"))


def _load_auto_tokenizer(name: str):
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(name)
    except (OSError, ValueError, TypeError, EnvironmentError) as exc:
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise LatentGuardError(f"cannot load the tokenizer of '{name}' ({first_line}); the directory needs "
                               f"tokenizer files saved with save_pretrained()") from None


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


def _model_type(name: str) -> str | None:
    """``model_type`` from the model's own ``config.json`` (local directory or hub), ``None`` if unknown."""
    path = Path(name)
    if path.is_dir():
        try:
            value = json.loads((path / "config.json").read_text(encoding="utf-8")).get("model_type")
        except (OSError, ValueError, AttributeError):
            return None
        return value if isinstance(value, str) else None
    if path.exists():
        return None
    try:
        from transformers import AutoConfig

        return AutoConfig.from_pretrained(name).model_type
    except Exception:  # unreachable hub, unknown architecture: let the loader report it
        return None


def detect_family(name_or_path: str | Path) -> str:
    """``'clip'``, ``'openclip'`` or ``'hf'``: from an ``openclip:`` prefix, else the model's config.

    ``model_type`` ``clip``/``clip_text_model`` is CLIP; any other known type is a Hugging Face
    encoder; a name whose config cannot be read is treated as CLIP (whose loader then explains).
    """
    name = str(name_or_path)
    if name.startswith(OPENCLIP_PREFIX):
        return "openclip"
    if name == DEFAULT_ENCODER:
        return "clip"
    model_type = _model_type(name)
    if model_type is None or model_type in _CLIP_MODEL_TYPES:
        return "clip"
    return "hf"


def _looks_like_path(name: str) -> bool:
    """A local path rather than a hub id (``org/name`` has one slash, never a leading ``/``, ``.`` or ``~``)."""
    return (name.startswith(("/", ".", "~")) or name.count("/") > 1 or "\\" in name
            or (len(name) > 1 and name[1] == ":"))


def load_encoder(name_or_path: str | Path = DEFAULT_ENCODER, encoder_type: str = "auto",
                 device: str | torch.device | None = None, dtype: str | torch.dtype | None = None,
                 attention_mask: bool = False, *, max_length: int = CONTEXT_LENGTH) -> TextEncoder:
    """Open a text encoder by name; ``encoder_type`` (auto|clip|openclip|hf) forces the family.

    Names: a hub name or local directory (the family comes from its ``config.json``), or
    ``openclip:MODEL[@TAG|@/path/weights.bin|@random]``. ``attention_mask`` is the CLIP option
    (Hugging Face encoders always get their mask; OpenCLIP towers are causal and need none);
    ``max_length`` applies to Hugging Face encoders (the 78-row store needs 77).
    """
    if encoder_type not in ENCODER_TYPES:
        raise LatentGuardError(f"unknown encoder type '{encoder_type}' (use {', '.join(ENCODER_TYPES)})")
    name = str(name_or_path)
    if (encoder_type != "openclip" and not name.startswith(OPENCLIP_PREFIX) and _looks_like_path(name)
            and not Path(name).expanduser().exists()):
        raise LatentGuardError(f"cannot load text encoder '{name}': no such directory; pass --encoder with an "
                               f"existing directory saved with save_pretrained() or a hub name such as {DEFAULT_ENCODER}")
    if not name.startswith(OPENCLIP_PREFIX) and Path(name).expanduser().is_dir():
        # One store per model directory, however the path is spelled (./m, m, /abs/m).
        name = str(Path(name).expanduser().resolve())
    family = detect_family(name) if encoder_type == "auto" else encoder_type
    if name.startswith(OPENCLIP_PREFIX) and family != "openclip":
        raise LatentGuardError(f"'{name}' names an OpenCLIP model but the encoder type is '{encoder_type}' "
                               f"(use --encoder-type auto or openclip)")
    if family == "openclip":
        if attention_mask:
            raise LatentGuardError("encoder.attention_mask applies to CLIP encoders only (OpenCLIP towers are causal)")
        return OpenCLIPTextEncoder(name, device=device, dtype=dtype)
    if family == "hf":
        return HFTextEncoder(name, device=device, dtype=dtype, max_length=max_length)
    return CLIPTextEncoder(name, device=device, dtype=dtype, attention_mask=attention_mask)


def load_encoder_from_config(cfg: Mapping[str, Any], device: str | torch.device | None = None) -> TextEncoder:
    """The encoder a loaded config's ``encoder`` section names, on ``device`` (default: the config's)."""
    enc = cfg["encoder"]
    return load_encoder(enc["name"], enc["type"], device=cfg["device"] if device is None else device,
                        dtype=enc["dtype"], attention_mask=enc["attention_mask"])
