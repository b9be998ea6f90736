"""The noise and protocol options of the MetaWorld experiment: teacher noise, robust methods,
final evaluation episodes and the evaluation layouts' stream."""

from __future__ import annotations

import dataclasses
import importlib
import pathlib
import sys

import numpy as np
import pytest

from plare_jax.labeling.noise import label_agreement
from plare_jax.labeling.scripted import preferences_from_scores
from plare_jax.pipeline.config import ConfigError, ExperimentConfig, config_from_dict, validate
from plare_jax.pipeline.labels import scripted_teacher, teacher_is_noise_free
from plare_jax.pipeline.results import protocol_difference
from plare_jax.pipeline.train import evaluation_seed

REPO = pathlib.Path(__file__).resolve().parents[1]


def parse(argv):
    sys.path.insert(0, str(REPO))
    return importlib.import_module("experiments.metaworld").parse_args(argv)


def test_robust_method_options_parse_from_the_cli_and_reach_the_method():
    config = parse(["--method", "plare", "plare-robust", "bc", "--plare-robust.label-smoothing", "0.2",
                    "--plare-robust.select-fraction", "0.1", "--plare.bc-weight", "1.0"])
    validate(config)
    assert config.method_options("plare-robust").label_smoothing == 0.2
    assert config.method_options("plare-robust").select_fraction == 0.1
    assert config.method_options("plare").bc_weight == 1.0


@pytest.mark.parametrize("argv", [
    ["--plare-robust.flip-rate", "0.6"],
    ["--plare.label-smoothing", "0.1", "--plare.flip-rate", "0.1"],
    ["--plare-robust.small-loss-drop", "1.0"],
])
def test_impossible_robust_options_are_config_errors(argv):
    with pytest.raises((ConfigError, ValueError)):
        validate(parse(argv))


def test_old_mistake_rate_flag_sets_the_mistake_models_level():
    config = parse(["--teacher-mistake-rate", "0.2"])
    assert (config.teacher_noise, config.teacher_noise_level) == ("mistake", 0.2)
    assert not teacher_is_noise_free(config) and teacher_is_noise_free(ExperimentConfig())


def test_old_run_directories_keep_their_flip_rate():
    restored = config_from_dict({"env": ["door-open"], "teacher_mistake_rate": 0.3})
    assert (restored.teacher_noise, restored.teacher_noise_level) == ("mistake", 0.3)
    # An old results.json is the same protocol as a new one with the same flips.
    old = {"labeler": "scripted", "teacher": "progress", "teacher_mistake_rate": 0.3, "preset": "quick",
           "data_seeds": [1], "seeds": [0], "unsure": "drop"}
    new = {**{k: v for k, v in old.items() if k != "teacher_mistake_rate"}, "teacher_noise": "mistake",
           "teacher_noise_level": 0.3, "teacher_agreement": None, "final_eval_episodes": None}
    assert protocol_difference(old, new) is None
    assert protocol_difference(old, {**new, "teacher_noise": "hard-pairs"}) is not None
    # A recorded-data run stored its flips as teacher_mistake_rate too: the same model and level,
    # and the same labels as the flips it was made with.
    from plare_jax.labeling.base import PairBatch
    from plare_jax.labeling.scripted import ScriptedTeacher
    from plare_jax.pipeline.labels import scripted_teacher
    from plare_jax.pipeline.offline import OfflineConfig

    recorded = config_from_dict({"data": "some/dir", "data_seed": 4, "teacher_mistake_rate": 0.3}, OfflineConfig)
    assert (recorded.teacher_noise, recorded.teacher_noise_level, recorded.data_seed) == ("mistake", 0.3, 4)
    scores = np.random.default_rng(0).normal(size=(200, 2))
    now = scripted_teacher(recorded, scores, None, data_seed=4).label(PairBatch("t", scores=scores), progress=False)
    before = ScriptedTeacher(mistake_rate=0.3, seed=4).label(PairBatch("t", scores=scores), progress=False)
    np.testing.assert_array_equal(now.preferences, before.preferences)


@pytest.mark.parametrize("argv, match", [
    (["--teacher-agreement", "0.8", "--teacher-noise-level", "0.1"], "not both"),
    (["--teacher-agreement", "0.3"], "teacher-agreement"),
    (["--teacher-noise", "boltzmann", "--teacher-noise-level", "-1"], "teacher-noise"),
    (["--final-eval-episodes", "10"], "final-eval-episodes"),
])
def test_bad_noise_and_evaluation_options_fail_before_any_work(argv, match):
    with pytest.raises(ConfigError, match=match):
        validate(parse(argv))


@pytest.mark.parametrize("model", ["mistake", "hard-pairs", "boltzmann", "position-bias"])
@pytest.mark.parametrize("target", [0.8, 0.9])
def test_agreement_target_is_met_on_the_tasks_pairs(model, target):
    rng = np.random.default_rng(7)
    scores = rng.normal(size=(2000, 2))
    config = dataclasses.replace(ExperimentConfig(), teacher_noise=model, teacher_agreement=target)
    teacher = scripted_teacher(config, scores, None, data_seed=3)
    from plare_jax.labeling.base import PairBatch

    prefs = teacher.label(PairBatch("t", scores=scores), progress=False).preferences
    agreement = label_agreement(prefs, preferences_from_scores(scores))["agreement"]
    assert abs(agreement - target) <= 0.02


def test_an_unreachable_agreement_is_a_config_error():
    # 90% of the clean labels say "first": a labeller that always says "first" still agrees on 90%.
    scores = np.random.default_rng(0).normal(size=(500, 2))
    scores[:450, 0] += 100.0
    config = dataclasses.replace(ExperimentConfig(), teacher_noise="position-bias", teacher_agreement=0.8)
    with pytest.raises(ConfigError, match="position-bias"):
        scripted_teacher(config, scores, None, data_seed=0)


def test_evaluation_layouts_have_their_own_stream_per_data_seed_and_seed():
    development = {evaluation_seed(d, s) for d in (0, 1, 2) for s in (0, 1, 2)}
    reported = {evaluation_seed(d, s) for d in (3, 4, 5) for s in (0, 1, 2)}
    assert len(development) == 9 and len(reported) == 9 and not development & reported
    assert evaluation_seed(3, 1) == evaluation_seed(3, 1)  # the same episodes for every method
    assert all(0 <= seed < 2**30 for seed in development | reported)
    # Not the old layout seed (10_000 + seed), which development and reported runs shared.
    assert not {10_000 + s for s in (0, 1, 2)} & (development | reported)


def test_a_zero_spread_cell_is_never_called_separated():
    from plare_jax.pipeline.results import compare_to, run_statistics

    methods = {"plare": {"success": run_statistics([0.0, 0.0, 0.0])},
               "bc": {"success": run_statistics([0.1, 0.12, 0.11])},
               "sft": {"success": run_statistics([0.5, 0.6, 0.7])}}
    verdicts = compare_to(methods, "plare")
    assert verdicts["bc"] == "zero spread, not compared" and verdicts["sft"] == "zero spread, not compared"
    methods["plare"] = {"success": run_statistics([0.0, 0.02, 0.01])}
    assert compare_to(methods, "plare")["sft"] == "plare worse"
