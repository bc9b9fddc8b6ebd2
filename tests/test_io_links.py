"""No command writes through a symbolic link or into a FIFO/device planted in an output
directory: ``ln -s ~/precious.txt out/.latentguard-run.lock`` used to leave precious.txt empty. Every place that
opens a file by name for writing in an output directory refuses in one line: the run lock (latentguard score,
main.py, test.py, latentguard benchmark), the run record, the store's lock and files (prepare.py), the dedup
database and its journals, the training log, the server's audit log. Atomic writes rename a new file over
the name, which never follows a link."""
from __future__ import annotations

import os

import pytest
from test_store_damage import one_line_error, run

from latentguard.cli.rundir import OUTPUTS, RUN_LOCK
from latentguard.errors import LatentGuardError

PRECIOUS = b"my precious notes\n"


@pytest.fixture
def precious(tmp_path):
    path = tmp_path / "precious.txt"
    path.write_bytes(PRECIOUS)
    return path


def _linked_dir(tmp_path, precious, name: str = RUN_LOCK):
    out = tmp_path / "out"
    out.mkdir(exist_ok=True)
    (out / name).symlink_to(precious)
    return out


def test_latentguard_score_refuses_a_linked_run_lock(tmp_path, precious, tiny_encoder_dir, capsys):
    from test_bulk_local import checkpoint

    from latentguard.cli.score import main as score

    checkpoint(tmp_path / "ckpt.pth")
    (tmp_path / "p.txt").write_text("a knife\na cake\n", encoding="utf-8")
    out = _linked_dir(tmp_path, precious)
    argv = [str(tmp_path / "p.txt"), "--output", str(out), "--no-progress", "--checkpoint", str(tmp_path / "ckpt.pth"),
            "--encoder", str(tiny_encoder_dir), "--concepts", str(tmp_path / "p.txt"), "--threshold", "0",
            "--device", "cpu"]
    assert score(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "is a symbolic link" in err and RUN_LOCK in err
    assert precious.read_bytes() == PRECIOUS and (out / RUN_LOCK).is_symlink()
    done = tmp_path / "done"
    argv[argv.index(str(out))] = str(done)
    assert score(argv) == 0  # a finished run: rerunning it reopens its dedup database
    capsys.readouterr()
    for end in ("-wal", "-shm", "-journal"):
        (done / f"_dedup.sqlite{end}").unlink(missing_ok=True)
    (done / "_dedup.sqlite-wal").symlink_to(precious)  # a journal SQLite would open by name
    assert score(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "_dedup.sqlite-wal is a symbolic link" in err, err
    assert precious.read_bytes() == PRECIOUS


@pytest.mark.parametrize("script", ["main.py", "test.py"])
def test_main_and_test_refuse_a_linked_run_lock(tmp_path, precious, script, tiny_encoder_dir):
    from synthetic import make_synthetic_copro

    dataset = make_synthetic_copro(tmp_path / "small.json", n_id=2, n_ood=1, train_per_concept=2, test_per_concept=1)
    out = _linked_dir(tmp_path, precious)
    if script == "main.py":
        extra = ["--no-store", "--epochs", "1", "--no-progress"]
    else:
        from test_bulk_local import checkpoint

        checkpoint(tmp_path / "ckpt.pth")
        (tmp_path / "ext.csv").write_text("prompt,label\na knife,1\na cake,0\n", encoding="utf-8")
        extra = ["--checkpoint", str(tmp_path / "ckpt.pth"), "--threshold", "0", "--external",
                 str(tmp_path / "ext.csv"), "--store-dir", str(tmp_path / "stores"), "--no-progress"]
    done = run(script, "--output-dir", str(out), "--dataset", str(dataset), "--encoder", str(tiny_encoder_dir),
               "--device", "cpu", *extra)
    one_line_error(done, "is a symbolic link")
    assert precious.read_bytes() == PRECIOUS


def test_benchmark_refuses_a_linked_run_lock(tmp_path, precious, tiny_encoder_dir, capsys):
    from test_bulk_local import checkpoint
    from test_store_damage import ROOT

    from latentguard.cli.benchmark import main

    checkpoint(tmp_path / "ckpt.pth")
    (tmp_path / "concepts.txt").write_text("knife\nblood\n", encoding="utf-8")
    samples = ROOT / "tests" / "fixtures" / "benchmarks"
    out = _linked_dir(tmp_path, precious)
    assert main(["--encoder", str(tiny_encoder_dir), "--checkpoint", str(tmp_path / "ckpt.pth"), "--concepts",
                 str(tmp_path / "concepts.txt"), "--device", "cpu", "--threshold", "0", "--suite", "i2p",
                 "--set", f"i2p={samples / 'i2p_sample.csv'}", "--set", f"coco={samples / 'coco_30k_sample.csv'}",
                 "--max-prompts", "4", "--output-dir", str(out), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "is a symbolic link" in err, err
    assert precious.read_bytes() == PRECIOUS


@pytest.mark.parametrize("name", [RUN_LOCK, OUTPUTS])
def test_the_run_directory_claim_refuses_links_and_fifos(tmp_path, precious, name):
    from latentguard.cli.rundir import claim_run_dir

    out = _linked_dir(tmp_path, precious, name)
    with pytest.raises(LatentGuardError, match="is a symbolic link"):
        claim_run_dir(out, "latentguard score")
    assert precious.read_bytes() == PRECIOUS
    fifo_dir = tmp_path / "fifo"
    fifo_dir.mkdir()
    os.mkfifo(fifo_dir / name)
    with pytest.raises(LatentGuardError, match="not a regular file"):
        claim_run_dir(fifo_dir, "latentguard score")  # and it does not hang opening it


def test_a_store_refuses_a_linked_lock_and_data_file(tmp_path, precious):
    from latentguard.store.store import EmbeddingStore

    store_dir = tmp_path / "store"
    store_dir.mkdir()
    (store_dir / ".lock").symlink_to(precious)
    with pytest.raises(LatentGuardError, match="is a symbolic link"):
        store = EmbeddingStore(store_dir, identity="fake:h4", hidden_size=4, create=True)
        store.add(["a"], __import__("numpy").zeros((1, 78, 4), dtype="float32"))
    assert precious.read_bytes() == PRECIOUS


def test_the_training_log_is_never_written_through_a_link(tmp_path, precious):
    from latentguard.io import open_regular

    (tmp_path / "train_log.jsonl").symlink_to(precious)
    with pytest.raises(LatentGuardError, match="training log .* is a symbolic link"):
        open_regular(tmp_path / "train_log.jsonl", os.O_WRONLY | os.O_APPEND | os.O_CREAT, "training log")
    assert precious.read_bytes() == PRECIOUS


def test_the_audit_log_is_never_appended_through_a_link(tmp_path, precious):
    from latentguard.serve.audit import Auditor

    link = tmp_path / "audit.jsonl"
    link.symlink_to(precious)
    with pytest.raises(LatentGuardError):
        Auditor(link)
    empty = tmp_path / "empty.jsonl"
    empty.write_bytes(b"")
    target = tmp_path / "link-to-empty.jsonl"
    target.symlink_to(empty)
    with pytest.raises(LatentGuardError, match="is a symbolic link"):
        Auditor(target)
    fifo = tmp_path / "audit.fifo"
    os.mkfifo(fifo)
    with pytest.raises(LatentGuardError, match="not a regular file"):
        Auditor(fifo)
    assert precious.read_bytes() == PRECIOUS


# ---------------------------------------------------------- a full disk while the dedup database is made
def test_a_full_disk_making_the_dedup_database_is_one_line_and_leaves_no_run(tmp_path, tiny_encoder_dir, capsys,
                                                                              monkeypatch):
    import sqlite3

    from test_bulk_local import checkpoint

    import latentguard.bulk.dedup as dedup
    from latentguard.cli.score import main as score

    real = sqlite3.connect

    def full_disk(path, *args, **kwargs):
        db = real(path, *args, **kwargs)  # the file appears, then the disk is full on the first write
        db.close()
        raise sqlite3.OperationalError("database or disk is full")

    monkeypatch.setattr(dedup.sqlite3, "connect", full_disk)
    checkpoint(tmp_path / "ckpt.pth")
    (tmp_path / "p.txt").write_text("a knife\na cake\n", encoding="utf-8")
    out = tmp_path / "out"
    argv = [str(tmp_path / "p.txt"), "--output", str(out), "--no-progress", "--checkpoint", str(tmp_path / "ckpt.pth"),
            "--encoder", str(tiny_encoder_dir), "--concepts", str(tmp_path / "p.txt"), "--threshold", "0",
            "--device", "cpu"]
    assert score(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cannot create the dedup database" in err and "disk is full" in err, err
    assert not out.exists()  # the command made the directory: nothing of it is left
    monkeypatch.setattr(dedup.sqlite3, "connect", real)
    assert score(argv) == 0  # and the same command then runs
