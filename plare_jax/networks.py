"""Policy network: a flax NNX MLP actor with a deterministic or Gaussian head.

The deterministic head follows the CPL/PLARE reference: the actor outputs
mu(s) = tanh(MLP(s)) and log pi(a|s) is taken as -||mu(s) - a||^2 (summed over
action dimensions). The Gaussian head uses the same tanh mean with a learned
log-std, either one vector for all states ("state-independent") or a second
linear output ("state-dependent"); it is a plain diagonal Gaussian around the
tanh mean, not a tanh-squashed distribution, so log pi needs no change of
variables (actions in the data lie in [-1, 1] anyway).

Dropout randomness comes from an explicit key argument rather than from
`nnx.Rngs` held in the module, so the learner can run the network as a pure
function inside `jax.jit`/`lax.scan` and choose the PRNG implementation of the
dropout key. Masks use as few random bits per unit as the rate allows (2 for
the reference 0.25) instead of a float uniform per unit (`jax.random.bernoulli`);
see `dropout` and benchmarks/training.py.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

__all__ = ["PolicyMLP", "ScalarMLP", "dropout", "DROPOUT_MASKS", "HEADS", "LOG_STD_MIN", "LOG_STD_MAX"]

HEADS = ("deterministic", "gaussian")
LOG_STD_MIN = -5.0
LOG_STD_MAX = 2.0


def _dropout_bits(rate: float) -> tuple[int, int, float]:
    """Random bits per unit, the drop threshold and the effective rate for `rate`.

    The fewest bits b in (1, 2, 4, 8) with rate * 2^b an integer (exact: 0.5 -> 1
    bit, 0.25 -> 2 bits, 0.375 -> 3 -> 4 bits), else 16 bits (rate rounded to a
    multiple of 1/65536, an error below 8e-6).
    """
    for bits in (1, 2, 4, 8):
        threshold = rate * (1 << bits)
        if abs(threshold - round(threshold)) < 1e-9:
            return bits, round(threshold), rate
    threshold = round(rate * 65536)
    return 16, threshold, threshold / 65536


DROPOUT_MASKS = ("packed", "bernoulli")


def dropout(x: jax.Array, rate: float, key: jax.Array, *, mask: str = "packed") -> jax.Array:
    """Inverted dropout with masks unpacked from 32-bit random words.

    Each unit gets b random bits (see `_dropout_bits`: 2 for rate 0.25, so one
    32-bit word serves 16 units); it is dropped when their value is below
    `rate * 2^b`, and kept units are scaled by 1 / (1 - rate). Why: a float
    uniform per unit (`jax.random.bernoulli`) made mask generation cost more than
    the matmuls of the reference 2x512 MLP on CPU. The words are drawn over
    `x.shape[:-1] + (words,)`, so the leading (batch) axes stay partitionable.

    Args:
      x: `[..., H]` activations.
      rate: drop probability in [0, 1).
      key: PRNG key (any implementation).
      mask: "packed" (as above) or "bernoulli" (`jax.random.bernoulli`, one float
        uniform per unit; kept for comparison in the benchmark).

    Returns:
      `[..., H]` activations with dropout applied.
    """
    if rate == 0.0:
        return x
    if mask == "bernoulli":
        keep = jax.random.bernoulli(key, 1.0 - rate, x.shape)
        return jnp.where(keep, x / (1.0 - rate), 0.0).astype(x.dtype)
    if mask != "packed":
        raise ValueError(f"mask must be one of {DROPOUT_MASKS}, got {mask!r}")
    bits, threshold, effective_rate = _dropout_bits(rate)
    per_word = 32 // bits
    width = x.shape[-1]
    words = -(-width // per_word)
    raw = jax.random.bits(key, x.shape[:-1] + (words,), jnp.uint32)
    shifts = jnp.arange(per_word, dtype=jnp.uint32) * bits
    units = (raw[..., None] >> shifts) & jnp.uint32((1 << bits) - 1)
    units = units.reshape(x.shape[:-1] + (words * per_word,))[..., :width]
    keep = units >= threshold
    return jnp.where(keep, x * (1.0 / (1.0 - effective_rate)), 0.0).astype(x.dtype)


class PolicyMLP(nnx.Module):
    """MLP actor: Linear-ReLU-Dropout blocks, then a tanh action mean.

    Args:
      obs_dim: observation size O.
      act_dim: action size A.
      hidden_dims: widths of the hidden layers (reference: (512, 512)).
      dropout_rate: dropout after every hidden ReLU (reference: 0.25-0.4).
      dropout_mask: how masks are drawn, "packed" (fast) or "bernoulli"; see `dropout`.
      head: "deterministic" (log pi = -||mu - a||^2) or "gaussian".
      state_dependent_std: Gaussian head only; log-std from a linear output
        of the last hidden layer instead of one learned vector.
      rngs: parameter initialisation randomness.
    """

    def __init__(
        self,
        obs_dim: int,
        act_dim: int,
        *,
        hidden_dims: Sequence[int] = (512, 512),
        dropout_rate: float = 0.25,
        dropout_mask: str = "packed",
        head: str = "deterministic",
        state_dependent_std: bool = False,
        rngs: nnx.Rngs,
    ):
        if head not in HEADS:
            raise ValueError(f"head must be one of {HEADS}, got {head!r}")
        if not 0.0 <= dropout_rate < 1.0:
            raise ValueError(f"dropout_rate must be in [0, 1), got {dropout_rate}")
        if obs_dim <= 0 or act_dim <= 0:
            raise ValueError(f"obs_dim and act_dim must be positive, got {obs_dim}, {act_dim}")
        self.obs_dim = obs_dim
        self.act_dim = act_dim
        self.head = head
        self.state_dependent_std = state_dependent_std
        if dropout_mask not in DROPOUT_MASKS:
            raise ValueError(f"dropout_mask must be one of {DROPOUT_MASKS}, got {dropout_mask!r}")
        self.dropout_rate = dropout_rate
        self.dropout_mask = dropout_mask
        dims = (obs_dim, *hidden_dims)
        self.hidden = nnx.List(
            [nnx.Linear(d_in, d_out, rngs=rngs) for d_in, d_out in zip(dims[:-1], dims[1:])]
        )
        self.mean_out = nnx.Linear(dims[-1], act_dim, rngs=rngs)
        if head == "gaussian":
            if state_dependent_std:
                self.log_std_out = nnx.Linear(dims[-1], act_dim, rngs=rngs)
            else:
                self.log_std = nnx.Param(jnp.zeros((act_dim,)))

    def features(self, obs: jax.Array, *, dropout_key: jax.Array | None = None) -> jax.Array:
        """Last hidden layer, `[..., H]`; dropout only when `dropout_key` is given."""
        if obs.shape[-1] != self.obs_dim:
            raise ValueError(f"observations have {obs.shape[-1]} features, the policy expects {self.obs_dim}")
        x = obs
        keys = (
            jax.random.split(dropout_key, len(self.hidden))
            if dropout_key is not None and self.dropout_rate > 0
            else [None] * len(self.hidden)
        )
        for layer, key in zip(self.hidden, keys):
            x = jax.nn.relu(layer(x))
            if key is not None:
                x = dropout(x, self.dropout_rate, key, mask=self.dropout_mask)
        return x

    def __call__(self, obs: jax.Array, *, dropout_key: jax.Array | None = None) -> jax.Array:
        """Action mean mu(s) in [-1, 1].

        Args:
          obs: `[..., O]` observations.
          dropout_key: PRNG key for dropout (training); None = deterministic.

        Returns:
          `[..., A]` actions.
        """
        return jnp.tanh(self.mean_out(self.features(obs, dropout_key=dropout_key)))

    def log_prob(
        self, obs: jax.Array, actions: jax.Array, *, dropout_key: jax.Array | None = None
    ) -> jax.Array:
        """log pi(a|s) per step.

        Deterministic head: -sum_a (mu(s) - a)^2. Gaussian head: diagonal Normal
        log-density of `actions` around mu(s) with std exp(log_std) (log-std clipped
        to [LOG_STD_MIN, LOG_STD_MAX] so the density stays finite).

        Args:
          obs: `[..., O]` observations.
          actions: `[..., A]` actions taken.
          dropout_key: PRNG key for dropout; None = deterministic.

        Returns:
          `[...]` log-probabilities.
        """
        if actions.shape[-1] != self.act_dim:
            raise ValueError(f"actions have {actions.shape[-1]} dims, the policy expects {self.act_dim}")
        feats = self.features(obs, dropout_key=dropout_key)
        mean = jnp.tanh(self.mean_out(feats))
        sq_err = jnp.square(mean - actions)
        if self.head == "deterministic":
            return -jnp.sum(sq_err, axis=-1)
        if self.state_dependent_std:
            log_std = self.log_std_out(feats)
        else:
            log_std = jnp.broadcast_to(self.log_std[...], mean.shape)
        log_std = jnp.clip(log_std, LOG_STD_MIN, LOG_STD_MAX)
        per_dim = -0.5 * sq_err * jnp.exp(-2.0 * log_std) - log_std - 0.5 * math.log(2.0 * math.pi)
        return jnp.sum(per_dim, axis=-1)


class ScalarMLP(nnx.Module):
    """MLP with one scalar output per row: a reward model r(s, a), a critic Q(s, a) or a value V(s).

    Inputs are concatenated on the last axis (e.g. `model(obs, actions)`), then Linear-ReLU blocks
    and a linear output, optionally squashed by tanh (`bounded`, the RL-VLM-F / PEBBLE reward
    model's convention: a per-step reward in [-1, 1] keeps a segment's summed reward, the
    Bradley-Terry logit, bounded by the segment length).

    Args:
      input_dim: total size of the concatenated inputs.
      hidden_dims: hidden layer widths.
      bounded: tanh on the output.
      rngs: parameter initialisation randomness.
    """

    def __init__(self, input_dim: int, *, hidden_dims: Sequence[int], bounded: bool = False, rngs: nnx.Rngs):
        if input_dim <= 0:
            raise ValueError(f"input_dim must be positive, got {input_dim}")
        self.input_dim = input_dim
        self.bounded = bounded
        dims = (input_dim, *hidden_dims)
        self.hidden = nnx.List(
            [nnx.Linear(d_in, d_out, rngs=rngs) for d_in, d_out in zip(dims[:-1], dims[1:])]
        )
        self.out = nnx.Linear(dims[-1], 1, rngs=rngs)

    def __call__(self, *inputs: jax.Array) -> jax.Array:
        """`[..., D_i]` inputs (concatenated, sum of D_i = input_dim) -> `[...]` outputs."""
        x = inputs[0] if len(inputs) == 1 else jnp.concatenate(inputs, axis=-1)
        if x.shape[-1] != self.input_dim:
            raise ValueError(f"inputs have {x.shape[-1]} features in all, the network expects {self.input_dim}")
        for layer in self.hidden:
            x = jax.nn.relu(layer(x))
        out = self.out(x)[..., 0]
        return jnp.tanh(out) if self.bounded else out
