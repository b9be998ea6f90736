"""The data stage: offline dataset -> segment pairs -> labels -> `TrainingData` for every method."""

from __future__ import annotations

import dataclasses
import pathlib
import time
from collections.abc import Callable

import numpy as np

from plare_jax.data.dataset import OfflineDataset
from plare_jax.data.segments import SegmentPairs, sample_segment_pairs
from plare_jax.labeling.base import PairBatch, preferences_to_targets
from plare_jax.labeling.coverage import check_label_coverage
from plare_jax.labeling.noise import label_agreement
from plare_jax.labeling.report import format_report, labeling_report
from plare_jax.labeling.scripted import ScriptedTeacher
from plare_jax.methods.base import TrainingData
from plare_jax.pipeline.config import ExperimentConfig
from plare_jax.pipeline.labels import LabelerChoice, label_pairs, teacher_is_noise_free, teacher_scores
from plare_jax.runs import write_json_atomic


@dataclasses.dataclass
class TaskData:
    """Everything the methods need for one task, plus what the results report about it."""

    task: str
    training: TrainingData
    summary: dict


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


def prepare_task(config: ExperimentConfig, choice: LabelerChoice, task: str, data_seed: int,
                 base_url: str | None, data_dir: pathlib.Path,
                 should_stop: Callable[[], bool] | None = None) -> TaskData:
    """Dataset -> pairs -> labels for one task and data seed; cached stages load in seconds.

    `should_stop` is checked between collection chunks and labeling chunks (StopRequested).
    """
    # MetaWorld is imported here, not at module level: recorded-data runs use this module too.
    from plare_jax.envs.collect import CollectionConfig, collect_dataset

    timings = {}
    t0 = time.perf_counter()
    dataset = collect_dataset(
        CollectionConfig(task=task, num_episodes=config.num_episodes,
                         horizon=config.collection_horizon, seed=data_seed,
                         stretch_prob=config.stretch_prob, decoy_prob=config.decoy_prob,
                         misperceive_prob=config.misperceive_prob),
        cache_dir=config.cache_dir / "datasets", workers=config.workers, recollect=config.recollect,
        should_stop=should_stop)
    timings["data_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    pairs = sample_segment_pairs(dataset, config.num_pairs, segment_length=config.segment_length,
                                 rng=np.random.default_rng(data_seed))
    preferences, stats = label_pairs(config, choice, _goal_text(config, choice, task), dataset, pairs, base_url,
                                     config.cache_dir / "labels.sqlite", data_seed=data_seed,
                                     pair_images=_rendered_pair_images(config, dataset), should_stop=should_stop)
    timings["labels_s"] = time.perf_counter() - t0

    oracle = ScriptedTeacher().label(PairBatch(task, scores=teacher_scores(config, pairs)),
                                     progress=False)
    report = labeling_report(preferences, oracle.preferences, stats)
    # Every run reports how its labels lean, whoever made them: a position-biased labeller shows
    # up as a first-answer share far from the teacher's.
    report["first_share"] = label_agreement(preferences, oracle.preferences)["first_share"]
    report["teacher_first_share"] = label_agreement(oracle.preferences, oracle.preferences)["first_share"]
    if choice.kind == "scripted":
        report.update({key: stats.get(key) for key in ("noise_model", "flipped", "made_unsure")})
        level = stats.get("noise_level")
        report["noise_level"] = level if level is None or np.isfinite(level) else None  # inf: noise-free boltzmann
    if choice.kind == "scripted" and teacher_is_noise_free(config):
        # The labels are the teacher's own: agreement with it is 1 by construction, not a finding.
        report["accuracy_note"] = "labels are the scripted teacher's own; accuracy is 1 by construction"
        print(f"[{task} data seed {data_seed}] labels: scripted teacher ({config.teacher}), "
              f"{report['pairs']} pairs, unsure rate {report['unsure_rate']:.1%}")
    else:
        print(f"[{task} data seed {data_seed}] labels ({choice.kind}):\n{format_report(report)}")
    # Missing labels are weight 0: past the limit, "plare" would be little more than BC. Stop here,
    # before any training, rather than report it (LabelCoverageError says what to do).
    report["coverage"] = check_label_coverage(stats, max_unlabeled_fraction=config.max_unlabeled_fraction)

    # pbc's oracle score per episode: the simulator's return (it reads ground truth by design).
    training = training_data(dataset, pairs, preferences, unsure=config.unsure,
                             episode_scores=dataset.episode_returns)
    report["trained_pairs"] = training.num_trained_pairs
    summary = {"data_seed": data_seed, "dataset": dataset.card, "labels": report, "timings": timings}
    data_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(data_dir / "data_and_labels.json", summary)
    return TaskData(task, training, summary)


def _goal_text(config: ExperimentConfig, choice: LabelerChoice, task: str) -> str:
    """The prompt's goal text; the scripted teacher reads none, so it gets the task id (asking
    for the text would warn about tasks without one)."""
    if choice.kind == "scripted":
        return task
    from plare_jax.envs.tasks import task_text

    return task_text(task, config.vlm.task_text)


def _rendered_pair_images(config: ExperimentConfig, dataset):
    """MetaWorld's pair images: keyframes re-rendered from the stored simulator states."""

    def pair_images(pairs):
        from plare_jax.envs.render import RenderConfig, render_pair_images

        return render_pair_images(dataset, pairs, RenderConfig(num_keyframes=config.num_keyframes),
                                  workers=config.workers)

    return pair_images
