"""Implicit Q-learning (Kostrikov et al., arXiv 2110.06169) as one pytree state and a pure update.

The offline RL learner of the rlvlmf baseline (`plare_jax.methods.rlvlmf` composes it with a
reward model), shaped like the CPL learner: `create` a state, `update` it one step (pure, jit
it), `train` K updates per call under `lax.scan`.

Per update, in the reference's order: V(s) by expectile regression on min(Q1, Q2) of a target
twin critic; the actor by advantage-weighted regression (`losses.awr_policy_loss`) with
advantages from the new V; the twin critics by squared error to r + discount * (1 - terminal) *
V(s'), only on rows with a stored successor (or a true terminal); then the Polyak-averaged target.
With `train_actor=False` the update is the same without the actor (critic-only pretraining: IQL's
value learning never reads the actor), counted by its own `pretrain_step`.

Learning rates: the critics and V use a constant rate; the actor starts a fresh Adam with the CPL
learner's linear warm-up (the policy config's `warmup_steps`) and then a cosine decay to 0 at
`schedule_steps` (`actor_schedule`).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import optax
from flax import nnx

from plare_jax import learner, losses
from plare_jax.learner import LearnerConfig
from plare_jax.networks import PolicyMLP, ScalarMLP
from plare_jax.scanned import scan_updates
from plare_jax.sharding import constrain_batch

__all__ = ["IQLConfig", "IQLData", "IQLState", "create", "update", "train", "actor_schedule", "critic_values",
           "awr_weight_stats"]

# Rows per forward pass over the whole dataset (bounds activation memory).
_PASS_BATCH = 8192


@dataclasses.dataclass(frozen=True)
class IQLConfig:
    """IQL's hyperparameters, all given: their defaults and documentation are the user-facing
    options' (`methods.rlvlmf.RLVLMFOptions`, whose fields of these names build this), so that
    one place holds them."""

    lr: float  # Adam rate of the critics and V (constant), and the actor's peak rate
    expectile: float
    inverse_temperature: float
    max_weight: float  # clip of the advantage weights
    discount: float
    tau: float  # Polyak rate of the target critics
    batch_size: int  # transitions per update
    schedule_steps: int  # the actor's warm-up + cosine decay ends here
    critic_hidden_dims: tuple[int, ...]
    value_hidden_dims: tuple[int, ...]


class IQLData(flax.struct.PyTreeNode):
    """Every transition with its reward (device arrays)."""

    observations: jax.Array  # [N, O]
    actions: jax.Array  # [N, A]
    next_observations: jax.Array  # [N, O]
    has_next: jax.Array  # [N] float32, 1 where next_observations is real
    terminals: jax.Array  # [N] float32
    rewards: jax.Array  # [N]


class IQLState(flax.struct.PyTreeNode):
    """Twin critics and their target, V, the actor and their optimizer states."""

    step: jax.Array  # int32, actor updates (continuing an initial policy's count, if given)
    start: jax.Array  # int32, `step` at creation: the actor's schedule counts from here
    pretrain_step: jax.Array  # int32, critic-only updates done
    critic_params: nnx.State  # both critics, stacked on a leading axis of 2
    target_critic_params: nnx.State
    critic_opt_state: optax.OptState
    value_params: nnx.State
    value_opt_state: optax.OptState
    actor_params: nnx.State
    actor_opt_state: optax.OptState
    critic_graphdef: Any = flax.struct.field(pytree_node=False)
    value_graphdef: Any = flax.struct.field(pytree_node=False)
    actor_graphdef: Any = flax.struct.field(pytree_node=False)
    config: IQLConfig = flax.struct.field(pytree_node=False)
    policy_config: LearnerConfig = flax.struct.field(pytree_node=False)


def _twin_critic(obs_dim: int, act_dim: int, hidden_dims: tuple[int, ...], key: jax.Array):
    """Two independent Q(s, a) networks as one graphdef and params stacked on a leading axis of 2.

    Evaluated with `jax.vmap` over that axis (`critic_values`): one batched matmul per layer for
    both critics instead of two, fewer and larger ops per update.
    """
    nets = [ScalarMLP(obs_dim + act_dim, hidden_dims=hidden_dims, rngs=nnx.Rngs(k)) for k in jax.random.split(key)]
    graphdef, first = nnx.split(nets[0], nnx.Param)
    _, second = nnx.split(nets[1], nnx.Param)
    return graphdef, jax.tree.map(lambda a, b: jnp.stack([a, b]), first, second)


def critic_values(graphdef, params, obs: jax.Array, actions: jax.Array) -> jax.Array:
    """`[2, B]` Q-values of both critics."""
    return jax.vmap(lambda p: nnx.merge(graphdef, p)(obs, actions))(params)


def _critic_optimizer(config: IQLConfig) -> optax.GradientTransformation:
    return optax.adam(config.lr)


def actor_schedule(config: IQLConfig, policy_config: LearnerConfig) -> optax.Schedule:
    """Rate of the actor's k-th update (k from 0): the CPL learner's linear warm-up
    (`learner.learning_rate_schedule`: lr * min(1, (k + 1) / warmup_steps)), then a cosine
    decay from `lr` at k = warmup_steps to 0 at k = `schedule_steps`."""
    lr, warmup, total = config.lr, policy_config.warmup_steps, config.schedule_steps

    def schedule(count):
        count = jnp.asarray(count, jnp.float32)
        warm = jnp.minimum(1.0, (count + 1.0) / warmup) if warmup else 1.0
        progress = jnp.clip((count - warmup) / max(1, total - warmup), 0.0, 1.0)
        return lr * warm * 0.5 * (1.0 + jnp.cos(jnp.pi * progress))

    return schedule


def _actor_optimizer(config: IQLConfig, policy_config: LearnerConfig) -> optax.GradientTransformation:
    return optax.adam(actor_schedule(config, policy_config))


def _apply(tx: optax.GradientTransformation, grads, opt_state, params):
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state


def create(key: jax.Array, config: IQLConfig, policy_config: LearnerConfig, obs_dim: int, act_dim: int, *,
           critic_key: jax.Array, value_key: jax.Array, actor_params: nnx.State | None = None,
           start: int = 0) -> IQLState:
    """Fresh critics, V and actor (`key` initialises the actor), or the actor `actor_params`
    (an initial policy, e.g. the shared BC phase's; its `step` count is `start`)."""
    value = ScalarMLP(obs_dim, hidden_dims=config.value_hidden_dims, rngs=nnx.Rngs(value_key))
    actor = PolicyMLP(
        obs_dim, act_dim, hidden_dims=policy_config.hidden_dims, dropout_rate=policy_config.dropout_rate,
        dropout_mask=policy_config.dropout_mask, head=policy_config.head,
        state_dependent_std=policy_config.state_dependent_std, rngs=nnx.Rngs(key),
    )
    critic_graphdef, critic_params = _twin_critic(obs_dim, act_dim, config.critic_hidden_dims, critic_key)
    value_graphdef, value_params = nnx.split(value, nnx.Param)
    actor_graphdef, fresh_actor = nnx.split(actor, nnx.Param)
    if actor_params is None:
        actor_params = fresh_actor
    else:
        shapes = lambda tree: jax.tree.map(jnp.shape, tree)
        if shapes(actor_params) != shapes(fresh_actor):
            raise ValueError("iql: the initial policy's network differs from the one the policy config describes")
        actor_params = jax.tree.map(jnp.copy, actor_params)
    return IQLState(
        step=jnp.asarray(start, jnp.int32),
        start=jnp.asarray(start, jnp.int32),
        pretrain_step=jnp.zeros((), jnp.int32),
        critic_params=critic_params,
        target_critic_params=jax.tree.map(jnp.copy, critic_params),
        critic_opt_state=_critic_optimizer(config).init(critic_params),
        value_params=value_params,
        value_opt_state=_critic_optimizer(config).init(value_params),
        actor_params=actor_params,
        actor_opt_state=_actor_optimizer(config, policy_config).init(actor_params),
        critic_graphdef=critic_graphdef,
        value_graphdef=value_graphdef,
        actor_graphdef=actor_graphdef,
        config=config,
        policy_config=policy_config,
    )


def update(state: IQLState, batch: dict[str, jax.Array], dropout_key: jax.Array, *,
           train_actor: bool = True) -> tuple[IQLState, dict[str, jax.Array]]:
    """One pure IQL step on `batch` (observations, actions, next_observations, has_next,
    terminals, rewards); `train_actor=False`: V and the critics only."""
    config = state.config
    obs, actions = batch["observations"], batch["actions"]
    q_target = jnp.min(critic_values(state.critic_graphdef, state.target_critic_params, obs, actions), axis=0)

    # Value: expectile regression of V(s) on the target critics' Q(s, a).
    def value_objective(params):
        value = nnx.merge(state.value_graphdef, params)(obs)
        return jnp.mean(losses.expectile_loss(q_target - value, expectile=config.expectile)), value

    (value_loss, value), value_grads = jax.value_and_grad(value_objective, has_aux=True)(state.value_params)
    value_params, value_opt_state = _apply(_critic_optimizer(config), value_grads, state.value_opt_state,
                                           state.value_params)
    # The updated V at s (advantages) and s' (critic targets), in one pass.
    batch_size = obs.shape[0]
    new_values = nnx.merge(state.value_graphdef, value_params)(
        jnp.concatenate([obs, batch["next_observations"]], axis=0))
    new_value, next_value = new_values[:batch_size], new_values[batch_size:]

    # Actor: advantage-weighted regression, advantages from the updated V.
    advantages = q_target - new_value
    actor_dropout = learner.make_dropout_key(dropout_key, state.policy_config)

    def actor_objective(params):
        logp = nnx.merge(state.actor_graphdef, params).log_prob(obs, actions, dropout_key=actor_dropout)
        return jnp.mean(losses.awr_policy_loss(
            logp, advantages, inverse_temperature=config.inverse_temperature, max_weight=config.max_weight))

    if train_actor:
        actor_loss, actor_grads = jax.value_and_grad(actor_objective)(state.actor_params)
        actor_params, actor_opt_state = _apply(_actor_optimizer(config, state.policy_config), actor_grads,
                                               state.actor_opt_state, state.actor_params)
    else:
        actor_loss, actor_params, actor_opt_state = jnp.float32(jnp.nan), state.actor_params, state.actor_opt_state

    # Critics: one-step targets through the updated V; rows without a successor (an episode's
    # last stored step that is not a true terminal) have no target and weigh 0.
    not_terminal = 1.0 - batch["terminals"]
    q_targets = batch["rewards"] + config.discount * not_terminal * next_value
    row_weights = jnp.maximum(batch["has_next"], batch["terminals"])

    def critic_objective(params):
        q = critic_values(state.critic_graphdef, params, obs, actions)
        per_row = jnp.sum(jnp.square(q - q_targets), axis=0)
        return losses.weighted_mean(per_row, row_weights)

    critic_loss, critic_grads = jax.value_and_grad(critic_objective)(state.critic_params)
    critic_params, critic_opt_state = _apply(_critic_optimizer(config), critic_grads, state.critic_opt_state,
                                             state.critic_params)
    target_critic_params = optax.incremental_update(critic_params, state.target_critic_params, config.tau)

    metrics = {
        "loss": actor_loss,
        "actor_loss": actor_loss,
        "value_loss": value_loss,
        "critic_loss": critic_loss,
        "q_mean": jnp.mean(q_target),
        "v_mean": jnp.mean(value),
        "advantage_mean": jnp.mean(advantages),
        "awr_weight_mean": jnp.mean(losses.awr_weights(
            advantages, inverse_temperature=config.inverse_temperature, max_weight=config.max_weight)),
        "learning_rate": jnp.asarray(actor_schedule(config, state.policy_config)(state.step - state.start),
                                     jnp.float32),
    }
    new_state = state.replace(
        step=state.step + 1 if train_actor else state.step,
        pretrain_step=state.pretrain_step if train_actor else state.pretrain_step + 1,
        value_params=value_params, value_opt_state=value_opt_state,
        actor_params=actor_params, actor_opt_state=actor_opt_state,
        critic_params=critic_params, critic_opt_state=critic_opt_state,
        target_critic_params=target_critic_params,
    )
    return new_state, metrics


def _train_impl(state: IQLState, data: IQLData, key, *, num_steps, metrics_every, mesh=None, train_actor=True):
    # Step k draws from fold_in(key, counter) with the update kind's own counter, so that a run
    # split over calls (or resumed) equals one uninterrupted call.
    num_rows = data.observations.shape[0]

    def one_step(state):
        counter = state.step if train_actor else state.pretrain_step
        sample_key, dropout_key = jax.random.split(jax.random.fold_in(key, counter))
        idx = jax.random.randint(sample_key, (state.config.batch_size,), 0, num_rows)
        batch = {
            "observations": data.observations[idx],
            "actions": data.actions[idx],
            "next_observations": data.next_observations[idx],
            "has_next": data.has_next[idx],
            "terminals": data.terminals[idx],
            "rewards": data.rewards[idx],
        }
        return update(state, constrain_batch(batch, mesh), dropout_key, train_actor=train_actor)

    return scan_updates(one_step, state, num_steps=num_steps, metrics_every=metrics_every)


train = jax.jit(_train_impl, static_argnames=("num_steps", "metrics_every", "mesh", "train_actor"))
"""`train(state, data, key, num_steps=K, metrics_every=M, mesh=None, train_actor=True)`: K
updates in one jitted, scanned call; metrics averaged per window of M, `name -> [K // M]`."""


def _awr_weight_stats_impl(state: IQLState, observations: jax.Array, actions: jax.Array):
    config = state.config
    value = nnx.merge(state.value_graphdef, state.value_params)

    def weights(rows):
        obs, act = rows
        q = jnp.min(critic_values(state.critic_graphdef, state.target_critic_params, obs, act), axis=0)
        advantages = q - value(obs)
        # At the clip: the exponent is clipped, the same test `losses.awr_weights` makes.
        at_clip = config.inverse_temperature * advantages >= jnp.log(config.max_weight)
        return at_clip, losses.awr_weights(advantages, inverse_temperature=config.inverse_temperature,
                                           max_weight=config.max_weight)

    at_clip, w = jax.lax.map(weights, (observations, actions), batch_size=_PASS_BATCH)
    return jnp.mean(at_clip.astype(jnp.float32)), jnp.mean(w)


awr_weight_stats = jax.jit(_awr_weight_stats_impl)
"""(share of rows whose weight exp(beta * A) is at the `max_weight` clip, mean weight) over the
given transitions, with A = min(target Q1, Q2)(s, a) - V(s) as the actor's update uses."""
