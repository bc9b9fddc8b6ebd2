"""The pipeline guard against the real diffusers classes, built tiny and offline (as diffusers' own tests do).

Each test is a regression test for failing closed: texts reaching a text encoder unchecked,
the wrapper lost by ordinary use, SDXL/SD3 conditioning, textual inversion / LoRA scale, ``skip``
with per-prompt arguments, and positional arguments. The boundary rules: test_pipeline_boundary.py.
"""
from __future__ import annotations

import copy
import warnings

import numpy as np
import pytest
import torch

from latentguard.errors import LatentGuardError
from latentguard.guard import LatentGuard
from latentguard.model import EmbeddingMappingLayer
from latentguard.pipeline import GuardedPipeline, PromptBlocked, encoder_from_pipeline, guard_pipeline

diffusers = pytest.importorskip("diffusers")
import tiny_diffusers as td  # noqa: E402
from tiny_diffusers import one_thread  # noqa: E402, F401

pytestmark = pytest.mark.usefixtures("one_thread")
from tiny_diffusers import STEPS, Runs, gen, same  # noqa: E402

CONCEPTS = ["knife", "blood", "gun"]


def _sd(tokenizer):
    return td.build_sd(tokenizer)


@pytest.fixture(scope="module")
def sd(clip_tokenizer):
    return _sd(clip_tokenizer)


@pytest.fixture(scope="module")
def img2img(sd):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return td.quiet(diffusers.StableDiffusionImg2ImgPipeline(**sd.components))


@pytest.fixture(scope="module")
def sdxl(clip_tokenizer):
    return td.build_sdxl(clip_tokenizer)


@pytest.fixture(scope="module")
def sd3(clip_tokenizer):
    return td.build_sd3(clip_tokenizer)  # no T5: diffusers then conditions on zeros for it


@pytest.fixture(scope="module")
def shared_guard(sd):
    """A real LatentGuard on the SD pipeline's own text encoder (the one-pass path)."""
    torch.manual_seed(0)
    return LatentGuard(EmbeddingMappingLayer(in_dim=32), encoder_from_pipeline(sd), CONCEPTS, cache_concepts=False)


@pytest.fixture(scope="module")
def own_guard(tiny_encoder):
    """A real LatentGuard with its own (768-wide) encoder: the pipeline encodes on its own."""
    torch.manual_seed(0)
    return LatentGuard(EmbeddingMappingLayer(), tiny_encoder, CONCEPTS, cache_concepts=False)


PROMPTS = ["a cat on a sofa", "a man holding a bloody knife", "a green tree", "a red car"]


def split(guard, prompts=PROMPTS, n_unsafe: int = 1):
    """Set the guard's threshold so that exactly the ``n_unsafe`` highest-scoring prompts are unsafe."""
    scores = guard.scores(prompts)
    order = np.argsort(-scores)
    guard.threshold = float((scores[order[n_unsafe - 1]] + scores[order[n_unsafe]]) / 2)
    unsafe = [prompts[i] for i in order[:n_unsafe]]
    return [p for p in prompts if p not in unsafe], unsafe


# ------------------------------------------------------------------ 1: every text is checked
def test_sdxl_prompt_2_is_checked(sdxl, own_guard):
    safe, (unsafe,) = split(own_guard)
    runs = Runs(sdxl.unet)
    guarded = guard_pipeline(sdxl, own_guard)
    assert guarded.texts == ["prompt", "prompt_2"]
    result = guarded(prompt=safe[0], prompt_2=unsafe, height=32, width=32, **STEPS)
    assert result.blocked and result.output is None and runs.n == 0 and result.concept is not None
    assert [v.unsafe for v in result.text_verdicts["prompt_2"]] == [True]
    assert [v.unsafe for v in result.text_verdicts["prompt"]] == [False]
    with pytest.raises(PromptBlocked):  # a list of second prompts too
        guard_pipeline(sdxl, own_guard, on_unsafe="raise")(safe[:2], prompt_2=[safe[0], unsafe], height=32, width=32)
    assert runs.n == 0


def test_sd3_prompt_2_and_prompt_3_are_checked(sd3, own_guard):
    safe, (unsafe,) = split(own_guard)
    runs = Runs(sd3.transformer)
    guarded = guard_pipeline(sd3, own_guard)
    assert guarded.texts == ["prompt", "prompt_2", "prompt_3"]
    for name in ("prompt_2", "prompt_3"):
        result = guarded(safe[0], **{name: unsafe}, height=32, width=32, **STEPS)
        assert result.blocked and result.output is None
    assert runs.n == 0


def test_sd3_with_a_longer_text_encoder_is_refused(sd3, own_guard):
    t5_like = copy.copy(sd3)  # SD3's third tokenizer, T5 (a real T5TokenizerFast over an offline vocabulary)
    object.__setattr__(t5_like, "tokenizer_3", td.t5_tokenizer(model_max_length=512))
    with pytest.raises(LatentGuardError, match="tokenizer_3 reads up to 512 tokens.*long_prompts=True") as info:
        guard_pipeline(t5_like, own_guard)
    assert "\n" not in str(info.value)
    own_guard.long_prompts = True  # the guard then scores the whole text in 77-token windows
    try:
        guarded = guard_pipeline(t5_like, own_guard)
        assert guarded.texts == ["prompt", "prompt_2", "prompt_3"]
    finally:
        own_guard.long_prompts = False
    with pytest.raises(LatentGuardError, match="tokenizer_3 reads up to 512 tokens"):  # switched off after wrapping
        guarded("a cat on a sofa", **STEPS)


def test_a_step_callback_may_blank_the_conditioning_or_edit_latents(sd, own_guard):
    """Zeros carry no text, latents are no text: a callback may return them (swaps: test_pipeline_boundary.py)."""
    # every prompt safe (no logit exceeds tempr): only the callback route is tested
    threshold, own_guard.threshold = own_guard.threshold, 0.999 * float(own_guard.model.tempr)
    try:
        guarded = guard_pipeline(sd, own_guard)
        blank = lambda pipe, i, t, kw: {"prompt_embeds": torch.zeros_like(kw["prompt_embeds"])}  # noqa: E731
        for callback, inputs in ((blank, ["prompt_embeds"]), (lambda p, i, t, kw: {}, ["latents"])):
            result = guarded("a cat", callback_on_step_end=callback, callback_on_step_end_tensor_inputs=inputs,
                             generator=gen(14), **STEPS)
            same(result.output.images, sd("a cat", callback_on_step_end=callback,
                                          callback_on_step_end_tensor_inputs=inputs, generator=gen(14), **STEPS).images)
    finally:
        own_guard.threshold = threshold


def test_conditioning_given_as_tensors_is_refused(sd, own_guard):
    guarded = guard_pipeline(sd, own_guard)
    for name in ("prompt_embeds", "negative_prompt_embeds"):
        with pytest.raises(LatentGuardError, match=f"not {name}") as info:
            guarded(**({"prompt": "a cat"} if name != "prompt_embeds" else {}), **{name: torch.zeros(1, 77, 32)})
        assert "\n" not in str(info.value)


def test_block_all_and_raise_keep_the_pipeline_idle(sd, shared_guard):
    prompts = PROMPTS[:2]
    safe, (unsafe,) = split(shared_guard, prompts)
    runs = Runs(sd.unet)
    result = guard_pipeline(sd, shared_guard)(prompts, height=32, width=32, **STEPS)
    assert result.blocked and result.output is None and result.images is None and result.passed == []
    assert [v.unsafe for v in result.verdicts] == [p == unsafe for p in prompts]
    # The pipeline scored the unsafe prompt in a batch of two, scores() scores it alone: float sums in other
    # batch shapes differ by ~1e-6 relative (1.6e-6 measured on an AMD EPYC), so compare at 1e-5 relative.
    alone = float(shared_guard.scores([unsafe])[0])
    assert result.blocked_prompts == [unsafe] and result.score == pytest.approx(alone, rel=1e-5)
    with pytest.raises(PromptBlocked, match="1 of 2 prompt.s. blocked") as info:
        guard_pipeline(sd, shared_guard, on_unsafe="raise")(prompts, height=32, width=32, **STEPS)
    assert isinstance(info.value, LatentGuardError) and info.value.result.blocked_prompts == [unsafe]
    assert runs.n == 0


# ------------------------------------------------------------ 2: the wrapper is not lost
def test_to_and_other_pipeline_returning_methods_stay_guarded(sd, own_guard):
    safe, (unsafe,) = split(own_guard)
    guarded = guard_pipeline(sd, own_guard)
    moved = guarded.to("cpu")
    assert moved is guarded and isinstance(guarded.to(torch.float32), GuardedPipeline)
    runs = Runs(sd.unet)
    assert moved(unsafe, height=32, width=32, **STEPS).blocked and runs.n == 0
    guarded.enable_attention_slicing()  # forwarded; returns what diffusers returns
    again = guarded.from_pipe(sd)  # a classmethod building another pipeline: guarded too
    assert isinstance(again, GuardedPipeline) and again.guard is own_guard
    assert again(unsafe, height=32, width=32, **STEPS).blocked and runs.n == 0
    scheduler = sd.scheduler
    guarded.scheduler = scheduler  # attributes are set on the pipeline, never shadowed on the wrapper
    assert "scheduler" not in vars(guarded) and guarded.scheduler is sd.scheduler
    with pytest.raises(LatentGuardError, match="already guarded"):
        guard_pipeline(guarded, own_guard)
    guarded.disable_attention_slicing()


def test_a_shared_encoder_follows_the_pipeline_to_its_device(sd, shared_guard):
    safe, _ = split(shared_guard)
    shared_guard.encoder.device = torch.device("meta")  # as if built before pipe.to(...) moved the text encoder
    result = guard_pipeline(sd, shared_guard).to("cpu")(safe[0], height=32, width=32, generator=gen(13), **STEPS)
    assert shared_guard.encoder.device == torch.device("cpu") and result.reused_embeddings


# ------------------------------------------------- 6: SDXL/SD3 with defaults, bit-identical
@pytest.mark.parametrize("name", ["sdxl", "sd3"])
def test_safe_prompts_are_bit_identical_in_sdxl_and_sd3(name, request, own_guard):
    pipe = request.getfixturevalue(name)
    safe, _ = split(own_guard)
    result = guard_pipeline(pipe, own_guard)(safe[:2], height=32, width=32, generator=gen(1), **STEPS)
    assert not result.blocked and not result.reused_embeddings and result.passed == [0, 1]
    same(result.output.images, pipe(safe[:2], height=32, width=32, generator=gen(1), **STEPS).images)


def test_sd_one_pass_is_bit_identical(sd, img2img, shared_guard):
    safe, _ = split(shared_guard)
    guarded = guard_pipeline(sd, shared_guard)  # wrapping re-encodes 4 concepts (their vectors' weights are checked)
    runs = Runs(sd.text_encoder)
    negative = ["blurry"] * len(safe)
    result = guarded(safe, negative_prompt=negative, height=32, width=32, generator=gen(2), **STEPS)
    assert result.reused_embeddings and not result.blocked
    assert runs.n == 2  # the prompts once (guard and pipeline share it), the negative prompts once
    same(result.output.images,
         sd(safe, negative_prompt=negative, height=32, width=32, generator=gen(2), **STEPS).images)
    image = torch.rand(1, 3, 32, 32, generator=gen(3))
    result = guard_pipeline(img2img, shared_guard)(safe[0], image=image, negative_prompt="dark", strength=0.9,
                                                   generator=gen(4), **STEPS)
    assert result.reused_embeddings
    same(result.output.images, img2img(safe[0], image=image, negative_prompt="dark", strength=0.9, generator=gen(4),
                                       **STEPS).images)


# ------------------------------------------------------- 7: textual inversion, LoRA scale
def test_textual_inversion_tokens_are_not_reused(clip_tokenizer):
    pipe = _sd(copy.deepcopy(clip_tokenizer))
    pipe.load_textual_inversion({"<toy>": torch.randn(2, 32, generator=gen(5))}, token="<toy>")
    assert pipe.maybe_convert_prompt("a <toy>", pipe.tokenizer) != "a <toy>"  # multi-vector: expanded
    torch.manual_seed(0)
    guard = LatentGuard(EmbeddingMappingLayer(in_dim=32), encoder_from_pipeline(pipe), CONCEPTS, cache_concepts=False)
    texts = ["a <toy> on a table", pipe.maybe_convert_prompt("a <toy> on a table", pipe.tokenizer)]
    guard.threshold = float(guard.scores(texts).max()) + 1.0
    result = guard_pipeline(pipe, guard)("a <toy> on a table", height=32, width=32, generator=gen(6), **STEPS)
    assert not result.blocked and not result.reused_embeddings
    assert result.text_verdicts["prompt"][0].prompt == pipe.maybe_convert_prompt("a <toy> on a table", pipe.tokenizer)
    same(result.output.images, pipe("a <toy> on a table", height=32, width=32, generator=gen(6), **STEPS).images)


def test_textual_inversion_tokens_are_refused_by_a_guard_with_its_own_encoder(clip_tokenizer, own_guard):
    pipe = _sd(copy.deepcopy(clip_tokenizer))
    pipe.load_textual_inversion({"<toy>": torch.randn(2, 32, generator=gen(5))}, token="<toy>")
    runs = Runs(pipe.unet)
    with pytest.raises(LatentGuardError, match="textual-inversion token.*<toy>.*encoder_from_pipeline"):
        guard_pipeline(pipe, own_guard)(["a cat", "a <toy> on a table"], **STEPS)  # its learned meaning is unseen
    assert runs.n == 0


def test_lora_scale_and_clip_skip_are_not_reused(sd, shared_guard):
    # Both make SD condition on something else than the last layer as encoded. diffusers 0.42 cannot run
    # clip_skip with transformers 5's CLIPTextModel (it reaches for ``text_encoder.text_model``), guarded or
    # not, so the decision is what is tested here (a LoRA run: test_pipeline_boundary.py).
    guarded = guard_pipeline(sd, shared_guard)
    assert guarded.shares_encoder({})
    assert not guarded.shares_encoder({"clip_skip": 1})
    assert not guarded.shares_encoder({"cross_attention_kwargs": {"scale": 0.5}})
    assert guarded.shares_encoder({"cross_attention_kwargs": {}})


# ------------------------------------------------------------- 8: skip subsets everything
def test_skip_subsets_generators_latents_and_negative_prompts(sd, shared_guard):
    prompts = PROMPTS[:3]
    safe, (unsafe,) = split(shared_guard, prompts)
    bad = prompts.index(unsafe)
    keep = [i for i in range(3) if i != bad]
    latents = torch.randn(6, 4, 4, 4, generator=gen(8))  # 3 prompts x 2 images, 4x4 latents = 32x32 pixels
    negative = ["blurry", "dark", "noisy"]
    result = guard_pipeline(sd, shared_guard, on_unsafe="skip")(
        prompts, height=32, width=32, num_images_per_prompt=2, generator=[gen(k) for k in range(6)],
        latents=latents, negative_prompt=negative, **STEPS)
    assert result.blocked and result.passed == keep and result.images[bad] is None
    rows = [2 * i + k for i in keep for k in range(2)]
    expected = sd([prompts[i] for i in keep], height=32, width=32, num_images_per_prompt=2,
                  generator=[gen(r) for r in rows], latents=latents[rows],
                  negative_prompt=[negative[i] for i in keep], **STEPS).images
    same(result.output.images, expected)
    same(np.stack([img for i in keep for img in result.images[i]]), expected)


def test_skip_subsets_img2img_images_and_negative_prompts(img2img, own_guard):
    prompts = PROMPTS[:3]
    safe, (unsafe,) = split(own_guard, prompts)
    keep = [i for i, p in enumerate(prompts) if p != unsafe]
    images = torch.rand(3, 3, 32, 32, generator=gen(10))
    negatives = ["blurry", "dark", "noisy"]
    result = guard_pipeline(img2img, own_guard, on_unsafe="skip")(
        prompts, image=images, negative_prompt=negatives, strength=0.9, generator=gen(11), **STEPS)
    expected = img2img([prompts[i] for i in keep], image=images[keep], negative_prompt=[negatives[i] for i in keep],
                       strength=0.9, generator=gen(11), **STEPS).images
    same(result.output.images, expected)


def test_skip_refuses_what_it_cannot_split(sd, own_guard):
    prompts = PROMPTS[:3]
    split(own_guard, prompts)
    runs = Runs(sd.unet)
    guarded = guard_pipeline(sd, own_guard, on_unsafe="skip")
    with pytest.raises(LatentGuardError, match="cannot split argument latents"):
        guarded(prompts, latents=torch.zeros(2, 4, 4, 4), height=32, width=32, **STEPS)
    with pytest.raises(LatentGuardError, match="cannot split argument ip_adapter_image_embeds"):
        guarded(prompts, ip_adapter_image_embeds=[torch.zeros(6, 1, 32)], height=32, width=32, **STEPS)
    with pytest.raises(LatentGuardError, match="2 negative_prompt for 3 prompts"):
        guarded(prompts, negative_prompt=["x", "y"])
    assert runs.n == 0


# ------------------------------------------------------------ 9: positional arguments
def test_positional_arguments_follow_the_pipelines_signature(sd, own_guard):
    safe, (unsafe,) = split(own_guard)
    guarded = guard_pipeline(sd, own_guard)
    result = guarded(safe[0], 32, 32, 2, output_type="np", generator=gen(12))  # prompt, height, width, steps
    assert result.output.images.shape == (1, 32, 32, 3)
    same(result.output.images, sd(safe[0], 32, 32, 2, output_type="np", generator=gen(12)).images)
    assert guarded(unsafe, 32, 32, 2, output_type="np").blocked
    with pytest.raises(LatentGuardError, match="do not fit.*height"):
        guarded(safe[0], 32, height=32)  # height given twice, as diffusers itself would refuse
    assert guarded._bind((safe[0], 32), {}) == {"prompt": safe[0], "height": 32}  # not a negative prompt
