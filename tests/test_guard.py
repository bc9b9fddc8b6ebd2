"""LatentGuard (public API) and the concept blacklist: scoring, decisions, evidence, caching."""
from __future__ import annotations

import json
import random

import numpy as np
import pytest
import reference
import torch

from latentguard.data.blacklist import load_blacklist, load_concepts
from latentguard.encoders import TextEncoder
from latentguard.errors import LatentGuardError
from latentguard.guard import LatentGuard, Verdict
from latentguard.model import EmbeddingMappingLayer
from latentguard.scoring.evidence import POOLED, merge_pieces
from latentguard.store.concept_cache import cached_concept_vectors, concept_cache_path

CONCEPTS = ["knife", "blood", "gun", "bomb", "poison", "zorblaxian"]  # the last one is 3 BPE pieces
SAFE_WORDS = ["flower", "book", "cake", "balloon", "guitar", "kite", "lamp", "apple"]
FILLER = ("a the photo of old man woman child holding near river park street table night red green big "
          "small house tree car sky with on in and painting").split()


class LocalEncoder(TextEncoder):
    """A transparent test encoder: token row = a fixed random vector of that token, pooled row = mean of words.

    A random CLIP mixes every earlier token into each state, so which token "drove" a match has no
    ground truth there; here only the concept's own token rows carry the concept, so the evidence
    the guard reports can be checked exactly. Uses the real CLIP tokenizer and the base-class layout.
    """

    family = "local-test"

    def __init__(self, tokenizer, hidden: int = 32, seed: int = 0) -> None:
        self.table = torch.randn(49408, hidden, generator=torch.Generator().manual_seed(seed))
        self.tokenizer, self.hidden_size, self.name = tokenizer, hidden, f"local-{seed}"
        self.device, self.dtype = torch.device("cpu"), torch.float32

    def _fingerprint(self) -> str:
        return self.name

    def tokenize(self, texts):
        return self.tokenizer(list(texts), padding="max_length", max_length=77, truncation=True, return_tensors="pt")

    def _hidden_states(self, texts):
        ids = self.tokenize(texts)["input_ids"]
        states = self.table[ids]
        eos = ids.argmax(-1)
        words = (ids < 49406).unsqueeze(-1).float()
        states[torch.arange(len(ids)), eos] = (states * words).sum(1) / words.sum(1).clamp(min=1)
        return states, eos

    def token_strings(self, text):
        return self.tokenizer.convert_ids_to_tokens(self.tokenize([text])["input_ids"][0].tolist())


class CountingEncoder:
    """Wraps an encoder and records every concept text it is asked to encode."""

    def __init__(self, inner) -> None:
        self.inner, self.encoded_concepts = inner, []

    def encode_concepts(self, concepts, batch_size=64):
        self.encoded_concepts.extend(concepts)
        return self.inner.encode_concepts(concepts, batch_size=batch_size)

    def __getattr__(self, name):
        return getattr(self.inner, name)


def _prompt(rng: random.Random, word: str) -> str:
    words = [rng.choice(FILLER) for _ in range(rng.randint(2, 8))]
    words.insert(rng.randint(0, len(words)), word)
    return " ".join(words)


@pytest.fixture(scope="module")
def local_encoder(clip_tokenizer):
    return LocalEncoder(clip_tokenizer)


@pytest.fixture(scope="module")
def trained(local_encoder):
    """A mapping layer trained (the released main.py loss, via logit_matrix) to find CONCEPTS in prompts: ~1 s."""
    rng = random.Random(0)
    unsafe = {c: local_encoder.encode([_prompt(rng, c) for _ in range(20)]) for c in CONCEPTS}
    safe = local_encoder.encode([_prompt(rng, rng.choice(SAFE_WORDS)) for _ in range(60)])
    concepts = local_encoder.encode_concepts(CONCEPTS)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matrices: threads only add contention on a shared machine
    try:
        torch.manual_seed(0)
        model = EmbeddingMappingLayer(local_encoder.hidden_size, num_heads=4, head_dim=8, out_dim=16)
        opt = torch.optim.Adam(model.parameters(), lr=1e-2)
        n, labels, ce = len(CONCEPTS), torch.arange(len(CONCEPTS)), torch.nn.functional.cross_entropy
        for _ in range(200):
            u_emb = torch.stack([unsafe[c][rng.randrange(20)] for c in CONCEPTS])
            s_emb = safe[torch.randint(len(safe), (n,))]
            u, s = model.logit_matrix(u_emb, concepts), model.logit_matrix(s_emb, concepts)
            loss = (ce(torch.cat([u, s.max(1).values.unsqueeze(0).expand(n, n)], 1), labels)
                    + ce(torch.cat([u.T, s.T], 1), labels))
            opt.zero_grad()
            loss.backward()
            opt.step()
    finally:
        torch.set_num_threads(threads)
    return model.eval()


@pytest.fixture
def guard(trained, local_encoder, tmp_path, monkeypatch):
    monkeypatch.setenv("LATENTGUARD_HOME", str(tmp_path / "home"))
    return LatentGuard(trained, local_encoder, CONCEPTS, threshold=7.0)


@pytest.fixture
def held_out():
    rng = random.Random(123)
    unsafe = [(c, _prompt(rng, c)) for c in CONCEPTS for _ in range(4)]
    safe = [_prompt(rng, w) for w in SAFE_WORDS]
    return unsafe, safe


# -------------------------------------------------------------------------------- decisions
def test_trained_guard_separates_and_explains(guard, held_out):
    unsafe, safe = held_out
    verdicts = guard.check([p for _, p in unsafe] + safe)
    assert all(isinstance(v, Verdict) for v in verdicts)
    for (concept, prompt), v in zip(unsafe, verdicts):
        assert v.unsafe and v.concept == concept and v.threshold == 7.0
        assert v.top_concepts[0] == (concept, pytest.approx(v.score))
        # evidence: the concept's own word (BPE pieces merged: "zorblaxian" is zor+bla+xian) leads
        assert v.evidence[0][0] == concept, (prompt, v.evidence)
        assert 0.2 < v.evidence[0][1] <= 1 and sum(w for _, w in v.evidence) <= 1 + 1e-6
        words = set(prompt.split()) | {POOLED}
        assert {w for w, _ in v.evidence} <= words  # no <|startoftext|>, <|endoftext|> or padding
        assert [w for _, w in v.evidence] == sorted((w for _, w in v.evidence), reverse=True)
        assert len(v.evidence) == guard.top_k and len(v.top_concepts) == guard.top_k
    for v in verdicts[len(unsafe):]:
        assert not v.unsafe and v.score < 7.0
    record = json.loads(json.dumps(verdicts[0].to_dict()))
    assert record["concept"] == unsafe[0][0] and record["evidence"][0][0] == unsafe[0][0]


def test_evidence_covers_every_word_once(guard):
    guard.top_k = 100
    prompt = "Zorblaxian near the river-bank by the river"  # one clause: one form, the prompt itself
    v = guard.check([prompt])[0]
    words = [w for w, _ in v.evidence]
    assert sorted(words) == sorted({"zorblaxian", "near", "the", "river", "-", "bank", "by", POOLED})  # lower-cased
    assert sum(w for _, w in v.evidence) == pytest.approx(1.0)
    assert v.evidence[0][0] == "zorblaxian"


def _one_form(prompts: list[str]) -> list[str]:
    """The prompts the defences score as written only ("big knife river river ..." is also read "river" once)."""
    from latentguard.data.defences import forms

    return [p for p in prompts if forms(p) == [p]]


def test_scores_logits_and_reference_agree(guard, local_encoder, held_out):
    prompts = _one_form([p for _, p in held_out[0]])[:7] + _one_form(held_out[1])[:3]
    logits = guard.logits(prompts)
    assert logits.shape == (10, len(CONCEPTS)) and logits.dtype == np.float32
    np.testing.assert_array_equal(guard.scores(prompts), logits.max(axis=1))
    ref = reference.repeat_per_concept_scores(guard.model.state_dict(), local_encoder.encode(prompts),
                                              local_encoder.encode_concepts(CONCEPTS), num_heads=4)
    np.testing.assert_allclose(logits, ref.numpy(), atol=1e-4, rtol=0)
    verdicts = guard.check(prompts, explain=False)
    np.testing.assert_allclose([v.score for v in verdicts], logits.max(axis=1), rtol=0, atol=1e-6)
    assert [v.unsafe for v in verdicts] == list(logits.max(axis=1) >= guard.threshold)
    assert all(v.evidence == [] for v in verdicts)
    # batching does not change anything
    small = LatentGuard(guard.model, local_encoder, CONCEPTS, threshold=7.0, batch_size=3)
    np.testing.assert_allclose(small.logits(prompts), logits, atol=1e-5, rtol=0)
    # a single string is one prompt; an empty list gives empty results
    assert guard.scores(prompts[0]).shape == (1,)
    assert guard.logits([]).shape == (0, len(CONCEPTS)) and guard.check([]) == []


def test_threshold_is_an_attribute(guard, held_out):
    prompt = held_out[0][0][1]
    score = float(guard.scores([prompt])[0])
    guard.threshold = score + 0.01
    assert not guard.check([prompt])[0].unsafe
    guard.threshold = score - 0.01
    assert guard.check([prompt])[0].unsafe


def test_per_concept_thresholds(guard, held_out):
    knife = [p for c, p in held_out[0] if c == "knife"]
    blood = [p for c, p in held_out[0] if c == "blood"]
    both = [f"{knife[0]} and blood"]
    top = 0.999 * float(guard.model.tempr)  # below the largest logit the weights can give (tempr: refused)
    with pytest.raises(LatentGuardError, match="above the largest logit"):
        guard.concept_thresholds = {"knife": 1e6}
    guard.concept_thresholds = {"knife": top}
    v_knife = guard.check(knife)
    assert not any(v.unsafe for v in v_knife)
    assert all(v.concept == "knife" and v.threshold == top for v in v_knife)  # safe: the top concept is named
    assert all(guard.check(blood)[i].unsafe for i in range(len(blood)))       # others keep the global one
    v = guard.check(both)[0]
    assert v.unsafe and v.concept == "blood" and v.threshold == 7.0  # the firing concept decides
    # a low per-concept threshold fires a concept that the global threshold would not
    safe_prompt = held_out[1][0]
    logits = guard.logits([safe_prompt])[0]
    weakest = CONCEPTS[int(np.argmin(logits))]
    guard.concept_thresholds = {weakest: float(logits.min()) - 1}
    v = guard.check([safe_prompt])[0]
    assert v.unsafe and v.concept == weakest and v.score == pytest.approx(float(logits.max()))
    with pytest.raises(LatentGuardError, match="not on the blacklist: knif"):
        guard.concept_thresholds = {"knif": 3.0}
    with pytest.raises(LatentGuardError, match="finite number"):
        guard.concept_thresholds = {"knife": "high"}


def test_allowlist_removes_phrases_before_scoring(guard, held_out):
    knife_prompt = next(p for c, p in held_out[0] if c == "knife")
    assert guard.check([knife_prompt])[0].unsafe
    guard.allowlist = ["Knife"]  # case-insensitive
    assert guard.prepare(knife_prompt) == " ".join(w for w in knife_prompt.split() if w != "knife")
    assert not guard.check([knife_prompt])[0].unsafe
    assert not guard.check(["KNIFE"])[0].unsafe          # nothing left but the allowlisted phrase
    v = guard.check([knife_prompt + " and blood"])[0]   # the allowlist cannot smuggle other concepts
    assert v.unsafe and v.concept == "blood"
    assert guard.check([knife_prompt])[0].prompt == knife_prompt  # the verdict shows the original
    guard.allowlist = ["kni", "red knife set"]            # whole words / phrases only
    assert guard.prepare("a knife") == "a knife"
    assert guard.prepare("a Red  Knife set, on sale") == "a , on sale"
    assert guard.check(["a knife"])[0].unsafe
    with pytest.raises(LatentGuardError, match="allowlist entry 0"):
        guard.allowlist = ["  "]
    for bad in (None, 5, b"knife", {"knife": 1}):  # a TypeError traceback for None (a hostile pass), keys for a dict
        with pytest.raises(LatentGuardError, match="allowlist must be a list of phrases"):
            guard.allowlist = bad
    assert guard.allowlist == ["kni", "red knife set"]  # a refused value changes nothing


# ----------------------------------------------------------------------- blacklist changes
def test_add_and_remove_concepts_encode_only_new_ones(trained, local_encoder, tmp_path, monkeypatch):
    monkeypatch.setenv("LATENTGUARD_HOME", str(tmp_path / "home"))
    counting = CountingEncoder(local_encoder)
    guard = LatentGuard(trained, counting, ["knife", "blood"], threshold=7.0)
    assert counting.encoded_concepts == ["knife", "blood"]
    gun_prompt = "a man holding a gun near the river"
    assert not guard.check([gun_prompt])[0].unsafe
    assert guard.add_concepts(["gun", "knife"]) == ["gun"]  # knife is already there
    assert counting.encoded_concepts == ["knife", "blood", "gun"]
    v = guard.check([gun_prompt])[0]
    assert v.unsafe and v.concept == "gun" and guard.concepts == ["knife", "blood", "gun"]
    assert guard.remove_concepts("gun") == ["gun"]
    assert not guard.check([gun_prompt])[0].unsafe and guard.concepts == ["knife", "blood"]
    guard.add_concepts("gun")  # back again: from the disk cache, encoded once more only by its spot check
    assert counting.encoded_concepts == ["knife", "blood", "gun", "gun"]
    np.testing.assert_allclose(guard.logits([gun_prompt])[0, 2], v.score, atol=1e-5)
    with pytest.raises(LatentGuardError, match="not on the blacklist: sword"):
        guard.remove_concepts(["sword"])
    with pytest.raises(LatentGuardError, match="at least one"):
        guard.remove_concepts(guard.concepts)
    # a new guard over the same encoder and an edited blacklist encodes the new concept and the cache's spot check
    # (the first and last cached concept and KNOWN_SAMPLE more), never the whole list again
    from latentguard.store.concept_cache import KNOWN_SAMPLE

    many = ["gun", "blood", "sword", "axe", "rifle", "poison", "arson", "grenade", "noose", "whip"]
    guard.add_concepts(many)
    counting2 = CountingEncoder(local_encoder)
    LatentGuard(trained, counting2, [*many, "bomb"], threshold=7.0)
    assert counting2.encoded_concepts[-1] == "bomb" and "bomb" not in counting2.encoded_concepts[:-1]
    checked = counting2.encoded_concepts[:-1]
    assert len(checked) <= KNOWN_SAMPLE + 2 and {"gun", "whip"} <= set(checked) <= set(many), checked


def test_concept_cache_is_per_encoder_and_exact(local_encoder, clip_tokenizer, tmp_path, monkeypatch):
    monkeypatch.setenv("LATENTGUARD_HOME", str(tmp_path / "home"))
    first = cached_concept_vectors(local_encoder, ["knife", "blood"])
    torch.testing.assert_close(first, local_encoder.encode_concepts(["knife", "blood"]), rtol=0, atol=0)
    path = concept_cache_path(local_encoder.identity)
    assert path.is_file() and path.parent == tmp_path / "home" / "concepts"
    blob = torch.load(path, weights_only=True)
    assert blob["concepts"] == ["knife", "blood"] and blob["identity"] == local_encoder.identity
    other = CountingEncoder(LocalEncoder(clip_tokenizer, seed=1))  # other weights: its own cache
    vectors = cached_concept_vectors(other, ["blood", "knife"])
    assert other.encoded_concepts == ["blood", "knife"] and not torch.allclose(vectors[1], first[0])
    assert concept_cache_path(other.identity) != path
    # order and duplicates follow the request
    again = cached_concept_vectors(CountingEncoder(local_encoder), ["blood", "knife", "blood"])
    torch.testing.assert_close(again, first[[1, 0, 1]], rtol=0, atol=0)
    # a damaged cache is a cache miss, then rebuilt
    path.write_bytes(b"garbage")
    counting = CountingEncoder(local_encoder)
    with pytest.warns(UserWarning, match="unreadable concept cache"):
        rebuilt = cached_concept_vectors(counting, ["knife"])
    assert counting.encoded_concepts == ["knife"]
    torch.testing.assert_close(rebuilt[0], first[0], rtol=0, atol=0)
    assert torch.load(path, weights_only=True)["concepts"] == ["knife"]


# ------------------------------------------------------------------------ from_pretrained
def _released_checkpoint(path, seed=0):
    torch.manual_seed(seed)
    model = EmbeddingMappingLayer()
    torch.save(model.state_dict(), path)
    return model.state_dict()


def test_from_pretrained_with_tiny_clip(tiny_encoder_dir, tiny_encoder, tmp_path):
    state = _released_checkpoint(tmp_path / "ckpt.pth")
    concepts = ["knife", "blood", "gun"]
    guard = LatentGuard.from_pretrained(tmp_path / "ckpt.pth", str(tiny_encoder_dir), concepts, threshold=0.5,
                                        device="cpu", top_k=2)
    prompts = ["a photo of a knife", "a red balloon in the sky", "blood on the floor"]
    logits = guard.logits(prompts)
    ref = reference.repeat_per_concept_scores(state, tiny_encoder.encode(prompts),
                                              tiny_encoder.encode_concepts(concepts))
    np.testing.assert_allclose(logits, ref.numpy(), atol=1e-4, rtol=0)
    verdicts = guard.check(prompts)
    assert [v.unsafe for v in verdicts] == list(logits.max(1) >= 0.5)
    for v in verdicts:  # evidence is made of the prompt's words (and the pooled row) even untrained
        assert {w for w, _ in v.evidence} <= set(v.prompt.split()) | {POOLED} and len(v.evidence) == 2
    # an encoder object works too, and so does a concepts file with per-concept thresholds
    blacklist = tmp_path / "blacklist.yaml"
    blacklist.write_text("concepts:\n  violence: [knife, gun]\n  gore: [blood]\nthresholds:\n  gun: 3.5\n")
    guard2 = LatentGuard.from_pretrained(tmp_path / "ckpt.pth", tiny_encoder, blacklist,
                                         concept_thresholds={"knife": 1}, threshold="released")
    assert guard2.concepts == ["knife", "gun", "blood"]
    assert guard2.concept_thresholds == {"gun": 3.5, "knife": 1.0}
    np.testing.assert_allclose(guard2.logits(prompts), logits[:, [0, 2, 1]], atol=1e-5, rtol=0)


def test_from_pretrained_default_concepts_come_from_copro(tiny_encoder, synthetic_copro, tmp_path):
    _released_checkpoint(tmp_path / "ckpt.pth")
    guard = LatentGuard.from_pretrained(tmp_path / "ckpt.pth", tiny_encoder, dataset=synthetic_copro,
                                        threshold="released")
    assert guard.concepts == load_concepts(None, dataset=synthetic_copro)
    assert guard.threshold == 9.0131 and len(guard.concepts) == 12


def test_width_mismatch_is_a_clear_error(local_encoder, tmp_path):
    _released_checkpoint(tmp_path / "ckpt.pth")
    with pytest.raises(LatentGuardError, match=r"ckpt\.pth.*encoder width 768.*hidden size is 32"):
        LatentGuard.from_pretrained(tmp_path / "ckpt.pth", local_encoder, ["knife"], threshold=1.0)
    with pytest.raises(LatentGuardError, match="encoder width 768"):
        LatentGuard(EmbeddingMappingLayer(), local_encoder, ["knife"])


def test_bad_arguments(trained, local_encoder):
    with pytest.raises(LatentGuardError, match="empty"):
        LatentGuard(trained, local_encoder, [])
    with pytest.raises(LatentGuardError, match="single string"):
        LatentGuard(trained, local_encoder, "knife")
    with pytest.raises(LatentGuardError, match="batch size"):
        LatentGuard(trained, local_encoder, ["knife"], batch_size=0)
    with pytest.raises(LatentGuardError, match="threshold must be a finite number"):
        LatentGuard(trained, local_encoder, ["knife"], threshold=float("nan"))


# -------------------------------------------------------------------------- concept files
def test_concepts_text_file(tmp_path):
    path = tmp_path / "c.txt"
    path.write_text("# my blacklist\nknife\n\n  blood  \nknife\nsharp blade\n", encoding="utf-8")
    assert load_concepts(path) == ["knife", "blood", "sharp blade"]
    (tmp_path / "empty.txt").write_text("\n# only a comment\n")
    with pytest.raises(LatentGuardError, match="only comments"):
        load_concepts(tmp_path / "empty.txt")
    (tmp_path / "bad.txt").write_bytes(b"knife\nbl\xffood\n")
    with pytest.raises(LatentGuardError, match=r"bad\.txt: line 2 is not valid UTF-8"):
        load_concepts(tmp_path / "bad.txt")
    with pytest.raises(LatentGuardError, match="concepts file not found"):
        load_concepts(tmp_path / "nope.txt")


@pytest.mark.parametrize("concept", ["\u200b", "\u200b\u200c", "\u00ad", "\u0301", "\ue000", "\u2060 \ufeff"])
def test_a_concept_without_a_visible_character_is_refused(concept, tmp_path):
    """"\u200b" alone was accepted as a concept (add_concepts, a --concepts file): the encoder reads it as
    nothing, it matched every prompt and raised mini's benign scores from -4.25 to 0.20 (a hostile pass)."""
    from latentguard.data.blacklist import validate_concepts

    with pytest.raises(LatentGuardError, match="entry 1 .* has no visible character"):
        validate_concepts(["knife", concept])
    (tmp_path / "c.txt").write_text(f"knife\n{concept}\n", encoding="utf-8")
    with pytest.raises(LatentGuardError, match="has no visible character"):
        validate_concepts(load_concepts(tmp_path / "c.txt"), str(tmp_path / "c.txt"))
    assert validate_concepts(["knife", "a\u200bb", "🔪"]) == ["knife", "a\u200bb", "🔪"]


@pytest.mark.parametrize("text,concepts,thresholds", [
    ("- knife\n- blood\n", ["knife", "blood"], {}),
    ("concepts: [knife, blood, knife]\n", ["knife", "blood"], {}),
    ("violence: [knife, gun]\ndrugs:\n  - cocaine\n", ["knife", "gun", "cocaine"], {}),
    ("concepts:\n  a: [knife]\n  b: [blood]\nthresholds: {blood: 8}\n", ["knife", "blood"], {"blood": 8.0}),
])
def test_concepts_yaml_forms(tmp_path, text, concepts, thresholds):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    blacklist = load_blacklist(path)
    assert blacklist.concepts == concepts and blacklist.thresholds == thresholds


@pytest.mark.parametrize("text,pattern", [
    ("- knife\n- [unclosed\n", r"not valid YAML at line \d"),
    ("just a string\n", "must be a list of concepts or a mapping of groups"),
    ("- knife\n- {a: 1}\n", r"list\[1\] must be a non-empty concept text"),
    ("violence: knife\n", "group 'violence' must be a list"),
    ("concepts: [knife]\nthreshold: {knife: 3}\n", "unknown key"),
    ("concepts: [knife]\nthresholds: {gun: 3}\n", "not in the list: gun"),
    ("concepts: [knife]\nthresholds: {knife: high}\n", r"thresholds\['knife'\] must be a number"),
    ("[]\n", "no concepts found"),
])
def test_concepts_yaml_errors_name_the_file(tmp_path, text, pattern):
    path = tmp_path / "bad.yml"
    path.write_text(text)
    with pytest.raises(LatentGuardError, match=pattern) as info:
        load_concepts(path)
    assert "bad.yml" in str(info.value)


def test_merge_pieces_styles():
    assert merge_pieces([("kni", 0.1), ("fe</w>", 0.2), ("a</w>", 0.3)]) == [("knife", pytest.approx(0.3)), ("a", 0.3)]
    assert merge_pieces([("kni", 0.1), ("##fe", 0.2), ("a", 0.3)])[0] == ("knife", pytest.approx(0.3))
    assert merge_pieces([("▁kni", 0.1), ("fe", 0.2), ("▁a", 0.3)])[0] == ("knife", pytest.approx(0.3))
    assert merge_pieces([("knife", 0.1), ("a", 0.2)]) == [("knife", 0.1), ("a", 0.2)]


def test_check_embeddings_matches_check(guard, local_encoder, held_out):
    prompts = _one_form([p for _, p in held_out[0]])[:5] + _one_form(held_out[1])[:2]
    guard.allowlist = ["knife"]
    counting = CountingEncoder(local_encoder)
    counting.encode_calls = []
    counting.encode = lambda texts, batch_size=64: (counting.encode_calls.append(list(texts))
                                                    or local_encoder.encode(texts, batch_size))
    guard.encoder = counting
    direct = guard.check(prompts)
    counting.encode_calls.clear()
    shared = guard.check_embeddings(prompts, local_encoder.encode(prompts))
    edited = [guard.prepare(p) for p in prompts if guard.prepare(p) != p]
    assert edited and counting.encode_calls == [edited]  # only allowlist-edited prompts are re-encoded
    for a, b in zip(direct, shared):
        assert (a.unsafe, a.concept, a.evidence) == (b.unsafe, b.concept, b.evidence)
        assert a.score == pytest.approx(b.score, abs=1e-5)
    with pytest.raises(LatentGuardError, match="one \\[rows, hidden\\] embedding per prompt"):
        guard.check_embeddings(prompts, local_encoder.encode(prompts[:2]))


def test_a_str_is_one_prompt_and_bytes_are_refused(guard, held_out):
    """A str passed where a list is expected is one prompt, never its characters; bytes say what to do."""
    unsafe, safe = held_out
    one = guard.calibrate(safe[0])
    both = guard.calibrate([safe[0]])
    assert one.n_safe == 1 and one.threshold == both.threshold
    assert guard.calibrate(safe, unsafe[0][1]).n_unsafe == 1
    for blob in (b"a knife", bytearray(b"a knife")):
        with pytest.raises(LatentGuardError, match=r"must be str, got (bytes|bytearray); decode them first"):
            guard.check(blob)
