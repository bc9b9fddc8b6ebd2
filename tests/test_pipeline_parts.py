"""Pipeline-guard pieces that need no diffusers pipeline: the shared encoder, one-pass scoring, refusals,
finding a pipeline's parts and tracing conditioning back to encoder outputs.

Everything that runs a diffusers pipeline is tested against the real classes in
tests/test_pipeline_diffusers.py, test_pipeline_boundary.py and test_pipeline_walk.py.
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
from latentguard.pipeline.parts import find_parts
from latentguard.pipeline.provenance import CHECKED, NEGATIVE, Provenance


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


class TinyPipeline:
    """Not diffusers: any callable holding a tokenizer and a text encoder module is watched the same way."""

    def __init__(self, tokenizer, text_encoder) -> None:
        self.tokenizer, self.text_encoder, self.calls = tokenizer, text_encoder, []

    def __call__(self, prompt=None, negative_prompt=None, style=None):
        texts = [prompt] if isinstance(prompt, str) else list(prompt)
        if style:
            texts = [f"{t}, {style}" for t in texts]
        ids = self.tokenizer(texts, padding="max_length", max_length=77, truncation=True, return_tensors="pt")
        self.calls.append(texts)
        return self.text_encoder(input_ids=ids.input_ids).last_hidden_state


@pytest.fixture
def tiny_pipe(clip_tokenizer):
    return TinyPipeline(clip_tokenizer, tiny_clip_text_model(hidden_size=32, seed=0))


def test_callables_the_guard_cannot_read_or_watch_are_refused(tiny_encoder, tiny_pipe):
    guard = SimpleNamespace(check=lambda prompts: [], encoder=tiny_encoder)

    def no_prompt(text, steps=30):
        return text

    def no_encoder(prompt, style_text=None):
        return prompt

    for pipe, message in [(no_prompt, "takes no 'prompt'"), (no_encoder, "no text encoder module the guard can watch")]:
        with pytest.raises(LatentGuardError, match=message) as info:
            guard_pipeline(pipe, guard)
        assert "\n" not in str(info.value)
    remote = SimpleNamespace(text_encoder=lambda ids: ids, tokenizer=tiny_pipe.tokenizer)  # an ONNX session, say
    with pytest.raises(LatentGuardError, match="component text_encoder .function. is not a torch module"):
        find_parts(remote)
    assert text_arguments(lambda prompt, prompt_2=None, negative_prompt=None, num_images_per_prompt=1: None) == \
        ["prompt", "prompt_2"]
    with pytest.raises(LatentGuardError, match="on_unsafe"):
        guard_pipeline(tiny_pipe, guard, on_unsafe="ignore")
    with pytest.raises(LatentGuardError, match="on_verdict must be callable"):
        guard_pipeline(tiny_pipe, guard, on_verdict="log.txt")
    guarded = guard_pipeline(tiny_pipe, guard, on_unsafe="skip")
    with pytest.raises(LatentGuardError, match="on_unsafe"):
        guarded.on_unsafe = "ignore"  # checked when set too
    assert guarded.on_unsafe == "skip"


def test_a_missing_verdict_refuses_the_call(tiny_encoder, tiny_pipe):
    dropping = SimpleNamespace(check=lambda prompts: [], encoder=tiny_encoder)  # no verdict at all
    with pytest.raises(LatentGuardError, match="0 verdicts for 2 texts"):
        guard_pipeline(tiny_pipe, dropping)(["a", "b"])
    with pytest.raises(LatentGuardError, match="needs prompt"):
        guard_pipeline(tiny_pipe, dropping)(negative_prompt="x")
    assert tiny_pipe.calls == []


@pytest.mark.parametrize("unsafe", [None, 0])
def test_a_verdict_without_a_bool_unsafe_refuses_the_call(tiny_encoder, tiny_pipe, unsafe):
    """A guard of its own encoder (no one-pass path) whose verdict says ``unsafe=None`` must not read as safe."""
    vague = SimpleNamespace(encoder=tiny_encoder, check=lambda prompts: [
        SimpleNamespace(unsafe=unsafe, score=0.0, concept="gun") for _ in prompts])
    with pytest.raises(LatentGuardError, match="bool 'unsafe'"):
        guard_pipeline(tiny_pipe, vague)("a gun")
    assert tiny_pipe.calls == []


def test_a_non_diffusers_pipeline_is_watched_at_its_encoder(tiny_encoder, tiny_pipe):
    from latentguard.guard import Verdict

    seen = []
    keyword = SimpleNamespace(encoder=tiny_encoder, check=lambda texts: [
        seen.append(t) or Verdict(prompt=t, unsafe="knife" in t, score=float("knife" in t), concept="knife")
        for t in texts])
    guarded = guard_pipeline(tiny_pipe, keyword)
    assert torch.equal(guarded("a cat").output, tiny_pipe("a cat"))
    result = guarded("a cat", style="a knife")  # an argument the guard knows nothing about
    assert result.blocked and result.blocked_at == "text_encoder" and seen[-1].strip() == "a cat , a knife"
    assert not tiny_pipe.text_encoder._forward_pre_hooks and not tiny_pipe.text_encoder._forward_hooks


# ------------------------------------------------------------------------------ provenance
def test_conditioning_traces_back_to_encoder_outputs_vector_by_vector():
    """SDXL joins two encoders feature-wise, SD3 pads to T5's width and joins on the sequence, CFG stacks
    negative and checked rows, the pipeline casts: each traces; one changed value, or a row of nothing
    recorded, does not."""
    torch.manual_seed(0)
    clip_l, clip_g, t5 = torch.randn(2, 5, 4), torch.randn(2, 5, 6), torch.randn(2, 7, 16)
    pooled = torch.randn(2, 6)
    provenance = Provenance()
    for output in ({"last_hidden_state": clip_l}, {"hidden_states": (clip_g,), "text_embeds": pooled}, (t5,)):
        provenance.record(output, [NEGATIVE, CHECKED])  # row 0 the negative text, row 1 the prompt
    joined = torch.cat([clip_l, clip_g], dim=-1)                                     # SDXL: [2, 5, 10]
    sd3 = torch.cat([torch.nn.functional.pad(joined, (0, 6)), t5], dim=1)           # SD3: [2, 12, 16]
    assert provenance.roles(joined) == [NEGATIVE, CHECKED]
    assert provenance.roles(sd3) == [NEGATIVE, CHECKED]
    assert provenance.roles(sd3[[1, 1, 0]].repeat(2, 1, 1)) == [CHECKED, CHECKED, NEGATIVE] * 2
    assert provenance.roles(pooled.half()) == [NEGATIVE, CHECKED]                    # a cast by the pipeline
    assert provenance.roles(torch.zeros(3, 5, 10)) == [CHECKED] * 3                  # zeros: no text at all
    tampered = sd3.clone()
    tampered[1, 8, 3] += 1e-3
    assert provenance.roles(tampered) is None and provenance.roles(torch.randn(1, 5, 4)) is None
    assert Provenance().roles(clip_l) is None  # nothing recorded: nothing traces
