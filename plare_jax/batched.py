"""Seeds as a batch axis: S independent CPL learners trained by one jitted program.

A "stacked" state is a `LearnerState` whose every array leaf has a leading seed axis
`[S, ...]` (parameters, both Adam moments, the optimizer counts, `step` and `phase_step`),
while its static fields (graphdef, config, phase) are shared by all seeds. `train_batched`
vmaps the learner's own scanned training loop (`learner._train_impl`, no mesh) over that
axis and over one PRNG key per seed; the data is shared (`in_axes=None`), so it sits on the
device once, whatever S is. Each seed then follows exactly the computation of its own
`learner.train` run: step k of seed i draws its minibatch and dropout masks from
`fold_in(keys[i], k)`, as the one-at-a-time run with key `keys[i]` does (threefry keys
give the same bits under vmap as without it; tests/test_batched.py checks the
parameters against per-seed runs). What can differ is float rounding: XLA may pick other
matmul kernels for the batched shapes.

Not supported: `dropout_prng="rbg"`/`"unsafe_rbg"` with dropout on. XLA's RngBitGenerator
under vmap draws every seed's bits from the first seed's key (JAX's batching rule of
`rng_bit_generator`), so the seeds would not be the runs they claim to be; `train_batched`
refuses them. The default threefry2x32 is fine.

Typical use:

    states = batched.create_batched(jax.random.split(init_key, 8), config, obs_dim, act_dim)
    keys = jax.random.split(train_key, 8)
    states, m = batched.train_batched(states, data, keys, 1000, phase="bc", metrics_every=100)
    states = batched.start_phase_batched(states, "cpl")
    states, m = batched.train_batched(states, data, keys, 1000, phase="cpl", metrics_every=100)
    actions = batched.policy_fn_batched(states)(obs)      # [S, B, O] -> [S, B, A]
    per_seed = batched.unstack_states(states)              # list of S ordinary LearnerStates
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from plare_jax import learner
from plare_jax.learner import PHASES, LearnerConfig, LearnerState, PreferenceData, TransitionData
from plare_jax.sharding import place

__all__ = [
    "num_seeds",
    "seed_keys",
    "stack_states",
    "unstack_states",
    "create_batched",
    "start_phase_batched",
    "train_batched",
    "policy_fn_batched",
]


def num_seeds(stacked: LearnerState) -> int:
    """S, the length of the seed axis of a stacked state."""
    shape = jnp.shape(stacked.step)
    if len(shape) != 1:
        raise ValueError(f"not a stacked state: its step has shape {shape}, a stacked one has [S]")
    return int(shape[0])


def seed_keys(keys: jax.Array | Sequence[int] | Sequence[jax.Array]) -> jax.Array:
    """One typed PRNG key per seed, `[S]`: from a key array `[S]`, a list of keys, or int seeds.

    Int seeds become `jax.random.key(seed)` each, so `seed_keys([3, 5])[1]` is `jax.random.key(5)`,
    the key a one-at-a-time run with seed 5 would use.
    """
    if isinstance(keys, jax.Array):
        if not jax.dtypes.issubdtype(keys.dtype, jax.dtypes.prng_key):
            if keys.ndim == 1 and jnp.issubdtype(keys.dtype, jnp.integer):
                return jax.vmap(jax.random.key)(keys)
            raise ValueError(f"keys must be a typed PRNG key array [S] or int seeds, got {keys.dtype} {keys.shape}")
        if keys.ndim != 1:
            raise ValueError(f"keys must have shape [S] (one key per seed), got {keys.shape}")
        return keys
    items = list(keys)
    if not items:
        raise ValueError("need at least one seed")
    if all(isinstance(k, (int, np.integer)) for k in items):
        return jnp.stack([jax.random.key(int(k)) for k in items])
    return seed_keys(jnp.stack([jnp.asarray(k) for k in items]))


def stack_states(states: Sequence[LearnerState]) -> LearnerState:
    """S ordinary states -> one stacked state (every array leaf gets a leading seed axis).

    All states must share their static part (same network, config and phase) and be at
    the same shapes; their steps may differ.
    """
    states = list(states)
    if not states:
        raise ValueError("stack_states needs at least one state")
    first = states[0]
    for i, s in enumerate(states[1:], start=1):
        if s.config != first.config or s.phase != first.phase or s.graphdef != first.graphdef:
            raise ValueError(
                f"state {i} differs from state 0 in its static part (config, phase or network): "
                f"phase {s.phase!r} vs {first.phase!r}; only states of one configuration and phase can be stacked"
            )
    return jax.tree.map(lambda *xs: jnp.stack(xs), *states)


def unstack_states(stacked: LearnerState, n: int | None = None) -> list[LearnerState]:
    """A stacked state -> a list of its S ordinary states (seed i = index i of every leaf).

    Args:
      stacked: a state from `stack_states`, `create_batched` or `train_batched`.
      n: the expected number of seeds S (checked), or None to take it from the state.
    """
    size = num_seeds(stacked)
    if n is not None and n != size:
        raise ValueError(f"the stacked state holds {size} seeds, not {n}")
    return [jax.tree.map(lambda x, i=i: x[i], stacked) for i in range(size)]


def create_batched(
    keys: jax.Array | Sequence[int], config: LearnerConfig, obs_dim: int, act_dim: int
) -> LearnerState:
    """`LearnerState.create` for every seed at once (vmapped over the keys), as one stacked state.

    Seed i's parameters are those of `LearnerState.create(keys[i], config, obs_dim, act_dim)`
    (threefry initialisation draws the same numbers under vmap); graphdef, config and phase
    ("bc") are shared.

    Args:
      keys: one parameter-initialisation key per seed, `[S]`, or int seeds (see `seed_keys`).
      config: learner settings, shared by all seeds.
      obs_dim: observation size O.
      act_dim: action size A.
    """
    keys = seed_keys(keys)
    return jax.vmap(lambda k: LearnerState.create(k, config, obs_dim, act_dim))(keys)


def start_phase_batched(stacked: LearnerState, phase: str) -> LearnerState:
    """`learner.start_phase` for every seed: fresh optimizer state and schedule, parameters kept."""
    num_seeds(stacked)
    return jax.vmap(lambda s: learner.start_phase(s, phase))(stacked)


@functools.partial(jax.jit, static_argnames=("num_steps", "metrics_every", "phase"))
def _train_batched_jit(stacked, data, keys, *, num_steps, metrics_every, phase):
    one_seed = functools.partial(
        learner._train_impl, num_steps=num_steps, metrics_every=metrics_every, phase=phase, mesh=None
    )
    return jax.vmap(one_seed, in_axes=(0, None, 0))(stacked, data, keys)


def _check_data(stacked: LearnerState, data: Any, phase: str) -> None:
    if phase == "cpl" and not isinstance(data, PreferenceData):
        raise ValueError(f"phase 'cpl' trains on PreferenceData, got {type(data).__name__}")
    if not isinstance(data, (PreferenceData, TransitionData)):
        raise ValueError(f"data must be PreferenceData or TransitionData, got {type(data).__name__}")
    model = nnx.merge(stacked.graphdef, stacked.params)  # static sizes only; the leaves keep their seed axis
    obs_dim, act_dim = model.obs_dim, model.act_dim
    if data.observations.shape[-1] != obs_dim or data.actions.shape[-1] != act_dim:
        raise ValueError(
            f"data has obs/act dims {data.observations.shape[-1]}/{data.actions.shape[-1]}, "
            f"the policies were created for {obs_dim}/{act_dim}"
        )


def train_batched(
    stacked_state: LearnerState,
    data: PreferenceData | TransitionData,
    keys: jax.Array | Sequence[int],
    num_steps: int,
    *,
    phase: str,
    metrics_every: int = 100,
) -> tuple[LearnerState, dict[str, jax.Array]]:
    """`learner.train` for S seeds in ONE jitted program: vmap of the scanned loop over the seed axis.

    Args:
      stacked_state: a stacked state already in `phase` (see `start_phase_batched`).
      data: shared by all seeds; "cpl": `PreferenceData`; "bc": `TransitionData`, or
        `PreferenceData` whose valid steps are the BC rows.
      keys: one training key per seed, `[S]` (or int seeds, see `seed_keys`); seed i's step k
        uses `fold_in(keys[i], step)`, so pass the same keys to consecutive calls, and the same
        key as a one-at-a-time `learner.train` run to reproduce it.
      num_steps: updates per seed; a multiple of `metrics_every`.
      phase: "bc" or "cpl"; must equal the state's phase.
      metrics_every: window length over which the returned metrics are averaged.

    Returns:
      The new stacked state and a dict name -> `[S, num_steps // metrics_every]` array.

    Raises:
      ValueError: a bad phase or step count, data of other dims, keys of another count than the
        seeds, or an rbg/unsafe_rbg dropout PRNG (not per-seed under vmap; see the module doc).
    """
    if phase not in PHASES:
        raise ValueError(f"phase must be one of {PHASES}, got {phase!r}")
    if stacked_state.phase != phase:
        raise ValueError(
            f"the states are in phase {stacked_state.phase!r}; call start_phase_batched(states, {phase!r}) "
            f"before training {phase!r}"
        )
    if metrics_every <= 0 or num_steps <= 0 or num_steps % metrics_every:
        raise ValueError(f"num_steps ({num_steps}) must be a positive multiple of metrics_every ({metrics_every})")
    config = stacked_state.config
    if config.dropout_rate > 0 and config.dropout_prng != "threefry2x32":
        raise ValueError(
            f"dropout_prng={config.dropout_prng!r} cannot be batched over seeds: under vmap XLA's "
            "RngBitGenerator draws every seed's dropout bits from the first seed's key, so the seeds would "
            "not be independent runs; use dropout_prng='threefry2x32' (the default)"
        )
    size = num_seeds(stacked_state)
    keys = seed_keys(keys)
    if keys.shape != (size,):
        raise ValueError(f"need one key per seed: {size} seeds, keys of shape {keys.shape}")
    _check_data(stacked_state, data, phase)
    stacked_state, data, keys = place((stacked_state, data, keys), None)
    return _train_batched_jit(
        stacked_state, data, keys, num_steps=int(num_steps), metrics_every=int(metrics_every), phase=phase
    )


@functools.partial(jax.jit, static_argnums=0)
def _act_batched(graphdef, params, obs):
    return jax.vmap(lambda p, o: nnx.merge(graphdef, p)(o))(params, obs)


def policy_fn_batched(stacked_state: LearnerState) -> Callable[[np.ndarray], np.ndarray]:
    """Every seed's deterministic (no dropout) policy in one jitted call: obs `[S, B, O]` -> actions `[S, B, A]`.

    Row s of the output is what `learner.make_policy_fn(unstack_states(stacked)[s])` gives for
    `obs[s]` (numpy out; the Gaussian head's action is its mean). Each new B compiles once.
    """
    size = num_seeds(stacked_state)
    graphdef = stacked_state.graphdef
    params = place(stacked_state.params, None)
    obs_dim = nnx.merge(graphdef, params).obs_dim

    def policy(obs: np.ndarray) -> np.ndarray:
        obs = np.asarray(obs, dtype=np.float32)
        if obs.ndim != 3 or obs.shape[0] != size or obs.shape[2] != obs_dim:
            raise ValueError(f"policy expects observations [S={size}, B, {obs_dim}], got {obs.shape}")
        return np.asarray(_act_batched(graphdef, params, obs))

    return policy
