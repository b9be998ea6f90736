"""A Bradley-Terry reward model r(s, a) fitted to labelled segment pairs, and relabelling with it.

The first half of the rlvlmf baseline (`plare_jax.methods.rlvlmf`), shaped like the CPL learner:
`create` a state, `update` it one step (pure), `train` K updates per call under `lax.scan`. The
segments' summed rewards give the Bradley-Terry loss (`losses.bradley_terry_loss`); pairs with
weight 0 weigh nothing and ties train as label 0.5. `relabel` gives every transition its reward,
standardised over the data (a Bradley-Terry reward is identified only up to an additive constant,
and its scale is whatever the labels' confidence made it).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import optax
from flax import nnx

from plare_jax import losses
from plare_jax.learner import PreferenceData
from plare_jax.networks import ScalarMLP
from plare_jax.scanned import scan_updates
from plare_jax.sharding import constrain_batch

__all__ = ["RewardModelConfig", "RewardModelState", "create", "update", "train", "relabel", "pair_accuracy"]

# Rows per forward pass over the whole dataset (bounds activation memory).
_PASS_BATCH = 8192


@dataclasses.dataclass(frozen=True)
class RewardModelConfig:
    hidden_dims: tuple[int, ...] = (256, 256)
    lr: float = 3e-4
    batch_pairs: int = 32


class RewardModelState(flax.struct.PyTreeNode):
    step: jax.Array  # int32, updates done
    params: nnx.State
    opt_state: optax.OptState
    graphdef: Any = flax.struct.field(pytree_node=False)
    config: RewardModelConfig = flax.struct.field(pytree_node=False)


def _optimizer(config: RewardModelConfig) -> optax.GradientTransformation:
    return optax.adam(config.lr)


def create(key: jax.Array, config: RewardModelConfig, obs_dim: int, act_dim: int) -> RewardModelState:
    """A fresh r(s, a) (tanh output: bounded per step)."""
    model = ScalarMLP(obs_dim + act_dim, hidden_dims=config.hidden_dims, bounded=True, rngs=nnx.Rngs(key))
    graphdef, params = nnx.split(model, nnx.Param)
    return RewardModelState(step=jnp.zeros((), jnp.int32), params=params, opt_state=_optimizer(config).init(params),
                            graphdef=graphdef, config=config)


def update(state: RewardModelState, batch: PreferenceData) -> tuple[RewardModelState, dict[str, jax.Array]]:
    """One pure Bradley-Terry step on a batch of pairs; metrics: loss and preference accuracy."""

    def objective(params):
        rewards = nnx.merge(state.graphdef, params)(batch.observations, batch.actions)  # [B, 2, T]
        per_pair = losses.bradley_terry_loss(rewards[:, 0], rewards[:, 1], batch.labels, mask=batch.mask)
        loss = losses.weighted_mean(per_pair, batch.weights)
        accuracy = losses.preference_accuracy(
            rewards[:, 0], rewards[:, 1], batch.labels, mask=batch.mask, weights=batch.weights
        )
        return loss, {"loss": loss, "accuracy": accuracy}

    grads, metrics = jax.grad(objective, has_aux=True)(state.params)
    updates, opt_state = _optimizer(state.config).update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    return state.replace(params=params, opt_state=opt_state, step=state.step + 1), metrics


def _train_impl(state: RewardModelState, pairs: PreferenceData, key, *, num_steps, metrics_every, mesh=None):
    def one_step(state):
        step_key = jax.random.fold_in(key, state.step)
        idx = jax.random.randint(step_key, (state.config.batch_pairs,), 0, pairs.labels.shape[0])
        return update(state, constrain_batch(jax.tree.map(lambda x: x[idx], pairs), mesh))

    return scan_updates(one_step, state, num_steps=num_steps, metrics_every=metrics_every)


train = jax.jit(_train_impl, static_argnames=("num_steps", "metrics_every", "mesh"))
"""`train(state, pairs, key, num_steps=K, metrics_every=M, mesh=None)`: K updates in one jitted,
scanned call (step k's pairs from fold_in(key, k)); metrics averaged per window of M."""


def pair_accuracy(state: RewardModelState, pairs: PreferenceData) -> jax.Array:
    """Preference accuracy on `pairs` (weight > 0, not ties); NaN if none is eligible."""
    model = nnx.merge(state.graphdef, state.params)
    rewards = jax.lax.map(
        lambda pair: model(pair[0], pair[1]), (pairs.observations, pairs.actions),
        batch_size=max(1, _PASS_BATCH // (2 * pairs.observations.shape[2])),
    )
    accuracy = losses.preference_accuracy(
        rewards[:, 0], rewards[:, 1], pairs.labels, mask=pairs.mask, weights=pairs.weights
    )
    # preference_accuracy is 0 without an eligible pair; report "not measured" instead.
    scored = jnp.sum((pairs.weights > 0) & (pairs.labels != 0.5))
    return jnp.where(scored > 0, accuracy, jnp.nan)


def _relabel_impl(state: RewardModelState, observations: jax.Array, actions: jax.Array):
    model = nnx.merge(state.graphdef, state.params)
    raw = jax.lax.map(lambda row: model(row[0], row[1]), (observations, actions), batch_size=_PASS_BATCH)
    mean, std = jnp.mean(raw), jnp.std(raw)
    return (raw - mean) / jnp.maximum(std, 1e-6), mean, std


relabel = jax.jit(_relabel_impl)
"""`relabel(state, observations, actions) -> (rewards, raw_mean, raw_std)`: r(s, a) of every
row, standardised to zero mean and unit std over the rows."""
