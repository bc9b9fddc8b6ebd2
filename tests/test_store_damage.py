"""The store: readers never modify, damage is refused with file and line, repair is on
request, bad rows never reach a score, and two builders share the work. Real files, real processes."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from synthetic import make_synthetic_copro
from test_store_contents import TEXTS, FakeEncoder, fp16, snapshot

from latentguard.data import load_copro
from latentguard.errors import LatentGuardError
from latentguard.store.locate import open_store_for
from latentguard.store.repair import repair_store
from latentguard.store.store import EmbeddingStore

ROOT = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}


def run(script: str, *argv: str, stdin: str | None = None, timeout: int = 240,
        cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / script), *argv], capture_output=True, text=True, cwd=cwd,
                          env=ENV, input=stdin, timeout=timeout)


def one_line_error(done: subprocess.CompletedProcess, *needles: str) -> str:
    err = done.stderr.strip()
    assert done.returncode == 2 and "Traceback" not in err and len(err.splitlines()) == 1, done.stderr
    for needle in needles:
        assert needle in err, (needle, err)
    return err


def fake_store(path: Path, texts=TEXTS) -> EmbeddingStore:
    store = EmbeddingStore(path, identity="fake:h16", hidden_size=16, create=True)
    store.add(texts, FakeEncoder().encode(texts))
    return store


def corrupt_line(index: Path, line: int) -> None:
    lines = index.read_bytes().split(b"\n")
    lines[line - 1] = lines[line - 1][:3] + b"\xff" + lines[line - 1][4:]  # one bad byte
    index.write_bytes(b"\n".join(lines))


# ---------------------------------------------------------------------------- damage is refused, not "repaired"
def test_bad_byte_mid_index_is_refused_by_every_command_then_repaired_on_request(tmp_path, tiny_encoder_dir,
                                                                                 tiny_encoder, capsys):
    import prepare

    dataset = make_synthetic_copro(tmp_path / "small.json", n_id=4, n_ood=2, train_per_concept=5, test_per_concept=2)
    texts = load_copro(dataset).all_texts()
    cache = tmp_path / "cache"
    argv = ["--dataset", str(dataset), "--encoder", str(tiny_encoder_dir), "--store-dir", str(cache),
            "--device", "cpu", "--dtype", "float32"]
    assert prepare.main(argv) == 0
    store = open_store_for(cache, tiny_encoder)
    assert len(store) == len(texts)
    corrupt_line(store.index_file, 5)
    before = snapshot(store.path)

    with pytest.raises(LatentGuardError, match=r"index.jsonl: line 5 is not a JSON string.*prepare.py --repair"):
        EmbeddingStore(store.path)  # what test.py and main.py do to read it
    err = one_line_error(run("prepare.py", *argv), "index.jsonl: line 5", f"prepare.py --repair {store.path}")
    assert snapshot(store.path) == before, err  # neither the reader nor the writer cut anything

    capsys.readouterr()
    assert prepare.main(["--repair", str(store.path)]) == 0
    said = capsys.readouterr().out
    assert "dropped damaged line(s) 5" in said and "index.jsonl.damaged-1" in said
    assert (store.path / "index.jsonl.damaged-1").read_bytes() == before["index.jsonl"]  # the original is kept
    repaired = EmbeddingStore(store.path)
    assert len(repaired) == len(texts) and len(repaired.texts()) == len(texts) - 1  # only line 5 is lost

    assert prepare.main(argv) == 0
    assert "encoding 1 texts" in capsys.readouterr().out
    final = EmbeddingStore(store.path)
    assert torch.equal(final.get(texts), tiny_encoder.encode(texts))
    assert repair_store(store.path).startswith("nothing to repair")


def test_the_shared_store_opener_never_reads_damage_as_no_store(tmp_path):
    """test.py --external encodes on the fly when there is no store, but a damaged one is refused."""
    from latentguard.config import load_config
    from latentguard.store.locate import open_configured_store

    cfg = load_config(None, overrides={"store_dir": str(tmp_path / "cache"), "encoder.name": str(tmp_path / "enc")})
    encoder = FakeEncoder()
    assert open_configured_store(cfg, encoder=encoder, missing_ok=True) == (None, encoder)
    with pytest.raises(LatentGuardError, match=r"^no embedding store for encoder .* under .*prepare.py"):
        open_configured_store(cfg)  # nothing prepared: refused without loading any encoder
    store, _ = open_configured_store(cfg, encoder=encoder, create=True)
    store.add(TEXTS, encoder.encode(TEXTS))
    corrupt_line(store.index_file, 3)
    with pytest.raises(LatentGuardError, match="index.jsonl: line 3 is not a JSON string"):
        open_configured_store(cfg, encoder=encoder, missing_ok=True)


def test_index_lines_without_data_rows_are_refused_and_repair_keeps_the_intact_prefix(tmp_path):
    store = fake_store(tmp_path / "s")
    with open(store.data_file, "rb+") as handle:  # lose the last 3 rows and a half
        handle.truncate(store.data_file.stat().st_size - 3 * store.row_bytes - store.row_bytes // 2)
    before = snapshot(store.path)
    with pytest.raises(LatentGuardError, match=f"line {len(TEXTS) - 3} has no data row"):
        EmbeddingStore(store.path)
    with pytest.raises(LatentGuardError, match="has no data row"):
        store.add(["new"], FakeEncoder().encode(["new"]))  # a writer does not cut it either
    assert snapshot(store.path) == before
    said = repair_store(store.path)
    assert f"kept the intact first {len(TEXTS) - 4} of {len(TEXTS)} lines" in said
    kept = EmbeddingStore(store.path)
    assert kept.texts() == TEXTS[:-4] and kept.data_file.stat().st_size == len(kept) * kept.row_bytes
    assert torch.equal(kept.get(TEXTS[:-4]), fp16(FakeEncoder().encode(TEXTS[:-4])))


@pytest.mark.parametrize("garbage, what", [(b"\xff", "non-finite values"), (b"\x00", "only zero bytes")])
def test_garbage_rows_are_refused_when_read_and_dropped_by_repair(tmp_path, garbage, what):
    store = fake_store(tmp_path / "s")
    row = store.row(TEXTS[7])
    with open(store.data_file, "rb+") as handle:
        handle.seek(row * store.row_bytes)
        handle.write(garbage * store.row_bytes)
    reader = EmbeddingStore(store.path)
    assert torch.equal(reader.get(TEXTS[:5]), fp16(FakeEncoder().encode(TEXTS[:5])))  # other rows still read
    with pytest.raises(LatentGuardError, match=f"row {row} \\(text '{TEXTS[7]}'\\) holds {what}.*--repair"):
        reader.get(TEXTS[3:12])
    assert f"dropped row(s) {row}" in repair_store(store.path)
    fixed = EmbeddingStore(store.path, identity="fake:h16", create=True)
    assert fixed.missing(TEXTS) == [TEXTS[7]]
    assert fixed.build(TEXTS, FakeEncoder(), progress=False) == 1
    assert torch.equal(EmbeddingStore(store.path).get(TEXTS), fp16(FakeEncoder().encode(TEXTS)))


# ---------------------------------------------------------------------------- two builders share the work
BUILDER = textwrap.dedent(
    """
    import sys
    sys.path[:0] = [{root!r}, {tests!r}]
    import test_store_contents as t
    from latentguard.store.store import EmbeddingStore
    texts = t.TEXTS + [f"shared {{i}}" for i in range(160)]
    store = EmbeddingStore(sys.argv[1], identity="fake:h16", hidden_size=16, create=True)
    print("ready", flush=True)
    sys.stdin.readline()  # both start together
    print(store.build(texts, t.FakeEncoder(delay=0.02), batch_size=8, progress=False), flush=True)
    """
)


def test_two_concurrent_builders_encode_each_text_once(tmp_path):
    script = tmp_path / "builder.py"
    script.write_text(BUILDER.format(root=str(ROOT), tests=str(ROOT / "tests")))
    EmbeddingStore(tmp_path / "s", identity="fake:h16", hidden_size=16, create=True)
    children = [subprocess.Popen([sys.executable, str(script), str(tmp_path / "s")], stdin=subprocess.PIPE,
                                 stdout=subprocess.PIPE, text=True) for _ in range(2)]
    for child in children:
        assert child.stdout.readline().strip() == "ready"
    for child in children:
        child.stdin.write("go\n")
        child.stdin.flush()
    counts = [int(child.communicate(timeout=120)[0].strip()) for child in children]
    everything = TEXTS + [f"shared {i}" for i in range(160)]
    assert sum(counts) == len(everything), counts  # shared: each text encoded once, not once per builder
    store = EmbeddingStore(tmp_path / "s")
    assert len(store) == len(everything)
    assert torch.equal(store.get(everything), fp16(FakeEncoder().encode(everything)))


@pytest.mark.parametrize("hidden", ["16", 0, None, True])
def test_a_malformed_hidden_size_in_meta_is_refused_in_one_line(tmp_path, hidden):
    import json

    store = fake_store(tmp_path / "s")
    meta = json.loads((store.path / "meta.json").read_text())
    (store.path / "meta.json").write_text(json.dumps({**meta, "hidden_size": hidden}))
    before = snapshot(store.path)
    with pytest.raises(LatentGuardError, match="malformed store metadata"):  # not a ValueError/ZeroDivisionError
        EmbeddingStore(store.path)
    assert snapshot(store.path) == before
