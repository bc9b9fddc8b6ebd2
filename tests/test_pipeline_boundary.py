"""The pipeline guard checks what reaches the text encoders and the denoiser, not a list of arguments.

One regression test per bypass the issue lists, on the real diffusers classes built tiny
(tests/tiny_diffusers.py): a step callback swapping the conditioning (SD, img2img, inpaint, SDXL,
SDXL img2img, SD3, Flux), ``guarded.encode_prompt``, textual inversion in the second tokenizer
(SDXL, the refiner layout, SD3), a text-encoder LoRA on a shared encoder, T5 read past the guard,
PixArt, ``AutoPipelineFor*.from_pipe``, row 0 with a learned token; and the rules they share.
"""
from __future__ import annotations

import copy

import pytest
import torch
from conftest import tiny_clip_text_model

from latentguard.encoders import CLIPTextEncoder, HFTextEncoder
from latentguard.errors import LatentGuardError
from latentguard.guard import LatentGuard
from latentguard.model import EmbeddingMappingLayer
from latentguard.pipeline import PromptBlocked, encoder_from_pipeline, from_pipe, guard_pipeline

diffusers = pytest.importorskip("diffusers")
import tiny_diffusers as td  # noqa: E402
from tiny_diffusers import one_thread  # noqa: E402, F401

pytestmark = pytest.mark.usefixtures("one_thread")

SAFE, UNSAFE = "a cat on a sofa", "a man holding a bloody knife"
CONCEPTS = ["knife", "blood", "gun"]
SIZE = dict(height=32, width=32)

NEVER = 14.28  # just under a fresh layer's tempr (1 / 0.07, the largest logit it can give): no text reaches it


@pytest.fixture(scope="module")
def t5():
    return td.t5_tokenizer()


@pytest.fixture(scope="module")
def keyword(tiny_encoder):
    return td.KeywordGuard(tiny_encoder)


@pytest.fixture(scope="module")
def pipes(clip_tokenizer, t5):
    """One of each pipeline the callback tests run, built once (tiny: about 3 s in all)."""
    sd = td.build_sd(clip_tokenizer)
    sdxl = td.build_sdxl(clip_tokenizer)
    image = torch.rand(1, 3, 32, 32, generator=td.gen(1))
    return {
        "sd": (sd, {**SIZE}),
        "img2img": (diffusers.StableDiffusionImg2ImgPipeline(**sd.components), {"image": image, "strength": 1.0}),
        "inpaint": (td.build_inpaint(clip_tokenizer), {**SIZE, "image": image, "mask_image": torch.ones(1, 1, 32, 32)}),
        "sdxl": (sdxl, {**SIZE}),
        "sdxl_img2img": (td.quiet(diffusers.StableDiffusionXLImg2ImgPipeline(**sdxl.components)),
                         {"image": image, "strength": 1.0}),
        "sd3": (td.build_sd3(clip_tokenizer), {**SIZE}),
        "flux": (td.build_flux(clip_tokenizer, t5), {**SIZE, "max_sequence_length": 16}),
    }


def denoiser(pipe):
    return getattr(pipe, "unet", None) or pipe.transformer


def _capture(pipe, kwargs, prompt, names, **extra):
    """The callback tensors of ``prompt`` at step 0, from an unguarded run (what a hostile callback would swap in)."""
    captured = {}

    def capture(p, i, t, k):
        if i == 0:
            captured.update({n: v.clone() for n, v in k.items()})
        return {}

    pipe(prompt, callback_on_step_end=capture, callback_on_step_end_tensor_inputs=names, **kwargs, **extra)
    return captured


# --------------------------------------------------------------- 1: callbacks swap the conditioning
@pytest.mark.parametrize("name", ["sd", "img2img", "inpaint", "sdxl", "sdxl_img2img", "sd3", "flux"])
def test_a_step_callback_returning_every_tensor_cannot_swap_the_conditioning(pipes, keyword, name):
    pipe, kwargs = pipes[name]
    kwargs = {**kwargs, **td.STEPS}
    names = list(pipe._callback_tensor_inputs)  # every tensor name this pipeline lets a callback return
    unsafe = _capture(pipe, kwargs, UNSAFE, names)
    runs = td.Runs(denoiser(pipe))
    guarded = guard_pipeline(pipe, keyword)
    with pytest.raises(LatentGuardError, match="did not produce in this call") as info:
        guarded(SAFE, callback_on_step_end=lambda p, i, t, k: dict(unsafe),
                callback_on_step_end_tensor_inputs=names, **kwargs)
    assert "\n" not in str(info.value)
    assert runs.n == 1  # step 0 ran on the checked prompt; step 1 never did
    runs.handle.remove()


def test_each_callback_tensor_is_refused_when_it_carries_text_conditioning(pipes, keyword):
    """Per tensor name (SDXL: prompt_embeds, add_text_embeds, add_time_ids, latents): a swapped text conditioning
    (which does change what the unguarded pipeline draws) is refused; latents and time ids are not text and pass."""
    pipe, kwargs = pipes["sdxl"]
    kwargs = {**kwargs, **td.STEPS}
    names = list(pipe._callback_tensor_inputs)
    unsafe = _capture(pipe, kwargs, UNSAFE, names)
    clean = pipe(SAFE, generator=td.gen(3), **kwargs).images
    guarded = guard_pipeline(pipe, keyword)
    for tensor in names:
        swap = lambda p, i, t, k, tensor=tensor: {tensor: unsafe[tensor]}  # noqa: E731
        hostile = pipe(SAFE, callback_on_step_end=swap, callback_on_step_end_tensor_inputs=names, generator=td.gen(3),
                       **kwargs).images
        if tensor in ("prompt_embeds", "add_text_embeds"):
            assert not (hostile == clean).all()  # the swap works on the unguarded pipeline
            with pytest.raises(LatentGuardError, match="did not produce in this call"):
                guarded(SAFE, callback_on_step_end=swap, callback_on_step_end_tensor_inputs=names, **kwargs)
        else:
            result = guarded(SAFE, callback_on_step_end=swap, callback_on_step_end_tensor_inputs=names,
                             generator=td.gen(3), **kwargs)
            td.same(result.output.images, hostile)


@pytest.mark.parametrize("name", ["sd", "img2img", "inpaint", "sdxl", "sdxl_img2img", "sd3", "flux"])
def test_safe_prompts_are_bit_identical_under_the_hooks(pipes, keyword, name):
    pipe, kwargs = pipes[name]
    kwargs = {**kwargs, **td.STEPS, "negative_prompt": ["blurry", "dark"]}
    result = guard_pipeline(pipe, keyword)([SAFE, "a red car"], generator=[td.gen(20), td.gen(21)], **kwargs)
    td.same(result.output.images, pipe([SAFE, "a red car"], generator=[td.gen(20), td.gen(21)], **kwargs).images)
    assert not any(m._forward_pre_hooks or m._forward_hooks for m in pipe.components.values()
                   if isinstance(m, torch.nn.Module))  # nothing left behind


def test_a_pipeline_callback_object_and_in_place_edits_are_refused_too(pipes, keyword):
    pipe, kwargs = pipes["sd"]
    kwargs = {**kwargs, **td.STEPS}
    unsafe = _capture(pipe, kwargs, UNSAFE, ["prompt_embeds"])["prompt_embeds"]

    class Swap(diffusers.callbacks.PipelineCallback):  # its tensor_inputs replace the call's argument in diffusers
        tensor_inputs = ["prompt_embeds"]

        def callback_fn(self, p, i, t, k):
            return {"prompt_embeds": unsafe}

    guarded = guard_pipeline(pipe, keyword)
    with pytest.raises(LatentGuardError, match="did not produce in this call"):
        guarded(SAFE, callback_on_step_end=Swap(), **kwargs)
    with pytest.raises(LatentGuardError, match="did not produce in this call"):  # no return value: edited in place
        guarded(SAFE, callback_on_step_end=lambda p, i, t, k: (k["prompt_embeds"].copy_(unsafe), {})[1],
                callback_on_step_end_tensor_inputs=["prompt_embeds"], **kwargs)
    # drops the unconditional half from step 1 on: allowed
    cutoff = diffusers.callbacks.SDCFGCutoffCallback(cutoff_step_ratio=None, cutoff_step_index=1)
    result = guarded(SAFE, callback_on_step_end=cutoff, generator=td.gen(4), **kwargs)
    td.same(result.output.images, pipe(SAFE, callback_on_step_end=cutoff, generator=td.gen(4), **kwargs).images)


def test_negative_rows_cannot_move_into_the_conditional_half(pipes, keyword):
    pipe, kwargs = pipes["sd"]
    guarded = guard_pipeline(pipe, keyword)
    both_negative = lambda p, i, t, k: {"prompt_embeds": k["prompt_embeds"][:1].repeat(2, 1, 1)}  # noqa: E731
    with pytest.raises(LatentGuardError, match="unchecked .negative or unconditional. rows"):
        guarded(SAFE, negative_prompt=UNSAFE, callback_on_step_end=both_negative,  # the negative text is unchecked
                callback_on_step_end_tensor_inputs=["prompt_embeds"], **kwargs, **td.STEPS)


def test_skip_does_not_vouch_for_a_refused_prompts_states(clip_tokenizer):
    """The guard encoded both prompts (one pass, shared encoder); only the passed one's states may condition."""
    pipe = td.build_sd(clip_tokenizer)
    torch.manual_seed(0)
    guard = LatentGuard(EmbeddingMappingLayer(in_dim=32), encoder_from_pipeline(pipe), CONCEPTS, cache_concepts=False)
    prompts = [SAFE, UNSAFE]
    scores = guard.scores(prompts)
    guard.threshold, bad = float(scores.mean()), int(scores.argmax())
    states = guard.encoder.encode(prompts)[[bad], 1:]  # bit for bit what the guard computes during the call
    swap = lambda p, i, t, k: {"prompt_embeds": torch.cat([k["prompt_embeds"][:1], states])}  # noqa: E731
    guarded = guard_pipeline(pipe, guard, on_unsafe="skip")
    with pytest.raises(LatentGuardError, match="did not produce in this call"):
        guarded(prompts, callback_on_step_end=swap, callback_on_step_end_tensor_inputs=["prompt_embeds"], **SIZE,
                **td.STEPS)
    result = guarded(prompts, generator=td.gen(12), **SIZE, **td.STEPS)
    assert result.reused_embeddings and result.passed == [1 - bad]


def test_flux_true_cfg_keeps_its_negative_call(pipes, keyword):
    """Flux calls its transformer twice a step (prompt, then negative): the pattern of the first step holds."""
    pipe, kwargs = pipes["flux"]
    kwargs = {**kwargs, **td.STEPS, "negative_prompt": "blurry", "true_cfg_scale": 2.0}
    result = guard_pipeline(pipe, keyword)(SAFE, generator=td.gen(5), **kwargs)
    td.same(result.output.images, pipe(SAFE, generator=td.gen(5), **kwargs).images)


# ------------------------------------------------------------------ 2: methods, unknown arguments
def test_encode_prompt_through_the_guarded_object_is_checked_at_the_encoder(pipes, keyword):
    pipe, _ = pipes["sd"]
    guarded = guard_pipeline(pipe, keyword)
    args = dict(device="cpu", num_images_per_prompt=1, do_classifier_free_guidance=False)
    with pytest.raises(LatentGuardError, match="text reaching text_encoder .'a man holding a bloody knife'. is unsafe"):
        guarded.encode_prompt(UNSAFE, **args)
    mine = guarded.encode_prompt(SAFE, **args)[0]
    assert torch.equal(mine, pipe.encode_prompt(SAFE, **args)[0]) and keyword.seen[-1].strip() == SAFE
    assert not pipe.text_encoder._forward_pre_hooks and not pipe.unet._forward_pre_hooks  # hooks gone after


def test_an_unknown_text_argument_is_checked_where_it_reaches_the_encoder(pipes, keyword):
    class CaptionedPipeline(diffusers.StableDiffusionPipeline):
        def __call__(self, prompt=None, style_caption=None, **kwargs):
            return super().__call__(prompt=f"{prompt}, {style_caption}", **kwargs)

    pipe, kwargs = pipes["sd"]
    captioned = td.quiet(CaptionedPipeline(**pipe.components, requires_safety_checker=False))
    guarded = guard_pipeline(captioned, keyword)  # wrapped: the guard does not need to know style_caption
    result = guarded(SAFE, style_caption=UNSAFE, **kwargs, **td.STEPS)
    assert result.blocked and result.blocked_at == "text_encoder" and result.output is None
    (found,) = result.text_verdicts["text_encoder"]  # the text the encoder would have read: prompt and caption
    assert found.unsafe and found.prompt.startswith("a cat on a sofa") and found.prompt.strip().endswith("knife")
    with pytest.raises(PromptBlocked, match="blocked by Latent Guard at text_encoder"):
        guard_pipeline(captioned, keyword, on_unsafe="raise")(SAFE, style_caption=UNSAFE, **kwargs, **td.STEPS)
    fine = guarded(SAFE, style_caption="oil painting", generator=td.gen(6), **kwargs, **td.STEPS)
    td.same(fine.output.images, captioned(SAFE, style_caption="oil painting", generator=td.gen(6), **kwargs,
                                          **td.STEPS).images)


def test_embeddings_given_to_an_encoder_and_nested_calls_are_refused(pipes, keyword):
    pipe, kwargs = pipes["sd"]

    class Embedding(diffusers.StableDiffusionPipeline):
        def embed_directly(self):
            return self.text_encoder(inputs_embeds=torch.zeros(1, 77, 32))

    guarded = guard_pipeline(td.quiet(Embedding(**pipe.components, requires_safety_checker=False)), keyword)
    with pytest.raises(LatentGuardError, match="was given embeddings .inputs_embeds."):
        guarded.embed_directly()
    nested = lambda p, i, t, k: guarded(SAFE, **kwargs, **td.STEPS) and {}  # noqa: E731
    with pytest.raises(LatentGuardError, match="cannot run inside another"):
        guarded(SAFE, callback_on_step_end=nested, **kwargs, **td.STEPS)
    assert not pipe.text_encoder._forward_pre_hooks and not pipe.unet._forward_pre_hooks
    with pytest.raises(LatentGuardError, match="not negative_prompt_embeds"):
        guarded(SAFE, negative_prompt_embeds=torch.zeros(1, 77, 32), **kwargs)


# ------------------------------------------------------------ 3: textual inversion, second tokenizer
def _with_learned_token(tokenizer, encoder, token="<toy>"):
    tokenizer.add_tokens([token])
    encoder.resize_token_embeddings(len(tokenizer))
    with torch.no_grad():
        encoder.get_input_embeddings().weight[-1] = torch.randn(encoder.config.hidden_size, generator=td.gen(7))


def test_textual_inversion_in_the_second_tokenizer_is_refused(clip_tokenizer, tiny_encoder):
    """SDXL sends ``prompt`` to tokenizer_2 too; the refiner has only it; SD3 has no loader, tokens added by hand."""
    sdxl = td.build_sdxl(clip_tokenizer, copy.deepcopy(clip_tokenizer))
    sdxl.load_textual_inversion({"<toy>": torch.randn(1, 32, generator=td.gen(5))}, token="<toy>",
                                text_encoder=sdxl.text_encoder_2, tokenizer=sdxl.tokenizer_2)
    torch.manual_seed(0)
    shared = LatentGuard(EmbeddingMappingLayer(in_dim=32), encoder_from_pipeline(sdxl), CONCEPTS, cache_concepts=False)
    refiner = td.build_refiner(copy.deepcopy(clip_tokenizer))
    refiner.load_textual_inversion({"<toy>": torch.randn(1, 32, generator=td.gen(5))}, token="<toy>",
                                   text_encoder=refiner.text_encoder_2, tokenizer=refiner.tokenizer_2)
    sd3 = td.build_sd3(clip_tokenizer, copy.deepcopy(clip_tokenizer))
    _with_learned_token(sd3.tokenizer_2, sd3.text_encoder_2)
    torch.manual_seed(0)
    own = LatentGuard(EmbeddingMappingLayer(), tiny_encoder, CONCEPTS, cache_concepts=False, threshold=NEVER)
    image = torch.rand(1, 3, 32, 32, generator=td.gen(1))
    shared.threshold = 0.999 * float(shared.model.tempr)  # every text safe: only the learned token is refused
    refine = {"image": image, "strength": 0.9}
    for pipe, guard, extra in [(sdxl, shared, SIZE), (refiner, own, refine), (sd3, own, SIZE)]:
        runs = td.Runs(pipe.text_encoder_2)
        with pytest.raises(LatentGuardError, match="text reaching text_encoder_2 uses textual-inversion token.s. "
                                                   "<toy>") as info:
            guard_pipeline(pipe, guard)("a <toy> on a table", **extra, **td.STEPS)
        assert runs.n == 0 and "\n" not in str(info.value)  # refused before text_encoder_2 ran
        assert guard_pipeline(pipe, guard)(SAFE, **extra, **td.STEPS).images is not None  # no token: as usual


def test_row_zero_is_the_end_of_text_state_with_a_learned_token(clip_tokenizer):
    tokenizer, model = copy.deepcopy(clip_tokenizer), tiny_clip_text_model(hidden_size=32, seed=0)
    encoder = CLIPTextEncoder(model, device="cpu", tokenizer=tokenizer)
    plain = encoder.encode([SAFE])
    _with_learned_token(tokenizer, model)
    ids = encoder.tokenize(["a <toy> on a table"])["input_ids"]
    eos = int((ids[0] == tokenizer.eos_token_id).nonzero()[0])
    assert int(ids.argmax()) != eos  # the released argmax would pick the learned token (id 49408)
    with torch.no_grad():
        states = model(input_ids=ids).last_hidden_state
    emb = encoder.encode(["a <toy> on a table"])
    assert torch.equal(emb[0, 0], states[0, eos]) and torch.equal(emb[0, 1:], states[0])
    assert torch.equal(encoder.encode([SAFE]), plain)  # without learned tokens: the released layout, unchanged


# ------------------------------------------------------------------------ 4: text-encoder LoRA
def test_a_text_encoder_lora_leaves_the_verdict_on_the_unmodified_weights(clip_tokenizer):
    peft = pytest.importorskip("peft")
    pipe = td.build_sd(clip_tokenizer)
    torch.manual_seed(0)
    guard = LatentGuard(EmbeddingMappingLayer(in_dim=32), encoder_from_pipeline(pipe), CONCEPTS, cache_concepts=False)
    texts = [SAFE, UNSAFE]
    scores = guard.scores(texts)
    guard.threshold = float(scores.mean())  # the higher-scoring text is the unsafe one
    unsafe, safe = texts[int(scores.argmax())], texts[int(scores.argmin())]
    guarded = guard_pipeline(pipe, guard)
    before = guard.encoder.encode([unsafe])
    config = peft.LoraConfig(r=4, lora_alpha=4, init_lora_weights=False, target_modules=["q_proj", "v_proj"])
    peft.inject_adapter_in_model(config, pipe.text_encoder)  # as diffusers loads a text-encoder LoRA
    assert not torch.allclose(guard.encoder.encode([unsafe]), before)  # the LoRA moves what the encoder gives
    grads = {n: p.requires_grad for n, p in pipe.text_encoder.named_parameters()}
    lora = {"cross_attention_kwargs": {"scale": 0.5}, **SIZE, **td.STEPS}
    result = guarded(unsafe, **lora)
    # Scored alone here, in a batch of two above: float sums differ by ~1e-6 relative across batch shapes.
    assert result.blocked and result.score == pytest.approx(float(scores.max()), rel=1e-5)  # unmodified weights
    fine = guarded(safe, generator=td.gen(8), **lora)
    assert not fine.blocked and not fine.reused_embeddings  # the conditioning is the LoRA's, the verdict is not
    td.same(fine.output.images, pipe(safe, generator=td.gen(8), **lora).images)
    assert {n: p.requires_grad for n, p in pipe.text_encoder.named_parameters()} == grads  # adapters restored
    torch.manual_seed(0)
    stale = LatentGuard(EmbeddingMappingLayer(in_dim=32), encoder_from_pipeline(pipe), CONCEPTS, cache_concepts=False)
    with pytest.raises(LatentGuardError, match="concept vectors differ from what the unmodified text_encoder gives"):
        guard_pipeline(pipe, stale)  # encoded with the LoRA on
    for layer in pipe.text_encoder.modules():
        if isinstance(layer, peft.tuners.tuners_utils.BaseTunerLayer):
            layer.merge()  # fused: the unmodified weights are gone (PEFT writes through .data: torch sees no write)
    with pytest.raises(LatentGuardError, match="adapter .LoRA. fused into its weights|weights of text_encoder, which "
                                               "the guard reads, changed"):
        guarded(SAFE, **SIZE, **td.STEPS)


# ---------------------------------------------------------------- 5: context: T5 and own tokenizers
def test_t5_rows_longer_than_the_guard_reads_are_refused(clip_tokenizer, t5, tiny_encoder):
    """SD3 and Flux tokenize T5 to the call's max_sequence_length, whatever tokenizer.model_max_length says."""
    short_t5 = td.t5_tokenizer(model_max_length=77)  # passes the wrap-time length check
    torch.manual_seed(0)
    guard = LatentGuard(EmbeddingMappingLayer(), tiny_encoder, CONCEPTS, cache_concepts=False, threshold=NEVER)
    padding = "a quiet green meadow under a pale sky, " * 12  # > 77 T5 tokens before the unsafe part
    for pipe in (td.build_sd3(clip_tokenizer, t5=short_t5), td.build_flux(clip_tokenizer, short_t5)):
        guarded = guard_pipeline(pipe, guard)
        runs = td.Runs(pipe.text_encoder_3 if hasattr(pipe, "text_encoder_3") else pipe.text_encoder_2)
        with pytest.raises(LatentGuardError, match="reads 128 tokens .the call's max_sequence_length.* long_prompts"):
            guarded(padding + UNSAFE, max_sequence_length=128, **SIZE, **td.STEPS)
        assert runs.n == 0
        assert guarded(SAFE, max_sequence_length=64, **SIZE, **td.STEPS).images is not None


def test_a_guard_whose_tokenizer_cuts_earlier_never_passes_a_truncated_verdict(pipes, t5):
    """A guard with its own T5-style tokenizer (77 of its tokens) cut the prompt before 'knife'; CLIP reads it all."""
    torch.manual_seed(0)
    encoder = HFTextEncoder(td.tiny_t5(32, seed=9), device="cpu", tokenizer=t5, max_length=77)
    guard = LatentGuard(EmbeddingMappingLayer(in_dim=32), encoder, CONCEPTS, cache_concepts=False, threshold=NEVER)
    pipe, kwargs = pipes["sd"]
    long_text = "a quixotic zephyr jukebox " * 5 + "beside a bloody knife"  # 41 CLIP tokens, 99 of the guard's
    assert guard.check([long_text])[0].truncated and not guard.check([SAFE])[0].truncated
    runs = td.Runs(pipe.text_encoder)
    with pytest.raises(LatentGuardError, match="guard read only part of the text reaching text_encoder.*long_prompts"):
        guard_pipeline(pipe, guard)(long_text, **kwargs, **td.STEPS)
    assert runs.n == 0
    guard.long_prompts = True  # windows cover the whole text
    assert guard_pipeline(pipe, guard)(long_text, **kwargs, **td.STEPS).images is not None
    assert guard_pipeline(pipe, guard)(SAFE, **kwargs, **td.STEPS).images is not None


# ------------------------------------------------------------------------- 6: PixArt, from_pipe
@pytest.mark.parametrize("sigma", [False, True], ids=["alpha", "sigma"])
def test_pixart_is_guarded(t5, keyword, tiny_encoder, sigma):
    pipe = td.build_pixart(t5, sigma=sigma)
    kwargs = dict(use_resolution_binning=False, max_sequence_length=16, **SIZE, **td.STEPS)
    with pytest.raises(LatentGuardError, match="tokenizer reads up to 512 tokens.*long_prompts=True"):
        guard_pipeline(pipe, LatentGuard(EmbeddingMappingLayer(), tiny_encoder, CONCEPTS, cache_concepts=False))
    guarded = guard_pipeline(pipe, keyword)  # clean_caption (a bool) is no text argument
    assert guarded(UNSAFE.upper(), **kwargs).blocked
    checks = len(keyword.seen)
    result = guarded("A Cat On A Sofa", generator=td.gen(9), **kwargs)  # PixArt lowercases it before T5
    assert len(keyword.seen) == checks + 1  # the lowercased text is the checked one's: no second check
    td.same(result.output.images, pipe("A Cat On A Sofa", generator=td.gen(9), **kwargs).images)


def test_auto_pipeline_from_pipe_keeps_the_guard_or_says_how(pipes, keyword):
    pipe, _ = pipes["sd"]
    guarded = guard_pipeline(pipe, keyword, on_unsafe="skip")
    with pytest.raises(LatentGuardError, match="latentguard.pipeline.from_pipe.AutoPipelineForImage2Image") as info:
        diffusers.AutoPipelineForImage2Image.from_pipe(guarded)
    assert "\n" not in str(info.value)
    image2image = from_pipe(diffusers.AutoPipelineForImage2Image, guarded)
    assert type(image2image.pipe).__name__ == "StableDiffusionImg2ImgPipeline" and image2image.on_unsafe == "skip"
    assert image2image.text_encoder is pipe.text_encoder  # shared, not copied
    image = torch.rand(1, 3, 32, 32, generator=td.gen(1))
    assert image2image([UNSAFE], image=image, strength=0.9, **td.STEPS).blocked
    back = from_pipe(diffusers.AutoPipelineForText2Image, image2image)
    assert type(back.pipe).__name__ == "StableDiffusionPipeline" and back([UNSAFE], **SIZE, **td.STEPS).blocked


# ----------------------------------------------------------------------- 7: annotate, on_verdict
def test_annotate_generates_and_attaches_the_verdicts_but_keeps_the_boundary(pipes, keyword):
    pipe, kwargs = pipes["sd"]
    kwargs = {**kwargs, **td.STEPS}
    guarded = guard_pipeline(pipe, keyword, on_unsafe="annotate")
    result = guarded([SAFE, UNSAFE], generator=[td.gen(10), td.gen(11)], **kwargs)
    assert not result.blocked and result.passed == [0, 1] and result.flagged_prompts == [UNSAFE]
    assert result.blocked_prompts == [] and result.concept == "knife" and result.score == 10.0
    td.same(result.output.images, pipe([SAFE, UNSAFE], generator=[td.gen(10), td.gen(11)], **kwargs).images)
    unsafe = _capture(pipe, kwargs, UNSAFE, ["prompt_embeds"])
    with pytest.raises(LatentGuardError, match="did not produce in this call"):  # foreign conditioning still aborts
        guarded(SAFE, callback_on_step_end=lambda p, i, t, k: unsafe, callback_on_step_end_tensor_inputs=[
            "prompt_embeds"], **kwargs)


def test_on_verdict_sees_every_call_and_fails_closed(pipes, keyword):
    pipe, kwargs = pipes["sd"]
    kwargs = {**kwargs, **td.STEPS}
    seen = []
    for mode in ("block_all", "skip", "annotate", "raise"):
        guarded = guard_pipeline(pipe, keyword, on_unsafe=mode, on_verdict=seen.append)
        try:
            guarded([SAFE, UNSAFE], **kwargs)
        except PromptBlocked:
            assert mode == "raise"
    assert [(r.on_unsafe, r.blocked, r.passed) for r in seen] == [
        ("block_all", True, []), ("skip", True, [0]), ("annotate", False, [0, 1]), ("raise", True, [])]
    assert all([v.unsafe for v in r.verdicts] == [False, True] for r in seen)

    def failing(result):
        raise OSError("audit log is full")

    with pytest.raises(LatentGuardError, match="on_verdict raised OSError: audit log is full; refusing the call"):
        guard_pipeline(pipe, keyword, on_verdict=failing)(SAFE, **kwargs)  # no result, no image
    guard_pipeline(pipe, keyword, on_verdict=seen.append).encode_prompt(SAFE, "cpu", 1, False)  # methods too
    assert [p.strip() for p in seen[-1].prompts] == [SAFE] and "text_encoder" in seen[-1].text_verdicts


def test_a_prior_that_returns_its_negative_embeddings_has_its_negative_texts_checked(clip_tokenizer, keyword):
    """Kandinsky's prior runs ``prompt + negative_prompt`` through the same prior and returns the negative
    text's image embedding, which a caller can hand to the decoder as a positive: its negatives are checked."""
    pipe = td.build_kandinsky_prior(clip_tokenizer)
    guarded = guard_pipeline(pipe, keyword, on_unsafe="skip")
    blocked = guarded(SAFE, negative_prompt=UNSAFE, num_inference_steps=2, generator=td.gen(0))
    # caught where the negative text's rows condition the prior (they leave the unconditional block), before the
    # output is read; a pipeline that returns them without such rows is caught at its output
    assert blocked.blocked and blocked.output is None and blocked.blocked_at.startswith("prior")
    as_tuple = guarded(SAFE, negative_prompt=UNSAFE, num_inference_steps=2, return_dict=False)
    assert as_tuple.blocked and as_tuple.output is None  # read by name whatever form the caller asked for
    with pytest.raises(PromptBlocked):
        guard_pipeline(pipe, keyword, on_unsafe="raise")(SAFE, negative_prompt=UNSAFE, num_inference_steps=2)
    fine = guarded(SAFE, negative_prompt="blurry, low quality", num_inference_steps=2, generator=td.gen(0))
    plain = pipe(SAFE, negative_prompt="blurry, low quality", num_inference_steps=2, generator=td.gen(0))
    assert not fine.blocked and torch.equal(fine.output.image_embeds, plain.image_embeds)
    assert torch.equal(fine.output.negative_image_embeds, plain.negative_image_embeds)
    tupled = guarded(SAFE, negative_prompt="blurry, low quality", num_inference_steps=2, generator=td.gen(0),
                     return_dict=False)
    assert isinstance(tupled.output, tuple) and torch.equal(tupled.output[0], plain.image_embeds)
    seen = guard_pipeline(pipe, keyword, on_unsafe="annotate")(SAFE, negative_prompt=UNSAFE, num_inference_steps=2)
    reported = [v for where, vs in seen.text_verdicts.items() if "output of" in where for v in vs]
    assert seen.output is not None and [v.unsafe for v in reported] == [True]  # observe-only: generated, reported


@pytest.mark.parametrize("bad", [5, {"a": "knife"}, [b"knife"], ["a cat", 5]])
def test_a_prompt_of_another_type_is_one_line_before_anything_runs(pipes, keyword, bad):
    """prompt=5 was a TypeError from inside the wrapper (a hostile review); every text argument is checked once."""
    pipe, extra = pipes["sd"]
    guarded = guard_pipeline(pipe, keyword)
    with pytest.raises(LatentGuardError, match="must be a string or a list of strings"):
        guarded(prompt=bad, num_inference_steps=1, **extra)
    with pytest.raises(LatentGuardError, match="negative_prompt must be a string or a list of strings"):
        guarded(prompt="a cat", negative_prompt=bad if not isinstance(bad, list) else 7, num_inference_steps=1,
                **extra)
