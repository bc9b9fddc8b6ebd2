"""``latentguard serve --guard mini`` as a real process against the findings of hostile pass 17: an endless
request head, key files that block on read or hold keys a client cannot send, a failing --audit-hook,
and /v1/sanitize's audit and work bound. Each test failed on the server before its fix.

One server serves the module (``srv``): API and admin key files, an audit log and an audit hook that
raises for any prompt containing "fail".
"""
from __future__ import annotations

import json
import os
import signal
import socket
import threading
import time
from pathlib import Path

import pytest

from test_serve_abuse import ADMIN_KEY, OLD_KEY, Mini, wait_for

httpx = pytest.importorskip("httpx")

HOOK = 'def record(e):\n    if "fail" in e.verdict.prompt:\n        raise RuntimeError("down")\n'


@pytest.fixture(scope="module")
def srv(tmp_path_factory):
    d = tmp_path_factory.mktemp("hostile")
    (d / "keys.txt").write_text(OLD_KEY + "\n", encoding="utf-8")
    (d / "admin.txt").write_text(ADMIN_KEY + "\n", encoding="utf-8")
    (d / "hookmod.py").write_text(HOOK, encoding="utf-8")
    server = Mini(["--api-key-file", str(d / "keys.txt"), "--admin-key-file", str(d / "admin.txt"),
                   "--audit-log", str(d / "audit.jsonl"), "--audit-hook", "hookmod:record"], d / "home", path=d)
    server.dir = d
    try:
        yield server.wait_ready()
    finally:
        server.kill()


def _rss(pid: int) -> int:
    """The process's resident memory in bytes (Linux)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def _flood(port: int, head: bytes, chunk: bytes, seconds: float) -> tuple[float, int, bytes]:
    """Send ``head`` then ``chunk`` over and over for ``seconds`` or until the server cuts the connection: the time
    it took, the bytes sent, and what the server answered."""
    s = socket.create_connection(("127.0.0.1", port))
    s.settimeout(2)
    started, sent, answer = time.monotonic(), 0, b""
    try:
        s.sendall(head)
        while time.monotonic() - started < seconds:
            s.sendall(chunk)
            sent += len(chunk)
    except OSError:
        pass
    elapsed = time.monotonic() - started
    try:
        answer = s.recv(4096)
    except OSError:  # the server's close met unread bytes: a reset, the answer lost
        pass
    s.close()
    return elapsed, sent, answer


def test_an_endless_request_head_is_cut_and_keyed_checks_stay_fast(srv):
    floods = [(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: ", b"a" * (1 << 20)),
              (b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n", b"X-A: b\r\n" * 65536)]
    before, errors = _rss(srv.proc.pid), srv.errors("head_too_large", OLD_KEY)
    for head, chunk in floods:
        elapsed, sent, answer = _flood(srv.port, head, chunk, 4)
        assert elapsed < 2 and sent < 16 * len(chunk), (elapsed, sent)
        assert answer == b"" or answer.startswith(b"HTTP/1.1 431"), answer[:200]
    assert srv.errors("head_too_large", OLD_KEY) >= errors + 1
    results, stop = [], threading.Event()

    def attacker() -> None:  # reconnects as soon as it is cut
        while not stop.is_set():
            results.append(_flood(srv.port, *floods[len(results) % 2], 1))

    thread = threading.Thread(target=attacker, daemon=True)
    thread.start()
    try:
        for _ in range(5):
            started = time.monotonic()
            assert srv.check(OLD_KEY).status_code == 200
            assert time.monotonic() - started < 1.5
            assert _rss(srv.proc.pid) - before < 300 * 2**20
    finally:
        stop.set()
        thread.join(10)
    assert results and all(elapsed < 2 for elapsed, _, _ in results), results

