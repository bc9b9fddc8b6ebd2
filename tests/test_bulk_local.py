"""Bulk scoring on one machine: ``latentguard score`` over real files of every format with the tiny CLIP
guard, checked row for row against the guard itself, plus resumption after ``kill -9`` to the same
bytes, refusals, and failures that never read as safe."""
from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from latentguard.cli.score import main as score
from latentguard.errors import LatentGuardError
from latentguard.guard import LatentGuard
from latentguard.model import EmbeddingMappingLayer

ROOT = Path(__file__).resolve().parent.parent
LONG = "a quiet harbour at dawn with fishing boats and gulls " * 12  # > 77 tokens: truncated
TXT = ["a knife on the kitchen table", "", "a red balloon in the sky", "a knife on the kitchen table",
       "blood on the floor", LONG, "  a cat asleep on a sofa  ", "a red balloon in the sky", "a man with a gun"]
JSONL = [{"id": 10, "text": "a bomb in a backpack"}, {"id": "b", "text": "a knife on the kitchen table"}, None,
         {"id": 12, "text": "children playing in a park"}, {"id": 13, "text": "a bomb in a backpack"}]
CSV = [("c1", "a sunny meadow, with flowers"), ("c2", "line one\nline two of one prompt"),
       ("c3", "blood on the floor"), ("c4", 'a "quoted" gun')]
PARQUET = [(100 + i, t) for i, t in enumerate(["a cake on a table", "a man with a gun", "a cake on a table",
                                                "an old car in the desert", "blood on the floor", "a gun", "a cake"])]


def checkpoint(path: Path) -> Path:
    torch.manual_seed(0)
    model = EmbeddingMappingLayer()
    with torch.no_grad():
        model.tempr.fill_(30.0)  # spread the logits
    torch.save(model.state_dict(), path)
    return path


@pytest.fixture
def corpus(tmp_path):
    """Four inputs (txt with a BOM, a blank line and no final newline; jsonl; csv with quoted newlines;
    parquet in 3 row groups), a grouped blacklist and a checkpoint."""
    (tmp_path / "a.txt").write_bytes(("\ufeff" + "\n".join(TXT)).encode("utf-8"))
    (tmp_path / "b.jsonl").write_text("\n".join("" if r is None else json.dumps(r) for r in JSONL) + "\n",
                                      encoding="utf-8")
    with open(tmp_path / "c.csv", "w", newline="", encoding="utf-8") as handle:
        csv.writer(handle).writerows([("id", "text"), *CSV])
    pq.write_table(pa.table({"id": [i for i, _ in PARQUET], "text": [t for _, t in PARQUET]}), tmp_path / "d.parquet",
                   row_group_size=3)
    (tmp_path / "blacklist.yaml").write_text("concepts:\n  violence: [knife, gun, bomb]\n  gore: [blood, knife]\n",
                                             encoding="utf-8")
    checkpoint(tmp_path / "ckpt.pth")
    return tmp_path


def expected_rows(d: Path) -> list[tuple[str, int, str | None, str]]:
    """(input, row, id, text) read independently of latentguard.bulk."""
    rows = [("a.txt", i, None, t.strip()) for i, t in enumerate(TXT) if t.strip()]
    rows += [("b.jsonl", i, str(r["id"]), r["text"]) for i, r in enumerate(JSONL) if r is not None]
    rows += [("c.csv", i, c, t) for i, (c, t) in enumerate(CSV)]
    rows += [("d.parquet", i, str(c), t) for i, (c, t) in enumerate(PARQUET)]
    return [(str(d / name), row, ident, text) for name, row, ident, text in rows]


def guard_for(d: Path, tiny_encoder, threshold: float = 0.0) -> LatentGuard:
    return LatentGuard.from_pretrained(d / "ckpt.pth", tiny_encoder, d / "blacklist.yaml", threshold=threshold,
                                       cache_concepts=False)


def split_threshold(guard: LatentGuard, texts: list[str]) -> float:
    """A threshold between two neighbouring scores near the median: both verdicts occur, no score sits on it."""
    scores = np.unique(guard.scores(texts))
    mid = len(scores) // 2
    return float((scores[mid - 1] + scores[mid]) / 2)


SCORER_TEXTS = ["a knife on the table", "a red balloon", "blood on the floor", "a man with a gun", "a cake"]


def scorer_recipe(d: Path, encoder_dir: Path, tiny_encoder, texts: list[str]) -> tuple[LatentGuard, dict]:
    """The guard and the ``GuardBatchScorer`` keyword arguments of the documented engine examples (Ray, Spark):
    a grouped blacklist, a checkpoint, a threshold that splits ``texts``."""
    (d / "blacklist.yaml").write_text("concepts:\n  violence: [knife, gun]\n  gore: [blood]\n")
    checkpoint(d / "ckpt.pth")
    guard = guard_for(d, tiny_encoder)
    guard.threshold = split_threshold(guard, texts)
    return guard, {"checkpoint": str(d / "ckpt.pth"), "encoder": str(encoder_dir),
                   "concepts": str(d / "blacklist.yaml"), "threshold": guard.threshold, "device": "cpu"}


def args(d: Path, encoder_dir: Path, out: Path, threshold: float, *extra: str) -> list[str]:
    return [str(d / "a.txt"), str(d / "b.jsonl"), str(d / "c.csv"), str(d / "d.parquet"), "--output", str(out),
            "--checkpoint", str(d / "ckpt.pth"), "--concepts", str(d / "blacklist.yaml"), "--encoder",
            str(encoder_dir), "--device", "cpu", "--threshold", repr(threshold), "--id-column", "id",
            "--no-progress", *extra]


def snapshot(directory: Path) -> dict[str, bytes]:
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


def test_every_row_keeps_its_place_and_gets_the_guards_verdict(corpus, tiny_encoder_dir, tiny_encoder, capsys):
    expected = expected_rows(corpus)
    texts = [t for *_, t in expected]
    guard = guard_for(corpus, tiny_encoder)
    threshold = split_threshold(guard, texts)
    guard.threshold = threshold
    verdicts = guard.check(texts, explain=False)
    out = corpus / "out"
    assert score(args(corpus, tiny_encoder_dir, out, threshold, "--shard-size", "3", "--batch-size", "2")) == 0
    table = pq.read_table(out)  # the parquet dataset reader skips the run's _records
    assert table.column_names == ["input", "row", "id", "text", "score", "unsafe", "concept", "truncated", "refused",
                                  "category_violence", "category_gore"]
    assert str(table.schema.field("score").type) == "float" and str(table.schema.field("row").type) == "int64"
    got = table.to_pylist()
    assert [(r["input"], r["row"], r["id"], r["text"]) for r in got] == expected  # shards read back in order
    np.testing.assert_allclose([r["score"] for r in got], [v.score for v in verdicts], rtol=1e-5, atol=1e-5)
    assert [r["unsafe"] for r in got] == [v.unsafe for v in verdicts]
    assert 0 < sum(v.unsafe for v in verdicts) < len(verdicts)
    assert [r["concept"] for r in got] == [v.concept for v in verdicts]
    assert [r["truncated"] for r in got] == [v.truncated for v in verdicts] and sum(r["truncated"] for r in got) == 1
    for name in ("violence", "gore"):
        assert [r[f"category_{name}"] for r in got] == [v.categories[name] for v in verdicts]
    # shards: boundaries at rows 0, 3, 6 of each file (a.txt has 9 lines: 3 shards; c.csv 4 records: 2)
    shards = sorted(p.name for p in out.glob("shard-*.parquet"))
    assert len(shards) == 3 + 2 + 2 + 3 and len(list((out / "_done").glob("*.json"))) == len(shards)
    assert [r.num_rows for r in (pq.read_table(out / s) for s in shards[:3])] == [2, 3, 3]  # blank line 1 skipped
    summary = json.loads((out / "_summary.json").read_text())
    assert summary["rows"] == len(expected) and summary["distinct"] == len(set(texts))  # each distinct text once
    assert summary["flagged"] == sum(v.unsafe for v in verdicts) and summary["truncated"] == 1 and summary["complete"]
    console = capsys.readouterr().out
    assert f"{len(expected)} rows in 10 shard(s)" in console and f"distinct texts scored: {len(set(texts))}" in console
    manifest = json.loads((out / "_manifest.json").read_text())
    assert manifest["guard"]["threshold"] == threshold and manifest["guard"]["categories"] == ["violence", "gore"]
    assert len(manifest["guard"]["checkpoint_sha256"]) == 64 and manifest["guard"]["encoder"] == tiny_encoder.identity
    assert manifest["options"] == {"text_column": "text", "id_column": "id", "format": "parquet", "shard_size": 3,
                                   "dedup": True, "batch_size": 2}
    # a finished run, run again: nothing rescored, nothing rewritten
    before = snapshot(out)
    assert score(args(corpus, tiny_encoder_dir, out, threshold, "--shard-size", "3", "--batch-size", "2")) == 0
    after = snapshot(out)
    assert {k: v for k, v in after.items() if k != "_summary.json"} == \
        {k: v for k, v in before.items() if k != "_summary.json"}
    assert json.loads(after["_summary.json"])["shards_scored_now"] == 0


def test_jsonl_shards_and_no_dedup_give_the_same_rows(corpus, tiny_encoder_dir, tiny_encoder):
    threshold = split_threshold(guard_for(corpus, tiny_encoder), [t for *_, t in expected_rows(corpus)])
    assert score(args(corpus, tiny_encoder_dir, corpus / "pq", threshold, "--shard-size", "4")) == 0
    assert score(args(corpus, tiny_encoder_dir, corpus / "js", threshold, "--shard-size", "4", "--format", "jsonl",
                      "--no-dedup")) == 0
    parquet_rows = pq.read_table(corpus / "pq").to_pylist()
    json_rows = [json.loads(line) for p in sorted((corpus / "js").glob("shard-*.jsonl"))
                 for line in p.read_text(encoding="utf-8").splitlines()]
    assert [{k: v for k, v in r.items() if k != "score"} for r in json_rows] == \
        [{k: v for k, v in r.items() if k != "score"} for r in parquet_rows]
    np.testing.assert_allclose([r["score"] for r in json_rows], [r["score"] for r in parquet_rows], atol=1e-5)
    no_dedup = json.loads((corpus / "js" / "_summary.json").read_text())
    assert no_dedup["distinct"] is None and sum(
        json.loads(p.read_text())["scored"] for p in (corpus / "js" / "_done").glob("*.json")) == len(json_rows)


def _run_killed(argv: list[str], out: Path, after_markers: int) -> int:
    """Start ``latentguard score`` as a real process and ``kill -9`` it once ``after_markers`` shards are done."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "latentguard", "score", *argv], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            if len(list((out / "_done").glob("*.json"))) >= after_markers if (out / "_done").exists() else False:
                break
            time.sleep(0.01)
        running = proc.poll() is None
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=60)
    assert running, f"the run ended before it could be killed: {proc.stderr.read().decode()[-2000:]}"
    return len(list((out / "_done").glob("*.json")))


def test_kill_9_then_the_same_command_resumes_to_identical_bytes(tmp_path, tiny_encoder_dir, tiny_encoder):
    rng = np.random.default_rng(0)
    words = "a the knife gun cat dog blood red balloon sky kitchen floor man woman bomb cake park".split()
    base = [" ".join(rng.choice(words, 6)) for _ in range(100)]
    lines = [base[i] for i in rng.integers(0, len(base), 300)]  # repeats across shards, as real corpora have
    (tmp_path / "p.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    (tmp_path / "blacklist.yaml").write_text("concepts:\n  violence: [knife, gun, bomb]\n  gore: [blood]\n")
    checkpoint(tmp_path / "ckpt.pth")
    threshold = split_threshold(guard_for(tmp_path, tiny_encoder), base)

    def argv(out: Path) -> list[str]:
        return [str(tmp_path / "p.txt"), "--output", str(out), "--checkpoint", str(tmp_path / "ckpt.pth"),
                "--concepts", str(tmp_path / "blacklist.yaml"), "--encoder", str(tiny_encoder_dir), "--device", "cpu",
                "--threshold", repr(threshold), "--shard-size", "20", "--batch-size", "8", "--no-progress"]

    killed = tmp_path / "killed"
    done_when_killed = _run_killed(argv(killed), killed, after_markers=3)
    assert 3 <= done_when_killed < 15
    (killed / ".shard-00009.parquet.x1y2.tmp").write_bytes(b"half a shard")  # what a kill during a write leaves
    assert score(argv(killed)) == 0  # the same command resumes
    reference = tmp_path / "reference"
    assert score(argv(reference)) == 0
    shards = sorted(p.name for p in reference.glob("shard-*.parquet"))
    assert len(shards) == 15
    assert all((killed / s).read_bytes() == (reference / s).read_bytes() for s in shards)  # byte-identical
    assert sorted(p.name for p in killed.glob("shard-*")) == shards and not list(killed.glob(".*.tmp"))
    summary = json.loads((killed / "_summary.json").read_text())
    assert summary["distinct"] == len(set(lines)) and summary["rows"] == 300 and 0 < summary["flagged"] < 300
    # the window a crash can hit between a shard's rename and its marker: the shard is redone, same bytes
    marker = killed / "_done" / "shard-00008.json"
    for later in sorted((killed / "_done").glob("*.json"))[8:]:
        later.unlink()
    assert not marker.exists()
    assert score(argv(killed)) == 0
    assert all((killed / s).read_bytes() == (reference / s).read_bytes() for s in shards)


def test_another_guard_options_or_changed_input_is_refused_and_nothing_is_touched(corpus, tiny_encoder_dir, capsys):
    out = corpus / "out"
    assert score(args(corpus, tiny_encoder_dir, out, 1.0, "--shard-size", "4")) == 0
    before = snapshot(out)
    capsys.readouterr()
    for argv, needle in ((args(corpus, tiny_encoder_dir, out, 2.0, "--shard-size", "4"), "guard threshold 1.0 vs 2.0"),
                         (args(corpus, tiny_encoder_dir, out, 1.0, "--shard-size", "5"), "option shard_size 4 vs 5"),
                         (args(corpus, tiny_encoder_dir, out, 1.0, "--shard-size", "4", "--no-dedup"), "option dedup"),
                         (args(corpus, tiny_encoder_dir, out, 1.0, "--shard-size", "4", "--batch-size", "3"),
                          "option batch_size 64 vs 3"),
                         (args(corpus, tiny_encoder_dir, out, 1.0, "--shard-size", "4", "--no-defences"),
                          "guard normalize_text True vs False")):
        assert score(argv) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "not mixed" in err and needle in err, err
    blacklist = (corpus / "blacklist.yaml").read_text()
    (corpus / "blacklist.yaml").write_text("concepts:\n  violence: [knife, gun]\n  gore: [blood, knife]\n")
    assert score(args(corpus, tiny_encoder_dir, out, 1.0, "--shard-size", "4")) == 2
    assert "guard blacklist_sha256" in capsys.readouterr().err
    (corpus / "blacklist.yaml").write_text(blacklist)
    with open(corpus / "c.csv", "a", encoding="utf-8") as handle:
        handle.write("c5,one more row\n")
    assert score(args(corpus, tiny_encoder_dir, out, 1.0, "--shard-size", "4")) == 2
    assert "c.csv: mtime_ns, rows, size changed" in capsys.readouterr().err
    assert snapshot(out) == before


def test_an_output_that_is_an_input_or_holds_other_files_is_refused(corpus, tiny_encoder_dir, capsys):
    base = args(corpus, tiny_encoder_dir, corpus / "unused", 1.0)
    cases = [([str(corpus / "a.txt"), "--output", str(corpus / "a.txt")], "lies in the output directory"),
             ([str(corpus / "*.txt"), "--output", str(corpus)], "lies in the output directory"),
             ([str(corpus / "a.txt"), "--output", str(corpus / "mine")], "is not empty and holds no _manifest.json"),
             ([str(corpus / "nothing-*.txt"), "--output", str(corpus / "o")], "matches no file"),
             ([str(corpus / "ckpt.pth"), "--output", str(corpus / "o")], "unknown extension '.pth'"),
             ([str(corpus / "a.txt"), str(corpus / "." / "a.txt"), "--output", str(corpus / "o")], "given twice"),
             ([str(corpus / "a.txt"), str(corpus / "links" / "hard.txt"), "--output", str(corpus / "o")],
              "given twice"),
             ([str(corpus / "empty.txt"), "--output", str(corpus / "o")], "no prompts to score"),
             ([str(corpus / "blank.txt"), "--output", str(corpus / "o")], "no prompts to score"),  # blank lines only
             ([str(corpus / "blank.jsonl"), "--output", str(corpus / "o")], "no prompts to score"),
             ([str(corpus / "blank.txt"), str(corpus / "blank.jsonl"), str(corpus / "empty.txt"), "--output",
               str(corpus / "o")], "no prompts to score")]
    (corpus / "empty.txt").write_text("")
    (corpus / "links").mkdir()
    os.link(corpus / "a.txt", corpus / "links" / "hard.txt")  # the same file: it had been scored twice
    (corpus / "blank.txt").write_bytes(b"\n  \n\t\n")
    (corpus / "blank.jsonl").write_text("\ufeff\n  \n\t\n", encoding="utf-8")
    (corpus / "mine").mkdir()
    (corpus / "mine" / "notes.txt").write_text("a user's file\n")
    before = snapshot(corpus)
    for head, needle in cases:
        assert score(head + base[base.index("--checkpoint"):]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and needle in err and "Traceback" not in err, (needle, err)
    assert snapshot(corpus) == before and not (corpus / "o").exists()


@pytest.mark.parametrize("name, content, needle", [
    ("x.jsonl", '{"text": "ok"}\n{"text": null}\n', "x.jsonl: line 2 has no text in column 'text'"),
    ("x.jsonl", '{"text": "ok"}\n[1, 2]\n', "line 2 is not a JSON object"),
    ("x.jsonl", '{"text": "ok"}\n{"text": \n', "x.jsonl: line 2: not valid JSON"),
    pytest.param("x.jsonl", '{"text": "ok"}\n{"text": ' + "[" * 30000 + "]" * 30000 + "}\n",  # past Python's stack
                 "x.jsonl: line 2: JSON nested too deeply to read", id="jsonl-nested-30000-deep"),
    ("x.jsonl", '{"text":"a knife","text":"a cat"}\n', "x.jsonl: line 1: key 'text' is given twice"),  # no "a cat"
    ("x.jsonl", '{"text": "ok", "n": NaN}\n', "x.jsonl: line 1: NaN is not a JSON number"),
    ("x.csv", "prompt,other\nhello,1\n", "no column 'text' in the header (prompt, other); set --text-column"),
    ("x.csv", "text,other\nhello,1\nbad\n", "record 1 has 1 fields, the header 2"),
    ("x.txt", b"fine\n\xff\xfe bad\n", "byte 5 is not valid UTF-8"),
    ("x.csv", "id,text\n1,a man with a gun\n2,\n", "x.csv: record 1 has no text in column 'text'"),  # pandas' null
    ("x.txt", b"a gun\rblood\ra cat\r", "line 1 holds a carriage return inside it"),              # old Mac lines
])
def test_bad_rows_are_one_line_errors_naming_file_and_row(tmp_path, corpus, tiny_encoder_dir, capsys, name, content,
                                                          needle):
    path = tmp_path / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8"))
    argv = args(corpus, tiny_encoder_dir, tmp_path / "out", 1.0)
    assert score([str(path)] + argv[argv.index("--output"):argv.index("--id-column")] + ["--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and needle in err and "Traceback" not in err, err
    # a new run that finished no shard keeps nothing: the folder had stayed, and once the input was fixed its rerun
    # was refused as "inputs changed" while the message promised a resume (a forty-first hostile pass)
    assert not (tmp_path / "out").exists() and "a rerun resumes" not in err, err
    path.write_text({"x.jsonl": '{"text": "ok"}\n', "x.csv": "text,other\nhello,1\n"}.get(name, "fine\n"))
    assert score([str(path)] + argv[argv.index("--output"):argv.index("--id-column")] + ["--no-progress"]) == 0


SURROGATE = '{"text": "\\ud800 knife"}'  # a JSON escape of a lone surrogate: not text (dedup cannot hash it)


@pytest.mark.parametrize("name, content, extra, needle", [
    ("s.jsonl", SURROGATE + "\n", [], "s.jsonl: line 1: the text in column 'text' '\\ud800 knife' holds a lone "
                                     "surrogate"),
    ("s.jsonl", '{"text": "a cat \\ud83d\\ude00"}\n\n' + SURROGATE, [], "s.jsonl: line 3: the text"),  # a pair: fine
    ("s.jsonl", '{"text": "a \\\\ud83d\\ude00 knife"}\n', [], "line 1: the text"),  # \\ then a lone low half
    ("s.jsonl", '{"id": "\\udfff", "text": "a cat"}\n', ["--id-column", "id"], "line 1: the id in column 'id'"),
    ("x.csv", "text,text\na cat,a knife\n", [], "x.csv: column name(s) 'text' appear more than once in the header"),
    ("x.csv", "id,text,id\n1,a cat,a knife\n", ["--id-column", "id"], "column name(s) 'id' appear more than once"),
    ("x.parquet", pa.Table.from_arrays([pa.array(["a cat"]), pa.array(["a knife"])], names=["text", "text"]), [],
     "x.parquet: column name(s) 'text' appear more than once in its schema"),
    ("x.txt", b"a cat\ra knife\r", [], "x.txt: line 1 holds a carriage return inside it"),
    ("x.jsonl", b'{"text": "ok"}\n{"text": "caf\xe9"}\n', [], "x.jsonl: byte 28 is not valid UTF-8"),
])
def test_bad_inputs_are_refused_before_the_output_directory_is_made(tmp_path, corpus, tiny_encoder_dir, capsys, name,
                                                                    content, extra, needle):
    """What a row may not hold is found while the plan reads the file: nothing is created, the model never loads."""
    path = tmp_path / name
    if isinstance(content, pa.Table):
        pq.write_table(content, path)
    else:
        path.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8"))
    argv = args(corpus, tiny_encoder_dir, tmp_path / "out", 1.0)
    assert score([str(path)] + argv[argv.index("--output"):argv.index("--id-column")] + ["--no-progress", *extra]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and needle in err and "Traceback" not in err, err
    assert not (tmp_path / "out").exists()


def test_the_plan_reads_a_suspect_line_as_the_reader_does_wherever_it_falls(tmp_path, monkeypatch):
    """Lines cut across the planner's read blocks (a 16-byte CHUNK) are checked whole: a surrogate pair passes,
    a lone half is refused on its own line; blank-only files hold no rows, a BOM and spaces are blank."""
    from latentguard.bulk import inputs

    monkeypatch.setattr(inputs, "CHUNK", 16)
    good = ['{"text": "a cat %d \\ud83d\\ude00 and a long tail of words"}' % i for i in range(40)]
    (tmp_path / "good.jsonl").write_text("\n".join(good), encoding="utf-8")
    item = inputs.plan_input("good.jsonl", tmp_path / "good.jsonl", "text", None, 7)
    assert item.rows == 40 and item.has_rows
    texts = [t for start in range(0, 40, 7) for c in inputs.read_rows(item, "text", None, start, start + 7, 7)
             for t in c.texts]
    assert texts == [json.loads(line)["text"] for line in good]
    for bad_line in (5, 39):
        lines = list(good)
        lines[bad_line] = lines[bad_line].replace("\\ude00", "")
        (tmp_path / "bad.jsonl").write_text("\n".join(lines), encoding="utf-8")
        with pytest.raises(LatentGuardError, match=f"bad.jsonl: line {bad_line + 1}: the text .* lone surrogate"):
            inputs.plan_input("bad.jsonl", tmp_path / "bad.jsonl", "text", None, 7)
    (tmp_path / "mac.txt").write_bytes(b"a long first line of words\r\n" * 3 + b"a cat\r\r\nfour\rfive\r")
    with pytest.raises(LatentGuardError, match="mac.txt: line 5 holds a carriage return inside it"):
        inputs.plan_input("mac.txt", tmp_path / "mac.txt", "text", None, 2)
    (tmp_path / "blank.txt").write_text("\ufeff" + "  \n\u3000\n\t\r\n" * 5, encoding="utf-8", newline="")
    blank = inputs.plan_input("blank.txt", tmp_path / "blank.txt", "text", None, 2)
    assert blank.rows == 15 and not blank.has_rows


def test_a_parquet_column_that_is_not_text_or_holds_nulls_is_refused(tmp_path, corpus, tiny_encoder_dir, capsys):
    pq.write_table(pa.table({"text": [1, 2]}), tmp_path / "ints.parquet")
    pq.write_table(pa.table({"text": ["ok", None]}), tmp_path / "nulls.parquet")
    argv = args(corpus, tiny_encoder_dir, tmp_path / "out", 1.0)
    tail = argv[argv.index("--output"):argv.index("--id-column")] + ["--no-progress"]
    assert score([str(tmp_path / "ints.parquet")] + tail) == 2
    assert "column 'text' holds int64, not text" in capsys.readouterr().err
    # a categorical of numbers is not text either, said as its values' type
    pq.write_table(pa.table({"text": pa.array([1, 2]).dictionary_encode()}), tmp_path / "catints.parquet")
    assert score([str(tmp_path / "catints.parquet")] + tail) == 2
    assert "column 'text' holds int64, not text" in capsys.readouterr().err
    assert score([str(tmp_path / "nulls.parquet")] + tail) == 2
    err = capsys.readouterr().err
    assert "nulls.parquet: row 1 has no text" in err and "nothing of this run was kept" in err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("content, said", [
    ('text\n"a cat\na naked woman\na bloody knife\na dog\n',
     "record 0 is not valid CSV: a quoted cell is never closed"),
    ('text\n"a cat"x\na dog\n', "record 0 is not valid CSV: malformed CSV"),
    ("text\ra cat\ra naked woman\r", "the header row is not valid CSV"),
])
def test_a_csv_whose_quotes_or_line_ends_would_merge_rows_is_refused(tmp_path, corpus, tiny_encoder_dir, capsys,
                                                                     content, said):
    """A quote never closed ran every later record into one row (four prompts scored as one, exit 0), '"a"b' read
    as 'ab', and a bare CR in the header was a traceback (a thirty-sixth hostile pass): one line, nothing written."""
    (tmp_path / "u.csv").write_bytes(content.encode("utf-8"))
    argv = args(corpus, tiny_encoder_dir, tmp_path / "out", 1.0)
    tail = argv[argv.index("--output"):argv.index("--id-column")] + ["--no-progress"]
    assert score([str(tmp_path / "u.csv")] + tail) == 2
    err = capsys.readouterr().err
    assert said in err and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "out").exists()


def test_a_pandas_categorical_text_column_scores_as_its_texts(tmp_path, corpus, tiny_encoder_dir):
    """A pandas categorical saved to parquet is dictionary-encoded text: its rows read as the texts they
    stand for, so the shards equal those of the same column saved as plain text (it was refused before)."""
    texts = ["a bloody knife", "a cat on a sofa", "a bloody knife", None]
    pq.write_table(pa.table({"text": texts[:3]}), tmp_path / "plain.parquet")
    pq.write_table(pa.table({"text": pa.array(texts[:3]).dictionary_encode()}), tmp_path / "cat.parquet")
    outs = {}
    for name in ("plain", "cat"):
        argv = args(corpus, tiny_encoder_dir, tmp_path / f"out-{name}", 1.0)
        tail = argv[argv.index("--output"):argv.index("--id-column")] + ["--no-progress"]
        assert score([str(tmp_path / f"{name}.parquet")] + tail) == 0
        outs[name] = pq.read_table(sorted((tmp_path / f"out-{name}").glob("shard-*.parquet"))[0])
    assert outs["cat"].column("text").to_pylist() == texts[:3]
    assert outs["cat"].column("score").to_pylist() == outs["plain"].column("score").to_pylist()
    # a float id column's NaN (how pandas writes a missing value) is a null id, not the text "nan"
    pq.write_table(pa.table({"text": texts[:3], "image": [1.5, float("nan"), None]}), tmp_path / "ids.parquet")
    argv = args(corpus, tiny_encoder_dir, tmp_path / "out-ids", 1.0)
    tail = argv[argv.index("--output"):argv.index("--id-column")] + ["--id-column", "image", "--no-progress"]
    assert score([str(tmp_path / "ids.parquet")] + tail) == 0
    shard = pq.read_table(sorted((tmp_path / "out-ids").glob("shard-*.parquet"))[0])
    assert shard.column("image").to_pylist() == ["1.5", None, None]
    # a binary id column is read as UTF-8 text ("b'ok'" had been written), and bytes that are not UTF-8 are refused
    pq.write_table(pa.table({"text": texts[:2], "image": pa.array([b"ok", b"caf\xc3\xa9"])}), tmp_path / "b.parquet")
    argv = args(corpus, tiny_encoder_dir, tmp_path / "out-b", 1.0)
    tail = argv[argv.index("--output"):argv.index("--id-column")] + ["--id-column", "image", "--no-progress"]
    assert score([str(tmp_path / "b.parquet")] + tail) == 0
    shard = pq.read_table(sorted((tmp_path / "out-b").glob("shard-*.parquet"))[0])
    assert shard.column("image").to_pylist() == ["ok", "café"]
    pq.write_table(pa.table({"text": texts[:1], "image": pa.array([b"\xff\xfe"])}), tmp_path / "bad.parquet")
    argv = args(corpus, tiny_encoder_dir, tmp_path / "out-bad", 1.0)
    tail = argv[argv.index("--output"):argv.index("--id-column")] + ["--id-column", "image", "--no-progress"]
    assert score([str(tmp_path / "bad.parquet")] + tail) == 2
    # a missing value of a categorical is a missing text, refused as in a plain column
    pq.write_table(pa.table({"text": pa.array(texts).dictionary_encode()}), tmp_path / "catnull.parquet")
    argv = args(corpus, tiny_encoder_dir, tmp_path / "out-null", 1.0)
    tail = argv[argv.index("--output"):argv.index("--id-column")] + ["--no-progress"]
    assert score([str(tmp_path / "catnull.parquet")] + tail) == 2


def test_a_failing_batch_is_reported_never_written_and_the_rerun_resumes(corpus, tiny_encoder_dir, monkeypatch,
                                                                           capsys):
    out = corpus / "out"
    original, calls = LatentGuard.check, []

    def failing(self, prompts, explain=True):
        calls.append(len(prompts))
        if len(calls) == 3:
            raise LatentGuardError("scoring gave a non-finite logit; refusing")
        return original(self, prompts, explain)

    monkeypatch.setattr(LatentGuard, "check", failing)
    assert score(args(corpus, tiny_encoder_dir, out, 1.0, "--shard-size", "3")) == 2
    err = capsys.readouterr().err
    assert "non-finite" in err and "nothing of this shard was written" in err and "a.txt rows 6-8" in err, err
    assert sorted(p.name for p in out.glob("shard-*")) == ["shard-00000.parquet", "shard-00001.parquet"]
    assert len(list((out / "_done").glob("*.json"))) == 2
    monkeypatch.setattr(LatentGuard, "check", original)
    assert score(args(corpus, tiny_encoder_dir, out, 1.0, "--shard-size", "3")) == 0
    assert "2 shard(s) were already done" in capsys.readouterr().out
    assert pq.read_table(out).num_rows == len(expected_rows(corpus))


def test_the_plan_finds_every_shard_start_and_reads_only_its_rows(tmp_path):
    from latentguard.bulk.inputs import plan_input, read_rows

    lines = ["x" * (i % 7) for i in range(1000)]  # blank lines every 7th
    (tmp_path / "p.txt").write_text("\n".join(lines), encoding="utf-8")  # no final newline
    records = [(f"r{i}", f"text {i}\nwith, a newline" if i % 5 == 0 else f"t{i}") for i in range(300)]
    with open(tmp_path / "p.csv", "w", newline="", encoding="utf-8") as handle:
        csv.writer(handle).writerows([("id", "text"), *records])
    for name, n_rows, expected in (("p.txt", 1000, [(i, t) for i, t in enumerate(lines) if t]),
                                   ("p.csv", 300, [(i, t) for i, (_, t) in enumerate(records)])):
        for shard_size in (1, 7, 64, 1000, 5000):
            item = plan_input(name, tmp_path / name, "text", None, shard_size)
            assert item.rows == n_rows and len(item.offsets) == -(-n_rows // shard_size)
            got = [(r, t) for start in range(0, n_rows, shard_size)
                   for chunk in read_rows(item, "text", None, start, start + shard_size, shard_size)
                   for r, t in zip(chunk.rows, chunk.texts)]
            assert got == expected, (name, shard_size)


def test_the_score_command_is_listed_and_documented(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    listing = subprocess.run([sys.executable, "-m", "latentguard", "--help"], env=env, capture_output=True, text=True,
                             timeout=120)
    assert listing.returncode == 0 and "score" in listing.stdout
    helped = subprocess.run([sys.executable, "-m", "latentguard", "score", "--help"], env=env, capture_output=True,
                            text=True, timeout=120)
    assert helped.returncode == 0
    for flag in ("--output", "--text-column", "--id-column", "--shard-size", "--no-dedup", "--engine", "--address",
                 "--workers", "--checkpoint", "--concepts", "--threshold"):
        assert flag in helped.stdout


def test_another_commands_run_directory_is_not_taken_for_a_score_run(corpus, tiny_encoder_dir, capsys):
    """`latentguard benchmark` and `latentguard score` are different commands: one's directory is the
    other's user files, refused, untouched."""
    from latentguard.constants import RUN_OUTPUTS_RECORD

    other = corpus / "bench"
    other.mkdir()
    (other / RUN_OUTPUTS_RECORD).write_text(json.dumps({"latentguard benchmark": {"benchmark.json": "0" * 64}}))
    (other / "benchmark.json").write_text("{}\n")
    before = snapshot(other)
    argv = args(corpus, tiny_encoder_dir, other, 1.0)
    assert score(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "holds no _manifest.json" in err, err
    assert snapshot(other) == before
