"""The guard's options (latentguard/guard/options.py): one frozen object, checked once, passed whole."""
from __future__ import annotations

import ast
import dataclasses
from pathlib import Path

import pytest
import torch

from latentguard.errors import LatentGuardError
from latentguard.guard import LatentGuard
from latentguard.guard.options import GuardOptions
from latentguard.model import EmbeddingMappingLayer


@pytest.mark.parametrize("bad", [dict(top_k=0), dict(batch_size=True), dict(batch_size=2.0), dict(window_stride=0),
                                 dict(threshold=float("nan")), dict(threshold=None),
                                 # a switch is a bool: split_sentences="" turned the defence off, "false" left it on
                                 dict(split_sentences=""), dict(normalize_text="false"), dict(long_prompts=1),
                                 dict(cache_concepts=None)])
def test_bad_options_are_refused_when_built(bad):
    with pytest.raises(LatentGuardError):
        GuardOptions(**bad)


def test_options_are_frozen_and_unknown_names_refused():
    options = GuardOptions()
    with pytest.raises(dataclasses.FrozenInstanceError):
        options.top_k = 5
    with pytest.raises(TypeError, match="split_sentence"):
        GuardOptions.build(split_sentence=False)  # a misspelt option never passes unnoticed
    assert GuardOptions.build(options, top_k=None) == options  # None: unset, the base's value stays


def test_a_guard_takes_the_object_whole_and_keywords_over_it(tiny_encoder):
    torch.manual_seed(0)
    options = GuardOptions(threshold=3.0, top_k=2, normalize_text=False, split_sentences=False, cache_concepts=False)
    guard = LatentGuard(EmbeddingMappingLayer(), tiny_encoder, ["knife", "blood", "gun"], options=options, top_k=1)
    assert guard.threshold == 3.0 and guard.top_k == 1 and not guard.normalize_text and not guard.split_sentences
    assert guard.options.top_k == 1 and guard.options.threshold == 3.0
    verdict = guard.check("a knife", explain=False)[0]
    assert len(verdict.top_concepts) == 1
    with pytest.raises(LatentGuardError, match="top_k"):
        guard.top_k = 0  # setting a plain option checks it again
    assert guard.top_k == 1


def test_the_options_snapshot_follows_calibration(tiny_encoder):
    torch.manual_seed(0)
    guard = LatentGuard(EmbeddingMappingLayer(), tiny_encoder, ["knife", "blood"], cache_concepts=False)
    result = guard.calibrate(["a cat on a sofa", "a bowl of fruit"], target_fpr=0.0)
    assert guard.options.threshold == result.threshold and guard.options.slope == guard.slope
    again = LatentGuard(guard.model, tiny_encoder, ["knife", "blood"], options=guard.options)
    assert again.threshold == guard.threshold and again.options == guard.options


# ------------------------------------------------------------------ where each option is named
# A guard option is named in at most three modules: its definition, its config key and its CLI flag. Everything
# else asks the options object (GuardOptions.recorded / concept_encoding / listed / windowed ...) or iterates over
# a key list it is handed. "Named" means as code: an identifier, attribute, keyword, parameter or a string equal
# to the name (docstrings, comments and longer messages are prose and not counted).
PACKAGE = Path(__file__).resolve().parent.parent / "latentguard"
HOME = {"guard/options.py", "config.py", "cli/common.py"}  # definition, config key, CLI flag

# Where a field's name is also another stage's own word, the modules that use it in that meaning (they do not read
# the guard's option), by folder or module, each with why. Only modules outside these count.
OWN_WORD = {
    "threshold": {
        "decision/": "the decision rule's, the metrics' and calibration's own threshold",
        "eval/": "evaluation's thresholds (Table 1, Table 2, benchmarks, baselines' own)",
        "train/": "the validation threshold training calibrates and records",
        "model/sanity.py": "a threshold checked against the layer's reachable logits",
        "published.py": "the published thresholds (released, paper)",
        "guard/verdict.py": "a verdict's field: the deciding concept's threshold",
        "guard/sanitize.py": "a verdict's field: an edit must score below its concept's threshold by the margin",
        "serve/protocol.py": "a verdict's threshold on the wire",
        "serve/audit.py": "a verdict's threshold in the audit line",
        "cli/evaluate.py": "evaluation's --threshold (eval.threshold), not the guard's",
        "cli/benchmark.py": "a score file's operating threshold (--scores mode: the flag or the published one)",
        "cli/infer.py": "a calibration result's threshold (printed) and a verdict's (the output file's field)",
        "guard/validation.py": "a calibration record's threshold (named in a warning)",
        "cli/train.py": "training's calibrated threshold",
        "hub/format.py": "the bundle file's threshold section (frozen format key)",
        "hub/write.py": "the bundle file's threshold section (frozen format key)",
        "hub/bundle.py": "the bundle file's threshold section (frozen format key)",
        "hub/card.py": "the bundle file's threshold section, shown on the card",
    },
    "categories": {
        "data/blacklist.py": "a grouped blacklist file's groups",
        "guard/load.py": "a loaded blacklist file's groups (Blacklist.categories), handed to options.with_blacklist",
        "guard/bundled.py": "a loaded blacklist file's groups (Blacklist.categories), handed to options.with_blacklist",
        "eval/benchmark/": "a benchmark set's prompt categories",
        "train/": "the open recipe's data categories",
        "guard/verdict.py": "a verdict's flagged categories",
        "serve/protocol.py": "a verdict's categories on the wire",
        "serve/audit.py": "a verdict's categories in the audit line",
        "serve/server.py": "a verdict's flagged categories, counted in the metrics",
        "serve/state.py": "a verdict's categories (the single-verdict check)",
        "bulk/scorer.py": "a verdict's category flags, written as columns",
        "guard/guard.py": "a verdict's categories (set from the guard's Categories judgement)",
        "bulk/dedup.py": "a stored verdict's category flags",
        "bulk/local.py": "a run summary's category counts",
        "bulk/ray_engine.py": "a run summary's category counts",
        "cli/score.py": "a run summary's category counts",
        "cli/infer.py": "a verdict's flagged categories in the output file",
        "hub/format.py": "the bundle file's categories section (frozen format key)",
        "hub/write.py": "the bundle file's categories section (frozen format key)",
        "hub/bundle.py": "the bundle file's categories section (frozen format key)",
        "hub/card.py": "the bundle file's categories section, shown on the card",
    },
    "batch_size": {
        "encoders/": "how many texts an encoder encodes at once",
        "store/": "how many texts the store encodes at once",
        "scoring/": "how many prompts one scoring pass takes",
        "train/": "training's and validation's batch sizes (train.batch_size, eval_batch_size)",
        "eval/baselines.py": "the baselines' own encoding batch size",
        "eval/external.py": "evaluation's batch size (its own flag and config key)",
        "eval/parity.py": "the parity check's batch size",
        "eval/run.py": "evaluation's batch size (its own flag and config key)",
        "bulk/": "the bulk run's rows per batch (its own config key)",
        "serve/metrics.py": "the micro-batcher's batch sizes",
        "serve/server.py": "the micro-batcher's batch size",
        "cli/evaluate.py": "evaluation's batch size",
        "cli/prepare.py": "the store's encoding batch size",
        "cli/train.py": "training's batch size",
        "cli/verify.py": "the parity check's batch size",
        "guard/guard.py": "only as the encoder's batch_size keyword (the guard's own: options.per_batch)",
        "guard/forms.py": "only as the encoder's batch_size keyword (the guard's own: options.encoding_batch)",
        "pipeline/wrapper.py": "only as the encoder's batch_size keyword (the guard's: options.encoding_batch)",
        "eval/benchmark/scorers.py": "only as the encoder's batch_size keyword (the guard's: options.per_batch)",
    },
    "slope": {
        "decision/": "the probability slope the calibration fits and probabilities use",
        "serve/protocol.py": "which slope a response's probabilities used, on the wire",
        "hub/format.py": "the bundle file's slope (frozen format key)",
        "hub/write.py": "the bundle file's slope (frozen format key)",
        "hub/bundle.py": "the bundle file's slope (frozen format key), read by Bundle.fitted_slope",
        "hub/card.py": "the bundle file's slope, shown on the card",
    },
    "split_sentences": {"data/defences.py": "the text defence's own parameter (the code that splits)"},
    "long_prompts": {"hub/format.py": "the bundle file's encoder.options key (frozen format; RECORDED_OPTIONS)"},
    "window_stride": {"hub/format.py": "the bundle file's encoder.options key (frozen format; RECORDED_OPTIONS)"},
    "concept_thresholds": {
        "hub/format.py": "the bundle file's per-concept thresholds (frozen format key)",
        "hub/write.py": "the bundle file's per-concept thresholds (frozen format key), as write_bundle writes them",
        "hub/bundle.py": "the bundle file's per-concept thresholds (frozen format key), read by Bundle.own_thresholds",
        "hub/card.py": "the bundle file's per-concept thresholds, counted on the card",
    },
}
# Modules that still read the guard's option by name: not done yet, listed so that the list only shrinks (a new
# module naming an option fails this test, and so does a module that no longer names it but is still listed).
LEFT = {
    # the public positional parameter: LatentGuard(model, encoder, concepts, 5.0), from_pretrained's too
    "threshold": {"guard/guard.py"},
}


def _names(tree: ast.AST) -> set[str]:
    """Every name the code of ``tree`` uses (docstrings left out: they are prose)."""
    docs = {id(node.body[0].value) for node in ast.walk(tree)
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body
            and isinstance(node.body[0], ast.Expr) and isinstance(node.body[0].value, ast.Constant)}
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Name):
            out.add(node.id)
        elif isinstance(node, ast.Attribute):
            out.add(node.attr)
        elif isinstance(node, (ast.keyword, ast.arg)) and node.arg:
            out.add(node.arg)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            out.add(node.name)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docs:
            out.add(node.value)
    return out


NAMES = {p.relative_to(PACKAGE).as_posix(): _names(ast.parse(p.read_text(encoding="utf-8")))
         for p in sorted(PACKAGE.rglob("*.py"))}


def _own_word(field: str, module: str) -> bool:
    return any(module == where or (where.endswith("/") and module.startswith(where))
               for where in OWN_WORD.get(field, {}))


@pytest.mark.parametrize("field", [f.name for f in dataclasses.fields(GuardOptions)])
def test_each_guard_option_is_named_only_where_it_is_defined_configured_and_flagged(field):
    naming = {module for module, names in NAMES.items() if field in names}
    assert "guard/options.py" in naming
    reading = naming - HOME - {m for m in naming if _own_word(field, m)}
    assert reading == LEFT.get(field, set()), (
        f"{field}: modules reading the guard's option by name {sorted(reading - LEFT.get(field, set()))}; "
        f"no longer naming it (take them off LEFT) {sorted(LEFT.get(field, set()) - reading)}")
    if not LEFT.get(field):
        assert len(naming - {m for m in naming if _own_word(field, m)}) <= 3


def test_the_shared_word_list_names_only_modules_that_use_the_word():
    """A justification for a module that no longer uses the word is stale: it would hide a later reader."""
    stale = [f"{field}: {where}" for field, places in OWN_WORD.items() for where in places
             if not any(field in names for module, names in NAMES.items()
                        if module == where or (where.endswith("/") and module.startswith(where)))]
    assert not stale, stale
