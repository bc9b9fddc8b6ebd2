"""The 78-row embedding layout of the released ``inference.py``, checked against a direct CLIPTextModel call."""
from __future__ import annotations

import pytest
import torch
from conftest import tiny_clip_text_model

from latentguard.encoders import CLIPTextEncoder, load_encoder
from latentguard.errors import LatentGuardError


def test_tokenizer_matches_open_clip_ids(clip_tokenizer):
    import open_clip

    reference = open_clip.get_tokenizer("ViT-L-14")
    for text in ["a photo of a cat", "A man gets MURDERED in the street!!", "naïve café — déjà vu 123"]:
        ours = clip_tokenizer(text, padding="max_length", max_length=77, truncation=True)["input_ids"]
        theirs = reference([text])[0].tolist()
        n = theirs.index(49407) + 1
        assert ours[:n] == theirs[:n]
        assert ours[n:] == [49407] * (77 - n)  # HF pads with <|endoftext|>, as the reference says


def test_layout_row0_is_first_eos_state(tiny_encoder, clip_tokenizer):
    texts = ["a photo of a knife", "blood on the floor of a long dark corridor at night", "gun"]
    emb = tiny_encoder.encode(texts, batch_size=2)
    assert emb.shape == (3, 78, 768) and emb.dtype == torch.float32
    ids = clip_tokenizer(texts, padding="max_length", max_length=77, truncation=True, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        hidden = tiny_encoder.model(input_ids=ids).last_hidden_state  # no attention mask, as released
    first_eos = [row.tolist().index(49407) for row in ids]
    for i, pos in enumerate(first_eos):
        torch.testing.assert_close(emb[i, 0], hidden[i, pos])
        torch.testing.assert_close(emb[i, 1:], hidden[i])
    # the pooled row moves with the prompt length: it is not a fixed position
    assert len(set(first_eos)) == 3


def test_batching_does_not_change_embeddings(tiny_encoder):
    texts = [f"prompt number {i} with a knife" for i in range(5)]
    torch.testing.assert_close(tiny_encoder.encode(texts, batch_size=5), tiny_encoder.encode(texts, batch_size=2))


def test_long_prompt_is_truncated_with_eos(tiny_encoder, clip_tokenizer):
    text = " ".join(["knife"] * 200)
    ids = tiny_encoder.tokenize([text])["input_ids"][0]
    assert ids.shape[0] == 77 and ids[-1].item() == 49407 and ids.argmax().item() == 76


def test_concept_vector_is_row0(tiny_encoder):
    concepts = ["knife", "blood"]
    torch.testing.assert_close(tiny_encoder.encode_concepts(concepts), tiny_encoder.encode(concepts)[:, 0])


def test_identity_distinguishes_weights(tiny_encoder, tiny_encoder_other):
    assert tiny_encoder.identity != tiny_encoder_other.identity
    assert tiny_encoder.identity == tiny_encoder.identity


def test_attention_mask_option_changes_identity_and_embeddings(tiny_encoder_dir, tiny_encoder):
    masked = load_encoder(str(tiny_encoder_dir), device="cpu", attention_mask=True)
    assert masked.identity != tiny_encoder.identity
    a, b = masked.encode(["a knife"]), tiny_encoder.encode(["a knife"])
    torch.testing.assert_close(a[0, 1:4], b[0, 1:4])  # causal: tokens before EOS are unaffected
    assert not torch.allclose(a[0, 10:], b[0, 10:])    # padding states differ once masked


def test_unloadable_encoder_is_a_clear_error(tmp_path):
    with pytest.raises(LatentGuardError, match="cannot load text encoder"):
        load_encoder(str(tmp_path / "no-such-model"), device="cpu")


def test_fp16_on_cpu_is_refused(tiny_encoder):
    with pytest.raises(LatentGuardError, match="float16"):
        CLIPTextEncoder(tiny_encoder.model, device="cpu", dtype="float16", tokenizer=tiny_encoder.tokenizer)


def test_ftfy_departure_touches_only_text_that_ftfy_repairs(clip_tokenizer):
    """The released transformers 4.30.2 slow tokenizer (like open_clip's) runs ftfy first; ours does not.

    Text ftfy repairs (curly quotes, ligatures, full-width letters, mojibake) tokenizes differently;
    after ftfy it matches again. CoPro's prompts are never changed by ftfy (see docs/fidelity.md).
    """
    import ftfy
    import open_clip

    reference = open_clip.get_tokenizer("ViT-L-14")  # applies ftfy.fix_text, as the released tokenizer does
    for text in ["don\u2019t stop", "\ufb01ne art", "\uff46\uff55\uff4c\uff4c width", "caf\u00c3\u00a9 sign"]:
        theirs = reference([text])[0].tolist()
        theirs = theirs[: theirs.index(49407) + 1]
        assert clip_tokenizer(text)["input_ids"] != theirs
        assert clip_tokenizer(ftfy.fix_text(text))["input_ids"] == theirs


def test_a_clip_model_without_a_tokenizer_gets_the_real_clip_bpe(tmp_path, clip_tokenizer):
    """transformers 'loads' a two-token tokenizer from a model directory without tokenizer files, which
    maps every text to the same ids; the encoder must rebuild the real CLIP BPE instead."""
    model = tiny_clip_text_model(seed=0)
    model.save_pretrained(tmp_path / "no_tokenizer")
    reference_ids = clip_tokenizer(["a photo of a cat", "a knife"], padding="max_length", max_length=77)["input_ids"]
    for encoder in (load_encoder(str(tmp_path / "no_tokenizer"), device="cpu"), CLIPTextEncoder(model, device="cpu")):
        assert encoder.tokenizer.vocab_size == 49408
        assert encoder.tokenize(["a photo of a cat", "a knife"])["input_ids"].tolist() == reference_ids
        emb = encoder.encode(["a photo of a cat", "a knife"])
        assert not torch.equal(emb[0], emb[1])


def test_a_model_with_another_vocabulary_and_no_tokenizer_is_refused(tmp_path):
    from transformers import CLIPTextConfig, CLIPTextModel

    config = CLIPTextConfig(vocab_size=1000, hidden_size=32, intermediate_size=37, num_hidden_layers=1,
                            num_attention_heads=4, max_position_embeddings=77)
    CLIPTextModel(config).save_pretrained(tmp_path / "odd")
    with pytest.raises(LatentGuardError, match="has no usable CLIP tokenizer .*1000 ids") as caught:
        load_encoder(str(tmp_path / "odd"), device="cpu")
    assert "\n" not in str(caught.value)
