"""Files outside the store: downloads verified and never deleted, one run per directory, lines
split only on newlines, stdin prompts, byte-identical checkpoints, early one-line refusals.
Real files, real processes (the lock owner is SIGKILLed), offline (file:// addresses)."""
from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from synthetic import make_synthetic_copro
from test_store_damage import ROOT, one_line_error, run

import prepare
from latentguard import encoders as encoder_mod
from latentguard.cli import rundir
from latentguard.cli.rundir import claim_run_dir, replace_outputs
from latentguard.data import copro as data_mod
from latentguard.downloads import download
from latentguard.errors import LatentGuardError
from latentguard.io import atomic_torch_save, git_blob_id, read_lines
from latentguard.model import EmbeddingMappingLayer
from latentguard.model import checkpoint as checkpoint_mod


# ---------------------------------------------------------------------------- verified downloads
def test_git_blob_id_equals_git_hash_object(tmp_path):
    odd = tmp_path / "odd.bin"
    odd.write_bytes(bytes(range(256)) * 5000 + b"\0tail")  # > one read chunk, NULs included
    empty = tmp_path / "empty"
    empty.write_bytes(b"")
    for path in (odd, empty, ROOT / "tests" / "fixtures" / "copro_real_sample.json"):
        git = subprocess.run(["git", "hash-object", str(path)], capture_output=True, text=True, check=True)
        assert git_blob_id(path) == git.stdout.strip()


@pytest.mark.parametrize("check", ["sha256", "git_blob"])
def test_a_download_failing_its_check_is_moved_aside_not_used(tmp_path, check):
    source = tmp_path / "served.bin"
    source.write_bytes(b"not what was published")
    target = tmp_path / "cache" / "weights.pth"
    with pytest.raises(LatentGuardError) as caught:
        download(source.as_uri(), target, **{check: "0" * (64 if check == "sha256" else 40)}, what="weights")
    aside = target.with_name("weights.pth.mismatch-1")
    assert not target.exists() and aside.read_bytes() == source.read_bytes()
    assert f"kept as {aside}" in str(caught.value) and "\n" not in str(caught.value)
    good = download(source.as_uri(), target, git_blob=git_blob_id(source), what="weights")
    assert good.read_bytes() == source.read_bytes() and aside.exists()


def test_a_mismatching_cached_checkpoint_is_moved_aside_even_offline(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("LATENTGUARD_HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(checkpoint_mod, "RELEASED_CHECKPOINT_URL", (tmp_path / "offline" / "none.pth").as_uri())
    cached = tmp_path / "home" / "model_parameters.pth"
    cached.parent.mkdir()
    cached.write_bytes(b"my own fine-tuned weights, not the released file")
    with pytest.raises(LatentGuardError) as caught:
        checkpoint_mod.released_checkpoint("model_parameters.pth")
    aside = cached.with_name("model_parameters.pth.mismatch-1")
    assert aside.read_bytes() == b"my own fine-tuned weights, not the released file"  # nothing deleted
    assert f"moved to {aside}" in str(caught.value) and "cannot download" in str(caught.value)
    assert f"moved to {aside}" in capsys.readouterr().err


def test_copro_download_is_verified_against_the_published_blob_id(tmp_path, monkeypatch, capsys):
    served = make_synthetic_copro(tmp_path / "served" / "CoPro_v1.0.json")
    monkeypatch.setattr(data_mod, "COPRO_URL", served.as_uri())
    target = tmp_path / "dataset" / "CoPro_v1.0.json"
    assert data_mod.COPRO_GIT_BLOB == "e56717a7c4c5b8f5ead376079f8ecee62e29a06c"
    with pytest.raises(LatentGuardError, match="git blob id .* expected e56717a7c4c5b8f5ead376079f8ecee62e29a06c"):
        data_mod.fetch_copro(target)  # a file that is not the released CoPro is never used
    assert not target.exists() and target.with_name("CoPro_v1.0.json.mismatch-1").is_file()
    monkeypatch.setattr(data_mod, "COPRO_GIT_BLOB", git_blob_id(served))
    assert data_mod.fetch_copro(target).read_bytes() == served.read_bytes()
    assert "verified against the released git blob" in capsys.readouterr().out


# ---------------------------------------------------------------------------- one run per directory
OWNER = textwrap.dedent(
    """
    import sys, time
    sys.path.insert(0, {root!r})
    from latentguard.cli.rundir import claim_run_dir
    claim_run_dir(sys.argv[1], "main.py")
    print("claimed", flush=True)
    time.sleep(120)
    """
)


def test_a_run_directory_belongs_to_one_run_and_a_dead_owner_is_taken_over(tmp_path, tiny_encoder_dir):
    dataset = make_synthetic_copro(tmp_path / "copro.json", n_id=2, n_ood=1, train_per_concept=2, test_per_concept=1)
    inputs = ["--dataset", str(dataset), "--encoder", str(tiny_encoder_dir), "--store-dir", str(tmp_path / "cache"),
              "--device", "cpu"]
    assert prepare.main(inputs) == 0
    torch.manual_seed(0)
    torch.save(EmbeddingMappingLayer().state_dict(), tmp_path / "ckpt.pth")
    argv = {"main.py": [*inputs, "--epochs", "1"], "test.py": [*inputs, "--checkpoint", str(tmp_path / "ckpt.pth")]}
    out = tmp_path / "run"
    script = tmp_path / "owner.py"
    script.write_text(OWNER.format(root=str(ROOT)))
    owner = subprocess.Popen([sys.executable, str(script), str(out)], stdout=subprocess.PIPE, text=True)
    try:
        assert owner.stdout.readline().strip() == "claimed"
        for command in ("main.py", "test.py"):  # valid inputs: refused only when claiming the directory
            err = one_line_error(run(command, *argv[command], "--output-dir", str(out)),
                                 f"{out} is in use by main.py (pid {owner.pid} on ", "started ", "choose another "
                                                                                                 "--output-dir")
            assert "UTC" in err
    finally:
        os.kill(owner.pid, signal.SIGKILL)
        owner.wait(timeout=30)
    assert owner.returncode == -signal.SIGKILL
    # The dead owner's lock is taken over; the run then goes on (to an error met after the claim).
    done = run("main.py", *argv["main.py"], "--output-dir", str(out), "--resume", str(tmp_path / "none.pt"))
    assert f"taking over {out} from main.py (pid {owner.pid}" in done.stderr
    assert done.stderr.strip().splitlines()[-1].startswith("error: no resume state"), done.stderr
    assert (out / rundir.RUN_LOCK).read_text() == ""  # that run ended normally: nothing left to take over


def test_a_run_that_fails_on_its_inputs_creates_no_output_directory(tmp_path, capsys):
    import main as train_script
    from latentguard.cli.evaluate import main as evaluate  # test.py's main

    for entry in (train_script.main, evaluate):
        out = tmp_path / "never" / "run"
        assert entry(["--dataset", str(tmp_path / "missing.json"), "--device", "cpu", "--output-dir", str(out)]) == 2
        assert "dataset not found" in capsys.readouterr().err
        assert not (tmp_path / "never").exists()  # no directory, no lock file left behind


def test_claiming_again_in_the_same_process_is_kept_and_a_file_is_refused(tmp_path):
    assert claim_run_dir(tmp_path / "mine", "test") == claim_run_dir(tmp_path / "mine", "test")
    (tmp_path / "file").write_text("x")
    with pytest.raises(LatentGuardError, match="is a file"):
        claim_run_dir(tmp_path / "file", "test")


def test_replace_outputs_removes_only_its_own_unchanged_files(tmp_path):
    old = {name: tmp_path / name for name in ("results.json", "scores_baseline.csv", "scores_edited.csv")}
    for path in old.values():
        path.write_text(f"first run: {path.name}")
    (tmp_path / "notes.csv").write_text("the user's own file")
    assert replace_outputs(tmp_path, "test.py", list(old.values())) == []
    old["scores_edited.csv"].write_text("edited by the user since")
    old["results.json"].write_text("second run")
    assert replace_outputs(tmp_path, "test.py", [old["results.json"]]) == [old["scores_baseline.csv"]]
    assert sorted(p.name for p in tmp_path.iterdir()) == [".latentguard-outputs.json", "notes.csv", "results.json",
                                                           "scores_edited.csv"]


# ---------------------------------------------------------------------------- lines and stdin
ODD = "a knife\u2028in the kitchen\nblood\x0con\x85the\x1cfloor\r\na red balloon\n"


def test_prompt_files_split_only_on_newlines(tmp_path):
    path = tmp_path / "prompts.txt"
    path.write_bytes(ODD.encode("utf-8"))
    assert read_lines(path) == ["a knife\u2028in the kitchen", "blood\x0con\x85the\x1cfloor", "a red balloon"]
    table = tmp_path / "external.csv"
    table.write_bytes('prompt,label\r\n"a knife\u2028here",1\nblood\x0con the floor,1\r\na cake,0\n'.encode("utf-8"))
    from latentguard.eval.external import read_labelled_prompts

    prompts, labels = read_labelled_prompts(table)
    assert prompts == ["a knife\u2028here", "blood\x0con the floor", "a cake"] and labels.tolist() == [1, 1, 0]


def test_inference_reads_prompts_from_standard_input(tmp_path, tiny_encoder_dir):
    torch.manual_seed(0)
    torch.save(EmbeddingMappingLayer().state_dict(), tmp_path / "ckpt.pth")
    (tmp_path / "concepts.txt").write_text("knife\nblood\n")
    out = tmp_path / "verdicts.csv"
    done = run("inference.py", "--file_path", "-", "--checkpoint", str(tmp_path / "ckpt.pth"),
               "--concepts", str(tmp_path / "concepts.txt"), "--encoder", str(tiny_encoder_dir), "--device", "cpu",
               "--threshold", "0", "--output", str(out), stdin=ODD)
    assert done.returncode == 0, done.stderr
    with open(out, newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert [r["prompt"] for r in rows] == ["a knife\u2028in the kitchen", "blood\x0con\x85the\x1cfloor",
                                           "a red balloon"]


def test_dev_stdin_and_pipes_are_read_like_files():
    code = "import sys; from latentguard.io import read_lines; print(repr(read_lines(sys.argv[1])))"
    for name in ("/dev/stdin", "-"):
        done = subprocess.run([sys.executable, "-c", code, name], input=ODD.encode("utf-8"), capture_output=True,
                              cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=60)
        assert done.returncode == 0, done.stderr
        assert eval(done.stdout) == ["a knife\u2028in the kitchen", "blood\x0con\x85the\x1cfloor", "a red balloon"]


# ---------------------------------------------------------------------------- smaller items
def test_checkpoints_are_byte_identical_whatever_the_temporary_name(tmp_path):
    torch.manual_seed(0)
    state = EmbeddingMappingLayer().state_dict()
    atomic_torch_save(state, tmp_path / "a" / "best.pth")
    atomic_torch_save(state, tmp_path / "b" / "other_name.pth")
    assert (tmp_path / "a" / "best.pth").read_bytes() == (tmp_path / "b" / "other_name.pth").read_bytes()
    loaded = torch.load(tmp_path / "a" / "best.pth", weights_only=True)
    assert all(torch.equal(loaded[k], v) for k, v in state.items())


def test_cache_dir_that_is_a_file_fails_before_the_encoder_loads(tmp_path, tiny_encoder_dir, monkeypatch, capsys):
    (tmp_path / "cachefile").write_text("not a directory")
    monkeypatch.setattr(encoder_mod, "load_encoder", lambda *a, **k: pytest.fail("encoder loaded"))
    dataset = make_synthetic_copro(tmp_path / "copro.json", n_id=2, n_ood=1, train_per_concept=2, test_per_concept=1)
    for cache in (tmp_path / "cachefile", tmp_path / "cachefile" / "below"):
        assert prepare.main(["--dataset", str(dataset), "--encoder", str(tiny_encoder_dir), "--store-dir", str(cache),
                             "--device", "cpu"]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and f"--store-dir {cache}" in err and "not a directory" in err


class Evil:
    """Unpickling this runs a shell command: what a malicious ``pytorch_model.bin`` carries."""

    def __init__(self, proof: Path) -> None:
        self.proof = proof

    def __reduce__(self):
        return (os.system, (f"touch {self.proof}",))


def test_malicious_pickle_weights_are_refused_in_one_line(tmp_path, capsys):
    from conftest import tiny_clip_text_model

    model_dir = tmp_path / "evil"
    tiny_clip_text_model(hidden_size=64).config.save_pretrained(model_dir)
    proof = tmp_path / "PWNED"
    torch.save({"text_model.embeddings.token_embedding.weight": Evil(proof)}, model_dir / "pytorch_model.bin")
    dataset = make_synthetic_copro(tmp_path / "copro.json", n_id=2, n_ood=1, train_per_concept=2, test_per_concept=1)
    assert prepare.main(["--dataset", str(dataset), "--encoder", str(model_dir), "--store-dir", str(tmp_path / "c"),
                         "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"refusing to load text encoder '{model_dir}'" in err and "safetensors" in err
    assert not proof.exists()


def test_a_jsonl_record_is_one_line_to_every_line_reader():
    """JSON leaves U+2028, U+2029 and U+0085 raw, and str.splitlines() split a 2-row score shard into 4 lines (a
    thirty-eighth hostile pass): they are escaped, and read back as the same text."""
    import json

    from latentguard.io import jsonl_line

    record = {"prompt": "a cat\u2028on a sofa\u2029\x85 café \n", "score": -1.5}
    line = jsonl_line(record)
    assert line.endswith("\n") and len(line.splitlines()) == 1 and "café" in line
    assert json.loads(line) == record
