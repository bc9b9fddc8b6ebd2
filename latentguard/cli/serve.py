"""``latentguard serve``: Latent Guard as a moderation server (OpenAI's ``/v1/moderations``), so a
text-to-image service can check every prompt at its API with one command.

    latentguard serve --checkpoint model_parameters.pth --concepts blacklist.yaml --port 8000

The guard flags are those of ``inference.py``; the server's own flags override the ``serve``
config section. See docs/serving.md.
"""
from __future__ import annotations

import argparse
import importlib
import logging
import sys

from ..errors import LatentGuardError
from .common import (
    SCHEMA,
    build_guard,
    cli_entry,
    common_parser,
    guard_overrides,
    guard_parser,
    load_command_config,
    refuse_standard_input,
)

S = SCHEMA.serve


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="latentguard serve",
        description="Serve Latent Guard over HTTP: POST /v1/moderations (OpenAI's moderation API; the openai client "
                    "works with base_url=http://HOST:PORT/v1), POST /v1/check (native verdicts), GET /healthz, "
                    "/readyz, /metrics (Prometheus), /v1/blacklist; POST /admin/reload or SIGHUP re-reads the "
                    "blacklist and threshold files. Prompts of concurrent requests are scored together in batches.",
        epilog="Unset flags come from the config (--config, over latentguard/default.yaml, section 'serve'). "
               "SIGTERM stops accepting, answers what is queued, and exits 0. docs/serving.md has the details.",
        parents=[common_parser(store_dir=False), guard_parser()])
    net = parser.add_argument_group("server")
    net.add_argument("--host", default=None, help=f"address to bind (default: serve.host = {S.host}); one other "
                     "machines can reach needs --api-key-file, or --insecure")
    net.add_argument("--port", type=int, default=None, help=f"port (default: serve.port = {S.port}; 0 = any free one)")
    net.add_argument("--max-batch-size", type=int, default=None, metavar="N",
                     help=f"prompts of concurrent requests scored in one batch (default: {S.max_batch_size})")
    net.add_argument("--max-wait-ms", type=float, default=None, metavar="MS",
                     help=f"how long a queued prompt waits for others to fill its batch (default: {S.max_wait_ms:g})")
    net.add_argument("--max-inputs", type=int, default=None, metavar="N",
                     help=f"prompts per request; more is answered 413 (default: {S.max_inputs})")
    net.add_argument("--max-chars", type=int, default=None, metavar="N",
                     help=f"characters per prompt; more is answered 413 (default: {S.max_chars})")
    net.add_argument("--max-sentences", type=int, default=None, metavar="N",
                     help=f"sentences per prompt (each is scored on its own); more is answered 413 "
                          f"(default: {S.max_sentences})")
    net.add_argument("--queue-size", type=int, default=None, metavar="N",
                     help="texts waiting to be scored (a prompt counts once per form the defences score); beyond "
                          f"that 503 with Retry-After (default: {S.queue_size})")
    net.add_argument("--max-in-flight", type=int, default=None, metavar="N",
                     help="requests being received or answered at once; more is answered 503 "
                          f"(default: {S.max_in_flight})")
    net.add_argument("--body-timeout-s", type=float, default=None, metavar="S",
                     help=f"a request body not received in S seconds is answered 408 (default: {S.body_timeout_s:g})")
    net.add_argument("--header-timeout-s", type=float, default=None, metavar="S",
                     help="a connection that has not sent a complete request head S seconds after it opened (or "
                          "after its last answer) is closed; open connections are also capped below the file "
                          f"descriptor limit (default: {S.header_timeout_s:g})")
    net.add_argument("--write-timeout-s", type=float, default=None, metavar="S",
                     help="an answer the client does not read for S seconds aborts its connection "
                          f"(default: {S.write_timeout_s:g})")
    net.add_argument("--shutdown-timeout-s", type=float, default=None, metavar="S",
                     help="on SIGTERM, requests in flight get S seconds to be answered, then are cancelled; what "
                          f"is queued is still scored (default: {S.shutdown_timeout_s:g})")
    net.add_argument("--max-body-bytes", type=int, default=None, metavar="N",
                     help="the largest request body (more: 413); default: what --max-inputs, --max-chars and "
                          "--queue-size allow, about 3 MB at their defaults")
    keys = parser.add_argument_group("keys and audit")
    keys.add_argument("--api-key-file", default=None, metavar="FILE",
                      help="bearer tokens (one per line) required for /v1/*; default: none (loopback only)")
    keys.add_argument("--admin-key-file", default=None, metavar="FILE",
                      help="bearer tokens for POST /admin/reload (default: none; with an API key set, reload by "
                           "SIGHUP only)")
    keys.add_argument("--insecure", action="store_true", default=None,
                      help="serve on an address other machines can reach without an API key")
    keys.add_argument("--audit-log", default=None, metavar="FILE.jsonl",
                      help="append one line per judged prompt (time, request id, prompt SHA-256, verdict, categories, "
                           "concept, score), flushed per batch")
    keys.add_argument("--audit-prompts", action="store_true", default=None,
                      help="--audit-log records the prompt itself instead of its SHA-256")
    keys.add_argument("--audit-hook", default=None, metavar="MODULE:FUNCTION",
                      help="call FUNCTION(event) for every judged prompt before it is answered (a "
                           "latentguard.serve.VerdictEvent); an exception fails the batch with a 5xx")
    keys.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"],
                      help="server log level (default: info)")
    keys.add_argument("--access-log", action="store_true", help="log every request (off: it costs throughput)")
    return parser


def serve_overrides(args: argparse.Namespace) -> dict:
    """The ``serve.*`` config keys the server flags override (``None``: not given)."""
    return {"serve.host": args.host, "serve.port": args.port, "serve.max_batch_size": args.max_batch_size,
            "serve.max_wait_ms": args.max_wait_ms, "serve.max_inputs": args.max_inputs,
            "serve.max_chars": args.max_chars, "serve.max_sentences": args.max_sentences,
            "serve.queue_size": args.queue_size, "serve.max_in_flight": args.max_in_flight,
            "serve.body_timeout_s": args.body_timeout_s, "serve.header_timeout_s": args.header_timeout_s,
            "serve.write_timeout_s": args.write_timeout_s, "serve.shutdown_timeout_s": args.shutdown_timeout_s,
            "serve.max_body_bytes": args.max_body_bytes,
            "serve.api_key_file": args.api_key_file, "serve.admin_key_file": args.admin_key_file,
            "serve.insecure": args.insecure, "serve.audit_log": args.audit_log,
            "serve.audit_prompts": args.audit_prompts}


def import_hook(spec: str):
    """``package.module:function`` -> the function (a one-line error when it cannot be found)."""
    module, _, name = spec.partition(":")
    if not module or not name:
        raise LatentGuardError(f"--audit-hook {spec!r}: give MODULE:FUNCTION, e.g. mypackage.audit:record")
    try:
        hook = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as exc:
        raise LatentGuardError(f"--audit-hook {spec}: cannot import it ({exc})") from None
    if not callable(hook):
        raise LatentGuardError(f"--audit-hook {spec}: {name} is not callable")
    return hook


def _log_like_uvicorn(level: str) -> None:
    """The server's own lines (reloads, scoring faults) in uvicorn's format, on stderr."""
    from uvicorn.logging import DefaultFormatter

    handler = logging.StreamHandler()
    handler.setFormatter(DefaultFormatter("%(levelprefix)s %(message)s", use_colors=False))
    logger = logging.getLogger("latentguard.serve")
    logger.handlers[:] = [handler]
    logger.setLevel(level.upper())
    logger.propagate = False


def guard_factory(cfg):
    """The server's guard builder: every (re)load reads the files the config names and reuses the loaded encoder.
    A guard from a hub repo (``--guard org/name``) is fetched once: reloads read the snapshot the start resolved,
    never the network. A reload (SIGHUP from log rotation) had called ``snapshot_download`` on the model thread, so a
    hub that accepted connections and never answered froze all scoring while the probes said ready, and SIGTERM
    could not stop the server (a twenty-fourth hostile pass); and without ``--guard-revision`` a reload had swapped in
    whatever the repo's ``main`` held by then. To serve a new revision, restart."""
    pinned = [cfg]

    def factory(encoder=None):
        guard = build_guard(pinned[0], **({"encoder": encoder} if encoder is not None else {}))
        bundle = getattr(guard, "bundle", None)
        if pinned[0] is cfg and bundle is not None and getattr(bundle, "repo_id", None):
            pinned[0] = cfg.updated({"guard": str(bundle.path), "guard_revision": None}, "the resolved hub snapshot")
        return guard

    return factory


def _defer_sighup() -> None:
    """SIGHUP while the guard loads: one log line, not death. Its default action had killed the server (exit 129,
    no log line) when a log rotation's ``kill -HUP`` met a start, and systemd reads that as a clean exit (a hostile
    pass). The app's own handler (a reload) replaces this one once it serves."""
    import signal

    if hasattr(signal, "SIGHUP"):
        signal.signal(signal.SIGHUP, lambda *_: logging.getLogger("latentguard.serve").warning(
            "SIGHUP while the guard loads: the files are being read now; send it again once ready to reload"))


@cli_entry
def main(argv: list[str] | None = None) -> int:
    _defer_sighup()  # first: the config, the imports and the load all come before the app's own handler
    args = build_parser().parse_args(argv)
    from ..serve import ServeSettings

    cfg = load_command_config(args, {**guard_overrides(args), **serve_overrides(args)})
    refuse_standard_input(cfg)  # each reload re-reads the lists: standard input reads once
    settings = ServeSettings.from_config(cfg.serve)  # keys read and the binding checked before the slow load
    hook = import_hook(args.audit_hook) if args.audit_hook else None
    from ..guard.options import threshold_line
    from ..serve import GuardServer, create_app, run_server

    _log_like_uvicorn(args.log_level)

    factory = guard_factory(cfg)
    from ..serve.run import listen

    sock = listen(settings)  # before the slow load: an address in use is one line and exit 2 at once
    server = GuardServer(factory, settings, on_verdict=hook)
    state = server.load()
    port = sock.getsockname()[1]
    g = state.guard
    print(f"latentguard serve: {state.model}, {len(g.concepts)} concepts in {len(g.options.groups())} categories, "
          f"{threshold_line(g)}, on {g.device}; http://{settings.host}:{port}/v1",
          flush=True)
    if not g.options.windowed:
        print("latentguard serve: prompts over 77 tokens are judged on their first 77 (results say truncated: true); "
              "a generator that reads longer prompts (A1111, ComfyUI, compel) sees text this server did not judge: "
              "pass --long-prompts for it", file=sys.stderr, flush=True)
    return run_server(create_app(server), settings, log_level=args.log_level, access_log=args.access_log, sock=sock)


if __name__ == "__main__":
    sys.exit(main())
