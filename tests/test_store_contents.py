"""The embedding store: exact contents, dedup, refusal to mix encoders, and crash safety.

Crash safety is tested for real: child processes building a store are SIGKILLed (by the parent at
arbitrary moments, and by themselves at the two delicate points of a write), then the store is
reopened, checked and resumed, and must equal direct encoding.
"""
from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from latentguard.errors import LatentGuardError
from latentguard.store import store as cache_mod
from latentguard.store.locate import encoder_request_key, open_store_for, recall_identity, remember_identity, store_path
from latentguard.store.store import EmbeddingStore

ROOT = Path(__file__).resolve().parent.parent
TEXTS = [f"a photo of item {i} with a knife" for i in range(37)] + ["knife", "blood", "Ünïcode ✓", "two\nlines"]


class FakeEncoder:
    """Deterministic per-text embeddings (seeded by the text), optionally slow: no model needed."""

    def __init__(self, hidden_size: int = 16, identity: str = "fake:h16", delay: float = 0.0,
                 interrupt_after: int | None = None) -> None:
        self.hidden_size, self.identity, self.name = hidden_size, identity, identity
        self.delay, self.interrupt_after, self.calls = delay, interrupt_after, 0

    def one(self, text: str) -> torch.Tensor:
        seed = int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little")
        return torch.randn(78, self.hidden_size, generator=torch.Generator().manual_seed(seed))

    def encode(self, texts, batch_size: int = 64) -> torch.Tensor:
        self.calls += 1
        if self.interrupt_after is not None and self.calls > self.interrupt_after:
            raise KeyboardInterrupt  # what Ctrl-C does in the middle of a build
        if self.delay:
            time.sleep(self.delay)
        return torch.stack([self.one(t) for t in texts])


def fp16(x: torch.Tensor) -> torch.Tensor:
    return x.to(torch.float16).to(torch.float32)


def snapshot(path: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(path.iterdir()) if p.is_file()}


def assert_consistent(path: Path, encoder: FakeEncoder) -> EmbeddingStore:
    """Reopen ``path`` as a reader (which changes no byte), then as a writer, which drops what a crash
    left; then files agree with the committed count and every stored row is right."""
    before = snapshot(path)
    reader = EmbeddingStore(path, identity=encoder.identity)
    if reader.texts():
        reader.get(reader.texts())
    assert snapshot(path) == before  # readers never modify
    store = EmbeddingStore(path, identity=encoder.identity, create=True)
    store.add([], np.empty((0, 78, store.hidden_size), dtype=np.float32))  # a writer repairs a crash's leftovers
    assert len(store) == len(reader)
    assert (store.data_file.stat().st_size == len(store) * store.row_bytes if store.data_file.exists()
            else len(store) == 0)
    lines = store.index_file.read_bytes().split(b"\n") if store.index_file.exists() else [b""]
    assert lines[-1] == b"" and len(lines) - 1 == len(store)  # no torn line left after repair
    texts = store.texts()
    if texts:
        expected = torch.stack([encoder.one(t) for t in texts])
        assert torch.equal(store.get(texts), fp16(expected))
    return store


# ---------------------------------------------------------------------------- contents
@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_store_equals_direct_encoding(tmp_path, tiny_encoder, dtype):
    store = open_store_for(tmp_path, tiny_encoder, dtype=dtype, create=True)
    assert store.build(TEXTS, tiny_encoder, batch_size=8, progress=False) == len(TEXTS)
    direct = tiny_encoder.encode(TEXTS)
    query = TEXTS[::-1] + TEXTS[:3]  # any order, repeats allowed
    got = store.get(query)
    assert got.dtype == torch.float32 and got.shape == (len(query), 78, 768) and got.device.type == "cpu"
    expected = torch.cat([direct.flip(0), direct[:3]])
    if dtype == "float32":
        assert torch.equal(got, expected)
    else:
        assert torch.equal(got, fp16(expected))  # exactly the fp16 rounding, nothing worse
    reopened = EmbeddingStore(store.path)
    assert len(reopened) == len(TEXTS) and reopened.dtype == dtype and reopened.identity == tiny_encoder.identity
    assert torch.equal(reopened.get(query), got)
    assert torch.equal(torch.from_numpy(np.array(reopened.memmap()[reopened.row("knife")], dtype=np.float32)),
                       got[query.index("knife")])


def test_store_path_is_readable_and_distinct(tiny_encoder, tiny_encoder_other, tmp_path):
    a, b = store_path(tmp_path, tiny_encoder.identity), store_path(tmp_path, tiny_encoder_other.identity)
    assert a != b and a.parent == tmp_path and a.name.startswith("clip-")
    assert a == store_path(tmp_path, tiny_encoder.identity)
    assert open_store_for(tmp_path, tiny_encoder_other, create=True).path == b


def test_dedup_within_and_across_batches(tmp_path):
    enc = FakeEncoder()
    store = EmbeddingStore(tmp_path / "s", identity=enc.identity, hidden_size=16, create=True)
    store.add(["a", "b", "a"], enc.encode(["a", "b", "a"]))
    assert len(store) == 2
    store.add(["b", "c"], enc.encode(["b", "c"]))
    assert len(store) == 3 and store.texts() == ["a", "b", "c"]
    assert store.missing(["c", "d", "d", "e"]) == ["d", "e"]
    assert "c" in store and "d" not in store
    assert store.build(["a", "d", "d"], enc, progress=False) == 1 and len(store) == 4
    assert store.build(["a", "d"], enc, progress=False) == 0


def test_missing_text_error_names_it_and_points_to_prepare(tmp_path):
    enc = FakeEncoder()
    store = EmbeddingStore(tmp_path / "s", identity=enc.identity, hidden_size=16, create=True)
    store.add(["a"], enc.encode(["a"]))
    with pytest.raises(LatentGuardError, match=r"2 text\(s\) missing .*'zebra', 'yak'.*prepare\.py"):
        store.get(["a", "zebra", "yak", "zebra"])


def test_a_second_store_object_sees_new_rows(tmp_path):
    enc = FakeEncoder()
    writer = EmbeddingStore(tmp_path / "s", identity=enc.identity, hidden_size=16, create=True)
    reader = EmbeddingStore(tmp_path / "s")
    writer.add(["late"], enc.encode(["late"]))
    assert torch.equal(reader.get(["late"]), fp16(enc.one("late"))[None])


# ---------------------------------------------------------------------------- refusals
def test_refuses_to_mix_encoders(tmp_path, tiny_encoder, tiny_encoder_other):
    store = open_store_for(tmp_path, tiny_encoder, create=True)
    store.build(TEXTS[:4], tiny_encoder, progress=False)
    with pytest.raises(LatentGuardError, match="was built with encoder .* not .*another --store-dir or rebuild"):
        EmbeddingStore(store.path, identity=tiny_encoder_other.identity)
    with pytest.raises(LatentGuardError, match="was built with encoder"):
        store.build(TEXTS, tiny_encoder_other, progress=False)
    assert len(EmbeddingStore(store.path)) == 4


def test_other_refusals(tmp_path):
    with pytest.raises(LatentGuardError, match="no embedding store at .*prepare.py"):
        EmbeddingStore(tmp_path / "absent")
    store = EmbeddingStore(tmp_path / "s", identity="x", hidden_size=16, create=True)
    with pytest.raises(LatentGuardError, match="holds float16 embeddings, not float32"):
        EmbeddingStore(store.path, identity="x", hidden_size=16, dtype="float32", create=True)
    assert EmbeddingStore(store.path, dtype="float32").dtype == "float16"  # readers take what is there
    with pytest.raises(LatentGuardError, match="hidden size 16, not 32"):
        EmbeddingStore(store.path, hidden_size=32)
    with pytest.raises(LatentGuardError, match="shape"):
        store.add(["a"], torch.zeros(1, 77, 16))
    with pytest.raises(LatentGuardError, match="overflow float16"):
        store.add(["a"], torch.full((1, 78, 16), 1e6))
    with pytest.raises(LatentGuardError, match="float16 or float32"):
        EmbeddingStore(tmp_path / "t", identity="x", hidden_size=16, dtype="int8", create=True)
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "notes.txt").write_text("mine")
    with pytest.raises(LatentGuardError, match="is not an embedding store"):
        EmbeddingStore(tmp_path / "junk", identity="x", hidden_size=16, create=True)
    (store.path / "meta.json").write_text("{}")
    with pytest.raises(LatentGuardError, match="not a latentguard embedding store"):
        EmbeddingStore(store.path)


# ---------------------------------------------------------------------------- crash safety in-process
def test_resume_after_ctrl_c(tmp_path):
    path = tmp_path / "s"
    store = EmbeddingStore(path, identity="fake:h16", hidden_size=16, create=True)
    with pytest.raises(KeyboardInterrupt):
        store.build(TEXTS, FakeEncoder(interrupt_after=2), batch_size=5, progress=False)
    assert len(store) == 10
    resumed = assert_consistent(path, FakeEncoder())
    enc = FakeEncoder()
    assert resumed.build(TEXTS, enc, batch_size=5, progress=False) == len(TEXTS) - 10
    assert enc.calls == -(-(len(TEXTS) - 10) // 5)  # only the missing texts were encoded
    final = assert_consistent(path, enc)
    assert torch.equal(final.get(TEXTS), fp16(FakeEncoder().encode(TEXTS)))


def test_interrupt_between_data_and_index_is_ignored_then_repaired(tmp_path, monkeypatch):
    enc = FakeEncoder()
    store = EmbeddingStore(tmp_path / "s", identity=enc.identity, hidden_size=16, create=True)
    store.add(TEXTS[:3], enc.encode(TEXTS[:3]))
    real_append = cache_mod._append

    def data_then_interrupt(file, payload, size):
        real_append(file, payload, size)
        if file.suffix == ".f16":
            raise KeyboardInterrupt

    monkeypatch.setattr(cache_mod, "_append", data_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        store.add(TEXTS[3:6], enc.encode(TEXTS[3:6]))
    monkeypatch.setattr(cache_mod, "_append", real_append)
    assert store.data_file.stat().st_size == 6 * store.row_bytes  # orphan rows on disk ...
    reopened = assert_consistent(store.path, enc)  # ... ignored and truncated on open
    assert len(reopened) == 3
    store.add(TEXTS[3:6], enc.encode(TEXTS[3:6]))  # the interrupted object itself recovers too
    assert torch.equal(assert_consistent(store.path, enc).get(TEXTS[:6]), fp16(enc.encode(TEXTS[:6])))


def test_torn_index_line_and_orphan_rows_are_dropped(tmp_path):
    enc = FakeEncoder()
    store = EmbeddingStore(tmp_path / "s", identity=enc.identity, hidden_size=16, create=True)
    store.add(TEXTS[:4], enc.encode(TEXTS[:4]))
    with open(store.data_file, "ab") as f:
        f.write(b"\x01" * (store.row_bytes - 1))  # part of a row
    with open(store.index_file, "ab") as f:
        f.write(b'"half a li')
    reopened = assert_consistent(store.path, enc)
    assert len(reopened) == 4  # the torn line and the partial row are what a crash leaves: dropped
    assert reopened.build(TEXTS[:8], enc, progress=False) == 4
    assert_consistent(store.path, enc)


# ---------------------------------------------------------------------------- crash safety: real kill -9
CHILD = textwrap.dedent(
    """
    import sys, time
    sys.path[:0] = [{root!r}, {tests!r}]
    import test_store_contents as t
    from latentguard.store import store as cache
    from latentguard.store.store import EmbeddingStore
    path, mode, extra = sys.argv[1], sys.argv[2], int(sys.argv[3])
    if mode != "run":  # die by SIGKILL at a precise point of a write
        real = cache._append
        def dying(file, payload, size):
            if file.name.startswith("index") and len(t.EmbeddingStore(path)) >= 6:
                if mode == "after-data":
                    import os, signal; os.kill(os.getpid(), signal.SIGKILL)
                real(file, payload[: len(payload) // 2 + 1], size)  # a torn index write
                import os, signal; os.kill(os.getpid(), signal.SIGKILL)
            real(file, payload, size)
        cache._append = dying
    store = EmbeddingStore(path, identity="fake:h16", hidden_size=16, create=True)
    print("started", flush=True)
    store.build(t.TEXTS + [f"extra {{i}}" for i in range(extra)], t.FakeEncoder(delay=0.002), batch_size=3, progress=False)
    print("finished", flush=True)
    """  # noqa: E501 (a line of the child script: the string's text must stay as it is)
)


def run_child(tmp_path: Path, mode: str, extra: int = 400) -> subprocess.Popen:
    script = tmp_path / "child.py"
    script.write_text(CHILD.format(root=str(ROOT), tests=str(ROOT / "tests")))
    return subprocess.Popen([sys.executable, str(script), str(tmp_path / "store"), mode, str(extra)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


ALL = TEXTS + [f"extra {i}" for i in range(400)]


def committed_lines(store_dir: Path) -> int:
    index = store_dir / "index.jsonl"
    return index.read_bytes().count(b"\n") if index.exists() else 0


@pytest.mark.parametrize("mode", ["after-data", "torn-index"])
def test_sigkill_inside_a_write_leaves_a_store_that_resumes(tmp_path, mode):
    child = run_child(tmp_path, mode)
    child.communicate(timeout=60)
    assert child.returncode == -signal.SIGKILL
    store = assert_consistent(tmp_path / "store", FakeEncoder())
    # after-data: the batch's rows were on disk but not committed; torn-index: the complete lines of
    # the half-written index (their rows are all on disk) count, the torn one does not
    assert len(store) == 6 if mode == "after-data" else 6 < len(store) < 9
    done = len(store)
    assert store.build(ALL, FakeEncoder(), batch_size=50, progress=False) == len(ALL) - done
    assert torch.equal(assert_consistent(tmp_path / "store", FakeEncoder()).get(ALL), fp16(FakeEncoder().encode(ALL)))


def test_sigkill_at_arbitrary_moments_then_resume(tmp_path):
    """Kill the builder mid-flight, several times, at moments that fall anywhere in a batch."""
    store_dir = tmp_path / "store"
    every = TEXTS + [f"extra {i}" for i in range(3000)]
    rng = np.random.default_rng(0)
    counts = [0]
    for _ in range(4):
        child = run_child(tmp_path, "run", extra=3000)
        assert child.stdout.readline().strip() == "started"
        deadline = time.monotonic() + 30
        while committed_lines(store_dir) < counts[-1] + 30 and time.monotonic() < deadline:
            time.sleep(0.001)
        time.sleep(float(rng.uniform(0, 0.006)))  # somewhere inside a batch: encode, data or index write
        os.kill(child.pid, signal.SIGKILL)
        child.communicate(timeout=30)
        assert child.returncode == -signal.SIGKILL
        counts.append(len(assert_consistent(store_dir, FakeEncoder())))
    assert counts == sorted(set(counts)) and counts[-1] < len(every)  # progress is kept across kills
    store = EmbeddingStore(store_dir, identity="fake:h16")
    assert store.build(every, FakeEncoder(), batch_size=256, progress=False) == len(every) - counts[-1]
    final = assert_consistent(store_dir, FakeEncoder())
    assert len(final) == len(every) and torch.equal(final.get(every), fp16(FakeEncoder().encode(every)))


# ---------------------------------------------------------------------------- identity hints
def test_identity_hints_follow_the_encoder_files(tmp_path, tiny_encoder_dir):
    key = encoder_request_key(str(tiny_encoder_dir))
    assert key is not None and key == encoder_request_key(str(tiny_encoder_dir), "auto", "float32", False)
    assert key != encoder_request_key(str(tiny_encoder_dir), attention_mask=True)
    assert encoder_request_key(str(tmp_path / "nowhere")) is None
    assert recall_identity(tmp_path, key) is None
    remember_identity(tmp_path, key, "clip:x")
    assert recall_identity(tmp_path, key) == "clip:x"
    (tmp_path / "model").mkdir()
    weights = tmp_path / "model" / "model.safetensors"
    weights.write_bytes(b"1")
    before = encoder_request_key(str(tmp_path / "model"))
    weights.write_bytes(b"22")
    assert encoder_request_key(str(tmp_path / "model")) != before
