"""inference.py end to end (in-process main), with the tiny CLIP encoder and a random released-format checkpoint."""
from __future__ import annotations

import csv
import json
import urllib.error
import urllib.request

import numpy as np
import pytest
import reference
import torch

import inference
import latentguard.cli.infer as infer_cli
from latentguard.encoders import TextEncoder
from latentguard.model import EmbeddingMappingLayer
from latentguard.published import COPRO_URL, RELEASED_CHECKPOINT_URL

# One clause each (no comma): the scores below are the prompts' own, which a clause form could exceed.
PROMPTS = ["a photo of a knife on the table", "a red balloon in the sky", "", "blood on the kitchen floor",
           "an old man reading a book in the park with a very long description " + "and more words " * 10]
CONCEPTS = ["knife", "blood", "gun", "bomb"]


@pytest.fixture
def files(tmp_path, monkeypatch):
    """A prompt file, a concepts file and a released-format checkpoint; cache in tmp_path."""
    monkeypatch.setenv("LATENTGUARD_HOME", str(tmp_path / "home"))
    torch.manual_seed(0)
    model = EmbeddingMappingLayer()
    with torch.no_grad():  # spread the logits so both verdicts occur at threshold 0
        model.tempr.fill_(30.0)
    torch.save(model.state_dict(), tmp_path / "ckpt.pth")
    (tmp_path / "prompts.txt").write_text("\n".join(PROMPTS) + "\n", encoding="utf-8")
    (tmp_path / "concepts.txt").write_text("\n".join(CONCEPTS) + "\n", encoding="utf-8")
    return tmp_path


def _args(files, encoder_dir, *extra):
    return ["--file_path", str(files / "prompts.txt"), "--checkpoint", str(files / "ckpt.pth"),
            "--concepts", str(files / "concepts.txt"), "--encoder", str(encoder_dir), "--device", "cpu",
            "--threshold", "0", *extra]


def _expected_logits(files, tiny_encoder):
    prompts = [p.strip() for p in PROMPTS if p.strip()]
    state = torch.load(files / "ckpt.pth", weights_only=True)
    return prompts, reference.repeat_per_concept_scores(
        state, tiny_encoder.encode(prompts), tiny_encoder.encode_concepts(CONCEPTS)).numpy()


def test_csv_output_and_console(files, tiny_encoder_dir, tiny_encoder, capsys):
    out = files / "verdicts.csv"
    prompts, logits = _expected_logits(files, tiny_encoder)
    scores = logits.max(1)
    threshold = float(np.median(scores))  # both verdicts occur: the comparisons below are not vacuous
    labels = (scores >= threshold).astype(int)
    assert 0 < labels.sum() < len(labels)
    argv = _with(_args(files, tiny_encoder_dir, "--output", str(out), "--batch-size", "2"), "--threshold", threshold)
    assert inference.main(argv) == 0
    with open(out, newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0]) == ["prompt", "score", "unsafe", "concept", "truncated", "categories", "refused"]
    assert [r["prompt"] for r in rows] == prompts  # blank line skipped, long prompt kept whole
    assert [r["categories"] for r in rows] == ["unsafe" if flagged else "" for flagged in labels]  # a flat blacklist
    np.testing.assert_allclose([float(r["score"]) for r in rows], scores, atol=1e-4)
    assert [int(r["unsafe"]) for r in rows] == labels.tolist()
    assert [r["concept"] for r in rows] == [CONCEPTS[i] for i in logits.argmax(1)]
    console = capsys.readouterr().out
    lines = console.splitlines()
    assert lines[0].split() == ["#", "score", "verdict", "concept", "prompt"]
    assert lines[1].split()[2] == ("UNSAFE" if labels[0] else "SAFE") and "a photo of a knife" in lines[1]
    assert all(len(line) < 120 for line in lines[1:5])  # the long prompt is truncated in the table
    assert f"{labels.sum()} of 4 prompts unsafe" in console and f"threshold {threshold:g}" in console
    assert lines[-2].startswith("Predicted labels") and lines[-1] == str(labels.tolist())


def test_jsonl_output_with_explanations(files, tiny_encoder_dir, capsys):
    out = files / "verdicts.jsonl"
    assert inference.main(_args(files, tiny_encoder_dir, "--output", str(out), "--explain", "--top-k", "2")) == 0
    records = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert len(records) == 4
    for record in records:
        assert {"prompt", "score", "unsafe", "concept", "top_concepts", "evidence"} <= set(record)
        assert isinstance(record["unsafe"], bool) and record["unsafe"] == (record["score"] >= record["threshold"])
        assert len(record["top_concepts"]) == 2 and record["top_concepts"][0][0] == record["concept"]
        assert all(w in record["prompt"].replace(",", " , ").split() + ["<pooled>", ","] for w, _ in record["evidence"])
    console = capsys.readouterr().out
    assert console.count("evidence: ") == 4 and console.count("top concepts: ") == 4


def test_jsonl_without_explain_has_the_verdict_keys(files, tiny_encoder_dir):
    out = files / "v.JSONL"
    assert inference.main(_args(files, tiny_encoder_dir, "--output", str(out))) == 0
    record = json.loads(out.read_text().splitlines()[0])
    assert set(record) == {"prompt", "score", "unsafe", "concept", "truncated", "categories", "category_scores",
                           "refused"}
    assert list(record["categories"]) == ["unsafe"] and record["categories"]["unsafe"] == record["unsafe"]
    assert (record["category_scores"]["unsafe"] >= 0.5) == record["unsafe"]


def test_second_run_reuses_cached_concepts(files, tiny_encoder_dir, monkeypatch, capsys):
    encoded = []
    original = TextEncoder.encode_concepts

    def counting(self, concepts, batch_size=64):
        encoded.append(list(concepts))
        return original(self, concepts, batch_size=batch_size)

    monkeypatch.setattr(TextEncoder, "encode_concepts", counting)
    assert inference.main(_args(files, tiny_encoder_dir)) == 0
    first = capsys.readouterr().out
    assert encoded == [CONCEPTS]
    assert inference.main(_args(files, tiny_encoder_dir)) == 0
    assert encoded == [CONCEPTS, CONCEPTS]  # read from the cache; a few (here all) encoded again as a spot check
    assert capsys.readouterr().out == first
    (files / "concepts.txt").write_text("knife\nblood\nsword\n")
    assert inference.main(_args(files, tiny_encoder_dir)) == 0
    assert encoded[2:] == [["knife", "blood"], ["sword"]]  # an edited blacklist encodes only its new concept


def test_a_concept_cache_rewritten_with_fresh_checksums_is_rebuilt(files, tiny_encoder_dir, capsys):
    """Checksums catch a torn cache, not a rewrite: every vector replaced by the first, its checksums recomputed,
    had been read as it was (a hostile pass). A spot check of stored vectors against the encoder rebuilds it."""
    import torch

    from latentguard.io import latentguard_home
    from latentguard.store.concept_cache import entry_checksum

    assert inference.main(_args(files, tiny_encoder_dir)) == 0
    first = capsys.readouterr().out
    (path,) = (latentguard_home() / "concepts").glob("*.pt")
    blob = torch.load(path, weights_only=True)
    blob["vectors"] = blob["vectors"][:1].expand_as(blob["vectors"]).clone()  # every row the first
    blob["checksums"] = [entry_checksum(blob["identity"], c, v) for c, v in zip(blob["concepts"], blob["vectors"])]
    torch.save(blob, path)
    assert inference.main(_args(files, tiny_encoder_dir)) == 0
    captured = capsys.readouterr()
    assert captured.out == first and "cache was changed and is rebuilt" in captured.err, captured.err
    assert inference.main(_args(files, tiny_encoder_dir)) == 0  # rebuilt: read as it is again
    captured = capsys.readouterr()
    assert captured.out == first and "changed" not in captured.err


def test_defaults_sample_file_and_released_threshold(files, tiny_encoder_dir, capsys, monkeypatch):
    from latentguard.decision import threshold as calibration
    from latentguard.io import sha256_of

    args = ["--checkpoint", str(files / "ckpt.pth"), "--concepts", str(files / "concepts.txt"),
            "--encoder", str(tiny_encoder_dir), "--device", "cpu"]
    # other weights with no calibration file: "auto" refuses, saying how to calibrate
    assert inference.main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--calibrate-safe" in err and "--threshold" in err and "ckpt.pth" in err
    monkeypatch.setattr(calibration, "RELEASED_CHECKPOINT_SHA256", sha256_of(files / "ckpt.pth"))  # "released"
    assert inference.main(args) == 0
    out = capsys.readouterr().out
    sample = [line for line in infer_cli.prompt_file(infer_cli.DEFAULT_PROMPTS).read_text().splitlines()
              if line.strip()]
    assert len(sample) >= 6
    labels = eval(out.splitlines()[-1])  # a Python-style list, as the released script prints
    assert len(labels) == len(sample) and set(labels) <= {0, 1}
    assert "threshold 9.0131" in out


def test_help_reads_well(capsys):
    with pytest.raises(SystemExit) as info:
        inference.main(["--help"])
    assert info.value.code == 0
    text = capsys.readouterr().out
    for flag in ["--file_path", "--threshold", "--checkpoint", "--concepts", "--encoder", "--encoder-type",
                 "--dataset", "--batch-size", "--device", "--config", "--output", "--explain", "--top-k"]:
        assert flag in text
    assert "9.0131" in text and "dataset/unsafe_sample.txt" in text


# ------------------------------------------------------------------------------ bad input
def _fails(argv, capsys, *fragments):
    code = inference.main(argv)
    err = capsys.readouterr().err
    assert code != 0
    # one error line, last; (transformers may print a weight-loading progress bar before it)
    assert "Traceback" not in err and err.endswith("\n") and err.count("error: ") == 1, err
    assert err.splitlines()[-1].startswith("error: "), err
    for fragment in fragments:
        assert fragment in err, err
    return err


def _with(argv, flag, value):
    argv = list(argv)
    argv[argv.index(flag) + 1] = str(value)
    return argv


def test_prompt_file_errors(files, tiny_encoder_dir, capsys):
    base = _args(files, tiny_encoder_dir)
    _fails(_with(base, "--file_path", files / "missing.txt"), capsys, "prompt file not found", "missing.txt")
    (files / "empty.txt").write_text("\n  \n")
    _fails(_with(base, "--file_path", files / "empty.txt"), capsys, "prompt file is empty", "empty.txt")
    (files / "latin1.txt").write_bytes("ok\ncaf\xe9\n".encode("latin-1"))
    _fails(_with(base, "--file_path", files / "latin1.txt"), capsys, "latin1.txt: line 2 is not valid UTF-8")


def test_old_mac_line_endings_are_refused_as_latentguard_score_refuses_them(files, tiny_encoder_dir, capsys):
    """A lone \\r would make one prompt of many ("a cat\\ra knife" scored as one); \\n and \\r\\n files read alike."""
    base = _args(files, tiny_encoder_dir)
    (files / "mac.txt").write_bytes(b"a cat\ra knife\r")
    assert inference.main(_with(base, "--file_path", files / "mac.txt")) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert "mac.txt: line 1 holds a carriage return inside it (old Mac line endings?)" in err, err
    (files / "later.txt").write_bytes(b"a cat\r\n\r\nblood\r\r\na knife\rblood\n")  # line 4; \r\r\n is a line end
    _fails(_with(base, "--file_path", files / "later.txt"), capsys, "later.txt: line 4 holds a carriage return")
    (files / "safe.txt").write_bytes(b"a cat\ra bowl of fruit\n")  # --calibrate-safe reads the same way
    _fails(base + ["--calibrate-safe", str(files / "safe.txt")], capsys, "safe.txt: line 1 holds a carriage return")
    assert inference.main(base) == 0
    lf = capsys.readouterr().out
    (files / "prompts.txt").write_bytes("\r\n".join(PROMPTS).encode("utf-8") + b"\r\n")
    assert inference.main(base) == 0
    assert capsys.readouterr().out == lf  # the released behaviour: a CRLF file reads as its LF twin


def test_concepts_file_errors(files, tiny_encoder_dir, capsys):
    base = _args(files, tiny_encoder_dir)
    (files / "bad.yaml").write_text("concepts: [knife\n")
    _fails(_with(base, "--concepts", files / "bad.yaml"), capsys, "bad.yaml: not valid YAML")
    _fails(_with(base, "--concepts", files / "nope.txt"), capsys, "concepts file not found", "nope.txt")


@pytest.mark.parametrize("edit,fragment", [
    (lambda s: s.pop("x2_to_query.weight"), "missing keys: x2_to_query.weight"),
    (lambda s: s.update(extra=torch.zeros(2)), "unexpected keys: extra"),
    (lambda s: s.update({"final_mlp.bias": torch.zeros(64)}), "wrong shapes: final_mlp.bias [64] (expected [128])"),
])
def test_checkpoint_errors(files, tiny_encoder_dir, capsys, edit, fragment):
    state = torch.load(files / "ckpt.pth", weights_only=True)
    edit(state)
    torch.save(state, files / "bad.pth")
    _fails(_with(_args(files, tiny_encoder_dir), "--checkpoint", files / "bad.pth"), capsys, "bad.pth", fragment)


def test_missing_checkpoint_and_width_mismatch(files, tiny_encoder_dir, capsys):
    base = _args(files, tiny_encoder_dir)
    _fails(_with(base, "--checkpoint", files / "nope.pth"), capsys, "checkpoint not found", "nope.pth")
    torch.save(EmbeddingMappingLayer(in_dim=1024).state_dict(), files / "wide.pth")
    _fails(_with(base, "--checkpoint", files / "wide.pth"), capsys, "encoder width 1024", "hidden size is 768")


def test_bad_output_extension_fails_before_any_work(files, tiny_encoder_dir, capsys):
    err = _fails(_args(files, tiny_encoder_dir, "--output", str(files / "out.txt")), capsys, "out.txt",
                 ".csv or .jsonl")
    assert err.startswith("error: ")  # refused before the encoder was even loaded
    assert not (files / "out.txt").exists()


def test_bad_values(files, tiny_encoder_dir, capsys):
    _fails(_args(files, tiny_encoder_dir, "--batch-size", "0"), capsys, "inference.batch_size")
    _fails(_args(files, tiny_encoder_dir, "--top-k", "0"), capsys, "top_k")
    _fails(_args(files, tiny_encoder_dir, "--config", str(files / "none.yaml")), capsys, "config file not found")


def test_impossible_downloads_say_where_to_put_the_file(files, tiny_encoder_dir, capsys, monkeypatch):
    def offline(*args, **kwargs):
        raise urllib.error.URLError("network is unreachable")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    monkeypatch.delenv("HF_HUB_OFFLINE")  # not declared offline: the downloads are tried (and fail here)
    monkeypatch.chdir(files)
    base = _args(files, tiny_encoder_dir)
    home = files / "home"
    err = _fails(_with(base, "--checkpoint", "model_parameters.pth"), capsys, RELEASED_CHECKPOINT_URL,
                 str(home / "model_parameters.pth"))
    assert "network is unreachable" in err
    no_concepts = [a for a in base if a not in ("--concepts", str(files / "concepts.txt"))]
    dataset = files / "dataset" / "CoPro_v1.0.json"
    _fails(no_concepts + ["--dataset", str(dataset)], capsys, COPRO_URL, str(dataset))


def test_allowlist_file_cuts_phrases_before_scoring(files, tiny_encoder_dir, tiny_encoder):
    (files / "allow.txt").write_text("Knife\nred balloon\n")
    out = files / "v.jsonl"
    assert inference.main(_args(files, tiny_encoder_dir, "--allowlist", str(files / "allow.txt"),
                                "--output", str(out))) == 0
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert records[0]["prompt"] == PROMPTS[0]  # the original prompt is reported
    state = torch.load(files / "ckpt.pth", weights_only=True)
    cut = ["a photo of a on the table", "a in the sky"]
    expected = reference.repeat_per_concept_scores(state, tiny_encoder.encode(cut),
                                                   tiny_encoder.encode_concepts(CONCEPTS)).max(1).values
    np.testing.assert_allclose([records[0]["score"], records[1]["score"]], expected.numpy(), atol=1e-4)


def test_output_that_is_the_prompt_file_is_refused_before_it_is_overwritten(files, tiny_encoder_dir, capsys):
    prompts = files / "prompts.csv"
    prompts.write_text("a photo of a knife\na red balloon\n", encoding="utf-8")
    argv = _with(_args(files, tiny_encoder_dir, "--output", str(files / "." / "prompts.csv")), "--file_path", prompts)
    assert inference.main(argv) == 2
    assert "is the --file_path file" in capsys.readouterr().err
    assert prompts.read_text(encoding="utf-8") == "a photo of a knife\na red balloon\n"  # the user's file is intact


def test_an_existing_output_is_kept_unless_overwrite(files, tiny_encoder_dir, capsys, tmp_path):
    """inference.py replaced a file the user already had (or the user's link) without a word."""
    import os

    precious = tmp_path / "precious.csv"
    precious.write_text("keep me\n")
    link = tmp_path / "link.csv"
    os.symlink(tmp_path / "elsewhere.txt", link)
    for out in (precious, link):
        err = _fails(_args(files, tiny_encoder_dir, "--output", str(out)), capsys, "already exists", "--overwrite")
        assert "\n" not in err.strip()
    assert precious.read_text() == "keep me\n" and os.path.islink(link)
    assert inference.main(_args(files, tiny_encoder_dir, "--output", str(precious), "--overwrite")) == 0
    assert precious.read_text().startswith("prompt,")


def test_a_csv_report_cell_that_starts_like_a_formula_is_shown_as_text(tmp_path):
    """A moderator opening the CSV report in a spreadsheet must not run a prompt as a formula (a hostile review):
    cells starting = + - @ get a leading quote; JSONL keeps the text as it is. Every text cell of the report, by one
    writer: a blacklist category "=HYPERLINK(1)" had reached the ``categories`` cell raw (a thirty-sixth pass)."""
    import csv
    from types import SimpleNamespace

    from latentguard.csv_files import csv_cell

    link = '=HYPERLINK("http://evil","click") a naked woman'
    assert csv_cell(link) == "'" + link
    assert [csv_cell(t) for t in ("@SUM(1+1) a cat", "+1+1", "-2+3 knife", "\tx", "a = b", "", None)] == \
        ["'@SUM(1+1) a cat", "'+1+1", "'-2+3 knife", "'\tx", "a = b", "", None]
    assert [csv_cell(t) for t in ("-2", "-2.500000", "+1e-3")] == ["-2", "-2.500000", "+1e-3"]  # numbers, no formula
    v = SimpleNamespace(prompt="-1+1 a cat", score=-2.5, unsafe=True, concept="@x", truncated=False, refused=None,
                        categories={"=HYPERLINK(1)": True, "violence": True})
    out = tmp_path / "r.csv"
    infer_cli.write_output(str(out), "csv", [v], explain=False)
    row = next(csv.DictReader(out.open(encoding="utf-8")))
    assert row["categories"] == "'=HYPERLINK(1);violence" and row["prompt"] == "'-1+1 a cat"
    assert row["concept"] == "'@x" and row["score"] == "-2.500000"


def test_the_table_never_prints_a_prompts_control_characters_to_the_terminal():
    """A prompt with terminal escapes erased its own UNSAFE row on screen and drew "SAFE" in its place (a hostile
    pass): the table writes every character that is not printable as its escape."""
    from types import SimpleNamespace

    forged = "a naked woman\x1b[2K\x1b[99D   2   -4.247  SAFE\u202e"
    v = SimpleNamespace(prompt=forged, concept="nudity\x07", refused=None, score=3.2, unsafe=True,
                        top_concepts=[("nudity\x07", 3.2)], evidence=[("naked\x1b", 1.0)])
    table = infer_cli.render_table([v], explain=True)
    assert all(c.isprintable() or c == "\n" for c in table), repr(table)
    assert "UNSAFE" in table and "\\x1b[2K" in table and "\\u202e" in table and "nudity\\x07" in table


@pytest.mark.parametrize("name", ["prompts.csv", "prompts.jsonl", "prompts.TSV", "p.parquet"])
def test_a_table_is_refused_with_the_command_that_reads_it_by_column(files, tiny_encoder_dir, capsys, name):
    """inference.py reads lines: a CSV's header was a prompt, a quoted cell over two lines two prompts, and the
    JSONL record {"text": 5} a text judged safe (a hostile pass). A table is refused, naming `latentguard score`."""
    base = _args(files, tiny_encoder_dir)
    (files / name).write_text('text\n"a man holding\na bloody knife"\n', encoding="utf-8")
    _fails(_with(base, "--file_path", files / name), capsys, f"{name}: inference.py reads one prompt per line",
           "latentguard score")
