"""Noise models of the scripted teacher: each against its definition, its stream, and calibration."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest

from plare_jax.data.segments import sample_segment_pairs
from plare_jax.labeling import (
    FIRST, NOISE_MODELS, SECOND, UNSURE, PairBatch, ScriptedTeacher, TeacherNoise, apply_noise, calibrate_noise,
    calibrate_unsure_rate, gap_scale, label_agreement, noise_free_level,
)  # fmt: skip
from plare_jax.labeling.noise import discounted_scores, noise_rng
from plare_jax.labeling.scripted import preferences_from_scores

AGREEMENT_MODELS = ("mistake", "boltzmann", "myopic", "hard-pairs", "position-bias")


def synthetic_batch(num_pairs=2000, length=16, seed=0):
    """Per-step rewards [P, 2, T] and their sums [P, 2] (a return teacher)."""
    steps = np.random.default_rng(seed).normal(size=(num_pairs, 2, length))
    return steps, steps.sum(-1)


def label(scores, noise, *, seed=0, steps=None, equal_threshold=0.0):
    teacher = ScriptedTeacher(equal_threshold=equal_threshold, noise=noise, seed=seed)
    return teacher.label(PairBatch("t", scores=scores, step_scores=steps))


def four_sigma(p, n):
    return 4 * math.sqrt(max(p * (1 - p), 1e-12) / n)


# --- knob validation and noise-free levels -------------------------------------------------------------


@pytest.mark.parametrize("model,level", [
    ("mistake", 1.5), ("mistake", -0.1), ("boltzmann", 0.0), ("boltzmann", -1.0), ("equal", math.inf),
    ("equal", -1.0), ("skip", 1.1), ("myopic", 0.0), ("myopic", 1.2), ("hard-pairs", -0.5),
    ("position-bias", math.nan), ("position-bias", 2.0), ("mistake", "a lot"),
])  # fmt: skip
def test_teacher_noise_rejects_a_knob_out_of_range(model, level):
    with pytest.raises(ValueError, match=model):
        TeacherNoise(model, level)


def test_teacher_noise_rejects_unknown_models_and_names_the_known_ones():
    with pytest.raises(ValueError, match="hard-pairs"):
        TeacherNoise("hard_pair", 0.1)
    with pytest.raises(ValueError, match="unknown"):
        noise_free_level("flip")


def test_noise_free_levels_and_defaults():
    assert {m: noise_free_level(m) for m in NOISE_MODELS} == {
        "mistake": 0.0, "boltzmann": math.inf, "equal": 0.0, "skip": 0.0, "myopic": 1.0, "hard-pairs": 0.0,
        "position-bias": 0.0}  # fmt: skip
    assert TeacherNoise() == TeacherNoise("mistake", 0.0) and TeacherNoise().is_noise_free
    assert TeacherNoise("boltzmann", math.inf).is_noise_free and not TeacherNoise("boltzmann", 1e6).is_noise_free


@pytest.mark.parametrize("model", NOISE_MODELS)
def test_noise_free_level_reproduces_the_clean_labels_exactly(model):
    steps, scores = synthetic_batch(3000, seed=1)
    scores[:50, 1] = scores[:50, 0]  # exact ties, plus the threshold's unsure pairs below
    clean = preferences_from_scores(scores, equal_threshold=0.2)
    assert (clean == UNSURE).sum() > 50
    result = label(scores, TeacherNoise(model, noise_free_level(model)), seed=5, steps=steps, equal_threshold=0.2)
    np.testing.assert_array_equal(result.preferences, clean)
    assert result.stats["agreement"] == 1.0 and result.stats["flipped"] == 0 and result.stats["made_unsure"] == 0


@pytest.mark.parametrize("noise", [TeacherNoise("mistake", 1.0), TeacherNoise("boltzmann", 0.01),
                                   TeacherNoise("hard-pairs", 100.0), TeacherNoise("position-bias", 1.0),
                                   TeacherNoise("myopic", 0.01)])  # fmt: skip
def test_no_model_answers_a_pair_the_clean_teacher_is_unsure_about(noise):
    steps, scores = synthetic_batch(2000, seed=2)
    clean = preferences_from_scores(scores, equal_threshold=0.5)
    prefs = label(scores, noise, steps=steps, equal_threshold=0.5).preferences
    assert np.all(prefs[clean == UNSURE] == UNSURE)
    assert np.any(prefs[clean != UNSURE] != clean[clean != UNSURE])  # the noise did act elsewhere


# --- each model against its definition --------------------------------------------------------------------


@pytest.mark.parametrize("level", [0.1, 0.3])
def test_mistake_flips_that_share_of_sure_labels_uniformly_over_gaps(level):
    _, scores = synthetic_batch(20000, seed=3)
    clean = preferences_from_scores(scores)
    prefs = label(scores, TeacherNoise("mistake", level), seed=4).preferences
    flipped = prefs != clean
    assert np.all(prefs[flipped] == 1 - clean[flipped])
    assert abs(flipped.mean() - level) < four_sigma(level, len(prefs))
    gap = np.abs(scores[:, 1] - scores[:, 0])
    small, large = gap < np.quantile(gap, 0.25), gap > np.quantile(gap, 0.75)
    assert abs(flipped[small].mean() - flipped[large].mean()) < 2 * four_sigma(level, small.sum())


def test_boltzmann_follows_the_sigmoid_of_the_scaled_gap():
    beta = 2.0
    _, scores = synthetic_batch(40000, seed=5)
    prefs = label(scores, TeacherNoise("boltzmann", beta), seed=6).preferences
    gap = scores[:, 1] - scores[:, 0]
    scale = np.median(np.abs(gap))
    assert gap_scale(scores) == pytest.approx(scale)
    p_second = 1 / (1 + np.exp(-beta * gap / scale))
    bins = np.digitize(p_second, np.linspace(0, 1, 11)[1:-1])
    for b in range(10):
        in_bin = bins == b
        n = in_bin.sum()
        assert n > 1000
        expected = p_second[in_bin].mean()
        # sum of independent Bernoulli(p_i): variance sum p_i (1 - p_i); 4 sigma
        sigma = math.sqrt((p_second[in_bin] * (1 - p_second[in_bin])).sum()) / n
        assert abs((prefs[in_bin] == SECOND).mean() - expected) < 4 * sigma + 1e-9, b


def test_boltzmann_bigger_beta_means_fewer_mistakes():
    _, scores = synthetic_batch(5000, seed=7)
    agreement = [label(scores, TeacherNoise("boltzmann", beta), seed=8).stats["agreement"]
                 for beta in (0.1, 1.0, 10.0, 100.0)]
    assert agreement == sorted(agreement) and agreement[0] < 0.6 and agreement[-1] > 0.98


def test_equal_is_unsure_exactly_below_level_times_the_median_gap():
    scores = np.array([[0.0, 0.1], [0.0, 0.5], [1.0, 0.0], [0.0, 2.0], [0.2, 0.0], [3.0, 3.0]])
    assert gap_scale(scores) == pytest.approx(0.5)  # median of the nonzero gaps 0.1, 0.5, 1, 2, 0.2
    prefs = label(scores, TeacherNoise("equal", 1.0)).preferences
    np.testing.assert_array_equal(prefs, [UNSURE, SECOND, FIRST, SECOND, UNSURE, UNSURE])
    _, many = synthetic_batch(5000, seed=9)
    clean = preferences_from_scores(many)
    result = label(many, TeacherNoise("equal", 0.3))
    gap = np.abs(many[:, 1] - many[:, 0])
    np.testing.assert_array_equal(result.preferences == UNSURE, gap < 0.3 * gap_scale(many))
    sure = result.preferences != UNSURE
    np.testing.assert_array_equal(result.preferences[sure], clean[sure])


def test_skip_drops_pairs_whose_better_segment_is_below_the_quantile():
    scores = np.array([[0.0, 1.0], [3.0, 2.0], [4.0, 5.0], [7.0, 6.0]])  # median of 0..7 is 3.5
    result = label(scores, TeacherNoise("skip", 0.5))
    np.testing.assert_array_equal(result.preferences, [UNSURE, UNSURE, SECOND, FIRST])
    assert result.stats["skipped"] == 2 and result.stats["unsure"] == 2
    _, many = synthetic_batch(5000, seed=10)
    clean = preferences_from_scores(many)
    result = label(many, TeacherNoise("skip", 0.3))
    rule = many.max(axis=1) < np.quantile(many, 0.3)
    np.testing.assert_array_equal(result.preferences == UNSURE, rule)
    np.testing.assert_array_equal(result.preferences[~rule], clean[~rule])
    assert result.stats["skipped"] == rule.sum() and result.stats["agreement"] == 1.0


def test_myopic_weighs_recent_steps_more():
    steps = np.array([[[3.0, 0.0, 0.0], [0.0, 0.0, 2.0]]])  # first wins on the sum, second at the end
    scores = steps.sum(-1)
    assert label(scores, TeacherNoise("myopic", 1.0), steps=steps).preferences.tolist() == [FIRST]
    assert label(scores, TeacherNoise("myopic", 0.5), steps=steps).preferences.tolist() == [SECOND]  # 0.75 < 2
    rng = np.random.default_rng(11)
    steps = rng.normal(size=(200, 2, 7))
    gamma = 0.8
    brute = np.array([[sum(gamma ** (6 - t) * steps[p, i, t] for t in range(7)) for i in range(2)]
                      for p in range(200)])  # fmt: skip
    np.testing.assert_allclose(discounted_scores(steps, gamma), brute, rtol=1e-12)
    prefs = label(steps.sum(-1), TeacherNoise("myopic", gamma), steps=steps).preferences
    np.testing.assert_array_equal(prefs, np.where(brute[:, 1] > brute[:, 0], SECOND, FIRST))


def test_myopic_compares_step_sums_so_a_progress_teacher_is_not_reproduced_at_gamma_one():
    steps, returns = synthetic_batch(2000, seed=12)
    progress = steps[..., -2:].mean(-1) - steps[..., :2].mean(-1)  # not the sum of the steps
    result = label(progress, TeacherNoise("myopic", 1.0), steps=steps)
    np.testing.assert_array_equal(result.preferences, preferences_from_scores(returns))
    assert result.stats["agreement"] < 0.9 and result.stats["myopic_step_sums_match_scores"] is False
    assert label(returns, TeacherNoise("myopic", 1.0), steps=steps).stats["myopic_step_sums_match_scores"] is True


def test_myopic_needs_step_scores_of_the_right_shape():
    _, scores = synthetic_batch(10)
    with pytest.raises(ValueError, match="step_scores"):
        label(scores, TeacherNoise("myopic", 0.9))
    with pytest.raises(ValueError, match=r"\[P, 2, T\]"):
        PairBatch("t", scores=scores, step_scores=np.zeros((10, 2)))
    with pytest.raises(ValueError, match="match"):
        PairBatch("t", scores=scores, step_scores=np.zeros((9, 2, 4)))
    with pytest.raises(ValueError, match="match"):
        apply_noise(preferences_from_scores(scores), scores, TeacherNoise("myopic", 0.9), seed=0,
                    step_scores=np.zeros((9, 2, 4)))


def test_hard_pairs_mistakes_land_on_similar_segments():
    level = 0.5
    _, scores = synthetic_batch(20000, seed=13)
    clean = preferences_from_scores(scores)
    flipped = label(scores, TeacherNoise("hard-pairs", level), seed=14).preferences != clean
    gap = np.abs(scores[:, 1] - scores[:, 0])
    p_flip = 0.5 * np.exp(-gap / (level * gap_scale(scores)))
    quartile = np.digitize(gap, np.quantile(gap, [0.25, 0.5, 0.75]))
    rates = [flipped[quartile == q].mean() for q in range(4)]
    assert rates[0] > 10 * rates[3] and rates == sorted(rates, reverse=True)
    for q in range(4):
        in_q = quartile == q
        sigma = math.sqrt((p_flip[in_q] * (1 - p_flip[in_q])).sum()) / in_q.sum()
        assert abs(rates[q] - p_flip[in_q].mean()) < 4 * sigma + 1e-9
    # uniform flips at the same overall rate do not concentrate: the contrast is the model's, not the data's
    uniform = label(scores, TeacherNoise("mistake", flipped.mean()), seed=14).preferences != clean
    assert uniform[quartile == 0].mean() < 2 * uniform[quartile == 3].mean()


def test_position_bias_answers_first_and_raises_first_share():
    level = 0.3
    _, scores = synthetic_batch(20000, seed=15)
    clean = preferences_from_scores(scores)
    result = label(scores, TeacherNoise("position-bias", level), seed=16)
    prefs = result.preferences
    changed = prefs != clean
    assert np.all(clean[changed] == SECOND) and np.all(prefs[changed] == FIRST)
    n_second = (clean == SECOND).sum()
    assert abs(changed.sum() / n_second - level) < four_sigma(level, n_second)
    clean_first = label_agreement(clean, clean)["first_share"]
    expected = clean_first + level * (1 - clean_first)
    assert abs(result.stats["first_share"] - expected) < four_sigma(expected, len(prefs))
    assert result.stats["first_share"] > clean_first + 0.1


# --- the random stream ---------------------------------------------------------------------------------------


@dataclasses.dataclass
class OneEpisode:
    """The least a `StepData` needs: one long episode, so a segment's start row IS its candidate index."""

    rewards: np.ndarray

    def __post_init__(self):
        n = len(self.rewards)
        self.observations, self.actions = np.zeros((n, 1)), np.zeros((n, 1))
        self.episode_ids, self.successes = np.zeros(n, np.int64), None

    num_steps = property(lambda self: len(self.rewards))
    episode_starts = property(lambda self: np.array([0]))
    episode_lengths = property(lambda self: np.array([len(self.rewards)]))


def leak(mask: np.ndarray, pairs) -> float:
    """Largest |correlation| of a per-pair mask with the pair sampler's draws, at the alignments where a
    generator shared with the sampler would show up (numpy draws the bounded integers from 32-bit halves
    of the same 64-bit outputs that `random()` turns into floats)."""
    draws = pairs.starts[:, 0] / pairs.starts.max()
    half = len(mask) // 2
    candidates = [(mask, draws), (mask[:half], draws[0:2 * half:2]), (mask[:half], draws[1:2 * half:2])]
    return max(abs(np.corrcoef(m.astype(float), d)[0, 1]) for m, d in candidates)


def test_flips_come_from_their_own_stream_not_the_pair_samplers():
    data_seed, rate, num_pairs = 7, 0.3, 4000
    dataset = OneEpisode(np.random.default_rng(0).random(50_000))
    pairs = sample_segment_pairs(dataset, num_pairs, segment_length=4, rng=np.random.default_rng(data_seed))
    all_sure = np.zeros(num_pairs, np.int8)  # every pair sure, so the flip mask is the stream's draw
    flips = apply_noise(all_sure, pairs.returns, TeacherNoise("mistake", rate), seed=data_seed) != all_sure
    old_flips = np.random.default_rng(data_seed).random(num_pairs) < rate  # the old scheme: the pair seed's stream
    # The detector finds the old leak (flip i was the draw of pair 2i + 1's first segment) ...
    assert leak(old_flips, pairs) > 0.5
    # ... and nothing in the new flips: under independence |corr| ~ N(0, 1/sqrt(n)), n >= 2000.
    assert leak(flips, pairs) < 4 / math.sqrt(num_pairs // 2)
    assert np.mean(flips != old_flips) > 0.3  # not the old pattern (independent masks differ on ~42%)


def test_each_model_has_its_own_reproducible_stream():
    draws = {m: noise_rng(3, m).random(1000) for m in NOISE_MODELS}
    for a in NOISE_MODELS:
        for b in NOISE_MODELS:
            if a < b:
                assert abs(np.corrcoef(draws[a], draws[b])[0, 1]) < 4 / math.sqrt(1000)
    _, scores = synthetic_batch(2000, seed=17)
    noise = TeacherNoise("mistake", 0.2)
    first = label(scores, noise, seed=3).preferences
    np.testing.assert_array_equal(first, label(scores, noise, seed=3).preferences)
    assert np.mean(first != label(scores, noise, seed=4).preferences) > 0.2
    with pytest.raises(ValueError, match="seed"):
        label(scores, noise, seed=-1)


def test_a_pairs_draw_does_not_depend_on_how_many_pairs_follow_it():
    _, scores = synthetic_batch(2000, seed=18)
    clean = preferences_from_scores(scores)
    for noise in (TeacherNoise("mistake", 0.3), TeacherNoise("position-bias", 0.3)):
        whole = apply_noise(clean, scores, noise, seed=9)
        head = apply_noise(clean[:500], scores[:500], noise, seed=9)
        np.testing.assert_array_equal(whole[:500], head)


# --- agreement statistics -----------------------------------------------------------------------------------


def test_label_agreement_definitions():
    stats = label_agreement(np.array([0, 1, 1, -1, 0, 1]), np.array([0, 1, 0, 1, -1, 1]))
    assert stats == {"pairs": 6, "both_sure": 4, "agreement": 0.75, "disagree": 1, "unsure": 1,
                     "unsure_rate": 1 / 6, "clean_unsure_rate": 1 / 6, "first": 2, "second": 3,
                     "first_share": 0.4}  # fmt: skip
    none_sure = label_agreement(np.array([-1, -1]), np.array([0, 1]))
    assert none_sure["agreement"] is None and none_sure["first_share"] is None
    with pytest.raises(ValueError, match="same pairs"):
        label_agreement(np.array([0]), np.array([0, 1]))


def test_teacher_stats_report_the_noise_and_the_agreement():
    _, scores = synthetic_batch(1000, seed=19)
    stats = label(scores, TeacherNoise("hard-pairs", 0.5), seed=1).stats
    for key in ("agreement", "unsure_rate", "first_share", "both_sure", "first", "second", "flipped", "skipped"):
        assert key in stats
    assert stats["noise_model"] == "hard-pairs" and stats["noise_level"] == 0.5
    assert stats["noise_scale"] == pytest.approx(gap_scale(scores))
    assert stats["flipped"] == stats["disagree"] == round((1 - stats["agreement"]) * stats["both_sure"])


def test_legacy_mistake_rate_keyword_is_the_mistake_model():
    _, scores = synthetic_batch(1000, seed=20)
    legacy = ScriptedTeacher(mistake_rate=0.2, seed=5)
    assert legacy.noise == TeacherNoise("mistake", 0.2) and legacy.mistake_rate == 0.2
    np.testing.assert_array_equal(legacy.label(PairBatch("t", scores=scores)).preferences,
                                  label(scores, TeacherNoise("mistake", 0.2), seed=5).preferences)
    with pytest.raises(ValueError, match="not both"):
        ScriptedTeacher(noise=TeacherNoise("boltzmann", 1.0), mistake_rate=0.1)


# --- calibration ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("model", AGREEMENT_MODELS)
@pytest.mark.parametrize("target", [0.8, 0.9])
def test_calibrated_knob_realises_the_target_agreement(model, target):
    steps, scores = synthetic_batch(2000, seed=21)
    level = calibrate_noise(model, scores, target, seed=4, step_scores=steps)
    result = label(scores, TeacherNoise(model, level), seed=4, steps=steps)
    assert abs(result.stats["agreement"] - target) <= 0.02
    assert TeacherNoise(model, level).level == level  # in the knob's range


def test_calibration_with_a_threshold_counts_agreement_on_sure_pairs_only():
    _, scores = synthetic_batch(2000, seed=22)
    level = calibrate_noise("boltzmann", scores, 0.85, seed=2, equal_threshold=0.5)
    stats = label(scores, TeacherNoise("boltzmann", level), seed=2, equal_threshold=0.5).stats
    assert abs(stats["agreement"] - 0.85) <= 0.02 and stats["unsure_rate"] > 0.05


@pytest.mark.parametrize("model,target", [("position-bias", 0.3), ("hard-pairs", 0.3), ("boltzmann", 0.2)])
def test_calibration_refuses_targets_out_of_reach(model, target):
    _, scores = synthetic_batch(2000, seed=23)
    with pytest.raises(ValueError, match="cannot reach"):
        calibrate_noise(model, scores, target, seed=0)


def test_calibration_refuses_unsure_models_and_bad_targets():
    _, scores = synthetic_batch(200, seed=24)
    for model in ("equal", "skip"):
        with pytest.raises(ValueError, match="calibrate_unsure_rate"):
            calibrate_noise(model, scores, 0.9, seed=0)
    for target in (0.0, 1.5):
        with pytest.raises(ValueError, match="target_agreement"):
            calibrate_noise("mistake", scores, target, seed=0)
    with pytest.raises(ValueError, match="calibrate_noise"):
        calibrate_unsure_rate("mistake", scores, 0.2)
    assert calibrate_noise("mistake", scores, 1.0, seed=0) == 0.0


@pytest.mark.parametrize("model", ["equal", "skip"])
@pytest.mark.parametrize("target", [0.2, 0.5])
def test_calibrated_unsure_rate(model, target):
    _, scores = synthetic_batch(2000, seed=25)
    level = calibrate_unsure_rate(model, scores, target, equal_threshold=1.0)
    stats = label(scores, TeacherNoise(model, level), equal_threshold=1.0).stats
    assert abs(stats["unsure_rate"] - target) <= 0.02 and stats["agreement"] == 1.0
    assert stats["clean_unsure_rate"] > 0.1  # the clean teacher's own ties count: fewer is out of reach
    with pytest.raises(ValueError, match="cannot reach"):
        calibrate_unsure_rate(model, scores, stats["clean_unsure_rate"] / 3, equal_threshold=1.0)
