"""Pipeline-guard pieces that need no diffusers pipeline: the shared encoder, one-pass scoring, refusals.

Everything that runs a pipeline is tested against the real diffusers classes in
tests/test_pipeline_diffusers.py.
"""
from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from conftest import tiny_clip_text_model

from latentguard.errors import LatentGuardError
from latentguard.guard import LatentGuard
from latentguard.model import EmbeddingMappingLayer
from latentguard.pipeline import encoder_from_pipeline, guard_pipeline, text_arguments


def test_encoder_from_pipeline_leaves_the_pipeline_untouched(clip_tokenizer):
    text_encoder = tiny_clip_text_model(seed=0).to(torch.bfloat16)
    encoder = encoder_from_pipeline(SimpleNamespace(text_encoder=text_encoder, tokenizer=clip_tokenizer))
    assert encoder.model is text_encoder and encoder.tokenizer is clip_tokenizer
    assert next(text_encoder.parameters()).dtype == torch.bfloat16 and encoder.dtype == torch.bfloat16
    with pytest.raises(LatentGuardError, match="text_encoder"):
        encoder_from_pipeline(SimpleNamespace(text_encoder=None, tokenizer=None))


def test_check_embeddings_agrees_with_check(clip_tokenizer):
    encoder = encoder_from_pipeline(SimpleNamespace(text_encoder=tiny_clip_text_model(seed=0),
                                                    tokenizer=clip_tokenizer))
    torch.manual_seed(0)
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


def test_callables_the_guard_cannot_read_are_refused(tiny_encoder):
    guard = SimpleNamespace(check=lambda prompts: [], encoder=tiny_encoder)

    def no_prompt(text, steps=30):
        return text

    def star_args(prompt, *rest):
        return prompt

    def extra_text(prompt, style_text=None):
        return prompt

    for pipe, message in [(no_prompt, "takes no 'prompt'"), (star_args, r"\*args"), (extra_text, "style_text")]:
        with pytest.raises(LatentGuardError, match=message) as info:
            guard_pipeline(pipe, guard)
        assert "\n" not in str(info.value)
    assert text_arguments(lambda prompt, prompt_2=None, negative_prompt=None, num_images_per_prompt=1: None) == \
        ["prompt", "prompt_2"]
    with pytest.raises(LatentGuardError, match="on_unsafe"):
        guard_pipeline(lambda prompt: prompt, guard, on_unsafe="ignore")
    guarded = guard_pipeline(lambda prompt: prompt, guard, on_unsafe="skip")
    with pytest.raises(LatentGuardError, match="on_unsafe"):
        guarded.on_unsafe = "ignore"  # checked when set too
    assert guarded.on_unsafe == "skip"


def test_a_missing_verdict_refuses_the_call(tiny_encoder):
    calls = []

    def pipe(prompt=None, negative_prompt=None):
        calls.append(prompt)

    dropping = SimpleNamespace(check=lambda prompts: [], encoder=tiny_encoder)  # no verdict at all
    with pytest.raises(LatentGuardError, match="0 verdicts for 2 texts"):
        guard_pipeline(pipe, dropping)(["a", "b"])
    with pytest.raises(LatentGuardError, match="needs prompt"):
        guard_pipeline(pipe, dropping)(negative_prompt="x")
    assert calls == []


@pytest.mark.parametrize("unsafe", [None, 0])
def test_a_verdict_without_a_bool_unsafe_refuses_the_call(tiny_encoder, unsafe):
    """A guard of its own encoder (no one-pass path) whose verdict says ``unsafe=None`` must not read as safe."""
    calls = []

    def pipe(prompt=None, negative_prompt=None):
        calls.append(prompt)

    vague = SimpleNamespace(encoder=tiny_encoder, check=lambda prompts: [
        SimpleNamespace(unsafe=unsafe, score=0.0, concept="gun") for _ in prompts])
    with pytest.raises(LatentGuardError, match="bool 'unsafe'"):
        guard_pipeline(pipe, vague)("a gun")
    assert calls == []
