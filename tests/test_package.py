"""Import stays cheap, config errors are clear, and the CI script runs the README's test command."""
from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from latentguard.config import load_config
from latentguard.errors import LatentGuardError

ROOT = Path(__file__).resolve().parent.parent


def test_import_is_lightweight():
    code = "import sys, latentguard; print('torch' in sys.modules, 'transformers' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.split() == ["False", "False"]


def test_readme_test_command_is_what_ci_runs():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    command = re.search(r"^(python -m pytest[^\n`]*)$", readme, re.M).group(1).strip()
    assert command in ci.splitlines()


def test_default_config_has_the_paper_hyperparameters():
    cfg = load_config()
    assert cfg.train.batch_size == 64 and cfg.train.lr == pytest.approx(1e-3)
    assert cfg.train.weight_decay == pytest.approx(0.01) and cfg.train.epochs == 1001
    assert (cfg.model.num_heads, cfg.model.head_dim, cfg.model.out_dim) == (16, 32, 128)
    # "auto": the calibration saved beside the checkpoint, else 9.0131 for the released weights only
    from latentguard.decision.threshold import resolve_threshold
    from latentguard.errors import LatentGuardError

    assert cfg.inference.threshold == "auto"
    with pytest.raises(LatentGuardError, match="needs the checkpoint"):
        resolve_threshold(cfg.inference.threshold, None)


@pytest.mark.parametrize("text, match", [
    ("train: {lr: -1}\n", "train.lr"),
    ("train: {epochs: 0}\n", "train.epochs"),
    ("train: {batch_size: 2.5}\n", "train.batch_size"),
    ("trian: {lr: 1}\n", "unknown config key 'trian'"),
    ("train: [1, 2\n", "not valid YAML"),
    ("encoder: {dtype: float8}\n", "encoder.dtype"),
    ("inference: {threshold: strict}\n", "inference.threshold"),
    ("eval: {threshold: [1]}\n", "eval.threshold"),
])
def test_bad_config_values_are_named(tmp_path, text, match):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(LatentGuardError, match=re.escape(match)):
        load_config(path)


def test_overrides_apply_and_are_checked():
    assert load_config(overrides={"train.lr": 0.5}).train.lr == 0.5
    with pytest.raises(LatentGuardError, match="unknown config key"):
        load_config(overrides={"train.nope": 1})


def test_the_tree_passes_ruff():
    """The style configuration in pyproject.toml (line length 120, imports sorted) holds for the whole tree."""
    ruff = shutil.which("ruff")
    if ruff is None:
        pytest.skip("ruff is not installed (it is in the test extra)")
    done = subprocess.run([ruff, "check", "--no-cache", "."], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
