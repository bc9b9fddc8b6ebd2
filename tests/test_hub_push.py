"""Guard bundles on a hub: push_to_hub, from_pretrained("org/name") through the Hugging Face cache, offline.

A local HTTP server speaks the part of the hub API that ``huggingface_hub`` uses (create a repo,
preupload, commit; repo info, tree, resolve), so the real ``HfApi.upload_folder`` and
``snapshot_download`` run against it and fill a real cache; the offline load then finds the bundle
in that cache with the server gone and ``HF_HUB_OFFLINE=1``. Every hub step runs in its own
process, because ``huggingface_hub`` reads ``HF_ENDPOINT``, ``HF_HOME`` and ``HF_HUB_OFFLINE`` once,
at import.
"""
from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

import numpy as np
import pytest
import torch

from latentguard.guard import LatentGuard
from latentguard.model import EmbeddingMappingLayer

ROOT = Path(__file__).resolve().parent.parent
PROMPTS = ["a photo of a knife on the table", "a red balloon in the sky", "blood on the kitchen floor"]
ONLINE = """
import json, sys
from latentguard import LatentGuard
local = LatentGuard.from_pretrained(sys.argv[1], device="cpu")
url = local.push_to_hub("org/guard", private=True)
guard = LatentGuard.from_pretrained("org/guard", encoder=local.encoder, device="cpu")  # the hub's copy
print(json.dumps({"url": url, "scores": guard.scores(%(prompts)r).tolist(), "path": str(guard.bundle.path),
                  "threshold": guard.threshold, "origin": guard.threshold_origin}))
""" % {"prompts": PROMPTS}
OFFLINE = """
import json, sys
from latentguard import LatentGuard, LatentGuardError
guard = LatentGuard.from_pretrained("org/guard", device="cpu")
pinned = LatentGuard.from_pretrained("org/guard", revision=sys.argv[1], encoder=guard.encoder, device="cpu")
try:
    LatentGuard.from_pretrained("org/other", encoder=guard.encoder)
    missing = None
except LatentGuardError as exc:
    missing = str(exc)
print(json.dumps({"scores": guard.scores(%(prompts)r).tolist(), "pinned": pinned.scores(%(prompts)r).tolist(),
                  "path": str(guard.bundle.path), "missing": missing}))
""" % {"prompts": PROMPTS}


def _blob(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


class FakeHub:
    """Repos in memory; every request is recorded (method, path, Authorization header)."""

    def __init__(self) -> None:
        self.repos: dict[str, dict] = {}
        self.requests: list[tuple[str, str, str | None]] = []
        self.card_metadata = None
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def _route(self, method: str) -> None:
                path = unquote(urlsplit(self.path).path)
                hub.requests.append((method, path, self.headers.get("Authorization")))
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0)) if method == "POST" else b""
                try:
                    code, payload, headers = hub.answer(method, path, body)
                except KeyError:
                    code, payload, headers = 404, {"error": "Repository not found"}, {"X-Error-Code": "RepoNotFound"}
                if not isinstance(payload, bytes):
                    payload, headers = json.dumps(payload).encode(), {"Content-Type": "application/json", **headers}
                self.send_response(code)
                for key, value in {**headers, "Content-Length": str(len(payload))}.items():
                    self.send_header(key, value)
                self.end_headers()
                if method != "HEAD":
                    self.wfile.write(payload)

            def do_GET(self) -> None:
                self._route("GET")

            def do_HEAD(self) -> None:
                self._route("HEAD")

            def do_POST(self) -> None:
                self._route("POST")

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def answer(self, method: str, path: str, body: bytes):
        if method == "POST" and path == "/api/repos/create":
            spec = json.loads(body)
            repo_id = f"{spec['organization']}/{spec['name']}" if spec.get("organization") else spec["name"]
            if repo_id in self.repos:
                return 409, {"error": "You already created this model repo"}, {}
            private = spec.get("private") is True or spec.get("visibility") == "private"
            self.repos[repo_id] = {"files": {}, "commit": "0" * 40, "private": private}
            return 200, {"url": f"{self.url}/{repo_id}", "name": repo_id}, {}
        if method == "POST" and path == "/api/validate-yaml":  # the hub checks a model card's metadata
            self.card_metadata = json.loads(body)
            return 200, {"errors": [], "warnings": []}, {}
        api = re.fullmatch(r"/api/models/([^/]+/[^/]+)/(preupload|commit|revision|tree)/([^/]+)(?:/.*)?", path)
        if api:
            repo_id, kind = api.group(1), api.group(2)
            repo = self.repos[repo_id]
            if kind == "preupload":
                return 200, {"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False}
                                       for f in json.loads(body)["files"]]}, {}
            if kind == "commit":
                for line in body.splitlines():
                    item = json.loads(line)
                    if item["key"] == "file":
                        repo["files"][item["value"]["path"]] = base64.b64decode(item["value"]["content"])
                files = repo["files"]
                repo["commit"] = hashlib.sha1("".join(p + _blob(files[p]) for p in sorted(files)).encode()).hexdigest()
                return 200, {"commitUrl": f"{self.url}/{repo_id}/commit/{repo['commit']}",
                             "commitOid": repo["commit"]}, {}
            if kind == "revision":
                return 200, {"id": repo_id, "sha": repo["commit"], "private": bool(repo["private"]),
                             "siblings": [{"rfilename": p} for p in sorted(repo["files"])]}, {}
            return 200, [{"type": "file", "path": p, "size": len(d), "oid": _blob(d)}
                         for p, d in sorted(repo["files"].items())], {}
        resolve = re.fullmatch(r"/([^/]+/[^/]+)/resolve/([^/]+)/(.+)", path)
        if resolve:
            repo = self.repos[resolve.group(1)]
            data = repo["files"].get(resolve.group(3))
            if data is None:
                return 404, {"error": "Entry not found"}, {"X-Error-Code": "EntryNotFound"}
            return 200, data, {"X-Repo-Commit": repo["commit"], "ETag": f'"{_blob(data)}"'}
        return 404, {"error": f"no route {method} {path}"}, {}


def _run(code_or_args, tmp: Path, **env: str) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGING"))}
    base.update({"PYTHONPATH": str(ROOT), "HF_HOME": str(tmp / "hf"), "HF_HUB_DISABLE_TELEMETRY": "1",
                 "HF_HUB_DISABLE_PROGRESS_BARS": "1", "HF_HUB_OFFLINE": "0", **env})
    argv = ["-c", *code_or_args] if isinstance(code_or_args, tuple) else ["-m", "latentguard", *code_or_args]
    return subprocess.run([sys.executable, *argv], capture_output=True, text=True, cwd=tmp, env=base, timeout=300)


@pytest.fixture
def bundle(tmp_path, tiny_encoder):
    torch.manual_seed(1)
    model = EmbeddingMappingLayer()
    guard = LatentGuard(model, tiny_encoder, ["knife", "blood", "gun"], threshold=1.0, device="cpu")
    return guard.save_pretrained(tmp_path / "local", license="mit")


def test_push_then_load_through_the_hub_cache_then_offline(bundle, tiny_encoder, tmp_path):
    hub = FakeHub()
    try:
        online = _run((ONLINE, str(bundle)), tmp_path, HF_ENDPOINT=hub.url, HF_TOKEN="hf_test_token")
        assert online.returncode == 0, online.stderr[-2000:]
    finally:
        hub.close()
    first = json.loads(online.stdout.strip().splitlines()[-1])
    repo = hub.repos["org/guard"]
    assert repo["private"] is True and first["url"].endswith(f"/org/guard/commit/{repo['commit']}")
    assert sorted(repo["files"]) == sorted(p.name for p in bundle.iterdir())
    assert repo["files"]["model.safetensors"] == (bundle / "model.safetensors").read_bytes()
    assert hub.card_metadata is not None  # the card's front matter went through the hub's own check
    writes = [r for r in hub.requests if r[0] == "POST"]
    assert writes and all(auth == "Bearer hf_test_token" for _, _, auth in writes)
    cache = tmp_path / "hf" / "hub" / "models--org--guard" / "snapshots" / repo["commit"]
    assert Path(first["path"]) == cache  # the hub library's own cache layout, filled by snapshot_download
    local = LatentGuard.from_pretrained(str(bundle), encoder=tiny_encoder, device="cpu")
    np.testing.assert_allclose(first["scores"], local.scores(PROMPTS), rtol=1e-6)
    assert first["threshold"] == 1.0 and first["origin"] == "given, bundle org/guard"
    # The server is gone: offline, from the cache (the default branch, and pinned to the commit).
    offline = _run((OFFLINE, repo["commit"]), tmp_path, HF_HUB_OFFLINE="1", HF_ENDPOINT="http://127.0.0.1:9")
    assert offline.returncode == 0, offline.stderr[-2000:]
    second = json.loads(offline.stdout.strip().splitlines()[-1])
    assert second["scores"] == second["pinned"] == first["scores"] and second["path"] == first["path"]
    missing = second["missing"]
    assert missing.startswith("cannot load guard bundle org/other: HF_HUB_OFFLINE=1 is set") and "\n" not in missing
    assert "pass its path" in missing


def test_no_network_and_no_credentials_are_one_line_refusals(bundle, tmp_path):
    (tmp_path / "prompts.txt").write_text("a photo\n")
    hub = FakeHub()
    try:
        refused = _run(["export", "--guard", str(bundle), "--out", str(tmp_path / "out"), "--push-to-hub",
                        "org/guard", "--device", "cpu"], tmp_path, HF_ENDPOINT=hub.url)
        offline = _run(["infer", "--guard", "org/unseen", "--file_path", str(tmp_path / "prompts.txt")], tmp_path,
                       HF_HUB_OFFLINE="1", HF_ENDPOINT=hub.url)
    finally:
        hub.close()
    for done, needles in ((refused, ("needs Hugging Face credentials", "hf auth login", "HF_TOKEN")),
                          (offline, ("org/unseen", "HF_HUB_OFFLINE=1", "--guard /path/to/folder"))):
        err = done.stderr.strip()
        assert done.returncode == 2 and len(err.splitlines()) == 1 and "Traceback" not in err, err
        assert all(n in err for n in needles), err
    assert hub.requests == [] and not (tmp_path / "out").exists()  # nothing sent, nothing written
