"""A trained policy as files a robot stack can load with numpy alone.

`export_policy` writes `policy.npz` (the MLP's weights, its layer sizes and activations, and the
observation / action normalisation used in training) and a copy of this module as
`plare_policy.py`. On the robot:

    from plare_policy import load_policy      # needs numpy only: no JAX, no flax, no plare_jax
    policy = load_policy("policy.npz")
    action = policy.act(observation)           # [O] -> [A] or [B, O] -> [B, A], in the data's units

The forward pass is the one `plare_jax.networks.PolicyMLP` computes without dropout:
hidden layers `relu(x @ W + b)`, then `tanh(x @ W + b)`, the Gaussian head's mean included.
This module imports numpy and the standard library only (the writer imports JAX lazily), so it
can be copied anywhere as is.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np

POLICY_FORMAT = "plare-policy"
POLICY_FORMAT_VERSION = 1
STANDALONE_MODULE = "plare_policy.py"


@dataclasses.dataclass(frozen=True)
class Normalizer:
    """Observation standardisation and action scaling applied around the policy network.

    The network sees `(obs - obs_mean) / obs_std` and outputs actions in [-1, 1] (tanh); those map
    back to the data's units by `act_low + (a + 1) / 2 * (act_high - act_low)`. None = identity.

    Attributes:
        obs_mean, obs_std: [O] float32 or None.
        act_low, act_high: [A] float32 or None.
    """

    obs_mean: np.ndarray | None = None
    obs_std: np.ndarray | None = None
    act_low: np.ndarray | None = None
    act_high: np.ndarray | None = None

    @classmethod
    def fit(cls, observations: np.ndarray, actions: np.ndarray, *, observation: str = "zscore",
            action: str = "auto") -> Normalizer:
        """Normalisation from the training data.

        Args:
            observations: [N, O].
            actions: [N, A].
            observation: "zscore" (per-dimension mean and std; a std below 1e-6, i.e. a constant
                dimension, becomes 1) or "none".
            action: "minmax" (each dimension's [min, max] -> [-1, 1]), "none", or "auto" (minmax
                only when an action leaves [-1, 1], which a tanh policy cannot reach).
        """
        obs_mean = obs_std = act_low = act_high = None
        if observation == "zscore":
            obs_mean = observations.mean(axis=0).astype(np.float32)
            std = observations.std(axis=0)
            obs_std = np.where(std < 1e-6, 1.0, std).astype(np.float32)
        elif observation != "none":
            raise ValueError(f"observation normalisation must be 'zscore' or 'none', got {observation!r}")
        if action not in ("auto", "minmax", "none"):
            raise ValueError(f"action scaling must be 'auto', 'minmax' or 'none', got {action!r}")
        if action == "minmax" or (action == "auto" and np.abs(actions).max() > 1.0):
            low, high = actions.min(axis=0), actions.max(axis=0)
            flat = high - low < 1e-6  # a constant action dimension: keep it centred
            act_low = np.where(flat, low - 1.0, low).astype(np.float32)
            act_high = np.where(flat, high + 1.0, high).astype(np.float32)
        return cls(obs_mean, obs_std, act_low, act_high)

    @property
    def is_identity(self) -> bool:
        return self.obs_mean is None and self.act_low is None

    def observations(self, obs: np.ndarray) -> np.ndarray:
        """Data observations -> what the network sees."""
        obs = np.asarray(obs, np.float32)
        return obs if self.obs_mean is None else ((obs - self.obs_mean) / self.obs_std).astype(np.float32)

    def actions_to_policy(self, actions: np.ndarray) -> np.ndarray:
        """Data actions -> the network's [-1, 1] range."""
        actions = np.asarray(actions, np.float32)
        if self.act_low is None:
            return actions
        return (2.0 * (actions - self.act_low) / (self.act_high - self.act_low) - 1.0).astype(np.float32)

    def actions_from_policy(self, actions: np.ndarray) -> np.ndarray:
        """The network's [-1, 1] outputs -> actions in the data's units."""
        actions = np.asarray(actions, np.float32)
        if self.act_low is None:
            return actions
        return (self.act_low + (actions + 1.0) * 0.5 * (self.act_high - self.act_low)).astype(np.float32)

    def arrays(self) -> dict[str, np.ndarray]:
        return {name: value for name, value in dataclasses.asdict(self).items() if value is not None}


class Policy:
    """A loaded policy: `act(obs)` runs the MLP in numpy, normalisation included."""

    def __init__(self, weights: list[tuple[np.ndarray, np.ndarray]], normalizer: Normalizer, meta: dict):
        self.weights = weights
        self.normalizer = normalizer
        self.meta = meta
        self.obs_dim = int(weights[0][0].shape[0])
        self.act_dim = int(weights[-1][0].shape[1])

    def act(self, obs: np.ndarray) -> np.ndarray:
        """Action(s) for observation(s): [O] -> [A], or [B, O] -> [B, A] (float32)."""
        obs = np.asarray(obs, np.float32)
        single = obs.ndim == 1
        x = obs[None] if single else obs
        if x.ndim != 2 or x.shape[1] != self.obs_dim:
            raise ValueError(f"observations must be [{self.obs_dim}] or [B, {self.obs_dim}], got {obs.shape}")
        x = self.normalizer.observations(x)
        for kernel, bias in self.weights[:-1]:
            x = np.maximum(x @ kernel + bias, 0.0)
        kernel, bias = self.weights[-1]
        action = self.normalizer.actions_from_policy(np.tanh(x @ kernel + bias))
        return action[0] if single else action

    __call__ = act


def load_policy(path: str | os.PathLike) -> Policy:
    """Reads a policy written by `export_policy` (numpy only)."""
    with np.load(path, allow_pickle=False) as z:
        contents = {key: z[key] for key in z.files}
    if "meta_json" not in contents:
        raise ValueError(f"{path} is not a policy file written by plare_jax.export.export_policy")
    meta = json.loads(contents["meta_json"].tobytes().decode("utf-8"))
    if meta.get("format") != POLICY_FORMAT or meta.get("format_version") != POLICY_FORMAT_VERSION:
        raise ValueError(f"{path}: unknown policy format {meta.get('format')!r} v{meta.get('format_version')!r}")
    weights = [(contents[f"kernel_{i}"], contents[f"bias_{i}"]) for i in range(meta["num_layers"])]
    normalizer = Normalizer(**{name: contents[name] for name in ("obs_mean", "obs_std", "act_low", "act_high")
                               if name in contents})
    return Policy(weights, normalizer, meta)


def export_policy(params: Any, normalizer: Normalizer, directory: str | os.PathLike, *,
                  extra_meta: dict | None = None) -> Path:
    """Writes policy.npz and the standalone loader plare_policy.py into `directory`.

    Args:
        params: the parameters of a `PolicyMLP` (`LearnerState.params`, an nnx.State).
        normalizer: the normalisation the policy was trained with.
        directory: output folder (created).
        extra_meta: JSON-serialisable facts stored with the weights (task text, names, ...).

    Returns:
        The path of policy.npz.
    """
    import jax

    pure = jax.tree.map(np.asarray, params.to_pure_dict() if hasattr(params, "to_pure_dict") else params)
    hidden = pure["hidden"]
    layers = [hidden[i] for i in sorted(hidden, key=int)] + [pure["mean_out"]]
    arrays = {}
    for i, layer in enumerate(layers):
        arrays[f"kernel_{i}"] = np.asarray(layer["kernel"], np.float32)
        arrays[f"bias_{i}"] = np.asarray(layer["bias"], np.float32)
    meta = {
        "format": POLICY_FORMAT, "format_version": POLICY_FORMAT_VERSION,
        "num_layers": len(layers),
        "layer_sizes": [int(arrays["kernel_0"].shape[0])] + [int(arrays[f"kernel_{i}"].shape[1])
                                                            for i in range(len(layers))],
        "hidden_activation": "relu", "output_activation": "tanh",
        "normalization": {"observations": "zscore" if normalizer.obs_mean is not None else "none",
                          "actions": "minmax" if normalizer.act_low is not None else "none"},
        **(extra_meta or {}),
    }
    arrays.update(normalizer.arrays())
    arrays["meta_json"] = np.frombuffer(json.dumps(meta).encode("utf-8"), dtype=np.uint8)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "policy.npz"
    np.savez(path, **arrays)
    shutil.copyfile(__file__, directory / STANDALONE_MODULE)
    return path
