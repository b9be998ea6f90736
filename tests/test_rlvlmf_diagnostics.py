"""experiments/rlvlmf_diagnostics.py: its numbers on arrays with a known answer, and its errors."""

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent


def load_script():
    spec = importlib.util.spec_from_file_location("rlvlmf_diagnostics_script",
                                                  ROOT / "experiments" / "rlvlmf_diagnostics.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses and tyro resolve annotations through it
    spec.loader.exec_module(module)
    return module


def test_progress_stays_inside_episodes():
    script = load_script()
    rewards = np.array([0.0, 1.0, 3.0, 10.0, 10.5])
    episode_ids = np.array([0, 0, 0, 1, 1])
    np.testing.assert_allclose(script.per_step_progress(rewards, episode_ids), [1.0, 2.0, 0.0, 0.5, 0.0])


def test_diagnostics_on_an_informative_and_an_uninformative_advantage():
    script = load_script()
    rng = np.random.default_rng(0)
    n = 4000
    episode_ids = np.repeat(np.arange(40), n // 40)
    true_rewards = np.cumsum(rng.normal(size=n))
    progress = script.per_step_progress(true_rewards, episode_ids)
    successes = np.zeros(n, bool)
    successes[episode_ids < 10] = True  # a quarter of the episodes succeed
    actions = rng.normal(size=(n, 4))
    kwargs = dict(inverse_temperature=3.0, max_weight=100.0, top_fraction=0.05)
    informative = script.advantage_diagnostics(progress, progress, true_rewards, episode_ids, successes, actions,
                                               **kwargs)
    assert informative["corr_reward_vs_progress"] == pytest.approx(1.0)
    assert informative["corr_advantage_vs_progress"] == pytest.approx(1.0)
    assert informative["all_rows_from_successful_episodes"] == pytest.approx(0.25)
    noise = rng.normal(size=n)
    uninformative = script.advantage_diagnostics(noise, noise, true_rewards, episode_ids, successes, actions, **kwargs)
    assert abs(uninformative["corr_advantage_vs_progress"]) < 0.1
    # exp(3 A) with A ~ N(0, 1): the top 5% of rows carry most of the weight.
    assert uninformative["weight_share_of_top_rows"] > 0.4
    flat = script.advantage_diagnostics(noise, np.zeros(n), true_rewards, episode_ids, successes, actions, **kwargs)
    assert flat["weight_share_of_top_rows"] == pytest.approx(0.05) and np.isnan(flat["corr_advantage_vs_progress"])


def test_a_run_without_rlvlmf_is_a_clear_error(tmp_path, capsys):
    from plare_jax import runs
    from plare_jax.pipeline.config import ExperimentConfig

    script = load_script()
    run_dir = tmp_path / "run"
    runs.create_run_dir(run_dir, ExperimentConfig(env=("reach",)))
    assert script.main(["--run", str(run_dir), "--env", "reach"]) == 2
    assert "no rlvlmf checkpoint" in capsys.readouterr().err
