import multiprocessing
import signal
import warnings

import numpy as np
import pytest

from plare_jax.envs.evaluate import _write_video, evaluate_policies, evaluate_policy, scripted_expert_policy
from plare_jax.interrupts import StopFlag, StopRequested


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


@pytest.mark.slow
def test_several_policies_in_one_pass_equal_their_own_evaluations(tmp_path):
    expert = scripted_expert_policy("door-open")
    weak = lambda obs: 0.3 * expert(obs)  # noqa: E731
    seeds = [5, 9]
    together = evaluate_policies("door-open", [expert, weak], seeds=seeds, num_episodes=3, horizon=40,
                                 workers=2, progress=False, video_path=tmp_path / "first.gif", video_episodes=1)
    alone = [evaluate_policy("door-open", policy, num_episodes=3, horizon=40, seed=seed, workers=1, progress=False)
             for policy, seed in zip([expert, weak], seeds)]
    for a, b in zip(together, alone):
        np.testing.assert_array_equal(a.episode_returns, b.episode_returns)
        np.testing.assert_array_equal(a.episode_successes, b.episode_successes)
        assert a.mean_return == b.mean_return and a.success_rate == b.success_rate
    assert not np.array_equal(together[0].episode_returns, together[1].episode_returns)
    assert (tmp_path / "first.gif").stat().st_size > 1000  # the first policy's episode
    with pytest.raises(ValueError, match="one seed per policy"):
        evaluate_policies("door-open", [expert], seeds=[1, 2])


def test_bad_policy_output_and_arguments():
    with pytest.raises(ValueError, match="mp4 or .gif"):
        evaluate_policy("door-open", lambda o: o[:, :4], video_path="x.avi")
    with pytest.raises(ValueError, match=r"actions \[2, 4\]"):
        evaluate_policy("door-open", lambda o: np.zeros((2, 3)), num_episodes=2, horizon=2, workers=1, progress=False)


class StopAfter(StopFlag):
    """A StopFlag that turns on, as if SIGTERM had arrived, at its `calls`-th check."""

    def __init__(self, calls: int):
        super().__init__()
        self.calls_left = calls

    def __call__(self) -> bool:
        self.calls_left -= 1
        if self.calls_left <= 0:
            self.request(signal.SIGTERM)
        return super().__call__()


@pytest.mark.slow
def test_stop_between_steps_closes_the_workers_and_writes_no_video(tmp_path):
    policy = scripted_expert_policy("drawer-open")
    with pytest.raises(StopRequested) as raised:
        evaluate_policy(
            "drawer-open", policy, num_episodes=2, horizon=200, seed=0, workers=2, progress=False,
            video_path=tmp_path / "v.mp4", should_stop=StopAfter(5),
        )  # fmt: skip
    assert raised.value.exit_code == 143
    assert multiprocessing.active_children() == []
    assert list(tmp_path.iterdir()) == []


@pytest.mark.filterwarnings("ignore:os.fork")  # the imageio control below warns on purpose
def test_mp4_is_written_without_forking_a_jax_process(tmp_path):
    import imageio.v2 as imageio
    import imageio.v3 as iio
    import jax.numpy as jnp

    jnp.ones(4).block_until_ready()  # JAX's backend (and its threads) are up
    frames = [np.full((32, 48, 3), 20 * i, np.uint8) for i in range(10)]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _write_video(tmp_path / "v.mp4", frames)
    assert not [w for w in caught if "fork" in str(w.message)], [str(w.message) for w in caught]
    video = iio.imread(tmp_path / "v.mp4")
    assert video.shape == (10, 32, 48, 3)
    np.testing.assert_allclose(video[:, 16, 24, 0], [20 * i for i in range(10)], atol=4)
    # The check above can fail: imageio's own ffmpeg writer forks through Python and warns.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        imageio.mimsave(tmp_path / "imageio.mp4", frames, fps=30)
    assert [w for w in caught if "os.fork() was called" in str(w.message)]


def test_stop_while_writing_a_video_leaves_no_file(tmp_path):
    frames = [np.zeros((32, 32, 3), np.uint8)] * 20
    with pytest.raises(StopRequested):
        _write_video(tmp_path / "v.mp4", frames, StopAfter(10))
    assert list(tmp_path.iterdir()) == []
