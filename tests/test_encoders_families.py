"""Encoder families behind one interface: OpenCLIP text towers and Hugging Face encoders (T5, BERT).

Every model here is tiny, randomly initialised and built offline; each layout is checked against a
direct computation with the library's own modules.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from latentguard.encoders import (
    HFTextEncoder,
    OpenCLIPTextEncoder,
    detect_family,
    identity_parts,
    load_encoder,
    parse_openclip_name,
)
from latentguard.errors import LatentGuardError
from latentguard.model import EmbeddingMappingLayer, load_mapping_layer

ROOT = Path(__file__).resolve().parent.parent
WORDS = ("a photo of knife cat dog blood the on floor gun street man woman with in dark night long "
         "corridor red car house tree at").split()
TEXTS = ["a photo of a knife", "blood on the floor of a long dark corridor at night", "gun", "cat"]
TINY_OPENCLIP = "lg-test-tiny"


# ------------------------------------------------------------------------------ tiny builders
def write_bert(directory: Path, hidden: int = 32) -> Path:
    """A 1-layer random BERT (hidden ``hidden``) with a WordPiece vocabulary written here."""
    from transformers import BertConfig, BertModel, BertTokenizer

    directory.mkdir(parents=True, exist_ok=True)
    vocab = directory / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + WORDS) + "\n", encoding="utf-8")
    tokenizer = BertTokenizer(vocab=str(vocab))
    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(WORDS) + 5, hidden_size=hidden, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=80)
    BertModel(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def t5_tokenizer():
    """A word-level T5-style tokenizer (``</s>`` appended, ``<pad>`` = 0) built with ``tokenizers``."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(["<pad>", "</s>", "<unk>"] + WORDS)}
    core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    core.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<pad>", eos_token="</s>", unk_token="<unk>")


def write_t5(directory: Path) -> Path:
    """A full (encoder-decoder) random T5 checkpoint: the encoder alone must be loaded from it."""
    from transformers import T5Config, T5Model

    torch.manual_seed(0)
    config = T5Config(vocab_size=len(WORDS) + 3, d_model=32, d_kv=8, d_ff=64, num_layers=1, num_decoder_layers=1,
                      num_heads=2, decoder_start_token_id=0, pad_token_id=0, eos_token_id=1)
    T5Model(config).save_pretrained(directory)
    t5_tokenizer().save_pretrained(directory)
    return directory


def tiny_openclip(tmp_dir: Path):
    """A tiny OpenCLIP model registered under ``TINY_OPENCLIP`` (text width 64, 1 layer), random."""
    import open_clip

    config = {"embed_dim": 16,
              "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 16},
              "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 1}}
    file = tmp_dir / f"{TINY_OPENCLIP}.json"
    file.write_text(json.dumps(config), encoding="utf-8")
    open_clip.add_model_config(file)
    torch.manual_seed(0)
    return open_clip.create_model(TINY_OPENCLIP, pretrained=None).eval()


@pytest.fixture(scope="session")
def bert_dir(tmp_path_factory) -> Path:
    return write_bert(tmp_path_factory.mktemp("tiny_bert"))


@pytest.fixture(scope="session")
def t5_dir(tmp_path_factory) -> Path:
    return write_t5(tmp_path_factory.mktemp("tiny_t5"))


@pytest.fixture(scope="session")
def openclip_model(tmp_path_factory):
    return tiny_openclip(tmp_path_factory.mktemp("tiny_openclip"))


# --------------------------------------------------------------------------------- OpenCLIP
def test_openclip_layout_matches_open_clip_text_tower(openclip_model):
    import open_clip

    encoder = OpenCLIPTextEncoder(openclip_model, device="cpu")
    emb = encoder.encode(TEXTS, batch_size=3)
    assert emb.shape == (4, 78, 64) and encoder.hidden_size == 64 and encoder.family == "openclip"
    ids = open_clip.tokenize(TEXTS)
    with torch.no_grad():
        x = openclip_model.token_embedding(ids) + openclip_model.positional_embedding
        x = openclip_model.ln_final(openclip_model.transformer(x, attn_mask=openclip_model.attn_mask))
        # open_clip's own pooled text feature = our row 0 projected: the pooled row is the EOT state
        features = openclip_model.encode_text(ids)
    eot = ids.argmax(-1)
    torch.testing.assert_close(emb[:, 1:], x)
    torch.testing.assert_close(emb[:, 0], x[torch.arange(4), eot])
    torch.testing.assert_close(emb[:, 0] @ openclip_model.text_projection, features)
    assert len(set(eot.tolist())) == 3  # the pooled row follows each prompt's length
    # the EOT token is the last non-padding token
    assert all((ids[i, eot[i] + 1:] == 0).all() and (ids[i, 1:eot[i]] != 0).any() for i in range(4))


def test_openclip_token_strings_and_concepts(openclip_model):
    encoder = OpenCLIPTextEncoder(openclip_model, device="cpu")
    tokens = encoder.token_strings("a photo of a knife")
    assert len(tokens) == 77
    assert tokens[:7] == ["<|startoftext|>", "a</w>", "photo</w>", "of</w>", "a</w>", "knife</w>", "<|endoftext|>"]
    assert set(tokens[7:]) == {"<pad>"}
    torch.testing.assert_close(encoder.encode_concepts(["knife", "gun"]), encoder.encode(["knife", "gun"])[:, 0])


def test_openclip_by_name_with_local_weights(openclip_model, tmp_path):
    weights = tmp_path / "open_clip_pytorch_model.bin"
    torch.save(openclip_model.state_dict(), weights)
    loaded = load_encoder(f"openclip:{TINY_OPENCLIP}@{weights}", device="cpu")
    direct = OpenCLIPTextEncoder(openclip_model, device="cpu")
    assert isinstance(loaded, OpenCLIPTextEncoder) and loaded.name == f"{TINY_OPENCLIP}@{weights}"
    torch.testing.assert_close(loaded.encode(TEXTS), direct.encode(TEXTS))
    parts = identity_parts(loaded.identity)
    assert parts["family"] == "openclip" and parts["width"] == "64"
    assert parts["weights"] == identity_parts(direct.identity)["weights"]  # same weights, same fingerprint
    # the same tower through --encoder-type openclip and a bare name
    again = load_encoder(f"{TINY_OPENCLIP}@{weights}", "openclip", device="cpu")
    assert again.identity == loaded.identity
    # random weights are seeded: two loads agree, and differ from the saved ones
    r1 = load_encoder(f"openclip:{TINY_OPENCLIP}@random", device="cpu")
    r2 = load_encoder(f"openclip:{TINY_OPENCLIP}@random", device="cpu")
    assert r1.identity == r2.identity != loaded.identity


def test_openclip_names_and_errors(tmp_path, openclip_model):
    assert parse_openclip_name("openclip:ViT-H-14") == ("ViT-H-14", "laion2b_s32b_b79k")  # SD 2.x
    assert parse_openclip_name("openclip:ViT-bigG-14") == ("ViT-bigG-14", "laion2b_s39b_b160k")  # SDXL
    assert parse_openclip_name("ViT-B-32@openai") == ("ViT-B-32", "openai")
    assert parse_openclip_name("openclip:ViT-B-32@random") == ("ViT-B-32", None)
    assert parse_openclip_name("openclip:hf-hub:org/repo") == ("hf-hub:org/repo", None)
    with pytest.raises(LatentGuardError, match="say which weights"):
        parse_openclip_name("openclip:ViT-B-32")
    with pytest.raises(LatentGuardError, match="given twice"):
        parse_openclip_name("openclip:ViT-B-32@openai", "laion400m_e32")
    with pytest.raises(LatentGuardError, match="cannot load OpenCLIP model 'no-such-model'"):
        load_encoder("openclip:no-such-model@random", device="cpu")
    with pytest.raises(LatentGuardError, match="weights file not found"):
        load_encoder(f"openclip:{TINY_OPENCLIP}@{tmp_path / 'missing.bin'}", device="cpu")
    with pytest.raises(LatentGuardError, match="encoder type is 'hf'"):
        load_encoder(f"openclip:{TINY_OPENCLIP}@random", "hf", device="cpu")
    with pytest.raises(LatentGuardError, match="CLIP encoders only"):
        load_encoder(f"openclip:{TINY_OPENCLIP}@random", device="cpu", attention_mask=True)


def test_openclip_short_prompt_window_equals_encode(openclip_model):
    encoder = OpenCLIPTextEncoder(openclip_model, device="cpu")
    emb, owner = encoder.encode_windows(TEXTS, batch_size=3)
    assert owner.tolist() == [0, 1, 2, 3]
    torch.testing.assert_close(emb, encoder.encode(TEXTS))


def test_open_clip_and_transformers_are_not_imported_at_module_import():
    code = ("import sys; import latentguard.encoders, latentguard.scoring, latentguard.decision.threshold, "
            "latentguard.pipeline; heavy = [m for m in ('open_clip', 'transformers', 'diffusers') "
            "if m in sys.modules]; print(heavy); sys.exit(1 if heavy else 0)")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr


# ------------------------------------------------------------------------------ HF encoders
def test_bert_family_detected_and_layout(bert_dir):
    from transformers import AutoTokenizer, BertModel

    assert detect_family(bert_dir) == "hf"
    encoder = load_encoder(str(bert_dir), device="cpu")
    assert isinstance(encoder, HFTextEncoder) and encoder.hidden_size == 32
    emb = encoder.encode(TEXTS, batch_size=3)
    assert emb.shape == (4, 78, 32)
    tokenizer = AutoTokenizer.from_pretrained(bert_dir)
    batch = tokenizer(TEXTS, padding="max_length", max_length=77, truncation=True, return_tensors="pt")
    model = BertModel.from_pretrained(bert_dir).eval()
    with torch.no_grad():
        hidden = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
    last = batch["attention_mask"].sum(-1) - 1
    assert (batch["input_ids"][torch.arange(4), last] == tokenizer.sep_token_id).all()  # pooled = [SEP]
    torch.testing.assert_close(emb[:, 1:], hidden)
    torch.testing.assert_close(emb[:, 0], hidden[torch.arange(4), last])
    tokens = encoder.token_strings("a knife")
    assert tokens[:4] == ["[CLS]", "a", "knife", "[SEP]"] and len(tokens) == 77 and tokens[-1] == "[PAD]"
    assert identity_parts(encoder.identity)["family"] == "hf"


def test_t5_runs_encoder_only_with_its_mask(t5_dir):
    from transformers import T5Model

    encoder = load_encoder(str(t5_dir), device="cpu")
    assert isinstance(encoder, HFTextEncoder) and encoder.hidden_size == 32
    assert type(encoder.model).__name__ == "T5EncoderModel"  # no decoder loaded
    emb = encoder.encode(TEXTS)
    batch = t5_tokenizer()(TEXTS, padding="max_length", max_length=77, truncation=True, return_tensors="pt")
    full = T5Model.from_pretrained(t5_dir).eval()
    with torch.no_grad():
        hidden = full.get_encoder()(input_ids=batch["input_ids"],
                                    attention_mask=batch["attention_mask"]).last_hidden_state
    last = batch["attention_mask"].sum(-1) - 1
    assert (batch["input_ids"][torch.arange(4), last] == 1).all()  # pooled = </s>
    torch.testing.assert_close(emb[:, 1:], hidden)
    torch.testing.assert_close(emb[:, 0], hidden[torch.arange(4), last])
    # a built encoder-decoder module is reduced to its encoder too
    built = HFTextEncoder(full, device="cpu", tokenizer=t5_tokenizer(), name="t5-built")
    torch.testing.assert_close(built.encode(TEXTS), emb)


def test_hf_type_override_on_a_clip_model_equals_masked_clip(tiny_encoder_dir):
    """--encoder-type hf on a CLIP checkpoint: AutoModel with the mask, pooled at the last real token.

    CLIP pads with its end token, so that is exactly the CLIP family with attention_mask=True.
    """
    as_hf = load_encoder(str(tiny_encoder_dir), "hf", device="cpu")
    as_clip = load_encoder(str(tiny_encoder_dir), device="cpu", attention_mask=True)
    assert detect_family(tiny_encoder_dir) == "clip" and as_hf.family == "hf" and as_clip.family == "clip"
    torch.testing.assert_close(as_hf.encode(TEXTS), as_clip.encode(TEXTS))
    assert as_hf.identity != as_clip.identity


def test_hf_errors(bert_dir, tmp_path):
    with pytest.raises(LatentGuardError, match="unknown encoder type"):
        load_encoder(str(bert_dir), "sentencepiece", device="cpu")
    with pytest.raises(LatentGuardError, match="cannot load text encoder"):
        load_encoder(str(tmp_path / "nothing-here"), "hf", device="cpu")
    from transformers import BertModel

    with pytest.raises(LatentGuardError, match="needs its tokenizer"):
        HFTextEncoder(BertModel.from_pretrained(bert_dir), device="cpu")
    with pytest.raises(LatentGuardError, match="at most 80 tokens"):
        load_encoder(str(bert_dir), "hf", device="cpu", max_length=100)


def test_mapping_layer_width_follows_the_encoder(bert_dir, tmp_path):
    """A BERT-width (32) encoder trains and reloads a mapping layer of in_dim 32; 768 is refused."""
    encoder = load_encoder(str(bert_dir), device="cpu")
    torch.manual_seed(0)
    model = EmbeddingMappingLayer(in_dim=encoder.hidden_size)
    prompts = encoder.encode(["a man with a knife", "a cat on the floor", "blood on the street", "a red car"])
    concepts = encoder.encode_concepts(["knife", "blood", "gun", "dog"])
    before = {k: v.clone() for k, v in model.state_dict().items()}
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    loss = torch.nn.functional.cross_entropy(model.logit_matrix(prompts, concepts), torch.arange(4))
    loss.backward()
    optimizer.step()
    assert torch.isfinite(loss)
    assert all(not torch.equal(before[k], v) for k, v in model.state_dict().items())
    path = tmp_path / "bert_mapping.pth"
    torch.save(model.state_dict(), path)
    assert load_mapping_layer(path, in_dim=encoder.hidden_size).in_dim == 32
    with pytest.raises(LatentGuardError, match="encoder width 32"):
        load_mapping_layer(path, in_dim=768)


def test_store_hint_key_follows_the_layout_version_not_source_bytes(tiny_encoder_dir, monkeypatch):
    import latentguard.store.locate as hints

    key = hints.encoder_request_key(str(tiny_encoder_dir))
    assert key is not None and key == hints.encoder_request_key(str(tiny_encoder_dir))
    monkeypatch.setattr(hints, "LAYOUT_VERSION", hints.LAYOUT_VERSION + 1)
    assert hints.encoder_request_key(str(tiny_encoder_dir)) != key  # a new layout never reuses old hints


TOY_FAMILY = '''"""A toy encoder family: BERT models, read as Hugging Face encoders are, under their own name."""
from .hf import HFTextEncoder


class ToyTextEncoder(HFTextEncoder):
    family = "toy"

    @classmethod
    def claims(cls, model_type):
        return model_type == "bert"
'''


def test_a_new_encoder_family_is_one_module_and_one_registration(bert_dir, tmp_path):
    """The contributor's diff of docs/architecture.md, applied to a copy of the package: every table reads it."""
    import shutil

    root = Path(__file__).resolve().parent.parent
    package = shutil.copytree(root / "latentguard", tmp_path / "latentguard",
                              ignore=shutil.ignore_patterns("__pycache__"))
    (package / "encoders" / "toy.py").write_text(TOY_FAMILY, encoding="utf-8")
    constants = package / "constants.py"
    registry = constants.read_text(encoding="utf-8")
    assert registry.count('    "hf": "hf:HFTextEncoder",\n') == 1
    constants.write_text(registry.replace('    "hf": "hf:HFTextEncoder",\n',
                                          '    "toy": "toy:ToyTextEncoder",\n    "hf": "hf:HFTextEncoder",\n'),
                         encoding="utf-8")
    script = f"""
from latentguard.config import load_config
from latentguard.encoders import detect_family, load_encoder
from latentguard.hub.write import encoder_of

assert load_config(overrides={{"encoder.type": "toy"}}).encoder.type == "toy"
assert detect_family({str(bert_dir)!r}) == "toy"
encoder = load_encoder({str(bert_dir)!r}, device="cpu")
assert encoder.family == "toy" and encoder.identity.startswith("toy:"), encoder.identity
section = encoder_of(encoder)
assert section["family"] == "toy" and section["options"]["max_length"] == 77, section
from latentguard.hub.format import SCHEMA
assert SCHEMA["encoder"]["family"]("toy") is None
print("ok")
"""
    env = {**os.environ, "PYTHONPATH": str(tmp_path), "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300,
                          cwd=tmp_path)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-3000:]


# ------------------------------------------------------------------------ control tokens typed as text
@pytest.mark.parametrize("family", ["clip", "openclip", "bert"])
def test_a_prompt_that_types_a_control_token_is_refused_by_every_family(family, tiny_encoder, openclip_model, bert_dir):
    """A BERT tokenizer reads a typed "[CLS]" as its control token (ten of them hid almost every unsafe prompt from
    the built-in guard), CLIP's reads "<|endoftext|>" as its end, open_clip's "<end_of_text>": the encoder
    refuses such a prompt (fails closed) on every path, as it refuses text it cannot read."""
    from latentguard.encoders import HFTextEncoder
    from latentguard.errors import UnreadableTextError

    encoder, typed = {"clip": (tiny_encoder, ["a cat <|endoftext|> a knife", "<|STARTOFTEXT|> a knife"]),
                      "openclip": (OpenCLIPTextEncoder(openclip_model, device="cpu"), ["a cat <end_of_text> a knife"]),
                      "bert": (HFTextEncoder(str(bert_dir), device="cpu"), ["[CLS] a knife", "a knife [sep]"])}[family]
    for text in typed:
        with pytest.raises(UnreadableTextError, match="control tokens"):
            encoder.encode([text])
        with pytest.raises(UnreadableTextError, match="control tokens"):
            encoder.encode_windows([text])
        assert not encoder.readable(text)
    if family != "bert":  # the tiny BERT's vocabulary reads few words; the real MiniLM: tests/test_guard_unreadable.py
        assert encoder.readable("a cat [on] a <sofa>") and encoder.encode(["a cat [on] a <sofa>"]).shape[0] == 1
