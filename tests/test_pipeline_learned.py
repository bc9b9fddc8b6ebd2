"""Learned tokens however they were added: an id the pipeline's tokenizer did not have when the
guard checked it (at wrapping), a token registered as a special one, a vocabulary edit, resized embeddings,
reaches a text encoder only when the guard reads that encoder. On the tiny real SD pipeline."""
from __future__ import annotations

import copy

import pytest
import torch

from latentguard.errors import LatentGuardError
from latentguard.guard import LatentGuard
from latentguard.model import EmbeddingMappingLayer
from latentguard.pipeline import encoder_from_pipeline, guard_pipeline

diffusers = pytest.importorskip("diffusers")
import tiny_diffusers as td  # noqa: E402
from tiny_diffusers import STEPS, Runs, one_thread  # noqa: E402, F401

pytestmark = pytest.mark.usefixtures("one_thread")
CONCEPTS = ["knife", "blood", "gun"]


@pytest.fixture(scope="module")
def own_guard(tiny_encoder):
    torch.manual_seed(0)
    return LatentGuard(EmbeddingMappingLayer(), tiny_encoder, CONCEPTS, threshold=14.0, cache_concepts=False)


def _evil(pipe, special: bool = True) -> int:
    """``<evil>`` added to the tokenizer, the text encoder resized and the new row given "knife"'s meaning."""
    tokenizer, encoder = pipe.tokenizer, pipe.text_encoder
    if special:
        tokenizer.add_special_tokens({"additional_special_tokens": ["<evil>"]})
    else:
        tokenizer.add_tokens(["<evil>"])
    encoder.resize_token_embeddings(len(tokenizer))
    new = tokenizer.convert_tokens_to_ids("<evil>")
    knife = tokenizer.convert_tokens_to_ids("knife</w>")
    with torch.no_grad():
        encoder.get_input_embeddings().weight[new] = encoder.get_input_embeddings().weight[knife]
    return new


def _reaching(pipe):
    seen = []
    handle = pipe.text_encoder.register_forward_pre_hook(
        lambda m, args, kwargs: seen.append(kwargs.get("input_ids", args[0] if args else None)), with_kwargs=True)
    return seen, handle


@pytest.mark.parametrize("special", [True, False])
@pytest.mark.parametrize("when", ["before wrapping", "after wrapping"])
def test_a_learned_token_never_reaches_the_encoder_past_a_guard_on_its_own_encoder(clip_tokenizer, own_guard,
                                                                                    special, when):
    pipe = td.build_sd(copy.deepcopy(clip_tokenizer))
    if when == "before wrapping":
        new = _evil(pipe, special)
        guarded = guard_pipeline(pipe, own_guard)
    else:
        guarded = guard_pipeline(pipe, own_guard)
        new = _evil(pipe, special)
    seen, handle = _reaching(pipe)
    runs = Runs(pipe.unet)
    try:
        with pytest.raises(LatentGuardError, match="<evil>"):
            guarded("a man holding a <evil>", height=32, width=32, **STEPS)
        with pytest.raises(LatentGuardError):  # a forwarded method: checked at the encoder
            guarded.encode_prompt("a man holding a <evil>", "cpu", 1, False)
    finally:
        handle.remove()
    assert runs.n == 0 and not any(new in ids.reshape(-1).tolist() for ids in seen if ids is not None)


def _edit_vocabulary(tokenizer, token: str, new_id: int) -> None:
    """Point ``token`` at ``new_id`` in the BPE model itself (no add_tokens: not an added token)."""
    import json

    from tokenizers import Tokenizer

    spec = json.loads(tokenizer.backend_tokenizer.to_str())
    spec["model"]["vocab"][token] = new_id
    tokenizer._tokenizer = Tokenizer.from_str(json.dumps(spec))


@pytest.mark.parametrize("edit", ["re-pointed", "new row"])
def test_a_vocabulary_edit_after_wrapping_is_refused(clip_tokenizer, own_guard, edit):
    pipe = td.build_sd(copy.deepcopy(clip_tokenizer))
    guarded = guard_pipeline(pipe, own_guard)
    tokenizer = pipe.tokenizer
    knife = tokenizer.convert_tokens_to_ids("knife</w>")
    if edit == "re-pointed":  # "flower" now reads as knife's id
        _edit_vocabulary(tokenizer, "flower</w>", knife)
    else:  # a word beyond the vocabulary and the embedding rows the guard checked, given knife's meaning
        rows = pipe.text_encoder.get_input_embeddings().num_embeddings
        pipe.text_encoder.resize_token_embeddings(rows + 1)
        with torch.no_grad():
            weight = pipe.text_encoder.get_input_embeddings().weight
            weight[rows] = weight[knife]
        _edit_vocabulary(tokenizer, "flower</w>", rows)
    assert tokenizer("a flower", add_special_tokens=False)["input_ids"][-1] in (knife, rows if edit != "re-pointed"
                                                                                  else knife)
    runs = Runs(pipe.unet)
    with pytest.raises(LatentGuardError, match="guard does not read"):
        guarded("a flower in a vase", height=32, width=32, **STEPS)
    assert runs.n == 0


def test_a_guard_that_reads_the_encoder_judges_the_learned_token(clip_tokenizer):
    pipe = td.build_sd(copy.deepcopy(clip_tokenizer))
    _evil(pipe)
    torch.manual_seed(0)
    guard = LatentGuard(EmbeddingMappingLayer(in_dim=32), encoder_from_pipeline(pipe), CONCEPTS, cache_concepts=False)
    guard.threshold = float(guard.scores(["a man holding a <evil>"]).max()) + 1.0
    result = guard_pipeline(pipe, guard)("a man holding a <evil>", height=32, width=32, **STEPS)
    assert not result.blocked  # judged on the encoder that holds its learned row, and below the threshold here


# ----------------------------------------- the shared encoder's weights, sealed in full at wrapping
@pytest.mark.parametrize("edit", ["a middle row", "load_state_dict", "a layer's weight"])
def test_any_edit_of_the_shared_encoders_weights_after_wrapping_is_refused(clip_tokenizer, edit):
    pipe = td.build_sd(copy.deepcopy(clip_tokenizer))
    torch.manual_seed(0)
    guard = LatentGuard(EmbeddingMappingLayer(in_dim=32), encoder_from_pipeline(pipe), CONCEPTS, cache_concepts=False)
    guarded = guard_pipeline(pipe, guard)
    encoder = pipe.text_encoder
    flower = pipe.tokenizer.convert_tokens_to_ids("flower</w>")  # id 4056: neither in the first nor the last 512
    knife = pipe.tokenizer.convert_tokens_to_ids("knife</w>")    # values the old sampled fingerprint read
    with torch.no_grad():
        if edit == "a middle row":
            encoder.get_input_embeddings().weight[flower] = encoder.get_input_embeddings().weight[knife]
        elif edit == "load_state_dict":
            state = {k: v.clone() for k, v in encoder.state_dict().items()}
            key = next(k for k in state if k.endswith("token_embedding.weight"))
            state[key][flower] += 1.0
            encoder.load_state_dict(state)
        else:
            weight = next(p for n, p in encoder.named_parameters() if n.endswith("fc1.weight"))
            weight[weight.shape[0] // 2, weight.shape[1] // 2] += 1.0
    runs = Runs(pipe.unet)
    with pytest.raises(LatentGuardError, match="changed since the pipeline was wrapped"):
        guarded("a flower in a vase", height=32, width=32, **STEPS)
    assert runs.n == 0


def test_the_seal_rehashes_only_when_torch_saw_a_change_and_full_checks_see_the_rest(clip_tokenizer):
    from latentguard.pipeline.parts import WeightsSeal

    pipe = td.build_sd(copy.deepcopy(clip_tokenizer))
    encoder = pipe.text_encoder
    seal = WeightsSeal("text_encoder", encoder)
    assert seal.verify(encoder)
    with torch.no_grad():  # the same values written back: torch saw a write, the content is the sealed one
        row = encoder.get_input_embeddings().weight
        row[7] = row[7].clone()
    assert seal.verify(encoder)
    encoder.get_input_embeddings().weight.data[4056] += 1.0  # bypasses torch's version counter
    assert not seal.verify(encoder, full=True)
