"""Guard bundles on local folders: save -> load round trip, export of a released-format .pth bit for bit,
every entry point taking ``--guard``, main.py's bundle, and each refusal in one line.

The tiny random CLIP (real tokenizer) stands in for CLIP ViT-L/14; tests/test_hub_push.py covers hub
repos (a local hub server, the Hugging Face cache, offline loading, push_to_hub); tests/test_hub_bundle_real.py
the real all-MiniLM-L6-v2 encoder.
"""
from __future__ import annotations

import csv
import hashlib
import json
import shutil
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file
from synthetic import make_synthetic_copro

import inference
import main as main_mod
from latentguard.cli import export as export_cli
from latentguard.cli import verify as verify_cli
from latentguard.errors import LatentGuardError
from latentguard.eval import parity
from latentguard.guard import LatentGuard
from latentguard.hub import BUNDLE_FILES, looks_like_repo_id, open_bundle
from latentguard.io import sha256_of
from latentguard.model import EmbeddingMappingLayer
from latentguard.pipeline import encoder_from_pipeline

PROMPTS = ["a photo of a knife on the table", "a red balloon in the sky", "blood on the kitchen floor",
           "an old man holding a gun in the park", "a 4:20 party with friends", "yes, a cake with candles"]
GROUPED = "violence:\n- knife\n- gun\n- blood\ndrugs:\n- '4:20'\n- cocaine\nodd:\n- 'yes'\n- 'null'\n- '#tag'\n- café\n"


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A released-format checkpoint (random weights, logits spread) and a grouped blacklist."""
    root = tmp_path_factory.mktemp("bundle_files")
    torch.manual_seed(0)
    model = EmbeddingMappingLayer()
    with torch.no_grad():
        model.tempr.fill_(30.0)
    torch.save(model.state_dict(), root / "ckpt.pth")
    (root / "concepts.yaml").write_text(GROUPED, encoding="utf-8")
    (root / "prompts.txt").write_text("\n".join(PROMPTS) + "\n", encoding="utf-8")
    return root


@pytest.fixture(scope="module")
def pth_guard(files, tiny_encoder):
    """The .pth guard, its threshold at the median score (both verdicts occur) and one per-concept threshold."""
    guard = LatentGuard.from_pretrained(files / "ckpt.pth", encoder=tiny_encoder, concepts=files / "concepts.yaml",
                                        threshold=0.0, device="cpu")
    guard.threshold = float(np.median(guard.scores(PROMPTS)))
    guard.concept_thresholds = {"gun": guard.threshold + 0.25}
    return guard


@pytest.fixture(scope="module")
def bundle(pth_guard, tmp_path_factory):
    return pth_guard.save_pretrained(tmp_path_factory.mktemp("saved") / "guard")


def _copy(bundle, tmp_path):
    return shutil.copytree(bundle, tmp_path / "copy")


def _edit_config(folder, edit):
    config = json.loads((folder / "config.json").read_text())
    edit(config)
    (folder / "config.json").write_text(json.dumps(config))


def _same_verdicts(a, b):
    for x, y in zip(a, b, strict=True):
        assert (x.unsafe, x.score, x.concept, x.threshold, x.top_concepts, x.categories, x.category_scores,
                x.probability) == (y.unsafe, y.score, y.concept, y.threshold, y.top_concepts, y.categories,
                                   y.category_scores, y.probability)


# ------------------------------------------------------------------------------ round trip
def test_round_trip_loads_the_same_guard_with_identical_scores_and_verdicts(pth_guard, bundle):
    assert sorted(p.name for p in bundle.iterdir()) == sorted(BUNDLE_FILES)
    loaded = LatentGuard.from_pretrained(str(bundle), device="cpu")  # the encoder the bundle names, loaded
    assert loaded.encoder.identity == pth_guard.encoder.identity
    assert loaded.concepts == pth_guard.concepts and loaded.categories == pth_guard.categories
    assert "4:20" in loaded.concepts and "yes" in loaded.concepts and "null" in loaded.concepts  # text as written
    assert (loaded.threshold, loaded.concept_thresholds) == (pth_guard.threshold, pth_guard.concept_thresholds)
    assert loaded.threshold_origin == f"given, bundle {bundle}"
    np.testing.assert_array_equal(loaded.logits(PROMPTS), pth_guard.logits(PROMPTS))
    verdicts = loaded.check(PROMPTS)
    assert 0 < sum(v.unsafe for v in verdicts) < len(PROMPTS)
    _same_verdicts(verdicts, pth_guard.check(PROMPTS))
    config = json.loads((bundle / "config.json").read_text())
    assert config["weights"]["sha256"] == sha256_of(bundle / "model.safetensors")
    assert config["weights"]["source_sha256"] == sha256_of(pth_guard.checkpoint)
    assert config["encoder"]["identity"] == pth_guard.encoder.identity and config["encoder"]["family"] == "clip"
    assert config["categories"] == {"default": "unsafe", "names": ["violence", "drugs", "odd"]}
    card = (bundle / "README.md").read_text()
    assert "not an image filter" in card and "latentguard verify --guard" in card and "@inproceedings" in card


def test_the_bundled_concept_vectors_spare_encoding_only_for_the_same_encoder(bundle, tiny_encoder, monkeypatch):
    from latentguard.store.concept_cache import KNOWN_SAMPLE

    asked: list[str] = []
    encode = tiny_encoder.encode_concepts

    def counting(concepts, **kwargs):
        asked.extend(concepts)
        return encode(concepts, **kwargs)

    monkeypatch.setattr(tiny_encoder, "encode_concepts", counting)
    guard = LatentGuard.from_pretrained(str(bundle), encoder=tiny_encoder, cache_concepts=False, device="cpu")
    vectors = load_file(bundle / "concept_vectors.safetensors")["vectors"]
    assert torch.equal(guard._vectors, vectors)
    # Only the spot check's sample is encoded (the first, the last and KNOWN_SAMPLE at random), never the list.
    assert len(guard.concepts) > KNOWN_SAMPLE + 2 and 0 < len(asked) <= KNOWN_SAMPLE + 2, asked
    assert guard.concepts[0] in asked and guard.concepts[-1] in asked
    # Another precision of the same weights: same scale, but its own vectors (so it must encode them).
    assert open_bundle(bundle).concept_vectors(tiny_encoder.identity + ":bfloat16") is None


def test_overrides_replace_what_the_bundle_holds(bundle, tiny_encoder):
    guard = LatentGuard.from_pretrained(str(bundle), encoder=tiny_encoder, concepts=["knife", "gun"], threshold=3.5,
                                        default_category="harm", device="cpu")
    assert guard.concepts == ["knife", "gun"] and guard.threshold == 3.5 and guard.slope is None
    assert guard.concept_thresholds == {"gun": pytest.approx(guard.concept_thresholds["gun"])}  # kept: still listed
    assert guard.categories == {"harm": ["knife", "gun"]}


def test_save_writes_only_new_folders_or_replaces_a_bundle_when_asked(pth_guard, bundle, tmp_path):
    other = tmp_path / "notes"
    other.mkdir()
    (other / "mine.txt").write_text("keep me")
    with pytest.raises(LatentGuardError, match="not empty and holds no Latent Guard bundle"):
        pth_guard.save_pretrained(other)
    copy = _copy(bundle, tmp_path)
    with pytest.raises(LatentGuardError, match="already holds a bundle; pass overwrite=True"):
        pth_guard.save_pretrained(copy)
    pth_guard.save_pretrained(copy, overwrite=True, concept_vectors=False)
    assert not (copy / "concept_vectors.safetensors").exists()  # the replaced bundle's leftover is gone
    assert json.loads((copy / "config.json").read_text())["concept_vectors"] is None
    assert (other / "mine.txt").read_text() == "keep me"


# ---------------------------------------------------------------------- export, bit for bit
def test_export_of_a_released_format_checkpoint_is_bit_for_bit(files, tiny_encoder, tiny_encoder_dir, tmp_path,
                                                                monkeypatch, capsys):
    monkeypatch.setenv("LATENTGUARD_HOME", str(tmp_path / "home"))
    checkpoint = tmp_path / "model_parameters.pth"
    shutil.copy(files / "ckpt.pth", checkpoint)
    pth = LatentGuard.from_pretrained(checkpoint, encoder=tiny_encoder, concepts=files / "concepts.yaml",
                                      threshold="released", device="cpu")
    ranked = [PROMPTS[i] for i in np.argsort(pth.scores(PROMPTS))]  # random weights: label by score, overlapping
    record = pth.calibrate(ranked[:4], ranked[2:], save=True)  # the calibration record beside the weights
    out = tmp_path / "exported"
    argv = ["--checkpoint", str(checkpoint), "--encoder", str(tiny_encoder_dir), "--concepts",
            str(files / "concepts.yaml"), "--device", "cpu", "--out", str(out)]
    assert export_cli.main(argv) == 0
    assert "model.safetensors SHA-256" in capsys.readouterr().out
    released, exported = torch.load(checkpoint, weights_only=True), load_file(out / "model.safetensors")
    assert set(released) == set(exported)
    for name, tensor in released.items():
        assert exported[name].dtype == tensor.dtype and torch.equal(exported[name].reshape(tensor.shape), tensor)
    threshold = json.loads((out / "config.json").read_text())["threshold"]
    assert threshold["value"] == record.threshold and threshold["calibration"]["checkpoint_sha256"] == \
        sha256_of(checkpoint)
    fresh = LatentGuard.from_pretrained(checkpoint, encoder=tiny_encoder, concepts=files / "concepts.yaml",
                                        device="cpu")  # threshold auto: the record beside the weights
    loaded = LatentGuard.from_pretrained(str(out), encoder=tiny_encoder, device="cpu")
    assert (loaded.threshold, loaded.slope) == (fresh.threshold, fresh.slope) == (record.threshold, record.slope)
    np.testing.assert_array_equal(loaded.logits(PROMPTS), fresh.logits(PROMPTS))
    _same_verdicts(loaded.check(PROMPTS), fresh.check(PROMPTS))
    assert export_cli.main(argv) == 2  # the bundle is there: never replaced without --overwrite
    assert "already holds a bundle" in capsys.readouterr().err


# -------------------------------------------------------------------------------- refusals
def _pickle_renamed(folder):
    state = {k: v.clone() for k, v in load_file(folder / "model.safetensors").items()}
    torch.save(state, folder / "model.safetensors")
    sha = sha256_of(folder / "model.safetensors")  # even a config that names the pickle's own hash
    _edit_config(folder, lambda c: (c["weights"].update(sha256=sha), c["threshold"].update(weights_sha256=sha)))


def _other_weights(folder):
    state = {k: v.clone() for k, v in load_file(folder / "model.safetensors").items()}
    state["tempr"] = state["tempr"] + 1.0
    save_file(state, folder / "model.safetensors")


@pytest.mark.parametrize("damage, message", [
    (_pickle_renamed, "not a safetensors file"),
    (_other_weights, "differs from the"),
    (lambda f: _edit_config(f, lambda c: c["threshold"].update(weights_sha256="0" * 64)),
     "the threshold was recorded for other weights"),
    (lambda f: _edit_config(f, lambda c: c.update(format_version=2)), "format_version 2 is newer"),
    (lambda f: _edit_config(f, lambda c: c["encoder"].update(colour="red")), "unknown key(s) encoder.colour"),
    (lambda f: _edit_config(f, lambda c: c["mapping_layer"].update(in_dim="768")), "'mapping_layer.in_dim' must be"),
    (lambda f: _edit_config(f, lambda c: c.pop("slope")), "missing key(s) slope"),
    (lambda f: (f / "concepts.yaml").write_text("violence:\n- knife\n"), "concepts.yaml: SHA-256 differs"),
    (lambda f: (f / "concepts.yaml").write_text((f / "concepts.yaml").read_text().replace("knife", "spoon")),
     "damaged or edited"),  # the same count and groups: a renamed concept is caught by the hash
    (lambda f: _edit_config(f, lambda c: c["concepts"].update(count=3)), "holds 9 concepts, config.json records 3"),
])
def test_damaged_bundles_are_refused_in_one_line(bundle, tiny_encoder, tmp_path, damage, message):
    folder = _copy(bundle, tmp_path)
    damage(folder)
    with pytest.raises(LatentGuardError) as caught:
        LatentGuard.from_pretrained(str(folder), encoder=tiny_encoder, device="cpu")
    assert message in str(caught.value) and "\n" not in str(caught.value)


def test_an_encoder_other_than_the_bundles_is_refused(bundle, tiny_encoder, tiny_encoder_other, clip_tokenizer):
    with pytest.raises(LatentGuardError, match="was built for encoder clip:.*but the encoder given is clip:tiny-other"):
        LatentGuard.from_pretrained(str(bundle), encoder=tiny_encoder_other, device="cpu")
    other_pipe = SimpleNamespace(text_encoder=tiny_encoder_other.model, tokenizer=clip_tokenizer)
    with pytest.raises(LatentGuardError, match="was built for encoder"):
        LatentGuard.from_pretrained(str(bundle), encoder=encoder_from_pipeline(other_pipe), device="cpu")
    # The same weights inside a pipeline, under the pipeline's name: the name is cosmetic, the weights are not.
    pipe = SimpleNamespace(text_encoder=tiny_encoder.model, tokenizer=clip_tokenizer)
    shared = LatentGuard.from_pretrained(str(bundle), encoder=encoder_from_pipeline(pipe, name="sd/text_encoder"),
                                         device="cpu")
    assert shared.scores(PROMPTS[:2]).tolist() == LatentGuard.from_pretrained(
        str(bundle), encoder=tiny_encoder, device="cpu").scores(PROMPTS[:2]).tolist()


def test_how_a_bundle_a_repo_id_and_a_checkpoint_are_told_apart(bundle, tmp_path):
    assert looks_like_repo_id("org/latent-guard") and looks_like_repo_id("o.rg/name_2")
    for path_like in ("runs/x.pth", "./org/name", "/abs/name", "a/b/c", "model_parameters.pth", "org/name.safetensors"):
        assert not looks_like_repo_id(path_like), path_like
    assert open_bundle(str(bundle)).config["format"] == "latentguard-bundle"
    assert open_bundle("model_parameters.pth") is None  # the released weights' name: a checkpoint
    (tmp_path / "plain").mkdir()
    with pytest.raises(LatentGuardError, match="is a directory but not a Latent Guard bundle"):
        open_bundle(tmp_path / "plain")
    with pytest.raises(LatentGuardError, match="applies to hub repo ids"):
        open_bundle(str(bundle), revision="main")


# ------------------------------------------------------------------------- entry points
def test_inference_takes_a_bundle(pth_guard, bundle, files, tiny_encoder_dir, tmp_path, capsys):
    out = tmp_path / "verdicts.csv"
    assert inference.main(["--guard", str(bundle), "--file_path", str(files / "prompts.txt"), "--device", "cpu",
                           "--output", str(out)]) == 0
    with open(out, newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    expected = pth_guard.check(PROMPTS)
    assert [int(r["unsafe"]) for r in rows] == [int(v.unsafe) for v in expected]
    assert [r["concept"] for r in rows] == [v.concept for v in expected]
    assert f"bundle {bundle}" in capsys.readouterr().out
    assert inference.main(["--guard", str(bundle), "--checkpoint", str(files / "ckpt.pth"), "--file_path",
                           str(files / "prompts.txt")]) == 2
    assert "both name weights" in capsys.readouterr().err


def test_verify_and_test_py_take_a_bundle(bundle, tiny_encoder, tmp_path, capsys):
    from latentguard.cli import evaluate as evaluate_cli
    from latentguard.data import load_copro

    dataset = make_synthetic_copro(tmp_path / "CoPro_synthetic.json")
    copro = load_copro(dataset)
    rows = [parity.ReleasedRow(0, "ID", "explicit", label, e.unsafe_prompt, e.safe_prompt, e.concept, 0.0)
            for e in copro.split("ID_test_data")[:3] for label in (0, 1)]
    model = EmbeddingMappingLayer()
    model.load_state_dict(load_file(bundle / "model.safetensors"))
    fixture = parity.write_fixture(tmp_path / "ours.csv", rows, parity.score_rows(rows, copro, tiny_encoder, model))
    common = ["--guard", str(bundle), "--dataset", str(dataset), "--device", "cpu"]
    assert verify_cli.main([*common, "--fixture", str(fixture)]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1].startswith("PASS: 6 rows")
    external = tmp_path / "external.csv"
    external.write_text("prompt,label\n" + "".join(f'"{p}",{i % 2}\n' for i, p in enumerate(PROMPTS)))
    assert evaluate_cli.main([*common, "--external", str(external), "--threshold", "auto", "--output-dir",
                              str(tmp_path / "eval"), "--no-progress"]) == 0
    result = json.loads((tmp_path / "eval" / "results_external.json").read_text())
    assert result["threshold"] == json.loads((bundle / "config.json").read_text())["threshold"]["value"]
    assert result["weights_sha256"] == sha256_of(bundle / "model.safetensors") and result["guard"] == str(bundle)


def test_main_py_writes_a_bundle_beside_its_weights(tiny_encoder, tiny_encoder_dir, tmp_path):
    dataset = make_synthetic_copro(tmp_path / "CoPro_synthetic.json", n_id=6, train_per_concept=3, with_valid=True)
    run = tmp_path / "run"
    torch.set_num_threads(1)
    assert main_mod.main(["--dataset", str(dataset), "--encoder", str(tiny_encoder_dir), "--no-store",
                          "--epochs", "1", "--val-every", "1", "--output-dir", str(run), "--device", "cpu",
                          "--no-progress"]) == 0
    bundled = LatentGuard.from_pretrained(str(run / "model_parameters_bundle"), encoder=tiny_encoder, device="cpu")
    pth = LatentGuard.from_pretrained(run / "model_parameters.pth", encoder=tiny_encoder, dataset=dataset,
                                      device="cpu")  # threshold auto: main.py's validation record
    assert bundled.concepts == pth.concepts and (bundled.threshold, bundled.slope) == (pth.threshold, pth.slope)
    np.testing.assert_array_equal(bundled.logits(PROMPTS), pth.logits(PROMPTS))
    assert "calibrated on the validation split" in bundled.threshold_origin


# ------------------------------------------------------------------------------ model card
def test_the_card_shows_results_only_for_these_weights_and_credits_the_released_ones(pth_guard, bundle, tmp_path):
    from latentguard.hub.card import model_card
    from latentguard.published import RELEASED_CHECKPOINT_SHA256

    results = {"ID": {"explicit": {"auc": 0.9123, "accuracy": 0.8042}}, "threshold": 4.5,
               "threshold_source": "calibrated on validation data",
               "meta": {"checkpoint": str(pth_guard.checkpoint), "weights_sha256": sha256_of(pth_guard.checkpoint)}}
    (tmp_path / "results.json").write_text(json.dumps(results))
    card = (pth_guard.save_pretrained(tmp_path / "with", results=tmp_path / "results.json") / "README.md").read_text()
    assert "| ROC AUC, these weights | 0.912 |" in card and "| accuracy, these weights | 0.804 |" in card
    results["meta"]["weights_sha256"] = "0" * 64
    (tmp_path / "other.json").write_text(json.dumps(results))
    with pytest.raises(LatentGuardError, match="was computed for other weights"):
        pth_guard.save_pretrained(tmp_path / "without", results=tmp_path / "other.json")
    assert not (tmp_path / "without").exists()
    config = json.loads((bundle / "config.json").read_text())
    assert "license:" not in model_card(config) and "not stated" in model_card(config)
    config["weights"]["source_sha256"] = RELEASED_CHECKPOINT_SHA256
    released = model_card(config, repo_id="org/latent-guard")
    assert "license: bsd-3-clause" in released and "BSD-3-Clause" in released and "Runtao Liu" in released
    assert 'LatentGuard.from_pretrained("org/latent-guard")' in released


def test_the_same_weights_saved_in_two_processes_have_one_sha256(tmp_path):
    """safetensors writes its metadata keys in a per-process random order; the header is rewritten sorted, so a
    bundle's recorded SHA-256 (and a hub push of the same weights) no longer changes from run to run."""
    import subprocess
    import sys

    code = ("import sys, torch; from safetensors.torch import save_file, load_file; "
            "from latentguard.hub.write import canonical_header; p = sys.argv[1]; "
            "t = {'w': torch.arange(6.).reshape(2, 3), 'b': torch.ones(3, dtype=torch.float16)}; "
            "save_file(t, p, metadata={'format': 'pt', 'mask_padding': 'true', 'x': 'y'}); canonical_header(p); "
            "back = load_file(p); assert all(torch.equal(back[k], t[k]) for k in t)")
    digests = set()
    for i in range(3):
        path = tmp_path / f"{i}.safetensors"
        subprocess.run([sys.executable, "-c", code, str(path)], check=True)
        digests.add(hashlib.sha256(path.read_bytes()).hexdigest())
    assert len(digests) == 1


def test_a_category_named_like_the_files_reserved_key_saves_a_bundle_that_loads(pth_guard, tiny_encoder, tmp_path):
    """A group named "concepts" had been written as the top-level key ``concepts.yaml`` reserves, so the saved
    bundle (and, with ``overwrite=True``, the working one it replaced) could not be loaded (a hostile pass)."""
    saved = pth_guard.save_pretrained(tmp_path / "first")
    guard = LatentGuard.from_pretrained(saved, encoder=tiny_encoder, device="cpu")
    guard.add_concepts(["chainsaw"], category="concepts")
    guard.save_pretrained(saved, overwrite=True)
    loaded = LatentGuard.from_pretrained(saved, encoder=tiny_encoder, device="cpu")
    assert loaded.concepts == guard.concepts and loaded.categories == guard.categories
    assert loaded.categories["concepts"] == ["chainsaw"]
