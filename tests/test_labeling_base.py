"""Tests of the labeler interface, the scripted teacher and the labeling report."""

import numpy as np
import pytest

from plare_jax.labeling import (
    FIRST,
    SECOND,
    UNSURE,
    Labeler,
    PairBatch,
    ScriptedTeacher,
    format_report,
    labeling_report,
    preferences_to_targets,
)


def test_preferences_to_targets_drop_gives_unsure_zero_weight():
    labels, weights = preferences_to_targets(np.array([0, 1, -1, 1]), unsure="drop")
    np.testing.assert_array_equal(labels, [0.0, 1.0, 0.0, 1.0])
    np.testing.assert_array_equal(weights, [1.0, 1.0, 0.0, 1.0])
    assert labels.dtype == np.float32 and weights.dtype == np.float32


def test_preferences_to_targets_tie_gives_half_label_full_weight():
    labels, weights = preferences_to_targets([0, 1, -1], unsure="tie")
    np.testing.assert_array_equal(labels, [0.0, 1.0, 0.5])
    np.testing.assert_array_equal(weights, [1.0, 1.0, 1.0])


@pytest.mark.parametrize("bad", [[0, 2], [[0, 1]]])
def test_preferences_to_targets_rejects_bad_labels(bad):
    with pytest.raises(ValueError):
        preferences_to_targets(bad)
    with pytest.raises(ValueError, match="drop"):
        preferences_to_targets([0, 1], unsure="ignore")


def test_pair_batch_validates_shapes():
    with pytest.raises(ValueError, match="images"):
        PairBatch("t")
    with pytest.raises(ValueError, match=r"\[P, 2\]"):
        PairBatch("t", scores=np.zeros((3, 3)))
    with pytest.raises(ValueError, match="match"):
        PairBatch("t", images=[(b"a", b"b")], scores=np.zeros((2, 2)))
    assert len(PairBatch("t", scores=np.zeros((5, 2)))) == 5


def test_scripted_teacher_agrees_with_ground_truth():
    rng = np.random.default_rng(1)
    returns = rng.normal(size=(1000, 2))
    teacher = ScriptedTeacher()
    assert isinstance(teacher, Labeler)
    prefs = teacher.label(PairBatch("t", scores=returns)).preferences
    expected_second = returns[:, 1] > returns[:, 0]
    np.testing.assert_array_equal(prefs == SECOND, expected_second)
    np.testing.assert_array_equal(prefs == FIRST, ~expected_second)


def test_scripted_teacher_equal_threshold_gives_unsure():
    returns = np.array([[1.0, 1.05], [1.0, 1.5], [2.0, 1.0], [3.0, 3.0]])
    prefs = ScriptedTeacher(equal_threshold=0.1).label(PairBatch("t", scores=returns)).preferences
    np.testing.assert_array_equal(prefs, [UNSURE, SECOND, FIRST, UNSURE])


@pytest.mark.parametrize("rate", [0.1, 0.3])
def test_scripted_teacher_mistake_rate_matches_flip_rate(rate):
    rng = np.random.default_rng(2)
    returns = rng.normal(size=(20000, 2))
    clean = ScriptedTeacher().label(PairBatch("t", scores=returns)).preferences
    noisy = ScriptedTeacher(mistake_rate=rate, seed=3).label(PairBatch("t", scores=returns))
    flip_rate = np.mean(clean != noisy.preferences)
    # binomial std at n=20000 is <= 0.0035; 4 sigma
    assert abs(flip_rate - rate) < 0.015
    assert noisy.stats["flipped"] == int(np.sum(clean != noisy.preferences))
    again = ScriptedTeacher(mistake_rate=rate, seed=3).label(PairBatch("t", scores=returns)).preferences
    np.testing.assert_array_equal(again, noisy.preferences)  # seeded


def test_scripted_teacher_never_flips_unsure():
    returns = np.array([[1.0, 1.0]] * 100)
    prefs = ScriptedTeacher(mistake_rate=1.0).label(PairBatch("t", scores=returns)).preferences
    assert np.all(prefs == UNSURE)


def test_scripted_teacher_rejects_bad_config_and_missing_scores():
    with pytest.raises(ValueError):
        ScriptedTeacher(mistake_rate=1.5)
    with pytest.raises(ValueError):
        ScriptedTeacher(equal_threshold=-1)
    with pytest.raises(ValueError, match="PairBatch.scores"):
        ScriptedTeacher().label(PairBatch("t", images=[(b"a", b"b")]))


def test_labeling_report_accuracy_and_confusion():
    labeler = np.array([0, 1, 1, -1, 0, 1])
    teacher = np.array([0, 1, 0, 1, -1, 1])
    stats = {"requests": 12, "cache_hits": 3, "latency_p50_s": 0.2}
    report = labeling_report(labeler, teacher, stats)
    # both sure: pairs 0, 1, 2, 5 -> 3 of 4 agree
    assert report["both_sure"] == 4
    assert report["accuracy"] == pytest.approx(0.75)
    assert report["unsure_rate"] == pytest.approx(1 / 6)
    assert report["confusion"]["second"]["first"] == 1
    assert report["confusion"]["unsure"]["second"] == 1
    assert report["confusion"]["first"]["unsure"] == 1
    assert sum(sum(row.values()) for row in report["confusion"].values()) == 6
    assert report["requests"] == 12 and report["retries"] is None
    text = format_report(report)
    assert "75.0%" in text and "cache hits 3" in text


def test_labeling_report_no_sure_pairs_and_shape_mismatch():
    assert labeling_report([-1, -1], [0, 1], {})["accuracy"] is None
    with pytest.raises(ValueError, match="same pairs"):
        labeling_report([0, 1], [0], {})
