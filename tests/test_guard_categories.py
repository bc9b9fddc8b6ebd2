"""Categories (a grouped blacklist's groups) and probabilities in [0, 1] that never contradict the verdict."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import yaml

from latentguard.decision.probability import DEFAULT_SLOPE, MAX_SLOPE, fit_slope, probabilities
from latentguard.decision.rule import flags
from latentguard.errors import LatentGuardError
from latentguard.guard import LatentGuard
from latentguard.model import EmbeddingMappingLayer

PROMPTS = ["a photo of a knife", "blood on the floor", "a red balloon in the sky", "a man with a gun",
           "a cake on a table", "a bomb in a backpack"]


def _checkpoint(path):
    torch.manual_seed(0)
    torch.save(EmbeddingMappingLayer().state_dict(), path)
    return path


@pytest.fixture
def grouped(tmp_path, tiny_encoder):
    blacklist = tmp_path / "blacklist.yaml"
    blacklist.write_text("concepts:\n  violence: [knife, gun, bomb]\n  gore: [blood, knife]\nthresholds:\n  gun: 2.5\n",
                         encoding="utf-8")
    ckpt = _checkpoint(tmp_path / "ckpt.pth")
    guard = LatentGuard.from_pretrained(ckpt, tiny_encoder, blacklist, threshold="released", cache_concepts=False)
    guard.threshold = float(np.median(guard.scores(PROMPTS)))  # some prompts flagged, some not
    return guard


# ------------------------------------------------------------------------------- probabilities
def test_probability_is_at_least_half_exactly_when_the_concept_fires():
    rng = np.random.default_rng(0)
    thresholds = rng.normal(5, 1, 40)
    logits = np.concatenate([rng.normal(5, 2, (200, 40)), np.tile(thresholds, (3, 1)),   # exactly at threshold
                             np.tile(np.nextafter(thresholds, -np.inf), (3, 1))])        # one ulp below
    for slope in (1e-30, 1e-3, DEFAULT_SLOPE, 7.5, MAX_SLOPE):
        p = probabilities(logits, thresholds, slope)
        assert ((p >= 0.5) == flags(logits, thresholds)).all() and ((p >= 0) & (p <= 1)).all()
    p = probabilities([[0.0, 1.0, 2.0]], [1.0, 1.0, 1.0], 2.0)
    np.testing.assert_allclose(p, 1 / (1 + np.exp(-2.0 * np.array([[-1.0, 0.0, 1.0]]))))
    for bad in (0.0, -1.0, float("nan"), float("inf"), True):
        with pytest.raises(LatentGuardError, match="slope"):
            probabilities([[1.0]], [1.0], bad)


def test_the_slope_is_the_maximum_likelihood_fit():
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(1)
    margins = rng.normal(0, 2, 5000)
    labels = rng.random(5000) < 1 / (1 + np.exp(-1.7 * margins))
    reference = LogisticRegression(fit_intercept=False, C=1e12, tol=1e-12, max_iter=1000).fit(margins[:, None], labels)
    assert fit_slope(margins + 4.0, labels, 4.0) == pytest.approx(float(reference.coef_[0, 0]), rel=1e-5)
    assert fit_slope([1, 2, 3, 7, 8], [0, 0, 0, 1, 1], 5.0) == MAX_SLOPE  # separated: the likelihood has no maximum
    with pytest.raises(LatentGuardError, match="rank safe prompts above unsafe ones"):
        fit_slope([7, 8, 1, 2], [0, 0, 1, 1], 5.0)
    with pytest.raises(LatentGuardError, match="both unsafe and safe"):
        fit_slope([1, 2], [0, 0], 5.0)


# ---------------------------------------------------------------------------------- categories
def test_a_grouped_blacklist_gives_categories_flagged_by_any_of_their_concepts(grouped):
    assert grouped.categories == {"violence": ["knife", "gun", "bomb"], "gore": ["blood", "knife"]}
    logits = grouped.logits(PROMPTS)
    fired = flags(logits, grouped.thresholds())
    p = probabilities(logits, grouped.thresholds(), DEFAULT_SLOPE)
    verdicts = grouped.check(PROMPTS, explain=False)
    assert 0 < sum(v.unsafe for v in verdicts) < len(PROMPTS)
    for i, v in enumerate(verdicts):
        for name, members in grouped.categories.items():
            cols = [grouped.concepts.index(c) for c in members]
            assert v.categories[name] == bool(fired[i, cols].any())
            assert v.category_scores[name] == pytest.approx(p[i, cols].max())
            assert (v.category_scores[name] >= 0.5) == v.categories[name]
        assert v.unsafe == any(v.categories.values()) and (v.probability >= 0.5) == v.unsafe


def test_a_flat_blacklist_is_one_category_named_in_the_config(tmp_path, tiny_encoder):
    ckpt = _checkpoint(tmp_path / "ckpt.pth")
    guard = LatentGuard.from_pretrained(ckpt, tiny_encoder, ["knife", "blood"], threshold=0.0, cache_concepts=False,
                                        default_category="violence")
    assert guard.categories == {"violence": ["knife", "blood"]}
    guard.add_concepts(["cocaine"], category="drugs")
    guard.add_concepts(["gun"])
    assert guard.categories == {"violence": ["knife", "blood", "gun"], "drugs": ["cocaine"]}
    guard.remove_concepts(["cocaine"])
    assert guard.categories == {"violence": ["knife", "blood", "gun"]}
    assert set(guard.check(["a knife"])[0].categories) == {"violence"}
    with pytest.raises(LatentGuardError, match="not on the blacklist: bread"):
        guard.categories = {"food": ["bread"]}


def test_calibrating_with_unsafe_prompts_fits_and_records_the_slope(tmp_path, tiny_encoder):
    ckpt = _checkpoint(tmp_path / "model_parameters.pth")
    guard = LatentGuard.from_pretrained(ckpt, tiny_encoder, ["knife", "blood", "gun"], threshold="released",
                                        cache_concepts=False)
    assert guard.slope is None  # uncalibrated: DEFAULT_SLOPE is used
    scores = guard.scores(PROMPTS)
    order = np.argsort(scores)
    safe, unsafe = [PROMPTS[i] for i in order[:3]], [PROMPTS[i] for i in order[3:]]
    result = guard.calibrate(safe + [unsafe[0]], unsafe, save=True)
    expected = fit_slope(np.r_[guard.scores(safe + [unsafe[0]]), guard.scores(unsafe)], [0, 0, 0, 0, 1, 1, 1],
                         result.threshold)
    assert result.slope == pytest.approx(expected) and guard.slope == result.slope
    record = yaml.safe_load((tmp_path / "model_parameters.threshold.yaml").read_text())
    assert record["slope"] == pytest.approx(expected)
    again = LatentGuard.from_pretrained(ckpt, tiny_encoder, ["knife", "blood", "gun"], cache_concepts=False)
    assert again.slope == pytest.approx(expected) and again.threshold == pytest.approx(result.threshold)
    safe_only = guard.calibrate(safe, target_fpr=0.0)
    assert safe_only.slope is None and guard.slope is None  # one class: nothing to fit the slope on


# ----------------------------------------------------------- an empty category: refused when read or set
def test_an_empty_category_is_refused_when_set_and_the_old_ones_are_kept(tmp_path, tiny_encoder):
    ckpt = _checkpoint(tmp_path / "ckpt.pth")
    guard = LatentGuard.from_pretrained(ckpt, tiny_encoder, ["knife", "blood"], threshold=0.0, cache_concepts=False)
    before = guard.categories
    for bad in ({"x": []}, {"violence": ["knife"], "x": []}, {"x": ()}, {"x": iter([])}):
        with pytest.raises(LatentGuardError, match="category 'x' has no concepts"):
            guard.categories = bad
        assert guard.categories == before
        assert len(guard.check(["a knife"])) == 1  # still judges
    guard.add_concepts(["knife"], category="empty")  # already on the blacklist: nothing added, no empty category
    assert "empty" not in guard.categories
    with pytest.raises(LatentGuardError, match="no concepts"):
        LatentGuard.from_pretrained(ckpt, tiny_encoder, ["knife"], categories={"x": []}, threshold=0.0,
                                    cache_concepts=False)


@pytest.mark.parametrize("text", ["violence: []\ndrugs: [cocaine]\n", "concepts:\n  violence: []\n  drugs: [x]\n"])
def test_a_blacklist_file_with_an_empty_group_is_one_line_naming_it(tmp_path, text):
    from latentguard.data.blacklist import load_blacklist

    (tmp_path / "b.yaml").write_text(text, encoding="utf-8")
    with pytest.raises(LatentGuardError, match=r"b.yaml: group 'violence' has no concepts"):
        load_blacklist(tmp_path / "b.yaml")


def test_inference_and_score_refuse_an_empty_group_in_one_line_leaving_nothing(tmp_path, tiny_encoder_dir, capsys):
    import inference
    from latentguard.cli.score import main as score

    _checkpoint(tmp_path / "ckpt.pth")
    (tmp_path / "b.yaml").write_text("violence: []\ndrugs: [cocaine]\n", encoding="utf-8")
    (tmp_path / "p.txt").write_text("a knife\na cake\n", encoding="utf-8")
    common = ["--checkpoint", str(tmp_path / "ckpt.pth"), "--encoder", str(tiny_encoder_dir),
              "--concepts", str(tmp_path / "b.yaml"), "--device", "cpu", "--threshold", "0"]
    assert inference.main(["--file_path", str(tmp_path / "p.txt"), *common]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "group 'violence' has no concepts" in err
    out = tmp_path / "scored"
    assert score([str(tmp_path / "p.txt"), "--output", str(out), "--no-progress", *common]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "group 'violence' has no concepts" in err
    assert not out.exists()  # no _manifest.json, no _dedup.sqlite, no directory
