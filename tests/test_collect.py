import dataclasses

import numpy as np
import pytest

from plare_jax.data.dataset import DatasetError, load_dataset
from plare_jax.envs import collect
from plare_jax.envs.collect import CollectionConfig, collect_dataset, episode_modes, run_episode
from plare_jax.envs.sim import ExpertPolicy, TaskEnv
from plare_jax.envs.tasks import UnknownTaskError

# Misperception on, so the worker-count determinism test covers a mixed dataset.
TINY = CollectionConfig("drawer-open", num_episodes=3, horizon=40, seed=3, stretch_prob=0.2, misperceive_prob=0.5)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    cache = tmp_path_factory.mktemp("cache")
    return cache, collect_dataset(TINY, cache_dir=cache, workers=1, progress=False)


def assert_same_arrays(a, b):
    for field in dataclasses.fields(a):
        value = getattr(a, field.name)
        if isinstance(value, np.ndarray):
            np.testing.assert_array_equal(value, getattr(b, field.name), err_msg=field.name)


def test_schema(tiny):
    _, ds = tiny
    n = 3 * 40
    assert ds.observations.shape == (n, 39) and ds.observations.dtype == np.float32
    assert ds.actions.shape == (n, 4) and ds.actions.dtype == np.float32
    assert np.all(np.abs(ds.actions) <= 1.0)
    assert ds.rewards.shape == (n,) and ds.successes.dtype == bool
    np.testing.assert_array_equal(ds.episode_lengths, [40, 40, 40])
    assert ds.sim_states.shape[0] == n and ds.sim_states.dtype == np.float64
    assert ds.episode_layouts.shape[0] == 3
    # layouts differ per episode, and the goal (last 3 obs entries) is observable
    assert len({tuple(x) for x in ds.episode_layouts}) == 3
    assert np.abs(ds.observations[:, 36:]).sum() > 0
    card = ds.card
    assert card["task"] == "drawer-open-v3" and card["num_steps"] == n and card["seed"] == 3
    assert card["success_rate"] == pytest.approx(ds.episode_success.mean())
    assert card["episode_return"]["max"] == pytest.approx(ds.episode_returns.max())
    assert {"metaworld", "mujoco", "numpy"} <= set(card["versions"])
    # observation i+1 follows from the action at i: obs[t+1][18:36] is obs[t][:18] (frame stacking)
    np.testing.assert_allclose(ds.observations[1:40, 18:36], ds.observations[:39, :18], atol=1e-6)


def test_deterministic_across_worker_counts_and_seeds(tiny, tmp_path):
    _, ds1 = tiny
    assert ds1.card["misperceived_episodes"] == [1]  # a mixed dataset
    ds2 = collect_dataset(TINY, cache_dir=tmp_path / "a", workers=2, progress=False)
    assert_same_arrays(ds1, ds2)
    other = collect_dataset(dataclasses.replace(TINY, seed=4), cache_dir=tmp_path / "b", workers=1, progress=False)
    assert not np.array_equal(other.episode_layouts, ds1.episode_layouts)


def test_cache_returns_same_arrays_without_collecting(tiny, monkeypatch):
    cache, ds = tiny
    (path,) = cache.glob("*.npz")
    written = path.stat().st_mtime_ns

    def no_collection(*args):
        raise AssertionError("a cached dataset was collected again")

    monkeypatch.setattr(collect, "_collect_chunk", no_collection)
    again = collect_dataset(TINY, cache_dir=cache, workers=1, progress=False)
    assert path.stat().st_mtime_ns == written  # read, not rewritten
    assert_same_arrays(ds, again)
    assert again.card == ds.card
    assert len(list(cache.glob("*.npz"))) == 1


def test_corrupt_or_mismatched_cache_file_is_a_dataset_error(tiny, tmp_path):
    cache, _ = tiny
    (path,) = cache.glob("*.npz")
    broken = tmp_path / path.name
    broken.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(DatasetError, match="cached dataset cannot be used.*corrupt or truncated") as raised:
        collect_dataset(TINY, cache_dir=tmp_path, workers=1, progress=False)
    assert raised.value.path == broken
    # recollect=True replaces the broken file with a good one, the same data as collected before
    again = collect_dataset(TINY, cache_dir=tmp_path, workers=1, progress=False, recollect=True)
    assert_same_arrays(tiny[1], again)
    assert_same_arrays(again, load_dataset(broken))
    with pytest.raises(DatasetError, match="expected 'door-open-v3'"):
        load_dataset(path, expect_task="door-open-v3")


def test_config_validation():
    with pytest.raises(UnknownTaskError):
        CollectionConfig("drawer-opn", num_episodes=1)
    with pytest.raises(ValueError, match="horizon"):
        CollectionConfig("drawer-open", num_episodes=1, horizon=501)
    with pytest.raises(ValueError, match="stretch_prob"):
        CollectionConfig("drawer-open", num_episodes=1, stretch_prob=1.5)
    assert CollectionConfig("sweep-into", 1).resolved_stretch_prob == pytest.approx(0.05)
    assert CollectionConfig("sweep-into", 1).resolved_decoy_prob == pytest.approx(0.5)
    assert CollectionConfig("drawer-open", 1).resolved_decoy_prob == 0.0
    assert CollectionConfig("drawer-open", 1).resolved_misperceive_prob == pytest.approx(0.5)
    assert CollectionConfig("sweep-into", 1, decoy_prob=0.2).resolved_decoy_prob == pytest.approx(0.2)
    with pytest.raises(ValueError, match="decoy_prob"):
        CollectionConfig("sweep-into", 1, decoy_prob=1.5)
    assert CollectionConfig("sweep-into", 1).cache_key() != CollectionConfig("sweep-into", 1, seed=1).cache_key()


def test_decoy_episodes_follow_a_shifted_goal_but_store_the_true_one():
    """A decoy episode's expert aims at goal + offset; the stored observations keep the true goal."""
    plain = CollectionConfig("reach", 1, horizon=60, seed=3, stretch_prob=0.0, decoy_prob=0.0, action_noise=0.0)
    decoy = dataclasses.replace(plain, decoy_prob=1.0, decoy_offset=(0.0, 0.0, 0.2))
    env, expert = TaskEnv("reach"), ExpertPolicy("reach")
    honest = run_episode(env, expert, plain, 0)
    fooled = run_episode(env, expert, decoy, 0)
    np.testing.assert_array_equal(honest["observations"][0], fooled["observations"][0])
    np.testing.assert_array_equal(honest["observations"][:, -3:], fooled["observations"][:, -3:])
    goal = honest["observations"][0, -3:]
    # reach: the hand goes to the goal; fooled, it ends near the decoy, 0.2 m higher.
    assert np.linalg.norm(honest["observations"][-1, :3] - goal) < 0.05
    assert fooled["observations"][-1, 2] - goal[2] > 0.1


def test_misperceive_config_defaults_validation_and_cache_key():
    # Sweep-into and plate-slide keep their decoy mix and get no misperception by default.
    assert CollectionConfig("sweep-into", 1).resolved_misperceive_prob == 0.0
    assert CollectionConfig("reach", 1).resolved_misperceive_prob == 0.0
    assert CollectionConfig("reach", 1, misperceive_prob=0.3).resolved_misperceive_prob == pytest.approx(0.3)
    assert CollectionConfig("reach", 1, misperceive_offset=(0, 0.1, 0)).resolved_misperceive_offset == (0.0, 0.1, 0.0)
    with pytest.raises(ValueError, match="misperceive_prob"):
        CollectionConfig("reach", 1, misperceive_prob=-0.1)
    with pytest.raises(ValueError, match="misperceive_offset"):
        CollectionConfig("reach", 1, misperceive_offset=(0.1, 0.0))
    base = CollectionConfig("reach", 1, misperceive_prob=0.0)
    keys = {base.cache_key(), dataclasses.replace(base, misperceive_prob=0.5).cache_key(),
            dataclasses.replace(base, misperceive_offset=(0.0, -0.07, 0.0)).cache_key()}
    assert len(keys) == 3
    # The per-task default resolves into the key: None and the explicit default are the same data.
    default = CollectionConfig("drawer-open", 1)
    explicit = dataclasses.replace(default, misperceive_prob=default.resolved_misperceive_prob,
                                   misperceive_offset=default.resolved_misperceive_offset)
    assert default.cache_key() == explicit.cache_key()


def test_episode_modes_are_deterministic_and_independent_streams():
    config = CollectionConfig("drawer-open", 200, seed=5, decoy_prob=0.5, misperceive_prob=0.5)
    modes = [episode_modes(config, i) for i in range(200)]
    assert modes == [episode_modes(config, i) for i in range(200)]
    decoy = np.array([m["decoy"] for m in modes])
    misperceived = np.array([m["misperceived"] for m in modes])
    assert 60 < decoy.sum() < 140 and 60 < misperceived.sum() < 140
    assert not np.array_equal(decoy, misperceived)  # separate streams, not one draw reused
    # Changing the misperception probability leaves the decoy episodes as they were.
    other = dataclasses.replace(config, misperceive_prob=0.2)
    assert [episode_modes(other, i)["decoy"] for i in range(200)] == decoy.tolist()
    fewer = np.array([episode_modes(other, i)["misperceived"] for i in range(200)])
    assert fewer.sum() < misperceived.sum() and not np.any(fewer & ~misperceived)  # a subset: same draws


class RecordingExpert:
    """The real scripted expert, recording every observation it is shown."""

    def __init__(self, task):
        self.expert = ExpertPolicy(task)
        self.seen = []

    def __call__(self, observation):
        self.seen.append(np.array(observation))
        return self.expert(observation)


def test_misperceived_expert_sees_a_constant_object_shift_and_the_data_stays_true():
    """For the whole episode the expert sees the handle offset; stored observations keep the truth."""
    offset = (0.0, -0.06, 0.0)
    plain = CollectionConfig("drawer-open", 1, horizon=80, seed=3, stretch_prob=0.0, action_noise=0.0,
                             misperceive_prob=0.0)
    fooled_config = dataclasses.replace(plain, misperceive_prob=1.0, misperceive_offset=offset)
    env = TaskEnv("drawer-open")
    honest_expert, fooled_expert = RecordingExpert("drawer-open"), RecordingExpert("drawer-open")
    honest = run_episode(env, honest_expert, plain, 0)
    fooled = run_episode(env, fooled_expert, fooled_config, 0)
    seen = np.stack(fooled_expert.seen)
    stored = fooled["observations"].astype(np.float64)
    assert len(seen) == 80  # no stretches: the expert acts at every step
    shift = seen - stored
    # Only the first object's position (current and previous frame) is shifted, by the same offset throughout.
    np.testing.assert_allclose(shift[:, 4:7], np.tile(offset, (80, 1)), atol=1e-6)
    np.testing.assert_allclose(shift[:, 22:25], np.tile(offset, (80, 1)), atol=1e-6)
    untouched = np.ones(39, bool)
    untouched[4:7] = untouched[22:25] = False
    np.testing.assert_allclose(shift[:, untouched], 0.0, atol=1e-6)
    # The honest expert saw the stored observations themselves.
    np.testing.assert_allclose(np.stack(honest_expert.seen), honest["observations"], atol=1e-6)
    # Same layout and first observation, then the behaviour differs: it reaches for the wrong spot.
    np.testing.assert_array_equal(honest["observations"][0], fooled["observations"][0])
    assert not np.allclose(honest["actions"], fooled["actions"])


def test_misperception_changes_only_the_misperceived_episodes_and_the_card_records_them(tmp_path):
    base = CollectionConfig("drawer-open", 6, horizon=30, seed=7, stretch_prob=0.1, misperceive_prob=0.0)
    mixed = dataclasses.replace(base, misperceive_prob=0.5, misperceive_offset=(0.0, -0.08, 0.0))
    plain_ds = collect_dataset(base, cache_dir=tmp_path, workers=1, progress=False)
    mixed_ds = collect_dataset(mixed, cache_dir=tmp_path, workers=1, progress=False)
    flagged = [i for i in range(6) if episode_modes(mixed, i)["misperceived"]]
    assert 0 < len(flagged) < 6, "seed 7 should give a mix; pick another seed if the stream changed"
    assert mixed_ds.card["misperceived_episodes"] == flagged
    assert plain_ds.card["misperceived_episodes"] == []
    assert mixed_ds.card["config"]["misperceive_prob"] == 0.5
    assert mixed_ds.card["config"]["misperceive_offset"] == [0.0, -0.08, 0.0]
    assert mixed_ds.card["config_hash"] != plain_ds.card["config_hash"]
    for i in range(6):
        rows = plain_ds.episode_ids == i
        same = np.array_equal(plain_ds.actions[rows], mixed_ds.actions[rows])
        assert same == (i not in flagged), f"episode {i}"
        np.testing.assert_array_equal(plain_ds.episode_layouts[i], mixed_ds.episode_layouts[i])
