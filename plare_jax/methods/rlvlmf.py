"""RL-VLM-F, the paper's baseline: a reward model learned from the labels, then offline RL (IQL).

PLARE compares against RL-VLM-F (Wang et al., arXiv 2402.03681) re-implemented offline, as
the PLARE/CPL reference code does ("preference IQL"):

1. Reward model. An MLP r(s, a) (tanh output) is fitted to the same labelled pairs with the
   Bradley-Terry loss on the segments' summed rewards (`losses.bradley_terry_loss`). Pairs with
   weight 0 (unsure labels under `--unsure drop`) are skipped; ties (`--unsure tie`) train as
   label 0.5. It trains on every labelled pair the other methods train on: holding some out
   would give the baseline fewer labels than PLARE. `report` gives its preference accuracy on
   those training pairs (how well it fits them, not a held-out estimate).
2. Relabelling. Every transition of the offline data gets r(s, a), standardised to zero mean
   and unit std over the data. Why: a Bradley-Terry reward is identified only up to an additive
   constant, and its scale is whatever the labels' confidence made it; IQL's advantage weights
   exp(beta * A) depend on that scale, so standardising makes the reference beta mean the same
   for every task and seed (IQL itself rescales D4RL rewards for the same reason).
3. Critic-only updates (`critic_pretrain_steps`): V and the twin critics below train without
   the actor. IQL's value learning never reads the actor, so this is the same algorithm with
   the policy extraction started on trained critics. Why: at the quick budget the joint start
   extracts the policy from critics that are still far from converged (development data seed
   0: plate-slide 0.00 with the joint start, 0.80 after 10k critic-only updates, the same
   reward model; docs/methods.md). The paper preset keeps the joint start.
4. IQL (Kostrikov et al., arXiv 2110.06169) on all transitions: V(s) by expectile regression
   on min(Q1, Q2) of a target twin critic; Q(s, a) by squared error to
   r + discount * (1 - terminal) * V(s'), only on rows with a stored successor (or a true
   terminal); Polyak-averaged target; the policy by advantage-weighted regression
   (`losses.awr_policy_loss`) with the shared policy network (deterministic head: a weighted
   squared error towards the data's actions). Per step, in the reference's order: value,
   then actor (advantages from the new V), then critics (targets from the new V), then target.
   `report` gives the share of the data's transitions whose advantage weight is at the clip
   (`max_weight`), so that the inverse temperature can be judged on development data.

Learning rates: the critics and the value network use a constant rate, as in IQL. The actor
starts a fresh Adam at its first update with the CPL learner's linear warm-up (the same
`warmup_steps` of the policy config and the same lr * min(1, (k + 1) / warmup_steps) at the
k-th actor update, towards this method's `lr`), the switch plare and sft make into their
second phase (`learner.start_phase`); after the warm-up the rate follows IQL's cosine decay
to 0 at `schedule_steps`.

Step budget: like plare and sft, the actor continues the shared behaviour-cloning phase's
policy, and IQL runs for the second phase's updates (`state.step` continues the BC phase's
count; `iql_start` marks the switch); the reward model, critics and value network start from
scratch, and the reward model's steps come on top, run by the first `train` call and reported
with their wall time. Why from the BC policy, where the reference trains IQL from scratch for
500k steps: at the quick preset's budget, IQL from scratch (6k updates) scored 0.00 on sweep-into
(development data seed 0, every evaluation), while the same actor trained with the weighting
switched off (inverse temperature 0) reached 0.20 in 3k updates: the from-scratch actor is
under-trained, not the baseline being weak. Starting every preference method from the same BC
policy with the same number of second-phase updates makes the comparison about what each does
with the labels. `create(..., init=None)` still gives the reference's from-scratch IQL.

Resumability: the reward model is trained, the data relabelled and the critic-only updates run
entirely inside the first `train` call, so any state that `train` returns (and any checkpoint of
it) holds the finished reward model, relabelled rewards (`rewards`) and pretrained critics, and
continuing it equals an uninterrupted run.
"""

from __future__ import annotations

import dataclasses
import math
import time
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from tqdm.auto import tqdm

from plare_jax import learner, losses
from plare_jax.learner import LearnerConfig, PreferenceData
from plare_jax.methods.base import PolicyFn, TrainingData
from plare_jax.networks import PolicyMLP, ScalarMLP
from plare_jax.sharding import check_divisible, constrain_batch, place

__all__ = ["RLVLMFOptions", "QUICK", "PAPER", "RLVLMFData", "RLVLMFState", "RLVLMF", "METHOD"]

# Reward-model and critic-only updates per host call (one progress-bar tick each).
_CHUNK_STEPS = 1000
# Rows per forward pass when relabelling the whole dataset (bounds activation memory).
_RELABEL_BATCH = 8192


@dataclasses.dataclass(frozen=True)
class RLVLMFOptions:
    """RL-VLM-F baseline (Bradley-Terry reward model, then IQL). Defaults = the quick preset."""

    reward_steps: int = 1000
    """Reward-model updates, run before IQL and on top of the IQL step budget (reference: 50k)."""
    reward_hidden_dims: tuple[int, ...] = (256, 256)
    """Hidden layer widths of the reward model r(s, a) (reference: 512, 512)."""
    critic_pretrain_steps: int = 10_000
    """Value and critic updates (no actor update) after relabelling and before the IQL updates
    that also train the actor; on top of the step budget, like the reward model's. IQL's value
    learning never reads the actor, so this is the same algorithm with the policy extraction
    started on trained critics instead of fresh ones (0: the reference's joint start, which the
    paper preset keeps: its 500k updates leave the critics time to converge)."""
    reward_lr: float = 3e-4
    """Adam learning rate of the reward model (constant)."""
    reward_batch_pairs: int = 32
    """Labelled segment pairs per reward-model update."""
    expectile: float = 0.7
    """IQL expectile tau of the value regression (reference: 0.7)."""
    inverse_temperature: float = 3.0
    """IQL advantage-weighting inverse temperature beta (reference: 3, i.e. 1/3 as a temperature)."""
    max_weight: float = 100.0
    """Clip of the advantage weights exp(beta * A)."""
    discount: float = 0.99
    """Discount factor of the Q targets."""
    tau: float = 0.005
    """Polyak rate of the target critics."""
    critic_hidden_dims: tuple[int, ...] = (256, 256)
    """Hidden layer widths of each of the twin Q networks (reference: 512, 512)."""
    value_hidden_dims: tuple[int, ...] = (256, 256)
    """Hidden layer widths of the value network V(s) (reference: 512, 512)."""
    lr: float = 3e-4
    """Adam learning rate of the critics and the value network, and the actor's peak rate."""
    schedule_steps: int = 6000
    """Length of the actor's learning-rate schedule: the policy config's linear warm-up
    (`warmup_steps`, as at the other methods' phase switch), then a cosine decay to 0 at this
    step. The experiment sets it to the run's IQL update budget (--bc-steps + --cpl-steps),
    whatever is given here. Critic and value learning rates are constant, as in IQL."""
    batch_size: int = 256
    """Transitions per IQL update."""

    def __post_init__(self):
        for name in ("reward_steps", "reward_batch_pairs", "schedule_steps", "batch_size"):
            if getattr(self, name) <= 0:
                raise ValueError(f"rlvlmf {name} must be positive, got {getattr(self, name)}")
        if self.critic_pretrain_steps < 0:
            raise ValueError(f"rlvlmf critic_pretrain_steps must be >= 0, got {self.critic_pretrain_steps}")
        if not 0.0 < self.expectile < 1.0:
            raise ValueError(f"rlvlmf expectile must be in (0, 1), got {self.expectile}")
        if not 0.0 <= self.discount <= 1.0 or not 0.0 < self.tau <= 1.0:
            raise ValueError(f"rlvlmf needs discount in [0, 1] and tau in (0, 1], got {self.discount}, {self.tau}")
        if self.inverse_temperature < 0 or self.max_weight <= 0 or self.lr <= 0 or self.reward_lr <= 0:
            raise ValueError("rlvlmf needs inverse_temperature >= 0, max_weight > 0 and positive learning rates")
        for name in ("reward_hidden_dims", "critic_hidden_dims", "value_hidden_dims"):
            object.__setattr__(self, name, tuple(int(h) for h in getattr(self, name)))


QUICK = RLVLMFOptions()
"""Sized to run next to the other methods on 2 CPU cores (see benchmarks/methods.py)."""
PAPER = RLVLMFOptions(
    reward_steps=50_000,
    critic_pretrain_steps=0,
    reward_hidden_dims=(512, 512),
    critic_hidden_dims=(512, 512),
    value_hidden_dims=(512, 512),
    schedule_steps=500_000,
)
"""The PLARE reference settings (reward model 50k steps, [512, 512] networks, IQL 500k steps)."""


class RLVLMFData(flax.struct.PyTreeNode):
    """What `train` reads: the reward model's pairs (all labelled pairs) and every transition."""

    reward_pairs: PreferenceData
    observations: jax.Array  # [N, O]
    actions: jax.Array  # [N, A]
    next_observations: jax.Array  # [N, O]
    has_next: jax.Array  # [N] float32, 1 where next_observations is real
    terminals: jax.Array  # [N] float32


def _twin_critic(obs_dim: int, act_dim: int, hidden_dims: tuple[int, ...], key: jax.Array):
    """Two independent Q(s, a) networks as one graphdef and params stacked on a leading axis of 2.

    Evaluated with `jax.vmap` over that axis (`_critic_values`): one batched matmul per layer for
    both critics instead of two, fewer and larger ops per update.
    """
    nets = [ScalarMLP(obs_dim + act_dim, hidden_dims=hidden_dims, rngs=nnx.Rngs(k)) for k in jax.random.split(key)]
    graphdef, first = nnx.split(nets[0], nnx.Param)
    _, second = nnx.split(nets[1], nnx.Param)
    return graphdef, jax.tree.map(lambda a, b: jnp.stack([a, b]), first, second)


def _critic_values(graphdef, params, obs: jax.Array, actions: jax.Array) -> jax.Array:
    """`[2, B]` Q-values of both critics."""
    return jax.vmap(lambda p: nnx.merge(graphdef, p)(obs, actions))(params)


class RLVLMFState(flax.struct.PyTreeNode):
    """Reward model, critics, value, actor, their optimizer states and the relabelled rewards."""

    step: jax.Array  # int32, policy updates: the BC phase's (if continued) plus IQL updates
    iql_start: jax.Array  # int32, `step` at which IQL started (0 from scratch)
    reward_step: jax.Array  # int32, reward-model updates done
    critic_pretrain_step: jax.Array  # int32, critic-only updates done
    reward_params: nnx.State
    reward_opt_state: optax.OptState
    critic_params: nnx.State  # both critics, stacked on a leading axis of 2
    target_critic_params: nnx.State
    critic_opt_state: optax.OptState
    value_params: nnx.State
    value_opt_state: optax.OptState
    actor_params: nnx.State
    actor_opt_state: optax.OptState
    rewards: jax.Array  # [N] standardised r(s, a) of every transition (zeros before relabelling)
    reward_raw_mean: jax.Array  # mean and std of the raw r(s, a) over the data
    reward_raw_std: jax.Array
    reward_loss: jax.Array  # mean Bradley-Terry loss of the last reward-model chunk
    reward_train_accuracy: jax.Array  # on its training pairs (every labelled pair), after training
    reward_seconds: jax.Array  # wall time of reward training and relabelling (incl. compilation)
    critic_pretrain_seconds: jax.Array  # wall time of the critic-only updates (incl. compilation)
    reward_graphdef: Any = flax.struct.field(pytree_node=False)
    critic_graphdef: Any = flax.struct.field(pytree_node=False)
    value_graphdef: Any = flax.struct.field(pytree_node=False)
    actor_graphdef: Any = flax.struct.field(pytree_node=False)
    config: RLVLMFOptions = flax.struct.field(pytree_node=False)
    policy_config: LearnerConfig = flax.struct.field(pytree_node=False)

    @property
    def reward_trained(self) -> bool:
        return int(self.reward_step) >= self.config.reward_steps

    @property
    def critics_pretrained(self) -> bool:
        return int(self.critic_pretrain_step) >= self.config.critic_pretrain_steps


# ----------------------------------------------------------------------------- optimizers


def _reward_optimizer(config: RLVLMFOptions) -> optax.GradientTransformation:
    return optax.adam(config.reward_lr)


def _critic_optimizer(config: RLVLMFOptions) -> optax.GradientTransformation:
    return optax.adam(config.lr)


def _actor_schedule(config: RLVLMFOptions, policy_config: LearnerConfig) -> optax.Schedule:
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


def _actor_optimizer(config: RLVLMFOptions, policy_config: LearnerConfig) -> optax.GradientTransformation:
    return optax.adam(_actor_schedule(config, policy_config))


def _apply(tx: optax.GradientTransformation, grads, opt_state, params):
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state


# ----------------------------------------------------------------------------- pairs


def _eligible_for_accuracy(labels: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Pairs an accuracy can be measured on: weight > 0 and not a tie (as in `_pair_accuracy`)."""
    return (weights > 0) & (labels != 0.5)


# ----------------------------------------------------------------------------- reward model


def _reward_train_impl(state: RLVLMFState, data: RLVLMFData, key, *, num_steps, mesh):
    config = state.config
    tx = _reward_optimizer(config)
    pairs = data.reward_pairs
    reward_key = jax.random.split(key)[0]

    def objective(params, batch: PreferenceData):
        rewards = nnx.merge(state.reward_graphdef, params)(batch.observations, batch.actions)  # [B, 2, T]
        per_pair = losses.bradley_terry_loss(rewards[:, 0], rewards[:, 1], batch.labels, mask=batch.mask)
        loss = losses.weighted_mean(per_pair, batch.weights)
        accuracy = losses.preference_accuracy(
            rewards[:, 0], rewards[:, 1], batch.labels, mask=batch.mask, weights=batch.weights
        )
        return loss, {"loss": loss, "accuracy": accuracy}

    def one_step(state, _):
        step_key = jax.random.fold_in(reward_key, state.reward_step)
        idx = jax.random.randint(step_key, (config.reward_batch_pairs,), 0, pairs.labels.shape[0])
        batch = constrain_batch(jax.tree.map(lambda x: x[idx], pairs), mesh)
        grads, metrics = jax.grad(objective, has_aux=True)(state.reward_params, batch)
        params, opt_state = _apply(tx, grads, state.reward_opt_state, state.reward_params)
        state = state.replace(reward_params=params, reward_opt_state=opt_state, reward_step=state.reward_step + 1)
        return state, metrics

    state, metrics = jax.lax.scan(one_step, state, None, length=num_steps)
    return state, jax.tree.map(lambda m: jnp.mean(m, axis=0), metrics)


_reward_train_jit = jax.jit(_reward_train_impl, static_argnames=("num_steps", "mesh"))


def _pair_accuracy(model: ScalarMLP, pairs: PreferenceData) -> jax.Array:
    rewards = jax.lax.map(
        lambda pair: model(pair[0], pair[1]), (pairs.observations, pairs.actions),
        batch_size=max(1, _RELABEL_BATCH // (2 * pairs.observations.shape[2])),
    )
    accuracy = losses.preference_accuracy(
        rewards[:, 0], rewards[:, 1], pairs.labels, mask=pairs.mask, weights=pairs.weights
    )
    # preference_accuracy is 0 without an eligible pair; report "not measured" instead.
    scored = jnp.sum((pairs.weights > 0) & (pairs.labels != 0.5))
    return jnp.where(scored > 0, accuracy, jnp.nan)


def _relabel_impl(state: RLVLMFState, data: RLVLMFData):
    """Rewards of every transition (standardised) and the reward model's training accuracy."""
    model = nnx.merge(state.reward_graphdef, state.reward_params)
    raw = jax.lax.map(lambda row: model(row[0], row[1]), (data.observations, data.actions), batch_size=_RELABEL_BATCH)
    mean, std = jnp.mean(raw), jnp.std(raw)
    rewards = (raw - mean) / jnp.maximum(std, 1e-6)
    return state.replace(
        rewards=rewards,
        reward_raw_mean=mean,
        reward_raw_std=std,
        reward_train_accuracy=_pair_accuracy(model, data.reward_pairs),
    )


_relabel_jit = jax.jit(_relabel_impl)


# ----------------------------------------------------------------------------- IQL


def _iql_update(state: RLVLMFState, batch: dict[str, jax.Array], dropout_key: jax.Array, *, train_actor: bool = True):
    config = state.config
    obs, actions = batch["observations"], batch["actions"]
    q_target = jnp.min(_critic_values(state.critic_graphdef, state.target_critic_params, obs, actions), axis=0)

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
        q = _critic_values(state.critic_graphdef, params, obs, actions)
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
        "learning_rate": jnp.asarray(_actor_schedule(config, state.policy_config)(state.step - state.iql_start),
                                     jnp.float32),
    }
    new_state = state.replace(
        step=state.step + 1 if train_actor else state.step,
        critic_pretrain_step=state.critic_pretrain_step if train_actor else state.critic_pretrain_step + 1,
        value_params=value_params, value_opt_state=value_opt_state,
        actor_params=actor_params, actor_opt_state=actor_opt_state,
        critic_params=critic_params, critic_opt_state=critic_opt_state,
        target_critic_params=target_critic_params,
    )
    return new_state, metrics


def _iql_train_impl(state: RLVLMFState, data: RLVLMFData, key, *, num_steps, metrics_every, mesh,
                    train_actor=True):
    # Critic-only pretraining draws from its own stream (its own counter), so that the joint
    # updates see the same batches with or without it.
    iql_key = jax.random.split(key, 3)[1 if train_actor else 2]
    num_rows = data.observations.shape[0]

    def one_step(state, _):
        counter = state.step if train_actor else state.critic_pretrain_step
        sample_key, dropout_key = jax.random.split(jax.random.fold_in(iql_key, counter))
        idx = jax.random.randint(sample_key, (state.config.batch_size,), 0, num_rows)
        batch = {
            "observations": data.observations[idx],
            "actions": data.actions[idx],
            "next_observations": data.next_observations[idx],
            "has_next": data.has_next[idx],
            "terminals": data.terminals[idx],
            "rewards": state.rewards[idx],
        }
        return _iql_update(state, constrain_batch(batch, mesh), dropout_key, train_actor=train_actor)

    def one_window(state, _):
        state, metrics = jax.lax.scan(one_step, state, None, length=metrics_every)
        return state, jax.tree.map(lambda m: jnp.mean(m, axis=0), metrics)

    return jax.lax.scan(one_window, state, None, length=num_steps // metrics_every)


_iql_train_jit = jax.jit(_iql_train_impl, static_argnames=("num_steps", "metrics_every", "mesh", "train_actor"))


def _awr_weight_stats_impl(state: RLVLMFState, observations: jax.Array, actions: jax.Array):
    """(share of rows whose weight exp(beta * A) is at the `max_weight` clip, mean weight) over
    the given transitions, with A = min(target Q1, Q2)(s, a) - V(s) as the actor's update uses."""
    config = state.config
    value = nnx.merge(state.value_graphdef, state.value_params)

    def weights(rows):
        obs, act = rows
        q = jnp.min(_critic_values(state.critic_graphdef, state.target_critic_params, obs, act), axis=0)
        advantages = q - value(obs)
        # At the clip: the exponent is clipped, the same test `losses.awr_weights` makes.
        at_clip = config.inverse_temperature * advantages >= jnp.log(config.max_weight)
        return at_clip, losses.awr_weights(advantages, inverse_temperature=config.inverse_temperature,
                                           max_weight=config.max_weight)

    at_clip, w = jax.lax.map(weights, (observations, actions), batch_size=_RELABEL_BATCH)
    return jnp.mean(at_clip.astype(jnp.float32)), jnp.mean(w)


_awr_weight_stats_jit = jax.jit(_awr_weight_stats_impl)


# ----------------------------------------------------------------------------- the method


def _train_reward_model(state: RLVLMFState, data: RLVLMFData, key: jax.Array, mesh) -> RLVLMFState:
    """Runs the remaining reward-model updates in chunks (a progress bar), then relabels."""
    start = time.perf_counter()
    remaining = state.config.reward_steps - int(state.reward_step)
    metrics = None
    with tqdm(total=remaining, desc="rlvlmf reward model", unit="step", leave=False) as bar:
        while remaining > 0:
            chunk = min(_CHUNK_STEPS, remaining)
            state, metrics = _reward_train_jit(state, data, key, num_steps=chunk, mesh=mesh)
            remaining -= chunk
            bar.update(chunk)
            bar.set_postfix(loss=f"{float(metrics['loss']):.3f}", acc=f"{float(metrics['accuracy']):.2f}")
    state = _relabel_jit(state, data)
    jax.block_until_ready(state.rewards)
    return state.replace(
        reward_loss=metrics["loss"] if metrics is not None else state.reward_loss,
        reward_seconds=jnp.asarray(time.perf_counter() - start, jnp.float32),
    )


def _pretrain_critics(state: RLVLMFState, data: RLVLMFData, key: jax.Array, mesh) -> RLVLMFState:
    """Runs the remaining critic-only updates in chunks (a progress bar)."""
    start = time.perf_counter()
    remaining = state.config.critic_pretrain_steps - int(state.critic_pretrain_step)
    with tqdm(total=remaining, desc="rlvlmf critics", unit="step", leave=False) as bar:
        while remaining > 0:
            chunk = min(_CHUNK_STEPS, remaining)
            state, metrics = _iql_train_jit(state, data, key, num_steps=chunk, metrics_every=chunk, mesh=mesh,
                                            train_actor=False)
            remaining -= chunk
            bar.update(chunk)
            bar.set_postfix(q=f"{float(metrics['q_mean'][-1]):.2f}", critic=f"{float(metrics['critic_loss'][-1]):.3f}")
    return state.replace(critic_pretrain_seconds=jnp.asarray(time.perf_counter() - start, jnp.float32))


@dataclasses.dataclass(frozen=True)
class RLVLMF:
    name: str = "rlvlmf"
    description: str = "RL-VLM-F: Bradley-Terry reward model on the labels, then IQL (the paper's baseline)"
    starts_from_bc_phase: bool = True
    oracle: bool = False
    default_options: RLVLMFOptions = QUICK
    options_help: str = ("The rlvlmf baseline (reward model + IQL); its actor follows --hidden-dims and "
                         "--dropout-rate, and its schedule spans the run's --bc-steps + --cpl-steps IQL updates.")

    def options_for_run(self, options: RLVLMFOptions, *, total_steps: int) -> RLVLMFOptions:
        """The learning-rate schedule spans the run's whole budget (--bc-steps + --cpl-steps)."""
        return dataclasses.replace(options, schedule_steps=max(1, total_steps))

    def create(self, key: jax.Array, policy_config: LearnerConfig, data: TrainingData, *,
               init: Any = None, options: RLVLMFOptions | None = None) -> RLVLMFState:
        """Fresh reward model, critics and value; the actor is `init`'s policy (a `LearnerState` of
        the shared BC phase) or, with `init=None`, a fresh one (the reference's IQL from scratch).

        With `init`, the actor's warm-up and cosine schedule span the updates left after init's
        (`options.schedule_steps` counts the whole run's, as the experiment sets it).
        """
        config = QUICK if options is None else options
        if not isinstance(config, RLVLMFOptions):
            raise TypeError(f"rlvlmf options must be RLVLMFOptions, got {type(config).__name__}")
        start = 0 if init is None else int(init.step)
        if start:
            config = dataclasses.replace(config, schedule_steps=max(1, config.schedule_steps - start))
        obs_dim, act_dim = data.obs_dim, data.act_dim
        reward_key, critic_key, value_key, actor_key = jax.random.split(key, 4)
        reward_model = ScalarMLP(obs_dim + act_dim, hidden_dims=config.reward_hidden_dims, bounded=True,
                                 rngs=nnx.Rngs(reward_key))
        value = ScalarMLP(obs_dim, hidden_dims=config.value_hidden_dims, rngs=nnx.Rngs(value_key))
        actor = PolicyMLP(
            obs_dim, act_dim, hidden_dims=policy_config.hidden_dims, dropout_rate=policy_config.dropout_rate,
            dropout_mask=policy_config.dropout_mask, head=policy_config.head,
            state_dependent_std=policy_config.state_dependent_std, rngs=nnx.Rngs(actor_key),
        )
        reward_graphdef, reward_params = nnx.split(reward_model, nnx.Param)
        critic_graphdef, critic_params = _twin_critic(obs_dim, act_dim, config.critic_hidden_dims, critic_key)
        value_graphdef, value_params = nnx.split(value, nnx.Param)
        actor_graphdef, actor_params = nnx.split(actor, nnx.Param)
        if init is not None:
            shapes = lambda tree: jax.tree.map(jnp.shape, tree)
            if shapes(init.params) != shapes(actor_params):
                raise ValueError("rlvlmf: init's policy network differs from the one the policy config describes")
            actor_params = jax.tree.map(jnp.copy, init.params)
        zero = jnp.zeros((), jnp.int32)
        return RLVLMFState(
            step=jnp.asarray(start, jnp.int32),
            iql_start=jnp.asarray(start, jnp.int32),
            reward_step=zero,
            critic_pretrain_step=zero,
            reward_params=reward_params,
            reward_opt_state=_reward_optimizer(config).init(reward_params),
            critic_params=critic_params,
            target_critic_params=jax.tree.map(jnp.copy, critic_params),
            critic_opt_state=_critic_optimizer(config).init(critic_params),
            value_params=value_params,
            value_opt_state=_critic_optimizer(config).init(value_params),
            actor_params=actor_params,
            actor_opt_state=_actor_optimizer(config, policy_config).init(actor_params),
            rewards=jnp.zeros((data.observations.shape[0],), jnp.float32),
            reward_raw_mean=jnp.zeros((), jnp.float32),
            reward_raw_std=jnp.ones((), jnp.float32),
            reward_loss=jnp.full((), jnp.nan, jnp.float32),
            reward_train_accuracy=jnp.full((), jnp.nan, jnp.float32),
            reward_seconds=jnp.zeros((), jnp.float32),
            critic_pretrain_seconds=jnp.zeros((), jnp.float32),
            reward_graphdef=reward_graphdef,
            critic_graphdef=critic_graphdef,
            value_graphdef=value_graphdef,
            actor_graphdef=actor_graphdef,
            config=config,
            policy_config=policy_config,
        )

    def device_data(self, state: RLVLMFState, data: TrainingData) -> RLVLMFData:
        if not np.any(data.weights > 0):
            raise ValueError(
                "rlvlmf: no labelled pair with weight > 0 to train the reward model on "
                f"({data.num_pairs} pairs); label more pairs or use --unsure tie"
            )
        if data.observations.shape[0] != state.rewards.shape[0]:
            raise ValueError(f"rlvlmf: the state was created for {state.rewards.shape[0]} transitions, "
                             f"the data has {data.observations.shape[0]}")

        return RLVLMFData(
            reward_pairs=data.preference_data(),  # every pair, as plare's; weight-0 pairs weigh 0
            observations=jnp.asarray(data.observations, jnp.float32),
            actions=jnp.asarray(data.actions, jnp.float32),
            next_observations=jnp.asarray(data.next_observations, jnp.float32),
            has_next=jnp.asarray(data.has_next, jnp.float32),
            terminals=jnp.asarray(data.terminals, jnp.float32),
        )

    def train(self, state: RLVLMFState, device_data: RLVLMFData, key: jax.Array, num_steps: int, *,
              metrics_every: int, mesh: jax.sharding.Mesh | None = None):
        """`num_steps` IQL updates; the first call first trains the reward model, relabels and
        runs the critic-only updates."""
        if metrics_every <= 0 or num_steps <= 0 or num_steps % metrics_every:
            raise ValueError(f"num_steps ({num_steps}) must be a positive multiple of metrics_every ({metrics_every})")
        check_divisible(state.config.batch_size, mesh, "rlvlmf batch_size")
        check_divisible(state.config.reward_batch_pairs, mesh, "rlvlmf reward_batch_pairs")
        state, device_data, key = place((state, device_data, key), mesh)
        if not state.reward_trained:
            state = place(_train_reward_model(state, device_data, key, mesh), mesh)
        if not state.critics_pretrained:
            state = place(_pretrain_critics(state, device_data, key, mesh), mesh)
        return _iql_train_jit(state, device_data, key, num_steps=int(num_steps), metrics_every=int(metrics_every),
                              mesh=mesh)

    def policy_fn(self, state: RLVLMFState) -> PolicyFn:
        return learner.policy_fn_from_params(state.actor_graphdef, state.actor_params)

    def policy_params(self, state: RLVLMFState):
        return state.actor_params

    def report(self, state: RLVLMFState, data: TrainingData) -> dict:
        """The reward model's fit to its training pairs (every labelled pair: no held-out split),
        step counts and wall times, and how many of the data's transitions have their advantage
        weight at the clip (one pass of the target critics and V over the data)."""
        eligible = _eligible_for_accuracy(data.labels, data.weights)
        as_float = lambda x: None if math.isnan(float(x)) else float(x)
        clip_share, weight_mean = _awr_weight_stats_jit(
            state, jnp.asarray(data.observations, jnp.float32), jnp.asarray(data.actions, jnp.float32))
        return {
            "reward_model_steps": int(state.reward_step),
            "reward_model_seconds": float(state.reward_seconds),
            "reward_model_loss": as_float(state.reward_loss),
            "reward_train_accuracy": as_float(state.reward_train_accuracy),
            "reward_train_pairs": data.num_trained_pairs,
            "reward_train_pairs_scored": int(np.count_nonzero(eligible)),
            "labelled_pairs": data.num_pairs,
            "critic_pretrain_steps": int(state.critic_pretrain_step),
            "critic_pretrain_seconds": float(state.critic_pretrain_seconds),
            "iql_steps": int(state.step - state.iql_start),
            "awr_weight_clip_share": float(clip_share),
            "awr_weight_mean": float(weight_mean),
        }


METHOD = RLVLMF()
