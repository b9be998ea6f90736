"""PLARE: the policy learned straight from the preference labels with CPL (no reward model).

Continues the shared behaviour-cloning phase's policy with an explicit phase switch (a fresh
optimizer and warm-up), then minimises the CPL loss on the labelled segment pairs; pairs with
weight 0 (unsure or failed labels under `--unsure drop`) contribute nothing.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax

from plare_jax import learner
from plare_jax.learner import LearnerConfig, LearnerState
from plare_jax.methods.base import PolicyFn, TrainingData


@dataclasses.dataclass(frozen=True)
class PLARE:
    name: str = "plare"
    description: str = "PLARE: CPL on the preference labels, no reward model"
    starts_from_bc_phase: bool = True
    oracle: bool = False

    def create(self, key: jax.Array, policy_config: LearnerConfig, data: TrainingData, *,
               init: LearnerState | None, options: Any = None) -> LearnerState:
        if init is None:
            init = LearnerState.create(key, policy_config, data.obs_dim, data.act_dim)
        return learner.start_phase(init, "cpl")

    def device_data(self, state: LearnerState, data: TrainingData) -> learner.PreferenceData:
        return data.preference_data()

    def train(self, state, device_data, key, num_steps, *, metrics_every, mesh=None):
        return learner.train(state, device_data, key, num_steps, phase="cpl",
                             metrics_every=metrics_every, mesh=mesh)

    def policy_fn(self, state: LearnerState) -> PolicyFn:
        return learner.make_policy_fn(state)

    def report(self, state: LearnerState, data: TrainingData) -> dict:
        return {"trained_pairs": data.num_trained_pairs, "labelled_pairs": data.num_pairs}


METHOD = PLARE()
