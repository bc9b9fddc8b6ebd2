"""User mistakes found in an end-to-end review: each must end in one line on stderr and exit code 2."""
from __future__ import annotations

import os
import stat

import pytest

from latentguard.cli.common import RESUMABLE, cli_entry
from latentguard.errors import LatentGuardError
from latentguard.io import atomic_write_text


def test_atomic_write_gives_files_the_umask_mode_not_0600(tmp_path):
    target = tmp_path / "results.json"
    atomic_write_text(target, "{}")
    mask = os.umask(0o022)
    os.umask(mask)
    assert stat.S_IMODE(target.stat().st_mode) == 0o666 & ~mask


def test_atomic_write_under_a_file_is_a_one_line_error(tmp_path):
    blocker = tmp_path / "notes.txt"
    blocker.write_text("x")
    with pytest.raises(LatentGuardError, match="is a file, not a directory"):
        atomic_write_text(blocker / "run" / "config.yaml", "a: 1\n")
    (tmp_path / "adir").mkdir()
    with pytest.raises(LatentGuardError, match="it is a directory"):
        atomic_write_text(tmp_path / "adir", "x")


def test_cli_entry_turns_os_errors_and_interrupts_into_one_line(capsys):
    @cli_entry
    def broken(argv=None):
        raise PermissionError(13, "Permission denied", "/somewhere/out.csv")

    @cli_entry
    def stopped(argv=None):
        raise KeyboardInterrupt

    @cli_entry(on_interrupt=RESUMABLE)
    def resumable(argv=None):
        raise KeyboardInterrupt

    assert broken() == 2
    assert capsys.readouterr().err.strip() == "error: Permission denied: /somewhere/out.csv"
    assert stopped() == 130
    assert "resume" not in capsys.readouterr().err  # nothing to resume for inference/evaluation
    assert resumable() == 130
    assert "run the same command again to resume" in capsys.readouterr().err


def test_missing_local_encoder_directory_is_named(tmp_path):
    from latentguard.encoders import load_encoder

    with pytest.raises(LatentGuardError, match="cannot load text encoder .*nope.: no such directory"):
        load_encoder(str(tmp_path / "nope"))


def test_inference_output_that_is_a_directory_is_refused_before_work(tmp_path, capsys):
    import inference

    (tmp_path / "out.csv").mkdir()
    assert inference.main(["--output", str(tmp_path / "out.csv")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "is a directory" in err


def test_evaluate_output_dir_that_is_a_file_is_refused_before_work(tmp_path, capsys):
    from latentguard.cli.evaluate import main

    blocker = tmp_path / "results"
    blocker.write_text("x")
    assert main(["--output-dir", str(blocker), "--dataset", str(tmp_path / "missing.json")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "is a file, not a directory" in err
