"""The data stage of every data source: offline dataset -> segment pairs -> labels -> `TrainingData`
for every method."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from plare_jax.data.dataset import OfflineDataset
from plare_jax.data.segments import SegmentPairs, sample_segment_pairs
from plare_jax.labeling.base import preferences_to_targets
from plare_jax.methods.base import TrainingData
from plare_jax.pipeline.labels import LabelerChoice, label_pairs, label_report


@dataclasses.dataclass
class TaskData:
    """Everything the methods need for one task, plus what the results report about it."""

    task: str
    training: TrainingData
    summary: dict
    kept: Any = None
    """What the data source keeps for its evaluator and exports (recorded data: the held-out pairs
    and the normaliser); None for MetaWorld."""


def training_data(dataset: OfflineDataset, pairs: SegmentPairs, preferences: np.ndarray, *,
                  unsure: str, episode_scores: np.ndarray | None) -> TrainingData:
    """Arrays every method may train on, from a dataset, its labelled pairs and the labels.

    Pure numpy: the same function serves any dataset with observations, actions and episode ids
    (recorded robot data included; pass `episode_scores=None` when there is no ground truth).
    """
    labels, weights = preferences_to_targets(preferences, unsure=unsure)
    episode_ids = np.asarray(dataset.episode_ids)
    n = episode_ids.shape[0]
    # The successor of row i is row i+1 unless i ends its episode (episodes are contiguous).
    has_next = np.zeros(n, dtype=bool)
    has_next[:-1] = episode_ids[1:] == episode_ids[:-1]
    next_rows = np.where(has_next, np.arange(n) + 1, np.arange(n))
    pair_rows = pairs.starts[..., None] + np.arange(pairs.length)
    observations = np.asarray(dataset.observations, np.float32)
    actions = np.asarray(dataset.actions, np.float32)
    return TrainingData(
        observations=observations,
        actions=actions,
        next_observations=observations[next_rows],
        has_next=has_next,
        terminals=np.zeros(n, np.float32),  # time-limit ends only: never a true terminal
        episode_ids=episode_ids.astype(np.int32),
        pair_observations=observations[pair_rows],
        pair_actions=actions[pair_rows],
        labels=np.asarray(labels, np.float32),
        weights=np.asarray(weights, np.float32),
        pair_mask=np.ones(pair_rows.shape, np.float32),
        pair_rows=pair_rows.astype(np.int64),
        episode_scores=None if episode_scores is None else np.asarray(episode_scores, np.float32),
    )


def prepare_unit(source, unit, choice: LabelerChoice, base_url: str | None,
                 should_stop: Callable[[], bool] | None = None) -> TaskData:
    """The data stage of any `pipeline.source.DataSource`: dataset -> pairs -> labels -> report and
    coverage gate -> training arrays; cached stages (collection, stored labels) load in seconds.

    `should_stop` is checked between collection chunks and labeling chunks (StopRequested).
    """
    config = source.config
    timings = {}
    t0 = time.perf_counter()
    dataset = source.load(unit, should_stop)
    timings["data_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    pairs = sample_segment_pairs(dataset, config.num_pairs, segment_length=config.segment_length,
                                 rng=np.random.default_rng(unit.data_seed))
    preferences, stats = label_pairs(config, choice, source.goal_text(unit, choice), dataset, pairs, base_url,
                                     config.cache_dir / "labels.sqlite", data_seed=unit.data_seed,
                                     pair_images=source.pair_images(dataset), should_stop=should_stop)
    timings["labels_s"] = time.perf_counter() - t0
    report = label_report(config, choice, preferences, stats, source.teacher_scores(dataset, pairs),
                          where=f"[{unit.name} data seed {unit.data_seed}]")
    training, kept = source.training_arrays(unit, dataset, pairs, preferences, report)
    report["trained_pairs"] = training.num_trained_pairs
    summary = {"data_seed": unit.data_seed, **source.describe(dataset, choice, kept), "labels": report,
               "timings": timings}
    return TaskData(unit.name, training, summary, kept)
