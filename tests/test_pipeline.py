"""The pipeline hook: unsafe prompts are refused before the pipeline runs; safe ones are encoded once."""
from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from conftest import tiny_clip_text_model
from latentguard.errors import LatentGuardError
from latentguard.pipeline import GuardedPipeline, PromptBlocked, encoder_from_pipeline, guard_pipeline


class FakePipeline:
    """A diffusers-like text-to-image pipeline: records calls, encodes text itself unless given prompt_embeds."""

    def __init__(self, text_encoder, tokenizer):
        self.text_encoder = text_encoder
        self.tokenizer = tokenizer
        self.calls: list[dict] = []
        self.scheduler = "fake-scheduler"

    def __call__(self, prompt=None, negative_prompt=None, prompt_embeds=None, num_images_per_prompt=1, **kwargs):
        if prompt is not None and prompt_embeds is not None:
            raise ValueError("Cannot forward both `prompt` and `prompt_embeds`")  # as diffusers does
        if prompt_embeds is None:
            prompts = [prompt] if isinstance(prompt, str) else list(prompt)
            ids = self.tokenizer(prompts, padding="max_length", max_length=77, truncation=True,
                                 return_tensors="pt")["input_ids"]
            with torch.no_grad():
                prompt_embeds = self.text_encoder(input_ids=ids).last_hidden_state
        self.calls.append({"prompt": prompt, "negative_prompt": negative_prompt, "prompt_embeds": prompt_embeds,
                           "num_images_per_prompt": num_images_per_prompt, **kwargs})
        images = [f"image of row {i} #{k}" for i in range(prompt_embeds.shape[0]) for k in range(num_images_per_prompt)]
        return SimpleNamespace(images=images)


class PlainWordGuard:
    """A LatentGuard stand-in: unsafe when a blacklisted word occurs; encodes like the real one."""

    def __init__(self, encoder, words=("knife", "blood")):
        self.encoder = encoder
        self.words = words
        self.batch_size = 64
        self.checked: list[list[str]] = []
        self.embedded: list[torch.Tensor] = []

    def _verdicts(self, prompts):
        out = []
        for p in prompts:
            hit = next((w for w in self.words if w in p), None)
            out.append(SimpleNamespace(prompt=p, unsafe=hit is not None, score=10.0 if hit else 1.0,
                                       concept=hit or self.words[0], top_concepts=[]))
        return out

    def check(self, prompts):
        self.checked.append(list(prompts))
        self.encoder.encode(prompts)
        return self._verdicts(prompts)



class WordGuard(PlainWordGuard):
    """The same, also judging precomputed embeddings (the one-pass path)."""

    def check_embeddings(self, prompts, embeddings):
        assert embeddings.shape == (len(prompts), 78, self.encoder.hidden_size)
        self.embedded.append(embeddings)
        return self._verdicts(prompts)


@pytest.fixture
def pipe(clip_tokenizer):
    pipe = FakePipeline(tiny_clip_text_model(seed=0), clip_tokenizer)
    pipe.encoder_runs = 0

    def count(*_):
        pipe.encoder_runs += 1

    pipe.text_encoder.register_forward_hook(count)
    return pipe


def direct_embeds(pipe, prompts):
    ids = pipe.tokenizer(prompts, padding="max_length", max_length=77, truncation=True, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        return pipe.text_encoder(input_ids=ids).last_hidden_state


def test_unsafe_prompt_is_refused_before_the_pipeline_runs(pipe):
    guarded = guard_pipeline(pipe, WordGuard(encoder_from_pipeline(pipe)))
    result = guarded("a man holding a bloody knife", num_inference_steps=30)
    assert pipe.calls == []  # no denoising at all
    assert result.blocked and result.images is None and result.output is None and result.passed == []
    assert result.concept == "knife" and result.score == 10.0 and result.verdicts[0].unsafe
    assert pipe.encoder_runs == 1


def test_safe_prompt_passes_with_the_guards_embeddings(pipe):
    guard = WordGuard(encoder_from_pipeline(pipe))
    result = GuardedPipeline(pipe, guard)("a cat on a sofa", negative_prompt="blurry", guidance_scale=7.5)
    assert not result.blocked and result.concept is None and result.reused_embeddings
    assert len(pipe.calls) == 1 and pipe.calls[0]["prompt"] is None  # the text is not sent again
    assert pipe.encoder_runs == 1  # one text-encoder pass, shared by the guard and the pipeline
    expected = direct_embeds(pipe, ["a cat on a sofa"])
    torch.testing.assert_close(pipe.calls[0]["prompt_embeds"], expected, rtol=0, atol=0)
    torch.testing.assert_close(guard.embedded[0][:, 1:], expected, rtol=0, atol=0)
    assert pipe.calls[0]["negative_prompt"] == ["blurry"] and pipe.calls[0]["guidance_scale"] == 7.5
    assert result.images == ["image of row 0 #0"] and result.output.images == result.images


def test_batch_skip_generates_only_the_safe_prompts(pipe):
    guarded = guard_pipeline(pipe, WordGuard(encoder_from_pipeline(pipe)), on_unsafe="skip")
    prompts = ["a red car", "blood on the floor", "a green tree"]
    result = guarded(prompts, negative_prompt=["n0", "n1", "n2"], num_images_per_prompt=2)
    assert result.blocked and result.passed == [0, 2] and result.blocked_prompts == ["blood on the floor"]
    call = pipe.calls[0]
    assert call["negative_prompt"] == ["n0", "n2"] and pipe.encoder_runs == 1
    torch.testing.assert_close(call["prompt_embeds"], direct_embeds(pipe, ["a red car", "a green tree"]))
    assert result.images == [["image of row 0 #0", "image of row 0 #1"], None,
                             ["image of row 1 #0", "image of row 1 #1"]]


def test_batch_block_all_and_raise(pipe):
    prompts = ["a red car", "blood on the floor"]
    result = guard_pipeline(pipe, WordGuard(encoder_from_pipeline(pipe)))(prompts)
    assert result.blocked and pipe.calls == [] and [v.unsafe for v in result.verdicts] == [False, True]
    with pytest.raises(PromptBlocked, match="1 of 2 prompt.s. blocked.*'blood'") as info:
        guard_pipeline(pipe, WordGuard(encoder_from_pipeline(pipe)), on_unsafe="raise")(prompts)
    assert isinstance(info.value, LatentGuardError) and info.value.result.concept == "blood"
    assert pipe.calls == []
    # all safe: the whole batch goes through in one call
    result = guard_pipeline(pipe, WordGuard(encoder_from_pipeline(pipe)), on_unsafe="raise")(["a car", "a tree"])
    assert result.passed == [0, 1] and len(pipe.calls) == 1 and pipe.calls[0]["prompt_embeds"].shape[0] == 2


def test_no_reuse_when_the_conditioning_would_differ(pipe, tiny_encoder):
    # clip_skip makes SD condition on another layer: the pipeline must encode the text itself
    guard = WordGuard(encoder_from_pipeline(pipe))
    result = guard_pipeline(pipe, guard)("a cat", clip_skip=2)
    assert not result.reused_embeddings and pipe.calls[-1]["prompt"] == "a cat"
    assert pipe.calls[-1]["prompt_embeds"] is not None and guard.checked == [["a cat"]] and pipe.calls[-1]["clip_skip"] == 2
    # a guard with its own encoder (not the pipeline's) cannot hand over embeddings
    other = guard_pipeline(pipe, WordGuard(tiny_encoder))(["a cat", "a dog"])
    assert not other.reused_embeddings and pipe.calls[-1]["prompt"] == ["a cat", "a dog"]
    # nor can a guard without check_embeddings
    plain = guard_pipeline(pipe, PlainWordGuard(encoder_from_pipeline(pipe)))("a cat")
    assert not plain.reused_embeddings and pipe.calls[-1]["prompt"] == "a cat"


def test_bad_calls_are_refused(pipe):
    guarded = guard_pipeline(pipe, WordGuard(encoder_from_pipeline(pipe)))
    with pytest.raises(LatentGuardError, match="prompt text"):
        guarded(prompt_embeds=torch.zeros(1, 77, 768))
    with pytest.raises(LatentGuardError, match="negative prompts"):
        guarded(["a", "b"], negative_prompt=["x"])
    with pytest.raises(LatentGuardError, match="on_unsafe"):
        guard_pipeline(pipe, WordGuard(encoder_from_pipeline(pipe)), on_unsafe="ignore")
    assert pipe.calls == [] and guarded.scheduler == "fake-scheduler"  # other attributes are forwarded


def test_encoder_from_pipeline_leaves_the_pipeline_untouched(clip_tokenizer):
    text_encoder = tiny_clip_text_model(seed=0).to(torch.bfloat16)
    pipe = FakePipeline(text_encoder, clip_tokenizer)
    encoder = encoder_from_pipeline(pipe)
    assert encoder.model is text_encoder and encoder.tokenizer is clip_tokenizer
    assert next(text_encoder.parameters()).dtype == torch.bfloat16 and encoder.dtype == torch.bfloat16
    with pytest.raises(LatentGuardError, match="text_encoder"):
        encoder_from_pipeline(SimpleNamespace(text_encoder=None, tokenizer=None))


def test_with_a_real_latent_guard(pipe):
    from latentguard.guard import LatentGuard
    from latentguard.model import EmbeddingMappingLayer

    if not hasattr(LatentGuard, "check_embeddings"):
        pytest.skip("LatentGuard.check_embeddings is not there yet (see the guard.py patch)")
    torch.manual_seed(0)
    guard = LatentGuard(EmbeddingMappingLayer(), encoder_from_pipeline(pipe), ["knife", "blood", "gun"],
                        cache_concepts=False)
    prompts = ["a cat on a sofa", "a man holding a knife"]
    scores = guard.scores(prompts)
    guard.threshold = float(scores.mean())  # exactly one of the two is unsafe
    unsafe = int(scores.argmax())
    runs = pipe.encoder_runs
    blocked = guard_pipeline(pipe, guard)(prompts[unsafe])
    assert blocked.blocked and pipe.calls == [] and blocked.score == pytest.approx(float(scores[unsafe]), abs=1e-5)
    passed = guard_pipeline(pipe, guard)(prompts[1 - unsafe])
    assert not passed.blocked and passed.reused_embeddings and len(pipe.calls) == 1
    assert passed.verdicts[0].score == pytest.approx(float(scores[1 - unsafe]), abs=1e-5)
    torch.testing.assert_close(pipe.calls[0]["prompt_embeds"], direct_embeds(pipe, [prompts[1 - unsafe]]))
    assert pipe.encoder_runs - runs == 3  # one pass per guarded call (+1 for the direct reference)


def test_check_embeddings_agrees_with_check(pipe):
    from latentguard.guard import LatentGuard
    from latentguard.model import EmbeddingMappingLayer

    if not hasattr(LatentGuard, "check_embeddings"):
        pytest.skip("LatentGuard.check_embeddings is not there yet (see the guard.py patch)")
    torch.manual_seed(0)
    encoder = encoder_from_pipeline(pipe)
    guard = LatentGuard(EmbeddingMappingLayer(), encoder, ["knife", "blood", "gun"], cache_concepts=False,
                        allowlist=["kill bill"])
    prompts = ["a cat on a sofa", "kill bill poster with a knife", "blood"]
    direct = guard.check(prompts)
    shared = guard.check_embeddings(prompts, encoder.encode(prompts))  # the allowlisted one is re-encoded
    for a, b in zip(direct, shared):
        assert a.concept == b.concept and a.unsafe == b.unsafe and a.evidence == b.evidence
        assert a.score == pytest.approx(b.score, abs=1e-5)
    with pytest.raises(LatentGuardError, match="one .rows, hidden. embedding per prompt"):
        guard.check_embeddings(prompts, encoder.encode(prompts[:2]))
