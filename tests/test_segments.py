import dataclasses

import numpy as np
import pytest

from plare_jax.data.dataset import OfflineDataset
from plare_jax.data.segments import gather_segments, progress_window, sample_segment_pairs, valid_segment_starts


def action_of(obs: np.ndarray) -> np.ndarray:
    """A known function of the observation, so alignment can be checked from the data alone."""
    return np.tanh(obs[..., :4] * 0.5 + obs[..., 38:39])


def synthetic_dataset(lengths, seed=0) -> OfflineDataset:
    rng = np.random.default_rng(seed)
    n = sum(lengths)
    ids = np.repeat(np.arange(len(lengths), dtype=np.int32), lengths)
    obs = rng.normal(size=(n, 39)).astype(np.float32)
    obs[:, 38] = np.arange(n)  # row index, to check which row a segment step came from
    return OfflineDataset(
        observations=obs,
        actions=action_of(obs).astype(np.float32),
        rewards=rng.uniform(0, 1, size=n).astype(np.float32),
        successes=rng.random(n) < 0.2,
        episode_ids=ids,
        sim_states=np.zeros((n, 1)),
        episode_layouts=np.zeros((len(lengths), 1)),
        card={"task": "synthetic"},
    )


def test_segments_are_aligned_rows_and_actions_match_their_observations():
    ds = synthetic_dataset([30, 20, 25])
    pairs = sample_segment_pairs(ds, 50, segment_length=8, rng=np.random.default_rng(1))
    obs, act = gather_segments(ds, pairs.starts, pairs.length)
    assert obs.shape == (50, 2, 8, 39) and act.shape == (50, 2, 8, 4)
    np.testing.assert_array_equal(obs[..., 38], pairs.starts[..., None] + np.arange(8))
    np.testing.assert_allclose(act, action_of(obs), rtol=1e-6)
    rows = pairs.starts[..., None] + np.arange(8)
    np.testing.assert_allclose(pairs.returns, ds.rewards[rows].sum(-1), rtol=1e-5)
    k = progress_window(pairs.length)
    expected_progress = ds.rewards[rows][..., -k:].mean(-1) - ds.rewards[rows][..., :k].mean(-1)
    np.testing.assert_allclose(pairs.progress, expected_progress, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(pairs.successes, ds.successes[rows].any(-1))


def test_every_window_including_the_last_is_drawable_and_none_crosses_episodes():
    lengths = [10, 4, 7]  # the 4-step episode is too short for T=5
    ds = synthetic_dataset(lengths)
    starts = valid_segment_starts(ds, 5)
    expected = [*range(0, 6), *range(14, 17)]
    np.testing.assert_array_equal(starts, expected)
    pairs = sample_segment_pairs(ds, 2000, segment_length=5, rng=np.random.default_rng(0))
    drawn = np.unique(pairs.starts)
    np.testing.assert_array_equal(drawn, expected)  # 5 (last of ep 0) and 16 (last of ep 2) included
    ids = ds.episode_ids
    assert np.all(ids[pairs.starts] == ids[pairs.starts + 4])
    assert np.all(pairs.starts[:, 0] != pairs.starts[:, 1])


def test_same_seed_same_pairs_other_seed_other_pairs():
    ds = synthetic_dataset([40, 40])
    a = sample_segment_pairs(ds, 20, segment_length=10, rng=np.random.default_rng(7))
    b = sample_segment_pairs(ds, 20, segment_length=10, rng=np.random.default_rng(7))
    c = sample_segment_pairs(ds, 20, segment_length=10, rng=np.random.default_rng(8))
    np.testing.assert_array_equal(a.starts, b.starts)
    assert not np.array_equal(a.starts, c.starts)


def test_errors():
    ds = synthetic_dataset([5, 6])
    with pytest.raises(ValueError, match="no episode has 64 steps"):
        sample_segment_pairs(ds, 3, rng=np.random.default_rng(0))
    with pytest.raises(ValueError, match="Generator"):
        sample_segment_pairs(ds, 3, segment_length=2, rng=0)
    with pytest.raises(ValueError, match="crosses an episode boundary"):
        gather_segments(ds, np.array([3]), 4)
    with pytest.raises(ValueError, match="must lie in rows"):
        gather_segments(ds, np.array([9]), 4)


def test_gather_matches_rows_for_any_start_shape():
    ds = synthetic_dataset([12])
    starts = np.array([[0, 2, 4]])
    obs, act = gather_segments(ds, starts, 3)
    assert obs.shape == (1, 3, 3, 39)
    np.testing.assert_array_equal(obs[0, 1], ds.observations[2:5])
    np.testing.assert_array_equal(act[0, 2], ds.actions[4:7])
    assert dataclasses.is_dataclass(ds)


def test_take_indexes_every_per_pair_array():
    ds = synthetic_dataset([30, 20, 25])
    pairs = sample_segment_pairs(ds, 10, segment_length=8, rng=np.random.default_rng(2))
    index = np.array([7, 2])
    part = pairs.take(index)
    assert part.length == pairs.length
    for field in dataclasses.fields(pairs):
        if field.name != "length":
            np.testing.assert_array_equal(getattr(part, field.name), getattr(pairs, field.name)[index])
