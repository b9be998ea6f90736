"""The interface every training method implements, and the data they all share.

A method is one module in `plare_jax.methods` exposing a `METHOD` object with this small
surface (see `Method`): create a state, say what it trains on, run K scanned updates per host
call, and give a policy for evaluation. A method knows no simulator and no labeler: it takes
arrays (`TrainingData`) and returns a trained state. The pipeline (`plare_jax.pipeline`) owns
evaluation, checkpoints, curves and results, the same way for every method.

Step budget: methods that continue the shared behaviour-cloning phase (`starts_from_bc_phase`)
run `second_phase_steps` more updates; methods that start from scratch run
`bc_steps + second_phase_steps`, so every method gets the same number of policy updates.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, Protocol

import jax
import numpy as np

from plare_jax.learner import LearnerConfig, LearnerState, PreferenceData, TransitionData

__all__ = ["TrainingData", "Method", "PolicyFn"]

PolicyFn = Callable[[np.ndarray], np.ndarray]


@dataclasses.dataclass(frozen=True, eq=False)
class TrainingData:
    """Everything a method may train on, for one task (host numpy arrays, built once per task).

    Transitions (every step of the offline data, episodes concatenated):
      observations: [N, O] float32.
      actions: [N, A] float32, taken at observations[i].
      next_observations: [N, O] float32, the observation after actions[i]; for an episode's last
        step (no successor stored) a copy of observations[i], with `has_next` False.
      has_next: [N] bool, whether next_observations[i] is real (False on each episode's last step:
        value-based methods must mask those rows out).
      terminals: [N] float32, 1 where the episode truly terminated after step i (MetaWorld data:
        all 0, episodes end by time limit only, which is not a terminal).
      episode_ids: [N] int32, 0..E-1.

    Labelled segment pairs (the same pairs and labels for every method):
      pair_observations: [P, 2, T, O] float32.
      pair_actions: [P, 2, T, A] float32.
      labels: [P] float32, probability that segment 2 is preferred (0, 1, or 0.5 for a tie).
      weights: [P] float32, 0 drops a pair (an unsure or failed label under --unsure drop).
      pair_mask: [P, 2, T] float32, valid steps.
      pair_rows: [P, 2, T] int64, the transition row of every segment step (so a method can map
        pairs back to transitions, e.g. SFT on preferred segments).

    Oracle information (only reference methods labelled as such may read it):
      episode_scores: [E] float32 or None, the scripted teacher's per-episode score (None when
        there is no simulator, e.g. recorded robot data).
    """

    observations: np.ndarray
    actions: np.ndarray
    next_observations: np.ndarray
    has_next: np.ndarray
    terminals: np.ndarray
    episode_ids: np.ndarray
    pair_observations: np.ndarray
    pair_actions: np.ndarray
    labels: np.ndarray
    weights: np.ndarray
    pair_mask: np.ndarray
    pair_rows: np.ndarray
    episode_scores: np.ndarray | None = None

    def __post_init__(self):
        n, obs_dim = self.observations.shape
        checks = {
            "actions": (self.actions.ndim == 2 and self.actions.shape[0] == n),
            "next_observations": self.next_observations.shape == (n, obs_dim),
            "has_next": self.has_next.shape == (n,),
            "terminals": self.terminals.shape == (n,),
            "episode_ids": self.episode_ids.shape == (n,),
            "pair_observations": (self.pair_observations.ndim == 4 and self.pair_observations.shape[1] == 2
                                  and self.pair_observations.shape[-1] == obs_dim),
        }
        if checks["pair_observations"]:
            p, _, t, _ = self.pair_observations.shape
            checks.update({
                "pair_actions": self.pair_actions.shape[:3] == (p, 2, t),
                "labels": self.labels.shape == (p,),
                "weights": self.weights.shape == (p,),
                "pair_mask": self.pair_mask.shape == (p, 2, t),
                "pair_rows": self.pair_rows.shape == (p, 2, t),
            })
        bad = [name for name, ok in checks.items() if not ok]
        if bad:
            raise ValueError(f"TrainingData: inconsistent shapes for {bad} (N={n}, O={obs_dim})")

    @property
    def obs_dim(self) -> int:
        return int(self.observations.shape[1])

    @property
    def act_dim(self) -> int:
        return int(self.actions.shape[1])

    @property
    def num_pairs(self) -> int:
        return int(self.labels.shape[0])

    @property
    def num_trained_pairs(self) -> int:
        """Pairs with a non-zero loss weight: what a preference method actually learns from."""
        return int(np.count_nonzero(self.weights > 0))

    def preference_data(self) -> PreferenceData:
        """The labelled pairs as the CPL learner's device pytree."""
        return PreferenceData.create(self.pair_observations, self.pair_actions, self.labels,
                                     self.weights, self.pair_mask)

    def transition_data(self, rows: np.ndarray | None = None) -> TransitionData:
        """(observation, action) rows for behaviour cloning: all of them, or `rows` only."""
        if rows is None:
            return TransitionData.create(self.observations, self.actions)
        return TransitionData.create(self.observations[rows], self.actions[rows])


class Method(Protocol):
    """What the pipeline needs from a method (each module's `METHOD` implements it).

    The state is one pytree whose array fields are checkpointed (a `flax.struct.PyTreeNode`
    with static fields marked `pytree_node=False`) and which has an int32 `step` field.
    `train` is pure given its inputs and draws step k's randomness from `fold_in(key, k)` with the
    state's own global step, so a run split over calls, or resumed from a checkpoint, equals an
    uninterrupted one.
    """

    name: str
    """CLI name (`--method NAME`)."""
    description: str
    """One line for --help, tables and plots."""
    starts_from_bc_phase: bool
    """Continue from the shared BC-phase policy (else start from scratch for the whole budget)."""
    oracle: bool
    """Reads simulator ground truth (e.g. percentile BC): a reference, not a competitor."""
    default_options: Any
    """The method's own options, a frozen dataclass (the CLIs show it as the group `--NAME.*`,
    built from the registry), or None for a method without options."""
    options_help: str
    """One line for the options group in --help ("" without options)."""
    batch_limitation: str
    """Why --batch-seeds cannot stack this method's seeds, "" when it can: its `train` reads no
    array value on the host, so the pipeline can vmap it over a stacked state, and its `prepare`
    takes a stacked state (`pipeline.train.SeedGroup`). Every built-in method can."""

    def options_for_run(self, options: Any, *, total_steps: int) -> Any:
        """`options` adjusted to a run's update budget (e.g. a schedule spanning `total_steps`);
        most methods return them unchanged."""
        ...

    def create(self, key: jax.Array, policy_config: LearnerConfig, data: TrainingData, *,
               init: LearnerState | None, options: Any = None) -> Any:
        """A fresh state. `init` is the shared BC-phase state when `starts_from_bc_phase`."""
        ...

    def device_data(self, state: Any, data: TrainingData) -> Any:
        """The pytree `train` reads (placed on the devices once by the pipeline)."""
        ...

    def prepare(self, state: Any, device_data: Any, key: jax.Array, *, mesh: jax.sharding.Mesh | None = None,
                should_stop: Callable[[], bool] | None = None) -> Any:
        """The work a method does once before its first update (e.g. rlvlmf's reward model),
        in chunks with `should_stop` checked between them (raising `interrupts.StopRequested`);
        `key` is the first update call's. Most methods return `state` unchanged; `train` does
        the same work itself if it was not done. Under --batch-seeds `state` is a group's stacked
        state (a leading seed axis on every array leaf) and `key` one key per seed, `[S]`."""
        ...

    def train(self, state: Any, device_data: Any, key: jax.Array, num_steps: int, *,
              metrics_every: int, mesh: jax.sharding.Mesh | None = None) -> tuple[Any, dict[str, jax.Array]]:
        """`num_steps` updates in one jitted, scanned call; metrics averaged per window,
        `name -> [num_steps // metrics_every]`."""
        ...

    def policy_fn(self, state: Any) -> PolicyFn:
        """Deterministic policy for evaluation: observations [B, O] -> actions [B, A] (numpy)."""
        ...

    def policy_params(self, state: Any) -> Any:
        """The `PolicyMLP` parameters `policy_fn` evaluates (what policy export writes)."""
        ...

    def report(self, state: Any, data: TrainingData) -> dict:
        """Extra numbers for results.json (e.g. a reward model's training accuracy); may be {}."""
        ...
