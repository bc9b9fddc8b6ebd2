"""Evaluation (test.py): settings, pooled calibration, every output file, external sets and errors.

One tiny Latent Guard is trained per module on the synthetic CoPro (store built by prepare.py with
the tiny random CLIP encoder), then ``test.py`` runs in-process against it.
"""
from __future__ import annotations

import csv
import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from synthetic import make_synthetic_copro

from latentguard.cli.evaluate import main
from latentguard.data import load_copro
from latentguard.decision.metrics import best_accuracy_threshold
from latentguard.decision.rule import rates
from latentguard.errors import LatentGuardError
from latentguard.eval import (
    DOMAINS,
    KINDS,
    Condition,
    MethodScores,
    TextScores,
    build_conditions,
    pooled_validation_threshold,
    read_labelled_prompts,
)
from latentguard.published import PUBLISHED_TABLE1

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
METRIC_KEYS = {"available", "n_unsafe", "n_safe", "auc", "accuracy", "tpr", "fpr", "fpr_at_95tpr"}


# ----------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def world(tmp_path_factory, tiny_encoder_dir):
    """Synthetic CoPro + a store built by prepare.py + a briefly trained mapping layer."""
    import prepare
    from latentguard.encoders import load_encoder
    from latentguard.io import atomic_torch_save
    from latentguard.model import EmbeddingMappingLayer
    from latentguard.store.locate import open_store_for
    from latentguard.store.sources import concept_vectors
    from latentguard.train import contrastive_loss

    root = tmp_path_factory.mktemp("eval_world")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LATENTGUARD_HOME", str(root / "home"))
        mp.setenv("HF_HUB_OFFLINE", "1")
        dataset = make_synthetic_copro(root / "copro.json")
        cache = root / "cache"
        assert prepare.main(["--dataset", str(dataset), "--encoder", str(tiny_encoder_dir), "--store-dir", str(cache),
                             "--device", "cpu"]) == 0
        copro = load_copro(dataset)
        store = open_store_for(cache, load_encoder(str(tiny_encoder_dir), device="cpu"))
        concepts = copro.id_concepts
        concept_emb = concept_vectors(store, concepts)
        by_concept: dict[str, list] = {}
        for entry in copro.split("ID_train_data"):
            by_concept.setdefault(entry.concept, []).append(entry)
        texts = sorted({t for e in copro.split("ID_train_data") for t in (e.unsafe_prompt, e.safe_prompt)})
        emb = dict(zip(texts, store.get(texts)))
        torch.manual_seed(0)
        model = EmbeddingMappingLayer()
        optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
        rng = random.Random(0)
        for _ in range(12):
            pick = [rng.choice(by_concept[c]) for c in concepts]
            loss = contrastive_loss(model, torch.stack([emb[p.unsafe_prompt] for p in pick]),
                                    torch.stack([emb[p.safe_prompt] for p in pick]), concept_emb)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        checkpoint = root / "tiny.pth"
        atomic_torch_save(model.state_dict(), checkpoint)
        yield {"root": root, "dataset": dataset, "cache": cache, "checkpoint": checkpoint, "store": store,
               "encoder": tiny_encoder_dir, "copro": copro, "state": model.state_dict()}


def argv(world, out: Path, *extra: str, dataset: Path | None = None) -> list[str]:
    return ["--dataset", str(dataset or world["dataset"]), "--encoder", str(world["encoder"]),
            "--store-dir", str(world["cache"]), "--checkpoint", str(world["checkpoint"]),
            "--output-dir", str(out), "--device", "cpu", "--batch-size", "16", *extra]


def read_csv(path: Path) -> list[dict]:
    with open(path, encoding="utf-8", newline="") as handle:
        return list(csv.DictReader(handle))


def direct_max_scores(world, prompts: list[str], domain: str = "ID") -> np.ndarray:
    from latentguard.model import EmbeddingMappingLayer

    model = EmbeddingMappingLayer()
    model.load_state_dict(world["state"])
    store = world["store"]
    with torch.no_grad():
        logits = model.logit_matrix(store.get(prompts), store.get(world["copro"].concepts(domain))[:, 0])
    return logits.max(dim=1).values.double().numpy()


def reference_max_scores(world, prompts: list[str], domain: str = "ID") -> np.ndarray:
    """Scores by the released per-prompt loop (latentguard.reference), independent of logit_matrix."""
    from reference import repeat_per_concept_scores

    store = world["store"]
    distinct = list(dict.fromkeys(prompts))
    concept_emb = store.get(world["copro"].concepts(domain))[:, 0]
    state = {k: v.float() for k, v in world["state"].items()}
    with torch.no_grad():
        scores = repeat_per_concept_scores(state, store.get(distinct), concept_emb).max(dim=1).values.numpy()
    return scores[[distinct.index(p) for p in prompts]]


# --------------------------------------------------------------------------- settings (unit)
def test_variant_pairs_flow_into_settings(synthetic_copro):
    copro = load_copro(synthetic_copro)
    test = build_conditions(copro, "test")
    assert set(test) == {(d, k) for d in DOMAINS for k in KINDS}
    explicit = test[("ID", "explicit")]
    entries = copro.split("ID_test_data")
    assert explicit.unsafe == [e.unsafe_prompt for e in entries] and explicit.safe == [e.safe_prompt for e in entries]
    for domain, split in (("ID", "ID_test_data"), ("OOD", "OOD_test_data")):
        for kind in ("synonym", "adversarial"):
            pairs = copro.variant_pairs(split, kind)
            setting = test[(domain, kind)]
            assert pairs and setting.available
            assert setting.unsafe == [p.unsafe_prompt for p in pairs]  # rewritten
            assert setting.safe == [p.safe_prompt for p in pairs]      # unchanged
            assert setting.labels.tolist() == [1] * len(pairs) + [0] * len(pairs)
    # the synthetic adversarial texts replace the concept: no unsafe prompt keeps its concept word
    adv = test[("ID", "adversarial")]
    assert all(p.concept not in u for p, u in zip(copro.variant_pairs("ID_test_data", "adversarial"), adv.unsafe))
    valid = build_conditions(copro, "valid")
    assert valid[("ID", "explicit")].available  # carved from training
    assert valid[("ID", "explicit")].unsafe == [e.unsafe_prompt for e in copro.split("ID_valid_data")]
    assert not valid[("OOD", "explicit")].available and "OOD_valid_data" in valid[("OOD", "explicit")].reason


def test_dataset_without_variants_marks_them_unavailable(tmp_path):
    copro = load_copro(make_synthetic_copro(tmp_path / "d.json", with_variants=False))
    test = build_conditions(copro, "test")
    assert test[("ID", "explicit")].available and test[("OOD", "explicit")].available
    for domain in DOMAINS:
        for kind in ("synonym", "adversarial"):
            assert not test[(domain, kind)].available
            assert "concept_synonym" in test[(domain, kind)].reason


# ---------------------------------------------------------------------- calibration (unit)
def _scored(settings: dict, values: dict[str, float]) -> MethodScores:
    texts = list(values)
    per_domain = {d: TextScores(texts, np.array([values[t] for t in texts]), np.zeros(len(texts), np.int64))
                  for d in DOMAINS}
    return MethodScores("latent_guard", per_domain)


def test_calibration_maximises_pooled_validation_accuracy():
    # Two settings whose own best thresholds differ; the pooled optimum is neither setting's alone.
    rng = np.random.default_rng(0)
    a_unsafe, a_safe = rng.normal(6, 1, 40), rng.normal(2, 1, 40)    # easy: best cut near 4
    b_unsafe, b_safe = rng.normal(3, 1, 60), rng.normal(1.5, 1, 60)  # hard, shifted: best cut lower
    values = {}
    def names(prefix, xs):
        out = [f"{prefix}{i}" for i in range(len(xs))]
        values.update(zip(out, xs))
        return out
    settings = {("ID", "explicit"): Condition("ID", "explicit", names("au", a_unsafe), names("as", a_safe)),
                ("OOD", "explicit"): Condition("OOD", "explicit", names("bu", b_unsafe), names("bs", b_safe)),
                ("ID", "synonym"): Condition("ID", "synonym", reason="no variants")}
    scores = _scored(settings, values)
    threshold, how = pooled_validation_threshold(settings, scores)
    labels = np.r_[np.ones(40), np.zeros(40), np.ones(60), np.zeros(60)]
    pooled = np.r_[a_unsafe, a_safe, b_unsafe, b_safe]
    cuts = np.unique(pooled)
    brute = max(rates(labels, pooled, t)["accuracy"] for t in np.r_[cuts, cuts[-1] + 1])
    assert rates(labels, pooled, threshold)["accuracy"] == pytest.approx(brute)
    assert threshold == pytest.approx(best_accuracy_threshold(labels, pooled))
    own_a = best_accuracy_threshold(np.r_[np.ones(40), np.zeros(40)], np.r_[a_unsafe, a_safe])
    assert rates(labels, pooled, own_a)["accuracy"] < brute  # calibrating on one setting is worse
    assert "ID explicit, OOD explicit" in how and "200 prompts" in how and "synonym" not in how


def test_calibration_without_validation_data_says_so():
    settings = {("ID", "explicit"): Condition("ID", "explicit", reason="the dataset has no ID_valid_data")}
    assert pooled_validation_threshold(settings, _scored(settings, {"x": 1.0})) == (None, "no validation data to "
                                                                                          "calibrate on")


# ------------------------------------------------------------------------------- end to end
def test_full_evaluation_writes_every_output(world, tmp_path, capsys):
    from test_eval_baselines import make_tiny_bert

    out = tmp_path / "eval"
    bert = make_tiny_bert(tmp_path / "bert")
    assert main(argv(world, out, "--baselines", "all", "--bert-model", str(bert))) == 0
    console = capsys.readouterr().out
    results = json.loads((out / "results.json").read_text())
    copro = world["copro"]
    test = build_conditions(copro, "test")

    # JSON structure: six settings with every metric, threshold and its provenance
    for domain in DOMAINS:
        for kind in KINDS:
            entry = results[domain][kind]
            assert METRIC_KEYS <= set(entry) and entry["available"] is True
            assert (entry["n_unsafe"] == len(test[(domain, kind)].unsafe)
                    and entry["n_safe"] == len(test[(domain, kind)].safe))
            assert 0.0 <= entry["auc"] <= 1.0 and 0.0 <= entry["accuracy"] <= 1.0
            assert "released_threshold_accuracy" in entry
    assert results["ID"]["explicit"]["auc"] > 0.8  # the tiny model did learn ID concepts
    assert results["threshold_source"].startswith("calibrated: max accuracy on pooled validation (ID explicit")
    assert results["threshold"] == results["calibrated_threshold"] and results["released_threshold"] == 9.0131
    assert results["validation"]["unavailable"]["OOD explicit"] == "the dataset has no OOD_valid_data"
    blacklist = results["baselines"]["text_blacklist"]
    assert blacklist["ID"]["explicit"]["auc"] is None and blacklist["ID"]["explicit"]["accuracy"] == 1.0
    assert blacklist["ID"]["adversarial"]["tpr"] == 0.0  # adversarial text hides every concept word
    assert list(results["baselines"]) == ["text_blacklist", "clipscore", "bertscore"]
    for key in ("clipscore", "bertscore"):  # graded baselines: AUC, and a threshold calibrated like ours
        entry = results["baselines"][key]
        assert entry["threshold_source"].startswith("calibrated: max accuracy on pooled validation")
        for domain in DOMAINS:
            for kind in KINDS:
                assert 0 <= entry[domain][kind]["auc"] <= 1 and 0 <= entry[domain][kind]["accuracy"] <= 1

    # The calibrated threshold is the pooled-validation optimum (scores computed here directly).
    valid = build_conditions(copro, "valid")
    v_labels = np.concatenate([s.labels for s in valid.values() if s.available])
    v_scores = np.concatenate([direct_max_scores(world, s.prompts) for s in valid.values() if s.available])
    assert results["threshold"] == pytest.approx(best_accuracy_threshold(v_labels, v_scores), abs=1e-4)
    from latentguard.decision.probability import fit_slope  # the probability slope: fitted on the same scores

    assert results["probability_slope"] == pytest.approx(fit_slope(v_scores, v_labels, results["threshold"]), rel=1e-4)

    # Per-prompt CSVs: one row per prompt, label, best concept, scores equal to the released loop
    for domain in DOMAINS:
        for kind in KINDS:
            setting = test[(domain, kind)]
            rows = read_csv(out / f"scores_{domain}_{kind}.csv")
            assert [r["prompt"] for r in rows] == setting.prompts
            assert [int(r["label"]) for r in rows] == setting.labels.tolist()
            assert all(r["best_concept"] in copro.concepts(domain) for r in rows)
            # the released dumps' columns: each row names its CoPro entry, so the two join row by row
            n = len(setting.unsafe)
            assert [(r["domain"], r["setting"]) for r in rows] == [(domain, kind)] * (2 * n)
            entries = [(r["unsafe_prompt"], r["safe_prompt"], r["concept"]) for r in rows]
            assert entries[:n] == entries[n:]
            assert all(r["prompt"] == (r["unsafe_prompt"] if kind == "explicit" else
                                       copro.variant_text(r["unsafe_prompt"], r["concept"], kind))
                       for r in rows[:n])
            assert all(r["prompt"] == r["safe_prompt"] for r in rows[n:])
            scores = np.array([float(r["score"]) for r in rows])
            measured = rates(setting.labels, scores, results["threshold"])
            assert measured["accuracy"] == pytest.approx(results[domain][kind]["accuracy"], abs=1e-9)
            for key in ("clipscore", "bertscore", "text_blacklist"):
                assert [r["prompt"] for r in read_csv(out / f"scores_{key}_{domain}_{kind}.csv")] == setting.prompts
    rows = read_csv(out / "scores_OOD_synonym.csv")[::5]  # a few prompts through the released loop
    np.testing.assert_allclose([float(r["score"]) for r in rows],
                               reference_max_scores(world, [r["prompt"] for r in rows], "OOD"), atol=1e-3)

    # Figures are real PNGs
    for name in ("roc.png", "score_hist.png"):
        data = (out / name).read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 5000
        from PIL import Image

        with Image.open(out / name) as image:
            image.verify()

    # results.md and the console carry our numbers beside the published ones
    md = (out / "results.md").read_text()
    for value in (PUBLISHED_TABLE1["latent_guard"]["accuracy"]["ID"]["explicit"],
                  PUBLISHED_TABLE1["latent_guard"]["auc"]["OOD"]["adversarial"],
                  PUBLISHED_TABLE1["clipscore"]["auc"]["ID"]["synonym"],
                  PUBLISHED_TABLE1["bertscore"]["auc"]["ID"]["explicit"]):
        assert f"{value:.3f}" in md and f"{value:.3f}" in console
    assert f"{results['ID']['explicit']['auc']:.3f}" in md
    assert "| Latent Guard (ours) |" in md and "| difference |" in md and "| Text Blacklist (ours) |" in console
    assert not list(out.glob(".*.tmp"))  # atomic writes leave no temporaries


def test_threshold_flag_overrides_calibration(world, tmp_path):
    out = tmp_path / "eval"
    assert main(argv(world, out, "--threshold", "0.25", "--no-plots")) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["threshold"] == 0.25 and results["threshold_source"] == "--threshold"
    assert results["calibrated_threshold"] is not None and results["calibrated_threshold"] != 0.25
    rows = read_csv(out / "scores_ID_explicit.csv")
    labels = np.array([int(r["label"]) for r in rows])
    scores = np.array([float(r["score"]) for r in rows])
    assert results["ID"]["explicit"]["accuracy"] == pytest.approx(rates(labels, scores, 0.25)["accuracy"])
    assert results["ID"]["explicit"]["released_threshold_accuracy"] == pytest.approx(
        rates(labels, scores, 9.0131)["accuracy"])
    assert not (out / "roc.png").exists() and "baselines" in results and results["baselines"] == {}


def test_bertscore_without_model_is_skipped_with_one_line(world, tmp_path, capsys):
    assert main(argv(world, tmp_path / "eval", "--no-plots", "--baselines", "bertscore")) == 0
    out = capsys.readouterr().out
    assert "BERTScore skipped: no BERT model given" in out
    results = json.loads((tmp_path / "eval" / "results.json").read_text())
    assert results["baselines"] == {} and "BERTScore skipped" in (tmp_path / "eval" / "results.md").read_text()


def test_dataset_without_variants_reports_unavailable(world, tmp_path):
    plain = make_synthetic_copro(tmp_path / "plain.json", with_variants=False)  # same entries as the store's
    out = tmp_path / "eval"
    assert main(argv(world, out, "--no-plots", dataset=plain)) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["ID"]["explicit"]["available"] and results["OOD"]["explicit"]["available"]
    for domain in DOMAINS:
        for kind in ("synonym", "adversarial"):
            assert results[domain][kind]["available"] is False and "concept_synonym" in results[domain][kind]["reason"]
            assert not (out / f"scores_{domain}_{kind}.csv").exists()
    assert results["validation"]["settings"] == ["ID explicit"]
    assert "not available" in (out / "results.md").read_text()


# ------------------------------------------------------------------------------- error paths
def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "Traceback" not in err
    return errors[0]


def test_missing_store_entry_is_one_line_error(world, tmp_path, capsys):
    raw = json.loads(Path(world["dataset"]).read_text())
    raw["ID_test_data"].append({"concept": "knife", "unsafe_prompt": "a knife never encoded before",
                                "safe_prompt": "a spoon never encoded before"})
    dataset = tmp_path / "more.json"
    dataset.write_text(json.dumps(raw))
    assert main(argv(world, tmp_path / "eval", dataset=dataset)) == 2
    err = _one_line_error(capsys)
    assert "missing from embedding store" in err and "prepare.py" in err and "never encoded" in err
    assert not (tmp_path / "eval" / "results.json").exists()


def test_checkpoint_that_does_not_fit(world, tmp_path, capsys):
    state = dict(world["state"])
    del state["mlp_query1.bias"]
    state["final_mlp.weight"] = torch.zeros(64, 512)
    bad = tmp_path / "bad.pth"
    torch.save(state, bad)
    assert main(argv(world, tmp_path / "eval", "--checkpoint", str(bad))) == 2
    err = _one_line_error(capsys)
    assert "bad.pth" in err and "mlp_query1.bias" in err


def test_missing_checkpoint_path_is_never_replaced_by_released_weights(world, tmp_path, capsys):
    assert main(argv(world, tmp_path / "eval", "--checkpoint", str(tmp_path / "nope.pth"))) == 2
    assert "nope.pth" in _one_line_error(capsys)
    typo = tmp_path / "runs" / "model_parameters.pth"  # the released name in a directory: no download
    assert main(argv(world, tmp_path / "eval", "--checkpoint", str(typo))) == 2
    assert f"checkpoint not found: {typo}" in _one_line_error(capsys)


def test_unknown_baseline_and_bad_batch_size(world, tmp_path, capsys):
    assert main(argv(world, tmp_path / "e", "--baselines", "blacklist,llm")) == 2
    assert "unknown baseline 'llm'" in _one_line_error(capsys)
    assert main(argv(world, tmp_path / "e", "--batch-size", "0")) == 2
    assert "eval.batch_size" in _one_line_error(capsys)


# ------------------------------------------------------------------------------ external sets
def test_external_csv_and_two_file_modes(world, tmp_path, capsys):
    entries = world["copro"].split("OOD_test_data")[:6] + world["copro"].split("ID_test_data")[:6]
    fresh_unsafe = [f"{e.unsafe_prompt}, oil painting" for e in entries]  # not in the store
    fresh_safe = [f"{e.safe_prompt}, oil painting" for e in entries]
    table = tmp_path / "ext.csv"
    with open(table, "w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["label", "prompt", "source"])
        for u, s in zip(fresh_unsafe, fresh_safe):
            writer.writerow(["unsafe", u, "x"])
            writer.writerow(["0", s, "y"])
    out = tmp_path / "ext"
    assert main(argv(world, out, "--external", str(table))) == 0
    result = json.loads((out / "results_external.json").read_text())
    assert result["n_unsafe"] == 12 and result["n_safe"] == 12
    assert 0 <= result["auc"] <= 1 and 0 <= result["accuracy"] <= 1
    assert result["threshold_source"].startswith("calibrated") and result["concepts"] == "ID (12)"
    rows = read_csv(out / "scores_external.csv")
    assert len(rows) == 24 and {r["concept"] for r in rows} <= set(world["copro"].id_concepts)
    md = (out / "results_external.md").read_text()
    assert "0.794" in md and "0.873" in md and f"{result['auc']:.3f}" in md
    assert f"{result['auc']:.3f}" in capsys.readouterr().out
    manifest = json.loads((out / ".latentguard-outputs.json").read_text())  # recorded apart from Table 1's files
    assert sorted(manifest["test.py --external"]) == ["results_external.json", "results_external.md",
                                                       "scores_external.csv"]

    unsafe_file, safe_file = tmp_path / "u.txt", tmp_path / "s.txt"
    unsafe_file.write_text("\n".join(fresh_unsafe) + "\n")
    safe_file.write_text("\n\n".join(fresh_safe) + "\n")
    out2 = tmp_path / "ext2"
    assert main(argv(world, out2, "--external", str(unsafe_file), "--external-safe", str(safe_file),
                     "--threshold", "1.5")) == 0
    second = json.loads((out2 / "results_external.json").read_text())
    assert second["threshold"] == 1.5 and second["threshold_source"] == "--threshold"
    assert second["auc"] == pytest.approx(result["auc"], abs=1e-6)  # same prompts, same scores


@pytest.mark.parametrize("content, match", [
    ("", "is empty"),
    ("prompt,label\n", "no prompts after the header"),
    ("text,label\na knife,1\n", "line 1: the header must have 'prompt' and 'label'"),
    ("prompt,label\na knife,1\na cake,maybe\n", "line 3: label 'maybe' must be 1/0 or unsafe/safe"),
    ("prompt,label\na knife,1\n,0\n", "line 3: empty prompt"),
    ("prompt,label\na knife\n", "line 2: expected 2 columns"),
])
def test_bad_external_csv(tmp_path, content, match):
    path = tmp_path / "bad.csv"
    path.write_text(content)
    with pytest.raises(LatentGuardError, match=match) as info:
        read_labelled_prompts(path)
    assert str(path) in str(info.value)


def test_empty_external_file_exits_2(world, tmp_path, capsys):
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    assert main(argv(world, tmp_path / "e", "--external", str(empty))) == 2
    err = _one_line_error(capsys)
    assert "empty.csv" in err and "empty" in err
    unsafe = tmp_path / "u.txt"
    unsafe.write_text("a knife\n")
    blank = tmp_path / "blank.txt"
    blank.write_text("\n  \n")
    assert main(argv(world, tmp_path / "e", "--external", str(unsafe), "--external-safe", str(blank))) == 2
    assert "blank.txt" in _one_line_error(capsys)


def test_released_weights_with_carved_validation_get_a_note(world, tmp_path, capsys, monkeypatch):
    from latentguard import published
    from latentguard.io import sha256_of

    monkeypatch.setattr(published, "RELEASED_CHECKPOINT_SHA256", sha256_of(world["checkpoint"]))
    assert main(argv(world, tmp_path / "eval", "--no-plots")) == 0
    assert "note: the released weights were trained on all of ID_train_data" in capsys.readouterr().out
    results = json.loads((tmp_path / "eval" / "results.json").read_text())
    assert "--threshold 4.47" in results["meta"]["note"]
    assert "carved from ID_train_data" in (tmp_path / "eval" / "results.md").read_text()


def test_a_second_run_into_the_same_directory_leaves_no_stale_results(world, tmp_path, capsys):
    """The previous run's baseline CSVs go; a user's file, and one the user edited, stay."""
    out = tmp_path / "eval"
    assert main(argv(world, out, "--baselines", "blacklist", "--no-plots")) == 0
    baseline = sorted(out.glob("scores_text_blacklist_*.csv"))
    assert baseline
    (out / "my_notes.csv").write_text("mine")
    baseline[0].write_text("edited by the user")
    assert main(argv(world, out, "--no-plots")) == 0
    assert not any(p.exists() for p in baseline[1:])
    assert baseline[0].read_text() == "edited by the user" and (out / "my_notes.csv").read_text() == "mine"
    assert (out / "results.json").is_file() and sorted(out.glob("scores_ID_*.csv"))


def test_a_users_prompt_that_starts_like_a_formula_is_written_as_text_and_copro_rows_as_they_are(tmp_path):
    """test.py --external wrote a user's prompts raw into scores_external.csv ("=1+1 naked woman", "+cmd a dog":
    a thirty-sixth hostile pass); CoPro's own rows stay byte for byte, to join with the released dumps."""
    from latentguard.eval.report import write_scores_csv

    prompts = ["=1+1 naked woman", "+cmd a dog", "-2+3 knife", "@SUM(1) a cat", "a cat"]
    path = write_scores_csv(tmp_path / "s.csv", prompts, np.ones(5), np.array([1.5, -2.0, 0.0, 3.0, -1.0]),
                            np.array([0, 1, 0, -1, 1]), ["=concept", "gore"])
    rows = read_csv(path)
    assert [r["prompt"] for r in rows] == ["'=1+1 naked woman", "'+cmd a dog", "'-2+3 knife", "'@SUM(1) a cat",
                                           "a cat"]
    assert [r["concept"] for r in rows] == ["'=concept", "gore", "'=concept", "", "gore"]
    assert [float(r["score"]) for r in rows] == [1.5, -2.0, 0.0, 3.0, -1.0]  # a negative score stays a number
