"""The pipeline's pure parts: TrainingData from a dataset, run statistics, comparisons."""

from __future__ import annotations

import math

import numpy as np
import pytest

from plare_jax.data.dataset import OfflineDataset
from plare_jax.data.segments import sample_segment_pairs
from plare_jax.pipeline.data import training_data
from plare_jax.pipeline.results import compare_to, run_statistics


def _dataset(lengths=(7, 5, 9), obs_dim=39, act_dim=4) -> OfflineDataset:
    n = sum(lengths)
    episode_ids = np.repeat(np.arange(len(lengths)), lengths).astype(np.int32)
    rows = np.arange(n, dtype=np.float32)
    return OfflineDataset(
        observations=np.stack([rows + 0.001 * k for k in range(obs_dim)], axis=1).astype(np.float32),
        actions=np.stack([-rows - 0.01 * k for k in range(act_dim)], axis=1).astype(np.float32),
        rewards=rows.astype(np.float32), successes=np.zeros(n, bool), episode_ids=episode_ids,
        sim_states=np.zeros((n, 1)), episode_layouts=np.zeros((len(lengths), 1)), card={"task": "t"})


def test_training_data_next_observations_stop_at_episode_ends():
    ds = _dataset()
    pairs = sample_segment_pairs(ds, 6, segment_length=4, rng=np.random.default_rng(0))
    data = training_data(ds, pairs, np.array([0, 1, -1, 0, 1, 1]), unsure="drop", episode_scores=None)
    last_rows = np.array([6, 11, 20])
    assert not data.has_next[last_rows].any() and data.has_next.sum() == ds.num_steps - 3
    inner = np.flatnonzero(data.has_next)
    np.testing.assert_array_equal(data.next_observations[inner], ds.observations[inner + 1])
    np.testing.assert_array_equal(data.next_observations[last_rows], ds.observations[last_rows])
    # Segment steps map back to their transition rows, observation and action alike.
    np.testing.assert_array_equal(data.pair_observations, ds.observations[data.pair_rows])
    np.testing.assert_array_equal(data.pair_actions, ds.actions[data.pair_rows])
    np.testing.assert_array_equal(data.pair_rows[:, :, 0], pairs.starts)
    # Unsure dropped: weight 0, and it is not counted as trained on.
    np.testing.assert_array_equal(data.weights, [1, 1, 0, 1, 1, 1])
    np.testing.assert_array_equal(data.labels[[0, 1, 3]], [0, 1, 0])
    assert data.num_trained_pairs == 5 and data.terminals.sum() == 0


def test_run_statistics_sample_std_and_t_interval():
    stats = run_statistics([0.2, 0.4, 0.9])
    values = np.array([0.2, 0.4, 0.9])
    assert stats["std"] == pytest.approx(values.std(ddof=1))
    half = 4.303 * values.std(ddof=1) / math.sqrt(3)  # t(0.975, dof 2)
    assert stats["ci95_low"] == pytest.approx(values.mean() - half)
    assert stats["ci95_high"] == pytest.approx(values.mean() + half)
    assert stats["num_runs"] == 3
    single = run_statistics([0.5])
    assert math.isnan(single["std"]) and math.isnan(single["ci95_low"])


def test_compare_to_calls_a_winner_only_when_intervals_separate():
    def method(values):
        return {"success": run_statistics(values)}

    methods = {"plare": method([0.8, 0.82, 0.84]), "bc": method([0.4, 0.42, 0.44]),
               "sft": method([0.5, 0.8, 0.95]), "pbc": method([0.95, 0.96, 0.97]),
               "rlvlmf": method([0.3])}
    verdicts = compare_to(methods, "plare")
    assert verdicts == {"bc": "plare better", "sft": "intervals overlap", "pbc": "plare worse",
                        "rlvlmf": "too few runs"}
