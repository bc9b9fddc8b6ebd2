"""Typed config: every key's type and range is checked once at load, with a one-line error naming the key."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from latentguard.config import Config, load_config
from latentguard.errors import LatentGuardError

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("text, key", [
    ('encoder: {attention_mask: "no"}\n', "encoder.attention_mask"),  # a string, not a boolean
    ('encoder: {long_prompts: "yes"}\n', "encoder.long_prompts"),
    ("inference: {concepts: 5}\n", "inference.concepts"),
    ("inference: {allowlist: [a, b]}\n", "inference.allowlist"),
    ("train: {weight_decay: .nan}\n", "train.weight_decay"),
    ("train: {lr: .inf}\n", "train.lr"),
    ("train: {no_store: 1}\n", "train.no_store"),
    ("data: {valid_size: -1}\n", "data.valid_size"),
    ("calibration: {target_fpr: 1.5}\n", "calibration.target_fpr"),
    ("encoder: {window_stride: 0}\n", "encoder.window_stride"),
    ("eval: {baselines: 3}\n", "eval.baselines"),
    ("dataset: 7\n", "dataset"),
    ('train: {keep_best: "yes"}\n', "train.keep_best"),
    ("eval: {blacklist_match: regex}\n", "eval.blacklist_match"),
])
def test_bad_values_are_refused_naming_the_key(tmp_path, text, key):
    path = tmp_path / "bad.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(LatentGuardError, match=re.escape(f"'{key}'")) as caught:
        load_config(path)
    assert str(path) in str(caught.value) and "\n" not in str(caught.value)


def test_yaml_booleans_and_the_defaults_pass_and_are_typed(tmp_path):
    path = tmp_path / "ok.yaml"
    path.write_text("encoder: {attention_mask: no, long_prompts: true}\ninference: {allowlist: allow.txt}\n")
    cfg = load_config(path)
    assert cfg.encoder.attention_mask is False and cfg.encoder.long_prompts is True
    typed = Config.from_mapping(cfg.to_dict())
    assert typed == cfg and typed.encoder.long_prompts is True and typed.inference.allowlist == "allow.txt"
    assert typed.train.lr == pytest.approx(1e-3) and typed.model.num_heads == 16


def test_a_non_utf8_config_is_a_one_line_error(tmp_path):
    path = tmp_path / "latin1.yaml"
    path.write_bytes("train:\n  lr: 0.001  # d\xe9faut\n".encode("latin-1"))
    with pytest.raises(LatentGuardError, match="not valid UTF-8") as caught:
        load_config(path)
    assert str(path) in str(caught.value)


def _run(script: str, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, str(ROOT / script), *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("script, content", [
    ("inference.py", b'encoder:\n  attention_mask: "no"\n'),
    ("main.py", b"train:\n  weight_decay: .nan\n"),
    ("test.py", b"inference:\n  concepts: 5\n"),
    ("prepare.py", "train:\n  lr: 0.001  # d\xe9faut\n".encode("latin-1")),
])
def test_the_real_clis_refuse_a_bad_config_in_one_line(tmp_path, script, content):
    config = tmp_path / "bad.yaml"
    config.write_bytes(content)
    args = ["--file_path", str(tmp_path / "none.txt")] if script == "inference.py" else []
    done = _run(script, "--config", str(config), *args)
    assert done.returncode == 2, done.stdout + done.stderr
    assert "Traceback" not in done.stderr and done.stderr.count("\n") == 1
    assert done.stderr.startswith("error: ") and str(config) in done.stderr


def test_the_cli_dispatcher_lists_the_commands_and_runs_one(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    listing = subprocess.run([sys.executable, "-m", "latentguard.cli", "--help"], cwd=tmp_path, env=env,
                             capture_output=True, text=True, timeout=120)
    assert listing.returncode == 0 and "prepare,train,evaluate,infer" in listing.stdout
    config = tmp_path / "bad.yaml"
    config.write_text("train: {epochs: 0}\n")
    done = subprocess.run([sys.executable, "-m", "latentguard.cli", "train", "--config", str(config)], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "'train.epochs'" in done.stderr and done.stderr.count("\n") == 1


# ------------------------------------------------------------------------------ one schema
def test_the_shipped_yaml_and_the_schema_defaults_agree():
    """default.yaml is the schema's defaults written out: same keys, same values, same order."""
    from latentguard.config import DEFAULT_YAML
    from latentguard.yaml_files import read_yaml

    shipped, schema = read_yaml(DEFAULT_YAML), Config().to_dict()
    assert shipped == schema
    assert list(shipped) == list(schema) and all(list(shipped[k]) == list(schema[k])
                                                 for k in schema if isinstance(schema[k], dict))
    assert load_config().train.lr == 1e-3 and load_config(DEFAULT_YAML) == Config()


@pytest.mark.parametrize("name", sorted(p.name for p in (ROOT / "configs").glob("*.yaml")))
def test_every_example_config_loads(name):
    assert load_config(ROOT / "configs" / name) != Config()


def test_renamed_keys_and_flags_are_still_read_with_a_note(tmp_path, capsys):
    path = tmp_path / "old.yaml"
    path.write_text("cache_dir: /data/stores\ntrain: {no_cache: true}\n", encoding="utf-8")
    cfg = load_config(path)
    assert cfg.store_dir == "/data/stores" and cfg.train.no_store is True
    err = capsys.readouterr().err
    assert "'cache_dir' is now 'store_dir'" in err and "'train.no_cache' is now 'train.no_store'" in err
    from latentguard.cli.prepare import build_parser

    args = build_parser().parse_args(["--cache-dir", "/data/x"])
    assert args.store_dir == "/data/x" and "--cache-dir is now --store-dir" in capsys.readouterr().err


def test_a_section_cannot_be_set_as_a_value_and_a_duplicate_key_is_refused(tmp_path):
    with pytest.raises(LatentGuardError, match="'train' is a section"):
        load_config(overrides={"train": 3})
    path = tmp_path / "twice.yaml"
    path.write_text("train:\n  lr: 0.001\n  lr: 1000\n", encoding="utf-8")
    with pytest.raises(LatentGuardError, match=r"line 3.*'lr' given twice") as caught:
        load_config(path)
    assert "\n" not in str(caught.value)
