"""The numpy-only policy export equals the jitted policy, normalisation included."""

import subprocess
import sys

import jax
import numpy as np
import pytest

from plare_jax.export import Normalizer, export_policy, load_policy
from plare_jax.learner import LearnerConfig, LearnerState, make_policy_fn


@pytest.fixture(scope="module")
def state():
    config = LearnerConfig(hidden_dims=(16, 8), dropout_rate=0.25)
    return LearnerState.create(jax.random.key(3), config, obs_dim=5, act_dim=2)


def data(rng):
    observations = rng.normal(loc=[0, 10, -3, 100, 0], scale=[1, 5, 0.1, 20, 0], size=(200, 5))
    actions = rng.uniform([-3, 0], [3, 0.5], size=(200, 2))
    return observations.astype(np.float32), actions.astype(np.float32)


def test_normalizer_round_trip_and_auto_scaling():
    rng = np.random.default_rng(0)
    observations, actions = data(rng)
    norm = Normalizer.fit(observations, actions)
    z = norm.observations(observations)
    np.testing.assert_allclose(z[:, :4].mean(axis=0), 0, atol=1e-4)
    np.testing.assert_allclose(z[:, :4].std(axis=0), 1, atol=1e-3)
    assert np.all(z[:, 4] == 0)  # a constant dimension keeps std 1
    scaled = norm.actions_to_policy(actions)
    assert scaled.min() >= -1 - 1e-6 and scaled.max() <= 1 + 1e-6
    np.testing.assert_allclose(norm.actions_from_policy(scaled), actions, atol=1e-5)
    # actions already in [-1, 1]: auto leaves them alone
    assert Normalizer.fit(observations, np.clip(actions, -1, 1)).act_low is None
    assert Normalizer.fit(observations, actions, observation="none", action="none").is_identity


def test_exported_policy_equals_jitted_policy(state, tmp_path):
    rng = np.random.default_rng(1)
    observations, actions = data(rng)
    norm = Normalizer.fit(observations, actions)
    path = export_policy(state.params, norm, tmp_path / "export", extra_meta={"task_text": "push"})
    policy = load_policy(path)
    jitted = make_policy_fn(state)
    expected = norm.actions_from_policy(jitted(norm.observations(observations[:7])))
    np.testing.assert_allclose(policy.act(observations[:7]), expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(policy.act(observations[3]), expected[3], rtol=1e-5, atol=1e-5)
    assert policy.meta["layer_sizes"] == [5, 16, 8, 2] and policy.meta["task_text"] == "push"
    with pytest.raises(ValueError, match=r"observations must be \[5\] or \[B, 5\]"):
        policy.act(np.zeros(4))


def test_standalone_module_needs_only_numpy(state, tmp_path):
    observations, actions = data(np.random.default_rng(2))
    export_dir = tmp_path / "robot"
    export_policy(state.params, Normalizer.fit(observations, actions), export_dir)
    np.save(export_dir / "obs.npy", observations[:3])
    code = ("import sys, numpy as np; from plare_policy import load_policy; "
            "p = load_policy('policy.npz'); a = p.act(np.load('obs.npy')); "
            "assert not any(m.split('.')[0] in ('jax', 'flax', 'plare_jax') for m in sys.modules), 'imported jax'; "
            "np.save('act.npy', a)")
    subprocess.run([sys.executable, "-c", code], cwd=export_dir, check=True, env={"PATH": ""})
    expected = load_policy(export_dir / "policy.npz").act(observations[:3])
    np.testing.assert_array_equal(np.load(export_dir / "act.npy"), expected)
