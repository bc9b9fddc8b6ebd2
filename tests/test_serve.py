"""``latentguard serve`` as a real process on a free loopback port, with the tiny test CLIP: the
official ``openai`` client, concurrent load, a reload under load, scoring faults, SIGTERM draining,
refused inputs and keys, the audit log and the metrics, each checked against in-process ``check()``.

One server (module fixture) serves most tests; its encoder has one token ("zebra") whose input
embedding is 1e30, so any batch holding a prompt with that word overflows to non-finite logits
at request time, as an fp16 overflow would, while every other prompt scores normally.
"""
from __future__ import annotations

import asyncio
import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

from latentguard.guard import LatentGuard  # noqa: E402
from latentguard.model import EmbeddingMappingLayer  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
WIDTH = 64  # the tiny CLIP's width: scoring costs little, so the tests measure the server, not the model
API_KEY, ADMIN_KEY = "test-api-key-1234", "test-admin-key-5678"
SUBJECTS = ["a man", "a woman", "a child", "a soldier", "a dragon", "a robot", "a cat", "an old car"]
SCENES = ["with a knife", "in a sunny meadow", "covered in blood", "holding a gun", "reading a book",
          "next to a bomb", "eating cake", "at the beach"]
PROMPTS = [f"{s} {c}" for s in SUBJECTS for c in SCENES]  # 64 prompts
BLACKLIST = "violence: [knife, gun, bomb]\ngore: [blood, wound]\n"
RELOADED = "violence: [knife, gun, bomb, sword]\ngore: [blood, wound]\ndrugs: [cocaine, heroin]\n"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Served:
    """A ``latentguard serve`` subprocess; always stopped by the fixture or test that started it."""

    def __init__(self, args: list[str], home: Path, preexec_fn=None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, "PYTHONPATH": str(ROOT), "LATENTGUARD_HOME": str(home), "HF_HUB_OFFLINE": "1",
               "OMP_NUM_THREADS": "1"}
        self.proc = subprocess.Popen([sys.executable, "-m", "latentguard", "serve", "--port", str(self.port), *args],
                                     cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                     preexec_fn=preexec_fn)

    def wait_ready(self, timeout: float = 120) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"server exited {self.proc.returncode}: {self.proc.stderr.read()[-3000:]}")
            try:
                r = httpx.get(self.url + "/readyz", timeout=2, headers=auth())
                if r.status_code == 200:
                    return r.json()
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        raise AssertionError("server not ready in time")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.communicate(timeout=30)


def guard_args(files: Path, encoder: Path, threshold: float) -> list[str]:
    return ["--checkpoint", str(files / "ckpt.pth"), "--encoder", str(encoder), "--concepts",
            str(files / "blacklist.yaml"), "--threshold", repr(threshold), "--device", "cpu"]


@pytest.fixture(scope="module")
def files(tmp_path_factory, clip_tokenizer) -> Path:
    """Weights, a grouped blacklist, key files, and a 64-wide tiny CLIP (the real tokenizer) whose "zebra"
    token overflows."""
    from conftest import tiny_clip_text_model

    d = tmp_path_factory.mktemp("serve")
    torch.manual_seed(0)
    layer = EmbeddingMappingLayer(in_dim=WIDTH)
    with torch.no_grad():
        layer.tempr.fill_(30.0)  # spread the logits so both verdicts occur
    torch.save(layer.state_dict(), d / "ckpt.pth")
    (d / "blacklist.yaml").write_text(BLACKLIST, encoding="utf-8")
    (d / "api.key").write_text(f"# clients\n{API_KEY}\n", encoding="utf-8")
    (d / "admin.key").write_text(ADMIN_KEY + "\n", encoding="utf-8")
    model = tiny_clip_text_model(hidden_size=WIDTH)
    (zebra,) = clip_tokenizer("zebra", add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        model.get_input_embeddings().weight[zebra] = 1e30
    model.save_pretrained(d / "encoder")
    clip_tokenizer.save_pretrained(d / "encoder")
    return d


@pytest.fixture(scope="module")
def encoder(files):
    from latentguard.encoders import load_encoder

    return load_encoder(str(files / "encoder"), device="cpu")


def reference_guard(files: Path, encoder, threshold: float, blacklist: str = "blacklist.yaml") -> LatentGuard:
    return LatentGuard.from_pretrained(files / "ckpt.pth", encoder, files / blacklist, threshold=threshold,
                                       device="cpu", cache_concepts=False)


@pytest.fixture(scope="module")
def threshold(files, encoder) -> float:
    """A threshold in the middle of the widest gap near the median score: some prompts flagged, none close."""
    scores = np.sort(reference_guard(files, encoder, 0.0).scores(PROMPTS))
    middle = len(scores) // 2
    gaps = [(scores[i + 1] - scores[i], i) for i in range(middle - 12, middle + 12)]
    width, i = max(gaps)
    assert width > 1e-3
    return float((scores[i] + scores[i + 1]) / 2)


@pytest.fixture(scope="module")
def expected(files, encoder, threshold) -> dict:
    guard = reference_guard(files, encoder, threshold)
    verdicts = guard.check(PROMPTS, explain=False)
    assert 5 < sum(v.unsafe for v in verdicts) < len(PROMPTS) - 5
    return {v.prompt: v for v in verdicts}


@pytest.fixture(scope="module")
def fleet(files, threshold, tmp_path_factory):
    """The servers of this module, started at once (their start-up, mostly imports, then overlaps):
    ``main`` (keys, audit log, small limits), ``drain`` (long batch wait, for SIGTERM), ``nan``
    (weights that are all NaN) and ``fds`` (256 file descriptors, a 2 s head timeout)."""
    state = torch.load(files / "ckpt.pth", weights_only=True)
    torch.save({k: torch.full_like(v, float("nan")) if v.is_floating_point() else v for k, v in state.items()},
               files / "nan.pth")
    home = tmp_path_factory.mktemp("home")
    servers = {}
    try:
        servers["main"] = Served([*guard_args(files, files / "encoder", threshold), "--api-key-file",
                                  str(files / "api.key"), "--admin-key-file", str(files / "admin.key"), "--audit-log",
                                  str(files / "audit.jsonl"), "--max-batch-size", "16", "--max-wait-ms", "5",
                                  "--max-inputs", "64", "--max-chars", "2000", "--body-timeout-s", "1"], home)
        servers["drain"] = Served([*guard_args(files, files / "encoder", threshold), "--max-batch-size", "64",
                                   "--max-wait-ms", "1500"], home)
        servers["nan"] = Served(["--checkpoint", str(files / "nan.pth"), "--encoder", str(files / "encoder"),
                                 "--concepts", str(files / "blacklist.yaml"), "--threshold", "0", "--device", "cpu"],
                                home)
        servers["fds"] = Served([*guard_args(files, files / "encoder", threshold), "--api-key-file",
                                 str(files / "api.key"), "--header-timeout-s", "2"], home, preexec_fn=_few_fds)
        yield servers
    finally:
        for served in servers.values():
            served.stop()


@pytest.fixture(scope="module")
def server(fleet):
    fleet["main"].ready = fleet["main"].wait_ready()
    return fleet["main"]


def auth(key: str = API_KEY) -> dict:
    return {"Authorization": f"Bearer {key}"}


def same_verdict(got: dict, want, *, moderation: bool) -> None:
    """A served verdict equals the in-process one (scores to float rounding across batch shapes)."""
    flagged = got["flagged"] if moderation else got["unsafe"]
    info = got["latentguard"] if moderation else got
    assert flagged == want.unsafe and got["categories"] == want.categories
    assert info["concept"] == want.concept and info["score"] == pytest.approx(want.score, abs=1e-4)
    assert got["category_scores"] == pytest.approx(want.category_scores, abs=1e-4)
    assert all((p >= 0.5) == got["categories"][name] for name, p in got["category_scores"].items())


# ------------------------------------------------------------------------------ OpenAI client
def test_the_openai_client_parses_the_moderation_response(server, expected):
    openai = pytest.importorskip("openai")
    client = openai.OpenAI(base_url=server.url + "/v1", api_key=API_KEY, max_retries=0)
    response = client.moderations.create(input=PROMPTS[:20], model="omni-moderation-latest")
    assert response.id.startswith("modr-") and response.model == server.ready["model"]
    assert response.model.startswith("latentguard-") and len(response.results) == 20
    for prompt, result in zip(PROMPTS[:20], response.results):
        want = expected[prompt]
        assert result.flagged == want.unsafe
        assert result.categories.to_dict() == want.categories
        assert result.category_scores.to_dict() == pytest.approx(want.category_scores, abs=1e-4)
        assert result.category_applied_input_types.to_dict() == {"violence": ["text"], "gore": ["text"]}
        extra = result.model_extra["latentguard"]
        assert extra["concept"] == want.concept and extra["score"] == pytest.approx(want.score, abs=1e-4)
        assert extra["slope"] == 1.0 and extra["scores_calibrated"] is False  # no fitted slope: said so
    one = client.moderations.create(input=PROMPTS[3])
    assert len(one.results) == 1 and one.results[0].flagged == expected[PROMPTS[3]].unsafe
    parts = client.moderations.create(input=[{"type": "text", "text": p} for p in PROMPTS[:4]])
    assert len(parts.results) == 1 and parts.results[0].flagged == any(expected[p].unsafe for p in PROMPTS[:4])
    with pytest.raises(openai.BadRequestError, match="input\\[1\\] is an image part"):
        client.moderations.create(input=[{"type": "text", "text": "a cat"},
                                         {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}}])
    with pytest.raises(openai.AuthenticationError, match="wrong API key"):
        openai.OpenAI(base_url=server.url + "/v1", api_key="nope", max_retries=0).moderations.create(input="a cat")


# ------------------------------------------------------------------------------- under load
async def _load(url: str, bodies: list[dict], path: str, concurrency: int) -> list:
    limit = asyncio.Semaphore(concurrency)
    async with httpx.AsyncClient(base_url=url, headers=auth(), timeout=60,
                                 limits=httpx.Limits(max_connections=concurrency)) as client:
        async def one(body):
            async with limit:
                return await client.post(path, json=body)
        return await asyncio.gather(*(one(b) for b in bodies))


def test_200_requests_32_at_a_time_are_all_answered_in_order_as_check_would(server, expected, files):
    rng = np.random.default_rng(0)
    bodies = [{"input": [PROMPTS[j] for j in rng.choice(len(PROMPTS), size=1 + i % 4)]} for i in range(200)]
    responses = asyncio.run(_load(server.url, bodies, "/v1/moderations", 32))
    assert [r.status_code for r in responses] == [200] * 200
    ids = set()
    for body, r in zip(bodies, responses):
        data = r.json()
        ids.add(data["id"])
        assert r.headers["x-request-id"] == data["id"] and len(data["results"]) == len(body["input"])
        for prompt, result in zip(body["input"], data["results"]):
            same_verdict(result, expected[prompt], moderation=True)
    assert len(ids) == 200
    metrics = httpx.get(server.url + "/metrics", headers=auth()).text
    count, total = _sample(metrics, "latentguard_batch_size_count"), _sample(metrics, "latentguard_batch_size_sum")
    assert total >= sum(len(b["input"]) for b in bodies) and total / count > 1.5  # prompts were batched together
    # the audit log: one line per judged prompt, the prompt's SHA-256 and the verdict, before each answer
    lines = [json.loads(line) for line in (files / "audit.jsonl").read_text(encoding="utf-8").splitlines()]
    by_request = {}
    for line in lines:
        by_request.setdefault(line["request_id"], []).append(line)
    for body, r in zip(bodies, responses):
        logged = sorted(by_request[r.json()["id"]], key=lambda line: line["index"])
        assert [line["prompt_sha256"] for line in logged] == [hashlib.sha256(p.encode()).hexdigest()
                                                              for p in body["input"]]
        assert [line["flagged"] for line in logged] == [res["flagged"] for res in r.json()["results"]]
        assert all("prompt" not in line and line["endpoint"] == "/v1/moderations" for line in logged)


def _sample(metrics: str, name: str, **labels) -> float:
    from prometheus_client.parser import text_string_to_metric_families

    for family in text_string_to_metric_families(metrics):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return sample.value
    return 0.0


def test_a_scoring_fault_fails_its_own_request_and_never_reads_as_not_flagged(server, expected):
    def errors() -> float:
        return _sample(httpx.get(server.url + "/metrics", headers=auth()).text, "latentguard_errors_total",
                       kind="scoring")

    before = errors()
    r = httpx.post(server.url + "/v1/check", json={"prompts": [PROMPTS[0], "a zebra in the savanna"]},
                   headers=auth())
    assert r.status_code == 500 and "scoring failed" in r.json()["error"]["message"]
    assert "not finite" in r.json()["error"]["message"]
    # concurrent requests: a batch that fails is scored request by request, so only the faulty ones get a 5xx
    bodies = [{"input": ["a zebra at night" if i % 8 == 0 else PROMPTS[i]]} for i in range(48)]
    responses = asyncio.run(_load(server.url, bodies, "/v1/moderations", 48))
    for body, r in zip(bodies, responses):
        if "zebra" in body["input"][0]:
            assert r.status_code == 500 and "results" not in r.json() and r.json()["error"]["code"] == "scoring"
        else:
            assert r.status_code == 200, r.text
            same_verdict(r.json()["results"][0], expected[body["input"][0]], moderation=True)
    after = errors()
    assert after >= before + 7
    assert httpx.post(server.url + "/v1/moderations", json={"input": "a cat"}, headers=auth()).status_code == 200


# --------------------------------------------------------------------------- refused requests
@pytest.mark.parametrize("body, status, needle", [
    ({"input": []}, 400, "input is empty"),
    ({"input": 3}, 400, "'input' must be a string or a list, got a number"),
    ({"input": ["a cat", 7]}, 400, "input[1] must be a string, got a number"),
    ({"input": ["a cat"] * 10_000}, 413, "input has 10,000 prompts; this server takes at most 64"),
    ({"input": "x" * 1_000_000}, 413, "input has 1,000,000 characters; this server takes at most 2,000"),
    ({"input": "x" * 3_000_000}, 413, "the request body is over"),
    ({"input": ["a cat", "x" * 3000]}, 413, "input[1] has 3,000 characters; this server takes at most 2,000"),
    ({"prompt": "a cat"}, 400, "missing field 'input'"),
    ({"input": [{"type": "text", "text": "a cat"}, {"type": "image_url", "image_url": {"url": "x"}}]}, 400,
     "input[1] is an image part"),
    ({"input": [{"type": "text", "text": 5}]}, 400, "input[0].text must be a string"),
    (b"{not json", 400, "not valid JSON"),
    (b"[1, 2]", 400, "must be a JSON object"),
])
def test_bad_requests_get_a_4xx_naming_the_problem(server, body, status, needle):
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    r = httpx.post(server.url + "/v1/moderations", content=content, headers=auth())
    assert r.status_code == status and needle in r.json()["error"]["message"], r.text
    assert "results" not in r.json()


@pytest.mark.parametrize("content, status, needle", [
    (b'{"input": "a man with a knife", "input": "a cat"}', 400, "key 'input' is given twice"),
    (b'{"x": ' + b"[" * 30000 + b"]" * 30000 + b"}", 400, "nested too deeply"),
    (b'{"input": "a cat \\ud800"}', 400, "lone surrogate"),
    (b'{"input": "a cat", "x": 1' + b"0" * 5000 + b"}", 400, "not valid JSON here"),
    (json.dumps({"input": ". ".join(f"word{i:04d}" for i in range(40))}).encode(), 413,
     "input[0] has 40 sentences; this server takes at most 32"),
])
def test_requests_that_would_mislead_or_stall_the_server_are_refused_alone(server, expected, content, status, needle):
    async def alongside():  # a refused request next to honest ones: they are judged, and never see its text
        async with httpx.AsyncClient(timeout=30, headers=auth()) as client:
            return await asyncio.gather(client.post(server.url + "/v1/moderations", content=content),
                                        *(client.post(server.url + "/v1/moderations", json={"input": PROMPTS[i]})
                                          for i in range(6)))

    bad, *honest = asyncio.run(alongside())
    assert bad.status_code == status and needle in bad.json()["error"]["message"], bad.text
    for i, r in enumerate(honest):
        assert r.status_code == 200, r.text
        same_verdict(r.json()["results"][0], expected[PROMPTS[i]], moderation=True)


def test_the_native_endpoint_refuses_fields_it_does_not_take(server):
    r = httpx.post(server.url + "/v1/check", json={"prompts": "a knife", "threshold": 100}, headers=auth())
    assert r.status_code == 400 and "unknown field(s) 'threshold'" in r.json()["error"]["message"]


def test_routing_errors_are_in_the_error_shape_and_probes_answer_head(server):
    missing = httpx.post(server.url + "/v1/moderation", json={"input": "a cat"}, headers=auth())
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"
    wrong = httpx.get(server.url + "/v1/moderations", headers=auth())
    assert wrong.status_code == 405 and wrong.json()["error"]["type"] == "invalid_request_error"
    slash = httpx.post(server.url + "/v1/moderations/", json={"input": "a cat"}, headers={**auth(), "Host": "evil"})
    assert slash.status_code == 404 and "location" not in slash.headers  # no redirect to a name the client gave
    assert httpx.head(server.url + "/healthz").status_code == 200


def test_with_keys_set_strangers_see_only_readiness(server):
    assert httpx.get(server.url + "/readyz").json() == {"status": "ready", "generation": server.ready["generation"]}
    assert httpx.get(server.url + "/metrics").status_code == 401
    assert "latentguard_requests_total" in httpx.get(server.url + "/metrics", headers=auth(ADMIN_KEY)).text
    assert httpx.get(server.url + "/openapi.json").status_code == 404
    assert httpx.get(server.url + "/docs").status_code == 404


def test_without_keys_only_this_machines_programs_are_answered(fleet):
    served = fleet["drain"]  # no keys, on loopback
    served.wait_ready()
    rebound = httpx.post(served.url + "/v1/check", json={"prompts": "a cat"}, headers={"Host": "evil.example"})
    assert rebound.status_code == 421 and "not this machine" in rebound.json()["error"]["message"]
    page = httpx.post(served.url + "/admin/reload", content=b"x", headers={"Origin": "http://evil.example",
                                                                          "Content-Type": "text/plain"})
    assert page.status_code == 403 and "browser request" in page.json()["error"]["message"]
    for host in ("localhost:80@evil.com", "[::1]evil.com", "[::1"):  # not an authority: not a loopback name
        assert httpx.get(served.url + "/readyz", headers={"Host": host}).status_code == 421, host
    # a local page on another port is another origin too ("http://localhost:3000" had reloaded the server)
    for origin in ("http://127.0.0.1:80@evil.com", "http://[::1]evil.com", "null", "http://localhost:3000",
                   "http://[::1]", f"http://127.0.0.1:{served.port + 1}"):
        assert httpx.get(served.url + "/readyz", headers={"Origin": origin}).status_code == 403, origin
    own = httpx.get(served.url + "/readyz", headers={"Origin": f"http://127.0.0.1:{served.port}"})
    assert own.status_code == 200
    local = httpx.get(served.url + "/readyz", headers={"Host": f"localhost:{served.port}"})
    assert local.status_code == 200 and "concepts" in local.json()


def test_two_authorization_headers_are_refused_whichever_comes_first(server):
    """The first of two Authorization headers was read, so a right key then a wrong one passed: a proxy that
    checks or logs the other would disagree with the server (bodies already refuse a key given twice)."""
    for pair in ([API_KEY, "x"], ["x", API_KEY], [API_KEY, API_KEY]):
        headers = [("Authorization", f"Bearer {key}") for key in pair]
        r = httpx.post(server.url + "/v1/check", json={"prompts": ["a cat"]}, headers=headers)
        assert r.status_code == 400 and r.json()["error"]["code"] == "duplicate_authorization", pair
    assert httpx.post(server.url + "/v1/check", json={"prompts": ["a cat"]}, headers=auth(API_KEY)).status_code == 200


def test_a_body_that_never_arrives_is_a_408(server):
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(b"POST /v1/check HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                     b"Authorization: Bearer " + API_KEY.encode() + b"\r\nContent-Length: 1000\r\n\r\n{\"prompts\": ")
        answer = b""
        while chunk := sock.recv(65536):  # the server closes the connection after answering
            answer += chunk
        answer = answer.decode("latin-1")
    assert answer.startswith("HTTP/1.1 408") and "--body-timeout-s" in answer, answer


def test_a_client_that_leaves_mid_body_is_no_server_error(server):
    before = _sample(httpx.get(server.url + "/metrics", headers=auth()).text, "latentguard_requests_total",
                     endpoint="/v1/moderations", status="500")
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        sock.sendall(b"POST /v1/moderations HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                     b"Authorization: Bearer " + API_KEY.encode() + b"\r\nContent-Length: 1000\r\n\r\n{\"input\": ")
        time.sleep(0.3)
    time.sleep(0.3)
    after = _sample(httpx.get(server.url + "/metrics", headers=auth()).text, "latentguard_requests_total",
                    endpoint="/v1/moderations", status="500")
    assert after == before


def test_keys_guard_the_api_and_the_admin_endpoint(server):
    url = server.url
    assert httpx.post(url + "/v1/moderations", json={"input": "a cat"}).status_code == 401
    wrong = httpx.post(url + "/v1/check", json={"prompts": "a cat"}, headers=auth("guess"))
    assert wrong.status_code == 401 and wrong.headers["www-authenticate"] == "Bearer"
    assert httpx.get(url + "/v1/blacklist").status_code == 401
    listed = httpx.get(url + "/v1/blacklist", headers=auth()).json()
    assert listed["categories"] == {"violence": ["knife", "gun", "bomb"], "gore": ["blood", "wound"]}
    assert listed["concepts"] == ["knife", "gun", "bomb", "blood", "wound"] and listed["scores_calibrated"] is False
    assert httpx.post(url + "/admin/reload", headers=auth()).status_code == 401  # the API key is not the admin key
    assert httpx.get(url + "/healthz").json() == {"status": "ok"}
    ready = httpx.get(url + "/readyz", headers=auth()).json()
    assert ready["status"] == "ready" and ready["concepts"] == 5 and "uncalibrated" in ready["scores_note"]
    checked = httpx.post(url + "/v1/check", json={"prompts": [PROMPTS[2]], "explain": True}, headers=auth()).json()
    assert checked["verdicts"][0]["prompt"] == PROMPTS[2] and checked["verdicts"][0]["evidence"]


# ----------------------------------------------------------------------------------- reload
def test_a_reload_under_load_answers_each_request_wholly_by_the_old_or_the_new_blacklist(server, files, encoder,
                                                                                         threshold, expected):
    (files / "reloaded.yaml").write_text(RELOADED, encoding="utf-8")
    old = expected
    new = {v.prompt: v for v in reference_guard(files, encoder, threshold, "reloaded.yaml").check(PROMPTS,
                                                                                                  explain=False)}
    bodies = [{"prompts": PROMPTS[i % 60 : i % 60 + 4]} for i in range(160)]
    generation = httpx.get(server.url + "/readyz", headers=auth()).json()["generation"]

    async def load_and_reload():
        task = asyncio.create_task(_load(server.url, bodies, "/v1/check", 16))
        await asyncio.sleep(0.3)
        (files / "blacklist.yaml").write_text(RELOADED, encoding="utf-8")
        async with httpx.AsyncClient(timeout=60) as client:
            reloaded = await client.post(server.url + "/admin/reload", headers=auth(ADMIN_KEY))
        return reloaded, await task

    try:
        reloaded, responses = asyncio.run(load_and_reload())
        assert reloaded.status_code == 200, reloaded.text
        assert reloaded.json()["generation"] == generation + 1 and reloaded.json()["concepts"] == 8
        seen = set()
        for body, r in zip(bodies, responses):
            assert r.status_code == 200, r.text
            data = r.json()
            reference = {generation: old, generation + 1: new}[data["generation"]]
            seen.add(data["generation"])
            for prompt, verdict in zip(body["prompts"], data["verdicts"]):
                same_verdict(verdict, reference[prompt], moderation=False)
        assert seen == {generation, generation + 1}, seen  # the swap happened mid-load
        # a bad file: the reload answers the one-line error and the old blacklist keeps serving
        (files / "blacklist.yaml").write_text("violence: knife\n", encoding="utf-8")
        bad = httpx.post(server.url + "/admin/reload", headers=auth(ADMIN_KEY), timeout=60)
        assert bad.status_code == 500 and "group 'violence' must be a list" in bad.json()["error"]["message"]
        assert f"still serving generation {generation + 1}" in bad.json()["error"]["message"]
        assert httpx.get(server.url + "/readyz", headers=auth()).json()["last_reload"]["ok"] is False
        served = httpx.post(server.url + "/v1/moderations", json={"input": PROMPTS[0]}, headers=auth()).json()
        assert set(served["results"][0]["categories"]) == {"violence", "gore", "drugs"}
    finally:  # SIGHUP reloads too: back to the first blacklist for the other tests
        (files / "blacklist.yaml").write_text(BLACKLIST, encoding="utf-8")
        server.proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 60
        while httpx.get(server.url + "/readyz", headers=auth()).json()["generation"] != generation + 2:
            assert time.monotonic() < deadline, "SIGHUP did not reload"
            time.sleep(0.1)
    assert httpx.get(server.url + "/readyz", headers=auth()).json()["concepts"] == 5
    metrics = httpx.get(server.url + "/metrics", headers=auth()).text
    assert _sample(metrics, "latentguard_reloads_total", outcome="ok") == 2
    assert _sample(metrics, "latentguard_reloads_total", outcome="failed") == 1


# ------------------------------------------------------------------------- start and stop
def test_sigterm_answers_every_queued_request_then_exits_0(fleet, expected):
    served = fleet["drain"]
    served.wait_ready()
    bodies = [{"input": [PROMPTS[i], PROMPTS[i + 20]]} for i in range(12)]

    async def load_then_terminate():
        task = asyncio.create_task(_load(served.url, bodies, "/v1/moderations", 12))
        async with httpx.AsyncClient(timeout=10) as client:  # wait until all 24 prompts are queued
            async def depth() -> float:
                return _sample((await client.get(served.url + "/metrics", headers=auth())).text,
                               "latentguard_queue_depth")
            while await depth() < 24:
                await asyncio.sleep(0.02)
        served.proc.send_signal(signal.SIGTERM)
        return await task

    responses = asyncio.run(load_then_terminate())
    for body, r in zip(bodies, responses):
        assert r.status_code == 200
        for prompt, result in zip(body["input"], r.json()["results"]):
            same_verdict(result, expected[prompt], moderation=True)
    assert served.proc.wait(timeout=60) == 0
    assert "Application shutdown complete" in served.proc.stderr.read()


FEW_FDS = 256


def _few_fds() -> None:
    import resource

    resource.setrlimit(resource.RLIMIT_NOFILE, (FEW_FDS, FEW_FDS))


def test_idle_connections_past_the_descriptor_limit_never_lock_a_keyed_client_out(fleet):
    served = fleet["fds"]
    served.wait_ready()
    idle = []
    try:
        for _ in range(FEW_FDS + 60):  # more sockets than the server has descriptors, none sending a byte
            idle.append(socket.create_connection(("127.0.0.1", served.port), timeout=10))
        slow = socket.create_connection(("127.0.0.1", served.port), timeout=10)
        idle.append(slow)
        slow.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n")  # a head that never ends
        started = time.monotonic()
        r = httpx.post(served.url + "/v1/check", json={"prompts": "a cat"}, headers=auth(), timeout=15)
        assert r.status_code == 200 and r.json()["verdicts"][0]["prompt"] == "a cat"
        assert time.monotonic() - started < 5  # room was made at once, not when the head timeout freed some
        for sock in idle:  # each one is closed by the server: evicted for room, or its head timed out
            try:
                slow.sendall(b"X-Slow: 1\r\n") if sock is slow else None
                assert sock.recv(1024) == b""
            except ConnectionResetError:
                pass
        assert httpx.get(served.url + "/healthz", timeout=5).status_code == 200
    finally:
        for sock in idle:
            sock.close()


def test_weights_that_cannot_judge_never_serve(fleet):
    served = fleet["nan"]
    try:
        served.proc.wait(timeout=120)
    except subprocess.TimeoutExpired:  # it serves after all: then no request may be judged
        for body in ({"input": "a cat"}, {"input": ["a knife", "a cake"]}):
            r = httpx.post(served.url + "/v1/moderations", json=body)
            assert r.status_code >= 500 and "results" not in r.json()
        return
    err = served.proc.stderr.read().strip()
    assert served.proc.returncode == 2 and "Traceback" not in err, err
    assert err.splitlines()[-1].startswith("error: ") and ("nan.pth" in err or "not finite" in err), err


def test_a_server_others_can_reach_needs_a_key(files, threshold, capsys):
    from latentguard.cli import serve as serve_cli

    argv = [*guard_args(files, files / "encoder", threshold), "--host", "0.0.0.0"]
    assert serve_cli.main(argv) == 2
    assert "refusing to serve on 0.0.0.0, which other machines can reach, without an API key" in capsys.readouterr().err
    (files / "empty.key").write_text("\n# none yet\n", encoding="utf-8")
    assert serve_cli.main([*argv, "--api-key-file", str(files / "empty.key")]) == 2
    assert "no key found" in capsys.readouterr().err
