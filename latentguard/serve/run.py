"""Running the app with uvicorn: bind, serve, and on SIGTERM stop accepting, drain, exit 0.

The listening socket is bound first (:func:`listen`), before the model loads, so an address in use
is one ``error:`` line and exit 2 at once, not uvicorn's message after a load of seconds or minutes
(a hostile review); uvicorn then serves on that socket.

uvicorn handles SIGTERM and SIGINT itself: it stops accepting connections, waits for the requests
in flight (each of which waits for its batch) for at most ``shutdown_timeout_s``, cancels what is
left, then runs the app's shutdown, which scores anything still queued. After that, uvicorn
re-raises the signal to the handler it found; the handler installed here only notes it, so a
drained server exits 0 instead of dying by the signal. Connections run under
:mod:`latentguard.serve.connections` (a head timeout, a write timeout, and a cap below the
file-descriptor limit), so idle sockets and clients that never read cannot lock clients out.
"""
from __future__ import annotations

import signal
import socket
from typing import Any

from ..errors import LatentGuardError
from .settings import ServeSettings


def listen(settings: ServeSettings) -> socket.socket:
    """A socket bound to ``settings.host:port`` (uvicorn's own way: IPv6 when the host has a colon, address
    reuse on); an address that cannot be bound raises :class:`LatentGuardError` naming it."""
    host = settings.host.strip("[]")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, settings.port))
    except OSError as exc:
        sock.close()
        where = f"[{host}]:{settings.port}" if family == socket.AF_INET6 else f"{host}:{settings.port}"
        raise LatentGuardError(f"cannot listen on {where}: {exc.strerror or exc} (--host, --port)") from None
    sock.set_inheritable(True)
    return sock


def _error_counter(app: Any) -> Any:
    """A callback counting answers the connection layer gives (a 431) in the app's error metrics, if it has any."""
    server = getattr(getattr(app, "state", None), "server", None)
    metrics = getattr(server, "metrics", None)
    if metrics is None:
        return None
    return lambda kind: metrics.errors.labels(kind).inc()


def run_server(app: Any, settings: ServeSettings, *, log_level: str = "info", access_log: bool = False,
               sock: socket.socket | None = None) -> int:
    """Serve ``app`` on ``sock`` (bound by :func:`listen` when not given) until SIGTERM/SIGINT: 0 after a clean
    drain, 1 if it never started."""
    import uvicorn
    from uvicorn.protocols.http.auto import AutoHTTPProtocol

    from .connections import connection_cap, guarded_protocol

    sock = sock if sock is not None else listen(settings)
    protocol = guarded_protocol(AutoHTTPProtocol, header_timeout_s=settings.header_timeout_s,
                                max_connections=connection_cap(), write_timeout_s=settings.write_timeout_s,
                                on_refused=_error_counter(app))
    config = uvicorn.Config(app, log_level=log_level, access_log=access_log, lifespan="on", server_header=False,
                            http=protocol, timeout_graceful_shutdown=settings.shutdown_timeout_s)
    server = uvicorn.Server(config)
    stopped: list[int] = []
    previous = {sig: signal.signal(sig, lambda number, frame: stopped.append(number))
                for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        server.run(sockets=[sock])
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        sock.close()
    return 0 if server.started else 1
