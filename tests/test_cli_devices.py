"""A device this machine cannot use is refused in one line before anything is loaded or claimed.

torch accepts every device type it knows by name (``meta``, ``mps``, ``xpu``, ``hpu``...), present or not, and the
commands then failed deep in the load with a traceback (exit 1); ``score`` left its claimed output directory (lock
and manifest) behind, since only three kinds of error released it (a hostile review). Real processes for the
three commands; the CUDA count and the release of claims after any fault in-process.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from test_store_damage import one_line_error

from latentguard.encoders.precision import resolve_device
from latentguard.errors import LatentGuardError

ROOT = Path(__file__).resolve().parent.parent


def _run(tmp_path: Path, *argv: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "LATENTGUARD_HOME": str(tmp_path / "home"), "HF_HUB_OFFLINE": "1",
           "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, *argv], capture_output=True, text=True, cwd=tmp_path, env=env, timeout=240)


@pytest.fixture
def prompts(tmp_path) -> Path:
    path = tmp_path / "p.txt"
    path.write_text("a cat on a sofa\na man stabbing another man\n", encoding="utf-8")
    return path


@pytest.mark.parametrize("device", ["meta", "mps", "xpu", "hpu"])
def test_resolve_device_refuses_a_device_this_machine_lacks_naming_what_it_has(device):
    from latentguard.encoders.precision import available_devices

    if device != "meta" and device in {d.split(":")[0] for d in available_devices()}:
        pytest.skip(f"this machine has {device}")
    with pytest.raises(LatentGuardError, match=f"device '{device}' cannot be used here .*available here: cpu"):
        resolve_device(device)
    assert resolve_device("cpu") == torch.device("cpu")


def test_a_cuda_index_beyond_the_device_count_is_refused(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert resolve_device("cuda:1") == torch.device("cuda:1")
    with pytest.raises(LatentGuardError, match=r"'cuda:2' cannot be used here \(cuda device 2 requested, but there "
                                               r"are 2\); available here: cpu, cuda:0, cuda:1"):
        resolve_device("cuda:2")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(LatentGuardError, match="no CUDA device"):
        resolve_device("cuda")


def test_inference_on_a_meta_device_is_one_line_and_exit_2(tmp_path, prompts):
    done = _run(tmp_path, str(ROOT / "inference.py"), "--guard", "mini", "--file_path", str(prompts),
                "--device", "meta")
    one_line_error(done, "device 'meta' cannot be used here", "available here: cpu")


def test_score_on_a_missing_device_leaves_no_directory_and_no_lock(tmp_path, prompts):
    out = tmp_path / "out"
    done = _run(tmp_path, "-m", "latentguard", "score", str(prompts), "--guard", "mini", "--output", str(out),
                "--device", "xpu")
    one_line_error(done, "device 'xpu' cannot be used here", "available here: cpu")
    assert not out.exists()  # was: .latentguard-outputs.json and .latentguard-run.lock left behind


def test_serve_on_a_missing_device_is_refused_at_start(tmp_path):
    done = _run(tmp_path, "-m", "latentguard", "serve", "--guard", "mini", "--device", "mps", "--port", "0")
    one_line_error(done, "device 'mps' cannot be used here", "available here: cpu")


def test_any_fault_after_claiming_releases_the_directory(tmp_path):
    """Only LatentGuardError, OSError and Ctrl-C had released a claimed directory; a fault is still raised as it is
    (a bug keeps its traceback), but the lock and manifest of a run that wrote nothing are gone."""
    from latentguard.cli.common import cli_entry
    from latentguard.cli.rundir import claim_run_dir

    out = tmp_path / "claimed"

    @cli_entry
    def faulty(argv=None):
        claim_run_dir(out, "score")
        assert out.is_dir()
        raise RuntimeError("a fault in torch")

    with pytest.raises(RuntimeError, match="a fault in torch"):
        faulty()
    assert not out.exists()
