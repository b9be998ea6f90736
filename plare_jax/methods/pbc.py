"""Percentile BC: behaviour cloning on the best episodes by the simulator's score (an oracle).

Not a competitor: it reads the scripted teacher's per-episode score (simulator ground truth)
that no labelled method sees, so it shows how far plain cloning of the right data gets. The CPL
paper reports it as "%BC". Starts from scratch (no shared BC phase on all the data) and trains
for the whole update budget on the transitions of the top `top_fraction` of episodes.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import flax.struct
import jax
import numpy as np

from plare_jax import learner
from plare_jax.learner import LearnerConfig, LearnerState
from plare_jax.methods.base import PolicyFn, TrainingData

__all__ = ["PBCOptions", "PBCState", "PBC", "METHOD", "top_episode_rows"]


@dataclasses.dataclass(frozen=True)
class PBCOptions:
    """Percentile BC (oracle reference): which episodes to clone."""

    top_fraction: float = 0.1
    """Fraction of the episodes, best by the simulator's per-episode score, whose steps are cloned
    (at least one episode). 10% is the most selective of the usual %BC settings; with the quick
    preset's 120 episodes it still leaves 12 episodes (3000 steps) to clone."""

    def __post_init__(self):
        if not 0.0 < self.top_fraction <= 1.0:
            raise ValueError(f"pbc top_fraction must be in (0, 1], got {self.top_fraction}")


def top_episode_rows(data: TrainingData, top_fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """(rows, episodes): the transition rows of the best `top_fraction` of episodes, and their ids."""
    if data.episode_scores is None:
        raise ValueError(
            "pbc needs the scripted teacher's episode scores (simulator ground truth), and this data "
            "has none (e.g. recorded robot data); leave pbc out of --method"
        )
    scores = np.asarray(data.episode_scores)
    num_episodes = int(data.episode_ids.max()) + 1 if data.episode_ids.size else 0
    if scores.shape != (num_episodes,):
        raise ValueError(f"episode_scores has shape {scores.shape}, expected ({num_episodes},) for the episode ids")
    count = max(1, math.ceil(top_fraction * num_episodes))
    # Stable sort on the negated scores: ties keep episode order, so the choice is deterministic.
    best = np.sort(np.argsort(-scores, kind="stable")[:count])
    rows = np.flatnonzero(np.isin(data.episode_ids, best))
    return rows, best


class PBCState(flax.struct.PyTreeNode):
    """The policy's learner state plus the options (static) that choose the cloned episodes."""

    policy: LearnerState
    config: PBCOptions = flax.struct.field(pytree_node=False, default=PBCOptions())

    @property
    def step(self) -> jax.Array:
        """Global update count (what checkpoints are keyed by)."""
        return self.policy.step


@dataclasses.dataclass(frozen=True)
class PBC:
    name: str = "pbc"
    description: str = "%BC (oracle): behaviour cloning on the top episodes by the simulator's score"
    starts_from_bc_phase: bool = False
    oracle: bool = True
    default_options: PBCOptions = PBCOptions()
    options_help: str = "Percentile BC (oracle reference; needs the simulator's or stored rewards)."
    batch_limitation: str = ""  # prepare and train trace under vmap

    def options_for_run(self, options: PBCOptions, *, total_steps: int) -> PBCOptions:
        return options

    def create(self, key: jax.Array, policy_config: LearnerConfig, data: TrainingData, *,
               init: Any = None, options: PBCOptions | None = None) -> PBCState:
        """A fresh policy in phase "bc" (`init` is not used: percentile BC starts from scratch)."""
        options = PBCOptions() if options is None else options
        if not isinstance(options, PBCOptions):
            raise TypeError(f"pbc options must be PBCOptions, got {type(options).__name__}")
        top_episode_rows(data, options.top_fraction)  # fail now, before any training, without scores
        policy = learner.start_phase(LearnerState.create(key, policy_config, data.obs_dim, data.act_dim), "bc")
        return PBCState(policy=policy, config=options)

    def device_data(self, state: PBCState, data: TrainingData) -> learner.TransitionData:
        rows, _ = top_episode_rows(data, state.config.top_fraction)
        return data.transition_data(rows)

    def prepare(self, state, device_data, key, *, mesh=None, should_stop=None):
        return state  # nothing to do before the first update

    def train(self, state: PBCState, device_data, key, num_steps, *, metrics_every, mesh=None):
        policy, metrics = learner.train(state.policy, device_data, key, num_steps, phase="bc",
                                        metrics_every=metrics_every, mesh=mesh)
        return state.replace(policy=policy), metrics

    def policy_fn(self, state: PBCState) -> PolicyFn:
        return learner.make_policy_fn(state.policy)

    def policy_params(self, state: PBCState):
        return state.policy.params

    def report(self, state: PBCState, data: TrainingData) -> dict:
        rows, episodes = top_episode_rows(data, state.config.top_fraction)
        return {"oracle": True, "cloned_episodes": int(episodes.size), "cloned_rows": int(rows.size),
                "cloned_episode_score_mean": float(np.mean(data.episode_scores[episodes]))}


METHOD = PBC()
