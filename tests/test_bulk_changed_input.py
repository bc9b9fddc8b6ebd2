"""An input rewritten while ``latentguard score`` reads it: the run stops naming the file, the shards
already written stay, no shard mixes rows of two versions of the file, and a rerun says what changed."""
from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch

import latentguard.bulk.local as local
from latentguard.cli.score import main as score
from latentguard.model import EmbeddingMappingLayer

OLD, NEW = "a dog playing in the park", "a naked woman, knife, blood"
LINES = [f"{OLD} number {i:05d}" if i % 3 == 0 else f"a red balloon over the sea number {i:05d}" for i in range(60)]


@pytest.fixture
def corpus(tmp_path) -> Path:
    (tmp_path / "mod.txt").write_text("\n".join(LINES) + "\n", encoding="utf-8")
    (tmp_path / "blacklist.yaml").write_text("concepts:\n  violence: [knife, gun]\n  gore: [blood]\n")
    torch.manual_seed(0)
    torch.save(EmbeddingMappingLayer().state_dict(), tmp_path / "ckpt.pth")
    return tmp_path


def argv(d: Path, encoder: Path) -> list[str]:
    return [str(d / "mod.txt"), "--output", str(d / "out"), "--checkpoint", str(d / "ckpt.pth"), "--concepts",
            str(d / "blacklist.yaml"), "--encoder", str(encoder), "--device", "cpu", "--threshold", "1.0",
            "--shard-size", "10", "--batch-size", "8", "--no-progress"]


def rewrite_in_place(path: Path) -> None:
    """What an editor or a ``sed -i``-less script does: the same file, truncated and written anew."""
    text = path.read_text(encoding="utf-8")
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(text.replace(OLD, NEW))


@pytest.mark.parametrize("when, after, written", [
    ("between shards", 2, 2),     # checked before a shard is read
    ("while reading", 3, 3),      # checked after its rows are read: the shard being read is not written
    ("after the last shard", 6, 6),  # checked at the end: no summary calls the run complete
])
def test_an_input_rewritten_mid_run_stops_the_run_and_nothing_mixes(corpus, tiny_encoder_dir, monkeypatch, capsys,
                                                                     when, after, written):
    calls = []
    if when == "while reading":
        original = local.read_rows

        def reading(*a, **k):
            yield from original(*a, **k)
            calls.append(1)
            if len(calls) == after + 1:  # shard `after` (0-based) has been read; not yet scored
                rewrite_in_place(corpus / "mod.txt")
        monkeypatch.setattr(local, "read_rows", reading)
    else:
        original = local.write_marker

        def marking(*a, **k):
            original(*a, **k)
            calls.append(1)
            if len(calls) == after:
                rewrite_in_place(corpus / "mod.txt")
        monkeypatch.setattr(local, "write_marker", marking)
    assert score(argv(corpus, tiny_encoder_dir)) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "mod.txt changed while this run was scoring it" in err, err
    assert "mtime_ns" in err and "another --output" in err and "Traceback" not in err
    out = corpus / "out"
    shards = sorted(p.name for p in out.glob("shard-*.parquet"))
    assert shards == [f"shard-{i:05d}.parquet" for i in range(written)]
    assert len(list((out / "_done").glob("*.json"))) == written and not (out / "_summary.json").exists()
    if shards:  # every row written is the planned file's row, in its place
        table = pq.read_table(out, columns=["row", "text"]).to_pylist()
        assert [(r["row"], r["text"]) for r in table] == list(enumerate(LINES))[: 10 * written]
    monkeypatch.undo()
    assert score(argv(corpus, tiny_encoder_dir)) == 2  # the rerun names what changed and touches nothing
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "mod.txt: mtime_ns, size changed" in err, err
    assert sorted(p.name for p in out.glob("shard-*.parquet")) == shards


def test_an_unchanged_input_finishes_as_before(corpus, tiny_encoder_dir, capsys):
    assert score(argv(corpus, tiny_encoder_dir)) == 0
    summary = json.loads((corpus / "out" / "_summary.json").read_text())
    assert summary["complete"] and summary["rows"] == len(LINES)


@pytest.mark.parametrize("kind", ["fifo", "device"])
def test_an_input_that_is_no_regular_file_is_refused_up_front(tmp_path, kind):
    """``mkfifo ff.txt; latentguard score ff.txt`` used to read it, then report it "changed while this run was
    scoring it (mtime_ns changed)"; a link to /dev/zero would be read for ever. Both are named before any read."""
    import os
    import subprocess
    import sys

    root = Path(__file__).resolve().parent.parent
    source = tmp_path / "ff.txt"
    if kind == "fifo":
        os.mkfifo(source)
    else:
        source.symlink_to("/dev/zero")
    env = {**os.environ, "PYTHONPATH": str(root), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-m", "latentguard", "score", str(source), "--guard", "mini",
                             "--output", str(tmp_path / "so2")], capture_output=True, text=True, env=env,
                            timeout=120, cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    err = result.stderr
    assert err.count("\n") == 1 and f"input {source} is not a regular file" in err and "FIFO" in err, err
    assert not (tmp_path / "so2").exists()
