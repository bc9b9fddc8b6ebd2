"""The open-data loaders (CoPro CSV triplets, CoProV2 pairs, captions): real rows read, malformed rows refused
in one line naming the file and line, evaluation splits kept out of training."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from latentguard.data.open_data import (
    DATA_FILES,
    load_captions,
    load_copro_triplets,
    load_coprov2_pairs,
    load_coprov2_test,
)
from latentguard.errors import LatentGuardError

FIXTURES = Path(__file__).parent / "fixtures" / "open_data"


def test_real_rows_load_with_their_labels():
    triplets = load_copro_triplets(FIXTURES / "copro_triplets_sample.csv")
    assert triplets and all(t.split == "valid" for t in triplets)
    assert all(t.unsafe != t.safe and t.concept for t in triplets)
    both = load_copro_triplets(FIXTURES / "copro_triplets_sample.csv", ["valid", "test"])
    assert len(both) > len(triplets) and any(t.split == "test" for t in both)
    pairs = load_coprov2_pairs(FIXTURES / "coprov2_pairs_sample.csv")
    assert {p.category for p in pairs} == {"hate", "harassment", "violence", "self-harm", "sexual", "shocking",
                                           "illegal-activity"}
    assert all(p.unsafe != p.safe for p in pairs)
    test = load_coprov2_test(FIXTURES / "coprov2_test.csv")
    assert len(test) == 42 and {c for _, c in test} >= {"self-harm", "harassment"}
    captions = load_captions(FIXTURES / "coco_captions.csv").captions
    assert len(captions) == len(set(captions)) > 100


def _copy(tmp_path: Path, name: str, edit) -> Path:
    path = tmp_path / name
    shutil.copy(FIXTURES / name, path)
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    path.write_text("".join(edit(lines)), encoding="utf-8")
    return path


@pytest.mark.parametrize("name, edit, load, expected", [
    ("copro_triplets_sample.csv", lambda ls: [ls[0].replace("unsafe_prompt", "unsafe")] + ls[1:], load_copro_triplets,
     "missing column(s) unsafe_prompt"),
    ("copro_triplets_sample.csv", lambda ls: ls[:3] + [ls[3].replace("valid,", "train,", 1)] + ls[4:],
     load_copro_triplets,
     "line 4: split 'train'"),
    ("copro_triplets_sample.csv", lambda ls: ls[:2] + ["valid,ID,explicit,knife,,a safe prompt\n"] + ls[2:],
     load_copro_triplets, "line 3: empty 'unsafe_prompt'"),
    ("coprov2_pairs_sample.csv", lambda ls: ls[:1] + ls[2:], load_coprov2_pairs, "has no unsafe twin"),
    ("coprov2_pairs_sample.csv", lambda ls: ls[:1] + [ls[1].replace("u_idx_", "x_idx_")] + ls[2:], load_coprov2_pairs,
     "line 2: image"),
    ("coprov2_pairs_sample.csv", lambda ls: ls + [ls[1]], load_coprov2_pairs, "has a second unsafe row"),
    ("coprov2_test.csv", lambda ls: ls[:1] + [ls[1].rstrip("\n").rsplit(",", 1)[0] + ",Gardening\n"] + ls[2:],
     load_coprov2_test, "line 2: unknown category 'Gardening'"),
    ("coco_captions.csv", lambda ls: ls[:1] + ['"a cat, sitting",1,extra\n'] + ls[1:], load_captions,
     "line 2: 2 columns expected"),
])
def test_malformed_rows_are_refused_in_one_line_naming_the_line(tmp_path, name, edit, load, expected):
    path = _copy(tmp_path, name, edit)
    with pytest.raises(LatentGuardError) as error:
        load(path)
    message = str(error.value)
    assert expected in message and str(path) in message and "\n" not in message


def test_a_coprov2_test_file_is_not_taken_as_training_pairs():
    with pytest.raises(LatentGuardError, match="for evaluation"):
        load_coprov2_pairs(FIXTURES / "coprov2_test.csv")


def test_missing_file_and_non_utf8_are_one_line(tmp_path):
    with pytest.raises(LatentGuardError, match="no such file"):
        load_captions(tmp_path / "nope.csv")
    bad = tmp_path / "bad.csv"
    bad.write_bytes(b"prompt,image_id\n\xff\xfe cat,1\n")
    with pytest.raises(LatentGuardError, match="not UTF-8"):
        load_captions(bad)


def test_every_documented_source_is_pinned():
    for name, source in DATA_FILES.items():
        assert len(source.commit) == 40 and len(source.sha256) == 64, name
        assert source.url.startswith("https://raw.githubusercontent.com/") and source.commit in source.url


def test_a_csv_saved_with_a_byte_order_mark_loads_as_without(tmp_path):
    """Excel's "CSV UTF-8" starts with a byte-order mark; it was read as part of the first column's name."""
    from latentguard.data.open_data import load_captions

    plain = tmp_path / "plain.csv"
    plain.write_text("prompt\nA cat on a sofa.\nTwo dogs in a park.\n", encoding="utf-8")
    marked = tmp_path / "marked.csv"
    marked.write_bytes(b"\xef\xbb\xbf" + plain.read_bytes())
    expected = ["A cat on a sofa.", "Two dogs in a park."]
    assert load_captions(marked).captions == load_captions(plain).captions == expected
