"""The wire formats: OpenAI's moderation request and response, the native ``/v1/check`` form, and
errors in OpenAI's shape (``{"error": {"message", "type", "param", "code"}}``), each naming the field.

Parsing is plain Python over the decoded JSON, so every refusal says which field is wrong and why
(a 400 for a malformed request, a 413 for one over the limits).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Sequence

from ..data.text import validate_text
from ..decision.probability import DEFAULT_SLOPE
from ..errors import LatentGuardError
from ..io import strict_json

if TYPE_CHECKING:
    from ..guard.verdict import Verdict

ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
               404: "not_found_error", 405: "invalid_request_error", 408: "invalid_request_error",
               413: "invalid_request_error", 421: "invalid_request_error", 422: "invalid_request_error",
               499: "invalid_request_error", 500: "server_error", 503: "server_error"}


class RequestError(Exception):
    """A request the server answers with an error: HTTP ``status``, a one-line message, the field it names."""

    def __init__(self, status: int, message: str, *, param: str | None = None, code: str = "invalid_request",
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code
        self.headers = headers or {}

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": ERROR_TYPES.get(self.status, "server_error"),
                          "param": self.param, "code": self.code}}


@dataclass(frozen=True)
class Limits:
    max_inputs: int
    max_chars: int


def decode_body(raw: bytes) -> dict:
    """The request body as a JSON object, or a 400 saying what is wrong with it (bad UTF-8 or JSON, a key
    given twice, which proxies and loggers may read otherwise than this server, nesting past the stack)."""
    try:
        body = strict_json(raw.decode("utf-8"), "the request body")
    except UnicodeDecodeError as exc:
        raise RequestError(400, f"the request body is not valid JSON (not UTF-8: {exc.reason} at byte {exc.start})",
                           code="invalid_json") from None
    except LatentGuardError as exc:
        raise RequestError(400, str(exc), code="invalid_json") from None
    if not isinstance(body, dict):
        raise RequestError(400, f"the request body must be a JSON object, got {_kind(body)}", code="invalid_body")
    return body


def _kind(value: Any) -> str:
    return {bool: "a boolean", int: "a number", float: "a number", str: "a string", list: "a list",
            dict: "an object", type(None): "null"}.get(type(value), type(value).__name__)


def _check_text(text: str, where: str, limits: Limits) -> str:
    try:  # refused here, in this request alone: in a shared batch it would fail its neighbours
        validate_text(text, where)
    except LatentGuardError as exc:
        raise RequestError(400, str(exc), param=where, code="invalid_input") from None
    if len(text) > limits.max_chars:
        raise RequestError(413, f"{where} has {len(text):,} characters; this server takes at most "
                           f"{limits.max_chars:,} per prompt (--max-chars)", param=where, code="prompt_too_long")
    return text


def _check_count(n: int, field: str, limits: Limits) -> None:
    if n == 0:
        raise RequestError(400, f"{field} is empty: give at least one prompt", param=field, code="empty_input")
    if n > limits.max_inputs:
        raise RequestError(413, f"{field} has {n:,} prompts; this server takes at most {limits.max_inputs:,} "
                           "per request (--max-inputs)", param=field, code="too_many_inputs")


MODERATION_FIELDS = frozenset({"input", "model"})  # what OpenAI's moderation API takes, and what its clients send
TEXT_PART_KEYS = frozenset({"type", "text"})


def parse_moderation(body: dict, limits: Limits) -> list[list[str]]:
    """OpenAI's ``input``: the texts of each input, in order.

    A string or a list of strings is one input per string. A list of ``{"type": "text", "text": ...}``
    parts is one input, as OpenAI reads it (its result is flagged when any part is, or the parts joined with
    and without a space, as a client may send them on to a generator); an image part is refused: this guard
    reads text only. ``model`` is accepted and ignored. Any other field, or another key in a text part, is refused
    as OpenAI refuses it ("Unrecognized request argument supplied"): ignored, ``{"input": "a cat", "prompt":
    "a naked woman"}`` had been judged on "a cat" alone and answered not flagged (a hostile review).
    """
    if "input" not in body:
        raise RequestError(400, "missing field 'input' (a string, a list of strings, or a list of "
                           "{\"type\": \"text\", \"text\": ...} parts)", param="input", code="missing_input")
    unknown = sorted(set(body) - MODERATION_FIELDS)
    if unknown:
        raise RequestError(400, f"Unrecognized request argument supplied: {', '.join(unknown)} (/v1/moderations "
                           "takes 'input' and 'model', as OpenAI's moderation API does)", param=unknown[0],
                           code="unknown_field")
    value = body["input"]
    if isinstance(value, str):
        return [[_check_text(value, "input", limits)]]
    if not isinstance(value, list):
        raise RequestError(400, f"'input' must be a string or a list, got {_kind(value)}", param="input",
                           code="invalid_input")
    _check_count(len(value), "input", limits)
    if any(isinstance(item, dict) for item in value):
        parts = [_text_part(item, f"input[{i}]", limits) for i, item in enumerate(value)]
        if len(parts) > 1:  # a client that joins the parts into one prompt: "a photo of a nak" + "ed woman"
            parts += [_check_text(sep.join(parts), f"input (its {len(parts)} parts joined)", limits)
                      for sep in ("", " ")]
        return [parts]
    out = []
    for i, item in enumerate(value):
        if not isinstance(item, str):
            raise RequestError(400, f"input[{i}] must be a string, got {_kind(item)}", param=f"input[{i}]",
                               code="invalid_input")
        out.append([_check_text(item, f"input[{i}]", limits)])
    return out


def _text_part(item: Any, where: str, limits: Limits) -> str:
    if not isinstance(item, dict):
        raise RequestError(400, f"{where} must be a {{\"type\": \"text\", \"text\": ...}} part like the others, got "
                           f"{_kind(item)}", param=where, code="invalid_input")
    kind = item.get("type")
    if kind == "image_url" or "image_url" in item:
        raise RequestError(400, f"{where} is an image part (type 'image_url'): Latent Guard checks text prompts "
                           "only; send the text parts", param=where, code="image_input_unsupported")
    if kind != "text":
        raise RequestError(400, f"{where}.type must be 'text', got {kind!r}", param=f"{where}.type",
                           code="invalid_input")
    unknown = sorted(set(item) - TEXT_PART_KEYS)
    if unknown:
        raise RequestError(400, f"{where} has unknown key(s) {', '.join(repr(k) for k in unknown)}: a text part takes "
                           "'type' and 'text' only", param=f"{where}.{unknown[0]}", code="unknown_field")
    text = item.get("text")
    if not isinstance(text, str):
        raise RequestError(400, f"{where}.text must be a string, got {_kind(text)}", param=f"{where}.text",
                           code="invalid_input")
    return _check_text(text, f"{where}.text", limits)


def parse_check(body: dict, limits: Limits, endpoint: str = "/v1/check") -> tuple[list[str], bool]:
    """The native form (``/v1/check``, ``/v1/sanitize``): ``prompts`` (a string or a list of strings) and ``explain``
    (default false); any other field is refused, so a client that believes it set one (``threshold``) learns
    that it did not."""
    unknown = sorted(set(body) - {"prompts", "explain"})
    if unknown:
        raise RequestError(400, f"unknown field(s) {', '.join(repr(k) for k in unknown)}: {endpoint} takes 'prompts' "
                           "and 'explain' (the threshold and blacklist are the server's)", param=unknown[0],
                           code="unknown_field")
    if "prompts" not in body:
        raise RequestError(400, "missing field 'prompts' (a string or a list of strings)", param="prompts",
                           code="missing_input")
    value = body["prompts"]
    prompts = [value] if isinstance(value, str) else value
    if not isinstance(prompts, list):
        raise RequestError(400, f"'prompts' must be a string or a list of strings, got {_kind(value)}",
                           param="prompts", code="invalid_input")
    _check_count(len(prompts), "prompts", limits)
    for i, item in enumerate(prompts):
        if not isinstance(item, str):
            raise RequestError(400, f"prompts[{i}] must be a string, got {_kind(item)}", param=f"prompts[{i}]",
                               code="invalid_input")
        _check_text(item, f"prompts[{i}]", limits)
    explain = body.get("explain", False)
    if not isinstance(explain, bool):
        raise RequestError(400, f"'explain' must be true or false, got {_kind(explain)}", param="explain",
                           code="invalid_input")
    return prompts, explain


def slope_note(slope: float | None) -> dict:
    """Which probability slope the scores use, and whether it was fitted (``None``: the uncalibrated default)."""
    return {"slope": DEFAULT_SLOPE if slope is None else slope, "scores_calibrated": slope is not None}


def moderation_result(parts: Sequence[Verdict], slope: float | None) -> dict:
    """One OpenAI moderation result from the verdicts of one input's texts (one verdict for a plain string).

    Flagged when any text is; a category flagged when it is for any text, its score the highest;
    ``latentguard`` reports the text that decided (the flagged one with the highest probability).
    """
    main = max(parts, key=lambda v: (v.unsafe, v.probability))
    names = list(main.categories)
    categories = {name: any(v.categories[name] for v in parts) for name in names}
    scores = {name: max(v.category_scores[name] for v in parts) for name in names}
    flagged = any(v.unsafe for v in parts)
    if flagged != any(categories.values()) or not all(math.isfinite(p) and 0.0 <= p <= 1.0 for p in scores.values()):
        raise ValueError(f"inconsistent verdict: flagged {flagged}, categories {categories}, scores {scores}")
    return {
        "flagged": flagged,
        "categories": categories,
        "category_scores": scores,
        "category_applied_input_types": {name: ["text"] for name in names},
        "latentguard": {"score": main.score, "concept": main.concept, "threshold": main.threshold,
                        "probability": main.probability, "top_concepts": [[c, s] for c, s in main.top_concepts],
                        "truncated": any(v.truncated for v in parts), **slope_note(slope)},
    }


def sanitize_result(verdict: Verdict, edit, explain: bool) -> dict:
    """One prompt of ``/v1/sanitize``: ``prompt``, ``text`` (``null`` unless it passes: a text that does not
    pass must not be used), ``removed``, ``passes``, ``rounds``, ``reason`` (why not; ``null`` when it passes),
    and the verdicts ``before`` (the request's own) and ``after`` (of ``text``). ``edit``: the guard's
    ``Sanitized`` for a flagged prompt, ``None`` for a safe one. A flagged prompt whose edit is not a checked,
    changed, safe text never passes (a 5xx instead)."""
    if edit is None:
        if verdict.unsafe:
            raise ValueError("a flagged prompt was not sanitized")
        return {"prompt": verdict.prompt, "text": verdict.prompt, "removed": [], "passes": True, "rounds": 0,
                "reason": None, "before": validate_result(verdict, explain), "after": validate_result(verdict, explain)}
    if edit.prompt != verdict.prompt or not isinstance(edit.passes, bool) or not isinstance(edit.after.unsafe, bool):
        raise ValueError("the sanitized result does not answer its prompt")
    if edit.passes and (edit.after.unsafe or edit.text == edit.prompt or edit.after.prompt != edit.text):
        raise ValueError("a sanitized text reported as passing was not judged safe as changed")
    return {"prompt": verdict.prompt, "text": edit.text if edit.passes else None, "removed": list(edit.removed),
            "passes": edit.passes, "rounds": edit.rounds,
            "reason": None if edit.passes else getattr(edit, "reason", None) or "no edit passes",
            "before": validate_result(verdict, explain),
            "after": validate_result(edit.after, explain)}


def validate_result(verdict: Verdict, explain: bool) -> dict:
    """The native form of one verdict (:meth:`Verdict.to_dict`; ``evidence`` only when asked for)."""
    out = verdict.to_dict()
    if not explain:
        out.pop("evidence", None)
    return out
