"""Put Latent Guard in front of a text-to-image pipeline: no unchecked text conditions an image.

    from latentguard.pipeline import guard_pipeline, encoder_from_pipeline
    guard = LatentGuard.from_pretrained(encoder=encoder_from_pipeline(pipe))   # SD 1.x: shares CLIP-L
    pipe = guard_pipeline(pipe, guard).to("cuda")      # .to()/.enable_*() keep the guard
    result = pipe("a cat on a sofa", num_inference_steps=30)
    if result.blocked: print(result.concept, result.score)
    else: result.images[0].save("cat.png")

Before the call, every ``prompt``/``prompt_2``/``prompt_3`` text is checked (a prompt is refused when any of
its texts is unsafe; a negative text naming clothing refuses the call). During the call the wrapper stands at
the boundaries the conditioning crosses (:mod:`latentguard.pipeline.boundary`): whatever reaches a text encoder
must be a checked (or negative) text's tokenization, or it is checked there; whatever conditions the denoiser
must come from those encoder outputs. A guard sharing a text encoder scores on its unmodified weights (PEFT
adapters off) and refuses when they changed since wrapping. The contract: ``docs/pipeline.md``.

``on_unsafe`` (:class:`~latentguard.pipeline.result.OnUnsafe`, where each action is defined):
``"block_all"`` (default: one unsafe prompt refuses the call, the pipeline is not run), ``"skip"``
(only the safe prompts are generated; per-prompt arguments are subset), ``"raise"``
(:class:`PromptBlocked`), ``"annotate"`` (generate as usual and attach the verdicts; the boundary
rules still hold), ``"sanitize"`` (generate from the unsafe texts as the guard edits them when every
edit passes, else refuse; ``result.sanitized`` says what changed). ``on_verdict(result)`` is called
once per guarded call, in every mode, before it returns or raises; an exception in it refuses the call.
"""
from __future__ import annotations

import contextlib
import functools
import inspect
from typing import Any, Callable, Sequence

import torch

from ..constants import CONTEXT_LENGTH
from ..errors import LatentGuardError
from ..guard.options import encoding_batch, reads_long_prompts
from ..guard.refusals import check_or_refused
from .arguments import added_tokens, classify, negative_texts, steer_away, subset_call, text_arguments, text_list
from .boundary import BoundaryBlocked, Session, known_vocabularies
from .numbers import refuse_disguised_numbers
from .outputs import check_returned_conditioning
from .parts import (
    Parts,
    find_parts,
    has_adapters,
    unmodified_weights,
    validate_concept_vectors,
    weights_seal,
    weights_unchanged,
)
from .provenance import CHECKED
from .result import GuardedResult, OnUnsafe, PromptBlocked, images_by_prompt, validate_verdicts
from .sanitizing import sanitize_call
from .steering import refuse_flipped_momentum, refuse_uncovering, reversed_edits

_REUSE_FAMILY = frozenset({"StableDiffusionPipeline", "StableDiffusionImg2ImgPipeline"})  # CLIP-L last layer


def encoder_from_pipeline(pipe, *, name: str | None = None):
    """A :class:`~latentguard.encoders.CLIPTextEncoder` over the pipeline's own text encoder and tokenizer.

    Built on the text encoder's current device and dtype, so the pipeline's module is left as it is
    (no copy, no cast). For SD 1.x this is CLIP ViT-L/14, the encoder the released guard was trained on.
    """
    from ..encoders import CLIPTextEncoder

    text_encoder = getattr(pipe, "text_encoder", None)
    tokenizer = getattr(pipe, "tokenizer", None)
    if text_encoder is None or tokenizer is None:
        raise LatentGuardError("the pipeline has no .text_encoder/.tokenizer to share; load the guard's own encoder")
    device, dtype = _module_device_dtype(text_encoder)
    return CLIPTextEncoder(text_encoder, device=device, dtype=dtype, tokenizer=tokenizer, name=name)


class GuardedPipeline:
    """A text-to-image pipeline that checks every text before it conditions an image (module docstring).

    ``guard`` is duck-typed: ``check(prompts) -> verdicts`` (``.unsafe``, ``.score``, ``.concept``,
    ``.truncated``), ``.encoder``, and optionally ``check_embeddings`` for the one-pass path. Other
    attributes are read from (and set on) the wrapped pipeline; its methods run with the boundary
    hooks on (``guarded.encode_prompt(text)`` checks ``text`` at the encoder); one that returns the
    pipeline (``.to()``, ``.enable_*()``) returns this wrapper, and one that returns another pipeline
    returns it guarded the same way.
    """

    _OWN = ("pipe", "guard", "on_unsafe", "reuse_embeddings", "on_verdict", "texts", "_signature", "_fingerprint",
            "_known")

    def __init__(self, pipe, guard, *, on_unsafe: str | OnUnsafe = "block_all", reuse_embeddings: bool = True,
                 on_verdict: Callable | None = None) -> None:
        on_unsafe = OnUnsafe.parse(on_unsafe)
        if not callable(pipe):
            raise LatentGuardError("the pipeline must be callable as pipe(prompt=..., ...)")
        if not callable(getattr(guard, "check", None)):
            raise LatentGuardError("the guard must have a check(prompts) method (a LatentGuard)")
        if on_verdict is not None and not callable(on_verdict):
            raise LatentGuardError(f"on_verdict must be callable, got {type(on_verdict).__name__}")
        texts = text_arguments(pipe)
        parts = find_parts(pipe)
        _check_context(pipe, parts, guard)
        own = {"pipe": pipe, "guard": guard, "on_unsafe": on_unsafe, "reuse_embeddings": reuse_embeddings,
               "on_verdict": on_verdict, "texts": texts, "_signature": inspect.signature(pipe), "_fingerprint": None,
               "_known": known_vocabularies(parts)}  # the tokens and embedding rows the guard checked it with
        for name, value in own.items():
            object.__setattr__(self, name, value)
        shared = self._shared_encoder(parts)
        if shared is not None:
            self._follow_pipeline_device()
            validate_concept_vectors(guard, shared[1], shared[0])
            object.__setattr__(self, "_fingerprint", weights_seal(*shared))  # the full content, hashed once

    def __getattr__(self, name: str) -> Any:
        if name in GuardedPipeline._OWN:  # not yet set (during unpickling): avoid recursion
            raise AttributeError(name)
        value = getattr(self.pipe, name)
        if inspect.ismethod(value) and getattr(value, "__self__", None) is not None:
            return self._rewrapping(value)
        return value

    def __setattr__(self, name: str, value: Any) -> None:
        if name == "on_unsafe":  # checked when set, as in __init__
            value = OnUnsafe.parse(value)
        if name in GuardedPipeline._OWN:
            object.__setattr__(self, name, value)
        else:
            setattr(self.pipe, name, value)

    @property
    def config(self):
        """Not forwarded: ``Pipeline.from_pipe(guarded)`` reads it to build an unguarded pipeline."""
        raise LatentGuardError("a guarded pipeline's config is not forwarded, so that AutoPipelineFor*.from_pipe("
                               "guarded) cannot build an unguarded copy: use latentguard.pipeline.from_pipe("
                               "AutoPipelineForImage2Image, guarded) (guarded), or guarded.pipe.config to read it")

    def __repr__(self) -> str:
        return (f"GuardedPipeline({type(self.pipe).__name__}, checks {', '.join(self.texts)}, "
                f"on_unsafe={str(self.on_unsafe)!r})")

    def _rewrapping(self, method):
        @functools.wraps(method)
        def call(*args, **kwargs):
            session = Session(self.pipe, find_parts(self.pipe), self.guard, known=self._known)
            try:
                with session:
                    out = method(*args, **kwargs)
            finally:
                if session.verdicts:  # texts checked at an encoder (guarded.encode_prompt(text)): audited too
                    verdicts = [v for _, v in session.verdicts]
                    result = GuardedResult(blocked=any(v.unsafe for v in verdicts), verdicts=verdicts,
                                           prompts=[getattr(v, "prompt", "") for v in verdicts])
                    _group(result, session)
                    self._notify(result)
            if out is self.pipe:
                return self
            if out is not None and (isinstance(out, type(self.pipe)) or (callable(out) and hasattr(out, "components"))):
                return GuardedPipeline(out, self.guard, on_unsafe=self.on_unsafe,
                                       reuse_embeddings=self.reuse_embeddings, on_verdict=self.on_verdict)
            return out
        return call

    # ------------------------------------------------------------------------------ one pass
    def shares_encoder(self, kwargs: dict | None = None) -> bool:
        """Whether the guard's embeddings are exactly the pipeline's conditioning (so they can be reused).

        Only for the SD 1.x family (one CLIP text encoder, conditioning on its last layer), the
        guard encoding with that very module and tokenizer, and nothing that changes the
        conditioning: no ``clip_skip``, no LoRA (adapters or ``scale``), no textual-inversion tokens.
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
            and not has_adapters(text_encoder)                    # the guard scores without them
            and not added_tokens(tokenizer)                      # textual inversion
            and not reads_long_prompts(self.guard)                # windows: the guard encodes its own way
        )

    def check(self, prompts: Sequence[str], kwargs: dict | None = None) -> tuple[list, torch.Tensor | None]:
        """Verdicts for ``prompts`` and, on the one-pass path, their ``[N, 78, H]`` embeddings."""
        prompts = list(prompts)
        if self.shares_encoder(kwargs):
            emb = self.guard.encoder.encode(prompts, batch_size=encoding_batch(self.guard))
            verdicts, out = list(self.guard.check_embeddings(prompts, emb)), emb
        else:
            verdicts, out = check_or_refused(self.guard, prompts), None  # unreadable: refused, not an error
        validate_verdicts(verdicts, len(prompts))
        return verdicts, out

    # --------------------------------------------------------------------------------- call
    def __call__(self, *args: Any, **kwargs: Any) -> GuardedResult:
        """Check the texts, generate for what passes, watch the boundaries; see the module docstring.

        Arguments are those of the wrapped pipeline, positional ones included, in its order.
        """
        call = self._bind(args, kwargs)
        prompt = call.get("prompt")
        if prompt is None:
            raise LatentGuardError("a guarded pipeline needs prompt=... (a string or a list of strings)")
        prompts = text_list(prompt, "prompt")
        if not prompts:
            raise LatentGuardError("prompt must be a non-empty string or list of strings")
        n = len(prompts)
        for name, value in call.items():
            if classify(name) in ("text", "negative") and isinstance(value, (list, tuple)):
                if len(value) != n:
                    raise LatentGuardError(f"{len(value)} {name} for {n} prompts")
                call[name] = list(value)  # diffusers takes a str or a list, never a tuple (a ValueError mid-call)
        parts = find_parts(self.pipe)  # again per call: a component may have been swapped since wrapping
        _check_context(self.pipe, parts, self.guard)
        shared = self._shared_encoder(parts)
        if shared is not None and not weights_unchanged(self._fingerprint, shared[1]):
            raise LatentGuardError(f"the weights of {shared[0]}, which the guard reads, changed since the pipeline was "
                                   "wrapped (a fused LoRA, a new dtype?); wrap it again after changing them")
        self._follow_pipeline_device()
        holder: list[GuardedResult] = []
        try:
            result = self._guarded_call(call, prompts, parts, shared, holder)
        except BaseException:
            if holder:
                self._notify(holder[0], already_failing=True)
            raise
        self._notify(result)
        return result

    def _guarded_call(self, call: dict, prompts: list[str], parts: Parts, shared, holder: list) -> GuardedResult:
        n, action = len(prompts), OnUnsafe.parse(self.on_unsafe)
        refuse_disguised_numbers(call, "argument")  # in every mode: each makes an unchecked text conditioning
        refuse_flipped_momentum(call)
        if action.enforces:  # a negative text naming clothing asks for nudity
            refuse_uncovering({**steer_away(self.pipe, negative_texts(call)), "reversed edit": reversed_edits(call)})
        session = Session(self.pipe, parts, self.guard, annotate=not action.enforces, known=self._known)
        with session:
            texts = self._texts(call, n)  # [(prompt index, argument, text)]
            reuse = {name for _, name, _ in texts} == {"prompt"} and self.shares_encoder(call)
            weights = unmodified_weights(shared[1]) if shared else contextlib.nullcontext()
            with session.trusted(), weights:  # the guard's own encoding: checked conditioning (one pass)
                if reuse:
                    all_verdicts, emb = self.check(prompts, call)
                else:
                    all_verdicts, emb = check_or_refused(self.guard, [t for _, _, t in texts]), None
                validate_verdicts(all_verdicts, len(texts))  # a missing or non-bool verdict never reads as safe
                used, sanitized = (texts, all_verdicts), {}
                if action is OnUnsafe.SANITIZE and any(v.unsafe for v in all_verdicts):
                    sanitized, *used = sanitize_call(self.guard, call, texts, all_verdicts, n)
                    emb, reuse = None, False  # the pipeline encodes the edited texts, at the checked boundary
            unsafe_now = [False] * n  # per prompt, after sanitizing
            for (i, _, _), v in zip(*used):
                unsafe_now[i] = unsafe_now[i] or bool(v.unsafe)
            passed = action.generated(unsafe_now)
            result = _result(prompts, texts, all_verdicts, action, blocked=action.enforces and any(unsafe_now))
            result.reused_embeddings, result.sanitized = emb is not None, sanitized
            holder.append(result)
            if result.blocked and action.raises:
                raise PromptBlocked(result)
            if not passed:
                return result
            if len(passed) < n:
                call = subset_call(call, passed, n, int(call.get("num_images_per_prompt") or 1))
            keep = set(passed)
            # A truncated safe verdict allows nothing: the part the encoder reads is checked where it arrives.
            session.allow([t for (i, _, t), v in zip(*used) if i in keep and (
                v.unsafe or reuse or not getattr(v, "truncated", False))])
            session.allow_roles(steer_away(self.pipe, negative_texts(call)))  # negatives; SLD's safety concept
            if emb is not None:
                device, dtype = _module_device_dtype(self.pipe.text_encoder)
                call.pop("prompt")
                call["prompt_embeds"] = emb[passed, 1:].to(device=device, dtype=dtype)  # last_hidden_state
                session.provenance.record(call["prompt_embeds"], [CHECKED] * len(passed))  # the passed rows only
                negative = call.get("negative_prompt")
                if isinstance(negative, str):  # diffusers wants one negative prompt per prompt_embeds row
                    call["negative_prompt"] = [negative] * len(passed)
            as_tuple = call.get("return_dict") is False  # run as a dict, so what it returns can be read by name
            if as_tuple:
                call["return_dict"] = True
            try:
                output = self.pipe(**call)
                check_returned_conditioning(output, negative_texts(call), self.guard, session, type(self.pipe).__name__)
                if as_tuple and hasattr(output, "to_tuple"):
                    output = output.to_tuple()
            except BoundaryBlocked as blocked:  # an unchecked text met at an encoder, checked there: unsafe
                result.blocked, result.blocked_at, result.reused_embeddings = True, blocked.where, False
                result.note_worst([blocked.verdict])
                if action.raises:
                    raise PromptBlocked(result) from None
                return result
            finally:
                _group(result, session)
        result.passed, result.output = passed, output
        result.images = images_by_prompt(output, passed, n)
        return result

    def _notify(self, result: GuardedResult, already_failing: bool = False) -> None:
        """Hand the verdicts to ``on_verdict``; an exception there refuses the call (fail closed)."""
        if self.on_verdict is None:
            return
        try:
            self.on_verdict(result)
        except Exception as exc:
            if already_failing:
                return  # the call is refused already; its own error is the one to report
            raise LatentGuardError(f"on_verdict raised {type(exc).__name__}: {exc}; refusing the call") from exc

    def _shared_encoder(self, parts: Parts) -> tuple[str, torch.nn.Module] | None:
        """The pipeline text encoder the guard encodes with, if any: ``(name, module)``."""
        model = getattr(getattr(self.guard, "encoder", None), "model", None)
        return next(((name, m) for name, m in parts.encoders.items() if m is model), None)

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
            if kind == "embeds" and value is not None:
                raise LatentGuardError(f"a guarded pipeline needs the texts to check them; pass prompt=... or "
                                       f"negative_prompt=..., not {name}")
            if kind == "text" and name not in self.texts and value is not None:
                raise LatentGuardError(f"argument {name} is not one {type(self.pipe).__name__} takes; "
                                       "refusing the call")
        return call

    def _texts(self, call: dict, n: int) -> list[tuple[int, str, str]]:
        """Every text checked before the call: ``(prompt index, argument, text)``.

        ``prompt_2``/``prompt_3`` left out default to ``prompt`` in diffusers: checked once, as ``prompt``.
        """
        out = []
        for name in self.texts:
            value = call.get(name)
            if value is None:
                continue
            values = text_list(value, name, n)
            tokenizer = getattr(self.pipe, "tokenizer" + name[len("prompt"):], None)
            convert = getattr(self.pipe, "maybe_convert_prompt", None)
            if (convert is not None and tokenizer is not None
                    and getattr(self.guard.encoder, "tokenizer", None) is tokenizer):
                values = [convert(t, tokenizer) for t in values]  # textual inversion: the tokens it will encode
            else:  # the guard's own tokenizer reads a learned token as plain characters: it cannot judge it
                learned = [t for t in added_tokens(tokenizer) if any(t in v for v in values)] if tokenizer else []
                if learned:
                    raise LatentGuardError(f"{name} uses textual-inversion token(s) {', '.join(learned[:3])}, whose "
                                           "learned embeddings the guard's own encoder cannot read; build the guard "
                                           "on the pipeline's text encoder (encoder_from_pipeline) or leave them out")
            out.extend((i, name, t) for i, t in enumerate(values))
        return out


def guard_pipeline(pipe, guard, *, on_unsafe: str | OnUnsafe = "block_all", reuse_embeddings: bool = True,
                   on_verdict: Callable | None = None) -> GuardedPipeline:
    """Wrap ``pipe`` so every call is checked by ``guard`` (see :class:`GuardedPipeline`).

    Refuses (:class:`LatentGuardError`, one line) a pipeline it cannot watch fully: no ``prompt``
    argument, no text encoder module to hook, or a tokenizer reading more tokens than the guard
    scores (SD3's T5) without ``long_prompts``.
    """
    if isinstance(pipe, GuardedPipeline):
        raise LatentGuardError("this pipeline is already guarded")
    return GuardedPipeline(pipe, guard, on_unsafe=on_unsafe, reuse_embeddings=reuse_embeddings, on_verdict=on_verdict)


def from_pipe(pipeline_class, guarded: GuardedPipeline, **kwargs) -> GuardedPipeline:
    """``pipeline_class.from_pipe(...)`` for a guarded pipeline: the new pipeline guarded the same way.

    ``from_pipe(AutoPipelineForImage2Image, guarded)`` shares the components (no copy), as diffusers'
    own ``from_pipe`` does, and keeps the guard, ``on_unsafe`` and ``on_verdict``.
    """
    if not isinstance(guarded, GuardedPipeline):
        raise LatentGuardError(f"from_pipe needs a guarded pipeline (guard_pipeline), got {type(guarded).__name__}")
    built = pipeline_class.from_pipe(guarded.pipe, **kwargs)
    return GuardedPipeline(built, guarded.guard, on_unsafe=guarded.on_unsafe, reuse_embeddings=guarded.reuse_embeddings,
                           on_verdict=guarded.on_verdict)


def _result(prompts: list[str], texts: list, verdicts: list, on_unsafe: OnUnsafe, blocked: bool) -> GuardedResult:
    """The verdicts per argument and per prompt (the worst of its texts) of the texts as given."""
    by_text: dict = {}
    checked: dict = {}
    for (i, name, _), v in zip(texts, verdicts):
        by_text.setdefault(name, []).append(v)
        best = checked.get(i)
        if best is None or (v.unsafe and (not best.unsafe or v.score > best.score)):
            checked[i] = v
    per_prompt = [checked[i] for i in range(len(prompts))]
    result = GuardedResult(blocked=blocked, verdicts=per_prompt, prompts=prompts, text_verdicts=by_text,
                           on_unsafe=on_unsafe)
    result.note_worst(per_prompt)
    return result


def _group(result: GuardedResult, session: Session) -> None:
    """Add the verdicts of texts first met at an encoder, under that encoder's name."""
    for where, verdict in session.verdicts:
        result.text_verdicts.setdefault(where, []).append(verdict)
    result.note_worst([v for _, v in session.verdicts])  # annotate: an unsafe text met there is reported too
    session.verdicts.clear()


def _check_context(pipe, parts: Parts, guard) -> None:
    """Refuse a pipeline whose tokenizers read further than the guard's window (text past it goes unchecked)."""
    if reads_long_prompts(guard):
        return
    context = getattr(getattr(guard, "encoder", None), "context_length", CONTEXT_LENGTH)
    for name, tokenizer in parts.tokenizers.items():
        length = getattr(tokenizer, "model_max_length", None)
        if not isinstance(length, int) or length > context:
            raise LatentGuardError(f"{type(pipe).__name__}.{name} reads up to {length} tokens but the guard scores "
                                   f"{context}; build the guard with long_prompts=True")


def _module_device_dtype(module) -> tuple[torch.device, torch.dtype]:
    device, dtype = getattr(module, "device", None), getattr(module, "dtype", None)
    if not isinstance(device, torch.device) or not isinstance(dtype, torch.dtype):
        param = next(module.parameters())
        device, dtype = param.device, param.dtype
    return device, dtype
