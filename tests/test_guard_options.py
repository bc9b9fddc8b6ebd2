"""The guard's options (latentguard/guard/options.py): one frozen object, checked once, passed whole."""
from __future__ import annotations

import dataclasses

import pytest
import torch

from latentguard.errors import LatentGuardError
from latentguard.guard import LatentGuard
from latentguard.guard.options import GuardOptions
from latentguard.model import EmbeddingMappingLayer


@pytest.mark.parametrize("bad", [dict(top_k=0), dict(batch_size=True), dict(batch_size=2.0), dict(window_stride=0),
                                 dict(threshold=float("nan")), dict(threshold=None)])
def test_bad_options_are_refused_when_built(bad):
    with pytest.raises(LatentGuardError):
        GuardOptions(**bad)


def test_options_are_frozen_and_unknown_names_refused():
    options = GuardOptions()
    with pytest.raises(dataclasses.FrozenInstanceError):
        options.top_k = 5
    with pytest.raises(TypeError, match="split_sentence"):
        GuardOptions.build(split_sentence=False)  # a misspelt option never passes unnoticed
    assert GuardOptions.build(options, top_k=None) == options  # None: unset, the base's value stays


def test_a_guard_takes_the_object_whole_and_keywords_over_it(tiny_encoder):
    torch.manual_seed(0)
    options = GuardOptions(threshold=3.0, top_k=2, normalize_text=False, split_sentences=False, cache_concepts=False)
    guard = LatentGuard(EmbeddingMappingLayer(), tiny_encoder, ["knife", "blood", "gun"], options=options, top_k=1)
    assert guard.threshold == 3.0 and guard.top_k == 1 and not guard.normalize_text and not guard.split_sentences
    assert guard.options.top_k == 1 and guard.options.threshold == 3.0
    verdict = guard.check("a knife", explain=False)[0]
    assert len(verdict.top_concepts) == 1
    with pytest.raises(LatentGuardError, match="top_k"):
        guard.top_k = 0  # setting a plain option checks it again
    assert guard.top_k == 1


def test_the_options_snapshot_follows_calibration(tiny_encoder):
    torch.manual_seed(0)
    guard = LatentGuard(EmbeddingMappingLayer(), tiny_encoder, ["knife", "blood"], cache_concepts=False)
    result = guard.calibrate(["a cat on a sofa", "a bowl of fruit"], target_fpr=0.0)
    assert guard.options.threshold == result.threshold and guard.options.slope == guard.slope
    again = LatentGuard(guard.model, tiny_encoder, ["knife", "blood"], options=guard.options)
    assert again.threshold == guard.threshold and again.options == guard.options
