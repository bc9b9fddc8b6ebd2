"""A file the user named that does not exist is reported as missing before anything is fetched: a
mistyped ``--checkpoint runs/tyop/model_parameters.pth`` used to surface as a CoPro (inference.py,
test.py, verify) or I2P (benchmark) download failure."""
from __future__ import annotations

import urllib.request

import pytest

from latentguard.errors import LatentGuardError

TYPO = "runs/tyop/model_parameters.pth"


@pytest.fixture
def no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a download was attempted")

    monkeypatch.setattr(urllib.request, "urlopen", refuse)


def _main(command: str):
    if command == "inference":
        import inference

        return inference.main
    module = __import__(f"latentguard.cli.{command}", fromlist=["main"])
    return module.main


@pytest.mark.parametrize("command, extra", [
    ("inference", []),
    ("evaluate", ["--output-dir", "OUT"]),
    ("verify", []),
    ("benchmark", ["--suite", "i2p", "--output-dir", "OUT"]),
    ("score", ["PROMPTS", "--output", "OUT"]),
])
def test_a_mistyped_checkpoint_is_named_before_any_download(command, extra, tmp_path, monkeypatch, capsys,
                                                            no_network):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "prompts.txt").write_text("a cat\n", encoding="utf-8")
    argv = [a.replace("OUT", str(tmp_path / "out")).replace("PROMPTS", str(tmp_path / "prompts.txt")) for a in extra]
    assert _main(command)([*argv, "--checkpoint", TYPO, "--dataset", str(tmp_path / "CoPro_v1.0.json")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"checkpoint not found: {TYPO}" in err, err
    assert "download" not in err.replace("nothing was downloaded", "")
    assert not (tmp_path / "out").exists()


def test_every_missing_named_file_is_said_at_once(tmp_path, monkeypatch, capsys, no_network):
    import inference

    monkeypatch.chdir(tmp_path)
    assert inference.main(["--checkpoint", TYPO, "--concepts", "nope.yaml", "--allowlist", "allow.txt"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and all(w in err for w in (TYPO, "concepts file not found: nope.yaml",
                                                   "allowlist file not found: allow.txt"))


# ------------------------------------------------------- offline, everything missing in one line, at once
def test_offline_every_missing_piece_is_named_at_once_and_fast(tmp_path, monkeypatch, capsys, no_network):
    import time

    import inference
    from latentguard.cli.evaluate import main as evaluate

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # an empty Hugging Face cache
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    import huggingface_hub.constants as hub

    monkeypatch.setattr(hub, "HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    (tmp_path / "prompts.txt").write_text("a cat\n", encoding="utf-8")
    started = time.monotonic()
    assert inference.main(["--file_path", "prompts.txt", "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: offline"), err
    assert all(w in err for w in ("CoPro dataset", "released weights", "openai/clip-vit-large-patch14")), err
    assert evaluate(["--device", "cpu", "--output-dir", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "CoPro dataset" in err and "released weights" in err, err
    assert time.monotonic() - started < 30 and not (tmp_path / "out").exists()


@pytest.mark.parametrize("name", ["MINI", " mini", "./no-such-bundle"])
def test_a_mistyped_guard_is_named_before_anything_is_fetched(name, capsys, monkeypatch):
    """--guard MINI used to fall through to the released recipe and report a CoPro download failure."""
    from latentguard.cli.common import cli_entry
    from latentguard.cli.infer import main
    from latentguard.errors import LatentGuardError
    from latentguard.guard import LatentGuard

    monkeypatch.setattr("urllib.request.urlopen", lambda *a, **k: pytest.fail("fetched something"))
    assert cli_entry(main)(["--guard", name, "--file_path", "dataset/unsafe_sample.txt"]) == 2
    err = capsys.readouterr().err
    assert f"--guard {name!r}: no such folder" in err and "built-in: mini" in err and "download" not in err
    if name.strip().lower() == "mini":
        with pytest.raises(LatentGuardError, match="the built-in guard is named 'mini'"):
            LatentGuard.from_pretrained(name)


# ------------------------------------------------ a named file that exists but is no regular file
def test_a_named_file_that_is_no_regular_file_is_said_so_not_missing(tmp_path, monkeypatch, capsys, no_network):
    """A symbolic link to /dev/zero as --concepts, a FIFO as --allowlist and a directory as --checkpoint exist:
    each is named as not a regular file, with how to fix it, never as a missing file."""
    import os

    import inference

    monkeypatch.chdir(tmp_path)
    (tmp_path / "zero.yaml").symlink_to("/dev/zero")
    os.mkfifo(tmp_path / "allow.txt")
    (tmp_path / "ckpt.pth").mkdir()
    assert inference.main(["--checkpoint", "ckpt.pth", "--concepts", "zero.yaml", "--allowlist", "allow.txt"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not found" not in err, err
    for flag, name in (("--checkpoint", "ckpt.pth"), ("--concepts", "zero.yaml"), ("--allowlist", "allow.txt")):
        assert f"{name} is not a regular file" in err and flag in err, err
    assert "regular file" in err and "copy" in err


def test_library_readers_say_not_a_regular_file_too(tmp_path):
    """The same wording where the library opens a named file itself (a LatentGuard built in Python)."""
    import os

    from latentguard.config import load_config
    from latentguard.data.blacklist import load_blacklist
    from latentguard.errors import LatentGuardError
    from latentguard.model.checkpoint import load_state_dict_file

    (tmp_path / "zero.yaml").symlink_to("/dev/zero")
    os.mkfifo(tmp_path / "fifo.pth")
    for call in (lambda: load_blacklist(tmp_path / "zero.yaml"), lambda: load_state_dict_file(tmp_path / "fifo.pth"),
                 lambda: load_config(tmp_path / "zero.yaml")):
        with pytest.raises(LatentGuardError, match="is not a regular file") as info:
            call()
        assert "not found" not in str(info.value)


def test_a_text_file_linked_to_a_device_is_refused_not_read_forever(tmp_path):
    from latentguard.errors import LatentGuardError
    from latentguard.io import read_lines

    (tmp_path / "concepts.txt").symlink_to("/dev/zero")
    with pytest.raises(LatentGuardError, match="is not a regular file"):
        read_lines(tmp_path / "concepts.txt", what="concepts file")


@pytest.mark.parametrize("argv", [["verify", "--guard", "mini"], ["prepare", "--guard", "mini"], ["prepare"],
                                  ["verify"], ["train", "--output-dir", "run"]])
def test_offline_every_command_that_may_download_refuses_up_front(argv, tmp_path, monkeypatch, capsys, no_network):
    """verify and prepare --guard mini used to try the CoPro download offline ("Name or service not known")."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    import huggingface_hub.constants as hub

    monkeypatch.setattr(hub, "HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    assert _main(argv[0])([*argv[1:], "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: offline") and "CoPro dataset" in err, err
    assert "nothing was downloaded" in err and not (tmp_path / "run").exists()


def test_offline_a_download_is_refused_at_the_boundary(tmp_path, monkeypatch, no_network):
    """Whatever calls it, download() makes no request offline: one line naming the file to put there by hand."""
    from latentguard.downloads import download

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(LatentGuardError, match=r"^offline .* weights .*w\.pth .*nothing was downloaded"):
        download("https://example.invalid/w.pth", tmp_path / "w.pth", what="weights")
    assert not (tmp_path / "w.pth").exists()
