"""Behaviour cloning on every step of the offline data (the baseline that ignores the labels).

Also the shared first phase of every method that `starts_from_bc_phase`: the `bc` method simply
keeps cloning with the same optimizer for as many steps as the others' second phase, so it gets
the same number of updates.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax

from plare_jax import learner
from plare_jax.learner import LearnerConfig, LearnerState
from plare_jax.methods.base import PolicyFn, TrainingData


@dataclasses.dataclass(frozen=True)
class BC:
    name: str = "bc"
    description: str = "BC: behaviour cloning on all offline data (labels unused)"
    starts_from_bc_phase: bool = True
    oracle: bool = False
    default_options: None = None  # no options of its own
    options_help: str = ""
    batch_limitation: str = ""  # prepare and train trace under vmap

    def options_for_run(self, options: None, *, total_steps: int) -> None:
        return options

    def create(self, key: jax.Array, policy_config: LearnerConfig, data: TrainingData, *,
               init: LearnerState | None, options: Any = None) -> LearnerState:
        if init is None:  # the shared phase itself, or bc run on its own
            return learner.start_phase(
                LearnerState.create(key, policy_config, data.obs_dim, data.act_dim), "bc")
        return init  # keep cloning: same optimizer state, no warm-up restart

    def device_data(self, state: LearnerState, data: TrainingData) -> learner.TransitionData:
        return data.transition_data()

    def prepare(self, state, device_data, key, *, mesh=None, should_stop=None):
        return state  # nothing to do before the first update

    def train(self, state, device_data, key, num_steps, *, metrics_every, mesh=None):
        return learner.train(state, device_data, key, num_steps, phase="bc",
                             metrics_every=metrics_every, mesh=mesh)

    def policy_fn(self, state: LearnerState) -> PolicyFn:
        return learner.make_policy_fn(state)

    def policy_params(self, state: LearnerState):
        return state.params

    def report(self, state: LearnerState, data: TrainingData) -> dict:
        return {}


METHOD = BC()
