"""The Embedding Mapping Layer: fast paths agree with the plain reference loops; checkpoints load strictly."""
from __future__ import annotations

import pytest
import reference
import torch

from latentguard.errors import LatentGuardError
from latentguard.model import EmbeddingMappingLayer, expected_shapes, load_mapping_layer

RELEASED_SHAPES = {
    "x1_to_key.weight": (512, 768), "x1_to_key.bias": (512,),
    "x1_to_value.weight": (512, 768), "x1_to_value.bias": (512,),
    "x2_to_query.weight": (512, 768), "x2_to_query.bias": (512,),
    "final_mlp.weight": (128, 512), "final_mlp.bias": (128,),
    "mlp_query1.weight": (128, 512), "mlp_query1.bias": (128,),
    "tempr": (),
}


def _model(in_dim: int = 768, seed: int = 0, **kw) -> EmbeddingMappingLayer:
    """A layer with weights large enough that attention is far from uniform (a weak test otherwise)."""
    torch.manual_seed(seed)
    model = EmbeddingMappingLayer(in_dim, **kw)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name != "tempr":
                p.normal_(0.0, 0.08)
    return model.eval()


def _pairwise(model: EmbeddingMappingLayer, prompts: torch.Tensor, concepts: torch.Tensor) -> torch.Tensor:
    """Every (prompt, concept) pair through the aligned-pair forward: the released expansion."""
    p, c = prompts.shape[0], concepts.shape[0]
    return model(prompts.repeat_interleave(c, dim=0), concepts.repeat(p, 1)).view(p, c)


@pytest.mark.parametrize("p,c,length,chunk", [
    (3, 5, 78, None),        # one chunk
    (7, 11, 78, 4000),       # several concept and prompt chunks
    (5, 9, 78, 1),           # tiniest chunks: one pair at a time
    (4, 6, 13, 2500),        # fewer rows than CLIP's 78
    (2, 3, 120, None),       # more rows (e.g. a longer encoder)
])
def test_logit_matrix_matches_pairwise_and_reference(p, c, length, chunk):
    model = _model()
    prompts, concepts = torch.randn(p, length, 768), torch.randn(c, 768)
    kwargs = {} if chunk is None else {"chunk_elements": chunk}
    with torch.no_grad():
        fast = model.logit_matrix(prompts, concepts, **kwargs)
        pairwise = _pairwise(model, prompts, concepts)
    slow = reference.repeat_per_concept_scores(model.state_dict(), prompts, concepts)
    assert fast.shape == (p, c)
    assert (fast - pairwise).abs().max().item() <= 1e-4
    assert (fast - slow).abs().max().item() <= 1e-4
    # not a degenerate comparison: the logits vary across pairs
    assert fast.std().item() > 0.1


def test_default_chunking_with_the_released_concept_count():
    """578 concepts: the default chunking splits the prompts; results equal one unchunked pass."""
    model = _model(seed=3)
    prompts, concepts = torch.randn(9, 78, 768), torch.randn(578, 768)
    with torch.no_grad():
        chunked = model.logit_matrix(prompts, concepts)  # default: 7 prompts per chunk at 578 concepts
        whole = model.logit_matrix(prompts, concepts, chunk_elements=1 << 40)
        one = _pairwise(model, prompts[-1:], concepts)  # a prompt of the second chunk, pair by pair
    assert (chunked - whole).abs().max().item() <= 1e-4
    assert (chunked[-1:] - one).abs().max().item() <= 1e-4


def test_precomputed_queries_give_the_same_logits():
    model = _model(seed=7)
    prompts, concepts = torch.randn(3, 78, 768), torch.randn(10, 768)
    with torch.no_grad():
        queries = model.concept_queries(concepts)
        torch.testing.assert_close(model.logit_matrix(prompts, None, queries=queries),
                                   model.logit_matrix(prompts, concepts), rtol=0, atol=0)
        torch.testing.assert_close(model.logit_matrix(prompts, None, 3000, queries=queries),
                                   model.logit_matrix(prompts, concepts), rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match="precomputed queries"):
        model.logit_matrix(prompts, None)


def test_logit_matrix_empty_inputs():
    model = _model()
    assert model.logit_matrix(torch.randn(0, 78, 768), torch.randn(4, 768)).shape == (0, 4)
    assert model.logit_matrix(torch.randn(3, 78, 768), torch.randn(0, 768)).shape == (3, 0)


def test_logit_matrix_rejects_bad_shapes():
    model = _model()
    with pytest.raises(LatentGuardError, match=r"\[P, L, 768\]"):
        model.logit_matrix(torch.randn(2, 78, 512), torch.randn(3, 768))
    with pytest.raises(LatentGuardError, match=r"\[C, 768\]"):
        model.logit_matrix(torch.randn(2, 78, 768), torch.randn(3, 1, 768))


def test_gradients_match_pairwise_expansion():
    torch.manual_seed(1)
    prompts, concepts = torch.randn(4, 78, 768), torch.randn(6, 768)
    target = torch.randn(4, 6)
    scorers = {
        "logit_matrix": lambda m, x, c: m.logit_matrix(x, c, chunk_elements=3000),  # several chunks
        "pairwise": _pairwise,
    }
    grads = {}
    for name, score in scorers.items():
        model = _model(seed=2).train()
        x, c = prompts.clone().requires_grad_(True), concepts.clone().requires_grad_(True)
        out = score(model, x, c)
        loss = (out - target).pow(2).sum() + out.logsumexp(dim=1).sum()
        loss.backward()
        grads[name] = {n: p.grad.clone() for n, p in model.named_parameters()}
        grads[name].update(prompt_input=x.grad.clone(), concept_input=c.grad.clone())
    fast, slow = grads["logit_matrix"], grads["pairwise"]
    assert set(fast) == set(slow)
    for name in slow:
        scale = slow[name].abs().max().item()
        assert scale > 0, name
        assert (fast[name] - slow[name]).abs().max().item() <= 1e-4 * max(1.0, scale), name


def test_contrastive_loss_via_logit_matrix_matches_reference():
    """The released ``main.py`` loss computed from two logit matrices equals the full-expansion reference loss."""
    torch.manual_seed(4)
    n = 5
    unsafe, safe, concepts = torch.randn(n, 78, 768), torch.randn(n, 78, 768), torch.randn(n, 768)
    model = _model(seed=5)
    u, s = model.logit_matrix(unsafe, concepts), model.logit_matrix(safe, concepts)
    labels = torch.arange(n)
    prompt_side = torch.cat([u, s.max(dim=1).values.unsqueeze(0).expand(n, n)], dim=1)
    concept_side = torch.cat([u.T, s.T], dim=1)
    ce = torch.nn.functional.cross_entropy
    ours = ce(prompt_side, labels) + ce(concept_side, labels)
    ref = reference.naive_contrastive_loss(model.state_dict(), unsafe, safe, concepts)
    assert abs(ours.item() - ref.item()) <= 1e-4


def test_attend_weights_reproduce_logits():
    """The explanation path (attend with weights) gives the same logits as logit_matrix."""
    model = _model(seed=6)
    prompts, concepts = torch.randn(3, 78, 768), torch.randn(4, 768)
    with torch.no_grad():
        keys, values = model.prompt_keys_values(prompts)
        queries, q_out = model.concept_queries(concepts)
        v_out, weights = model.attend(keys, values, queries, return_attention=True)
        logits = model.tempr * (v_out * q_out).sum(-1)
        expected = model.logit_matrix(prompts, concepts)
    assert weights.shape == (3, 16, 4, 78)
    torch.testing.assert_close(weights.sum(-1), torch.ones(3, 16, 4))
    assert (logits - expected).abs().max().item() <= 1e-4


# ------------------------------------------------------------------------------ checkpoints
def _released_state(seed: int = 0) -> dict[str, torch.Tensor]:
    """A state dict in the released layout, built from raw tensors (not from our module)."""
    g = torch.Generator().manual_seed(seed)
    state = {k: torch.randn(shape, generator=g) * 0.05 for k, shape in RELEASED_SHAPES.items()}
    state["tempr"] = torch.tensor(1 / 0.07)
    return state


def test_module_layout_is_the_released_layout():
    assert expected_shapes() == RELEASED_SHAPES
    n_params = sum(p.numel() for p in EmbeddingMappingLayer().parameters())
    assert n_params == 1_312_513  # "about 1.31 M parameters"


def test_released_format_round_trip(tmp_path):
    state = _released_state()
    path = tmp_path / "model_parameters.pth"
    torch.save(state, path)
    model = load_mapping_layer(path)
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, state[name]), name
    prompts, concepts = torch.randn(2, 78, 768), torch.randn(3, 768)
    with torch.no_grad():
        ours = model.logit_matrix(prompts, concepts)
    ref = reference.repeat_per_concept_scores(state, prompts, concepts)
    assert (ours - ref).abs().max().item() <= 1e-4
    # save -> load again: identical scores
    torch.save(model.state_dict(), tmp_path / "again.pth")
    with torch.no_grad():
        again = load_mapping_layer(tmp_path / "again.pth").logit_matrix(prompts, concepts)
    assert torch.equal(ours, again)


def test_one_element_tempr_is_accepted(tmp_path):
    state = _released_state()
    state["tempr"] = torch.tensor([7.5])
    torch.save(state, tmp_path / "t.pth")
    model = load_mapping_layer(tmp_path / "t.pth", in_dim=768)
    assert model.tempr.shape == () and model.tempr.item() == 7.5


def test_wrapped_state_dict_is_accepted(tmp_path):
    torch.save({"model": _released_state(), "epoch": torch.tensor(3)}, tmp_path / "w.pth")
    assert load_mapping_layer(tmp_path / "w.pth").x1_to_key.weight.shape == (512, 768)


def _save(tmp_path, state, name="ckpt.pth"):
    path = tmp_path / name
    torch.save(state, path)
    return path


@pytest.mark.parametrize("edit,pattern", [
    (lambda s: s.pop("x1_to_key.bias"), r"missing keys: x1_to_key\.bias"),
    (lambda s: s.pop("x1_to_key.weight"), r"missing keys: x1_to_key\.weight"),
    (lambda s: s.pop("final_mlp.weight"), r"missing keys: final_mlp\.weight"),
    (lambda s: s.update(extra_head=torch.zeros(3)), r"unexpected keys: extra_head"),
    (lambda s: s.update({"mlp_query1.weight": torch.zeros(64, 512)}),
     r"wrong shapes: mlp_query1\.weight \[64, 512\] \(expected \[128, 512\]\)"),
    (lambda s: s.update({"x1_to_key.weight": torch.zeros(500, 768)}), r"wrong shapes: x1_to_key\.weight \[500, 768\]"),
    (lambda s: s.update({"x2_to_query.bias": torch.zeros(511)}), r"wrong shapes: x2_to_query\.bias \[511\]"),
    (lambda s: s.update(tempr=torch.zeros(2)), r"wrong shapes: tempr \[2\]"),
])
def test_checkpoint_problems_are_named(tmp_path, edit, pattern):
    state = _released_state()
    edit(state)
    path = _save(tmp_path, state)
    with pytest.raises(LatentGuardError, match=pattern) as info:
        load_mapping_layer(path, in_dim=768)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_several_problems_in_one_message(tmp_path):
    state = _released_state()
    state.pop("final_mlp.bias")
    state["junk"] = torch.zeros(1)
    path = _save(tmp_path, state)
    with pytest.raises(LatentGuardError, match=r"missing keys: final_mlp\.bias; unexpected keys: junk"):
        load_mapping_layer(path)


def test_encoder_width_mismatch(tmp_path):
    path = _save(tmp_path, _released_state())
    with pytest.raises(LatentGuardError, match=r"encoder width 768.*hidden size is 1024"):
        load_mapping_layer(path, in_dim=1024)


@pytest.mark.parametrize("payload,pattern", [
    ([1, 2, 3], "not a state dict of tensors"),
    ({"x1_to_key.weight": "text"}, "not a state dict of tensors"),
    ({}, "no Embedding Mapping Layer weights"),
    ({"some.other.weight": torch.zeros(3, 3)}, "no Embedding Mapping Layer weights"),
])
def test_non_state_dict_files(tmp_path, payload, pattern):
    path = _save(tmp_path, payload)
    with pytest.raises(LatentGuardError, match=pattern):
        load_mapping_layer(path)


def test_corrupt_and_missing_files(tmp_path):
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"this is not a checkpoint" * 50)
    with pytest.raises(LatentGuardError, match=r"garbage\.pth: cannot read checkpoint") as info:
        load_mapping_layer(garbage)
    assert "weights_only=False" not in str(info.value)  # never advise unsafe loading
    good = _save(tmp_path, _released_state(), "good.pth")
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(good.read_bytes()[:4000])
    with pytest.raises(LatentGuardError, match="cannot read checkpoint"):
        load_mapping_layer(truncated)
    with pytest.raises(LatentGuardError, match="checkpoint not found"):
        load_mapping_layer(tmp_path / "nope.pth")


def test_pickled_module_is_refused(tmp_path):
    """A whole pickled model (arbitrary code on load) is refused: weights_only=True."""
    path = tmp_path / "module.pth"
    torch.save(EmbeddingMappingLayer(), path)
    with pytest.raises(LatentGuardError, match="state_dict"):
        load_mapping_layer(path)


def test_other_widths_load(tmp_path):
    """A checkpoint trained for another encoder width (e.g. 1024) builds a fitting layer."""
    model = _model(in_dim=64, head_dim=8, out_dim=32)
    path = _save(tmp_path, model.state_dict())
    loaded = load_mapping_layer(path, in_dim=64)
    assert (loaded.in_dim, loaded.head_dim, loaded.out_dim) == (64, 8, 32)
    x, c = torch.randn(2, 78, 64), torch.randn(3, 64)
    with torch.no_grad():
        assert torch.equal(loaded.logit_matrix(x, c), model.logit_matrix(x, c))
