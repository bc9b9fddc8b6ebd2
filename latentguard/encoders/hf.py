"""Any Hugging Face text encoder through ``AutoModel`` (T5 encoders, BERT family), and the
Hugging Face loading helpers shared with the CLIP family."""
from __future__ import annotations

import copy
import json
import threading
import weakref
from pathlib import Path
from typing import Sequence

import torch

from ..errors import LatentGuardError, UnreadableTextError
from .base import CONTEXT_LENGTH, TextEncoder, weights_fingerprint
from .precision import resolve_device, resolve_dtype

# trim_padding: texts encoded together, at most, after sorting by length (see HFTextEncoder.encode).
TRIM_RUN = 32
# Encoder-decoder families whose encoder-only class avoids loading the decoder at all.
_ENCODER_ONLY_CLASSES = {"t5": "T5EncoderModel", "mt5": "MT5EncoderModel", "umt5": "UMT5EncoderModel"}


# Per encoder, a copy of its tokenizer for reading texts off the model thread (_HFTokenizerMixin._alone_ids).
_SIDE: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()
_SIDE_LOCK = threading.Lock()


class _HFTokenizerMixin:
    """Token-id plumbing shared by encoders that use a Hugging Face tokenizer."""

    def _content_ids(self, text: str) -> list[int]:
        ids = _hf_content_ids(self.tokenizer, text)
        self._refuse_unreadable([text], [ids])
        return ids

    def _alone_ids(self, text: str) -> list[int]:
        """The ids on a copy of the tokenizer, one thread at a time: a fast tokenizer's truncation and padding are
        state its calls set, so a server thread reading a prompt (truncation off) while the model thread encoded a
        batch (truncation and padding on) could change the batch's settings mid-call; under load one request in a
        few hundred failed 500."""
        tokenizer, lock = self._side()
        with lock:
            ids = _hf_content_ids(tokenizer, text)
        self._refuse_unreadable([text], [ids])
        return ids

    def _side(self):
        """This encoder's copy of its tokenizer for other threads, and the lock that serializes its use."""
        with _SIDE_LOCK:
            entry = _SIDE.get(self)
            if entry is None or entry[0] is not self.tokenizer:
                entry = _SIDE[self] = (self.tokenizer, copy.deepcopy(self.tokenizer), threading.Lock())
        return entry[1], entry[2]

    def _probe_ids(self, texts: list[str]) -> list[list[int]]:
        """The tokenizer's own ids (what it cannot read too: a digest reads the tokenizer, not a prompt)."""
        return [[int(i) for i in self.tokenizer(text)["input_ids"]] for text in texts]

    def _refuse_unreadable(self, texts: Sequence[str], ids) -> None:
        """Fail closed on text the tokenizer cannot read: a BERT-family tokenizer turns an emoji, or any word
        with a character outside its vocabulary, into its unknown token, so "a bloody 🔪" and "a bloody 🌸"
        would be one prompt to the guard while a CLIP generator reads each. Every path (API, pipeline,
        server, bulk, concepts) encodes through here. Tokenizers whose unknown token is one of their own
        specials (CLIP's is its end token; its byte-level BPE reads every character) have nothing to refuse."""
        unk = getattr(self.tokenizer, "unk_token_id", None)
        specials = {getattr(self.tokenizer, f"{k}_token_id", None) for k in ("bos", "eos", "pad", "cls", "sep")}
        if unk is None or unk in specials:
            return
        for text, row in zip(texts, ids):
            if unk in (row.tolist() if isinstance(row, torch.Tensor) else row):
                raise UnreadableTextError(
                    f"the guard's tokenizer ({self.name}) cannot read {_unreadable_part(self.tokenizer, text)!r} "
                    f"in a text (it becomes {self.tokenizer.unk_token}, as if absent), so the guard cannot "
                    f"judge it and refuses; use a guard whose encoder reads it (CLIP reads every character) or "
                    f"remove it first (docs/defences.md)")

    def _special_ids(self) -> tuple[list[int], list[int], int]:
        if not hasattr(self, "_specials"):  # found with the copy: the first ask may come from a server thread
            tokenizer, lock = self._side()
            with lock:
                self._specials = _hf_special_ids(tokenizer, self.name)
        return self._specials

    def _ids_to_tokens(self, ids: list[int]) -> list[str]:
        return self.tokenizer.convert_ids_to_tokens(ids)


class HFTextEncoder(_HFTokenizerMixin, TextEncoder):
    """Any Hugging Face text encoder through ``AutoModel`` (T5 encoders, BERT family, ...), frozen.

    The model always gets its attention mask (padding is masked, unlike the CLIP reference). The
    pooled row is the state at the last non-padding token (``attention_mask.sum() - 1``: ``</s>``
    for T5, ``[SEP]`` for BERT). Encoder-decoder models run their encoder only. ``model`` is a hub
    name, a local directory or a built module (then pass ``tokenizer``).
    """

    family = "hf"
    records_max_length = True

    @classmethod
    def claims(cls, model_type: str | None) -> bool:
        return model_type is not None  # any model the families registered before it do not claim

    @classmethod
    def open(cls, name: str, *, device, dtype, attention_mask: bool, max_length: int,
             forced: bool, trim_padding: bool = False) -> "HFTextEncoder":
        return cls(name, device=device, dtype=dtype, max_length=max_length,  # it always gets its mask
                   trim_padding=trim_padding)

    def __init__(self, model: str | Path | torch.nn.Module, device: str | torch.device | None = None,
                 dtype: str | torch.dtype | None = None, *, tokenizer=None, name: str | None = None,
                 max_length: int = CONTEXT_LENGTH, trim_padding: bool = False) -> None:
        # trim_padding (a departure, off by default): run the encoder only up to the longest text of
        # the batch and leave every padding row all zero, for a mapping layer built with
        # mask_padding; rows of real tokens are those of the padded run (the mask hides padding).
        self.trim_padding = bool(trim_padding)
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
        self._weights_hash = weights_fingerprint(module)  # before the cast: a precision is not another encoder
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
        length = "" if self.context_length == CONTEXT_LENGTH else f":len{self.context_length}"
        return length + (":trim" if self.trim_padding else "")

    def _fingerprint(self) -> str:
        return self._weights_hash

    def tokenize(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        side = getattr(self.tokenizer, "padding_side", "right")
        self.tokenizer.padding_side = "right"  # the pooled index below assumes right padding
        try:
            return self.tokenizer(list(texts), padding="longest" if self.trim_padding else "max_length",
                                  max_length=self.context_length, truncation=True, return_tensors="pt")
        finally:
            self.tokenizer.padding_side = side

    def _token_ids(self, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        batch = self.tokenize(texts)
        self._refuse_unreadable(texts, batch["input_ids"])
        return batch["input_ids"], batch["attention_mask"]

    def encode(self, texts: Sequence[str], batch_size: int = 64) -> torch.Tensor:
        """As :meth:`TextEncoder.encode`; with ``trim_padding``, texts of similar length are encoded together
        (sorted by length, in runs of at most :data:`TRIM_RUN`), so one long text does not pad a whole batch.
        Each text's rows do not depend on its batch (padding is masked and zeroed), so the order is free."""
        if not self.trim_padding:
            return super().encode(texts, batch_size)
        if batch_size <= 0:
            raise LatentGuardError(f"batch size must be positive, got {batch_size}")
        texts = list(texts)
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        out = torch.zeros(len(texts), self.context_length + 1, self.hidden_size)
        run = min(batch_size, TRIM_RUN)
        with torch.inference_mode():
            for start in range(0, len(order), run):
                rows = order[start : start + run]
                hidden, pooled_index = self._hidden_states([texts[i] for i in rows])
                out[rows] = self._layout(hidden, pooled_index)
        return out

    def _forward_ids(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        attention_mask = attention_mask.to(self.device)
        if self.trim_padding:  # windows arrive padded to the context: cut them to their longest row
            length = max(int(attention_mask.sum(dim=-1).max()), 1)
            input_ids, attention_mask = input_ids[:, :length], attention_mask[:, :length]
        hidden = self.model(input_ids=input_ids.to(self.device), attention_mask=attention_mask).last_hidden_state
        pooled = (attention_mask.sum(dim=-1) - 1).clamp(min=0)
        if self.trim_padding:  # padding rows all zero, out to the context, so every batch has one layout
            hidden = hidden * attention_mask.unsqueeze(-1).to(hidden.dtype)
            hidden = torch.nn.functional.pad(hidden, (0, 0, 0, self.context_length - hidden.shape[1]))
        return hidden, pooled



def _unreadable_part(tokenizer, text: str) -> str:
    """The words of ``text`` that its tokenizer reads as its unknown token (the whole text when it cannot say)."""
    try:
        batch = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True, truncation=False)
        parts = [text[a:b] for i, (a, b) in zip(batch["input_ids"], batch["offset_mapping"])
                 if i == tokenizer.unk_token_id]
        part = " ".join(dict.fromkeys(parts)) or text
    except (NotImplementedError, ValueError, TypeError, KeyError):  # a slow tokenizer has no offsets
        part = text
    # a one-line error stays a line: a 200,000-letter word had been echoed whole (a thirty-eighth hostile pass)
    return part if len(part) <= 60 else f"{part[:60]}... ({len(part):,} characters)"


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


def _load_hf(name: str, class_name: str) -> torch.nn.Module:
    import transformers

    cls = getattr(transformers, class_name)
    # The weight-loading progress bar would break the one-line error contract of the CLIs.
    transformers.utils.logging.disable_progress_bar()
    import pickle

    try:
        return cls.from_pretrained(name)
    except pickle.UnpicklingError:  # torch.load(weights_only=True) met more than tensors: never run it
        raise LatentGuardError(
            f"refusing to load text encoder '{name}': its pickle (.bin) weights hold objects that would run code "
            "when loaded, not only tensors; use safetensors weights or a copy from a source you trust"
        ) from None
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
