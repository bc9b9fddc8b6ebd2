"""The HTTP face of a :class:`GuardServer`: the FastAPI app, its middleware, errors and SIGHUP.

=======================  =====================================================================
``POST /v1/moderations`` OpenAI's moderation shape (the official ``openai`` client parses it)
``POST /v1/check``       the native form: ``Verdict.to_dict()`` per prompt, ``explain`` for evidence
``POST /v1/sanitize``    ``/v1/check``'s request; per prompt the sanitized text, removed words, ``passes``
``GET /healthz``         the process answers
``GET /readyz``          weights loaded, blacklist encoded, batcher running (503 otherwise)
``GET /metrics``         Prometheus text
``GET /v1/blacklist``    concepts, categories, thresholds (behind the API key when one is set)
``POST /admin/reload``   re-read the blacklist and threshold files and swap (admin key); SIGHUP too
=======================  =====================================================================

The routes and their key check are in :mod:`latentguard.serve.routes` (where an endpoint is added);
the endpoints listed in a 404 and counted in ``/metrics`` are read from the app's routes.
"""
from __future__ import annotations

import asyncio
import re
import signal
import time
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from ..errors import LatentGuardError
from .connections import GONE, TARGET
from .protocol import RequestError
from .routes import RETRY_AFTER_S, ROUTERS, SLOT
from .server import GuardServer, log
from .settings import is_loopback

ERROR_KINDS = {400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found", 405: "bad_method",
               408: "body_timeout", 413: "too_large", 421: "wrong_host", 499: "client_closed", 503: "not_ready"}
ERROR_KIND = "latentguard.error_kind"  # scope key: the kind an error response is counted as


def create_app(server: GuardServer) -> FastAPI:
    """The FastAPI app serving ``server`` (whose first state is built by ``server.load()``, or at startup)."""
    settings = server.settings

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
    # No pages ever: /docs and /redoc load their scripts from a CDN, which would then run with this server's
    # origin (a hostile pass); the machine-readable map stays for a keyless (loopback) server, none for strangers.
    docs = {"docs_url": None, "redoc_url": None, **({"openapi_url": None} if keyed else {})}
    app = FastAPI(title="Latent Guard", summary="Moderation for text-to-image prompts (OpenAI moderation API)",
                  lifespan=lifespan, redirect_slashes=False, **docs)
    app.state.server, app.state.routers = server, ROUTERS
    for router in ROUTERS:
        app.include_router(router)
    if not settings.api_keys and is_loopback(settings.host):  # (--insecure on a public address: as asked)
        app.add_middleware(_LocalOnly)
    posted = frozenset(route.path for router in ROUTERS for route in router.routes
                       if "POST" in (getattr(route, "methods", None) or ()))
    app.add_middleware(_InFlight, limit=settings.max_in_flight, paths=posted)
    app.add_middleware(_Counted, metrics=server.metrics)
    app.add_exception_handler(RequestError, _refused)
    app.add_exception_handler(HTTPException, _routing)
    return app


def endpoints(app) -> list[str]:
    """The paths the app serves, read from its routers when asked (so a new route is listed and counted
    without being named anywhere else)."""
    return [route.path for router in app.state.routers for route in router.routes if hasattr(route, "path")]


def error_response(scope, error: RequestError) -> JSONResponse:
    """The JSON answer to ``error``, its kind noted for the metrics (counted once, in :class:`_Counted`)."""
    scope[ERROR_KIND] = error.code if error.status >= 500 else ERROR_KINDS.get(error.status, "bad_request")
    return JSONResponse(error.body(), status_code=error.status, headers=error.headers)


async def _refused(request: Request, exc: RequestError) -> JSONResponse:
    return error_response(request.scope, exc)


async def _routing(request: Request, exc: HTTPException) -> JSONResponse:
    """404 and 405 in the same error shape as every other refusal."""
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
    path = _shown(request.url.path)
    message = (f"no endpoint {path}; see {', '.join(endpoints(request.app))}" if exc.status_code == 404
               else f"{request.method} is not allowed on {path}" if exc.status_code == 405
               else str(exc.detail))
    return error_response(request.scope, RequestError(exc.status_code, message, code=code, headers=exc.headers))


SHOWN_PATH = 100  # characters of a path named in a 404 or 405


def _shown(path: str) -> str:
    """The path as named in an answer: its start only, so an answer never repeats a long path (a 60 KB path's 404
    had repeated it whole, filling the send buffer of a client that never read: a hostile review)."""
    return path if len(path) <= SHOWN_PATH else f"{path[:SHOWN_PATH]}... ({len(path):,} characters)"


class _InFlight:
    """At most ``limit`` requests that bring work (a POST whose body has arrived: prompts to judge) being judged at
    once; one more is a 503 with ``Retry-After`` (:func:`~latentguard.serve.routes.body_of` answers it, reading
    :data:`SLOT` from the scope). A slot is taken when the last byte of the body arrives, not when the head does: a
    key holder who sent 128 heads and one body byte each had held every slot for the body timeout, and every other
    client, keyed or not, got 503 (a twenty-fourth hostile pass). A slot is given back as soon as the answer starts:
    writing it is the connection's business (bounded by the write timeout of :mod:`latentguard.serve.connections`),
    not the model's. Answers that need no work (probes, ``/metrics``, a 404) take no slot. A client that pipelined
    requests and never read the 404s had held every slot for as long as it kept its sockets open (a hostile
    review). Idle connections and bodies still arriving take no slot (the connection cap and ``--body-timeout-s``
    bound them)."""

    def __init__(self, app, limit: int, paths: frozenset[str]) -> None:
        self.app, self.limit, self.paths, self.active = app, limit, paths, 0
        # Bodies still arriving: at most four times ``limit`` in all and an eighth of that per client address (half
        # of ``limit``: a burst of 48 from one client is common, and a quarter of ``limit`` refused it), so memory
        # holds a bounded number of bodies, one client's unfinished ones cannot fill the connection cap (held
        # bodies had locked every client out, probes too, and grown the server by 2.85 MB each, never given back:
        # a twenty-sixth hostile pass), and no fewer than eight addresses reach the total (two, each at ``limit``
        # of twice ``limit``, had locked every other client out of every POST: a hostile review). Behind a proxy
        # every client has its address: put the proxy's cap there.
        self.receiving: dict[str, int] = {}
        self.total = 4 * limit
        self.per_client = max(1, self.total // 8)

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or scope.get("method") != "POST" or scope["path"] not in self.paths:
            return await self.app(scope, receive, send)
        client = str((scope.get("client") or ("?", 0))[0])
        mine, everyone = self.receiving.get(client, 0) >= self.per_client, sum(self.receiving.values()) >= self.total
        if mine or everyone:  # say which bound: this client's own, or the server's (others' bodies)
            which = (f"this client address has {self.per_client} requests still sending their bodies, the most one "
                     "address may" if mine else f"the server has {self.total} requests still sending their bodies, "
                     "the most it takes from all clients")
            busy = RequestError(503, f"{which}; retry later", code="too_many_requests",
                                headers={"Retry-After": RETRY_AFTER_S, "Connection": "close"})
            return await error_response(scope, busy)(scope, receive, send)
        self.receiving[client] = self.receiving.get(client, 0) + 1
        held, arriving = [False], [True]

        def arrived() -> None:
            if arriving[0]:
                arriving[0] = False
                self.receiving[client] -= 1
                if not self.receiving[client]:
                    del self.receiving[client]

        def give_back() -> None:
            if held[0]:
                held[0] = False
                self.active -= 1

        async def received():
            message = await receive()
            if message["type"] == "http.disconnect" or not message.get("more_body", False):
                arrived()
            if message["type"] == "http.request" and not message.get("more_body", False) and SLOT not in scope:
                scope[SLOT] = self.active < self.limit  # False: body_of answers 503
                if scope[SLOT]:
                    self.active += 1
                    held[0] = True
            return message

        async def answering(message) -> None:
            if message["type"] == "http.response.start":
                give_back()
            await send(message)

        try:
            await self.app(scope, received, answering)
        finally:
            arrived()
            give_back()


class _LocalOnly:
    """Without an API key the server trusts its loopback binding, so it answers only what comes from this
    machine's own programs: a ``Host`` other than a loopback name (DNS rebinding: a web page's name pointed
    at 127.0.0.1) is a 421, and a browser's request from any other origin (another port on loopback too) a 403.
    A target in absolute form (``POST http://evil.com/v1/check``) names the host the request is for (RFC 9112
    3.2.2: it overrides ``Host``), so its authority must be this same loopback name too, else a 421 (the check
    had read the ``Host`` header alone and answered such a request: a hostile review)."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        pairs = [(k.decode("latin-1").lower(), v.decode("latin-1")) for k, v in scope.get("headers", [])]
        hosts, origins = [v for k, v in pairs if k == "host"], [v for k, v in pairs if k == "origin"]
        host, origin = (hosts or [""])[0], (origins or [None])[0]
        refusal, target = None, _absolute_authority(scope)
        if target is not None and (target.lower() != host.lower() or not is_loopback(_hostname(target))):
            refusal = RequestError(421, f"the request target names {target!r}, which is not this machine's "
                                   f"{host!r}: without --api-key-file the server answers only loopback names",
                                   code="wrong_host")
        elif len(hosts) != 1 or len(origins) > 1 or not is_loopback(_hostname(host)):
            refusal = RequestError(421, f"Host {host!r} is not this machine: without --api-key-file the server "
                                   "answers only loopback names (give a key to serve other names)", code="wrong_host")
        elif origin is not None and (origin.partition("://")[2] if "://" in origin else "").lower() != host.lower():
            # any page but one this very address served, a local one on another port too ("http://localhost:3000"
            # had reloaded the server: a hostile pass); the server serves no pages, so no browser request passes
            refusal = RequestError(403, f"a browser request from {origin} is refused: without --api-key-file the "
                                   "server answers only programs on this machine", code="cross_origin")
        if refusal is None:
            return await self.app(scope, receive, send)
        refusal.headers["Connection"] = "close"
        await error_response(scope, refusal)(scope, receive, send)


def _absolute_authority(scope) -> str | None:
    """The authority of an absolute-form request target (``http://HOST:PORT/path``), ``""`` for any other target
    that is not a path (``*``, ``evil.com/x``), None for an ordinary one (``/path``). The target is read as
    sent where the protocol keeps it (:data:`~latentguard.serve.connections.TARGET`), else from ``raw_path``
    (h11 leaves an absolute target there whole)."""
    target = scope.get(TARGET) or scope.get("raw_path") or b"/"
    text = target.decode("latin-1") if isinstance(target, bytes) else str(target)
    if text.startswith("/"):
        return None
    scheme, sep, rest = text.partition("://")
    if not sep or scheme.lower() not in ("http", "https"):
        return ""
    return re.split(r"[/?#]", rest, maxsplit=1)[0]


_AUTHORITY = re.compile(r"^(?:\[(?P<v6>[0-9A-Fa-f:.]+)\]|(?P<name>[A-Za-z0-9.-]+))(?::\d{1,5})?$")


def _hostname(authority: str) -> str:
    """``host[:port]`` or ``[v6][:port]`` -> the host; anything else (``a:1@b``, ``[::1]x``) -> ``""``."""
    match = _AUTHORITY.match(authority)
    return (match.group("v6") or match.group("name")) if match else ""


class _Counted:
    """ASGI middleware counting every answer by endpoint and status, every error status (4xx, 5xx) by kind,
    and timing it (no per-request task). The endpoint is the path of a route (``other`` for any other path)."""

    def __init__(self, app, metrics) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started, status, answered = time.perf_counter(), [500], [False]

        async def sending(message) -> None:
            if scope.get(GONE, bool)():  # the client left: nothing to write to (a write raised, and logged a traceback)
                status[0], answered[0] = 499, True
                return
            if message["type"] == "http.response.start":
                status[0], answered[0] = message["status"], True
            await send(message)

        try:
            await self.app(scope, receive, sending)
        except asyncio.CancelledError:  # SIGTERM's bound (--shutdown-timeout-s) passed: one line, not a traceback
            log.warning("%s %s cancelled: not answered within --shutdown-timeout-s of SIGTERM", scope.get("method"),
                        scope["path"])
            if not answered[0]:  # nothing answered yet: say why (else the answer already begun is cut off)
                stopping = RequestError(503, "the server is stopping and this request was not answered in time; "
                                        "retry", code="shutting_down", headers={"Connection": "close",
                                                                                "Retry-After": RETRY_AFTER_S})
                await error_response(scope, stopping)(scope, receive, sending)
        finally:
            app = scope.get("app")
            endpoint = scope["path"] if app is not None and scope["path"] in endpoints(app) else "other"
            self.metrics.requests.labels(endpoint, str(status[0])).inc()
            if status[0] >= 400:
                kind = scope.get(ERROR_KIND) or ERROR_KINDS.get(status[0], "internal" if status[0] >= 500 else
                                                                "bad_request")
                self.metrics.errors.labels(kind).inc()
            self.metrics.latency.labels(endpoint).observe(time.perf_counter() - started)


def _on_sighup(server: GuardServer) -> None:
    """SIGHUP reloads, as POST /admin/reload does (only where signals can be handled: the main thread's loop)."""
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
