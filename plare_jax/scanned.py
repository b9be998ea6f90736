"""K updates in one scanned program, with metrics averaged per window (no host sync per step).

Every learner (the CPL learner, the reward model, IQL) runs its updates this way: one jitted call
runs `num_steps` updates as a `lax.scan` of windows of `metrics_every` updates, and returns each
window's mean metrics, `[num_steps // metrics_every]` per name.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

__all__ = ["scan_updates"]


def scan_updates(one_step: Callable[[Any], tuple[Any, dict]], state: Any, *, num_steps: int,
                 metrics_every: int) -> tuple[Any, dict]:
    """`state` after `num_steps` calls of `one_step(state) -> (state, metrics)`, and the metrics
    averaged over each window of `metrics_every` steps (`num_steps` must be a multiple of it).
    Call it inside `jit`; `one_step` draws its randomness from the state's own step counter."""

    def step(state, _):
        return one_step(state)

    def window(state, _):
        state, metrics = jax.lax.scan(step, state, None, length=metrics_every)
        return state, jax.tree.map(lambda m: jnp.mean(m, axis=0), metrics)

    return jax.lax.scan(window, state, None, length=num_steps // metrics_every)
