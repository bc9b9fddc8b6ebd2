"""A run directory is resumed only by the run that made it: the sanitize options, the code that judges and the
device kind are part of its identity, as the guard and the options are (a hostile review found a resumed
``--sanitize`` run mixing shards made with two margins, and shards of older code read back as this code's)."""
from __future__ import annotations

import json

import pytest
from test_bulk_local import args, corpus, snapshot  # noqa: F401 (corpus: the fixture)
from test_bulk_scorer import recipe  # noqa: F401 (the fixture)

import latentguard.guard.code as code
from latentguard.bulk import GuardBatchScorer
from latentguard.bulk.manifest import guard_identity, manifest_differences
from latentguard.cli.score import main as score
from latentguard.errors import LatentGuardError


def margin_config(d, margin: float):
    path = d / f"margin-{margin}.yaml"
    path.write_text(f"inference:\n  sanitize_margin: {margin}\n", encoding="utf-8")
    return str(path)


def test_a_sanitize_run_is_resumed_only_with_its_margin_and_top_k(corpus, tiny_encoder_dir, capsys):  # noqa: F811
    out = corpus / "out"
    base = args(corpus, tiny_encoder_dir, out, 1.0, "--shard-size", "4", "--sanitize")
    assert score([*base, "--config", margin_config(corpus, 0.1)]) == 0
    (out / "_done" / "shard-00002.json").unlink()  # as a kill -9 after two shards leaves it
    before = snapshot(out)
    capsys.readouterr()
    for extra, needle in ((["--config", margin_config(corpus, 0.9)], "guard sanitize_margin 0.1 vs 0.9"),
                          (["--config", margin_config(corpus, 0.1), "--top-k", "1"], "guard sanitize_top_k 3 vs 1")):
        assert score([*base, *extra]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "not mixed" in err and needle in err, err
    assert snapshot(out) == before
    assert score([*base, "--config", margin_config(corpus, 0.1)]) == 0  # the same settings resume
    recorded = json.loads((out / "_manifest.json").read_text())["guard"]
    assert recorded["sanitize_margin"] == 0.1 and recorded["sanitize_top_k"] == 3


def test_a_run_made_by_other_code_is_refused(corpus, tiny_encoder_dir, monkeypatch, capsys):  # noqa: F811
    out = corpus / "out"
    argv = args(corpus, tiny_encoder_dir, out, 1.0, "--shard-size", "4")
    assert score(argv) == 0
    before, this_code = snapshot(out), code.code_identity()
    capsys.readouterr()
    monkeypatch.setattr(code, "code_identity", lambda: "sha256:0123456789abcdef")  # the next commit's code
    assert score(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "guard code sha256:" in err and "judging code changed" in err, err
    assert "choose another --output" in err and "rerun the recorded command" not in err
    assert snapshot(out) == before
    assert json.loads((out / "_manifest.json").read_text())["guard"]["code"] == this_code


def test_a_run_resumed_on_another_device_kind_is_refused(corpus, tiny_encoder_dir, capsys):  # noqa: F811
    out = corpus / "out"
    argv = args(corpus, tiny_encoder_dir, out, 1.0, "--shard-size", "4")
    assert score(argv) == 0
    manifest = json.loads((out / "_manifest.json").read_text())
    assert manifest["device"] == "cpu"
    manifest["device"] = "cuda:0"  # the run was started on a GPU, and is resumed here on the CPU
    (out / "_manifest.json").write_text(json.dumps(manifest))
    capsys.readouterr()
    assert score(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "device cuda vs cpu" in err, err
    same_kind = {**manifest, "device": "cuda:1"}
    assert not any("device" in d for d in manifest_differences(manifest, same_kind))


def test_a_worker_with_other_edit_options_or_code_refuses(recipe, monkeypatch):  # noqa: F811
    """The Ray engine's workers check ``expect`` (guard_identity with sanitize=, as the manifest records it)."""
    options, guard = recipe
    expect = guard_identity(guard, sanitize=True)
    assert expect["sanitize_margin"] == guard.sanitize_margin and "code" in expect
    assert "sanitize_margin" not in guard_identity(guard)  # a run without --sanitize: edits are no part of it
    with pytest.raises(LatentGuardError, match="not the one the run recorded .*sanitize_margin 0.1 vs 0.5"):
        GuardBatchScorer(expect=expect, sanitize=True, sanitize_margin=0.5, **options)({"text": ["fine"]})
    with pytest.raises(LatentGuardError, match="sanitize_top_k 3 vs 1"):
        GuardBatchScorer(expect=expect, sanitize=True, top_k=1, **options)({"text": ["fine"]})
    assert "passes" in GuardBatchScorer(expect=expect, sanitize=True, **options)({"text": ["fine"]})
    monkeypatch.setattr(code, "code_identity", lambda: "sha256:0123456789abcdef")
    with pytest.raises(LatentGuardError, match="code sha256:.* vs sha256:0123456789abcdef .*judging code changed"):
        GuardBatchScorer(expect=expect, sanitize=True, **options)({"text": ["fine"]})
