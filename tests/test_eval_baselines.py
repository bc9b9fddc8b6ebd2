"""Baselines: substring (or whole-word) blacklist, CLIPScore on stored rows, BERTScore F1 with a tiny offline BERT."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from latentguard.errors import LatentGuardError
from latentguard.eval.baselines import (
    BERTScorer,
    TextBlacklist,
    clip_score_matrix,
    load_bert_scorer,
)
from latentguard.eval.methods import parse_baselines

WORDS = ("a an the of on in at with photo painting old man woman holding table park street night river dark "
         "alley close - up floor kitchen wooden children looking near busy cinematic lighting highly detailed "
         "knife blood gun bomb fire poison skull weapon drugs corpse riot theft flower book cake , .").split()


def make_tiny_bert(directory: Path) -> Path:
    """Save a 1-layer random BERT with a WordPiece vocabulary written to a file (offline) in ``directory``."""
    from transformers import BertConfig, BertModel, BertTokenizer

    directory.mkdir(parents=True, exist_ok=True)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *dict.fromkeys(WORDS), "##s", "##ing"]
    (directory / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    tokenizer = BertTokenizer(str(directory / "vocab.txt"))
    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=128)
    BertModel(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def tiny_bert_dir(tmp_path_factory) -> Path:
    return make_tiny_bert(tmp_path_factory.mktemp("tiny_bert"))


@pytest.fixture(scope="module")
def scorer(tiny_bert_dir) -> BERTScorer:
    loaded, why = load_bert_scorer(str(tiny_bert_dir), device="cpu", batch_size=4)
    assert loaded is not None, why
    return loaded


# -------------------------------------------------------------------------------- selection
def test_parse_baselines():
    assert parse_baselines("all") == ["text_blacklist", "clipscore", "bertscore"]
    assert parse_baselines("bertscore, Blacklist") == ["text_blacklist", "bertscore"]
    assert parse_baselines(["clipscore"]) == ["clipscore"] and parse_baselines(None) == []
    assert parse_baselines("") == [] and parse_baselines([]) == []
    with pytest.raises(LatentGuardError, match="unknown baseline 'llm'"):
        parse_baselines("clipscore,llm")


# ---------------------------------------------------------------------------- Text Blacklist
def test_blacklist_default_is_the_papers_case_insensitive_substring_rule():
    """The rule that reproduces Table 1(a)'s .805 / .895: any occurrence, ignoring case."""
    bl = TextBlacklist(["knife", "blood", "blood bath", "gun"])
    assert bl.rule == "substring"
    assert bl.match("A PENKNIFE on the table") == 0           # inside a word counts
    assert bl.match("a gunshot") == 3 and bl.match("Bloodbath") == 1
    assert bl.match("a blood bath at night") == 2               # longest concept wins at one position
    assert bl.match("kn#12fe in a dark alley") == -1 and bl.match("a flower") == -1
    with pytest.raises(LatentGuardError, match="unknown blacklist match 'regex'"):
        TextBlacklist(["knife"], "regex")


def test_blacklist_word_option_matches_whole_words_case_insensitively():
    bl = TextBlacklist(["knife", "blood", "blood bath", "f*ck", "gun"], match="word")
    assert bl.match("A KNIFE on the table") == 0
    assert bl.match("Knife.") == 0 and bl.match("(knife)") == 0
    assert bl.match("penknife and knives") == -1        # not whole words
    assert bl.match("a gunshot") == -1 and bl.match("gun-shot") == 4
    assert bl.match("a blood bath at night") == 2        # longest concept wins at one position
    assert bl.match("what the f*ck!") == 3                # punctuation inside a concept
    assert bl.match("kn#12fe in a dark alley") == -1      # an adversarial rewrite escapes the list
    scores, best = bl.scores(["a knife", "a flower", "blood"])
    assert scores.tolist() == [1.0, 0.0, 1.0] and best.tolist() == [0, -1, 1]


def test_evaluation_wires_the_configured_blacklist_rule():
    """eval.blacklist_match reaches the Text Blacklist baseline, and its threshold note says which rule ran."""
    from latentguard.eval.methods import make_baselines

    texts, concepts = ["a penknife", "a knife", "a flower"], ["knife"]
    for rule, flagged in (("substring", [1.0, 1.0, 0.0]), ("word", [0.0, 1.0, 0.0])):
        (baseline,) = make_baselines(["text_blacklist"], blacklist_match=rule)
        assert baseline.domain_scores("ID", texts, concepts)[0].tolist() == flagged
        assert ("whole word" in baseline.threshold_note) == (rule == "word")


# --------------------------------------------------------------------------------- CLIPScore
def test_clip_score_matrix_is_cosine_of_pooled_rows():
    torch.manual_seed(0)
    prompts, concepts = torch.randn(5, 16), torch.randn(3, 16)
    got = clip_score_matrix(prompts, concepts)
    for i in range(5):
        for j in range(3):
            want = torch.nn.functional.cosine_similarity(prompts[i], concepts[j], dim=0)
            assert got[i, j].item() == pytest.approx(want.item(), abs=1e-6)
    assert clip_score_matrix(concepts * 3, concepts).diagonal().allclose(torch.ones(3))


# --------------------------------------------------------------------------------- BERTScore
def naive_bertscore_f1(scorer: BERTScorer, a: str, b: str) -> float:
    """BERTScore F1 spelled out token by token (independent of the batched f1_matrix)."""
    ea, ma = scorer.token_embeddings([a])
    eb, mb = scorer.token_embeddings([b])
    xa, xb = ea[0][ma[0]], eb[0][mb[0]]
    sim = [[float(u @ v) for v in xb] for u in xa]
    precision = sum(max(row) for row in sim) / len(xa)
    recall = sum(max(sim[i][j] for i in range(len(xa))) for j in range(len(xb))) / len(xb)
    return 2 * precision * recall / (precision + recall)


def test_bertscore_of_identical_strings_is_one(scorer):
    for text in ["a knife on the table", "blood", "children looking at a gun near the river"]:
        assert scorer.pair_f1(text, text) == pytest.approx(1.0, abs=1e-5)
    assert scorer.pair_f1("a knife on the table", "a flower book") < 0.999


def test_bertscore_matches_token_by_token_definition(scorer):
    pairs = [("a knife on the table", "knife"), ("an old man holding a gun", "skull weapon"),
             ("cinematic lighting, blood", "blood"), ("close-up of a cake", "poison")]
    for a, b in pairs:
        assert scorer.pair_f1(a, b) == pytest.approx(naive_bertscore_f1(scorer, a, b), abs=1e-5)
        assert scorer.pair_f1(a, b) == pytest.approx(scorer.pair_f1(b, a), abs=1e-5)  # F1 is symmetric


def test_bertscore_scores_take_best_concept_in_batches(scorer):
    texts = ["a knife on the table", "blood", "a painting of a gun at night", "a cake", "riot", "skull"]
    concepts = ["gun", "blood", "knife", "skull"]
    score, best = scorer.scores(texts, concepts)  # batch_size 4: two padded batches, the second one short
    c_emb, c_mask = scorer.token_embeddings(concepts)
    for i, text in enumerate(texts):  # each text alone (no padding) against every concept
        emb, mask = scorer.token_embeddings([text])
        each = scorer.f1_matrix(emb, mask, c_emb, c_mask)[0].numpy()
        assert score[i] == pytest.approx(each.max(), abs=1e-5) and best[i] == int(np.argmax(each))
    assert best[1] == 1 and score[1] == pytest.approx(1.0, abs=1e-5)


def test_bertscore_is_skipped_not_failed_when_unavailable(tmp_path):
    scorer, why = load_bert_scorer(None)
    assert scorer is None and "no BERT model given" in why and "--bert-model" in why
    scorer, why = load_bert_scorer(str(tmp_path / "missing-bert"))
    assert scorer is None and "missing-bert" in why and "\n" not in why
    (tmp_path / "junk").mkdir()
    scorer, why = load_bert_scorer(str(tmp_path / "junk"))
    assert scorer is None and "cannot load BERT model" in why and "\n" not in why
