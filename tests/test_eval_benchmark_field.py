"""The field evaluation (latentguard benchmark on the full sets): one guard identity for every run
directory (a bundle's weights count), the report names the bundle and its own blacklist, the full sets'
native layouts (the released dump's I2P and COCO halves, Ring-A-Bell's and P4D's concatenated folders,
P4D's benign subsets), --set without the registry's column name and --text-column honoured, the
training-overlap check, the released model beside ours, the published figures, and
scripts/benchmark_field.py end to end on small real files."""
from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from test_eval_benchmark_sets import _one_line_error, _rows  # the same CSV reader and one-line-error check

from latentguard.cli.benchmark import main
from latentguard.errors import LatentGuardError
from latentguard.eval.benchmark.loaders import load_set
from latentguard.eval.benchmark.overlap import normalise, overlap_report, training_index
from latentguard.eval.benchmark.registry import SETS
from latentguard.eval.benchmark.runner import RESOURCES
from latentguard.guard import LatentGuard
from latentguard.model import EmbeddingMappingLayer

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "tests" / "fixtures" / "benchmarks"
DUMP = RESOURCES / "i2p_coco_released_scores.csv"
GROUPED = "violence: [blood, gun, kill]\nsexual: [nude, sex]\nhate: [hate]\n"
N = 12


def _bundle(root: Path, seed: int, encoder, threshold: float) -> Path:
    torch.manual_seed(seed)
    layer = EmbeddingMappingLayer()
    with torch.no_grad():
        layer.tempr.fill_(30.0)
    torch.save(layer.state_dict(), root / f"ckpt{seed}.pth")
    (root / "concepts.yaml").write_text(GROUPED, encoding="utf-8")
    guard = LatentGuard.from_pretrained(root / f"ckpt{seed}.pth", encoder=encoder, concepts=root / "concepts.yaml",
                                        threshold=threshold, device="cpu")
    return guard.save_pretrained(root / f"bundle{seed}")


@pytest.fixture(scope="module")
def bundles(tmp_path_factory, tiny_encoder):
    """Two bundles: other weights, the same encoder, grouped blacklist and threshold."""
    root = tmp_path_factory.mktemp("field")
    probe = LatentGuard.from_pretrained(_bundle(root, 0, tiny_encoder, 0.0), device="cpu")
    threshold = float(np.median(probe.scores([r["prompt"] for r in _rows(SAMPLES / "coco_30k_sample.csv")][:40])))
    shutil.rmtree(root / "bundle0")
    return _bundle(root, 0, tiny_encoder, threshold), _bundle(root, 1, tiny_encoder, threshold)


def _argv(guard: Path, out: Path, *extra: str) -> list[str]:
    return ["--guard", str(guard), "--device", "cpu", "--suite", "i2p", "--set", f"i2p={DUMP}", "--set",
            f"coco={DUMP}", "--max-prompts", str(N), "--output-dir", str(out), "--no-progress", "--no-plots", *extra]


# ------------------------------------------ the released model beside ours, the published figures
def test_another_bundles_scores_are_never_read_back_under_its_name(bundles, tmp_path, capsys):
    a, b = bundles
    out = tmp_path / "run"
    assert main(_argv(a, out)) == 0
    settings = json.loads((out / ".benchmark-state" / "settings.json").read_text())
    config = json.loads((a / "config.json").read_text())
    assert settings["checkpoint_sha256"] == config["weights"]["sha256"]  # was null for every bundle
    assert main(_argv(a, out)) == 0 and "finished earlier with these settings" in capsys.readouterr().out
    assert main(_argv(b, out)) == 2  # was: A's scores read back and reported as B's
    _one_line_error(capsys, "different: checkpoint_sha256", "--force")
    assert main(_argv(b, out, "--force")) == 0
    meta = json.loads((out / "benchmark.json").read_text())["meta"]
    assert meta["weights_sha256"] == json.loads((b / "config.json").read_text())["weights"]["sha256"]


def test_the_benchmark_and_score_share_one_guard_identity(bundles):
    from latentguard.bulk.manifest import guard_identity as score_identity
    from latentguard.eval.benchmark.runner import guard_settings
    from latentguard.guard.identity import guard_identity

    guard = LatentGuard.from_pretrained(bundles[0], device="cpu")
    settings = guard_settings(guard, baselines=[], blacklist_match="substring", max_prompts=None, seed=0)
    assert score_identity is guard_identity
    assert {k: settings[k] for k in guard_identity(guard)} == json.loads(json.dumps(guard_identity(guard)))
    other = LatentGuard.from_pretrained(bundles[1], device="cpu")
    assert guard_identity(other)["checkpoint_sha256"] != guard_identity(guard)["checkpoint_sha256"]
    other.normalize_text = not guard.normalize_text  # the text defences change verdicts: they are identity too
    assert guard_identity(other)["normalize_text"] != guard_identity(guard)["normalize_text"]


def test_the_report_names_the_bundle_and_its_own_blacklist(bundles, tmp_path):
    out = tmp_path / "run"
    assert main(_argv(bundles[0], out)) == 0
    meta = json.loads((out / "benchmark.json").read_text())["meta"]
    md = (out / "benchmark.md").read_text()
    assert meta["guard"] == str(bundles[0]) and meta["guard_kind"] == "bundle" and "checkpoint" not in meta
    assert "CoPro" not in meta["concepts"] and "6 concepts in 3 categories (violence, sexual, hate)" in meta["concepts"]
    assert "the bundle's own blacklist" in meta["concepts"]
    assert f"guard (bundle): `{bundles[0]}`" in md and meta["weights_sha256"] in md and "None" not in md.split("##")[0]


# ------------------------------------------------------------------ native layouts of the full sets
def test_the_released_dump_gives_i2p_and_its_coco_captions():
    i2p = load_set(SETS["i2p"], DUMP, downloaded=False)
    coco = load_set(SETS["coco"], DUMP, downloaded=False)
    rows = _rows(DUMP)
    assert i2p.total == coco.total == 4703 and "note" not in i2p.info and "note" not in coco.info
    assert set(i2p.labels.tolist()) == {1} and set(coco.labels.tolist()) == {0}
    assert [i2p.texts[i] for i in i2p.rows] == [r["prompt"].strip() for r in rows if r["target"] == "1"]
    assert "target = 1" in i2p.info["layout"] and "target = 0" in coco.info["layout"]
    with pytest.raises(LatentGuardError):  # a downloaded file is read only as published
        load_set(SETS["i2p"], DUMP, downloaded=True)


def test_ring_a_bell_and_p4d_full_files_by_attack_setting_and_subset(tmp_path):
    rab = load_set(SETS["ring-a-bell-violence"], SAMPLES / "ring_a_bell_full_sample.csv", downloaded=False)
    assert rab.total == 24 and set(rab.labels.tolist()) == {1}
    assert sorted({c for cats in rab.categories for c in cats}) == [
        "data/InvPrompt/Violence/Violence_eta_5.5_K_38.csv", "data/InvPrompt/Violence/Violence_eta_5.5_K_77.csv",
        "data/InvPrompt/Violence/Violence_eta_5_K_77.csv"]
    p4d = load_set(SETS["p4d"], SAMPLES / "p4d_full_sample.csv", downloaded=False)
    rows = _rows(SAMPLES / "p4d_full_sample.csv")
    benign = {"coco30k-car_esd", "small_imagenet_prompts_frenchhorn", "small_imagenet_prompts_frenchhorn200"}
    assert p4d.labels.tolist() == [0 if r["subset"] in benign else 1 for r in rows]
    assert [c for (c,) in p4d.categories] == [r["subset"] for r in rows]
    rows[0]["subset"] = "some-new-subset"  # a prompt of unknown label is refused, not guessed
    with open(tmp_path / "p4d.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    with pytest.raises(LatentGuardError, match="row 1: subset 'some-new-subset' is not one p4d knows"):
        load_set(SETS["p4d"], tmp_path / "p4d.csv", downloaded=False)


def test_set_needs_no_registry_column_and_text_column_is_honoured(tmp_path, capsys):
    mine = tmp_path / "mma.csv"
    mine.write_text("id,text\n1,an adversarial prompt\n2,another one\n", encoding="utf-8")
    base = ["--suite", "mma-diffusion", "--set", f"coco={SAMPLES / 'coco_30k_sample.csv'}", "--output-dir",
            str(tmp_path / "o"), "--download-only"]
    assert main([*base, "--set", f"mma-diffusion={mine}"]) == 0  # mma reads adv_prompt; this file says text
    assert "mma-diffusion: 2 prompts" in capsys.readouterr().out
    two = tmp_path / "two.csv"
    two.write_text("adv_text,clean_text\nx y,a b\n", encoding="utf-8")
    assert main([*base, "--set", f"mma-diffusion={two}"]) == 2
    _one_line_error(capsys, "which column holds the prompts", "--text-column")
    data = load_set(SETS["mma-diffusion"], two, downloaded=False, text_column="clean_text")
    assert data.texts == ["a b"]
    assert main([*base, "--set", f"mma-diffusion={two}", "--text-column", "mma-diffusion=clean_text"]) == 0
    assert "mma-diffusion: 1 prompts" in capsys.readouterr().out
    assert main([*base, "--set", f"mma-diffusion={two}", "--text-column", "clean_text"]) == 2  # coco's file too
    _one_line_error(capsys, "coco_30k_sample.csv: no column 'clean_text' (--text-column")
    assert main([*base, "--set", f"mma-diffusion={two}", "--text-column", "mma-diffusion=nope"]) == 2
    _one_line_error(capsys, "no column 'nope' (--text-column")
    assert main([*base, "--set", f"mma-diffusion={two}", "--text-column", "i2p=prompt"]) == 2
    _one_line_error(capsys, "i2p is not read from a --set file here")
    assert main(["--suite", "i2p", "--text-column", "prompt", "--output-dir", str(tmp_path / "p"),
                 "--download-only"]) == 2
    _one_line_error(capsys, "--text-column prompt names the prompt column of --set files")
    assert main([*base, "--set", f"mma-diffusion={mine}", "--score-column", "x"]) == 2
    _one_line_error(capsys, "--score-column and --label-column read a --scores file")


# ------------------------------------------------------------------ training overlap
def test_overlap_is_found_after_normalisation_and_a_clean_run_is_said_only_when_checked(tmp_path):
    i2p = load_set(SETS["i2p"], SAMPLES / "i2p_sample.csv", downloaded=False)
    assert normalise("  Ａ  Bloody\tKNIFE \n") == "a bloody knife"
    train = tmp_path / "train.csv"  # copro_real's layout: two prompt columns
    leaked = [i2p.texts[3], i2p.texts[7]]
    with open(train, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["split", "concept", "unsafe_prompt", "safe_prompt"])
        writer.writerow(["valid", "x", "  " + leaked[0].upper() + " ", "a calm lake"])
        writer.writerow(["valid", "y", "a cat", leaked[1].replace(" ", "\u3000")])  # NFKC makes it a space
    report = overlap_report({"i2p": i2p}, *training_index([train], []))
    assert report["status"] == "overlap" and not report["clean"]
    expected = sum(1 for r in i2p.rows if i2p.texts[r] in leaked)
    assert report["sets"]["i2p"]["overlap_rows"] == expected and report["sets"]["i2p"]["overlap_distinct"] == 2
    real = [SAMPLES / n for n in ("copro_real_train_sample.csv", "coprov2_train_sample.csv",
                                  "coco_captions_train_sample.csv")]
    clean = overlap_report({"i2p": i2p}, *training_index(real, []))
    assert clean["status"] == "clean" and [f["prompts"] for f in clean["files"]] == [24, 12, 12]
    assert overlap_report({"i2p": i2p}, {}, [])["status"] == "not checked"
    (tmp_path / "empty.csv").write_text("prompt,image_id\n", encoding="utf-8")
    empty = overlap_report({"i2p": i2p}, *training_index([tmp_path / "empty.csv"], []))
    assert empty["status"] == "incomplete" and "no prompts in it" in empty["files"][0]["problem"]
    (tmp_path / "ids.csv").write_text("image_id,score\n1,2\n", encoding="utf-8")
    with pytest.raises(LatentGuardError, match="ids.csv: no prompt column"):
        training_index([tmp_path / "ids.csv"], [])


def test_a_bundles_recorded_training_files_are_checked(bundles, tmp_path, capsys):
    folder = shutil.copytree(bundles[0], tmp_path / "recorded")
    config = json.loads((folder / "config.json").read_text())
    train = tmp_path / "train.txt"
    leaked = load_set(SETS["i2p"], DUMP, downloaded=False, max_prompts=N).texts[0]
    train.write_text(f"a harmless caption\n{leaked}\n", encoding="utf-8")
    config["training"] = {"files": [str(train)]}
    (folder / "config.json").write_text(json.dumps(config), encoding="utf-8")
    out = tmp_path / "run"
    assert main(_argv(folder, out)) == 0
    printed = capsys.readouterr().out
    assert "training overlap: NOT clean: i2p 1 of 12 rows" in printed
    md = (out / "benchmark.md").read_text()
    assert "## Overlap with the training data" in md and "NOT clean" in md.split("##")[0]
    moved = tmp_path / "elsewhere" / "train.txt"
    moved.parent.mkdir()
    train.rename(moved)  # a recorded file missing here: the check is incomplete, never clean
    assert main(_argv(folder, tmp_path / "run2")) == 0
    assert "training overlap: incomplete, not clean" in capsys.readouterr().out
    assert main(_argv(folder, tmp_path / "run3", "--train-data", str(moved))) == 0  # found under another path
    assert "training overlap: NOT clean: i2p 1 of 12 rows" in capsys.readouterr().out
    config["training"] = {"files": [{"path": str(train), "sha256": "x"}]}
    (folder / "config.json").write_text(json.dumps(config), encoding="utf-8")
    with pytest.raises(LatentGuardError, match="training.files"):
        LatentGuard.from_pretrained(folder, device="cpu")


# ------------------------------------------------------------------ the table: subsets, the released model, the field
def test_p4d_benign_subsets_report_fpr_and_the_released_model_stands_beside_ours(bundles, tmp_path):
    out = tmp_path / "run"
    argv = ["--guard", str(bundles[0]), "--device", "cpu", "--suite", "i2p,p4d,ring-a-bell-violence", "--set",
            f"i2p={DUMP}", "--set", f"coco={DUMP}", "--set", f"p4d={SAMPLES / 'p4d_full_sample.csv'}", "--set",
            f"ring-a-bell-violence={SAMPLES / 'ring_a_bell_full_sample.csv'}", "--max-prompts", "30",
            "--output-dir", str(out), "--no-progress", "--no-plots", "--train-data",
            str(SAMPLES / "coco_captions_train_sample.csv")]
    assert main(argv) == 0
    result = json.loads((out / "benchmark.json").read_text())
    p4d = next(u for u in result["unsafe_sets"] if u["name"] == "p4d")
    groups = {c["category"]: c for c in p4d["categories"]}
    scores = {r["prompt"]: r for r in _rows(out / "scores_p4d.csv")}
    for name in ("coco30k-car_esd", "small_imagenet_prompts_frenchhorn200"):
        if name in groups:
            m = groups[name]["methods"]["latent_guard"]
            assert groups[name]["role"] == "benign" and set(m) == {"false_positive_rate"}
    benign_rows = [r for r in scores.values() if r["label"] == "0"]
    assert benign_rows and p4d["prompts_total"] == sum(int(r["count"]) for r in scores.values() if r["label"] == "1")
    md = (out / "benchmark.md").read_text()
    assert "### p4d: its benign subsets at the operating threshold" in md
    # the released model on the same rows, from its shipped scores, at 9.0131
    beside = {r["set"]: r for r in result["released_beside"]}
    assert set(beside) >= {"i2p"} and "ring-a-bell-violence" not in beside  # the dump has no Ring-A-Bell prompt
    dump = {r["prompt"].strip(): float(r["prediction"]) for r in _rows(DUMP)}
    i2p = {r["prompt"]: r for r in _rows(out / "scores_i2p.csv")}
    coco = {r["prompt"]: r for r in _rows(out / "scores_coco.csv")}
    pos = np.repeat([dump[t] for t in i2p], [int(r["count"]) for r in i2p.values()])
    neg = np.repeat([dump[t] for t in coco], [int(r["count"]) for r in coco.values()])
    from sklearn.metrics import roc_auc_score

    released = beside["i2p"]["released"]
    assert released["auroc"] == pytest.approx(roc_auc_score(np.r_[np.ones(pos.size), np.zeros(neg.size)],
                                                            np.r_[pos, neg]))
    assert released["detection_rate"] == pytest.approx((pos >= 9.0131).mean())
    ours = beside["i2p"]["ours"]
    lg = result["unsafe_sets"][0]["methods"]["latent_guard"]
    assert ours["auroc"] == pytest.approx(lg["against"]["coco"]["auroc"])
    assert "## Ours beside the released model" in md
    # the field's published figures, each with its source; ours beside where the run has the set (or family)
    assert "| GuardT2I (paper) | i2p | auroc | 0.926 |" in md and "arXiv:2403.01446" in md
    by_others = "| Latent Guard (released weights, by others) | ring-a-bell"
    assert f"{by_others} (their Ring-A-Bell prompts) | asr | 43.1% |" in md
    line = next(x for x in md.splitlines() if x.startswith(by_others))
    assert "(ring-a-bell-violence)" in line
    assert "| DistilRoBERTa NSFW text classifier |" in md and "| OpenAI text moderation |" in md


def _data_dir(root: Path) -> Path:
    """Small real files under the full files' names: the dump's first 40 I2P and 40 COCO rows, the samples."""
    root.mkdir()
    rows = _rows(DUMP)
    with open(root / "i2p_coco_released_scores.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows([r for r in rows if r["target"] == "1"][:40] + [r for r in rows if r["target"] == "0"][:40])
    for sample, name in (("ring_a_bell_full_sample.csv", "ring_a_bell_full.csv"),
                         ("p4d_full_sample.csv", "p4d_full.csv"),
                         ("coprov2_test_sample.csv", "coprov2_test.csv"),
                         ("copro_real_train_sample.csv", "copro_real.csv"),
                         ("coprov2_train_sample.csv", "coprov2_train.csv"),
                         ("coco_captions_train_sample.csv", "coco_captions_train.csv")):
        shutil.copy(SAMPLES / sample, root / name)
    return root


def test_the_field_script_runs_issue_28s_evaluation_end_to_end(bundles, tmp_path):
    data, out = _data_dir(tmp_path / "data"), tmp_path / "field"
    run = subprocess.run([sys.executable, str(ROOT / "scripts" / "benchmark_field.py"), "--guard", str(bundles[0]),
                          "--data-dir", str(data), "--output-dir", str(out), "--", "--device", "cpu", "--no-plots",
                          "--max-prompts", "20"], capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    field = json.loads((out / "field.json").read_text())
    result = json.loads((out / "benchmark.json").read_text())
    i2p = next(u for u in result["unsafe_sets"] if u["name"] == "i2p")
    assert field["AUROC, I2P against its COCO captions"]["value"] == i2p["methods"]["latent_guard"]["against"][
        "coco"]["auroc"]
    categories = [k for k in field if k.startswith("detection, CoProV2 test: ")]
    assert len(categories) == 7  # every category of the sample, each against the >= 90% target
    md = (out / "field.md").read_text()
    assert "training overlap: clean (no prompt of 5 sets is in the 3 training files)" in md
    assert "| p4d | coco30k-car_esd |" in md and "benign FPR" in md
    rerun = subprocess.run([sys.executable, str(ROOT / "scripts" / "benchmark_field.py"), "--scores",
                            "released-i2p-coco", "--data-dir", str(data), "--output-dir", str(tmp_path / "rel"), "--",
                            "--no-plots"], capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    released = json.loads((tmp_path / "rel" / "field.json").read_text())
    assert released["AUROC, I2P against its COCO captions"]["value"] == pytest.approx(0.6703660092912586)
    assert released["attack success, Ring-A-Bell (750)"]["status"] == "not measured"


def test_the_released_model_is_compared_only_where_its_dump_holds_the_rows():
    from latentguard.eval.benchmark.released import released_beside
    from latentguard.eval.benchmark.scorers import MethodOutput
    from latentguard.eval.benchmark.tables import Scored

    def scored(data):
        n = len(data.texts)
        return Scored(data, {"latent_guard": MethodOutput(np.linspace(0, 1, n), np.arange(n) % 2 == 0,
                                                          np.zeros(n, np.int64))})

    i2p = scored(load_set(SETS["i2p"], DUMP, downloaded=False, max_prompts=20))
    own_coco = scored(load_set(SETS["coco"], DUMP, downloaded=False, max_prompts=20))
    other_coco = scored(load_set(SETS["coco"], SAMPLES / "coco_30k_sample.csv", downloaded=False, max_prompts=20))
    rab = scored(load_set(SETS["ring-a-bell-violence"], SAMPLES / "ring_a_bell_full_sample.csv", downloaded=False))
    rows = released_beside({"i2p": i2p, "ring-a-bell-violence": rab, "coco": own_coco}, ["coco"])
    assert [(r["set"], r["n_unsafe"], r["n_benign"]) for r in rows] == [("i2p", 20, 20)]
    assert released_beside({"i2p": i2p, "coco": other_coco}, ["coco"]) == []  # COCO captions the dump lacks
