"""No command overwrites a user's file: an --output-dir is new, empty, or a previous run of the same command.

Real processes (main.py, test.py) against directories holding a user's own files, the config given as
--config, a previous run to resume or start over with --force, and a run that fails on its inputs.
"""
from __future__ import annotations

import json
import shutil

import pytest
from synthetic import make_synthetic_copro
from test_store_damage import one_line_error, run

from latentguard.cli.rundir import OUTPUTS, RUN_LOCK


def _snapshot(directory):
    return {p.name: p.read_bytes() for p in directory.iterdir() if p.is_file()}


@pytest.fixture(scope="module")
def world(tmp_path_factory, tiny_encoder_dir):
    root = tmp_path_factory.mktemp("outputs")
    dataset = make_synthetic_copro(root / "small.json", n_id=4, n_ood=2, train_per_concept=4, test_per_concept=2,
                                   with_valid=True)
    common = ["--dataset", str(dataset), "--encoder", str(tiny_encoder_dir), "--store-dir", str(root / "stores"),
              "--device", "cpu"]
    assert run("prepare.py", *common).returncode == 0
    return {"root": root, "common": common, "train": [*common, "--epochs", "1", "--val-every", "1", "--no-progress"]}


def test_main_refuses_a_directory_of_the_users_own_files(world, tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "model_parameters.pth").write_bytes(b"my own weights")
    (mine / "config.yaml").write_text("train: {epochs: 1}\n", encoding="utf-8")
    (mine / "train_log.jsonl").write_text('{"my": "log"}\n', encoding="utf-8")
    before = _snapshot(mine)
    done = run("main.py", *world["train"], "--output-dir", str(mine))
    one_line_error(done, f"--output-dir {mine} holds model_parameters.pth, which main.py did not write",
                   "choose an empty or new --output-dir")
    done = run("main.py", *world["train"], "--config", str(mine / "config.yaml"), "--output-dir", str(mine))
    one_line_error(done, f"would replace {mine / 'config.yaml'}, which is an input of this command")
    assert _snapshot(mine) == before and not (mine / RUN_LOCK).exists()  # nothing written, not even a lock


def test_main_refuses_the_working_directory_with_the_released_weights_in_it(world, tmp_path):
    (tmp_path / "model_parameters.pth").write_bytes(b"the weights inference.py loads by default")
    done = run("main.py", *world["train"], "--output-dir", ".", cwd=tmp_path)
    one_line_error(done, "holds model_parameters.pth, which main.py did not write")
    assert (tmp_path / "model_parameters.pth").read_bytes() == b"the weights inference.py loads by default"


def test_a_previous_run_resumes_and_force_starts_over_without_touching_other_files(world, tmp_path):
    out = tmp_path / "run"
    assert run("main.py", *world["train"], "--output-dir", str(out)).returncode == 0
    assert "main.py" in json.loads((out / OUTPUTS).read_text())
    (out / "notes.txt").write_text("my notes", encoding="utf-8")
    done = run("main.py", *world["train"], "--lr", "0.01", "--output-dir", str(out))
    one_line_error(done, "made with other settings", "--force to start over")
    assert run("main.py", *world["train"], "--lr", "0.01", "--force", "--output-dir", str(out)).returncode == 0
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert {r["lr"] for r in log if "lr" in r} == {0.01}  # the new run's log only
    assert (out / "notes.txt").read_text() == "my notes"
    config = out / "config.yaml"
    one_line_error(run("main.py", *world["train"], "--config", str(config), "--output-dir", str(out)),
                   f"would replace {config}, which is an input of this command")


def test_test_py_refuses_a_directory_with_the_users_results_and_a_training_run(world, tmp_path):
    mine = tmp_path / "report"
    mine.mkdir()
    (mine / "results.md").write_text("# my own results\n", encoding="utf-8")
    weights = tmp_path / "train"
    assert run("main.py", *world["train"], "--output-dir", str(weights)).returncode == 0
    checkpoint = ["--checkpoint", str(weights / "model_parameters.pth")]
    one_line_error(run("test.py", *world["common"], *checkpoint, "--output-dir", str(mine), "--no-plots"),
                   "holds results.md, which test.py did not write")
    assert (mine / "results.md").read_text() == "# my own results\n"
    one_line_error(run("test.py", *world["common"], *checkpoint, "--output-dir", str(weights), "--no-plots"),
                   "which test.py did not write")
    fresh = tmp_path / "eval"
    assert run("test.py", *world["common"], *checkpoint, "--output-dir", str(fresh), "--no-plots").returncode == 0
    assert run("test.py", *world["common"], *checkpoint, "--output-dir", str(fresh), "--no-plots").returncode == 0


def test_a_run_that_fails_after_claiming_leaves_no_directory(world, tmp_path):
    """test.py with a store that lacks texts fails once it owns the directory: it is removed again."""
    other = make_synthetic_copro(tmp_path / "other.json", n_id=5, n_ood=2, seed=3)
    out = tmp_path / "never"
    common = [a if a != world["common"][1] else str(other) for a in world["common"]]
    weights = tmp_path / "w"
    assert run("main.py", *world["train"], "--output-dir", str(weights)).returncode == 0
    done = run("test.py", *common, "--checkpoint", str(weights / "model_parameters.pth"), "--output-dir", str(out))
    assert done.returncode == 2 and not out.exists(), done.stderr


def test_extending_a_run_never_replaces_a_file_main_py_did_not_write(world, tmp_path):
    """A user's best.pth dropped into a finished run (which wrote none), or a recorded output edited since, is
    refused before training, --force included; the run's own files are extended as before."""
    out = tmp_path / "prun"
    assert run("main.py", *world["train"], "--output-dir", str(out)).returncode == 0
    record = json.loads((out / OUTPUTS).read_text())["main.py"]
    assert {"model_parameters.pth", "last.pth", "resume.pt", "train_log.jsonl", "config.yaml"} <= set(record)
    copy = tmp_path / "prun4"
    shutil.copytree(out, copy)
    (copy / "best.pth").write_bytes(b"precious")
    for force in ([], ["--force"]):
        done = run("main.py", *world["train"], "--epochs", "2", "--keep-best", *force, "--output-dir", str(copy))
        one_line_error(done, f"--output-dir {copy} holds best.pth, which main.py did not write",
                       "move best.pth out of the folder")
    assert (copy / "best.pth").read_bytes() == b"precious"
    assert (copy / "last.pth").read_bytes() == (out / "last.pth").read_bytes()  # refused before training
    (copy / "best.pth").unlink()
    (copy / "model_parameters.pth").write_bytes(b"my own weights")  # written over the run's own file
    done = run("main.py", *world["train"], "--epochs", "2", "--output-dir", str(copy))
    one_line_error(done, "holds model_parameters.pth, which has changed since main.py wrote it")
    assert (copy / "model_parameters.pth").read_bytes() == b"my own weights"
    whole = tmp_path / "prun5"  # a copy of the whole run is the same run: extended, its log appended to
    shutil.copytree(out, whole)
    done = run("main.py", *world["train"], "--epochs", "2", "--keep-best", "--output-dir", str(whole))
    assert done.returncode == 0, done.stderr
    from latentguard.io import sha256_of

    assert json.loads((whole / OUTPUTS).read_text())["main.py"]["last.pth"] == sha256_of(whole / "last.pth")
    assert (whole / "train_log.jsonl").read_bytes().startswith((out / "train_log.jsonl").read_bytes())


def test_a_run_of_one_recipe_never_trains_into_a_folder_of_the_other(world, tmp_path):
    """main.py --force (paper recipe) over an open-recipe run had replaced its resume.pt, log and config.yaml and
    left its bundle/ and recipe_record.json beside the new weights (a hostile review); the other way round too."""
    import yaml

    opened = tmp_path / "open"
    (opened / "bundle").mkdir(parents=True)
    (opened / "bundle" / "config.json").write_text("{}", encoding="utf-8")
    (opened / "recipe_record.json").write_text('{"steps": 4, "threshold": 1.0}', encoding="utf-8")
    (opened / "resume.pt").write_bytes(b"an open-recipe resume state")
    (opened / "config.yaml").write_text("recipe: {name: open}\n", encoding="utf-8")
    (opened / OUTPUTS).write_text('{"main.py": {}}\n', encoding="utf-8")
    before = _snapshot(opened)
    for force in ([], ["--force"]):
        done = run("main.py", *world["train"], *force, "--output-dir", str(opened))
        one_line_error(done, f"--output-dir {opened} holds an open-recipe main.py run (recipe_record.json)",
                       "--force included", "choose another --output-dir")
    (opened / "recipe_record.json").unlink()  # killed before its bundle and record: its config.yaml names it
    shutil.rmtree(opened / "bundle")
    one_line_error(run("main.py", *world["train"], "--force", "--output-dir", str(opened)),
                   "holds an open-recipe main.py run (config.yaml)")
    assert _snapshot(opened) == {k: v for k, v in before.items() if k != "recipe_record.json"}

    paper = tmp_path / "paper"
    assert run("main.py", *world["train"], "--output-dir", str(paper)).returncode == 0
    config = tmp_path / "open.yaml"
    config.write_text(yaml.safe_dump({"recipe": {"name": "open"}}), encoding="utf-8")
    before = _snapshot(paper)
    done = run("main.py", *world["common"], "--config", str(config), "--output-dir", str(paper), "--no-progress")
    one_line_error(done, f"--output-dir {paper} holds a paper-recipe main.py run (model_parameters.pth)")
    assert _snapshot(paper) == before
