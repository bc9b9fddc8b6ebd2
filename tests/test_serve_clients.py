"""``latentguard serve --guard mini`` as a real process, with the open-file limit of a hostile review
(``ulimit -n 200``: a connection cap of 136), against clients that never read their answers: from a few
addresses they had taken every connection slot (a keyed client got connection reset for 20 s and more), and
each one that left had written a traceback to the log. Each test failed on the server before its fix."""
from __future__ import annotations

import socket
import threading
import time

import pytest
from test_serve_abuse import OLD_KEY, Mini

httpx = pytest.importorskip("httpx")

NOFILE = 200  # the server's open-file limit: a cap of 136 connections, 34 per client address
LONG_404 = b"GET /" + b"a" * 60000 + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"  # its 404 had repeated the 60 KB path


@pytest.fixture(scope="module")
def capped(tmp_path_factory):
    d = tmp_path_factory.mktemp("capped")
    (d / "keys.txt").write_text(OLD_KEY + "\n", encoding="utf-8")
    server = Mini(["--api-key-file", str(d / "keys.txt")], d / "home", nofile=NOFILE)
    try:
        yield _drained(server.wait_ready())
    finally:
        server.kill()


def _drained(server: Mini) -> Mini:
    """``server`` with its stderr read as it comes (into ``server.log``): a full pipe would stop the server."""
    server.log = []
    threading.Thread(target=lambda: server.log.extend(server.proc.stderr), daemon=True).start()
    return server


def _never_reading(port: int, source: str) -> socket.socket | None:
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 2048)
    try:
        s.bind((source, 0))
        s.connect(("127.0.0.1", port))
    except OSError:
        s.close()
        return None
    s.setblocking(False)
    return s


def _attack(port: int, sources: list[str], per_source: int, stop: threading.Event) -> None:
    """Sockets that pipeline LONG_404 whole (each picks up where a partial send left off) and never read,
    reconnecting any the server closes, until ``stop``."""
    sockets: dict = {(src, i): None for src in sources for i in range(per_source)}
    while not stop.is_set():
        for where, held in sockets.items():
            if held is None:
                s = _never_reading(port, where[0])
                if s is None:
                    continue
                held = sockets[where] = [s, memoryview(LONG_404)]
            s, left = held
            try:
                left = left[s.send(left):]
                held[1] = left if left else memoryview(LONG_404)
            except BlockingIOError:
                pass
            except OSError:  # closed by the server: come back at once, as the reviewer's client did
                s.close()
                sockets[where] = None
        time.sleep(0.01)
    for held in sockets.values():
        if held is not None:
            held[0].close()


def test_clients_that_never_read_cannot_take_every_connection(capped):
    """150 sockets pipelining requests whose 404s they never read had held every one of the 136 connections (an
    answer stalled part-way counted as in flight until the 30 s write timeout, and nothing bounded one address):
    a keyed check from elsewhere got connection reset. Now one address holds at most a quarter of the cap, and a
    connection whose answer has stalled gives its place to a newcomer. (Several such addresses reconnecting at
    once can still reset a keyed client now and then on a loaded machine: docs/serving.md.)"""
    stop = threading.Event()
    attacker = threading.Thread(target=_attack, args=(capped.port, ["127.0.0.2"], 150, stop))
    attacker.start()
    try:
        time.sleep(4)  # the answers back up and the connections fill
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            r = capped.check(OLD_KEY)
            assert r.status_code == 200, r.text
            assert httpx.get(capped.url + "/healthz", timeout=10).status_code == 200
            time.sleep(0.3)
        # requests pipelined behind unread answers had been kept without bound: 11 GB of server memory after this
        # attack; a connection with more than MAX_PIPELINED waiting is cut off
        status = open(f"/proc/{capped.proc.pid}/status").read().splitlines()
        rss_kb = int(next(line for line in status if line.startswith("VmRSS")).split()[1])
        assert rss_kb < 3_000_000, f"server memory {rss_kb / 1e6:.1f} GB"
    finally:
        stop.set()
        attacker.join()


def test_a_404_does_not_repeat_a_long_path(capped):
    """The 404 had echoed the whole path (60 KB answered to a 60 KB request): it names at most its start."""
    r = httpx.get(capped.url + "/" + "a" * 5000, headers={"Authorization": f"Bearer {OLD_KEY}"}, timeout=10)
    assert r.status_code == 404 and len(r.content) < 1000, len(r.content)


def test_a_client_that_leaves_while_answered_writes_no_traceback(tmp_path):
    """Clients that pipelined requests and closed without reading had each logged ``Exception in ASGI application``
    and a traceback (RuntimeError: the handler is closed): 575 KB of log for 136 connections. A stalled answer
    ahead of pipelined ones was written on the closed transport, since uvicorn marks only the newest request of a
    connection disconnected."""
    (tmp_path / "keys.txt").write_text(OLD_KEY + "\n", encoding="utf-8")
    server = _drained(Mini(["--api-key-file", str(tmp_path / "keys.txt")], tmp_path / "home").wait_ready())
    try:
        clients = [s for s in (_never_reading(server.port, "127.0.0.1") for _ in range(20)) if s is not None]
        until = time.monotonic() + 3
        while time.monotonic() < until:
            for s in clients:
                try:
                    s.send(LONG_404)
                except OSError:
                    pass
            time.sleep(0.01)
        for s in clients:
            s.close()  # unread answers: the server's end is reset
        time.sleep(2)
        assert httpx.get(server.url + "/healthz", timeout=10).status_code == 200
    finally:
        server.proc.kill()
        server.proc.wait(timeout=30)
    time.sleep(0.5)
    err = "".join(server.log)
    assert "Traceback" not in err and "Exception in ASGI application" not in err, err[-3000:]
