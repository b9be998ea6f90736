"""SFT: behaviour cloning on the preferred segment of each confidently labelled pair only.

The simplest way to use the labels without a reward model or a contrastive loss (reported by
the CPL paper as a baseline). It continues the shared behaviour-cloning phase's policy and
starts a fresh "bc" phase on the subset (`learner.start_phase`: new optimizer state and
warm-up), the same switch PLARE makes into its CPL phase, so that the two differ only in what
the second phase learns from. Pairs count only with weight > 0 and a hard label (0 or 1): ties
and dropped (unsure) pairs name no preferred segment.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import numpy as np

from plare_jax import learner
from plare_jax.learner import LearnerConfig, LearnerState
from plare_jax.methods.base import TrainingData
from plare_jax.methods.bc import BC

__all__ = ["SFT", "METHOD", "preferred_segment_rows"]


def preferred_segment_rows(data: TrainingData) -> np.ndarray:
    """Transition rows of the valid steps of every confidently preferred segment ([M] int64).

    A row appears once per preferred segment that contains it (segments may overlap), so the
    rows are weighted as the labelled segments sample them.
    """
    confident = (data.weights > 0) & ((data.labels == 0.0) | (data.labels == 1.0))
    if not confident.any():
        raise ValueError(
            f"sft: none of the {data.num_pairs} pairs has a confident label (0 or 1) with weight > 0; "
            "it has nothing to clone"
        )
    pairs = np.flatnonzero(confident)
    preferred = data.labels[pairs].astype(np.int64)  # label = P(second preferred): 1 -> index 1
    rows = data.pair_rows[pairs, preferred]  # [M_pairs, T]
    valid = data.pair_mask[pairs, preferred] > 0
    return rows[valid].astype(np.int64)


@dataclasses.dataclass(frozen=True)
class SFT(BC):
    """BC's learner and phase on other rows: it differs from `bc` in `create` (a fresh "bc" phase
    after the shared one) and `device_data` (the preferred segments' rows only)."""

    name: str = "sft"
    description: str = "SFT: behaviour cloning on the preferred segments only"

    def create(self, key: jax.Array, policy_config: LearnerConfig, data: TrainingData, *,
               init: LearnerState | None, options: Any = None) -> LearnerState:
        if init is None:  # run on its own: from scratch
            init = LearnerState.create(key, policy_config, data.obs_dim, data.act_dim)
        return learner.start_phase(init, "bc")

    def device_data(self, state: LearnerState, data: TrainingData) -> learner.TransitionData:
        return data.transition_data(preferred_segment_rows(data))

    def report(self, state: LearnerState, data: TrainingData) -> dict:
        confident = (data.weights > 0) & ((data.labels == 0.0) | (data.labels == 1.0))
        return {"cloned_pairs": int(confident.sum()), "cloned_rows": int(preferred_segment_rows(data).shape[0])}


METHOD = SFT()
