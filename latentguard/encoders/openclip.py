"""OpenCLIP text towers (ViT-H-14 of SD 2.x, ViT-bigG-14 of SDXL) in the 78-row layout."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch

from ..errors import LatentGuardError
from .base import TextEncoder, weights_fingerprint
from .precision import resolve_device, resolve_dtype

OPENCLIP_PREFIX = "openclip:"
# Weights used when an OpenCLIP name gives none: the text towers of the Stable Diffusion releases.
OPENCLIP_DEFAULT_WEIGHTS = {
    "ViT-H-14": "laion2b_s32b_b79k",     # SD 2.x
    "ViT-bigG-14": "laion2b_s39b_b160k",  # SDXL (second text encoder)
    "ViT-L-14": "openai",                 # the same weights as openai/clip-vit-large-patch14
}
_RANDOM_WEIGHTS = ("random", "none")


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
    prefix = OPENCLIP_PREFIX
    reads = "English CLIP text"

    @classmethod
    def open(cls, name: str, *, device, dtype, attention_mask: bool, max_length: int,
             forced: bool) -> "OpenCLIPTextEncoder":
        if attention_mask:
            raise LatentGuardError("encoder.attention_mask applies to CLIP encoders only (OpenCLIP towers are causal)")
        return cls(name, device=device, dtype=dtype)

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
        import pickle

        if isinstance(exc, pickle.UnpicklingError) or "weights_only" in str(exc):
            # torch's message advises weights_only=False ("will likely succeed"): never pass that on
            raise LatentGuardError(
                f"refusing to load OpenCLIP weights '{pretrained}': the file pickles objects beyond tensors, which "
                "would run code when loaded; use safetensors weights (open_clip_model.safetensors) or a copy from "
                "a source you trust, saved as a plain state dict") from None
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise LatentGuardError(
            f"cannot load OpenCLIP model '{model_name}' with weights '{pretrained or 'random'}' ({first}); "
            "check the name (open_clip.list_models()) and pass a local file as "
            f"openclip:{model_name}@/path/to/weights.bin"
        ) from None


def _openclip_tokenizer(model_name: str):
    import open_clip

    try:
        return open_clip.get_tokenizer(model_name)
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise LatentGuardError(f"cannot build the tokenizer of OpenCLIP model '{model_name}' ({first})") from None
