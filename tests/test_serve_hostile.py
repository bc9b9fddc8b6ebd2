"""``latentguard serve --guard mini`` as a real process against the findings of hostile pass 17: an endless
request head, key files that block on read or hold keys a client cannot send, a failing --audit-hook,
and /v1/sanitize's audit and work bound; and, from a later review, a request that asks to switch protocols. Each
test failed on the server before its fix.

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
from test_serve_abuse import ADMIN_KEY, OLD_KEY, Mini

httpx = pytest.importorskip("httpx")

HOOK = """import json, os
def record(e):
    if "fail" in e.verdict.prompt:
        raise RuntimeError("down")
    if getattr(e, "sanitized", None) is not None:
        with open(os.path.join(os.path.dirname(__file__), "hooked.jsonl"), "a") as out:
            out.write(json.dumps({"request_id": e.request_id, "text": e.sanitized.text}) + "\\n")
"""


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


def _refused_at_start(tmp_path: Path, keys: Path) -> str:
    """Start a server whose --api-key-file is ``keys``: it must exit 2 at once; its stderr."""
    server = Mini(["--api-key-file", str(keys)], tmp_path / "home")
    try:
        _, err = server.proc.communicate(timeout=20)
    except Exception:
        server.kill()
        raise
    assert server.proc.returncode == 2, err[-2000:]
    return err


def test_a_key_file_that_blocks_on_read_is_refused_at_startup(tmp_path):
    fifo = tmp_path / "keys.fifo"
    os.mkfifo(fifo)  # nothing ever writes it: open().read() waits for ever
    err = _refused_at_start(tmp_path, fifo)
    assert "not a regular file" in err and str(fifo) in err and "Traceback" not in err


def test_a_key_file_linked_to_a_device_is_refused_unread(tmp_path):
    from latentguard.errors import LatentGuardError
    from latentguard.serve.settings import read_keys

    (tmp_path / "zero").symlink_to("/dev/zero")  # read whole, it fills memory (not run on the old code for that)
    with pytest.raises(LatentGuardError, match="not a regular file"):
        read_keys(tmp_path / "zero", "--api-key-file")
    (tmp_path / "big").write_bytes(b"k" * (2 << 20))
    with pytest.raises(LatentGuardError, match="larger than"):
        read_keys(tmp_path / "big", "--api-key-file")


def test_a_key_a_client_cannot_send_is_refused_naming_its_line(tmp_path):
    keys = tmp_path / "keys.txt"
    keys.write_text("# rotated keys\nclé-secret\n", encoding="utf-8")
    err = _refused_at_start(tmp_path, keys)
    assert f"{keys}: line 2" in err and "ASCII" in err


def test_a_reload_that_meets_a_blocking_key_file_keeps_the_old_keys_and_scoring(srv):
    keys = srv.dir / "keys.txt"
    aside = srv.dir / "keys.saved"
    keys.rename(aside)
    os.mkfifo(keys)
    try:
        srv.proc.send_signal(signal.SIGHUP)
        answer = httpx.post(srv.url + "/admin/reload", headers={"Authorization": f"Bearer {ADMIN_KEY}"}, timeout=5)
        assert answer.status_code == 500 and "not a regular file" in answer.json()["error"]["message"]
        started = time.monotonic()
        answer = httpx.post(srv.url + "/v1/check", json={"prompts": ["a cat"]}, timeout=5,
                            headers={"Authorization": f"Bearer {OLD_KEY}"})
        assert answer.status_code == 200  # the old keys serve on, and the model thread is free
        assert time.monotonic() - started < 2
    finally:
        keys.unlink()
        aside.rename(keys)


def _records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]


def test_a_failing_audit_hook_leaves_one_record_per_answered_verdict_and_none_other(srv):
    log, answers = srv.dir / "audit.jsonl", []
    before = len(_records(log))
    prompts = ["please fail k", "a harmless dog k", "a harmless cat k"]

    def ask(prompt: str) -> None:
        answers.append(httpx.post(srv.url + "/v1/check", json={"prompts": [prompt]}, timeout=30,
                                  headers={"Authorization": f"Bearer {OLD_KEY}"}))

    for _ in range(4):  # concurrent, so they share a batch that the failing hook fails
        threads = [threading.Thread(target=ask, args=(p,)) for p in prompts]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
    records = _records(log)[before:]
    ok = [r.json()["id"] for r in answers if r.status_code == 200]
    assert len(ok) == 8 and sorted(r.status_code for r in answers)[-4:] == [500] * 4, [r.status_code for r in answers]
    assert sorted(r["request_id"] for r in records) == sorted(ok)  # each answered verdict once, nothing else


def test_each_sanitize_result_is_recorded_as_handed_out_and_given_to_the_hook(srv):
    import hashlib

    log = srv.dir / "audit.jsonl"
    before = len(_records(log))
    headers = {"Authorization": f"Bearer {OLD_KEY}"}
    r = httpx.post(srv.url + "/v1/sanitize", json={"prompts": ["a naked woman on a beach", "a dog in a park"]},
                   headers=headers, timeout=60)
    assert r.status_code == 200, r.text
    flagged, safe = r.json()["results"]
    assert flagged["before"]["unsafe"] and flagged["text"] and flagged["removed"], flagged
    records = _records(log)[before:]
    assert [(x["request_id"], x["endpoint"], x["index"]) for x in records] == [
        (r.json()["id"], "/v1/sanitize", 0), (r.json()["id"], "/v1/sanitize", 1)]
    for record, result in zip(records, (flagged, safe)):
        s = record["sanitized"]
        assert s["text_sha256"] == hashlib.sha256(result["text"].encode("utf-8")).hexdigest()
        assert s["removed_count"] == len(result["removed"]) and s["passes"] is result["passes"] is True
        assert s["after"]["flagged"] is result["after"]["unsafe"] is False
        assert record["flagged"] is result["before"]["unsafe"]
    hooked = _records(srv.dir / "hooked.jsonl")
    assert {"request_id": r.json()["id"], "text": flagged["text"]} in hooked
    failed = httpx.post(srv.url + "/v1/sanitize", json={"prompts": ["a naked woman, please fail"]}, headers=headers,
                        timeout=60)
    assert failed.status_code == 500 and failed.json()["error"]["code"] == "audit"
    assert len(_records(log)) == before + 2  # nothing recorded for what was not handed out


def _raw(port: int, request: bytes) -> bytes:
    """Send ``request`` on a new connection; the answer, read until the server closes or goes quiet."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(request)
        out = b""
        try:
            while chunk := s.recv(65536):
                out += chunk
        except socket.timeout:
            pass
    return out


H2C = b"Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQCAAAAAAIAAAAA"  # curl --http2


@pytest.mark.parametrize("upgrade", [H2C, b"Connection: upgrade\r\nUpgrade: websocket"])
def test_a_request_asking_to_switch_protocols_is_told_so_not_that_its_json_is_bad(srv, upgrade):
    """``curl --http2 http://...`` (Upgrade: h2c) or an nginx websocket snippet forwarding $http_upgrade: uvicorn's
    parser drops the body of a request that asks to upgrade, and the answer had been 400 "not valid JSON"."""
    body = b'{"input": "a naked woman"}'
    answer = _raw(srv.port, b"POST /v1/moderations HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer "
                  + OLD_KEY.encode() + b"\r\nContent-Type: application/json\r\n" + upgrade
                  + b"\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
    head, _, payload = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400 "), answer[:500]
    error = json.loads(payload)["error"]
    assert error["code"] == "upgrade_unsupported" and "plain HTTP/1.1 request" in error["message"], error
    assert b"not valid JSON" not in payload
    plain = httpx.post(srv.url + "/v1/moderations", json={"input": "a naked woman"}, timeout=30,
                       headers={"Authorization": f"Bearer {OLD_KEY}"})
    assert plain.status_code == 200 and plain.json()["results"][0]["flagged"] is True
