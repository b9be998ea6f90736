import numpy as np
import pytest

from plare_jax.envs.evaluate import evaluate_policy, scripted_expert_policy


@pytest.mark.slow
def test_expert_succeeds_random_does_not_and_video_is_written(tmp_path):
    expert = evaluate_policy(
        "drawer-open", scripted_expert_policy("drawer-open"), num_episodes=4, horizon=120, seed=0,
        workers=2, video_path=tmp_path / "v.gif", video_episodes=1, progress=False,
    )
    assert expert.success_rate >= 0.75
    assert expert.episode_successes.shape == (4,) and expert.episode_returns.shape == (4,)
    assert expert.mean_return == pytest.approx(expert.episode_returns.mean())
    assert (tmp_path / "v.gif").stat().st_size > 1000

    rng = np.random.default_rng(0)
    random = evaluate_policy(
        "drawer-open", lambda obs: rng.uniform(-1, 1, size=(obs.shape[0], 4)), num_episodes=4, horizon=120,
        seed=0, workers=2, progress=False,
    )
    assert random.success_rate <= 0.25
    assert random.mean_return < expert.mean_return


@pytest.mark.slow
def test_same_seed_same_episodes_for_any_worker_count():
    policy = scripted_expert_policy("door-open")
    a = evaluate_policy("door-open", policy, num_episodes=3, horizon=30, seed=5, workers=1, progress=False)
    b = evaluate_policy("door-open", policy, num_episodes=3, horizon=30, seed=5, workers=2, progress=False)
    np.testing.assert_array_equal(a.episode_returns, b.episode_returns)
    assert len(set(a.episode_returns.round(6))) == 3  # distinct layouts per episode


def test_bad_policy_output_and_arguments():
    with pytest.raises(ValueError, match="mp4 or .gif"):
        evaluate_policy("door-open", lambda o: o[:, :4], video_path="x.avi")
    with pytest.raises(ValueError, match=r"actions \[2, 4\]"):
        evaluate_policy("door-open", lambda o: np.zeros((2, 3)), num_episodes=2, horizon=2, workers=1, progress=False)
