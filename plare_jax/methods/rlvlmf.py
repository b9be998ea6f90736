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
count; `iql.start` marks the switch); the reward model, critics and value network start from
scratch, and the reward model's steps come on top, run by `prepare` (or the first `train` call)
and counted in the report (their wall time is in the run unit's `timings`). Why from the BC policy, where the reference trains IQL from scratch for
500k steps: at the quick preset's budget, IQL from scratch (6k updates) scored 0.00 on sweep-into
(development data seed 0, every evaluation), while the same actor trained with the weighting
switched off (inverse temperature 0) reached 0.20 in 3k updates: the from-scratch actor is
under-trained, not the baseline being weak. Starting every preference method from the same BC
policy with the same number of second-phase updates makes the comparison about what each does
with the labels. `create(..., init=None)` still gives the reference's from-scratch IQL.

Layout: the reward model is `plare_jax.reward_model`, IQL is `plare_jax.iql` (each one pytree
state with a pure update, K scanned updates per call); this module composes them.

Resumability: the reward model is trained, the data relabelled and the critic-only updates run
entirely inside `prepare` (the pipeline calls it, with the stop flag, before the first update;
the first `train` call does it otherwise), so any state that `prepare` or `train` returns (and any checkpoint of
it) holds the finished reward model, relabelled rewards (`rewards`) and pretrained critics, and
continuing it equals an uninterrupted run.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from plare_jax import iql, learner, reward_model
from plare_jax.interrupts import raise_if_stopped
from plare_jax.learner import LearnerConfig, PreferenceData
from plare_jax.methods.base import PolicyFn, TrainingData
from plare_jax.sharding import check_divisible, place

__all__ = ["RLVLMFOptions", "QUICK", "PAPER", "RLVLMFData", "RLVLMFState", "RLVLMF", "METHOD"]

# Reward-model and critic-only updates per host call (one progress-bar tick each).
_CHUNK_STEPS = 1000


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
    step. The experiment sets it to the run's IQL update budget (--bc-steps + --method-steps),
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

    def reward_model_config(self) -> reward_model.RewardModelConfig:
        return reward_model.RewardModelConfig(hidden_dims=self.reward_hidden_dims, lr=self.reward_lr,
                                              batch_pairs=self.reward_batch_pairs)

    def iql_config(self) -> iql.IQLConfig:
        """IQL's hyperparameters: these options' fields of the same names."""
        return iql.IQLConfig(**{f.name: getattr(self, f.name) for f in dataclasses.fields(iql.IQLConfig)})


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

    def transitions(self, rewards: jax.Array) -> iql.IQLData:
        return iql.IQLData(observations=self.observations, actions=self.actions,
                           next_observations=self.next_observations, has_next=self.has_next,
                           terminals=self.terminals, rewards=rewards)


class RLVLMFState(flax.struct.PyTreeNode):
    """The reward model, IQL and the relabelled rewards (what a checkpoint holds)."""

    reward: reward_model.RewardModelState
    iql: iql.IQLState
    rewards: jax.Array  # [N] standardised r(s, a) of every transition (zeros before relabelling)
    reward_raw_mean: jax.Array  # mean and std of the raw r(s, a) over the data
    reward_raw_std: jax.Array
    reward_loss: jax.Array  # mean Bradley-Terry loss of the last reward-model chunk
    reward_train_accuracy: jax.Array  # on its training pairs (every labelled pair), after training
    config: RLVLMFOptions = flax.struct.field(pytree_node=False)

    @property
    def step(self) -> jax.Array:
        """Policy updates: the BC phase's (if continued) plus IQL's actor updates."""
        return self.iql.step

    @property
    def stacked(self) -> bool:
        """A --batch-seeds group's state: every array leaf with a leading seed axis."""
        return jnp.ndim(self.reward.step) == 1

    @property
    def reward_trained(self) -> bool:
        return _steps_done(self.reward.step) >= self.config.reward_steps

    @property
    def critics_pretrained(self) -> bool:
        return _steps_done(self.iql.pretrain_step) >= self.config.critic_pretrain_steps


def _steps_done(steps: jax.Array) -> int:
    """Updates done so far; of a stacked state, the fewest of its seeds (a group trains in step)."""
    return int(np.min(np.asarray(steps)))


def _per_seed(fn, stacked: bool, in_axes=0):
    """`fn` itself, or vmapped over the seed axis of a stacked state (`in_axes`: which arguments
    carry it)."""
    return jax.vmap(fn, in_axes=in_axes) if stacked else fn


def _eligible_for_accuracy(labels: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Pairs an accuracy can be measured on: weight > 0 and not a tie (as in `reward_model.pair_accuracy`)."""
    return (weights > 0) & (labels != 0.5)


@jax.jit
def _relabel(state: RLVLMFState, data: RLVLMFData) -> RLVLMFState:
    """Rewards of every transition (standardised) and the reward model's training accuracy."""
    rewards, mean, std = reward_model.relabel(state.reward, data.observations, data.actions)
    return state.replace(rewards=rewards, reward_raw_mean=mean, reward_raw_std=std,
                         reward_train_accuracy=reward_model.pair_accuracy(state.reward, data.reward_pairs))


# The train call's key gives the reward model, the critic-only updates and the joint updates a
# stream each, so that the joint updates see the same batches with or without the pretraining.
def _reward_key(key: jax.Array) -> jax.Array:
    return jax.random.split(key)[0]


def _iql_key(key: jax.Array, *, train_actor: bool) -> jax.Array:
    return jax.random.split(key, 3)[1 if train_actor else 2]


def _train_reward_model(state: RLVLMFState, data: RLVLMFData, key: jax.Array, mesh,
                        should_stop=None) -> RLVLMFState:
    """Runs the remaining reward-model updates in chunks (a progress bar; `should_stop` checked
    between chunks), then relabels."""
    stacked = state.stacked
    remaining = state.config.reward_steps - _steps_done(state.reward.step)
    reward_key = _per_seed(_reward_key, stacked)(key)
    loss = state.reward_loss

    def train_chunk(reward, key, chunk):
        return reward_model.train(reward, data.reward_pairs, key, num_steps=chunk, metrics_every=chunk, mesh=mesh)

    with tqdm(total=remaining, desc="rlvlmf reward model", unit="step", leave=False) as bar:
        while remaining > 0:
            chunk = min(_CHUNK_STEPS, remaining)
            reward, metrics = _per_seed(functools.partial(train_chunk, chunk=chunk), stacked)(state.reward, reward_key)
            state, loss = state.replace(reward=reward), metrics["loss"][..., 0]
            remaining -= chunk
            bar.update(chunk)
            bar.set_postfix(loss=f"{float(jnp.mean(loss)):.3f}", acc=f"{float(jnp.mean(metrics['accuracy'][..., 0])):.2f}")
            raise_if_stopped(should_stop)
    return _per_seed(_relabel, stacked, in_axes=(0, None))(state, data).replace(reward_loss=loss)


def _pretrain_critics(state: RLVLMFState, data: RLVLMFData, key: jax.Array, mesh,
                      should_stop=None) -> RLVLMFState:
    """Runs the remaining critic-only updates in chunks (a progress bar; `should_stop` checked
    between chunks)."""
    stacked = state.stacked
    remaining = state.config.critic_pretrain_steps - _steps_done(state.iql.pretrain_step)
    iql_key = _per_seed(functools.partial(_iql_key, train_actor=False), stacked)(key)

    def train_chunk(critics, rewards, key, chunk):
        return iql.train(critics, data.transitions(rewards), key, num_steps=chunk, metrics_every=chunk, mesh=mesh,
                         train_actor=False)

    with tqdm(total=remaining, desc="rlvlmf critics", unit="step", leave=False) as bar:
        while remaining > 0:
            chunk = min(_CHUNK_STEPS, remaining)
            critics, metrics = _per_seed(functools.partial(train_chunk, chunk=chunk), stacked)(
                state.iql, state.rewards, iql_key)
            state = state.replace(iql=critics)
            remaining -= chunk
            bar.update(chunk)
            bar.set_postfix(q=f"{float(jnp.mean(metrics['q_mean'][..., -1])):.2f}",
                            critic=f"{float(jnp.mean(metrics['critic_loss'][..., -1])):.3f}")
            raise_if_stopped(should_stop)
    return state


@dataclasses.dataclass(frozen=True)
class RLVLMF:
    name: str = "rlvlmf"
    description: str = "RL-VLM-F: Bradley-Terry reward model on the labels, then IQL (the paper's baseline)"
    starts_from_bc_phase: bool = True
    oracle: bool = False
    default_options: RLVLMFOptions = QUICK
    options_help: str = ("The rlvlmf baseline (reward model + IQL); its actor follows --hidden-dims and "
                         "--dropout-rate, and its schedule spans the run's --bc-steps + --method-steps IQL updates.")
    batch_limitation: str = ""  # prepare takes a stacked group's state; train traces under vmap

    def options_for_run(self, options: RLVLMFOptions, *, total_steps: int) -> RLVLMFOptions:
        """The learning-rate schedule spans the run's whole budget (--bc-steps + --method-steps)."""
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
        reward_key, critic_key, value_key, actor_key = jax.random.split(key, 4)
        try:
            iql_state = iql.create(actor_key, config.iql_config(), policy_config, data.obs_dim, data.act_dim,
                                   critic_key=critic_key, value_key=value_key,
                                   actor_params=None if init is None else init.params, start=start)
        except ValueError as error:
            raise ValueError(f"rlvlmf: {error}") from None
        return RLVLMFState(
            reward=reward_model.create(reward_key, config.reward_model_config(), data.obs_dim, data.act_dim),
            iql=iql_state,
            rewards=jnp.zeros((data.observations.shape[0],), jnp.float32),
            reward_raw_mean=jnp.zeros((), jnp.float32),
            reward_raw_std=jnp.ones((), jnp.float32),
            reward_loss=jnp.full((), jnp.nan, jnp.float32),
            reward_train_accuracy=jnp.full((), jnp.nan, jnp.float32),
            config=config,
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

    def prepare(self, state: RLVLMFState, device_data: RLVLMFData, key: jax.Array, *,
                mesh: jax.sharding.Mesh | None = None, should_stop=None) -> RLVLMFState:
        """Trains the reward model, relabels and runs the critic-only updates, unless done
        (`key`: the first IQL call's); `should_stop` is checked between chunks of 1000 updates.
        A stacked state (--batch-seeds) with one key per seed trains every seed's reward model and
        critics in the same chunks, vmapped."""
        check_divisible(state.config.batch_size, mesh, "rlvlmf batch_size")
        check_divisible(state.config.reward_batch_pairs, mesh, "rlvlmf reward_batch_pairs")
        if state.reward_trained and state.critics_pretrained:
            return state
        state, device_data, key = place((state, device_data, key), mesh)
        if not state.reward_trained:
            state = place(_train_reward_model(state, device_data, key, mesh, should_stop), mesh)
        if not state.critics_pretrained:
            state = place(_pretrain_critics(state, device_data, key, mesh, should_stop), mesh)
        return state

    def train(self, state: RLVLMFState, device_data: RLVLMFData, key: jax.Array, num_steps: int, *,
              metrics_every: int, mesh: jax.sharding.Mesh | None = None):
        """`num_steps` IQL updates; the first call first does `prepare`'s work if it was not done
        (except under a trace: --batch-seeds vmaps this method, after running `prepare` on the group)."""
        if metrics_every <= 0 or num_steps <= 0 or num_steps % metrics_every:
            raise ValueError(f"num_steps ({num_steps}) must be a positive multiple of metrics_every ({metrics_every})")
        if not isinstance(state.iql.step, jax.core.Tracer):
            state = self.prepare(state, device_data, key, mesh=mesh)
        state, device_data, key = place((state, device_data, key), mesh)
        trained, metrics = iql.train(state.iql, device_data.transitions(state.rewards), _iql_key(key, train_actor=True),
                                     num_steps=int(num_steps), metrics_every=int(metrics_every), mesh=mesh)
        return state.replace(iql=trained), metrics

    def policy_fn(self, state: RLVLMFState) -> PolicyFn:
        return learner.policy_fn_from_params(state.iql.actor_graphdef, state.iql.actor_params)

    def policy_params(self, state: RLVLMFState):
        return state.iql.actor_params

    def report(self, state: RLVLMFState, data: TrainingData) -> dict:
        """The reward model's fit to its training pairs (every labelled pair: no held-out split),
        step counts, and how many of the data's transitions have their advantage weight at the
        clip (one pass of the target critics and V over the data). Wall times are the
        experiment's (`timings` of each unit's result)."""
        eligible = _eligible_for_accuracy(data.labels, data.weights)
        as_float = lambda x: None if math.isnan(float(x)) else float(x)
        clip_share, weight_mean = iql.awr_weight_stats(
            state.iql, jnp.asarray(data.observations, jnp.float32), jnp.asarray(data.actions, jnp.float32))
        return {
            "reward_model_steps": int(state.reward.step),
            "reward_model_loss": as_float(state.reward_loss),
            "reward_train_accuracy": as_float(state.reward_train_accuracy),
            "reward_train_pairs": data.num_trained_pairs,
            "reward_train_pairs_scored": int(np.count_nonzero(eligible)),
            "labelled_pairs": data.num_pairs,
            "critic_pretrain_steps": int(state.iql.pretrain_step),
            "iql_steps": int(state.iql.step - state.iql.start),
            "awr_weight_clip_share": float(clip_share),
            "awr_weight_mean": float(weight_mean),
        }


METHOD = RLVLMF()
