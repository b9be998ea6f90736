"""CPL learner: one pytree state, a pure update, and a scanned, device-resident loop.

Training has two explicit phases, as in the CPL/PLARE reference: behaviour cloning
("bc") then CPL ("cpl"). `start_phase` switches and resets the optimizer state and
the warm-up schedule. `train` runs `num_steps` updates in one host call: the data
stays on device, minibatches are drawn with `jax.random` inside `lax.scan`, and the
metrics are averaged over windows of `metrics_every` steps so the host syncs once
per call, not per step.

Randomness: step `k` uses `fold_in(key, k)` (k = global step), so a run split over
several `train` calls, or resumed from a checkpoint, draws exactly the same batches
and dropout masks as one uninterrupted call with the same key.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from plare_jax import losses
from plare_jax.networks import DROPOUT_MASKS, HEADS, PolicyMLP
from plare_jax.sharding import check_divisible, constrain_batch, place
from plare_jax.scanned import scan_updates

__all__ = [
    "LearnerConfig",
    "REFERENCE_CONFIG",
    "CPU_CONFIG",
    "PreferenceData",
    "TransitionData",
    "LearnerState",
    "PHASES",
    "DROPOUT_PRNG_IMPLS",
    "make_optimizer",
    "learning_rate_schedule",
    "start_phase",
    "update",
    "train",
    "make_policy_fn",
    "policy_fn_from_params",
    "make_dropout_key",
]

PHASES = ("bc", "cpl")
DROPOUT_PRNG_IMPLS = ("threefry2x32", "rbg", "unsafe_rbg")


@dataclasses.dataclass(frozen=True)
class LearnerConfig:
    """Network, optimizer and loss settings (defaults = the PLARE/CPL reference)."""

    hidden_dims: tuple[int, ...] = (512, 512)
    """Hidden layer widths of the MLP actor."""
    dropout_rate: float = 0.25
    """Dropout after every hidden layer."""
    head: str = "deterministic"
    """"deterministic" (log pi = -||mu(s) - a||^2) or "gaussian"."""
    state_dependent_std: bool = False
    """Gaussian head: log-std from the network instead of one learned vector."""
    learning_rate: float = 1e-4
    """Adam learning rate after warm-up."""
    warmup_steps: int = 10_000
    """Linear warm-up length, per phase (optimizer and schedule reset at the switch)."""
    batch_pairs: int = 96
    """CPL phase: pairs per step (each pair = 2 segments of T steps)."""
    bc_batch_size: int = 96 * 64
    """BC phase: (observation, action) rows per step."""
    alpha: float = 0.1
    """CPL score temperature."""
    bias: float = 0.5
    """CPL conservative bias lambda (< 1 keeps the policy near the data)."""
    bc_weight: float = 0.0
    """Weight of an extra BC term during the CPL phase (reference: 0; the CPL paper's CPL+BC: 1)."""
    label_smoothing: float = 0.0
    """CPL phase: conservative (cDPO) label smoothing eps for labels that may be flipped."""
    flip_rate: float = 0.0
    """CPL phase: assumed flip rate of the unbiased robust-DPO loss (0 = off)."""
    small_loss_drop: float = 0.0
    """CPL phase: share of each batch's highest-loss pairs given weight 0 (small-loss selection)."""
    small_loss_start: int = 0
    """CPL phase: updates into the phase before small-loss selection starts (a warm-up)."""
    max_grad_norm: float | None = None
    """Clip gradients to this global norm (None = no clipping)."""
    dropout_prng: str = "threefry2x32"
    """PRNG implementation for dropout masks: "threefry2x32" (default: with packed
    mask bits it was the fastest on CPU, and identical on any device count), "rbg"
    or "unsafe_rbg" (XLA RngBitGenerator; slower on CPU here, may pay off on GPU/TPU)."""

    dropout_mask: str = "packed"
    """How dropout masks are drawn: "packed" (2 random bits per unit at rate 0.25;
    2.4x faster updates on CPU for the reference config) or "bernoulli" (a float
    uniform per unit, as `jax.random.bernoulli`/nnx.Dropout do)."""

    def __post_init__(self):
        if self.head not in HEADS:
            raise ValueError(f"head must be one of {HEADS}, got {self.head!r}")
        if self.dropout_mask not in DROPOUT_MASKS:
            raise ValueError(f"dropout_mask must be one of {DROPOUT_MASKS}, got {self.dropout_mask!r}")
        if self.dropout_prng not in DROPOUT_PRNG_IMPLS:
            raise ValueError(f"dropout_prng must be one of {DROPOUT_PRNG_IMPLS}, got {self.dropout_prng!r}")
        if not 0.0 <= self.dropout_rate < 1.0:
            raise ValueError(f"dropout_rate must be in [0, 1), got {self.dropout_rate}")
        for name in ("batch_pairs", "bc_batch_size"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.warmup_steps < 0 or self.learning_rate <= 0:
            raise ValueError("warmup_steps must be >= 0 and learning_rate > 0")
        losses.check_noise_rates(label_smoothing=self.label_smoothing, flip_rate=self.flip_rate)
        if not 0.0 <= self.small_loss_drop < 1.0 or self.small_loss_start < 0:
            raise ValueError(f"small_loss_drop must be in [0, 1) and small_loss_start >= 0, got "
                             f"{self.small_loss_drop} and {self.small_loss_start}")
        if self.bc_weight < 0:
            raise ValueError(f"bc_weight must be >= 0, got {self.bc_weight}")
        object.__setattr__(self, "hidden_dims", tuple(int(h) for h in self.hidden_dims))


# The CPL/PLARE reference configuration (GPU-scale: ~1.5-2 days of CPU for 500k steps).
REFERENCE_CONFIG = LearnerConfig()
# Proposed CPU preset: half the width (a quarter of the hidden-layer flops per row),
# a third of the pairs per step, and a warm-up suited to tens of thousands of steps.
CPU_CONFIG = LearnerConfig(hidden_dims=(256, 256), batch_pairs=32, bc_batch_size=32 * 64, warmup_steps=2_000)


class PreferenceData(flax.struct.PyTreeNode):
    """Labelled segment pairs (P pairs of 2 segments of T steps), as jnp arrays."""

    observations: jax.Array  # [P, 2, T, obs_dim]
    actions: jax.Array  # [P, 2, T, act_dim]
    labels: jax.Array  # [P] probability that segment 2 is preferred
    weights: jax.Array  # [P] per-pair loss weight (0 = drop)
    mask: jax.Array  # [P, 2, T] valid steps

    @classmethod
    def create(
        cls,
        observations: Any,
        actions: Any,
        labels: Any,
        weights: Any | None = None,
        mask: Any | None = None,
    ) -> "PreferenceData":
        """Validates shapes and converts to float32 jnp arrays (weights/mask default to 1)."""
        obs = jnp.asarray(observations, jnp.float32)
        act = jnp.asarray(actions, jnp.float32)
        if obs.ndim != 4 or obs.shape[1] != 2:
            raise ValueError(f"observations must be [P, 2, T, obs_dim], got {obs.shape}")
        num_pairs, _, seg_len, _ = obs.shape
        if act.ndim != 4 or act.shape[:3] != obs.shape[:3]:
            raise ValueError(f"actions must be [P, 2, T, act_dim] = {obs.shape[:3]} + (A,), got {act.shape}")
        lab = jnp.asarray(labels, jnp.float32)
        if lab.shape != (num_pairs,):
            raise ValueError(f"labels must be [P]=({num_pairs},), got {lab.shape}")
        if bool(jnp.any((lab < 0) | (lab > 1))):
            raise ValueError("labels must be probabilities in [0, 1] (0 = first better, 1 = second, 0.5 = tie)")
        w = jnp.ones((num_pairs,), jnp.float32) if weights is None else jnp.asarray(weights, jnp.float32)
        if w.shape != (num_pairs,):
            raise ValueError(f"weights must be [P]=({num_pairs},), got {w.shape}")
        if bool(jnp.any(w < 0)):
            raise ValueError("weights must be >= 0 (0 drops a pair, e.g. an 'unsure' VLM answer)")
        m = jnp.ones((num_pairs, 2, seg_len), jnp.float32) if mask is None else jnp.asarray(mask, jnp.float32)
        if m.shape != (num_pairs, 2, seg_len):
            raise ValueError(f"mask must be [P, 2, T]={(num_pairs, 2, seg_len)}, got {m.shape}")
        return cls(observations=obs, actions=act, labels=lab, weights=w, mask=m)


class TransitionData(flax.struct.PyTreeNode):
    """(observation, action) rows for behaviour cloning, as jnp arrays."""

    observations: jax.Array  # [N, obs_dim]
    actions: jax.Array  # [N, act_dim]

    @classmethod
    def create(cls, observations: Any, actions: Any) -> "TransitionData":
        """Validates shapes and converts to float32 jnp arrays."""
        obs = jnp.asarray(observations, jnp.float32)
        act = jnp.asarray(actions, jnp.float32)
        if obs.ndim != 2 or act.ndim != 2 or obs.shape[0] != act.shape[0]:
            raise ValueError(f"need observations [N, O] and actions [N, A], got {obs.shape} and {act.shape}")
        return cls(observations=obs, actions=act)


def learning_rate_schedule(config: LearnerConfig) -> optax.Schedule:
    """Linear warm-up then constant: lr * min(1, (count + 1) / warmup_steps)."""
    if config.warmup_steps == 0:
        return optax.constant_schedule(config.learning_rate)
    lr, warmup = config.learning_rate, float(config.warmup_steps)
    return lambda count: lr * jnp.minimum(1.0, (count + 1) / warmup)


def make_optimizer(config: LearnerConfig) -> optax.GradientTransformation:
    """Adam with the warm-up schedule, optionally after global-norm clipping."""
    adam = optax.adam(learning_rate_schedule(config))
    if config.max_grad_norm is None:
        return adam
    return optax.chain(optax.clip_by_global_norm(config.max_grad_norm), adam)


class LearnerState(flax.struct.PyTreeNode):
    """Everything the learner carries between steps, as one pytree.

    The optimizer is rebuilt from `config` (a frozen, hashable dataclass) where it
    is needed, so the static part of the state compares by value and restoring a
    checkpoint into a fresh state does not trigger a recompile.
    """

    step: jax.Array  # int32, global update count over both phases
    phase_step: jax.Array  # int32, updates since the current phase started
    params: nnx.State
    opt_state: optax.OptState
    graphdef: Any = flax.struct.field(pytree_node=False)
    config: LearnerConfig = flax.struct.field(pytree_node=False)
    phase: str = flax.struct.field(pytree_node=False, default="bc")

    @classmethod
    def create(cls, key: jax.Array | int, config: LearnerConfig, obs_dim: int, act_dim: int) -> "LearnerState":
        """Initialises the policy and the optimizer; the state starts in phase "bc".

        Args:
          key: PRNG key (or int seed) for parameter initialisation.
          config: learner settings.
          obs_dim: observation size O.
          act_dim: action size A.
        """
        model = PolicyMLP(
            obs_dim,
            act_dim,
            hidden_dims=config.hidden_dims,
            dropout_rate=config.dropout_rate,
            dropout_mask=config.dropout_mask,
            head=config.head,
            state_dependent_std=config.state_dependent_std,
            rngs=nnx.Rngs(key),
        )
        graphdef, params = nnx.split(model, nnx.Param)
        zero = jnp.zeros((), jnp.int32)
        return cls(
            step=zero,
            phase_step=zero,
            params=params,
            opt_state=make_optimizer(config).init(params),
            graphdef=graphdef,
            config=config,
            phase="bc",
        )

    @property
    def model(self) -> PolicyMLP:
        """The policy as an NNX module (a copy; changing it does not change the state)."""
        return nnx.merge(self.graphdef, self.params)

    @property
    def obs_dim(self) -> int:
        return self.model.obs_dim

    @property
    def act_dim(self) -> int:
        return self.model.act_dim


def start_phase(state: LearnerState, phase: str) -> LearnerState:
    """Switches to `phase` ("bc" or "cpl") with a fresh optimizer state and schedule."""
    if phase not in PHASES:
        raise ValueError(f"phase must be one of {PHASES}, got {phase!r}")
    return state.replace(
        phase=phase,
        phase_step=jnp.zeros((), jnp.int32),
        opt_state=make_optimizer(state.config).init(state.params),
    )


# ----------------------------------------------------------------------------- loss


def make_dropout_key(key: jax.Array, config: LearnerConfig) -> jax.Array | None:
    """Dropout key of the configured PRNG implementation (None without dropout).

    Public because other methods' actors (e.g. IQL's in `methods.rlvlmf`) use the same policy
    network and dropout settings.
    """
    if config.dropout_rate == 0.0:
        return None
    if config.dropout_prng == "threefry2x32":
        return key
    # rbg/unsafe_rbg keys are 4 uint32 words; seed them from the threefry stream.
    return jax.random.wrap_key_data(jax.random.bits(key, (4,), jnp.uint32), impl=config.dropout_prng)


def _cpl_objective(params, state: LearnerState, batch: PreferenceData, dropout_key):
    config = state.config
    phase_step = state.phase_step
    model = nnx.merge(state.graphdef, params)
    num_pairs, _, seg_len, obs_dim = batch.observations.shape
    logp = model.log_prob(
        batch.observations.reshape(-1, obs_dim),
        batch.actions.reshape(-1, batch.actions.shape[-1]),
        dropout_key=dropout_key,
    ).reshape(num_pairs, 2, seg_len)
    per_pair = losses.cpl_loss(
        logp[:, 0], logp[:, 1], batch.labels, alpha=config.alpha, bias=config.bias, mask=batch.mask,
        label_smoothing=config.label_smoothing, flip_rate=config.flip_rate,
    )
    weights = batch.weights
    if config.small_loss_drop:
        drop = jnp.where(phase_step >= config.small_loss_start, config.small_loss_drop, 0.0)
        weights = losses.small_loss_weights(per_pair, weights, drop_fraction=drop)
    cpl = losses.weighted_mean(per_pair, weights)
    mean_logp = losses.weighted_mean(logp, batch.mask)
    loss = cpl if config.bc_weight == 0.0 else cpl - config.bc_weight * mean_logp
    metrics = {
        "loss": loss,
        "cpl_loss": cpl,
        "accuracy": losses.preference_accuracy(
            logp[:, 0], logp[:, 1], batch.labels, mask=batch.mask, weights=batch.weights
        ),
        "logp": jax.lax.stop_gradient(mean_logp),
    }
    return loss, metrics


def _bc_objective(params, state: LearnerState, batch: tuple[TransitionData, jax.Array], dropout_key):
    rows, row_weights = batch
    model = nnx.merge(state.graphdef, params)
    logp = model.log_prob(rows.observations, rows.actions, dropout_key=dropout_key)
    loss = losses.weighted_mean(losses.bc_loss(logp), row_weights)
    return loss, {"loss": loss, "logp": jax.lax.stop_gradient(-loss)}


def update(
    state: LearnerState, batch: Any, key: jax.Array, *, phase: str
) -> tuple[LearnerState, dict[str, jax.Array]]:
    """One pure gradient step (jit it, or let `train` scan it).

    Args:
      state: learner state.
      batch: "cpl": a `PreferenceData` minibatch `[B, 2, T, ...]`; "bc": a pair
        `(TransitionData [B, ...], row_weights [B])`.
      key: PRNG key of this step (dropout).
      phase: "bc" or "cpl".

    Returns:
      The new state and scalar metrics (loss, logp, grad_norm, learning_rate,
      and for "cpl" cpl_loss and accuracy).
    """
    objective = _cpl_objective if phase == "cpl" else _bc_objective
    grads, metrics = jax.grad(objective, has_aux=True)(
        state.params, state, batch, make_dropout_key(key, state.config)
    )
    tx = make_optimizer(state.config)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics["grad_norm"] = optax.tree.norm(grads)
    metrics["learning_rate"] = jnp.asarray(learning_rate_schedule(state.config)(state.phase_step), jnp.float32)
    new_state = state.replace(
        step=state.step + 1, phase_step=state.phase_step + 1, params=params, opt_state=opt_state
    )
    return new_state, metrics


# ----------------------------------------------------------------------------- loop


def _sample_batch(data: PreferenceData | TransitionData, key: jax.Array, phase: str, config: LearnerConfig):
    """Draws a minibatch with replacement (inside jit)."""
    if phase == "cpl":
        idx = jax.random.randint(key, (config.batch_pairs,), 0, data.labels.shape[0])
        return jax.tree.map(lambda x: x[idx], data)
    if isinstance(data, TransitionData):
        idx = jax.random.randint(key, (config.bc_batch_size,), 0, data.observations.shape[0])
        rows = jax.tree.map(lambda x: x[idx], data)
        return rows, jnp.ones((config.bc_batch_size,), jnp.float32)
    # BC on the steps of segment pairs: flat index over (pair, segment, step);
    # padded steps get row weight 0 instead of being filtered (static shapes).
    obs = data.observations.reshape(-1, data.observations.shape[-1])
    act = data.actions.reshape(-1, data.actions.shape[-1])
    idx = jax.random.randint(key, (config.bc_batch_size,), 0, obs.shape[0])
    return TransitionData(observations=obs[idx], actions=act[idx]), data.mask.reshape(-1)[idx]


def _train_impl(state, data, key, *, num_steps, metrics_every, phase, mesh):
    def one_step(state):
        step_key = jax.random.fold_in(key, state.step)
        sample_key, dropout_key = jax.random.split(step_key)
        batch = constrain_batch(_sample_batch(data, sample_key, phase, state.config), mesh)
        return update(state, batch, dropout_key, phase=phase)

    return scan_updates(one_step, state, num_steps=num_steps, metrics_every=metrics_every)


_train_jit = jax.jit(_train_impl, static_argnames=("num_steps", "metrics_every", "phase", "mesh"))


def _check_data(state: LearnerState, data: Any, phase: str) -> None:
    if phase == "cpl" and not isinstance(data, PreferenceData):
        raise ValueError(f"phase 'cpl' trains on PreferenceData, got {type(data).__name__}")
    if not isinstance(data, (PreferenceData, TransitionData)):
        raise ValueError(f"data must be PreferenceData or TransitionData, got {type(data).__name__}")
    model = state.model
    if data.observations.shape[-1] != model.obs_dim or data.actions.shape[-1] != model.act_dim:
        raise ValueError(
            f"data has obs/act dims {data.observations.shape[-1]}/{data.actions.shape[-1]}, "
            f"the policy was created for {model.obs_dim}/{model.act_dim}"
        )


def train(
    state: LearnerState,
    data: PreferenceData | TransitionData,
    key: jax.Array,
    num_steps: int,
    *,
    phase: str,
    metrics_every: int = 100,
    mesh: jax.sharding.Mesh | None = None,
) -> tuple[LearnerState, dict[str, jax.Array]]:
    """Runs `num_steps` updates of `phase` in one jitted, scanned call.

    Args:
      state: learner state already in `phase` (see `start_phase`).
      data: "cpl": `PreferenceData`; "bc": `TransitionData`, or `PreferenceData`
        whose valid steps are then used as BC rows.
      key: PRNG key of the run; step k uses `fold_in(key, state.step + ...)`, so
        pass the same key to consecutive calls.
      num_steps: number of updates; a multiple of `metrics_every`.
      phase: "bc" or "cpl"; must equal `state.phase`.
      metrics_every: window length over which the returned metrics are averaged.
      mesh: optional 1-D mesh with a "data" axis (`sharding.make_data_mesh`): the
        state and data are replicated, each minibatch is split over the devices.

    Returns:
      The new state and a dict name -> `[num_steps // metrics_every]` array.
    """
    if phase not in PHASES:
        raise ValueError(f"phase must be one of {PHASES}, got {phase!r}")
    if state.phase != phase:
        raise ValueError(
            f"the state is in phase {state.phase!r}; call start_phase(state, {phase!r}) before training {phase!r}"
        )
    if metrics_every <= 0 or num_steps <= 0 or num_steps % metrics_every:
        raise ValueError(
            f"num_steps ({num_steps}) must be a positive multiple of metrics_every ({metrics_every})"
        )
    _check_data(state, data, phase)
    batch_size = state.config.batch_pairs if phase == "cpl" else state.config.bc_batch_size
    check_divisible(batch_size, mesh, "batch_pairs" if phase == "cpl" else "bc_batch_size")
    state, data, key = place((state, data, key), mesh)
    return _train_jit(
        state, data, key, num_steps=int(num_steps), metrics_every=int(metrics_every), phase=phase, mesh=mesh
    )


@functools.partial(jax.jit, static_argnums=0)
def _act(graphdef, params, obs):
    return nnx.merge(graphdef, params)(obs)


def make_policy_fn(state: LearnerState) -> Callable[[np.ndarray], np.ndarray]:
    """A deterministic (no dropout), jitted policy: obs `[B, O]` -> actions `[B, A]` (numpy).

    For the Gaussian head the action is the mean. Each new batch size B compiles once.
    """
    return policy_fn_from_params(state.graphdef, state.params)


def policy_fn_from_params(graphdef: Any, params: nnx.State) -> Callable[[np.ndarray], np.ndarray]:
    """`make_policy_fn` for a `PolicyMLP` given as split (graphdef, params), e.g. another method's actor."""
    obs_dim = nnx.merge(graphdef, params).obs_dim
    params = place(params, None)

    def policy(obs: np.ndarray) -> np.ndarray:
        obs = np.asarray(obs, dtype=np.float32)
        if obs.ndim != 2 or obs.shape[1] != obs_dim:
            raise ValueError(f"policy expects observations [B, {obs_dim}], got {obs.shape}")
        return np.asarray(_act(graphdef, params, obs))

    return policy
