"""The server's routes, on routers whose key check is a router dependency, so a route added to a router
is protected as its neighbours are, by construction:

=======================  =====================================================================
``api``                  the API key (when one is set): ``POST /v1/moderations``, ``POST /v1/check``,
                         ``POST /v1/sanitize``, ``GET /v1/blacklist``
``admin``                the admin key: ``POST /admin/reload`` (SIGHUP too)
``monitoring``           any configured key (API or admin): ``GET /metrics``
``probes``               no key: ``GET /healthz``, ``GET /readyz`` (details only with a key)
=======================  =====================================================================

**To add an endpoint**: define it on the router whose key it needs (``@api.post("/v1/NAME")``); the
app includes every router here, so it is protected, listed in the 404 text, and counted under its
own path in ``/metrics``. A scoring endpoint reads its body with :func:`body_of` and judges through
:func:`judge` (the request's limits, cost, queue and audit, and its sentences split once).
"""
from __future__ import annotations

import asyncio
import functools
import hmac
import time
import uuid

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response
from starlette.requests import ClientDisconnect

from ..errors import LatentGuardError, UnreadableTextError
from ..guard.forms import form_cost
from ..guard.sanitize import DEFAULT_BUDGET
from .audit import AuditError, VerdictEvent
from .batcher import Closed, QueueFull
from .protocol import (
    Limits,
    RequestError,
    decode_body,
    moderation_result,
    parse_check,
    parse_moderation,
    sanitize_result,
    validate_result,
)
from .server import GuardServer, OverLimit, log

# A request of at most this many characters in all (a few prompts) is split on the default executor at once;
# a longer one on the server's split thread, one at a time.
SHORT_REQUEST_CHARS = 4000

RETRY_AFTER_S = "1"


def served(request: Request) -> GuardServer:
    """The :class:`GuardServer` behind the app that received ``request``."""
    return request.app.state.server


class KeyCheck:
    """The one key check, a dependency of every protected router: ``api`` needs an API key, ``admin`` an
    admin key (with API keys but none for admin, reloading over HTTP is off: 403), ``any`` either kind.
    A check whose keys are not configured lets every request through (a keyless server binds loopback
    only, and its middleware refuses foreign names and origins)."""

    MISSING = {"api": "API key", "admin": "admin key", "any": "API or admin key"}

    def __init__(self, kind: str) -> None:
        self.kind = kind

    def keys(self, server: GuardServer) -> frozenset[str]:
        s = server.settings
        return {"api": s.api_keys, "admin": s.admin_keys, "any": s.api_keys | s.admin_keys}[self.kind]

    async def __call__(self, request: Request) -> None:
        server = served(request)
        keys, what = self.keys(server), self.MISSING[self.kind]
        if not keys:
            if self.kind == "admin" and server.settings.api_keys:
                raise RequestError(403, "reloading over HTTP needs --admin-key-file; send SIGHUP to the server "
                                   "instead", code="admin_disabled")
            return
        if len(request.headers.getlist("authorization")) > 1:  # a proxy may check one and log or pass the other
            raise RequestError(400, "the request has more than one Authorization header; send one",
                               code="duplicate_authorization")
        token = bearer(request)
        if not token:
            hint = " (Prometheus: authorization.credentials_file)" if self.kind == "any" else ""
            raise RequestError(401, f"missing API key: {request.url.path} needs 'Authorization: Bearer <{what}>'"
                               f"{hint}", code="missing_api_key", headers={"WWW-Authenticate": "Bearer"})
        if not matches(token, keys):
            raise RequestError(401, f"wrong {what}", code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"})


def bearer(request: Request) -> str:
    """The token of an ``Authorization: Bearer TOKEN`` header ("" when there is none)."""
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    return token.strip() if scheme.lower() == "bearer" else ""


def matches(token: str, keys: frozenset[str]) -> bool:
    """Whether ``token`` is one of ``keys``, compared in constant time."""
    return any(hmac.compare_digest(token.encode(), key.encode()) for key in keys)


def has_key(request: Request) -> bool:
    """Whether the request carries any configured key (API or admin): what the details are shown to."""
    s = served(request).settings
    token = bearer(request)
    return bool(token) and len(request.headers.getlist("authorization")) == 1 and matches(token,
                                                                                      s.api_keys | s.admin_keys)


api = APIRouter(dependencies=[Depends(KeyCheck("api"))])
admin = APIRouter(dependencies=[Depends(KeyCheck("admin"))])
monitoring = APIRouter(dependencies=[Depends(KeyCheck("any"))])
probes = APIRouter()
ROUTERS = (api, admin, monitoring, probes)


# ------------------------------------------------------------------------------ judging
def not_ready() -> RequestError:
    return RequestError(503, "the guard is not ready", code="not_ready", headers={"Retry-After": RETRY_AFTER_S})


# The scope key under which the in-flight cap (app._InFlight) says whether this request got a slot once its body
# arrived: False is a 503, answered here, after the body and before any work.
SLOT = "latentguard.slot"


def upgrade_asked(request: Request) -> str | None:
    """The protocol a request asks to switch to (``Upgrade`` with an ``upgrade`` token in ``Connection``: ``curl
    --http2`` over http://, an nginx websocket snippet forwarding ``$http_upgrade``), else None. uvicorn's httptools
    parser ends such a request at its head ("Unsupported upgrade request.") and drops its body, which had been
    answered "not valid JSON" (a hostile review); it is refused as what it is, whichever parser runs."""
    tokens = {t.strip().lower() for v in request.headers.getlist("connection") for t in v.split(",")}
    upgrade = ", ".join(request.headers.getlist("upgrade"))
    return upgrade if "upgrade" in tokens and upgrade else None


async def body_of(request: Request) -> dict:
    """The request's JSON object, read within ``--body-timeout-s`` and at most ``body_cap`` bytes; a 503 when no
    ``--max-in-flight`` slot was free as it arrived."""
    upgrade = upgrade_asked(request)
    if upgrade is not None:
        raise RequestError(400, f"this server does not switch protocols (the request asks 'Upgrade: {upgrade[:40]}' "
                           "with 'Connection: Upgrade'), and the HTTP layer drops the body of such a request: send "
                           "a plain HTTP/1.1 request (curl: --http1.1; a proxy: do not forward Upgrade or Connection)",
                           code="upgrade_unsupported", headers={"Connection": "close"})
    settings = served(request).settings
    declared = request.headers.get("content-length")
    cap = settings.body_cap
    too_big = RequestError(413, f"the request body is over {cap:,} bytes (--max-body-bytes, or what --max-inputs, "
                           "--max-chars and --queue-size allow)",
                           code="body_too_large")
    if declared is not None and declared.isdigit() and int(declared) > cap:
        raise too_big

    async def read() -> bytes:
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > cap:
                raise too_big
            chunks.append(chunk)
        return b"".join(chunks)

    try:
        raw = await asyncio.wait_for(read(), settings.body_timeout_s)
    except asyncio.TimeoutError:
        raise RequestError(408, f"the request body did not arrive within {settings.body_timeout_s:g} s "
                           "(--body-timeout-s)", code="body_timeout", headers={"Connection": "close"}) from None
    except ClientDisconnect:  # the client left: nothing to answer, and not a server fault
        raise RequestError(499, "the client closed the connection before its request arrived",
                           code="client_closed") from None
    if request.scope.get(SLOT) is False:
        limit = settings.max_in_flight
        raise RequestError(503, f"{limit} requests are in flight (--max-in-flight {limit}); retry later",
                           code="too_many_requests", headers={"Retry-After": RETRY_AFTER_S})
    return decode_body(raw)


def _too_costly(field: str, cost: int, queue_size: int, more: bool = False) -> RequestError:
    return RequestError(413, f"{field} makes {'more than ' if more else ''}{cost:,} texts to encode (prompts, their "
                        f"normalised forms, sentences and clauses, one per 40 characters beyond 300); this "
                        f"server queues at most {queue_size:,} (--queue-size)", param=field, code="too_many_texts")


async def judge(request: Request, prompts: list[str], explain: bool, field: str, refuse_each: bool = False,
                audit: bool = True, indices: list[int] | None = None):
    """Judge one request's prompts: split once (the sentence cap, the request's cost, and the forms the
    batch scores), queued, scored, audited. Returns ``(request_id, state, verdicts)``; every fault is a
    :class:`RequestError`, never a verdict. ``refuse_each``: a prompt the guard cannot read is one blocked
    verdict (``refused``), not a 422."""
    server, endpoint = served(request), request.url.path
    settings = server.settings
    if not server.ready:
        raise not_ready()
    budget = settings.queue_size
    floor = form_cost(prompts)  # each prompt as written is one of its forms: the least the request costs
    if floor > budget:  # refused before anything is split
        raise _too_costly(field, floor, settings.queue_size)
    # a short request is split at once; a long one waits for the split thread, never holding a short one up
    executor = None if sum(map(len, prompts)) <= SHORT_REQUEST_CHARS else server.split_thread
    try:
        split = await asyncio.get_running_loop().run_in_executor(executor, server.split, prompts, budget,
                                                                 settings.max_sentences)
    except LatentGuardError as exc:
        raise RequestError(400, str(exc), param=field, code="invalid_input") from None
    except OverLimit as over:
        if over.index is None:
            raise _too_costly(field, over.cost, settings.queue_size, more=True) from None
        raise RequestError(413, f"{field}[{over.index}] has {over.sentences:,} sentences; this server takes at most "
                           f"{settings.max_sentences:,} per prompt (--max-sentences)", param=f"{field}[{over.index}]",
                           code="too_many_sentences") from None
    if split.unreadable and not refuse_each:  # answered before it reaches a shared batch
        raise RequestError(422, f"{field}: {next(iter(split.unreadable.values()))}", param=field,
                           code="unreadable_text")
    request_id = "modr-" + uuid.uuid4().hex
    try:
        future = server.submit(prompts, explain=explain, request_id=request_id, endpoint=endpoint, cost=split.cost,
                               split=split, refuse_each=refuse_each, audit=audit, indices=indices)
    except QueueFull as exc:
        raise RequestError(503, f"overloaded: {exc}; retry later", code="queue_full",
                           headers={"Retry-After": RETRY_AFTER_S}) from None
    except Closed as exc:
        raise RequestError(503, str(exc), code="not_ready", headers={"Retry-After": RETRY_AFTER_S}) from None
    try:
        state, verdicts = await future
    except AuditError as exc:
        raise RequestError(500, f"audit failed, nothing was judged: {exc}", code="audit") from None
    except UnreadableTextError as exc:  # the request's text, not the server, is at fault: refused, not judged
        raise RequestError(422, f"{field}: {exc}", param=field, code="unreadable_text") from None
    except Exception as exc:  # any scoring fault: every prompt of the batch gets a 5xx, never "not flagged"
        log.error("scoring failed for a batch (request %s): %s: %s", request_id, type(exc).__name__, exc)
        raise RequestError(500, f"scoring failed, nothing was judged: {type(exc).__name__}: {exc}",
                           code="scoring") from None
    server.metrics.prompts.labels(endpoint).inc(len(prompts))
    return request_id, state, verdicts


def limits(request: Request) -> Limits:
    s = served(request).settings
    return Limits(s.max_inputs, s.max_chars)


# ------------------------------------------------------------------------------ the API
@api.post("/v1/moderations")
async def moderations(request: Request):
    inputs = parse_moderation(await body_of(request), limits(request))
    prompts = [text for parts in inputs for text in parts]
    indices = [k for k, parts in enumerate(inputs) for _ in parts]  # audited under the result each text answers
    request_id, state, verdicts = await judge(request, prompts, False, "input", indices=indices)
    from ..guard.options import scoring_slope

    results, start = [], 0
    try:
        for parts in inputs:
            results.append(moderation_result(verdicts[start : start + len(parts)], scoring_slope(state.guard)))
            start += len(parts)
    except (ValueError, KeyError) as exc:
        raise RequestError(500, f"scoring gave an incomplete verdict: {exc}", code="scoring") from None
    return JSONResponse({"id": request_id, "model": state.model, "results": results},
                        headers={"X-Request-ID": request_id})


@api.post("/v1/check")
async def check(request: Request):
    prompts, explain = parse_check(await body_of(request), limits(request))
    request_id, state, verdicts = await judge(request, prompts, explain, "prompts")
    return JSONResponse({"id": request_id, "model": state.model, "generation": state.generation,
                         "verdicts": [validate_result(v, explain) for v in verdicts]},
                        headers={"X-Request-ID": request_id})


# Texts a flagged prompt may cost when sanitized, in the queue's unit (form_cost): the bound guard.sanitize itself
# holds each prompt to (it refuses the prompt when the budget runs out), so what the server reserves is true. A flat
# 56 had been reserved per flagged prompt while a 10-sentence one cost 10 checks of its 55 forms (a hostile review).
SANITIZE_WORK = DEFAULT_BUDGET
# Flagged prompts sanitized per model-thread job. A request's edits run as several jobs, each awaited before the
# next is queued, so the batches of other requests (/v1/check, /v1/moderations) run between them: one large
# sanitize request delays another client by one piece (about a second on 2 CPU cores with mini), not by its
# whole run (a hostile review measured 30 s). One prompt: four of five unsafe sentences each had made a 10 s piece.
SANITIZE_PIECE = 1


@api.post("/v1/sanitize")
async def sanitize(request: Request):
    """``/v1/check``'s request, limits and errors; each flagged prompt is then edited by the serving guard
    (``guard.sanitize``, on the model thread, with the state that judged it, :data:`SANITIZE_PIECE` prompts at a
    time so other clients are answered in between). Any fault is a 5xx, never a text."""
    prompts, explain = parse_check(await body_of(request), limits(request), "/v1/sanitize")
    # with evidence always, which guard.sanitize reuses rather than judging each flagged prompt again (outside its
    # budget); recorded below, with the edits, once the answer is known (an unreadable prompt: that item does not pass)
    request_id, state, verdicts = await judge(request, prompts, True, "prompts", refuse_each=True, audit=False)
    flagged = [i for i, v in enumerate(verdicts) if v.unsafe]
    edits: list = [None] * len(prompts)
    server = served(request)
    if flagged and SANITIZE_WORK > server.settings.queue_size:  # not even one fits: the server's setting, not the
        # request, is at fault ("send fewer prompts" could never work: a hostile review), so a 5xx that says so
        raise RequestError(503, f"this server cannot sanitize a flagged prompt: each needs up to {SANITIZE_WORK} "
                           f"texts scored and --queue-size is {server.settings.queue_size:,}; the operator must "
                           f"raise --queue-size to at least {SANITIZE_WORK}", code="queue_too_small")
    if len(flagged) * SANITIZE_WORK > server.settings.queue_size:  # alone too much: a retry would not help
        raise RequestError(413, f"prompts has {len(flagged):,} flagged prompts, each sanitized with up to "
                           f"{SANITIZE_WORK} texts scored: {len(flagged) * SANITIZE_WORK:,} over --queue-size "
                           f"{server.settings.queue_size:,}; send fewer prompts per request", param="prompts",
                           code="too_many_texts")
    # No request waits for another's whole run: pieces take turns (sanitize_turn is a fair lock, first come first
    # served), so a newcomer waits one piece per request sanitizing beside it, and at most queue_size // 56 requests
    # (73 at the default) sanitize at once. Waiting prompts had been counted instead: one request of 73 flagged
    # prompts turned every other client away with 503 for 18 s, even after its sender had gone (a hostile pass).
    if flagged and server.sanitizing >= max(1, server.settings.queue_size // SANITIZE_WORK):
        raise RequestError(503, f"overloaded: {server.sanitizing:,} requests are being sanitized; retry later",
                           code="queue_full", headers={"Retry-After": RETRY_AFTER_S})
    server.sanitizing += bool(flagged)
    try:
        if flagged:
            loop, done = asyncio.get_running_loop(), []
            for start in range(0, len(flagged), SANITIZE_PIECE):  # pieces: other requests are judged in between
                piece = flagged[start : start + SANITIZE_PIECE]
                edit = functools.partial(state.guard.sanitize, [prompts[i] for i in piece],
                                         before=[verdicts[i] for i in piece])
                async with server.sanitize_turn:  # one piece on the model thread at a time, whichever request
                    if await request.is_disconnected():  # its client left (while it waited its turn, too): no more
                        raise RequestError(499, "the client closed the connection while its prompts were "
                                           "sanitized; nothing was answered", code="client_closed")
                    done += await loop.run_in_executor(server.model_thread, edit)
            if len(done) != len(flagged):
                raise ValueError(f"{len(done)} sanitized texts for {len(flagged)} flagged prompts")
            for i, edit in zip(flagged, done):
                edits[i] = edit
        results = [sanitize_result(v, edit, explain) for v, edit in zip(verdicts, edits)]
        if server.auditor.active:  # what was handed out, recorded before it is answered; a failure answers nothing
            now = time.time()
            events = [VerdictEvent(now, request_id, "/v1/sanitize", i, state.model, state.generation, v, edit)
                      for i, (v, edit) in enumerate(zip(verdicts, edits))]
            await asyncio.get_running_loop().run_in_executor(server.model_thread, server.auditor, events)
    except AuditError as exc:
        raise RequestError(500, f"audit failed, nothing was sanitized: {exc}", code="audit") from None
    except RequestError:
        raise
    except Exception as exc:  # noqa: BLE001 - any fault: a 5xx, never an unchanged unsafe text
        log.error("sanitizing failed (request %s): %s: %s", request_id, type(exc).__name__, exc)
        raise RequestError(500, f"sanitizing failed, nothing was sanitized: {type(exc).__name__}: {exc}",
                           code="sanitize") from None
    finally:
        server.sanitizing -= bool(flagged)
    return JSONResponse({"id": request_id, "model": state.model, "generation": state.generation, "results": results},
                        headers={"X-Request-ID": request_id})


@api.get("/v1/blacklist")
async def blacklist(request: Request):
    server = served(request)
    if server.state is None:
        raise not_ready()
    return server.state.blacklist()


@admin.post("/admin/reload")
async def reload(request: Request):
    server = served(request)
    if not server.ready:
        raise not_ready()
    try:
        state = await server.reload("POST /admin/reload")
    except LatentGuardError as exc:  # the server's own files are at fault, not the request: a 5xx
        raise RequestError(500, f"reload failed, still serving generation {server.state.generation}: {exc}",
                           code="reload_failed") from None
    return {"status": "reloaded", **state.describe(), "concepts": len(state.guard.concepts),
            **state.guard.options.group_listing()}


@monitoring.get("/metrics")
async def prometheus(request: Request):
    body, content_type = served(request).metrics.render()  # flag counts per category tell what is being asked
    return Response(body, media_type=content_type)


@probes.api_route("/healthz", methods=["GET", "HEAD"])
async def healthz():
    return {"status": "ok"}


@probes.api_route("/readyz", methods=["GET", "HEAD"])
async def readyz(request: Request):
    server = served(request)
    if not server.ready:
        return JSONResponse({"status": "not ready", "reason": "loading" if server.state is None else "stopped"},
                            status_code=503)
    s = server.settings
    if (s.api_keys or s.admin_keys) and not has_key(request):  # probes see the state; files and errors need a key
        return {"status": "ready", "generation": server.state.generation}
    return {"status": "ready", **server.state.describe(), "concepts": len(server.state.guard.concepts),
            **server.state.guard.options.group_listing(), "queue_depth": server.batcher.depth,
            "last_reload": server.last_reload}
