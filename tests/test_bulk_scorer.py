"""GuardBatchScorer: the same verdicts as the guard for every batch type, a recipe (not a model) when
pickled, refusals that never read as safe, and the documented Hugging Face ``datasets.map`` example."""
from __future__ import annotations

import pickle

import numpy as np
import pyarrow as pa
import pytest
from test_bulk_local import checkpoint, split_threshold

from latentguard.bulk import GuardBatchScorer
from latentguard.errors import LatentGuardError
from latentguard.guard import LatentGuard

TEXTS = ["a knife on the table", "a red balloon", "a knife on the table", "blood on the floor", "a man with a gun",
         "a cake", "a red balloon"]


@pytest.fixture
def recipe(tmp_path, tiny_encoder_dir, tiny_encoder):
    """``LatentGuard.from_pretrained`` keyword arguments (what Ray's fn_constructor_kwargs carry) and the guard."""
    (tmp_path / "blacklist.yaml").write_text("concepts:\n  violence: [knife, gun]\n  gore: [blood]\n")
    options = {"checkpoint": str(checkpoint(tmp_path / "ckpt.pth")), "encoder": str(tiny_encoder_dir),
               "concepts": str(tmp_path / "blacklist.yaml"), "device": "cpu", "cache_concepts": False}
    guard = LatentGuard.from_pretrained(**{**options, "encoder": tiny_encoder}, threshold=0.0)
    options["threshold"] = guard.threshold = split_threshold(guard, TEXTS)
    return options, guard


def expected(guard: LatentGuard) -> dict[str, list]:
    verdicts = guard.check(TEXTS, explain=False)
    return {"score": [v.score for v in verdicts], "unsafe": [v.unsafe for v in verdicts],
            "concept": [v.concept for v in verdicts], "truncated": [v.truncated for v in verdicts],
            "refused": [None] * len(verdicts),
            "category_violence": [v.categories["violence"] for v in verdicts],
            "category_gore": [v.categories["gore"] for v in verdicts]}


def assert_verdicts(got: dict[str, list], want: dict[str, list]) -> None:
    assert list(got) == list(want)
    np.testing.assert_allclose(got["score"], want["score"], rtol=1e-5, atol=1e-5)
    for name in list(want)[1:]:
        assert list(got[name]) == want[name], name
    assert 0 < sum(want["unsafe"]) < len(TEXTS)


def test_every_batch_type_gets_the_guards_verdicts_and_keeps_its_columns(recipe):
    import pandas as pd

    options, guard = recipe
    want = expected(guard)
    scorer = GuardBatchScorer(**options)
    ids = list(range(len(TEXTS)))
    as_numpy = scorer({"id": np.array(ids), "text": np.array(TEXTS, dtype=object)})  # Ray's default batch
    assert list(as_numpy) == ["id", "text", *want] and isinstance(as_numpy["score"], np.ndarray)
    assert as_numpy["score"].dtype == np.float32 and as_numpy["unsafe"].dtype == bool
    assert_verdicts({k: as_numpy[k].tolist() for k in want}, want)
    as_lists = scorer({"id": ids, "text": TEXTS})  # datasets.map(batched=True) gives lists
    assert isinstance(as_lists["unsafe"], list) and as_lists["text"] == TEXTS
    assert_verdicts({k: as_lists[k] for k in want}, want)
    frame = scorer(pd.DataFrame({"id": ids, "text": TEXTS}))
    assert list(frame.columns) == ["id", "text", *want]
    assert_verdicts({k: frame[k].tolist() for k in want}, want)
    table = scorer(pa.table({"id": ids, "text": TEXTS}))
    assert table.column_names == ["id", "text", *want] and str(table.schema.field("score").type) == "float"
    assert_verdicts({k: table.column(k).to_pylist() for k in want}, want)
    assert scorer.columns() == list(want)


def test_pickling_carries_the_recipe_and_each_copy_builds_the_guard_once(recipe, monkeypatch):
    options, guard = recipe
    scorer = GuardBatchScorer(**options)
    scorer({"text": TEXTS[:2]})
    blob = pickle.dumps(scorer)
    assert len(blob) < 4000  # the recipe only, never the model
    built = []
    original = LatentGuard.from_pretrained.__func__

    def counting(cls, *args, **kwargs):
        built.append(1)
        return original(cls, *args, **kwargs)

    monkeypatch.setattr(LatentGuard, "from_pretrained", classmethod(counting))
    copy = pickle.loads(blob)
    for _ in range(3):
        out = copy({"text": TEXTS})
    assert built == [1]
    assert_verdicts({k: out[k] for k in expected(guard)}, expected(guard))
    given = GuardBatchScorer(guard=guard)  # a built guard, for in-process use, travels with its copy
    assert pickle.loads(pickle.dumps(given)).guard is not None


def test_refusals_never_read_as_safe(recipe):
    from latentguard.bulk.manifest import guard_identity

    options, guard = recipe
    scorer = GuardBatchScorer(guard=guard)
    with pytest.raises(LatentGuardError, match="row 1 of the batch has no text"):
        scorer({"text": ["fine", None]})
    with pytest.raises(LatentGuardError, match="row 0 of the batch has a int, not text"):
        scorer({"text": [3]})
    with pytest.raises(LatentGuardError, match="no column 'prompt'"):
        GuardBatchScorer(guard=guard, text_column="prompt")({"text": ["fine"]})
    with pytest.raises(LatentGuardError, match="already has column"):
        scorer({"text": ["fine"], "score": [1.0]})
    with pytest.raises(LatentGuardError, match="dict of columns, a pandas DataFrame or a pyarrow Table"):
        scorer(["fine"])
    with pytest.raises(LatentGuardError, match="holds one str, not a column of texts"):  # datasets.map, unbatched
        scorer({"text": "a man with a gun", "id": 7})
    import pandas as pd

    with pytest.raises(LatentGuardError, match="2 columns named 'text'"):
        scorer(pd.DataFrame([["a", "b"]], columns=["text", "text"]))
    by_label = GuardBatchScorer(guard=guard, text_column="1")(pd.DataFrame({1: ["fine"]}))  # a non-string label
    assert list(by_label.columns)[:1] == [1] and len(by_label["unsafe"]) == 1
    expect = {**guard_identity(guard), "threshold": guard.threshold + 1}
    with pytest.raises(LatentGuardError, match="not the one the run recorded .*threshold"):
        GuardBatchScorer(expect=expect, **options)({"text": ["fine"]})
    assert GuardBatchScorer(expect=guard_identity(guard), **options)({"text": ["fine"]})["unsafe"] in ([True], [False])


def test_the_datasets_map_example(recipe):
    """docs/bulk.md: ``ds.map(GuardBatchScorer(...), batched=True)`` (runs when ``datasets`` is installed)."""
    datasets = pytest.importorskip("datasets")
    options, guard = recipe
    ds = datasets.Dataset.from_dict({"text": TEXTS, "id": list(range(len(TEXTS)))})
    scored = ds.map(GuardBatchScorer(**options), batched=True, batch_size=3)
    want = expected(guard)
    assert scored.column_names == ["text", "id", *want]
    assert_verdicts({k: scored[k] for k in want}, want)
