"""Tests of the learner: phases, scanned training, recompiles, and learning a known policy."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from plare_jax import learner
from plare_jax.learner import (
    LearnerConfig,
    LearnerState,
    PreferenceData,
    TransitionData,
    make_policy_fn,
    start_phase,
    train,
    update,
)

O, A = 6, 2
TINY = LearnerConfig(
    hidden_dims=(32,), dropout_rate=0.1, warmup_steps=5, learning_rate=1e-3, batch_pairs=8, bc_batch_size=64
)


def random_pairs(rng, num_pairs=24, seg_len=8):
    return PreferenceData.create(
        rng.normal(size=(num_pairs, 2, seg_len, O)),
        rng.uniform(-1, 1, size=(num_pairs, 2, seg_len, A)),
        rng.integers(0, 2, size=num_pairs),
    )


def params_close(a, b, atol=0.0):
    return all(np.allclose(x, y, atol=atol, rtol=0) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def synthetic_preference_problem(rng, num_pairs=128, seg_len=16):
    """Preferred segments follow a = tanh(obs @ W); rejected ones act at random.

    A quarter of the pairs are "unsure": weight 0 and a deliberately wrong label,
    so the learner must ignore them.
    """
    w = rng.normal(size=(O, A))
    obs = rng.normal(size=(num_pairs, 2, seg_len, O)).astype(np.float32)
    expert = np.tanh(obs @ w)
    random_act = rng.uniform(-1, 1, size=expert.shape)
    second_better = rng.integers(0, 2, size=num_pairs).astype(np.float32)
    choose = second_better[:, None, None, None] == 1
    actions = np.where(choose, np.stack([random_act[:, 0], expert[:, 1]], 1), np.stack([expert[:, 0], random_act[:, 1]], 1))
    weights = np.ones(num_pairs, np.float32)
    labels = second_better.copy()
    unsure = num_pairs // 4
    weights[:unsure] = 0.0
    labels[:unsure] = 1.0 - labels[:unsure]
    return PreferenceData.create(obs, actions, labels, weights), w


def test_bc_then_cpl_learns_the_preferred_behaviour():
    rng = np.random.default_rng(0)
    data, w = synthetic_preference_problem(rng)
    config = LearnerConfig(
        hidden_dims=(64, 64), dropout_rate=0.1, warmup_steps=20, learning_rate=3e-3, batch_pairs=16, bc_batch_size=256
    )
    state = LearnerState.create(jax.random.key(0), config, O, A)
    test_obs = rng.normal(size=(512, O)).astype(np.float32)
    expert = np.tanh(test_obs @ w)
    mse_to_expert = lambda s: float(np.mean((make_policy_fn(s)(test_obs) - expert) ** 2))
    key = jax.random.key(1)

    at_init = mse_to_expert(state)
    state, bc_metrics = train(state, data, key, 300, phase="bc", metrics_every=100)
    after_bc = mse_to_expert(state)
    state = start_phase(state, "cpl")
    state, cpl_metrics = train(state, data, key, 600, phase="cpl", metrics_every=100)
    after_cpl = mse_to_expert(state)

    assert bc_metrics["loss"][-1] < bc_metrics["loss"][0]
    assert after_bc < at_init
    # BC imitates the mixture; CPL must move clearly towards the preferred behaviour.
    assert after_cpl < 0.5 * after_bc, (at_init, after_bc, after_cpl)
    assert cpl_metrics["accuracy"][-1] > 0.95
    # On the training pairs, the policy is closer to the preferred than to the rejected segment.
    obs = np.asarray(data.observations).reshape(-1, O)
    pred = make_policy_fn(state)(obs).reshape(data.actions.shape)
    second = np.asarray(data.labels) > 0.5
    trusted = np.asarray(data.weights) > 0
    err = ((pred - np.asarray(data.actions)) ** 2).sum(-1).mean(-1)  # [P, 2]
    err_pref = np.where(second, err[:, 1], err[:, 0])[trusted]
    err_rej = np.where(second, err[:, 0], err[:, 1])[trusted]
    assert np.mean(err_pref) < 0.25 * np.mean(err_rej)


def test_metrics_are_window_means_and_state_advances():
    rng = np.random.default_rng(1)
    data = random_pairs(rng)
    state = start_phase(LearnerState.create(jax.random.key(0), TINY, O, A), "cpl")
    new, metrics = train(state, data, jax.random.key(1), 12, phase="cpl", metrics_every=4)
    assert set(metrics) >= {"loss", "cpl_loss", "accuracy", "logp", "grad_norm", "learning_rate"}
    assert all(m.shape == (3,) for m in metrics.values())
    assert int(new.step) == 12 and int(new.phase_step) == 12
    # warm-up: lr * min(1, (k + 1) / 5) averaged over the windows k = 0..3, 4..7, 8..11
    lr = 1e-3 * np.minimum(1.0, (np.arange(12) + 1) / 5)
    np.testing.assert_allclose(metrics["learning_rate"], lr.reshape(3, 4).mean(1), rtol=1e-5)
    assert not params_close(new.params, state.params)


def test_split_calls_equal_one_call_and_do_not_recompile():
    rng = np.random.default_rng(2)
    data = random_pairs(rng)
    state = start_phase(LearnerState.create(jax.random.key(0), TINY, O, A), "cpl")
    key = jax.random.key(7)
    whole, _ = train(state, data, key, 8, phase="cpl", metrics_every=4)
    half, _ = train(state, data, key, 4, phase="cpl", metrics_every=4)
    cache = learner._train_jit._cache_size()
    rest, _ = train(half, data, key, 4, phase="cpl", metrics_every=4)
    other_data = random_pairs(rng)  # same shapes, new values
    train(rest, other_data, jax.random.key(8), 4, phase="cpl", metrics_every=4)
    assert learner._train_jit._cache_size() == cache  # same shapes: no new compilation
    assert params_close(whole.params, rest.params, atol=1e-6)


def test_start_phase_resets_optimizer_and_schedule_but_keeps_params():
    rng = np.random.default_rng(3)
    data = random_pairs(rng)
    state = LearnerState.create(jax.random.key(0), TINY, O, A)
    trained, _ = train(state, data, jax.random.key(1), 4, phase="bc", metrics_every=2)
    switched = start_phase(trained, "cpl")
    assert switched.phase == "cpl" and int(switched.phase_step) == 0 and int(switched.step) == 4
    adam_state = switched.opt_state[0]
    assert isinstance(adam_state, optax.ScaleByAdamState)
    assert int(adam_state.count) == 0
    assert all(float(jnp.abs(x).max()) == 0.0 for x in jax.tree.leaves(adam_state.mu))
    assert float(jnp.abs(trained.opt_state[0].mu["mean_out"]["kernel"][...]).max()) > 0
    assert params_close(switched.params, trained.params)


def test_bc_on_segment_steps_ignores_padded_steps():
    rng = np.random.default_rng(4)
    num_pairs, seg_len = 16, 8
    actions = np.full((num_pairs, 2, seg_len, A), 0.5, np.float32)
    mask = np.ones((num_pairs, 2, seg_len), np.float32)
    mask[:, :, seg_len // 2 :] = 0.0
    actions[:, :, seg_len // 2 :] = -0.9  # padding garbage, must not be imitated
    data = PreferenceData.create(
        rng.normal(size=(num_pairs, 2, seg_len, O)), actions, np.zeros(num_pairs), mask=mask
    )
    config = LearnerConfig(hidden_dims=(16,), dropout_rate=0.0, warmup_steps=0, learning_rate=1e-2, bc_batch_size=64)
    state = LearnerState.create(jax.random.key(0), config, O, A)
    state, _ = train(state, data, jax.random.key(1), 200, phase="bc", metrics_every=100)
    pred = make_policy_fn(state)(rng.normal(size=(64, O)))
    np.testing.assert_allclose(pred.mean(), 0.5, atol=0.05)


def test_bc_on_transitions_and_zero_weight_update_is_a_no_op():
    rng = np.random.default_rng(5)
    rows = TransitionData.create(rng.normal(size=(100, O)), np.tile([[0.3, -0.3]], (100, 1)))
    state = LearnerState.create(jax.random.key(0), TINY, O, A)
    trained, metrics = train(state, rows, jax.random.key(1), 20, phase="bc", metrics_every=10)
    assert metrics["loss"][1] < metrics["loss"][0]
    batch = (TransitionData(rows.observations[:8], rows.actions[:8]), jnp.zeros(8))
    same, step_metrics = jax.jit(update, static_argnames="phase")(state, batch, jax.random.key(2), phase="bc")
    assert np.isfinite(float(step_metrics["loss"])) and float(step_metrics["grad_norm"]) == 0.0
    assert params_close(same.params, state.params)


@pytest.mark.parametrize(
    "overrides",
    [
        {"head": "gaussian"},
        {"head": "gaussian", "state_dependent_std": True},
        {"max_grad_norm": 1.0, "bc_weight": 0.5},
        {"dropout_prng": "threefry2x32"},
        {"dropout_prng": "unsafe_rbg"},
        {"dropout_mask": "bernoulli"},
    ],
)
def test_config_variants_train_with_finite_metrics(overrides):
    rng = np.random.default_rng(6)
    data = random_pairs(rng)
    config = LearnerConfig(**{**TINY.__dict__, **overrides})
    state = start_phase(LearnerState.create(jax.random.key(0), config, O, A), "cpl")
    new, metrics = train(state, data, jax.random.key(1), 4, phase="cpl", metrics_every=2)
    assert all(np.isfinite(np.asarray(m)).all() for m in metrics.values())
    assert not params_close(new.params, state.params)
    if overrides.get("max_grad_norm"):
        assert isinstance(new.opt_state[0], optax.EmptyState)  # clip_by_global_norm in the chain


def test_policy_fn_is_deterministic_numpy():
    state = LearnerState.create(jax.random.key(0), TINY, O, A)
    policy = make_policy_fn(state)
    obs = np.random.default_rng(7).normal(size=(5, O))
    out = policy(obs)
    assert isinstance(out, np.ndarray) and out.shape == (5, A)
    np.testing.assert_array_equal(out, policy(obs))
    with pytest.raises(ValueError, match="observations"):
        policy(np.zeros((5, O + 1)))


def test_train_rejects_bad_calls_with_clear_errors():
    rng = np.random.default_rng(8)
    data = random_pairs(rng)
    state = LearnerState.create(jax.random.key(0), TINY, O, A)
    key = jax.random.key(1)
    with pytest.raises(ValueError, match="multiple of metrics_every"):
        train(state, data, key, 10, phase="bc", metrics_every=4)
    with pytest.raises(ValueError, match="start_phase"):
        train(state, data, key, 4, phase="cpl", metrics_every=4)
    cpl_state = start_phase(state, "cpl")
    with pytest.raises(ValueError, match="PreferenceData"):
        train(cpl_state, TransitionData.create(np.zeros((4, O)), np.zeros((4, A))), key, 4, phase="cpl", metrics_every=4)
    with pytest.raises(ValueError, match="obs/act dims"):
        train(state, TransitionData.create(np.zeros((4, O + 1)), np.zeros((4, A))), key, 4, phase="bc", metrics_every=4)
    with pytest.raises(ValueError, match="phase"):
        start_phase(state, "rl")
    with pytest.raises(ValueError, match="labels"):
        PreferenceData.create(np.zeros((3, 2, 4, O)), np.zeros((3, 2, 4, A)), np.zeros(4))
    with pytest.raises(ValueError, match="probabilities"):
        PreferenceData.create(np.zeros((3, 2, 4, O)), np.zeros((3, 2, 4, A)), np.array([0.0, -1.0, 1.0]))
    with pytest.raises(ValueError, match="weights must be >= 0"):
        PreferenceData.create(np.zeros((3, 2, 4, O)), np.zeros((3, 2, 4, A)), np.zeros(3), weights=-np.ones(3))
    with pytest.raises(ValueError, match="dropout_prng"):
        LearnerConfig(dropout_prng="philox")
