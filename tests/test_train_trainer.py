"""Training: the fast loss equals the released all-pairs loss, training learns, runs are exactly
reproducible and resumable, checkpoints keep the released format, bad settings fail in one line."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from reference import naive_contrastive_loss
from synthetic import make_synthetic_copro

import main as main_mod
import prepare as prepare_mod
from latentguard.config import ModelConfig, load_config
from latentguard.data import load_copro
from latentguard.model import EmbeddingMappingLayer, expected_shapes, load_mapping_layer
from latentguard.store.sources import EncoderSource, concept_vectors
from latentguard.train import ConceptPairSampler, Trainer, build_trainer, contrastive_loss, explicit_auc, new_model
from latentguard.train.trainer import BEST_NAME, LAST_NAME, LOG_NAME, RESUME_NAME, WEIGHTS_NAME

CPU = torch.device("cpu")


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny models on a shared 2-core machine: one intra-op thread avoids stalls on busy cores."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# ------------------------------------------------------------------------------------ loss
def _random_problem(n: int, dtype=torch.float64, in_dim: int = 32, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = EmbeddingMappingLayer(in_dim, num_heads=4, head_dim=8, out_dim=16).to(dtype)
    u = torch.randn(n, 78, in_dim, generator=gen, dtype=dtype)
    s = torch.randn(n, 78, in_dim, generator=gen, dtype=dtype)
    c = torch.randn(n, in_dim, generator=gen, dtype=dtype)
    return model, u, s, c


@pytest.mark.parametrize("n", [1, 5, 8])
def test_loss_and_gradients_equal_naive_all_pairs_reference(n):
    model, u, s, c = _random_problem(n)
    params = list(model.parameters())
    fast = contrastive_loss(model, u, s, c)
    g_fast = torch.autograd.grad(fast, params)
    naive = naive_contrastive_loss(dict(model.named_parameters()), u, s, c, num_heads=4)
    g_naive = torch.autograd.grad(naive, params)
    assert fast.item() == pytest.approx(naive.item(), rel=1e-5)
    scale = max(g.abs().max().item() for g in g_naive)
    for (name, _), a, b in zip(model.named_parameters(), g_fast, g_naive):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-7 * scale), name


def test_loss_float32_matches_reference_and_depends_on_safe_prompts():
    model, u, s, c = _random_problem(6, dtype=torch.float32, seed=3)
    fast = contrastive_loss(model, u, s, c)
    naive = naive_contrastive_loss(dict(model.named_parameters()), u, s, c, num_heads=4)
    assert fast.item() == pytest.approx(naive.item(), rel=1e-5)
    # the safe prompts are negatives on both sides: changing them must change the loss
    assert contrastive_loss(model, u, s.flip(0) * 3, c).item() != pytest.approx(fast.item(), rel=1e-4)
    with pytest.raises(ValueError, match="one unsafe and one safe"):
        contrastive_loss(model, u[:5], s, c)


# -------------------------------------------------------------------------------- sampling
def test_sampler_visits_each_concept_once_per_epoch_with_its_own_pairs(tmp_path):
    copro = load_copro(make_synthetic_copro(tmp_path / "d.json"))
    train = copro.split("ID_train_data")
    sampler = ConceptPairSampler(train, copro.concepts("ID"))
    assert sampler.concepts == copro.concepts("ID") and len(sampler) == 12
    gen = torch.Generator().manual_seed(0)
    owner = {(t.unsafe_prompt, t.safe_prompt): t.concept for t in train}
    orders = []
    for _ in range(3):
        plan = sampler.plan_epoch(gen)
        sizes, seen = [], []
        for b in range(sampler.num_batches(5)):
            concepts, unsafe, safe = sampler.batch(plan, b, 5)
            sizes.append(len(unsafe))
            for c, pair in zip(concepts.tolist(), zip(unsafe, safe)):
                assert owner[pair] == sampler.concepts[c]
            seen += concepts.tolist()
        assert sizes == [5, 5, 2]  # the last batch is smaller
        assert sorted(seen) == list(range(12))
        orders.append(seen)
    assert orders[0] != orders[1]  # reshuffled every epoch
    # concepts without training data are not items
    only = ConceptPairSampler(train[:3], ["zzz"] + copro.concepts("ID"))
    assert only.concepts == [train[0].concept]


# ---------------------------------------------------------------------- store and runs
@pytest.fixture(scope="module")
def prepared(tmp_path_factory, tiny_encoder_dir):
    """Synthetic CoPro + its embedding store, built once with prepare.py and the tiny encoder."""
    root = tmp_path_factory.mktemp("train_data")
    dataset = make_synthetic_copro(root / "CoPro_synthetic.json")
    cache = root / "cache"
    assert prepare_mod.main(["--dataset", str(dataset), "--encoder", str(tiny_encoder_dir),
                             "--store-dir", str(cache), "--device", "cpu"]) == 0
    return {"dataset": dataset, "cache": cache, "encoder": tiny_encoder_dir}


def _argv(prepared, out: Path, *extra: str) -> list[str]:
    return ["--dataset", str(prepared["dataset"]), "--encoder", str(prepared["encoder"]),
            "--store-dir", str(prepared["cache"]), "--output-dir", str(out), "--device", "cpu",
            "--no-progress", *extra]


@pytest.fixture(scope="module")
def store_source(prepared, tiny_encoder):
    from latentguard.store.locate import open_store_for

    return open_store_for(prepared["cache"], tiny_encoder)


def _trainer(prepared, source, out: Path, on_step=None, resume=None, **train) -> Trainer:
    overrides = {"train.epochs": 4, "train.batch_size": 5, "train.lr": 3e-3, "train.val_every": 2}
    overrides.update({f"train.{k}": v for k, v in train.items()})
    cfg = load_config(None, overrides)
    copro = load_copro(prepared["dataset"])
    return build_trainer(cfg, copro, source, output_dir=out, device=CPU, resume=resume, progress=False,
                         on_step=on_step)


def test_main_training_lifts_explicit_id_test_auc(prepared, store_source, tmp_path, capsys):
    copro = load_copro(prepared["dataset"])
    test = copro.split("ID_test_data")
    concepts = concept_vectors(store_source, copro.concepts("ID"))
    untrained = explicit_auc(new_model(768, ModelConfig(num_heads=16, head_dim=32, out_dim=128), 0),
                             store_source, test, concepts)
    out = tmp_path / "run"
    assert main_mod.main(_argv(prepared, out, "--epochs", "15", "--lr", "3e-3", "--val-every", "5")) == 0
    printed = capsys.readouterr().out
    assert "best val AUC" in printed and str(out / WEIGHTS_NAME) in printed
    trained = explicit_auc(load_mapping_layer(out / WEIGHTS_NAME, in_dim=768), store_source, test, concepts)
    assert untrained < 0.75
    assert trained >= 0.95
    # outputs: log with one record per step and the validations, resolved config
    records = [json.loads(line) for line in (out / LOG_NAME).read_text().splitlines()]
    steps = [r for r in records if "loss" in r]
    assert [r["step"] for r in steps] == list(range(1, 16))  # 12 concepts -> 1 step per epoch
    assert {"step", "epoch", "loss", "lr", "steps_per_s"} <= set(steps[0])
    assert [r["epoch"] for r in records if "val_auc" in r] == [5, 10, 15]
    saved_cfg = (out / "config.yaml").read_text()
    assert "epochs: 15" in saved_cfg and "lr: 0.003" in saved_cfg
    # the saved (final) weights get their own threshold: max accuracy on the validation split, found by inference
    from latentguard.decision.metrics import best_accuracy_threshold
    from latentguard.decision.threshold import resolve_threshold
    from latentguard.train.monitor import max_concept_scores

    valid = copro.split("ID_valid_data")
    unsafe, safe = [t.unsafe_prompt for t in valid], [t.safe_prompt for t in valid]
    scores = max_concept_scores(load_mapping_layer(out / WEIGHTS_NAME, in_dim=768), store_source, unsafe + safe,
                                concepts)
    expected = best_accuracy_threshold([1] * len(unsafe) + [0] * len(safe), scores)
    assert "threshold:" in printed and (out / "model_parameters.threshold.yaml").is_file()
    found = resolve_threshold("auto", out / WEIGHTS_NAME, encoder_identity=store_source.identity)
    assert found == pytest.approx(expected, abs=1e-4) and found != pytest.approx(9.0131)
    # ... and the probability slope fitted by maximum likelihood on the same validation scores, in the same record
    from latentguard.decision.probability import fit_slope
    from latentguard.decision.threshold import read_calibration

    record = read_calibration(out / "model_parameters.threshold.yaml")
    assert record.slope == pytest.approx(fit_slope(scores, [1] * len(unsafe) + [0] * len(safe), record.threshold),
                                         rel=1e-6)


def test_default_keeps_the_final_weights_and_keep_best_adds_best_pth(prepared, store_source, tmp_path, capsys):
    """As released: model_parameters.pth = the last epoch's weights; best-on-validation is opt-in."""
    from latentguard.decision.threshold import calibration_path, read_calibration

    plain = tmp_path / "plain"
    assert main_mod.main(_argv(prepared, plain, "--epochs", "6", "--lr", "3e-3", "--val-every", "2")) == 0
    _assert_equal_states(torch.load(plain / WEIGHTS_NAME, weights_only=True),
                         torch.load(plain / LAST_NAME, weights_only=True))
    assert not (plain / BEST_NAME).exists() and calibration_path(plain / WEIGHTS_NAME).is_file()
    capsys.readouterr()
    best = tmp_path / "best"
    assert main_mod.main(_argv(prepared, best, "--epochs", "6", "--lr", "3e-3", "--val-every", "2",
                               "--keep-best")) == 0
    printed = capsys.readouterr().out
    _assert_equal_states(torch.load(best / WEIGHTS_NAME, weights_only=True),
                         torch.load(plain / WEIGHTS_NAME, weights_only=True))  # keep_best changes no weights
    records = [json.loads(line) for line in (best / LOG_NAME).read_text().splitlines() if "val_auc" in line]
    best_epoch = max(records, key=lambda r: r["val_auc"])["epoch"]
    assert f"best weights: {best / BEST_NAME} (epoch {best_epoch})" in printed
    # each weights file has its own threshold beside it, and they differ when the weights do
    assert read_calibration(calibration_path(best / BEST_NAME)) is not None
    if best_epoch != 6:
        assert read_calibration(calibration_path(best / BEST_NAME)).threshold != \
            read_calibration(calibration_path(best / WEIGHTS_NAME)).threshold


def test_checkpoints_keep_the_released_format(prepared, store_source, tmp_path):
    out = tmp_path / "run"
    _trainer(prepared, store_source, out, epochs=2).run()
    expected = expected_shapes()
    for name in (WEIGHTS_NAME, LAST_NAME):
        state = torch.load(out / name, map_location="cpu", weights_only=True)
        assert type(state) is dict and set(state) == set(expected)
        assert all(tuple(v.shape) == expected[k] and v.device.type == "cpu" for k, v in state.items())
        EmbeddingMappingLayer().load_state_dict(state, strict=True)
        load_mapping_layer(out / name, in_dim=768)
    # the resume state is also readable as a checkpoint ({"model": state_dict, ...})
    resumed = load_mapping_layer(out / RESUME_NAME, in_dim=768)
    last = torch.load(out / LAST_NAME, weights_only=True)
    assert all(torch.equal(resumed.state_dict()[k], last[k]) for k in last)


def _final_state(out: Path) -> dict[str, torch.Tensor]:
    return torch.load(out / LAST_NAME, map_location="cpu", weights_only=True)


def _assert_equal_states(a, b) -> None:
    assert set(a) == set(b)
    for k in a:
        assert torch.equal(a[k], b[k]), k


@pytest.mark.parametrize("stop_at", [5, 6])  # mid-epoch, and at an epoch end with validation pending
def test_interrupted_then_resumed_equals_uninterrupted(prepared, store_source, tmp_path, stop_at):
    straight = tmp_path / "straight"
    _trainer(prepared, store_source, straight).run()  # 4 epochs x 3 steps

    def stop(trainer):
        if trainer.global_step == stop_at:
            trainer.request_stop()

    broken = tmp_path / "broken"
    with pytest.raises(KeyboardInterrupt):
        _trainer(prepared, store_source, broken, on_step=stop).run()
    state = torch.load(broken / RESUME_NAME, weights_only=True)
    assert state["global_step"] == stop_at
    result = _trainer(prepared, store_source, broken).run()  # same command again resumes
    assert result.resumed_from == stop_at and result.steps == 12
    _assert_equal_states(_final_state(straight), _final_state(broken))
    _assert_equal_states(torch.load(straight / WEIGHTS_NAME, weights_only=True),
                         torch.load(broken / WEIGHTS_NAME, weights_only=True))
    records = [json.loads(line) for line in (broken / LOG_NAME).read_text().splitlines()]
    assert [r["step"] for r in records if "loss" in r] == list(range(1, 13))
    assert [r["epoch"] for r in records if "val_auc" in r] == [2, 4]


def test_ctrl_c_saves_and_the_same_command_resumes(prepared, store_source, tmp_path, capsys, monkeypatch):
    import os
    import signal

    import latentguard.train.trainer as train_mod

    straight = tmp_path / "straight"
    _trainer(prepared, store_source, straight).run()
    real_build = train_mod.build_trainer

    def build_with_ctrl_c(*args, **kwargs):
        def press(trainer):
            if trainer.global_step == 4:
                os.kill(os.getpid(), signal.SIGINT)  # what Ctrl-C sends; handled after this step
        return real_build(*args, **kwargs, on_step=press)

    argv = _argv(prepared, tmp_path / "run", "--epochs", "4", "--batch-size", "5", "--lr", "3e-3", "--val-every", "2")
    monkeypatch.setattr(train_mod, "build_trainer", build_with_ctrl_c)
    handler_before = signal.getsignal(signal.SIGINT)  # SIG_IGN when pytest runs as a background job
    assert main_mod.main(argv) == 130
    assert "run the same command again to resume" in capsys.readouterr().err
    assert torch.load(tmp_path / "run" / RESUME_NAME, weights_only=True)["global_step"] == 4
    assert signal.getsignal(signal.SIGINT) is handler_before  # handler restored
    monkeypatch.setattr(train_mod, "build_trainer", real_build)
    assert main_mod.main(argv) == 0
    _assert_equal_states(_final_state(straight), _final_state(tmp_path / "run"))


def test_cli_resume_extends_a_finished_run_exactly(prepared, tmp_path, capsys):
    straight, split = tmp_path / "straight", tmp_path / "split"
    common = ["--batch-size", "5", "--lr", "3e-3", "--val-every", "2"]
    assert main_mod.main(_argv(prepared, straight, *common, "--epochs", "4")) == 0
    assert main_mod.main(_argv(prepared, split, *common, "--epochs", "2")) == 0
    assert main_mod.main(_argv(prepared, split, *common, "--epochs", "4", "--resume")) == 0
    assert "resuming from" in capsys.readouterr().out
    _assert_equal_states(_final_state(straight), _final_state(split))
    # a finished run re-run with the same epochs does nothing and says so
    assert main_mod.main(_argv(prepared, split, *common, "--epochs", "4")) == 0
    assert "already trained for 4 epochs" in capsys.readouterr().out
    # resuming with other settings is refused in one line
    assert main_mod.main(_argv(prepared, split, "--batch-size", "5", "--lr", "1e-2", "--epochs", "6")) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and "lr 0.003 -> 0.01" in err and err.count("\n") == 1


def test_seed_fixes_the_result(prepared, store_source, tmp_path):
    a = _trainer(prepared, store_source, tmp_path / "a", epochs=2, seed=7)
    b = _trainer(prepared, store_source, tmp_path / "b", epochs=2, seed=7)
    c = _trainer(prepared, store_source, tmp_path / "c", epochs=2, seed=8)
    for t in (a, b, c):
        t.run()
    _assert_equal_states(_final_state(tmp_path / "a"), _final_state(tmp_path / "b"))
    weights = sorted(p.name for p in (tmp_path / "a").glob("*.pth"))
    assert weights and all((tmp_path / "a" / n).read_bytes() == (tmp_path / "b" / n).read_bytes() for n in weights)
    other = _final_state(tmp_path / "c")
    assert not torch.equal(other["x1_to_key.weight"], _final_state(tmp_path / "a")["x1_to_key.weight"])


def test_no_store_trains_from_the_encoder(prepared, tiny_encoder, tmp_path):
    out = tmp_path / "nc"
    assert main_mod.main(_argv(prepared, out, "--no-store", "--epochs", "2", "--val-every", "1")) == 0
    assert (out / WEIGHTS_NAME).is_file()
    # and the training code accepts any EmbeddingSource
    source = EncoderSource(tiny_encoder, batch_size=32)
    result = _trainer(prepared, source, tmp_path / "direct", epochs=1).run()
    assert result.steps == 3 and result.best_auc is not None


# ------------------------------------------------------------------------------ bad input
@pytest.mark.parametrize("extra, message", [
    (["--lr", "-1"], "'train.lr' must be a positive number"),
    (["--epochs", "0"], "'train.epochs' must be a positive number"),
    (["--batch-size", "0"], "'train.batch_size' must be a positive number"),
    (["--seed", "-3"], "'train.seed' must be an integer >= 0"),
    (["--device", "tpu9"], "unknown device"),
])
def test_bad_flags_fail_in_one_line(prepared, tmp_path, capsys, extra, message):
    assert main_mod.main(_argv(prepared, tmp_path / "r", *extra)) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert not (tmp_path / "r" / RESUME_NAME).exists()


@pytest.mark.parametrize("yaml_text, message", [
    ("train:\n  lrr: 0.1\n", "unknown config key 'train.lrr'"),
    ("train:\n  batch_size: big\n", "'train.batch_size' must be a positive number"),
    ("train:\n  epochs: 2.5\n", "'train.epochs' must be an integer"),
    ("train:\n  save_every: 0\n", "'train.save_every' must be a positive"),
    ("train: [1, 2\n", "not valid YAML at line"),
])
def test_bad_config_files_fail_in_one_line(prepared, tmp_path, capsys, yaml_text, message):
    config = tmp_path / "bad.yaml"
    config.write_text(yaml_text)
    assert main_mod.main(["--config", str(config), *_argv(prepared, tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert message in err and str(config) in err and err.count("\n") == 1


@pytest.mark.parametrize("other_store", [False, True])  # empty cache dir / only another encoder's store
def test_missing_store_tells_how_to_build_it(prepared, tiny_encoder_other, tmp_path, capsys, other_store):
    from latentguard.store.locate import open_store_for

    cache = tmp_path / "cache"
    if other_store:
        open_store_for(cache, tiny_encoder_other, create=True)
    argv = _argv(prepared, tmp_path / "r")
    argv[argv.index("--store-dir") + 1] = str(cache)
    assert main_mod.main(argv) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]  # (loading the encoder may print a bar first)
    assert last.startswith("error: no embedding store")
    assert "python prepare.py" in last and f"--store-dir {cache}" in last and "--no-store" in last


def test_store_missing_texts_is_reported(prepared, tmp_path, capsys):
    bigger = make_synthetic_copro(tmp_path / "more.json", n_id=14)  # two concepts the store lacks
    argv = _argv(prepared, tmp_path / "r")
    argv[argv.index("--dataset") + 1] = str(bigger)
    assert main_mod.main(argv) == 2
    err = capsys.readouterr().err
    assert "lacks" in err and "python prepare.py" in err and err.count("\n") == 1


def test_resume_without_state_is_an_error(prepared, tmp_path, capsys):
    assert main_mod.main(_argv(prepared, tmp_path / "r", "--resume")) == 2
    assert "no resume state" in capsys.readouterr().err


def test_resuming_on_a_changed_validation_split_is_refused_naming_the_file(prepared, tmp_path, capsys):
    """best.pth compares AUCs on the validation split: a resume on another one (training pairs unchanged) mixes."""
    raw = json.loads(Path(prepared["dataset"]).read_text(encoding="utf-8"))
    raw["ID_valid_data"], raw["ID_train_data"] = raw["ID_train_data"][:6], raw["ID_train_data"][6:]
    data = tmp_path / "copro.json"
    data.write_text(json.dumps(raw), encoding="utf-8")
    argv = _argv(prepared, tmp_path / "r", "--batch-size", "5", "--val-every", "1", "--keep-best")
    argv[argv.index("--dataset") + 1] = str(data)
    assert main_mod.main([*argv, "--epochs", "1"]) == 0
    raw["ID_valid_data"] = raw["ID_valid_data"][1:]  # every text still in the store
    data.write_text(json.dumps(raw), encoding="utf-8")
    capsys.readouterr()
    assert main_mod.main([*argv, "--epochs", "2"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"trained on other data: {data} is not the file" in err and "valid_data" in err
    assert "new --output-dir" in err and "train_data" not in err, err


# -------------------------------------------------------------------------- seed aggregation
def _fake_results(run: Path, auc: float, acc: float, unavailable: str | None = None) -> None:
    body = {split: {setting: {"available": True, "auc": auc, "accuracy": acc}
                    for setting in ("explicit", "synonym", "adversarial")} for split in ("ID", "OOD")}
    if unavailable:
        body["OOD"][unavailable] = {"available": False, "reason": "no variants"}
    body["threshold"] = 4.5
    (run / "eval").mkdir(parents=True)
    (run / "eval" / "results.json").write_text(json.dumps(body))
    (run / LOG_NAME).write_text(json.dumps({"step": 10, "epoch": 1, "val_auc": auc - 0.01}) + "\n")


def test_aggregate_seeds_reports_mean_std_beside_the_paper(tmp_path, capsys, monkeypatch):
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parent.parent / "scripts"))
    import aggregate_seeds

    from latentguard.published import PUBLISHED_TABLE1

    runs = [tmp_path / "seed0", tmp_path / "seed1"]
    _fake_results(runs[0], 0.90, 0.80, unavailable="synonym")
    _fake_results(runs[1], 0.94, 0.86)
    out = tmp_path / "summary"
    assert aggregate_seeds.main([str(r) for r in runs] + ["--output-dir", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    cell = summary["table1"]["ID/explicit"]["auc"]
    assert cell["mean"] == pytest.approx(0.92) and cell["std"] == pytest.approx(0.0282843, rel=1e-4)
    assert cell["paper"] == PUBLISHED_TABLE1["latent_guard"]["auc"]["ID"]["explicit"] == 0.985
    assert cell["diff"] == pytest.approx(0.92 - 0.985)
    assert summary["table1"]["OOD/synonym"]["accuracy"]["mean"] == pytest.approx(0.86)  # one seed had none
    assert summary["best_val_auc"][str(runs[1])] == pytest.approx(0.93)
    md = (out / "summary.md").read_text()
    assert "| ID | explicit | 0.920 +- 0.028 | 0.985 | -0.065 |" in md
    # a run without results is a one-line error that says how to make them
    capsys.readouterr()
    assert aggregate_seeds.main([str(tmp_path / "nothing"), "--output-dir", str(out)]) == 2
    err = capsys.readouterr().err
    assert "test.py --checkpoint" in err and err.count("\n") == 1

