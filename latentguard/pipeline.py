"""Put Latent Guard in front of a text-to-image pipeline: unsafe prompts never reach the denoiser.

Works with any diffusers-style pipeline, i.e. a callable ``pipe(prompt=..., negative_prompt=...,
**kwargs)`` with ``.text_encoder`` and ``.tokenizer`` attributes; diffusers itself is not imported.

    from latentguard.pipeline import guard_pipeline, encoder_from_pipeline
    guard = LatentGuard.from_pretrained(encoder=encoder_from_pipeline(pipe))   # SD 1.x: shares CLIP-L
    guarded = guard_pipeline(pipe, guard)
    result = guarded("a cat on a sofa", num_inference_steps=30)
    if result.blocked: print(result.concept, result.score)
    else: result.images[0].save("cat.png")

The check happens before any denoising step. A refused prompt gives a :class:`GuardedResult` with
``blocked=True``, the verdicts and no images (never a black image), or raises
:class:`PromptBlocked` with ``on_unsafe="raise"``. For a batch of prompts, ``on_unsafe`` decides:

* ``"block_all"`` (default): one unsafe prompt refuses the whole call; the pipeline is not run;
* ``"skip"``: only the safe prompts are generated; ``images`` keeps the input order, with ``None``
  where a prompt was refused (``negative_prompt`` lists are subset the same way);
* ``"raise"``: raise :class:`PromptBlocked` (carrying the result) if any prompt is unsafe.

One text-encoder pass: when the guard's encoder *is* the pipeline's CLIP text encoder (SD 1.x:
CLIP ViT-L/14, hidden 768; build it with :func:`encoder_from_pipeline`), the prompts are encoded
once, the guard scores those embeddings, and the same ``last_hidden_state`` (what SD 1.x uses as
conditioning) is handed to the pipeline as ``prompt_embeds``, so it does not encode them again.
Otherwise (another encoder, ``clip_skip``, a guard with long-prompt windows or an allowlist-edited
prompt) the guard encodes on its own and the pipeline gets the prompt text. Negative prompts are
not checked: they steer the image away from what they name.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import torch

from .errors import LatentGuardError

ON_UNSAFE = ("block_all", "skip", "raise")


@dataclass
class GuardedResult:
    """What a guarded pipeline call did, prompt by prompt.

    ``blocked``: at least one prompt was refused. ``verdicts``: one per input prompt, in order.
    ``passed``: indices of the prompts sent to the pipeline. ``output``: the pipeline's own return
    value (``None`` when it was not called). ``images``: per input prompt, its image (or list of
    images with ``num_images_per_prompt > 1``) and ``None`` where refused; ``None`` altogether when
    the pipeline was not called or returned no images. ``concept``/``score``: of the
    highest-scoring refused prompt (``None`` when nothing was refused).
    """

    blocked: bool
    verdicts: list
    prompts: list[str]
    passed: list[int] = field(default_factory=list)
    output: Any = None
    images: list | None = None
    concept: str | None = None
    score: float | None = None
    reused_embeddings: bool = False  # the pipeline got the guard's prompt_embeds (one encoder pass)

    @property
    def blocked_prompts(self) -> list[str]:
        return [p for p, v in zip(self.prompts, self.verdicts) if v.unsafe]


class PromptBlocked(LatentGuardError):
    """Raised by a guarded pipeline with ``on_unsafe="raise"``; ``.result`` holds the verdicts."""

    def __init__(self, result: GuardedResult) -> None:
        self.result = result
        worst = f": '{result.concept}' (score {result.score:.3f})" if result.concept is not None else ""
        super().__init__(f"{len(result.blocked_prompts)} of {len(result.prompts)} prompt(s) blocked by Latent Guard{worst}")


def encoder_from_pipeline(pipe, *, name: str | None = None):
    """A :class:`~latentguard.encoders.CLIPTextEncoder` over the pipeline's own text encoder and tokenizer.

    Built on the text encoder's current device and dtype, so the pipeline's module is left as it is
    (no copy, no cast). For SD 1.x this is CLIP ViT-L/14, the encoder the released guard was
    trained on.
    """
    from .encoders import CLIPTextEncoder

    text_encoder = getattr(pipe, "text_encoder", None)
    tokenizer = getattr(pipe, "tokenizer", None)
    if text_encoder is None or tokenizer is None:
        raise LatentGuardError("the pipeline has no .text_encoder/.tokenizer to share; load the guard's own encoder")
    device, dtype = _module_device_dtype(text_encoder)
    return CLIPTextEncoder(text_encoder, device=device, dtype=dtype, tokenizer=tokenizer, name=name)


class GuardedPipeline:
    """A text-to-image pipeline that checks every prompt with a Latent Guard before generating.

    ``guard`` is duck-typed: ``check(prompts) -> verdicts`` (``.unsafe``, ``.score``, ``.concept``),
    ``.encoder``, and optionally ``check_embeddings(prompts, embeddings)`` for the one-pass path.
    Other attributes are forwarded to the wrapped pipeline (``guarded.scheduler``...).
    """

    def __init__(self, pipe, guard, *, on_unsafe: str = "block_all", reuse_embeddings: bool = True) -> None:
        if on_unsafe not in ON_UNSAFE:
            raise LatentGuardError(f"on_unsafe must be one of {', '.join(ON_UNSAFE)}, got {on_unsafe!r}")
        if not callable(pipe):
            raise LatentGuardError("the pipeline must be callable as pipe(prompt=..., ...)")
        self.pipe = pipe
        self.guard = guard
        self.on_unsafe = on_unsafe
        self.reuse_embeddings = reuse_embeddings

    def __getattr__(self, name: str) -> Any:
        if name in ("pipe", "guard"):  # not yet set (during unpickling): avoid recursion
            raise AttributeError(name)
        return getattr(self.pipe, name)

    # ------------------------------------------------------------------------------ one pass
    def shares_encoder(self, kwargs: dict | None = None) -> bool:
        """Whether the guard's embeddings are exactly the pipeline's conditioning (so they can be reused)."""
        kwargs = kwargs or {}
        encoder = getattr(self.guard, "encoder", None)
        text_encoder = getattr(self.pipe, "text_encoder", None)
        config = getattr(text_encoder, "config", None)
        tokenizer = getattr(self.pipe, "tokenizer", None)
        return bool(
            self.reuse_embeddings
            and hasattr(self.guard, "check_embeddings")
            and getattr(encoder, "family", None) == "clip"
            and text_encoder is not None and getattr(encoder, "model", None) is text_encoder
            and getattr(encoder, "tokenizer", None) is tokenizer
            and not getattr(encoder, "attention_mask", False)
            and not getattr(config, "use_attention_mask", False)  # diffusers passes a mask then
            and getattr(tokenizer, "model_max_length", 77) == getattr(encoder, "context_length", 77)
            and kwargs.get("clip_skip") is None                   # SD then conditions on another layer
            and not getattr(self.guard, "long_prompts", False)    # windows: the guard encodes its own way
        )

    def check(self, prompts: Sequence[str], kwargs: dict | None = None) -> tuple[list, torch.Tensor | None]:
        """Verdicts for ``prompts`` and, on the one-pass path, their ``[N, 78, H]`` embeddings."""
        if self.shares_encoder(kwargs):
            encoder = self.guard.encoder
            emb = encoder.encode(prompts, batch_size=getattr(self.guard, "batch_size", 64))
            return list(self.guard.check_embeddings(prompts, emb)), emb
        return list(self.guard.check(prompts)), None

    # --------------------------------------------------------------------------------- call
    def __call__(self, prompt: str | Sequence[str] | None = None, negative_prompt: str | Sequence[str] | None = None,
                 **kwargs: Any) -> GuardedResult:
        """Check ``prompt`` (one or a list); generate for what passes; see the module docstring."""
        if kwargs.get("prompt_embeds") is not None:
            raise LatentGuardError("a guarded pipeline needs the prompt text to check it; pass prompt=..., "
                                   "not prompt_embeds")
        if prompt is None:
            raise LatentGuardError("a guarded pipeline needs prompt=... (a string or a list of strings)")
        single = isinstance(prompt, str)
        prompts = [prompt] if single else list(prompt)
        if not prompts or not all(isinstance(p, str) for p in prompts):
            raise LatentGuardError("prompt must be a non-empty string or list of strings")
        if isinstance(negative_prompt, (list, tuple)) and len(negative_prompt) != len(prompts):
            raise LatentGuardError(f"{len(negative_prompt)} negative prompts for {len(prompts)} prompts")

        verdicts, emb = self.check(prompts, kwargs)
        unsafe = [bool(v.unsafe) for v in verdicts]
        refused = [v for v in verdicts if v.unsafe]
        worst = max(refused, key=lambda v: v.score) if refused else None
        result = GuardedResult(blocked=bool(refused), verdicts=verdicts, prompts=prompts,
                               concept=None if worst is None else worst.concept,
                               score=None if worst is None else float(worst.score))
        if refused and self.on_unsafe == "raise":
            raise PromptBlocked(result)
        passed = [i for i, u in enumerate(unsafe) if not u] if self.on_unsafe == "skip" else (
            [] if refused else list(range(len(prompts))))
        if not passed:
            return result

        call = dict(kwargs)
        if isinstance(negative_prompt, (list, tuple)):
            call["negative_prompt"] = [negative_prompt[i] for i in passed]
        elif negative_prompt is not None:
            # diffusers wants one negative prompt per prompt_embeds row (a bare string gives one row).
            call["negative_prompt"] = negative_prompt if emb is None else [negative_prompt] * len(passed)
        if emb is not None:
            device, dtype = _module_device_dtype(self.pipe.text_encoder)
            call["prompt_embeds"] = emb[passed, 1:].to(device=device, dtype=dtype)  # last_hidden_state
            result.reused_embeddings = True
        else:
            call["prompt"] = prompts[0] if single else [prompts[i] for i in passed]
        result.passed = passed
        result.output = self.pipe(**call)
        result.images = _images_by_prompt(result.output, passed, len(prompts))
        return result


def guard_pipeline(pipe, guard, *, on_unsafe: str = "block_all", reuse_embeddings: bool = True) -> GuardedPipeline:
    """Wrap ``pipe`` so every call is checked by ``guard`` first (see :class:`GuardedPipeline`)."""
    return GuardedPipeline(pipe, guard, on_unsafe=on_unsafe, reuse_embeddings=reuse_embeddings)


def _module_device_dtype(module) -> tuple[torch.device, torch.dtype]:
    device, dtype = getattr(module, "device", None), getattr(module, "dtype", None)
    if not isinstance(device, torch.device) or not isinstance(dtype, torch.dtype):
        param = next(module.parameters())
        device, dtype = param.device, param.dtype
    return device, dtype


def _images_by_prompt(output: Any, passed: list[int], n_prompts: int) -> list | None:
    """Spread the pipeline's images back over the input prompts (``None`` where refused)."""
    images = getattr(output, "images", None)
    if images is None and isinstance(output, (tuple, list)) and output:
        images = output[0]
    if images is None:
        return None
    images = list(images)
    if not images or len(images) % len(passed):
        return None
    per = len(images) // len(passed)
    spread: list = [None] * n_prompts
    for k, i in enumerate(passed):
        chunk = images[k * per : (k + 1) * per]
        spread[i] = chunk[0] if per == 1 else chunk
    return spread
