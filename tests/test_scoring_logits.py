"""The one scoring pass: same scores as logit_matrix and the released loop, and non-finite logits refused."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from reference import repeat_per_concept_scores

from latentguard.errors import LatentGuardError
from latentguard.model import EmbeddingMappingLayer
from latentguard.scoring import blacklist_logits, head_major_logits, max_scores


class _Source:
    """An in-memory EmbeddingSource."""

    def __init__(self, table: dict[str, torch.Tensor]) -> None:
        self.table = table
        self.identity, self.hidden_size = "test", next(iter(table.values())).shape[-1]

    def get(self, texts):
        return torch.stack([self.table[t] for t in texts])


def _model(in_dim: int = 64, seed: int = 0) -> EmbeddingMappingLayer:
    torch.manual_seed(seed)
    model = EmbeddingMappingLayer(in_dim, num_heads=4, head_dim=8, out_dim=16).eval()
    with torch.no_grad():  # spread the weights so logits are not near-constant
        for name, p in model.named_parameters():
            if name != "tempr":
                p.normal_(0, 0.2)
    return model


@pytest.mark.parametrize("n_prompts,n_concepts", [(1, 1), (5, 7), (9, 130)])
def test_head_major_equals_logit_matrix_and_the_released_loop(n_prompts, n_concepts):
    model = _model()
    prompts, concepts = torch.randn(n_prompts, 78, 64), torch.randn(n_concepts, 64)
    with torch.inference_mode():
        queries = model.concept_queries(concepts)
        fast = head_major_logits(model, prompts, queries)
        matrix = model.logit_matrix(prompts, concepts)
    loop = repeat_per_concept_scores(model.state_dict(), prompts, concepts, num_heads=4)
    assert fast.shape == (n_prompts, n_concepts)
    assert float((fast - matrix).abs().max()) < 1e-5
    assert float((fast - loop).abs().max()) < 1e-5


def test_head_major_concept_chunks_change_nothing(monkeypatch):
    import latentguard.scoring.logits as scoring

    model = _model()
    prompts, concepts = torch.randn(5, 78, 64), torch.randn(40, 64)
    with torch.inference_mode():
        queries = model.concept_queries(concepts)
        whole = head_major_logits(model, prompts, queries)
        monkeypatch.setattr(scoring, "BLOCK_ELEMENTS", 4 * 2 * 78 * 3)  # 3 concepts per chunk
        chunked = head_major_logits(model, prompts, queries, prompts_per_block=2)
    assert float((whole - chunked).abs().max()) < 1e-5


def test_max_scores_gives_each_texts_max_and_argmax_in_order():
    model = _model()
    torch.manual_seed(3)
    texts = [f"t{i}" for i in range(11)]
    source = _Source({t: torch.randn(78, 64) for t in texts})
    concepts = torch.randn(6, 64)
    score, best = max_scores(model, source, texts, concepts, batch_size=4, device="cpu")
    expected = model.logit_matrix(source.get(texts), concepts).detach()
    np.testing.assert_allclose(score, expected.max(dim=1).values.double().numpy(), atol=1e-5)
    assert best.tolist() == expected.argmax(dim=1).tolist()


def test_nan_in_the_weights_is_refused_not_scored():
    model = _model()
    with torch.no_grad():
        model.final_mlp.weight[0, 0] = float("nan")
    prompts, concepts = torch.randn(3, 78, 64), torch.randn(5, 64)
    with torch.inference_mode():
        queries = model.concept_queries(concepts)
    with pytest.raises(LatentGuardError, match="not finite"):
        blacklist_logits(model, prompts, queries)


def test_nan_in_a_concept_vector_is_refused_not_scored():
    model = _model()
    texts = ["a", "b", "c"]
    source = _Source({t: torch.randn(78, 64) for t in texts})
    concepts = torch.randn(4, 64)
    concepts[2, 7] = float("nan")
    with pytest.raises(LatentGuardError, match="not finite") as caught:
        max_scores(model, source, texts, concepts, batch_size=2, device="cpu")
    assert "\n" not in str(caught.value)


def test_a_guard_with_nan_weights_raises_instead_of_a_verdict(tiny_encoder):
    from latentguard.guard import LatentGuard

    model = EmbeddingMappingLayer(tiny_encoder.hidden_size)
    guard = LatentGuard(model, tiny_encoder, ["knife", "blood"], cache_concepts=False)
    with torch.no_grad():
        model.x1_to_value.bias.fill_(float("inf"))
    with pytest.raises(LatentGuardError, match="not finite"):
        guard.check(["a knife on the table"])
