"""Put Latent Guard in front of a text-to-image pipeline: no text reaches its text encoders unchecked.

Works with diffusers pipelines (diffusers itself is not imported) and any callable whose signature
names its text arguments the same way:

    from latentguard.pipeline import guard_pipeline, encoder_from_pipeline
    guard = LatentGuard.from_pretrained(encoder=encoder_from_pipeline(pipe))   # SD 1.x: shares CLIP-L
    pipe = guard_pipeline(pipe, guard).to("cuda")      # .to()/.enable_*() keep the guard
    result = pipe("a cat on a sofa", num_inference_steps=30)
    if result.blocked: print(result.concept, result.score)
    else: result.images[0].save("cat.png")

Checked, before any denoising step: every text argument of the wrapped ``__call__`` signature,
``prompt``, ``prompt_2`` (SDXL), ``prompt_3`` (SD3) (a string or one per prompt); a prompt is
refused when any of its texts is unsafe. A guard sharing the pipeline's tokenizer scores the text as
diffusers' ``maybe_convert_prompt`` expands it (multi-vector textual-inversion tokens); a guard with
its own encoder refuses a text that uses such a learned token (it cannot read its meaning). Negative
prompts are not checked: they steer the image away from what they name. Arguments bind as the
wrapped pipeline's do (positional ones included).

Refused with :class:`~latentguard.errors.LatentGuardError` (one line): by :func:`guard_pipeline`,
a pipeline with no ``prompt``, with ``*args``, with a text-like argument it does not know (it could
reach an encoder unchecked), or with a tokenizer reading past the guard's context (SD3's T5) when
the guard lacks ``long_prompts``; per call, ``prompt_embeds``/``pooled_prompt_embeds`` (no text to
check), a ``callback_on_step_end_tensor_inputs`` naming prompt embeddings (a step callback could swap
them), an unknown text-like keyword, a verdict count that differs from the text count, and with
``skip`` an argument that cannot be split between refused and passed prompts.

A refused prompt gives a :class:`GuardedResult` with ``blocked=True``, the verdicts and no images
(never a black image), or raises :class:`PromptBlocked` with ``on_unsafe="raise"``. For a batch:

* ``"block_all"`` (default): one unsafe prompt refuses the whole call; the pipeline is not run;
* ``"skip"``: only the safe prompts are generated; every per-prompt argument (prompt and negative
  prompt lists, negative embeddings, generator lists, ``latents``, img2img images) is subset to
  them; ``images`` keeps the input order, with ``None`` where a prompt was refused;
* ``"raise"``: raise :class:`PromptBlocked` (carrying the result) if any prompt is unsafe.

Reused (one text-encoder pass) only where it is exactly what the pipeline would compute: the SD
1.x family (``StableDiffusionPipeline``, ``StableDiffusionImg2ImgPipeline``) whose text encoder and
tokenizer *are* the guard's (build it with :func:`encoder_from_pipeline`), conditioning on CLIP-L's
last layer: no ``clip_skip``, no LoRA ``scale`` in ``cross_attention_kwargs``, no textual-inversion
tokens in the tokenizer, no long-prompt windows. Then the guard's ``last_hidden_state`` is handed
over as ``prompt_embeds``. Everywhere else (SDXL, SD3, another encoder) the guard encodes on its own
and the pipeline encodes the text as usual, so safe prompts give the same images as unguarded.
"""
from __future__ import annotations

import functools
import inspect
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import torch

from ..constants import CONTEXT_LENGTH
from ..errors import LatentGuardError
from .arguments import added_tokens, classify, subset_call, text_arguments

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
    text_verdicts: dict = field(default_factory=dict)  # per checked argument (prompt, prompt_2...): its verdicts

    @property
    def blocked_prompts(self) -> list[str]:
        return [p for p, v in zip(self.prompts, self.verdicts) if v.unsafe]


class PromptBlocked(LatentGuardError):
    """Raised by a guarded pipeline with ``on_unsafe="raise"``; ``.result`` holds the verdicts."""

    def __init__(self, result: GuardedResult) -> None:
        self.result = result
        worst = f": '{result.concept}' (score {result.score:.3f})" if result.concept is not None else ""
        super().__init__(f"{len(result.blocked_prompts)} of {len(result.prompts)} prompt(s) blocked by Latent "
                         f"Guard{worst}")


def encoder_from_pipeline(pipe, *, name: str | None = None):
    """A :class:`~latentguard.encoders.CLIPTextEncoder` over the pipeline's own text encoder and tokenizer.

    Built on the text encoder's current device and dtype, so the pipeline's module is left as it is
    (no copy, no cast). For SD 1.x this is CLIP ViT-L/14, the encoder the released guard was
    trained on.
    """
    from ..encoders import CLIPTextEncoder

    text_encoder = getattr(pipe, "text_encoder", None)
    tokenizer = getattr(pipe, "tokenizer", None)
    if text_encoder is None or tokenizer is None:
        raise LatentGuardError("the pipeline has no .text_encoder/.tokenizer to share; load the guard's own encoder")
    device, dtype = _module_device_dtype(text_encoder)
    return CLIPTextEncoder(text_encoder, device=device, dtype=dtype, tokenizer=tokenizer, name=name)


_REUSE_FAMILY = frozenset({"StableDiffusionPipeline", "StableDiffusionImg2ImgPipeline"})  # CLIP-L last layer


class GuardedPipeline:
    """A text-to-image pipeline that checks every text it would encode with a Latent Guard first.

    ``guard`` is duck-typed: ``check(prompts) -> verdicts`` (``.unsafe``, ``.score``, ``.concept``),
    ``.encoder``, and optionally ``check_embeddings(prompts, embeddings)`` for the one-pass path.
    Other attributes are read from (and set on) the wrapped pipeline; a method that returns the
    pipeline (``.to()``, ``.enable_*()``...) returns this guarded wrapper instead, and one that
    returns another pipeline returns it guarded the same way.
    """

    _OWN = ("pipe", "guard", "on_unsafe", "reuse_embeddings", "texts", "_signature")

    def __init__(self, pipe, guard, *, on_unsafe: str = "block_all", reuse_embeddings: bool = True) -> None:
        if on_unsafe not in ON_UNSAFE:
            raise LatentGuardError(f"on_unsafe must be one of {', '.join(ON_UNSAFE)}, got {on_unsafe!r}")
        if not callable(pipe):
            raise LatentGuardError("the pipeline must be callable as pipe(prompt=..., ...)")
        if not callable(getattr(guard, "check", None)):
            raise LatentGuardError("the guard must have a check(prompts) method (a LatentGuard)")
        texts = text_arguments(pipe)
        _check_context(pipe, guard)
        own = {"pipe": pipe, "guard": guard, "on_unsafe": on_unsafe, "reuse_embeddings": reuse_embeddings,
               "texts": texts, "_signature": inspect.signature(pipe)}
        for name, value in own.items():
            object.__setattr__(self, name, value)

    def __getattr__(self, name: str) -> Any:
        if name in GuardedPipeline._OWN:  # not yet set (during unpickling): avoid recursion
            raise AttributeError(name)
        value = getattr(self.pipe, name)
        if inspect.ismethod(value) and getattr(value, "__self__", None) is not None:
            return self._rewrapping(value)
        return value

    def __setattr__(self, name: str, value: Any) -> None:
        if name == "on_unsafe" and value not in ON_UNSAFE:  # checked when set, as in __init__
            raise LatentGuardError(f"on_unsafe must be one of {', '.join(ON_UNSAFE)}, got {value!r}")
        if name in GuardedPipeline._OWN:
            object.__setattr__(self, name, value)
        else:
            setattr(self.pipe, name, value)

    def __repr__(self) -> str:
        return (f"GuardedPipeline({type(self.pipe).__name__}, checks {', '.join(self.texts)}, "
                f"on_unsafe={self.on_unsafe!r})")

    def _rewrapping(self, method):
        @functools.wraps(method)
        def call(*args, **kwargs):
            out = method(*args, **kwargs)
            if out is self.pipe:
                return self
            if out is not None and out is not self.pipe and (isinstance(out, type(self.pipe))
                                                             or (callable(out) and hasattr(out, "components"))):
                return GuardedPipeline(out, self.guard, on_unsafe=self.on_unsafe,
                                       reuse_embeddings=self.reuse_embeddings)
            return out
        return call

    # ------------------------------------------------------------------------------ one pass
    def shares_encoder(self, kwargs: dict | None = None) -> bool:
        """Whether the guard's embeddings are exactly the pipeline's conditioning (so they can be reused).

        Only for the SD 1.x family (one CLIP text encoder, conditioning on its last layer), the
        guard encoding with that very module and tokenizer, and nothing that changes the
        conditioning: no ``clip_skip``, no LoRA ``scale``, no textual-inversion tokens.
        """
        kwargs = kwargs or {}
        encoder = getattr(self.guard, "encoder", None)
        text_encoder = getattr(self.pipe, "text_encoder", None)
        config = getattr(text_encoder, "config", None)
        tokenizer = getattr(self.pipe, "tokenizer", None)
        family = {c.__name__ for c in type(self.pipe).__mro__} & _REUSE_FAMILY
        attention = kwargs.get("cross_attention_kwargs") or {}
        return bool(
            self.reuse_embeddings and family and self.texts == ["prompt"]
            and getattr(self.pipe, "text_encoder_2", None) is None
            and hasattr(self.guard, "check_embeddings")
            and getattr(encoder, "family", None) == "clip"
            and text_encoder is not None and getattr(encoder, "model", None) is text_encoder
            and getattr(encoder, "tokenizer", None) is tokenizer
            and not getattr(encoder, "attention_mask", False)
            and not getattr(config, "use_attention_mask", False)  # diffusers passes a mask then
            and (getattr(tokenizer, "model_max_length", CONTEXT_LENGTH)
                 == getattr(encoder, "context_length", CONTEXT_LENGTH))
            and kwargs.get("clip_skip") is None                   # SD then conditions on another layer
            and attention.get("scale") is None                    # a text-encoder LoRA scale
            and not added_tokens(tokenizer)                      # textual inversion
            and not getattr(self.guard, "long_prompts", False)    # windows: the guard encodes its own way
        )

    def check(self, prompts: Sequence[str], kwargs: dict | None = None) -> tuple[list, torch.Tensor | None]:
        """Verdicts for ``prompts`` and, on the one-pass path, their ``[N, 78, H]`` embeddings."""
        prompts = list(prompts)
        if self.shares_encoder(kwargs):
            encoder = self.guard.encoder
            emb = encoder.encode(prompts, batch_size=getattr(self.guard, "batch_size", 64))
            verdicts, out = list(self.guard.check_embeddings(prompts, emb)), emb
        else:
            verdicts, out = list(self.guard.check(prompts)), None
        _check_verdicts(verdicts, len(prompts))
        return verdicts, out

    # --------------------------------------------------------------------------------- call
    def __call__(self, *args: Any, **kwargs: Any) -> GuardedResult:
        """Check every text argument; generate for what passes; see the module docstring.

        Arguments are those of the wrapped pipeline, positional ones included, in its order.
        """
        call = self._bind(args, kwargs)
        _check_context(self.pipe, self.guard)  # again per call: long_prompts or a tokenizer may have changed since
        prompt = call.get("prompt")
        if prompt is None:
            raise LatentGuardError("a guarded pipeline needs prompt=... (a string or a list of strings)")
        single = isinstance(prompt, str)
        prompts = [prompt] if single else list(prompt)
        if not prompts or not all(isinstance(p, str) for p in prompts):
            raise LatentGuardError("prompt must be a non-empty string or list of strings")
        n = len(prompts)
        for name, value in call.items():
            if (classify(name) in ("text", "negative") and isinstance(value, (list, tuple))
                    and len(value) != n):
                raise LatentGuardError(f"{len(value)} {name} for {n} prompts")
        self._follow_pipeline_device()
        texts = self._texts(call, n)  # [(prompt index, argument, text)]
        reuse = set(name for _, name, _ in texts) == {"prompt"} and self.shares_encoder(call)
        if reuse:
            verdicts, emb = self.check(prompts, call)
            checked = dict(zip(range(n), verdicts))
            by_text = {"prompt": verdicts}
        else:
            all_verdicts, emb = list(self.guard.check([t for _, _, t in texts])), None
            _check_verdicts(all_verdicts, len(texts))  # a missing or non-bool verdict never reads as safe
            by_text = {}
            for (_, name, _), v in zip(texts, all_verdicts):
                by_text.setdefault(name, []).append(v)
            checked = {}
            for (i, name, _), v in zip(texts, all_verdicts):  # per prompt: the worst of its texts
                best = checked.get(i)
                if best is None or (v.unsafe and (not best.unsafe or v.score > best.score)):
                    checked[i] = v
        verdicts = [checked[i] for i in range(n)]
        refused = [v for v in verdicts if v.unsafe]
        worst = max(refused, key=lambda v: v.score) if refused else None
        result = GuardedResult(blocked=bool(refused), verdicts=verdicts, prompts=prompts, text_verdicts=by_text,
                               concept=None if worst is None else worst.concept,
                               score=None if worst is None else float(worst.score))
        if refused and self.on_unsafe == "raise":
            raise PromptBlocked(result)
        passed = [i for i, v in enumerate(verdicts) if not v.unsafe] if self.on_unsafe == "skip" else (
            [] if refused else list(range(n)))
        if not passed:
            return result
        if len(passed) < n:
            call = subset_call(call, passed, n, int(call.get("num_images_per_prompt") or 1))
        if emb is not None:
            device, dtype = _module_device_dtype(self.pipe.text_encoder)
            call.pop("prompt")
            call["prompt_embeds"] = emb[passed, 1:].to(device=device, dtype=dtype)  # last_hidden_state
            negative = call.get("negative_prompt")
            if isinstance(negative, str):  # diffusers wants one negative prompt per prompt_embeds row
                call["negative_prompt"] = [negative] * len(passed)
            result.reused_embeddings = True
        result.passed = passed
        result.output = self.pipe(**call)
        result.images = _images_by_prompt(result.output, passed, n)
        return result

    def _follow_pipeline_device(self) -> None:
        """A guard encoding with one of the pipeline's text encoders feeds it on that module's device,
        wherever ``.to()`` has moved the pipeline since the guard was built."""
        encoder = getattr(self.guard, "encoder", None)
        model = getattr(encoder, "model", None)
        if model is not None and any(model is getattr(self.pipe, name, None)
                                     for name in ("text_encoder", "text_encoder_2", "text_encoder_3")):
            encoder.device = _module_device_dtype(model)[0]

    def _bind(self, args: tuple, kwargs: dict) -> dict:
        """The call's arguments by name, as the wrapped pipeline's signature reads them."""
        try:
            bound = self._signature.bind(*args, **kwargs)
        except TypeError as exc:
            raise LatentGuardError(f"arguments do not fit {type(self.pipe).__name__}.__call__: {exc}") from None
        call: dict = {}
        for name, value in bound.arguments.items():
            if self._signature.parameters[name].kind is inspect.Parameter.VAR_KEYWORD:
                call.update(value)
            else:
                call[name] = value
        for name, value in call.items():
            kind = classify(name)
            if kind == "unknown":
                raise LatentGuardError(f"argument {name} may carry text the guard cannot check; refusing the call")
            if kind == "embeds" and value is not None:
                raise LatentGuardError(f"a guarded pipeline needs the prompt text to check it; pass prompt=..., "
                                       f"not {name}")
            if name == "callback_on_step_end_tensor_inputs" and any(
                    classify(str(t)) in ("embeds", "unknown") for t in (value or ())):
                raise LatentGuardError(f"{name} lists {', '.join(map(str, value))}: a step callback could replace the "
                                       "checked text's embeddings; pass only 'latents' (or negative ones)")
            if kind == "text" and name not in self.texts and value is not None:
                raise LatentGuardError(f"argument {name} is not one {type(self.pipe).__name__} takes; "
                                       "refusing the call")
        return call

    def _texts(self, call: dict, n: int) -> list[tuple[int, str, str]]:
        """Every text the pipeline will encode: ``(prompt index, argument, text)``.

        ``prompt_2``/``prompt_3`` left out default to ``prompt`` in diffusers: checked once, as ``prompt``.
        """
        out = []
        for name in self.texts:
            value = call.get(name)
            if value is None:
                continue
            values = [value] * n if isinstance(value, str) else list(value)
            if not all(isinstance(t, str) for t in values):
                raise LatentGuardError(f"{name} must be a string or a list of strings")
            tokenizer = getattr(self.pipe, "tokenizer" + name[len("prompt"):], None)
            convert = getattr(self.pipe, "maybe_convert_prompt", None)
            if (convert is not None and tokenizer is not None
                    and getattr(self.guard.encoder, "tokenizer", None) is tokenizer):
                values = [convert(t, tokenizer) for t in values]  # textual inversion: the tokens it will encode
            else:  # the guard's own tokenizer reads a learned token as plain characters: it cannot judge it
                learned = [t for t in added_tokens(tokenizer) if any(t in v for v in values)] if tokenizer else []
                if learned:
                    raise LatentGuardError(f"{name} uses textual-inversion token(s) {', '.join(learned[:3])}, which "
                                           "the "
                                           "guard's own encoder cannot read; build the guard on the pipeline's text "
                                           "encoder (encoder_from_pipeline) or leave them out")
            out.extend((i, name, t) for i, t in enumerate(values))
        return out


def guard_pipeline(pipe, guard, *, on_unsafe: str = "block_all", reuse_embeddings: bool = True) -> GuardedPipeline:
    """Wrap ``pipe`` so every call is checked by ``guard`` first (see :class:`GuardedPipeline`).

    Refuses (:class:`LatentGuardError`, one line) a pipeline it cannot check fully: no ``prompt``
    argument, a text argument it does not know, or a text encoder reading more tokens than the
    guard scores (SD3's T5) without ``long_prompts``.
    """
    if isinstance(pipe, GuardedPipeline):
        raise LatentGuardError("this pipeline is already guarded")
    return GuardedPipeline(pipe, guard, on_unsafe=on_unsafe, reuse_embeddings=reuse_embeddings)


def _check_verdicts(verdicts: list, n_texts: int) -> None:
    """One verdict per text, each with a bool ``unsafe``, or refuse (``None`` or ``0`` must not read as safe)."""
    if len(verdicts) != n_texts or not all(isinstance(getattr(v, "unsafe", None), (bool, np.bool_)) for v in verdicts):
        raise LatentGuardError(f"the guard gave {len(verdicts)} verdicts for {n_texts} texts (or a verdict without "
                               "a bool 'unsafe'); refusing")


def _check_context(pipe, guard) -> None:
    """Refuse a pipeline whose tokenizers read further than the guard's window (text past it goes unchecked)."""
    if getattr(guard, "long_prompts", False):
        return
    context = getattr(getattr(guard, "encoder", None), "context_length", CONTEXT_LENGTH)
    for name in ("tokenizer", "tokenizer_2", "tokenizer_3"):
        tokenizer = getattr(pipe, name, None)
        length = getattr(tokenizer, "model_max_length", None)
        if tokenizer is not None and (not isinstance(length, int) or length > context):
            raise LatentGuardError(f"{type(pipe).__name__}.{name} reads up to {length} tokens but the guard scores "
                                   f"{context}; build the guard with long_prompts=True")


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
