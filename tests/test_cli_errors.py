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


# ------------------------------------------------------- tracebacks and advice found by an attacker's sweep
def _bert_dir(path):
    from transformers import BertConfig, BertModel

    BertModel(BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                         intermediate_size=37)).save_pretrained(path)
    return path


def test_encoder_type_clip_on_a_bert_directory_names_the_mismatch(tmp_path):
    from latentguard.encoders import load_encoder

    bert = _bert_dir(tmp_path / "bert")
    with pytest.raises(LatentGuardError, match="--encoder-type clip, but .* is a bert model, not CLIP") as caught:
        load_encoder(str(bert), "clip", device="cpu")
    assert "\n" not in str(caught.value)


def test_a_full_disk_names_the_file_being_written(tmp_path, monkeypatch):
    import errno

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    target = tmp_path / "results.json"
    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(LatentGuardError, match=f"cannot write {target}: No space left on device"):
        atomic_write_text(target, "{}")
    assert not target.exists() and not list(tmp_path.iterdir())  # no half file, no temporary left


def test_a_file_size_limit_in_a_real_process_names_the_output_file(tmp_path):
    """A real process under RLIMIT_FSIZE: the write fails (EFBIG) and the error names the file."""
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    code = ("import resource, signal, sys; signal.signal(signal.SIGXFSZ, signal.SIG_IGN); "
            "resource.setrlimit(resource.RLIMIT_FSIZE, (64, 64)); "
            "from latentguard.cli.common import cli_entry; from latentguard.io import atomic_write_text; "
            "sys.exit(cli_entry(lambda: atomic_write_text(sys.argv[1], 'x' * 10000))())")
    target = tmp_path / "verdicts.csv"
    done = subprocess.run([sys.executable, "-c", code, str(target)], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(root)})
    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
    assert f"cannot write {target}" in done.stderr and "Traceback" not in done.stderr
    assert not target.exists()


def test_resume_with_a_file_that_is_not_a_resume_state_never_advises_deleting_it(tmp_path):
    from latentguard.train.trainer import Trainer

    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a cat\n", encoding="utf-8")
    trainer = Trainer.__new__(Trainer)
    with pytest.raises(LatentGuardError) as caught:
        trainer.load_resume(prompts)
    message = str(caught.value)
    assert "is not a resume state written by main.py" in message and "delete" not in message
    assert prompts.read_text() == "a cat\n"


class _Payload:
    def __reduce__(self):
        return (print, ("this pickle ran code",))


def test_a_pickled_openclip_weights_file_is_refused_without_relaying_torchs_advice(tmp_path, capsys):
    pytest.importorskip("open_clip")
    import torch

    from latentguard.encoders import load_encoder

    weights = tmp_path / "open_clip_pytorch_model.bin"
    torch.save({"a": torch.zeros(1), "b": _Payload()}, weights)
    with pytest.raises(LatentGuardError, match="refusing to load OpenCLIP weights") as caught:
        load_encoder(f"openclip:ViT-B-32@{weights}", device="cpu")
    assert "weights_only=False" not in str(caught.value) and "likely succeed" not in str(caught.value)
    assert "this pickle ran code" not in capsys.readouterr().out


def test_a_warning_is_one_line_on_the_command_line(capsys):
    """A load warning (a published threshold on other weights, a bundle without its calibration record) reads as
    one 'warning:' line, not Python's file:line format with a library source line."""
    import warnings

    from latentguard.cli.common import cli_entry

    def main() -> int:
        warnings.warn("threshold 'released' is the released model's", UserWarning)
        return 0

    assert cli_entry(main)() == 0
    assert capsys.readouterr().err == "warning: threshold 'released' is the released model's\n"


def test_an_error_or_warning_with_line_breaks_is_printed_on_one_line(capsys):
    """pyarrow's message for a damaged parquet file holds a line break: `latentguard score` had printed the error
    over two lines (a forty-third hostile pass)."""
    import warnings

    from latentguard.cli.common import cli_entry

    def main() -> int:
        warnings.warn("first\nsecond", UserWarning)
        raise LatentGuardError("x.parquet: not a parquet file (Couldn't deserialize thrift: No more data to read.\n)")

    assert cli_entry(main)() == 2
    err = capsys.readouterr().err
    assert err == ("warning: first second\nerror: x.parquet: not a parquet file (Couldn't deserialize thrift: No more "
                   "data to read. )\n"), err
