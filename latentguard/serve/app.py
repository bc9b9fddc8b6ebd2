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

import hmac
import signal
import time
import uuid
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from ..errors import LatentGuardError
from .audit import AuditError
from .batcher import Closed, QueueFull
from .protocol import Limits, RequestError, check_result, decode_body, moderation_result, parse_check, parse_moderation
from .server import GuardServer, log

ENDPOINTS = ("/v1/moderations", "/v1/check", "/v1/blacklist", "/admin/reload", "/healthz", "/readyz", "/metrics")
ERROR_KINDS = {400: "bad_request", 401: "unauthorized", 403: "forbidden", 413: "too_large", 503: "not_ready"}
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

    app = FastAPI(title="Latent Guard", summary="Moderation for text-to-image prompts (OpenAI moderation API)",
                  lifespan=lifespan)

    app.add_middleware(_Counted, metrics=metrics)

    @app.exception_handler(RequestError)
    async def refused(request: Request, exc: RequestError):
        metrics.errors.labels(exc.code if exc.status >= 500 else ERROR_KINDS.get(exc.status, "bad_request")).inc()
        return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)

    def authorize(request: Request, keys: frozenset[str], what: str) -> None:
        if not keys:
            return
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise RequestError(401, f"missing API key: send 'Authorization: Bearer <{what}>'", code="missing_api_key",
                               headers={"WWW-Authenticate": "Bearer"})
        if not any(hmac.compare_digest(token.encode(), key.encode()) for key in keys):
            raise RequestError(401, f"wrong {what}", code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"})

    async def body_of(request: Request) -> dict:
        declared = request.headers.get("content-length")
        cap = settings.max_body_bytes
        too_big = RequestError(413, f"the request body is over {cap:,} bytes (--max-inputs x --max-chars)",
                               code="body_too_large")
        if declared is not None and declared.isdigit() and int(declared) > cap:
            raise too_big
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > cap:
                raise too_big
            chunks.append(chunk)
        return decode_body(b"".join(chunks))

    async def judge(prompts: list[str], explain: bool, endpoint: str):
        if not server.ready:
            raise RequestError(503, "the guard is not ready", code="not_ready", headers={"Retry-After": RETRY_AFTER_S})
        request_id = "modr-" + uuid.uuid4().hex
        try:
            future = server.submit(prompts, explain=explain, request_id=request_id, endpoint=endpoint)
        except QueueFull as exc:
            raise RequestError(503, f"overloaded: {exc}; retry later", code="queue_full",
                               headers={"Retry-After": RETRY_AFTER_S}) from None
        except Closed as exc:
            raise RequestError(503, str(exc), code="not_ready", headers={"Retry-After": RETRY_AFTER_S}) from None
        try:
            state, verdicts = await future
        except AuditError as exc:
            raise RequestError(500, f"audit failed, nothing was judged: {exc}", code="audit") from None
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
        request_id, state, verdicts = await judge(prompts, False, "/v1/moderations")
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
        request_id, state, verdicts = await judge(prompts, explain, "/v1/check")
        return JSONResponse({"id": request_id, "model": state.model, "generation": state.generation,
                             "verdicts": [check_result(v, explain) for v in verdicts]},
                            headers={"X-Request-ID": request_id})

    @app.get("/healthz")
    async def healthz():
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz():
        if not server.ready:
            return JSONResponse({"status": "not ready", "reason": "loading" if server.state is None else "stopped"},
                                status_code=503)
        return {"status": "ready", **server.state.describe(), "concepts": len(server.state.guard.concepts),
                "categories": list(server.state.guard.categories), "queue_depth": server.batcher.depth,
                "last_reload": server.last_reload}

    @app.get("/metrics")
    async def prometheus():
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
        except LatentGuardError as exc:
            return JSONResponse({"error": {"message": f"reload failed, still serving generation "
                                           f"{server.state.generation}: {exc}", "type": "invalid_request_error",
                                           "param": None, "code": "reload_failed"}}, status_code=422)
        return {"status": "reloaded", **state.describe(), "concepts": len(state.guard.concepts),
                "categories": list(state.guard.categories)}

    return app


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
