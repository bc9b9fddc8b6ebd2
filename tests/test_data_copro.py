"""CoPro loading: schema errors, the released test.py variant rule, and the leakage-free validation split."""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
from synthetic import make_synthetic_copro

from latentguard.data import CoPro, Triplet, carve_validation, load_copro
from latentguard.data import copro as data_mod
from latentguard.errors import LatentGuardError
from latentguard.published import COPRO_URL


def entry(concept: str, unsafe: str, safe: str = "a calm lake", **extra) -> dict:
    return {"concept": concept, "unsafe_prompt": unsafe, "safe_prompt": safe, **extra}


def write(path: Path, obj) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=1), encoding="utf-8")
    return path


def minimal(**changes) -> dict:
    raw = {
        "ID_concepts": ["knife"],
        "OOD_concepts": ["arson"],
        "ID_train_data": [entry("knife", "a knife")],
        "ID_test_data": [entry("knife", "a knife again")],
        "OOD_test_data": [entry("arson", "arson at dusk")],
    }
    raw.update(changes)
    return raw


# ---------------------------------------------------------------------------- loading and schema
def test_synthetic_file_loads_with_every_split(synthetic_copro):
    copro = load_copro(synthetic_copro)
    assert copro.concepts("ID")[:2] == ["knife", "blood"] and len(copro.concepts("OOD")) == 6
    assert copro.has_split("ID_train_data") and copro.has_split("ID_test_data") and copro.has_split("OOD_test_data")
    assert not copro.has_split("OOD_valid_data")
    assert all(isinstance(t, Triplet) for t in copro.split("ID_test_data"))
    assert copro.synonyms["blood"] == "gore fluid"  # list value: first element
    assert copro.synonyms["hostage"] == "captive"
    with pytest.raises(LatentGuardError, match="has no 'OOD_valid_data'"):
        copro.split("OOD_valid_data")
    with pytest.raises(LatentGuardError, match="unknown split"):
        copro.split("train")
    with pytest.raises(LatentGuardError, match="ID or OOD"):
        copro.concepts("id")


def test_extra_fields_are_ignored(tmp_path):
    raw = minimal(ID_train_data=[entry("knife", "a knife", category="violence", id=3)])
    copro = load_copro(write(tmp_path / "d.json", raw))
    assert copro.split("ID_train_data") == [Triplet("knife", "a knife", "a calm lake")]


@pytest.mark.parametrize(
    "change, message",
    [
        ({"ID_test_data": None}, "missing required key 'ID_test_data'"),
        ({"ID_concepts": None}, "missing required key 'ID_concepts'"),
        ({"ID_train_data": "oops"}, "'ID_train_data' must be a list of entries"),
        ({"ID_concepts": ["knife", 3]}, r"ID_concepts\[1\] must be a non-empty string"),
        ({"ID_train_data": []}, "'ID_train_data' is empty"),
        ({"OOD_test_data": None}, "has 'OOD_concepts' but is missing 'OOD_test_data'"),
        ({"ID_train_data": [entry("knife", "a")] * 3 + ["text"]}, r"ID_train_data\[3\] must be an object"),
        ({"ID_test_data": [entry("knife", "a"), {"concept": "knife", "unsafe_prompt": 5, "safe_prompt": "b"}]},
         r"ID_test_data\[1\] 'unsafe_prompt' must be a string, got int"),
        ({"concept_synonym": {"knife": 7}}, r"concept_synonym\['knife'\] must be a string or a list"),
        ({"concept_adv": ["x"]}, "'concept_adv' must be an object"),
    ],
)
def test_schema_errors_name_key_and_entry(tmp_path, change, message):
    raw = minimal()
    for key, value in change.items():
        if value is None:
            raw.pop(key)
        else:
            raw[key] = value
    path = write(tmp_path / "bad.json", raw)
    with pytest.raises(LatentGuardError, match=message) as info:
        load_copro(path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_missing_field_message_is_exact(tmp_path):
    tests = [entry("knife", f"knife {i}") for i in range(20)]
    del tests[17]["safe_prompt"]
    path = write(tmp_path / "x.json", minimal(ID_test_data=tests))
    with pytest.raises(LatentGuardError) as info:
        load_copro(path)
    assert str(info.value) == f"{path}: ID_test_data[17] is missing 'safe_prompt'"


def test_ood_part_is_optional_as_a_whole(tmp_path):
    raw = minimal()
    del raw["OOD_concepts"], raw["OOD_test_data"]
    copro = load_copro(write(tmp_path / "id_only.json", raw))
    assert copro.concepts("OOD") == [] and not copro.has_split("OOD_test_data")


def test_malformed_json_gives_file_and_line(tmp_path):
    path = tmp_path / "broken.json"
    path.write_text('{\n  "ID_concepts": ["knife"],\n  "ID_train_data": [,]\n}\n', encoding="utf-8")
    with pytest.raises(LatentGuardError, match=r"broken\.json: not valid JSON at line 3, column"):
        load_copro(path)
    path.write_bytes(b'{"ID_concepts": ["\xff"]}')
    with pytest.raises(LatentGuardError, match="not valid UTF-8"):
        load_copro(path)
    write(path, ["not", "an", "object"])
    with pytest.raises(LatentGuardError, match="top level must be a JSON object"):
        load_copro(path)


def test_unknown_concepts_warn_but_load(tmp_path):
    raw = minimal(ID_test_data=[entry("spoon", "a spoon")])
    with pytest.warns(UserWarning, match="ID_test_data uses 1 concept"):
        load_copro(write(tmp_path / "d.json", raw))


# ---------------------------------------------------------------------------- missing file / download
def test_missing_custom_file_says_where_to_get_it(tmp_path):
    with pytest.raises(LatentGuardError, match="dataset not found") as info:
        load_copro(tmp_path / "mine.json")
    assert COPRO_URL in str(info.value)


def test_missing_default_file_without_download_is_an_error(tmp_path, monkeypatch):
    monkeypatch.setattr(data_mod, "_download", lambda *a, **k: pytest.fail("must not download"))
    with pytest.raises(LatentGuardError, match=COPRO_URL.replace(".", r"\.")):
        load_copro(tmp_path / "CoPro_v1.0.json", download=False)


def test_missing_default_file_is_downloaded_and_its_hash_recorded(tmp_path, monkeypatch, capsys):
    calls = []

    def fake_download(url, target, sha256=None, what="file", git_blob=None):
        calls.append((url, sha256, git_blob))
        make_synthetic_copro(target)
        return Path(target)

    monkeypatch.setattr(data_mod, "_download", fake_download)
    target = tmp_path / "dataset" / "CoPro_v1.0.json"
    copro = load_copro(target)
    assert calls == [(COPRO_URL, None, "e56717a7c4c5b8f5ead376079f8ecee62e29a06c")]  # the published blob id
    digest = data_mod.sha256_of(target)
    assert (tmp_path / "dataset" / "CoPro_v1.0.json.sha256").read_text() == f"{digest}  CoPro_v1.0.json\n"
    assert digest in capsys.readouterr().out
    assert copro.has_split("ID_test_data")
    load_copro(target)  # present now: no second download
    assert len(calls) == 1


# ------------------------------------------------------------- synonym / adversarial variants
def variant_file(tmp_path: Path) -> Path:
    tests = [
        entry("knife", "a knife on a knife rack", "a spoon on a spoon rack"),      # every occurrence
        entry("knife", "Knife in the dark", "Spoon in the dark"),                  # capitalised form
        entry("knife", "Knife and knife", "Fork and fork"),                        # literal wins
        entry("knife", "a KNIFE", "a SPOON"),                                      # neither form: dropped
        entry("gun", "a gun", "a toy"),                                            # no adversarial entry
        entry("fire", "a campfire at night", "a lamp at night"),                   # plain substring match
        entry("hate speech", "Hate speech on a wall", "Graffiti on a wall"),       # capitalize() lowers the rest
        entry("hate speech", "HATE SPEECH", "SIGN"),
    ]
    raw = minimal(
        ID_concepts=["knife", "gun", "fire", "hate speech"],
        ID_test_data=tests,
        concept_synonym={"knife": ["blade", "dagger"], "gun": "firearm", "fire": "flames", "hate speech": "slurs"},
        concept_adv={"knife": "kn#1fe", "fire": ["f1re", "fyre"], "hate speech": "h@te"},
    )
    return write(tmp_path / "variants.json", raw)


def test_synonym_variants_follow_the_reference_rule(tmp_path):
    copro = load_copro(variant_file(tmp_path), valid_size=0)
    assert copro.variant_pairs("ID_test_data", "synonym") == [
        Triplet("knife", "a blade on a blade rack", "a spoon on a spoon rack"),
        Triplet("knife", "blade in the dark", "Spoon in the dark"),
        Triplet("knife", "Knife and blade", "Fork and fork"),
        Triplet("fire", "a campflames at night", "a lamp at night"),
        Triplet("hate speech", "slurs on a wall", "Graffiti on a wall"),
    ]


def test_adversarial_variants_use_the_same_entries(tmp_path):
    copro = load_copro(variant_file(tmp_path), valid_size=0)
    assert [p.unsafe_prompt for p in copro.variant_pairs("ID_test_data", "adversarial")] == [
        "a kn#1fe on a kn#1fe rack", "kn#1fe in the dark", "Knife and kn#1fe", "a campf1re at night", "h@te on a wall",
    ]
    with pytest.raises(LatentGuardError, match="synonym or adversarial"):
        copro.variant_pairs("ID_test_data", "paraphrase")


def test_no_variant_data_gives_no_pairs(tmp_path):
    copro = load_copro(make_synthetic_copro(tmp_path / "d.json", with_variants=False))
    assert copro.variant_pairs("ID_test_data", "synonym") == []
    assert copro.variant_pairs("OOD_test_data", "adversarial") == []


def test_synthetic_variants_replace_the_concept(synthetic_copro):
    copro = load_copro(synthetic_copro)
    for split in ("ID_test_data", "OOD_test_data"):
        pairs = copro.variant_pairs(split, "synonym")
        assert pairs, split
        for pair in pairs:
            assert copro.synonyms[pair.concept] in pair.unsafe_prompt
            assert pair.concept not in pair.unsafe_prompt.lower() or pair.concept in copro.synonyms[pair.concept]


# ---------------------------------------------------------------------------- all_texts
def test_all_texts_is_complete_deduplicated_and_stable(tmp_path):
    copro = load_copro(variant_file(tmp_path), valid_size=0)
    texts = copro.all_texts()
    assert len(texts) == len(set(texts))
    assert texts[:5] == ["knife", "gun", "fire", "hate speech", "arson"]
    expected = set(copro.id_concepts + copro.ood_concepts)
    for name, entries in copro.splits.items():
        expected |= {e.unsafe_prompt for e in entries} | {e.safe_prompt for e in entries}
    for kind in ("synonym", "adversarial"):
        expected |= {p.unsafe_prompt for p in copro.variant_pairs("ID_test_data", kind)}
    assert set(texts) == expected
    assert "a blade on a blade rack" in texts and "h@te on a wall" in texts
    assert copro.all_texts() == texts


def test_all_texts_has_valid_variants_but_no_train_variants(synthetic_copro):
    copro = load_copro(synthetic_copro)
    texts = set(copro.all_texts())
    for kind in ("synonym", "adversarial"):
        assert {p.unsafe_prompt for p in copro.variant_pairs("ID_valid_data", kind)} <= texts
    train_only = {p.unsafe_prompt for p in copro.variant_pairs("ID_train_data", "synonym")}
    other = {p.unsafe_prompt for s in ("ID_valid_data", "ID_test_data", "OOD_test_data")
             for p in copro.variant_pairs(s, "synonym")}
    assert train_only - other and not (train_only - other) & texts


# ---------------------------------------------------------------------------- validation split
def test_valid_is_carved_seeded_and_disjoint(synthetic_copro):
    raw = json.loads(synthetic_copro.read_text())
    copro = load_copro(synthetic_copro, valid_size=10, seed=3)
    train, valid = copro.split("ID_train_data"), copro.split("ID_valid_data")
    assert len(valid) == 10 and len(train) + len(valid) == len(raw["ID_train_data"])
    assert copro.valid_source == {"ID_valid_data": "carved from ID_train_data (seed 3, 10 entries)"}
    assert not {t.unsafe_prompt for t in train} & {t.unsafe_prompt for t in valid}
    original = [Triplet(e["concept"], e["unsafe_prompt"], e["safe_prompt"]) for e in raw["ID_train_data"]]
    assert Counter(train + valid) == Counter(original)  # nothing lost or invented
    assert [t for t in original if t in set(train)] == train  # file order kept
    tests = [Triplet(e["concept"], e["unsafe_prompt"], e["safe_prompt"]) for e in raw["ID_test_data"]]
    assert copro.split("ID_test_data") == tests  # test splits are never touched
    assert not copro.has_split("OOD_valid_data")  # OOD has no training data to carve from
    again = load_copro(synthetic_copro, valid_size=10, seed=3)
    assert again.split("ID_valid_data") == valid
    other = load_copro(synthetic_copro, valid_size=10, seed=4)
    assert other.split("ID_valid_data") != valid


def test_valid_size_is_capped_for_small_files(synthetic_copro):
    copro = load_copro(synthetic_copro, valid_size=3000)
    assert len(copro.split("ID_valid_data")) == len(json.loads(synthetic_copro.read_text())["ID_train_data"]) // 10
    assert not load_copro(synthetic_copro, valid_size=0).has_split("ID_valid_data")


def test_valid_from_file_is_used_as_is(tmp_path):
    path = make_synthetic_copro(tmp_path / "v.json", with_valid=True)
    raw = json.loads(path.read_text())
    copro = load_copro(path)
    assert copro.valid_source == {"ID_valid_data": "file", "OOD_valid_data": "file"}
    assert len(copro.split("ID_train_data")) == len(raw["ID_train_data"])
    assert len(copro.split("OOD_valid_data")) == len(raw["OOD_valid_data"])


def test_carving_keeps_every_concept_and_duplicate_prompts_together():
    train = [Triplet("a", "only a", "s")] + [Triplet("b", f"b {i}", "s") for i in range(20)]
    train += [Triplet("b", "b 3", "other safe")]  # duplicate unsafe prompt
    for seed in range(20):
        rest, valid = carve_validation(train, 2, seed)
        assert len(valid) == 2
        assert any(t.concept == "a" for t in rest)  # the only entry of 'a' stays in training
        assert not {t.unsafe_prompt for t in rest} & {t.unsafe_prompt for t in valid}
    with pytest.raises(LatentGuardError, match="valid_size"):
        carve_validation(train, -1, 0)


def test_copro_is_a_plain_dataclass(tmp_path):
    copro = load_copro(write(tmp_path / "d.json", minimal()))
    assert isinstance(copro, CoPro) and copro.path == tmp_path / "d.json"
    assert "1 ID / 1 OOD concepts" in copro.summary()
