"""Long prompts: overlapping 77-token windows, scored window by window, maximum per prompt."""
from __future__ import annotations

import random

import pytest
import torch

from latentguard.encoders import DEFAULT_WINDOW_STRIDE, window_starts
from latentguard.errors import LatentGuardError
from latentguard.model import EmbeddingMappingLayer
from latentguard.scoring import max_over_windows, windowed_logit_matrix

# Words that are one CLIP BPE token each, so token positions are easy to reason about.
FILLER = ("the photo of green house tree river sky blue red small large city street morning light dog cat "
          "bird table chair window garden flower mountain lake road car boat cloud sun moon field forest "
          "girl boy man woman book").split()


def filler(rng: random.Random, n: int) -> list[str]:
    return [rng.choice(FILLER) for _ in range(n)]


# ------------------------------------------------------------------------- max_over_windows
def test_max_over_windows_matches_a_loop():
    torch.manual_seed(0)
    owner = torch.tensor([0, 0, 2, 2, 2, 3, 0])  # prompt 1 has no window
    logits = torch.randn(7, 5)
    out, which = max_over_windows(logits, owner, 4, return_window=True)
    for p in range(4):
        rows = (owner == p).nonzero().flatten()
        if rows.numel() == 0:
            assert torch.isinf(out[p]).all() and (which[p] == -1).all()
            continue
        torch.testing.assert_close(out[p], logits[rows].amax(0))
        for c in range(5):
            assert owner[which[p, c]] == p and logits[which[p, c], c] == out[p, c]
    assert torch.equal(max_over_windows(logits, owner, 4), out)


def test_max_over_windows_rejects_bad_owners():
    with pytest.raises(LatentGuardError, match="owners must lie"):
        max_over_windows(torch.zeros(2, 3), torch.tensor([0, 5]), 2)
    with pytest.raises(LatentGuardError, match="must be"):
        max_over_windows(torch.zeros(2, 3), torch.tensor([0]), 2)


# ---------------------------------------------------------------------------- the windows
def test_window_starts_cover_everything_with_overlap():
    assert window_starts(10, 75, 50) == [0]
    assert window_starts(75, 75, 50) == [0]
    for n in (76, 124, 125, 126, 200, 451):
        starts = window_starts(n, 75, 50)
        covered = set()
        for s in starts:
            covered.update(range(s, s + 75))
        assert covered == set(range(n)) and starts[-1] + 75 == n
        assert all(0 < b - a <= 50 for a, b in zip(starts, starts[1:]))  # overlap >= 25 tokens


def test_short_prompts_give_one_window_identical_to_encode(tiny_encoder):
    texts = ["a photo of a knife", "blood on the floor", "gun"]
    emb, owner = tiny_encoder.encode_windows(texts, batch_size=2)
    assert owner.tolist() == [0, 1, 2]
    assert torch.equal(emb, tiny_encoder.encode(texts, batch_size=2))


def test_long_prompt_windows_are_complete_inputs(tiny_encoder, clip_tokenizer):
    rng = random.Random(1)
    long_text = " ".join(filler(rng, 180))
    content = clip_tokenizer(long_text, add_special_tokens=False)["input_ids"]
    windows = tiny_encoder.window_ids(long_text)
    assert len(windows) == len(window_starts(len(content), 75, DEFAULT_WINDOW_STRIDE)) >= 3
    for ids in windows:
        assert ids[0] == 49406 and ids[-1] == 49407 and len(ids) == 77
    # the windows, stripped of their special tokens, tile the prompt in order
    assert windows[0][1:-1] == content[:75] and windows[-1][1:-1] == content[-75:]
    emb, owner = tiny_encoder.encode_windows(["a cat", long_text, "a dog"], batch_size=2)
    assert owner.tolist() == [0] + [1] * len(windows) + [2]
    assert emb.shape == (len(windows) + 2, 78, 768)
    # a window is encoded exactly like a prompt made of its tokens
    ids = torch.tensor([windows[1]])
    with torch.no_grad():
        hidden = tiny_encoder.model(input_ids=ids).last_hidden_state[0]
    torch.testing.assert_close(emb[2, 1:], hidden)
    torch.testing.assert_close(emb[2, 0], hidden[76])
    strings = tiny_encoder.window_token_strings(long_text)
    assert len(strings) == len(windows) and strings[1] == clip_tokenizer.convert_ids_to_tokens(windows[1])


def test_window_options_are_checked(tiny_encoder):
    with pytest.raises(LatentGuardError, match="stride"):
        tiny_encoder.encode_windows(["a cat"], stride=80)
    with pytest.raises(LatentGuardError, match="window must be"):
        tiny_encoder.encode_windows(["a cat"], window=78)
    # a smaller window with an explicit stride works and still ends every window with EOS
    windows = tiny_encoder.window_ids(" ".join(["cat"] * 40), window=20, stride=10)
    assert all(len(w) <= 20 and w[-1] == 49407 for w in windows) and len(windows) == 4  # starts 0, 10, 20, 22


def test_windowed_logit_matrix_streams_the_same_maximum(tiny_encoder):
    torch.manual_seed(0)
    model = EmbeddingMappingLayer(768, num_heads=2, head_dim=8, out_dim=8).eval()
    rng = random.Random(2)
    prompts = ["a knife", " ".join(filler(rng, 130)), "blood on the floor", " ".join(filler(rng, 90))]
    concepts = tiny_encoder.encode_concepts(["knife", "blood", "gun"])
    streamed = windowed_logit_matrix(model, tiny_encoder, prompts, concepts, batch_size=3)
    emb, owner = tiny_encoder.encode_windows(prompts)
    with torch.no_grad():
        expected = max_over_windows(model.logit_matrix(emb, concepts), owner, len(prompts))
        plain = model.logit_matrix(tiny_encoder.encode(prompts), concepts)
    torch.testing.assert_close(streamed, expected)
    torch.testing.assert_close(streamed[[0, 2]], plain[[0, 2]])  # short prompts: unchanged scores


# ----------------------------------------------------------- a concept after the 77th token
def word_detector(encoder, word: str, cut: float = 8.0, sharpness: float = 4.0) -> EmbeddingMappingLayer:
    """A mapping layer (1 head of 2) whose logit is about +tempr when ``word`` is among the rows, else -tempr.

    Keys and values are the rows' projection on the word's embedding direction minus ``cut``, the
    query is constant, so attention lands on the row most like the word and the logit's sign says
    whether that row clears the cut. It reads whatever rows it is given: it cannot see a word
    that truncation removed.
    """
    token = encoder.tokenizer.convert_tokens_to_ids(word + "</w>")
    direction = torch.nn.functional.normalize(encoder.model.get_input_embeddings().weight[token].detach(), dim=0)
    model = EmbeddingMappingLayer(768, num_heads=1, head_dim=2, out_dim=2)
    with torch.no_grad():
        for layer in (model.x1_to_key, model.x1_to_value, model.x2_to_query, model.final_mlp, model.mlp_query1):
            layer.weight.zero_()
            layer.bias.zero_()
        model.x1_to_key.weight[0] = sharpness * direction
        model.x1_to_key.bias[0] = -sharpness * cut
        model.x1_to_value.weight[0] = direction
        model.x1_to_value.bias[0] = -cut
        model.x2_to_query.bias[0] = 2 ** 0.5  # divided by sqrt(head_dim) inside: query = [1, 0]
        model.final_mlp.weight[0, 0] = 1.0
        model.final_mlp.bias[1] = 0.5  # keeps cos graded (not saturated at +-1), as trained weights are
        model.mlp_query1.bias[0] = 1.0
    return model.eval()


def test_concept_after_token_77_is_caught_only_with_windows(bag_of_tokens_encoder):
    encoder = bag_of_tokens_encoder
    model = word_detector(encoder, "knife")
    concept = encoder.encode_concepts(["knife"])
    rng = random.Random(123)
    hidden_knife = " ".join(filler(rng, 120) + ["knife"] + filler(rng, 20))  # 'knife' is token 121 of 141
    at_the_end = " ".join(filler(rng, 200) + ["knife"])                       # the very last token
    long_safe = " ".join(filler(rng, 150))
    short_knife = " ".join(filler(rng, 10) + ["knife"] + filler(rng, 5))
    prompts = [hidden_knife, at_the_end, long_safe, short_knife]
    with torch.no_grad():
        truncated = model.logit_matrix(encoder.encode(prompts), concept)[:, 0]
    windowed = windowed_logit_matrix(model, encoder, prompts, concept, batch_size=4)[:, 0]
    threshold = 0.0
    assert (truncated[:2] < threshold).all() and (windowed[:2] > threshold).all()  # caught only with windows
    assert truncated[2] < threshold and windowed[2] < threshold  # a long safe prompt stays safe
    assert truncated[3] > threshold and windowed[3] == truncated[3]  # short prompts: unchanged


# -------------------------------------------------- LatentGuard integration (after the guard.py patch)
def test_guard_long_prompts_option(bag_of_tokens_encoder):
    import inspect

    from latentguard.guard import LatentGuard

    if "long_prompts" not in inspect.signature(LatentGuard.__init__).parameters:
        pytest.skip("LatentGuard(long_prompts=...) is not there yet (see the guard.py patch)")
    encoder = bag_of_tokens_encoder
    rng = random.Random(7)
    hidden_knife = " ".join(filler(rng, 120) + ["knife"] + filler(rng, 20))
    prompts = [hidden_knife, " ".join(filler(rng, 150)), "a knife on the table"]
    plain = LatentGuard(word_detector(encoder, "knife"), encoder, ["knife"], threshold=0.0, cache_concepts=False)
    windowed = LatentGuard(word_detector(encoder, "knife"), encoder, ["knife"], threshold=0.0, cache_concepts=False,
                           long_prompts=True)
    assert [v.unsafe for v in plain.check(prompts)] == [False, False, True]  # truncated: missed
    verdicts = windowed.check(prompts)
    assert [v.unsafe for v in verdicts] == [True, False, True]
    assert verdicts[0].evidence[0][0] == "knife"  # explained from the window that fired
    assert verdicts[2].score == pytest.approx(plain.check(prompts[2:])[0].score)
