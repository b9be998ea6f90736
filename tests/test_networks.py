"""Tests of the NNX policy MLP."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from plare_jax.networks import LOG_STD_MAX, LOG_STD_MIN, PolicyMLP, ScalarMLP, dropout

O, A, N = 7, 3, 20


def make(head="deterministic", **kw):
    return PolicyMLP(O, A, hidden_dims=(32, 32), head=head, rngs=nnx.Rngs(0), **kw)


def data(seed=0):
    rng = np.random.default_rng(seed)
    return (
        rng.normal(size=(N, O)).astype(np.float32),
        rng.uniform(-1, 1, size=(N, A)).astype(np.float32),
    )


def test_default_architecture_is_reference_two_by_512():
    model = PolicyMLP(39, 4, rngs=nnx.Rngs(0))
    params = nnx.state(model, nnx.Param)
    count = sum(x.size for x in jax.tree.leaves(params))
    assert count == (39 * 512 + 512) + (512 * 512 + 512) + (512 * 4 + 4)
    assert model.dropout_rate == 0.25


def test_actions_are_tanh_bounded_and_shaped():
    model = make()
    obs, _ = data()
    actions = model(jnp.asarray(obs) * 100.0)
    assert actions.shape == (N, A)
    assert float(jnp.abs(actions).max()) <= 1.0
    assert model(jnp.asarray(obs[None])).shape == (1, N, A)  # arbitrary leading dims


def test_deterministic_log_prob_is_negative_squared_error():
    model = make()
    obs, act = data()
    mean = np.asarray(model(jnp.asarray(obs)))
    expected = -((mean - act) ** 2).sum(-1)
    np.testing.assert_allclose(model.log_prob(jnp.asarray(obs), jnp.asarray(act)), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("state_dependent_std", [False, True])
def test_gaussian_log_prob_matches_numpy_normal(state_dependent_std):
    model = make("gaussian", state_dependent_std=state_dependent_std)
    if not state_dependent_std:
        model.log_std[...] = jnp.array([-1.0, 0.0, 0.5])
    obs, act = data(1)
    mean = np.asarray(model(jnp.asarray(obs)), np.float64)
    if state_dependent_std:
        log_std = np.asarray(model.log_std_out(model.features(jnp.asarray(obs))), np.float64)
    else:
        log_std = np.broadcast_to(np.array([-1.0, 0.0, 0.5]), mean.shape)
    log_std = np.clip(log_std, LOG_STD_MIN, LOG_STD_MAX)
    std = np.exp(log_std)
    expected = (-0.5 * ((act - mean) / std) ** 2 - log_std - 0.5 * math.log(2 * math.pi)).sum(-1)
    np.testing.assert_allclose(model.log_prob(jnp.asarray(obs), jnp.asarray(act)), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("impl", ["threefry2x32", "rbg", "unsafe_rbg"])
def test_dropout_only_with_a_key_and_reproducible(impl):
    model = make(dropout_rate=0.5)
    obs, _ = data(2)
    obs = jnp.asarray(obs)
    key = jax.random.key(3, impl=impl)
    plain = model(obs)
    np.testing.assert_array_equal(plain, model(obs))  # no key: deterministic
    dropped = model(obs, dropout_key=key)
    assert not np.allclose(dropped, plain)
    np.testing.assert_array_equal(dropped, model(obs, dropout_key=key))
    assert not np.allclose(dropped, model(obs, dropout_key=jax.random.key(4, impl=impl)))


def test_zero_dropout_ignores_key():
    model = make(dropout_rate=0.0)
    obs, _ = data(3)
    np.testing.assert_array_equal(model(jnp.asarray(obs)), model(jnp.asarray(obs), dropout_key=jax.random.key(0)))


def test_split_merge_inside_jit_matches_eager():
    model = make()
    graphdef, params = nnx.split(model, nnx.Param)
    obs, act = data(4)
    jitted = jax.jit(lambda p, o, a: nnx.merge(graphdef, p).log_prob(o, a))
    np.testing.assert_allclose(jitted(params, obs, act), model.log_prob(jnp.asarray(obs), jnp.asarray(act)), rtol=1e-6)


def test_bad_configuration_and_inputs_raise():
    with pytest.raises(ValueError, match="head"):
        make("beta")
    with pytest.raises(ValueError, match="dropout"):
        make(dropout_rate=1.0)
    with pytest.raises(ValueError, match="dropout_mask"):
        make(dropout_mask="gaussian")
    model = make()
    with pytest.raises(ValueError, match="features"):
        model(jnp.zeros((2, O + 1)))
    with pytest.raises(ValueError, match="dims"):
        model.log_prob(jnp.zeros((2, O)), jnp.zeros((2, A + 1)))


@pytest.mark.parametrize("rate", [0.25, 0.5, 0.375, 0.4, 0.1])
@pytest.mark.parametrize("impl", ["threefry2x32", "rbg"])
@pytest.mark.parametrize("mask", ["packed", "bernoulli"])
def test_dropout_drops_at_the_requested_rate(rate, impl, mask):
    x = jnp.ones((4000, 37))  # odd width: exercises the slice of the packed words
    out = dropout(x, rate, jax.random.key(0, impl=impl), mask=mask)
    dropped = float(jnp.mean(out == 0))
    # 148k Bernoulli draws: the std of the fraction is ~0.0013.
    assert abs(dropped - rate) < 0.006, dropped
    np.testing.assert_allclose(float(out.mean()), 1.0, atol=0.015)  # inverted scaling keeps the mean
    kept = np.asarray(out)[np.asarray(out) != 0]
    np.testing.assert_allclose(kept, 1.0 / (1.0 - rate), rtol=1e-4)
    # columns are not correlated through the packing: each column drops at the rate too
    per_column = np.asarray(out == 0).mean(0)
    assert per_column.min() > rate - 0.04 and per_column.max() < rate + 0.04


def test_scalar_mlp_concatenates_inputs_and_bounds_on_request():
    rng = np.random.default_rng(0)
    obs, act = rng.normal(size=(4, 7, 5)).astype(np.float32) * 50, rng.normal(size=(4, 7, 2)).astype(np.float32)
    free = ScalarMLP(7, hidden_dims=(16, 16), rngs=nnx.Rngs(0))
    bounded = ScalarMLP(7, hidden_dims=(16, 16), bounded=True, rngs=nnx.Rngs(0))
    out = free(obs, act)
    assert out.shape == (4, 7)
    np.testing.assert_allclose(out, free(np.concatenate([obs, act], -1)), rtol=1e-6)
    np.testing.assert_allclose(bounded(obs, act), np.tanh(out), rtol=1e-5, atol=1e-6)  # same init, tanh on top
    assert float(np.abs(out).max()) > 1.0  # so the bound was really needed
    with pytest.raises(ValueError, match="expects 7"):
        free(obs)
