"""The moderation server: Latent Guard behind OpenAI's ``/v1/moderations`` (and a native ``/v1/check``),
batched across concurrent requests on one model thread, failing closed, observable, reloadable.

``latentguard serve`` (:mod:`latentguard.cli.serve`) builds a :class:`GuardServer` from the guard
flags and runs it with uvicorn; in Python, ``create_app(GuardServer(factory, ServeSettings()))``
gives the FastAPI app. See docs/serving.md.
"""
from __future__ import annotations

from .audit import VerdictEvent
from .settings import ServeSettings

__all__ = ["GuardServer", "ServeSettings", "VerdictEvent", "create_app", "run_server"]


def __getattr__(name: str):
    """FastAPI and uvicorn load only when the server itself is asked for (``import latentguard`` stays light)."""
    if name in ("GuardServer",):
        from .server import GuardServer

        return GuardServer
    if name == "create_app":
        from .app import create_app

        return create_app
    if name == "run_server":
        from .run import run_server

        return run_server
    raise AttributeError(name)
