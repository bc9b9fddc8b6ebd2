"""One process writes one audit log: ``latentguard serve --guard mini`` as real processes against a hostile
review's finding. Two servers given one ``--audit-log`` lost each other's records: a batch one of them answered 500
(a failing hook) was cut back to the log's size before its own write, deleting the records the other had appended
and answered meanwhile (0 lines left of three answered). Now the log is held (``flock``) by the server that opened
it, a second one is refused at start, a reload cannot take over a log another process holds, and a cut back never
removes bytes another writer appended.

One server serves the module (``held``): an audit log, an admin key, and a hook that, for a prompt containing
"FAILME", says it has started (``entered``), waits for the test's ``go`` file, then raises.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
from test_serve_abuse import ADMIN_KEY, Mini

httpx = pytest.importorskip("httpx")

HOOK = """import os, time
HERE = os.path.dirname(__file__)
def record(e):
    if "FAILME" in e.verdict.prompt:
        open(os.path.join(HERE, "entered"), "w").close()
        deadline = time.monotonic() + 60
        while not os.path.exists(os.path.join(HERE, "go")) and time.monotonic() < deadline:
            time.sleep(0.05)
        raise RuntimeError("x")
"""

HOLDER = textwrap.dedent("""
    import fcntl, os, sys, time
    fd = os.open(sys.argv[1], os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)
    print("held", flush=True)
    time.sleep(120)
""")


@pytest.fixture(scope="module")
def held(tmp_path_factory):
    d = tmp_path_factory.mktemp("held")
    (d / "admin.txt").write_text(ADMIN_KEY + "\n", encoding="utf-8")
    (d / "hookmod.py").write_text(HOOK, encoding="utf-8")
    server = Mini(["--admin-key-file", str(d / "admin.txt"), "--audit-log", str(d / "shared.jsonl"),
                   "--audit-hook", "hookmod:record"], d / "home", path=d)
    server.dir = d
    try:
        yield server.wait_ready()
    finally:
        server.kill()


def _lines(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8").splitlines()


def test_a_second_server_on_the_same_audit_log_is_refused_at_start(held, tmp_path):
    log = held.dir / "shared.jsonl"
    assert held.check(prompts=["a cat on a sofa"]).status_code == 200
    before = log.read_bytes()
    second = Mini(["--audit-log", str(log)], tmp_path / "home")
    try:
        _, err = second.proc.communicate(timeout=120)
    except Exception:
        second.kill()
        raise
    err = err.strip()
    assert second.proc.returncode == 2 and "Traceback" not in err and len(err.splitlines()) == 1, err[-3000:]
    assert f"--audit-log {log} is held by another process" in err and "give each server its own --audit-log" in err
    assert log.read_bytes() == before  # it wrote nothing, not even a torn record's newline
    assert held.check(prompts=["a dog in a park"]).status_code == 200  # the first serves on, recording
    assert len(_lines(log)) == len(before.splitlines()) + 1


def test_a_failed_batch_never_cuts_away_what_another_writer_appended(held):
    """While the hook of a batch that fails waits, another process (a program that ignores the lock) appends a line:
    the cut back had truncated the log to its size before the batch, deleting that line with it."""
    log, d = held.dir / "shared.jsonl", held.dir
    answers = []
    asking = threading.Thread(target=lambda: answers.append(held.check(prompts=["FAILME a cat"])))
    asking.start()
    deadline = time.monotonic() + 60
    while not (d / "entered").exists():
        assert time.monotonic() < deadline, "the hook was never called"
        time.sleep(0.05)
    (d / "entered").unlink()
    theirs = json.dumps({"time": "2026-12-07T00:00:00.000+00:00", "request_id": "other-writer",
                         "endpoint": "/v1/check", "flagged": False})
    subprocess.run([sys.executable, "-c", f"open({str(log)!r}, 'a').write({theirs!r} + '\\n')"], check=True)
    (d / "go").touch()
    asking.join(60)
    (d / "go").unlink()
    assert answers and answers[0].status_code == 500 and answers[0].json()["error"]["code"] == "audit"
    assert theirs in _lines(log)  # was: gone with the failed batch's record
    assert held.check(prompts=["a bird on a branch"]).status_code == 200


def test_a_reload_cannot_take_a_log_another_process_holds(held):
    """Rotated away, the log's path now names a file another process holds: the reload fails in one line and the
    open (rotated) log keeps recording."""
    log, admin = held.dir / "shared.jsonl", {"Authorization": f"Bearer {ADMIN_KEY}"}
    rotated = log.with_name("shared.jsonl.1")
    os.replace(log, rotated)
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(log)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        r = httpx.post(held.url + "/admin/reload", headers=admin, timeout=120)
        assert r.status_code == 500 and r.json()["error"]["code"] == "reload_failed", r.text
        assert "is held by another process" in r.json()["error"]["message"]
        count = len(_lines(rotated))
        answered = held.check(prompts=["a horse in a field"])
        assert answered.status_code == 200 and log.read_bytes() == b""
        assert json.loads(_lines(rotated)[-1])["request_id"] == answered.json()["id"] and len(_lines(rotated)) > count
    finally:
        holder.kill()
        holder.wait(30)
    r = httpx.post(held.url + "/admin/reload", headers=admin, timeout=120)  # released: the reload takes the new file
    assert r.status_code == 200, r.text
    answered = held.check(prompts=["a fish in a bowl"])
    assert [json.loads(line)["request_id"] for line in _lines(log)] == [answered.json()["id"]]


def test_an_auditor_holds_its_log_and_a_plain_reload_keeps_it(tmp_path):
    """In one process: a second Auditor on the held log is refused; reopening a log that was not rotated keeps it
    (a second descriptor's flock would conflict with the first's)."""
    from latentguard.errors import LatentGuardError
    from latentguard.serve.audit import Auditor

    log = tmp_path / "audit.jsonl"
    first = Auditor(log)
    try:
        with pytest.raises(LatentGuardError, match="is held by another process"):
            Auditor(log)
        first.reopen()
        first.reopen()
    finally:
        first.close()
    Auditor(log).close()  # closed, the log is free again
