"""The HTTP face of a :class:`GuardServer`: FastAPI routes, bearer keys, errors, metrics, SIGHUP.

=======================  =====================================================================
``POST /v1/moderations`` OpenAI's moderation shape (the official ``openai`` client parses it)
``POST /v1/check``       the native form: ``Verdict.to_dict()`` per prompt, ``explain`` for evidence
``GET /healthz``         the process answers
``GET /readyz``          weights loaded, blacklist encoded, batcher running (503 otherwise)
``GET /metrics``         Prometheus text
``GET /v1/blacklist``    concepts, categories, thresholds (behind the API key when one is set)
``POST /admin/reload``   re-read the blacklist and threshold files and swap (admin key); SIGHUP too
=======================  =====================================================================
"""
from __future__ import annotations

import asyncio
import hmac
import re
import signal
import time
import uuid
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect

from ..errors import LatentGuardError, UnreadableTextError
from .audit import AuditError
from .batcher import Closed, QueueFull
from .protocol import Limits, RequestError, check_result, decode_body, moderation_result, parse_check, parse_moderation
from .server import GuardServer, log
from .settings import is_loopback

ENDPOINTS = ("/v1/moderations", "/v1/check", "/v1/blacklist", "/admin/reload", "/healthz", "/readyz", "/metrics")
ERROR_KINDS = {400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found", 405: "bad_method",
               408: "body_timeout", 413: "too_large", 421: "wrong_host", 499: "client_closed", 503: "not_ready"}
RETRY_AFTER_S = "1"


def create_app(server: GuardServer) -> FastAPI:
    """The FastAPI app serving ``server`` (whose first state is built by ``server.load()``, or at startup)."""
    settings = server.settings
    limits = Limits(settings.max_inputs, settings.max_chars)
    metrics = server.metrics

    @asynccontextmanager
    async def lifespan(app):
        if server.state is None:  # built here when the caller did not load it first
            server.load()
        server.start()
        _on_sighup(server)
        try:
            yield
        finally:
            await server.stop()

    keyed = bool(settings.api_keys or settings.admin_keys)
    docs = {} if not keyed else {"docs_url": None, "redoc_url": None, "openapi_url": None}  # no map for strangers
    app = FastAPI(title="Latent Guard", summary="Moderation for text-to-image prompts (OpenAI moderation API)",
                  lifespan=lifespan, redirect_slashes=False, **docs)

    if not settings.api_keys and is_loopback(settings.host):  # (--insecure on a public address: as asked)
        app.add_middleware(_LocalOnly)
    app.add_middleware(_InFlight, limit=settings.max_in_flight)
    app.add_middleware(_Counted, metrics=metrics)

    @app.exception_handler(RequestError)
    async def refused(request: Request, exc: RequestError):
        metrics.errors.labels(exc.code if exc.status >= 500 else ERROR_KINDS.get(exc.status, "bad_request")).inc()
        return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)

    @app.exception_handler(HTTPException)
    async def routing(request: Request, exc: HTTPException):  # 404 and 405 in the same error shape
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        message = (f"no endpoint {request.url.path}; see {', '.join(ENDPOINTS)}" if exc.status_code == 404
                   else f"{request.method} is not allowed on {request.url.path}" if exc.status_code == 405
                   else str(exc.detail))
        return await refused(request, RequestError(exc.status_code, message, code=code, headers=exc.headers))

    def has_key(request: Request) -> bool:
        """Whether the request carries any configured key (API or admin): what the details are shown to."""
        token = _bearer(request)
        return bool(token) and _matches(token, settings.api_keys | settings.admin_keys)

    def authorize(request: Request, keys: frozenset[str], what: str) -> None:
        if not keys:
            return
        token = _bearer(request)
        if not token:
            raise RequestError(401, f"missing API key: send 'Authorization: Bearer <{what}>'", code="missing_api_key",
                               headers={"WWW-Authenticate": "Bearer"})
        if not _matches(token, keys):
            raise RequestError(401, f"wrong {what}", code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"})

    async def body_of(request: Request) -> dict:
        declared = request.headers.get("content-length")
        cap = settings.max_body_bytes
        too_big = RequestError(413, f"the request body is over {cap:,} bytes (--max-inputs x --max-chars)",
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
        return decode_body(raw)

    async def costs(prompts: list[str], where: str) -> int:
        """The texts the encoder will read for ``prompts`` (queued as the request's cost); a prompt of more
        sentences than ``--max-sentences`` is a 413 (each sentence is scored on its own)."""
        counts = await asyncio.get_running_loop().run_in_executor(None, server.texts_to_encode, prompts)
        for i, (n, _) in enumerate(counts):
            if n > settings.max_sentences:
                field = f"{where}[{i}]"
                raise RequestError(413, f"{field} has {n:,} sentences; this server takes at most "
                                   f"{settings.max_sentences:,} per prompt (--max-sentences)", param=field,
                                   code="too_many_sentences")
        return sum(f for _, f in counts)

    async def judge(prompts: list[str], explain: bool, endpoint: str, field: str):
        if not server.ready:
            raise RequestError(503, "the guard is not ready", code="not_ready", headers={"Retry-After": RETRY_AFTER_S})
        cost = await costs(prompts, field)
        if cost > settings.queue_size:
            raise RequestError(413, f"{field} makes {cost:,} texts to encode (prompts, their normalised forms and "
                               f"sentences); this server queues at most {settings.queue_size:,} (--queue-size)",
                               param=field, code="too_many_texts")
        request_id = "modr-" + uuid.uuid4().hex
        try:
            future = server.submit(prompts, explain=explain, request_id=request_id, endpoint=endpoint, cost=cost)
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
        metrics.prompts.labels(endpoint).inc(len(prompts))
        return request_id, state, verdicts

    @app.post("/v1/moderations")
    async def moderations(request: Request):
        authorize(request, settings.api_keys, "API key")
        inputs = parse_moderation(await body_of(request), limits)
        prompts = [text for parts in inputs for text in parts]
        request_id, state, verdicts = await judge(prompts, False, "/v1/moderations", "input")
        results, start = [], 0
        try:
            for parts in inputs:
                results.append(moderation_result(verdicts[start : start + len(parts)], state.guard.slope))
                start += len(parts)
        except (ValueError, KeyError) as exc:
            raise RequestError(500, f"scoring gave an incomplete verdict: {exc}", code="scoring") from None
        return JSONResponse({"id": request_id, "model": state.model, "results": results},
                            headers={"X-Request-ID": request_id})

    @app.post("/v1/check")
    async def check(request: Request):
        authorize(request, settings.api_keys, "API key")
        prompts, explain = parse_check(await body_of(request), limits)
        request_id, state, verdicts = await judge(prompts, explain, "/v1/check", "prompts")
        return JSONResponse({"id": request_id, "model": state.model, "generation": state.generation,
                             "verdicts": [check_result(v, explain) for v in verdicts]},
                            headers={"X-Request-ID": request_id})

    @app.api_route("/healthz", methods=["GET", "HEAD"])
    async def healthz():
        return {"status": "ok"}

    @app.api_route("/readyz", methods=["GET", "HEAD"])
    async def readyz(request: Request):
        if not server.ready:
            return JSONResponse({"status": "not ready", "reason": "loading" if server.state is None else "stopped"},
                                status_code=503)
        if keyed and not has_key(request):  # probes see the state; the files, threshold and errors need a key
            return {"status": "ready", "generation": server.state.generation}
        return {"status": "ready", **server.state.describe(), "concepts": len(server.state.guard.concepts),
                "categories": list(server.state.guard.categories), "queue_depth": server.batcher.depth,
                "last_reload": server.last_reload}

    @app.get("/metrics")
    async def prometheus(request: Request):
        if keyed and not has_key(request):  # flag counts per category tell what is being asked
            raise RequestError(401, "missing API key: /metrics needs 'Authorization: Bearer <API or admin key>' "
                               "(Prometheus: authorization.credentials_file)", code="missing_api_key",
                               headers={"WWW-Authenticate": "Bearer"})
        body, content_type = metrics.render()
        return Response(body, media_type=content_type)

    @app.get("/v1/blacklist")
    async def blacklist(request: Request):
        authorize(request, settings.api_keys, "API key")
        if server.state is None:
            raise RequestError(503, "the guard is not ready", code="not_ready", headers={"Retry-After": RETRY_AFTER_S})
        return server.state.blacklist()

    @app.post("/admin/reload")
    async def reload(request: Request):
        if settings.admin_keys:
            authorize(request, settings.admin_keys, "admin key")
        elif settings.api_keys:
            raise RequestError(403, "reloading over HTTP needs --admin-key-file; send SIGHUP to the server instead",
                               code="admin_disabled")
        if not server.ready:
            raise RequestError(503, "the guard is not ready", code="not_ready", headers={"Retry-After": RETRY_AFTER_S})
        try:
            state = await server.reload("POST /admin/reload")
        except LatentGuardError as exc:  # the server's own files are at fault, not the request: a 5xx
            metrics.errors.labels("reload_failed").inc()
            return JSONResponse({"error": {"message": f"reload failed, still serving generation "
                                           f"{server.state.generation}: {exc}", "type": "server_error",
                                           "param": None, "code": "reload_failed"}}, status_code=500)
        return {"status": "reloaded", **state.describe(), "concepts": len(state.guard.concepts),
                "categories": list(state.guard.categories)}

    return app


def _bearer(request: Request) -> str:
    """The token of an ``Authorization: Bearer TOKEN`` header ("" when there is none)."""
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    return token.strip() if scheme.lower() == "bearer" else ""


def _matches(token: str, keys: frozenset[str]) -> bool:
    """Whether ``token`` is one of ``keys``, compared in constant time."""
    return any(hmac.compare_digest(token.encode(), key.encode()) for key in keys)


class _InFlight:
    """At most ``limit`` requests being received or answered at once (each may hold a body of up to the
    cap); one more is a 503 with ``Retry-After``. Counted per request, so idle connections take no slot."""

    def __init__(self, app, limit: int) -> None:
        self.app, self.limit, self.active = app, limit, 0

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        if self.active >= self.limit:
            busy = RequestError(503, f"{self.active} requests are in flight (--max-in-flight {self.limit}); retry "
                                "later", code="too_many_requests", headers={"Retry-After": RETRY_AFTER_S})
            return await JSONResponse(busy.body(), status_code=503, headers=busy.headers)(scope, receive, send)
        self.active += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.active -= 1


class _LocalOnly:
    """Without an API key the server trusts its loopback binding, so it answers only what comes from this
    machine's own programs: a ``Host`` other than a loopback name (DNS rebinding: a web page's name pointed
    at 127.0.0.1) is a 421, and a browser's cross-site request (an ``Origin`` that is not loopback) a 403."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        pairs = [(k.decode("latin-1").lower(), v.decode("latin-1")) for k, v in scope.get("headers", [])]
        hosts, origins = [v for k, v in pairs if k == "host"], [v for k, v in pairs if k == "origin"]
        host, origin = (hosts or [""])[0], (origins or [None])[0]
        refusal = None
        if len(hosts) != 1 or len(origins) > 1 or not is_loopback(_hostname(host)):
            refusal = RequestError(421, f"Host {host!r} is not this machine: without --api-key-file the server "
                                   "answers only loopback names (give a key to serve other names)", code="wrong_host")
        elif origin is not None and not is_loopback(_hostname(origin.partition("://")[2] if "://" in origin else "")):
            refusal = RequestError(403, f"a browser request from {origin} is refused: without --api-key-file the "
                                   "server answers only programs on this machine", code="cross_origin")
        if refusal is None:
            return await self.app(scope, receive, send)
        response = JSONResponse(refusal.body(), status_code=refusal.status, headers={"Connection": "close"})
        await response(scope, receive, send)


_AUTHORITY = re.compile(r"^(?:\[(?P<v6>[0-9A-Fa-f:.]+)\]|(?P<name>[A-Za-z0-9.-]+))(?::\d{1,5})?$")


def _hostname(authority: str) -> str:
    """``host[:port]`` or ``[v6][:port]`` -> the host; anything else (``a:1@b``, ``[::1]x``) -> ``""``."""
    match = _AUTHORITY.match(authority)
    return (match.group("v6") or match.group("name")) if match else ""


class _Counted:
    """ASGI middleware counting every answer by endpoint and status, and timing it (no per-request task)."""

    def __init__(self, app, metrics) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started, status = time.perf_counter(), [500]

        async def sending(message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            endpoint = scope["path"] if scope["path"] in ENDPOINTS else "other"
            self.metrics.requests.labels(endpoint, str(status[0])).inc()
            self.metrics.latency.labels(endpoint).observe(time.perf_counter() - started)


def _on_sighup(server: GuardServer) -> None:
    """SIGHUP reloads, as POST /admin/reload does (only where signals can be handled: the main thread's loop)."""
    import asyncio

    if not hasattr(signal, "SIGHUP"):
        return

    async def reload() -> None:
        try:
            await server.reload("SIGHUP")
        except LatentGuardError:
            pass  # logged, counted, old state kept

    loop = asyncio.get_running_loop()
    try:
        loop.add_signal_handler(signal.SIGHUP, lambda: loop.create_task(reload()))
    except (NotImplementedError, RuntimeError, ValueError):  # not the main thread (an in-process test client)
        pass
