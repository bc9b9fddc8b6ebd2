"""The text encoder reads what its ids spell in the vocabulary, so the guard judges that too.

A tokenizer's normalizer and decoder are code: replaced (before or after wrapping), or another tokenizer object
put in the pipeline's slot, they make a checked text arrive as other ids; ``max_sequence_length`` cuts a row to a
part of the text the guard never judged alone. On the tiny real SD and Flux pipelines, with a keyword guard on
its own encoder.
"""
from __future__ import annotations

import copy
import json

import pytest
from tokenizers import Tokenizer, decoders, normalizers

from latentguard.errors import LatentGuardError
from latentguard.guard import Verdict
from latentguard.pipeline import guard_pipeline
from latentguard.pipeline.reading import reading_key, spelled

diffusers = pytest.importorskip("diffusers")
import tiny_diffusers as td  # noqa: E402
from tiny_diffusers import STEPS, Runs, one_thread  # noqa: E402, F401

pytestmark = pytest.mark.usefixtures("one_thread")
SIZE = dict(height=32, width=32)


@pytest.fixture(scope="module")
def keyword(tiny_encoder):
    return td.KeywordGuard(tiny_encoder)


def _refused(call) -> bool:
    """The guarded call refused (a one-line error) or blocked (a result with no images)."""
    try:
        return bool(call().blocked)
    except LatentGuardError:
        return True


def _rewriting(tokenizer, decoder_too: bool = False) -> None:
    """The tokenizer's normalizer turns "flower" into "knife" (and its decoder, optionally, turns it back)."""
    backend = tokenizer.backend_tokenizer
    backend.normalizer = normalizers.Sequence([normalizers.Replace("flower", "knife"), backend.normalizer])
    if decoder_too:
        backend.decoder = decoders.Sequence([backend.decoder, decoders.Replace("knife", "flower")])


@pytest.mark.parametrize("when", ["before wrapping", "after wrapping", "decoder too"])
def test_a_tokenizer_that_rewrites_a_checked_text_is_caught_at_the_encoder(clip_tokenizer, keyword, when):
    pipe = td.build_sd(copy.deepcopy(clip_tokenizer))
    if when == "before wrapping":
        _rewriting(pipe.tokenizer)
    guarded = guard_pipeline(pipe, keyword)
    if when != "before wrapping":
        _rewriting(pipe.tokenizer, decoder_too=when == "decoder too")
    assert "knife" in pipe.tokenizer.convert_ids_to_tokens(pipe.tokenizer("a flower")["input_ids"])[2]
    runs = Runs(pipe.unet)
    assert _refused(lambda: guarded("a flower in a vase", **SIZE, **STEPS))
    assert runs.n == 0 and "a knife in a vase" in keyword.seen


def test_a_safe_prompt_still_passes_a_tokenizer_that_reads_it_as_typed(clip_tokenizer, keyword):
    guarded = guard_pipeline(td.build_sd(copy.deepcopy(clip_tokenizer)), keyword)
    result = guarded("A Flower, in a vase!", **SIZE, **STEPS)
    assert not result.blocked


def test_another_tokenizer_object_with_swapped_ids_is_refused(clip_tokenizer, keyword, tmp_path):
    from transformers import CLIPTokenizerFast

    pipe = td.build_sd(copy.deepcopy(clip_tokenizer))
    guarded = guard_pipeline(pipe, keyword)
    spec = json.loads(pipe.tokenizer.backend_tokenizer.to_str())
    vocab = spec["model"]["vocab"]
    vocab["flower</w>"], vocab["knife</w>"] = vocab["knife</w>"], vocab["flower</w>"]
    swapped = CLIPTokenizerFast(tokenizer_object=Tokenizer.from_str(json.dumps(spec)),
                                bos_token="<|startoftext|>", eos_token="<|endoftext|>", pad_token="<|endoftext|>",
                                model_max_length=77)
    pipe.tokenizer = swapped  # "a flower" now gives the id the text encoder learned as "knife"
    runs = Runs(pipe.unet)
    assert _refused(lambda: guarded("a flower in a vase", **SIZE, **STEPS))
    assert runs.n == 0


def test_a_row_cut_by_max_sequence_length_is_judged_as_it_reaches_the_encoder(clip_tokenizer, tiny_encoder):
    t5 = td.t5_tokenizer()
    pipe = td.build_flux(copy.deepcopy(clip_tokenizer), t5)
    # The guard judges the whole text as safe (a stand-in for a harmless tail diluting it) but flags the cut.
    guard = td.KeywordGuard(tiny_encoder)
    guard.check = lambda prompts, _g=guard: [
        Verdict(prompt=p, unsafe="knife" in p and "vase" not in p, score=0.0, concept="knife")
        for p in ([prompts] if isinstance(prompts, str) else prompts)]
    guarded = guard_pipeline(pipe, guard)
    text = "a knife on a table in a quiet room with a window and a vase of flowers"
    assert not guard.check([text])[0].unsafe
    cut = len(t5(text)["input_ids"]) // 2
    runs = Runs(pipe.transformer)
    assert _refused(lambda: guarded(text, max_sequence_length=cut, **SIZE, **STEPS))
    assert runs.n == 0
    assert not guarded(text, max_sequence_length=len(t5(text)["input_ids"]) + 4, **SIZE, **STEPS).blocked


def test_spelled_reads_byte_level_sentencepiece_and_wordpiece_vocabularies(clip_tokenizer):
    t5 = td.t5_tokenizer()
    for tokenizer, text in [(clip_tokenizer, "a café in são paulo, at night"), (t5, "a cat on a table")]:
        ids = [i for i in tokenizer(text)["input_ids"] if i not in tokenizer.all_special_ids]
        assert reading_key(spelled(tokenizer, ids)) == reading_key(text)
