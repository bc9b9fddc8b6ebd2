"""Inputs that would silently change a verdict are refused or repaired: no silent wrong answer.

Each test plays the attacker's move with real files: a YAML blacklist whose unquoted entries YAML would
turn into numbers, duplicate keys, thresholds no prompt can reach, degenerate or damaged weights, a
tampered concept cache, a per-concept threshold that outlives its concept.
"""
from __future__ import annotations

import re
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from latentguard.data.blacklist import load_blacklist
from latentguard.decision.threshold import calibrate, save_calibration
from latentguard.errors import LatentGuardError
from latentguard.guard import LatentGuard
from latentguard.model import EmbeddingMappingLayer, load_mapping_layer
from latentguard.store.concept_cache import concept_cache_path

ROOT = Path(__file__).resolve().parent.parent
CONCEPTS = ["knife", "blood", "gun", "hacking"]


def _save(model, path):
    torch.save(model.state_dict(), path)
    return path


@pytest.fixture
def weights(tmp_path):
    torch.manual_seed(0)
    return _save(EmbeddingMappingLayer(), tmp_path / "weights.pth")


# ----------------------------------------------------------------------------- YAML as written
@pytest.mark.parametrize("entry", ["4:20", "0420", "0x1F", "1_000", ".nan", "1:30:00", "yes", "null", "2024-01-01"])
def test_a_yaml_blacklist_entry_is_the_text_written(tmp_path, entry):
    """Quoted, an entry is the text written (never 260, 31, NaN, True, None or a date)."""
    path = tmp_path / "blacklist.yaml"
    path.write_text(f"- knife\n- '{entry}'\n", encoding="utf-8")
    assert load_blacklist(path).concepts == ["knife", entry]


@pytest.mark.parametrize("entry, kind", [("null", "null"), ("~", "null"), ("5", "int"), ("4:20", "int"),
                                         ("yes", "bool"), (".nan", "float"), ("2024-01-01", "timestamp")])
def test_an_unquoted_yaml_blacklist_entry_that_is_not_text_is_refused(tmp_path, entry, kind):
    """`sexual: [nudity, null]` had loaded the concept 'null', `[nudity, 5]` the concept '5' (a hostile review)."""
    path = tmp_path / "blacklist.yaml"
    path.write_text(f"sexual: [nudity, {entry}]\n", encoding="utf-8")
    with pytest.raises(LatentGuardError, match=f"sexual\\[1\\] is {re.escape(entry)} unquoted, which YAML reads as "
                       f"{kind}.*quote it") as caught:
        load_blacklist(path)
    assert "\n" not in str(caught.value) and str(path) in str(caught.value)


@pytest.mark.parametrize("text, said", [
    ('sexual: !!python/object/apply:os.system ["touch /tmp/x"]\n',
     "the tag !!python/object/apply:os.system is not read"),
    ('sexual: [!!int "12", nudity]\n', "the tag !!int is not read"), ("sexual: !!set {nudity: null}\n", "!!set"),
    ("1: [nudity]\n", "group name 1 is unquoted, which YAML reads as int"),
    ("null: [nudity]\n", "group name null is unquoted, which YAML reads as null"),
])
def test_a_yaml_tag_or_a_typed_group_name_in_a_blacklist_is_refused(tmp_path, text, said):
    """A tag was dropped silently: `sexual: !!python/object/apply:os.system ["touch /tmp/x"]` loaded the one concept
    'touch /tmp/x' (nothing ran), and a live server took it on reload; `1:` named the category '1' (a thirty-sixth
    hostile pass). Quoted, or written without a tag, each is the text."""
    path = tmp_path / "blacklist.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(LatentGuardError, match=re.escape(said)) as caught:
        load_blacklist(path)
    assert "\n" not in str(caught.value) and str(path) in str(caught.value)
    path.write_text("'1': [nudity, '12']\n", encoding="utf-8")
    assert load_blacklist(path).categories == {"1": ["nudity", "12"]}


@pytest.mark.parametrize("text, where", [
    ("concepts: [knife, hacking]\nthresholds: {hacking: 1, hacking: 1000}\n", "'hacking' given twice"),
    ("violence: [knife]\nviolence: [gun]\n", "'violence' given twice"),
    ('sex: [knife]\n"sex ": [nudity]\n', "group 'sex' is given twice"),  # merged silently (a forty-first pass)
])
def test_a_duplicate_key_is_refused_naming_it(tmp_path, text, where):
    path = tmp_path / "blacklist.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(LatentGuardError, match=where) as caught:
        load_blacklist(path)
    assert "\n" not in str(caught.value) and str(path) in str(caught.value)


def test_a_blacklist_of_nested_aliases_is_refused_in_one_short_line(tmp_path):
    """284 bytes of nested YAML aliases stood for 4.8 million concepts: the "one-line" error echoing them was 39 MB,
    and ten levels a MemoryError traceback (a forty-first hostile pass)."""
    lines = ['a: &a ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for level in range(7):
        lines.append(f"l{level}: &l{level} [" + ", ".join([f"*{'a' if level == 0 else f'l{level - 1}'}"] * 9) + "]")
    path = tmp_path / "blacklist.yaml"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises(LatentGuardError, match="aliases expand to more than 100,000 values") as caught:
        load_blacklist(path)
    assert len(str(caught.value)) < 300 and str(path) in str(caught.value)
    path.write_text("common: &c [knife, gun]\nviolence: *c\nweapons: [*c]\n", encoding="utf-8")
    with pytest.raises(LatentGuardError, match=r"weapons\[0\] must be a non-empty concept text"):
        load_blacklist(path)  # a small alias still reads, and a list where a text is meant is said in short
    path.write_text("common: &c [knife, gun]\nviolence: *c\n", encoding="utf-8")
    assert load_blacklist(path).categories == {"common": ["knife", "gun"], "violence": ["knife", "gun"]}
    assert len(str(LatentGuardError("x" * 10**6))) < 2100  # any message echoing a value stays one readable line
    import sys

    limit = sys.getrecursionlimit()
    try:  # a RecursionError traceback (a forty-third pass); refused by depth whatever the interpreter's limit
        for recursion_limit in (limit, 20_000):
            sys.setrecursionlimit(recursion_limit)
            for deep in ("[" * 500 + "]" * 500, "{a: " * 500 + "b" + "}" * 500):
                path.write_text(deep + "\n", encoding="utf-8")
                with pytest.raises(LatentGuardError, match="YAML nested too deeply to read"):
                    load_blacklist(path)
    finally:
        sys.setrecursionlimit(limit)


def test_a_calibration_record_with_a_duplicate_key_is_refused(tmp_path, weights):
    save_calibration(calibrate([1.0, 2.0, 3.0], target_fpr=0.34), weights)
    record = weights.with_name("weights.threshold.yaml")
    record.write_text(record.read_text() + "threshold: 0.5\n", encoding="utf-8")
    with pytest.raises(LatentGuardError, match="'threshold' given twice"):
        LatentGuard.from_pretrained(weights, encoder=None, concepts=CONCEPTS, threshold="calibrated")


# ------------------------------------------------------------------- thresholds nobody reaches
def test_thresholds_above_tempr_are_refused_everywhere(tmp_path, tiny_encoder, weights):
    tempr = float(load_mapping_layer(weights).tempr)
    guard = LatentGuard.from_pretrained(weights, tiny_encoder, CONCEPTS, threshold=tempr - 0.01, cache_concepts=False)
    for value in (tempr, tempr + 0.01, 1e300):  # at tempr only a cosine of exactly 1 is flagged (a fortieth pass)
        with pytest.raises(LatentGuardError, match="(above|at) the largest logit"):
            guard.threshold = value
        with pytest.raises(LatentGuardError, match="(above|at) the largest logit"):
            guard.concept_thresholds = {"knife": value}
        with pytest.raises(LatentGuardError, match="(above|at) the largest logit"):
            LatentGuard.from_pretrained(weights, tiny_encoder, CONCEPTS, threshold=value, cache_concepts=False)
    save_calibration(calibrate([1.0, 2.0, 3.0], target_fpr=0.34), weights)
    record = weights.with_name("weights.threshold.yaml")
    data = yaml.safe_load(record.read_text())
    data["threshold"] = 1e300
    record.write_text(yaml.safe_dump(data), encoding="utf-8")
    with pytest.raises(LatentGuardError, match="above the largest logit"):
        LatentGuard.from_pretrained(weights, tiny_encoder, CONCEPTS, cache_concepts=False)  # auto reads the record


def test_thresholds_at_or_below_minus_tempr_flag_everything_and_are_refused_everywhere(tiny_encoder, weights):
    tempr = float(load_mapping_layer(weights).tempr)
    guard = LatentGuard.from_pretrained(weights, tiny_encoder, CONCEPTS, threshold=-tempr + 0.01,
                                        cache_concepts=False)
    for value in (-tempr, -20.0, -1e300):
        with pytest.raises(LatentGuardError, match="below the smallest logit"):
            guard.threshold = value
        with pytest.raises(LatentGuardError, match="below the smallest logit"):
            guard.concept_thresholds = {"knife": value}
        with pytest.raises(LatentGuardError, match="below the smallest logit"):
            LatentGuard.from_pretrained(weights, tiny_encoder, CONCEPTS, threshold=value, cache_concepts=False)


def test_inference_refuses_an_unreachable_threshold_in_one_line(tmp_path, tiny_encoder_dir, weights):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a knife\n", encoding="utf-8")
    concepts = tmp_path / "concepts.txt"
    concepts.write_text("\n".join(CONCEPTS) + "\n", encoding="utf-8")
    done = subprocess.run([sys.executable, str(ROOT / "inference.py"), "--file_path", str(prompts),
                           "--checkpoint", str(weights), "--encoder", str(tiny_encoder_dir), "--concepts",
                           str(concepts), "--threshold", "14.3", "--device", "cpu"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300,
                          env={"PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin",
                               "LATENTGUARD_HOME": str(tmp_path / "home")})
    assert done.returncode == 2 and done.stderr.count("\n") == 1 and "Traceback" not in done.stderr
    assert "threshold 14.3 is above the largest logit" in done.stderr


# -------------------------------------------------------------------- degenerate or damaged weights
@pytest.mark.parametrize("damage, message", [
    (lambda m: m.tempr.fill_(0.0), "tempr is 0"),
    (lambda m: m.tempr.fill_(-3.0), "tempr is -3"),
    (lambda m: [p.zero_() for n, p in m.named_parameters() if n != "tempr"], "same logit"),
    (lambda m: (m.mlp_query1.weight.zero_(), m.mlp_query1.bias.zero_()), "same logit"),
    (lambda m: (m.final_mlp.weight.zero_()), "same logit"),
])
def test_weights_that_judge_nothing_are_refused(tmp_path, tiny_encoder, damage, message):
    torch.manual_seed(0)
    model = EmbeddingMappingLayer()
    with torch.no_grad():
        damage(model)
    path = _save(model, tmp_path / "bad.pth")
    with pytest.raises(LatentGuardError, match=message) as caught:
        LatentGuard.from_pretrained(path, tiny_encoder, CONCEPTS, threshold=1.0, cache_concepts=False)
    assert str(path) in str(caught.value) and "\n" not in str(caught.value)


def test_a_flipped_byte_in_the_tensor_data_is_detected(tmp_path, weights):
    with zipfile.ZipFile(weights) as archive:
        name = max(archive.infolist(), key=lambda i: i.file_size)  # the largest tensor's storage
        start = name.header_offset + 30 + len(name.filename.encode()) + len(name.extra)
    raw = bytearray(weights.read_bytes())
    raw[start + 100] ^= 0x40  # one bit of one float
    damaged = tmp_path / "damaged.pth"
    damaged.write_bytes(bytes(raw))
    assert torch.load(damaged, weights_only=True)  # torch itself reads it without a complaint
    with pytest.raises(LatentGuardError, match="checksum \\(CRC-32\\) of .* does not match"):
        load_mapping_layer(damaged)


def test_a_calibration_that_separates_nothing_is_refused():
    with pytest.raises(LatentGuardError, match="separate nothing"):
        calibrate(np.zeros(20), target_fpr=0.01)
    with pytest.raises(LatentGuardError, match="separate nothing"):
        calibrate(np.full(5, 3.0), np.full(5, 3.0))


# ------------------------------------------------------------------------------ concept cache
@pytest.mark.parametrize("tamper", ["zero", "swap", "sign"])
def test_a_tampered_concept_cache_entry_is_re_encoded(tmp_path, monkeypatch, tiny_encoder, tamper):
    monkeypatch.setenv("LATENTGUARD_HOME", str(tmp_path / "home"))
    torch.manual_seed(0)
    model = EmbeddingMappingLayer()
    fresh = LatentGuard(model, tiny_encoder, CONCEPTS, threshold=1.0)  # writes the cache
    path = concept_cache_path(tiny_encoder.identity)
    blob = torch.load(path, weights_only=True)
    knife = blob["concepts"].index("knife")
    if tamper == "zero":
        blob["vectors"][knife] = 0.0
    elif tamper == "swap":
        blob["vectors"][knife] = blob["vectors"][blob["concepts"].index("hacking")].clone()
    else:
        blob["vectors"][knife] = -blob["vectors"][knife]
    torch.save(blob, path)
    with pytest.warns(UserWarning, match="failed their checksum \\('knife'\\); re-encoding"):
        guard = LatentGuard(model, tiny_encoder, CONCEPTS, threshold=1.0)
    assert torch.equal(guard.concept_vectors, fresh.concept_vectors)
    np.testing.assert_array_equal(guard.logits(["a knife in the kitchen"]), fresh.logits(["a knife in the kitchen"]))
    assert torch.load(path, weights_only=True)["vectors"][knife].abs().sum() > 0  # repaired on disk too


# ------------------------------------------------------------------ a threshold outliving its concept
def test_a_per_concept_threshold_goes_with_its_concept(tiny_encoder, weights):
    guard = LatentGuard.from_pretrained(weights, tiny_encoder, CONCEPTS, threshold=1.0, cache_concepts=False)
    guard.concept_thresholds = {"hacking": 14.0}
    guard.remove_concepts(["hacking"])
    guard.add_concepts(["hacking"])
    assert guard.concept_thresholds == {} and guard.thresholds()[guard.concepts.index("hacking")] == 1.0


# ------------------------------------------------------------------------------- lone surrogates
def test_a_lone_surrogate_is_refused_in_one_line(tiny_encoder, weights, tmp_path):
    guard = LatentGuard.from_pretrained(weights, tiny_encoder, CONCEPTS, threshold=1.0, cache_concepts=False)
    with pytest.raises(LatentGuardError, match="lone surrogate"):
        guard.check(["a knife", "bad \ud800 text"])
    with pytest.raises(LatentGuardError, match="lone surrogate"):
        guard.add_concepts(["x\udfff"])
    copro = tmp_path / "CoPro.json"
    copro.write_text('{"ID_concepts": ["knife"], "ID_train_data": [{"concept": "knife", "unsafe_prompt": '
                     '"a \\ud800 knife", "safe_prompt": "a cup"}], "ID_test_data": []}', encoding="utf-8")
    from latentguard.data import load_copro

    with pytest.raises(LatentGuardError, match=r"ID_train_data\[0\] 'unsafe_prompt' .* lone surrogate"):
        load_copro(copro)


@pytest.mark.parametrize("written, read", [("3", 3.0), ("-2.5", -2.5), ("1e3", 1000.0), ("'3'", None), ("1_0", None),
                                           ("\u0665", None)])
def test_a_per_concept_threshold_is_a_number_as_written(tmp_path, written, read):
    """A quoted '3' is text, and float() reads "1_0" and "٥" as 10 and 5: each had been taken as a threshold (a
    forty-third hostile pass)."""
    path = tmp_path / "blacklist.yaml"
    path.write_text(f"concepts: [nudity, knife]\nthresholds: {{nudity: {written}}}\n", encoding="utf-8")
    if read is None:
        with pytest.raises(LatentGuardError, match=r"thresholds\['nudity'\] must be a number"):
            load_blacklist(path)
    else:
        assert load_blacklist(path).thresholds == {"nudity": read}
