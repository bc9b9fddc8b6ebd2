"""The guard at the boundaries the conditioning crosses, for the length of one guarded call.

A :class:`Session` puts torch hooks on every text encoder and every other module of the pipeline
(removed when it ends) and enforces, in the calling thread:

1. **Text encoders' inputs.** Each row of token ids must be the tokenization (by one of the
   pipeline's tokenizers, special and padding tokens aside, possibly cut at the row's end) of a
   text allowed in this call: a text the guard checked, or a negative / unconditional / safety-concept text. Any
   other row is decoded and the decoded text is checked there (it must re-tokenize to the same
   ids; an unsafe one blocks the call); rows with learned (textual-inversion) tokens are refused
   unless the guard reads that encoder's own embeddings; rows longer than the guard reads are
   refused without ``long_prompts``. ``inputs_embeds`` instead of ids are refused. Whatever a checked
   row spells in the vocabulary (:mod:`latentguard.pipeline.reading`: not what the tokenizer's own code
   makes of it) is judged too when it reads otherwise than the checked text: a tokenizer whose normalizer
   rewrites text, or a row cut short by ``max_sequence_length``, cannot bring a text the guard never read.
2. **The denoiser's conditioning.** Every tensor passed to another module under a conditioning
   name (:data:`CONDITIONING`) must trace back to this call's encoder outputs
   (:mod:`latentguard.pipeline.provenance`). The calls of the first denoising step set the
   pattern; at later steps the *k*-th call of a step must receive the first step's *k*-th tensor again, or
   rows that all come from checked texts, none where negative rows were (a callback may drop the unconditional
   half, as ``SDCFGCutoffCallback`` does, not move or fill it). Negative rows out of their block (after the
   prompt's, as an edit) are conditioning: the call's negative texts are judged then. Rows of SLD's
   ``safety_concept`` (role ``safety``) may only be in the last third of the batch, its guidance rows, beside a
   third of checked rows: never where they would condition the image.
"""
from __future__ import annotations

import contextlib
import inspect
import re
import threading
from typing import Any, Callable

import torch

from ..constants import CONTEXT_LENGTH
from ..errors import LatentGuardError
from ..guard.options import reads_long_prompts
from .arguments import added_tokens, core_special_tokens
from .numbers import refuse_disguised_numbers
from .parts import Parts, unmodified_weights
from .provenance import CHECKED, NEGATIVE, SAFETY, Provenance, looser, same_tensor
from .reading import reading_key, spelled
from .result import validate_verdicts

# Names under which a module receives text conditioning (in its arguments or any dict among them).
CONDITIONING = re.compile(r"^(encoder_hidden_states(_\w+)?|pooled_projections?|\w*text_embeds?|proj_embedding|"
                          r"clip_txt\w*|\w*prompt_embeds?)$")
_STEP_NAMES = ("timestep", "timesteps", "t")
_ACTIVE = threading.local()


class BoundaryBlocked(LatentGuardError):
    """A text that reached a text encoder without being checked was checked there and is unsafe."""

    def __init__(self, verdict, where: str) -> None:
        self.verdict, self.where = verdict, where
        super().__init__(f"the text reaching {where} ({_short(getattr(verdict, 'prompt', ''))}) is unsafe: "
                         f"'{verdict.concept}' (score {float(verdict.score):.3f}); refusing the call")


def _short(text: str, n: int = 60) -> str:
    text = " ".join(str(text).split())
    return repr(text if len(text) <= n else text[: n - 3] + "...")


def vocabulary(tokenizer) -> frozenset:
    """The tokenizer's ``(token, id)`` pairs, as :func:`known_vocabularies` records them."""
    getter = getattr(tokenizer, "get_vocab", None)
    try:
        return frozenset(getter().items()) if getter is not None else frozenset()
    except (NotImplementedError, AttributeError, TypeError):
        return frozenset()


def known_vocabularies(parts) -> dict:
    """What the guard checked the pipeline with, when it was wrapped: each tokenizer's ``(token, id)`` pairs
    and each text encoder's number of embedding rows. An id whose token is new or changed since (a token
    added however it was added, a vocabulary edit, another tokenizer object put in the same slot) or beyond
    the rows then (resized embeddings) is a learned id: refused unless the guard reads that encoder."""
    rows = {}
    for name, module in parts.encoders.items():
        try:
            embeddings = getattr(module, "get_input_embeddings", lambda: None)()
        except (NotImplementedError, AttributeError):  # a custom tower: its tokens are still checked above
            embeddings = None
        rows[name] = getattr(embeddings, "num_embeddings", None)
    return {"tokenizers": {id(t): (t, vocabulary(t)) for t in parts.tokenizers.values()}, "rows": rows,
            "slots": {name: vocabulary(t) for name, t in parts.tokenizers.items()}}


class _Tokenizer:
    """One tokenizer as a session reads it: special and learned ids, and the allowed texts' token ids."""

    def __init__(self, tokenizer, convert: Callable | None, then: frozenset | None = None) -> None:
        self.tokenizer, self.convert = tokenizer, convert
        self.special = set(getattr(tokenizer, "all_special_ids", []) or [])
        learned = added_tokens(tokenizer)  # added ones, special or not (textual inversion, additional specials)
        self.learned = set(tokenizer.convert_tokens_to_ids(learned)) if learned else set()
        size = getattr(tokenizer, "vocab_size", None)
        core = set(tokenizer.convert_tokens_to_ids(sorted(core_special_tokens(tokenizer))))
        vocab = vocabulary(tokenizer)
        if isinstance(size, int):  # ids past the base vocabulary other than its structural tokens
            self.learned |= {i for _, i in vocab if isinstance(i, int) and i >= size and i not in core}
        if then is not None and vocab != then:  # new or re-pointed since wrapping
            self.learned |= {i for _, i in vocab - then}
        self.allowed: dict[tuple, str] = {}
        self.done = 0

    def content(self, ids) -> tuple:
        return tuple(i for i in ids if i not in self.special)

    def text_ids(self, text: str) -> tuple:
        return self.content(self.tokenizer(text, add_special_tokens=False, truncation=False, verbose=False)
                            ["input_ids"])

    def update(self, texts: list[tuple[str, str]]) -> None:
        for text, role in texts[self.done:]:
            variants = {text, text.strip(), text.lower().strip()}
            if self.convert is not None:
                variants.add(self.convert(text, self.tokenizer))  # textual inversion: multi-vector tokens
            for variant in variants:
                key = self.text_ids(variant)
                self.allowed[key] = looser(self.allowed.get(key), role)
        self.done = len(texts)

    def role(self, content: tuple, length: int) -> str | None:
        role = self.allowed.get(content)
        if role is None and len(content) >= length - 2:  # a full row: the tokenizer may have cut an allowed text
            for key, candidate in self.allowed.items():
                if len(key) > len(content) and key[: len(content)] == content:
                    role = looser(role, candidate)
        return role


class Session:
    """Hooks on one pipeline's modules for one guarded call (or one forwarded method call)."""

    def __init__(self, pipe, parts: Parts, guard, *, annotate: bool = False, known: dict | None = None) -> None:
        self.pipe, self.parts, self.guard, self.annotate = pipe, parts, guard, annotate
        self.known = known or {"tokenizers": {}, "rows": {}, "slots": {}}  # known_vocabularies() at wrapping
        self.provenance = Provenance()
        self.verdicts: list[tuple[str, Any]] = []  # (encoder name, verdict) of texts checked at an encoder
        self._texts: list[tuple[str, str]] = []
        self._judged: set[str] = set()  # the reading_key of each text the guard judged in this call
        self._negatives_judged = False  # the negative texts, judged once negative rows left their block
        self._tokenizers: dict[int, _Tokenizer] = {}
        self._pending: dict[int, list] = {}
        self._trusted = 0
        self._watch: dict[tuple[str, str], dict] = {}
        self._signatures: dict[int, inspect.Signature | None] = {}
        self._handles: list = []
        self._thread = threading.get_ident()

    # ------------------------------------------------------------------------------- set up
    def __enter__(self) -> "Session":
        if getattr(_ACTIVE, "session", None) is not None:
            raise LatentGuardError("a guarded call cannot run inside another one (from a step callback?); refusing")
        _ACTIVE.session = self
        try:
            for name, module in self.parts.encoders.items():
                self._handles.append(module.register_forward_pre_hook(self._encoder_hook(name), with_kwargs=True,
                                                                      prepend=True))
                self._handles.append(module.register_forward_hook(self._record_hook(name), prepend=True,
                                                                  always_call=True))
            for name, module in self.parts.others.items():
                self._handles.append(module.register_forward_pre_hook(self._denoiser_hook(name), with_kwargs=True,
                                                                      prepend=True))
        except Exception:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        _ACTIVE.session = None

    def allow(self, texts, role: str = CHECKED) -> None:
        """Texts whose tokenization may reach the text encoders in this call (``checked``, ``negative``, ``safety``)."""
        self._texts.extend((t, role) for t in texts if isinstance(t, str))
        if role == CHECKED:
            self._judged.update(reading_key(t) for t in texts if isinstance(t, str))

    def allow_roles(self, texts_by_role: dict[str, list[str]]) -> None:
        """:meth:`allow` for each role's texts (:func:`~latentguard.pipeline.arguments.steer_away`)."""
        for role, texts in texts_by_role.items():
            self.allow(texts, role)

    @contextlib.contextmanager
    def trusted(self):
        """The guard itself encoding: any ids pass, and the outputs are not recorded as conditioning (in
        ``skip`` they include refused prompts' states)."""
        self._trusted += 1
        try:
            yield
        finally:
            self._trusted -= 1

    def guard_reads(self, module, tokenizer=None) -> bool:
        """Whether the guard encodes with this very module (and tokenizer): it reads the pipeline's embeddings."""
        encoder = getattr(self.guard, "encoder", None)
        return getattr(encoder, "model", None) is module and (
            tokenizer is None or getattr(encoder, "tokenizer", None) is tokenizer)

    # -------------------------------------------------------------------------- 1: encoders
    def _encoder_hook(self, name: str):
        def hook(module, args, kwargs):
            if threading.get_ident() != self._thread:
                return None
            ids = kwargs.get("input_ids", args[0] if args else None)
            if self._trusted:  # the guard's own encoding: not conditioning (the one-pass path records its own)
                self._pending.setdefault(id(module), []).append(None)
                return None
            if not isinstance(ids, torch.Tensor):
                what = "embeddings (inputs_embeds)" if kwargs.get("inputs_embeds") is not None else "no token ids"
                raise LatentGuardError(f"{name} was given {what}: the guard reads only token ids of texts; refusing")
            ids = ids if ids.dim() > 1 else ids.unsqueeze(0)
            self._check_length(name, ids.shape[-1])
            roles = [self._row_role(name, module, row) for row in ids.tolist()]
            self._pending.setdefault(id(module), []).append(roles)
            return None
        return hook

    def _record_hook(self, name: str):
        def hook(module, args, output):
            if threading.get_ident() != self._thread:
                return None
            stack = self._pending.get(id(module))
            if stack:
                roles = stack.pop()
                if output is not None and roles is not None:
                    self.provenance.record(output, roles)
            return None
        return hook

    def _check_length(self, name: str, length: int) -> None:
        if reads_long_prompts(self.guard):
            return
        context = getattr(getattr(self.guard, "encoder", None), "context_length", CONTEXT_LENGTH)
        if length > context:
            raise LatentGuardError(f"{name} reads {length} tokens (the call's max_sequence_length?) but the guard "
                                   f"scores {context}; build the guard with long_prompts=True")

    def _tokenizer(self, tokenizer) -> _Tokenizer:
        info = self._tokenizers.get(id(tokenizer))
        if info is None:
            info = self._tokenizers[id(tokenizer)] = _Tokenizer(
                tokenizer, getattr(self.pipe, "maybe_convert_prompt", None), self._vocabulary_then(tokenizer))
        info.update(self._texts)
        return info

    def _vocabulary_then(self, tokenizer) -> frozenset | None:
        """The vocabulary of the tokenizer in this one's pipeline slot at wrapping (whatever object it was)."""
        slot = next((n for n, t in self.parts.tokenizers.items() if t is tokenizer), None)
        then = self.known.get("slots", {}).get(slot)
        if then is None:
            entry = self.known["tokenizers"].get(id(tokenizer))
            then = entry[1] if entry is not None and entry[0] is tokenizer else None
        return then

    def _row_role(self, name: str, module, row: list[int]) -> str:
        infos = [self._tokenizer(t) for t in self.parts.tokenizers_for(name)]
        for info in infos:
            content = info.content(row)
            role = info.role(content, len(row))
            if role is not None:
                if role == CHECKED:
                    self._check_learned(name, module, info, row)
                    self._check_spelled(name, info, content)
                return role
        return self._check_row(name, module, infos, row)

    def _check_learned(self, name: str, module, info: _Tokenizer, row) -> None:
        """Every id of the row as it reaches the encoder (special ones too: a learned token registered as a
        special one is one), against the learned ids and the embedding rows the encoder had at wrapping."""
        rows = self.known["rows"].get(name)
        learned = sorted({i for i in row if i in info.learned or (rows is not None and i >= rows)})
        if learned and not self.guard_reads(module, info.tokenizer):
            tokens = info.tokenizer.convert_ids_to_tokens(learned[:3])
            raise LatentGuardError(f"the text reaching {name} uses textual-inversion token(s) {', '.join(tokens)}, "
                                   "whose learned embeddings the guard does not read; build the guard on that text "
                                   "encoder (encoder_from_pipeline) or leave them out")

    def _check_row(self, name: str, module, infos: list[_Tokenizer], row: list[int]) -> str:
        """A row that is no allowed text's tokenization: decode it and check the text it reads."""
        for info in infos:
            content = info.content(row)
            try:
                text = info.tokenizer.decode(row, skip_special_tokens=True)
            except Exception:  # ids outside this tokenizer's vocabulary
                continue
            if info.text_ids(text) != content:
                continue
            self._check_learned(name, module, info, row)
            self.check_text(text, name)  # an unsafe text blocks the call there (annotate: it is let through)
            self.allow([text], CHECKED)
            self._check_spelled(name, info, content)
            return CHECKED
        raise LatentGuardError(f"{name} received token ids that are not the tokenization of any text the guard "
                               "could check; refusing the call")

    def _check_spelled(self, name: str, info: _Tokenizer, content: tuple) -> None:
        """Judge the text the row spells in the vocabulary unless it reads as a text judged in this call."""
        if not content:
            return
        text = spelled(info.tokenizer, content)
        if not text.strip():
            raise LatentGuardError(f"{name} received token ids that spell no text the guard can read; refusing")
        if reading_key(text) in self._judged:
            return
        self.check_text(text, name)
        self._judged.add(reading_key(text))

    def check_text(self, text: str, where: str):
        """Check one text found at an encoder (on the guard's unmodified weights); refuse what it cannot judge."""
        model = getattr(getattr(self.guard, "encoder", None), "model", None)
        weights = unmodified_weights(model) if any(model is m for m in self.parts.encoders.values()) else (
            contextlib.nullcontext())
        with self.trusted(), weights:
            verdicts = list(self.guard.check([text]))
        validate_verdicts(verdicts, 1)
        verdict = verdicts[0]
        self.verdicts.append((where, verdict))
        if verdict.unsafe and not self.annotate:
            raise BoundaryBlocked(verdict, where)
        if not verdict.unsafe and getattr(verdict, "truncated", False):
            raise LatentGuardError(f"the guard read only part of the text reaching {where} ({_short(text)}); build "
                                   "the guard with long_prompts=True")
        return verdict

    def _judge_negatives(self, module: str, arg: str) -> None:
        """Negative rows out of their block condition the image (a negative text given again as a SEGA edit pulled
        the image towards it, unchecked: a hostile pass; Kandinsky's prior does it on purpose): judged, once."""
        if self._negatives_judged:
            return
        self._negatives_judged = True
        for text in dict.fromkeys(t for t, role in self._texts if role == NEGATIVE and t.strip()):
            if reading_key(text) not in self._judged:
                self.check_text(text, f"{module} ({arg}: a negative text used as conditioning)")

    # ------------------------------------------------------------------------- 2: denoisers
    def _denoiser_hook(self, name: str):
        def hook(module, args, kwargs):
            if threading.get_ident() != self._thread:
                return None
            refuse_disguised_numbers(vars(self.pipe), "the pipeline's")  # a step callback may have set one
            bound = self._bind(module, args, kwargs)
            step = _step_value(bound)
            for arg, tensor in _conditioning(bound):
                self._check_conditioning(name, arg, tensor, step)
            return None
        return hook

    def _bind(self, module, args, kwargs) -> dict:
        if id(module) not in self._signatures:
            try:
                self._signatures[id(module)] = inspect.signature(module.forward)
            except (TypeError, ValueError):
                self._signatures[id(module)] = None
        signature = self._signatures[id(module)]
        named = {f"arg{i}": a for i, a in enumerate(args)}
        if signature is not None:
            try:
                named = dict(signature.bind_partial(*args, **kwargs).arguments)
            except TypeError:
                pass
        for key in [k for k, p in (signature.parameters.items() if signature else ()) if p.kind is p.VAR_KEYWORD]:
            named.update(named.pop(key, None) or {})
        return {**kwargs, **named}

    def _check_conditioning(self, module: str, arg: str, x: torch.Tensor, step) -> None:
        watch = self._watch.setdefault((module, arg), {"seen": [], "pattern": [], "first": step, "step": step,
                                                        "k": 0, "later": False})
        roles = next((r for t, r in watch["seen"] if same_tensor(t, x)), None)
        if roles is None:
            roles = self.provenance.roles(x)
            if roles is None:
                raise LatentGuardError(f"{module} received {arg} that the text encoders did not produce in this call "
                                       "(a step callback or an argument replaced it); refusing the call")
            _check_safety_rows(module, arg, roles)
            if not _negatives_in_one_block(roles):
                self._judge_negatives(module, arg)
            watch["seen"].append((x.detach().clone(), roles))
        if step != watch["step"] or step is None:
            watch["step"], watch["k"] = step, 0
        if not watch["later"] and step is not None and step == watch["first"]:
            watch["pattern"].append((x.detach().clone(), roles))  # the first step: as the pipeline built it
            return
        watch["later"] = True
        if not watch["pattern"]:
            watch["pattern"].append((x.detach().clone(), roles))
            return
        expected, was = watch["pattern"][watch["k"] % len(watch["pattern"])]
        watch["k"] += 1
        if same_tensor(expected, x):
            return
        if any(r != CHECKED for r in roles):
            raise LatentGuardError(f"{module} received {arg} with unchecked (negative or unconditional) rows where the "
                                   "first step had other rows (a step callback moved them); refusing the call")
        texts = x.detach().reshape(len(roles), -1).ne(0).any(1).tolist()  # rows of text: not blanked (zeros) ones
        if len(roles) == len(was) and any(w != CHECKED and r == CHECKED and t for w, r, t in zip(was, roles, texts)):
            raise LatentGuardError(f"{module} received {arg} with checked rows where the first step had negative or "
                                   "unconditional ones (a step callback put a text where the image is steered away "
                                   "from it); refusing the call")


def _check_safety_rows(module: str, arg: str, roles: list[str]) -> None:
    """Safe Latent Diffusion's safety concept only where that pipeline steers away from it: its batch is
    ``[unconditional, prompt, safety concept]`` thirds, so rows of that text may be in the last third only,
    and the prompt's third must be all checked rows."""
    if SAFETY not in roles:
        return
    third = len(roles) // 3
    if len(roles) % 3 or SAFETY in roles[: 2 * third] or any(r != CHECKED for r in roles[third: 2 * third]):
        raise LatentGuardError(f"{module} received {arg} with the pipeline's safety concept (a steer-away text, "
                               "not checked) outside Safe Latent Diffusion's guidance rows, where it would condition "
                               "the image; refusing the call")


def _negatives_in_one_block(roles: list[str]) -> bool:
    """Whether the negative and unconditional rows form one block beside the checked ones, as classifier-free
    guidance stacks them (``[negative, prompt]``, ``[prompt, negative]``, ``[prompt, negative, negative]``)."""
    at = [i for i, r in enumerate(roles) if r == NEGATIVE]
    return not at or CHECKED not in roles or at[-1] - at[0] + 1 == len(at)


def _step_value(bound: dict):
    for key in _STEP_NAMES:
        value = bound.get(key)
        if isinstance(value, torch.Tensor):
            return tuple(value.detach().reshape(-1)[:1].tolist())
        if isinstance(value, (int, float)):
            return (float(value),)
    return None


def _conditioning(bound: dict, depth: int = 0):
    """``(name, tensor)`` of every floating tensor under a conditioning name, in dicts and lists too."""
    for key, value in bound.items():
        if isinstance(value, dict) and depth < 3:
            yield from _conditioning(value, depth + 1)
        elif CONDITIONING.match(str(key)) and "image" not in str(key):
            values = value if isinstance(value, (list, tuple)) else [value]
            for item in values:
                if isinstance(item, torch.Tensor) and item.is_floating_point():
                    yield str(key), item
