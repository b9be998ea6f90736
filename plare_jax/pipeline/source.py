"""What the one pipeline (`pipeline.runner.run_source`) asks of where its data comes from.

Two sources implement it: MetaWorld (`pipeline.run.MetaWorldSource`: collected data with
simulator states, rendered keyframes, evaluation in the simulator) and recorded robot data
(`pipeline.offline.RecordedSource`: stored frames, stored rewards if any, held-out preference
accuracy). Everything else -- pairs, labels, the coverage gate, the shared BC phase, every method,
checkpoints, resume, signals, results.json, curves -- is written once, in `pipeline.data`,
`pipeline.train` and `pipeline.runner`.
"""

from __future__ import annotations

import dataclasses
import pathlib
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import jax
import numpy as np

from plare_jax.data.segments import SegmentPairs
from plare_jax.methods.base import TrainingData
from plare_jax.pipeline.config import SharedOptions
from plare_jax.pipeline.labels import LabelerChoice, PairImages

__all__ = ["DataSource", "Unit"]


@dataclasses.dataclass(frozen=True)
class Unit:
    """One dataset of a run and where its files live: a MetaWorld task at one data seed, or the
    recorded dataset. Its training seeds keep their files in `seed_dir(seed)`."""

    name: str
    """Task id or dataset name (what results and trackers call it)."""
    data_seed: int
    """Seed of the data, the pair sampling and the labels."""
    dir: pathlib.Path
    """Holds data_and_labels.json and the seed directories."""
    video_dir: pathlib.Path | None = None
    """Where the first training seed's final-evaluation videos go (None: no videos)."""

    def seed_dir(self, seed: int) -> pathlib.Path:
        return self.dir / f"seed{seed}"


class DataSource(Protocol):
    """Where a run's data comes from, and what can be measured on it.

    A source is an adapter at the impure edge (files, simulators): the stages it feeds are the
    same for every source. `config` holds the options every experiment shares.
    """

    config: SharedOptions
    resume_command: str
    """The command that continues a stopped run, with `{run_dir}` to fill in."""
    track: tuple[str, ...]
    """Tracking backends the run logs to (`--track`; () for none)."""

    @property
    def name(self) -> str:
        """Describes the source in a few characters: the stem of a default run name."""

    def check(self) -> LabelerChoice:
        """Every error in the options or the inputs, raised before any work; the labeler to use."""

    def training_mesh(self) -> jax.sharding.Mesh | None:
        """The data mesh training runs on (None: one device)."""

    def units(self, run_dir: pathlib.Path) -> list[Unit]:
        """The datasets of this run, in the order they are prepared and trained."""

    def load(self, unit: Unit, should_stop: Callable[[], bool] | None) -> Any:
        """The unit's dataset: observations, actions, episode_ids and (if stored) rewards."""

    def goal_text(self, unit: Unit, choice: LabelerChoice) -> str:
        """The goal the labeler is asked about."""

    def pair_images(self, dataset) -> PairImages:
        """The images the VLM sees of some pairs of `dataset`."""

    def teacher_scores(self, dataset, pairs: SegmentPairs) -> np.ndarray | None:
        """[P, 2] the scripted teacher's score per segment, or None when the data has no ground truth."""

    def training_arrays(self, unit: Unit, dataset, pairs: SegmentPairs, preferences: np.ndarray,
                        report: dict) -> tuple[TrainingData, Any]:
        """What the methods train on, and what this source keeps for its evaluator and exports
        (adds its own counts to the labels' `report`)."""

    def describe(self, dataset, choice: LabelerChoice, kept: Any) -> dict:
        """The source's part of data_and_labels.json (its dataset card, ...)."""

    def evaluator(self, unit: Unit, kept: Any, should_stop: Callable[[], bool] | None
                  ) -> Callable[[Sequence[int]], Callable]:
        """Given training seeds, their `pipeline.train.EvaluateSeedsFn` (simulator success, or
        held-out preference accuracy)."""

    def finish_seed(self, unit: Unit, data, seed: int, result: dict) -> dict:
        """A training seed's result after it trained (e.g. with the paths of exported policies)."""

    def results(self, choice: LabelerChoice, summaries: dict, seed_results: dict) -> dict:
        """results.json from `summaries[unit]` (data stage) and `seed_results[unit][seed]`."""

    def plot_curves(self, run_dir: pathlib.Path, units: Sequence[Unit]) -> pathlib.Path:
        """Writes the learning curves of every unit and method; returns the figure's path."""

    def format_table(self, results: dict) -> str:
        """results.json as the markdown table of summary.md."""
