"""Running the app with uvicorn: bind, serve, and on SIGTERM stop accepting, drain, exit 0.

uvicorn handles SIGTERM and SIGINT itself: it stops accepting connections, waits for the requests
in flight (each of which waits for its batch), then runs the app's shutdown, which scores anything
still queued. After that, uvicorn re-raises the signal to the handler it found; the handler
installed here only notes it, so a drained server exits 0 instead of dying by the signal.
Connections run under :mod:`latentguard.serve.connections` (a head timeout and a cap below the
file-descriptor limit), so idle sockets cannot lock clients out.
"""
from __future__ import annotations

import signal
from typing import Any

from .settings import ServeSettings


def run_server(app: Any, settings: ServeSettings, *, log_level: str = "info", access_log: bool = False) -> int:
    """Serve ``app`` on ``settings.host:port`` until SIGTERM/SIGINT: 0 after a clean drain, 1 if it never started."""
    import uvicorn
    from uvicorn.protocols.http.auto import AutoHTTPProtocol

    from .connections import connection_cap, guarded_protocol

    protocol = guarded_protocol(AutoHTTPProtocol, header_timeout_s=settings.header_timeout_s,
                                max_connections=connection_cap())
    config = uvicorn.Config(app, host=settings.host, port=settings.port, log_level=log_level, access_log=access_log,
                            lifespan="on", server_header=False, http=protocol)
    server = uvicorn.Server(config)
    stopped: list[int] = []
    previous = {sig: signal.signal(sig, lambda number, frame: stopped.append(number))
                for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        server.run()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0 if server.started else 1
