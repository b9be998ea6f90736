"""Noise-robust CPL: the losses against NumPy references, the learner options, and plare-robust."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from plare_jax import learner, losses
from plare_jax.learner import LearnerConfig, LearnerState
from plare_jax.methods import METHODS, TrainingData, get_method
from plare_jax.methods.plare import ROBUST, CPLOptions, SelectingState, selection_split

B, T = 16, 12


def np_cpl(logp_1, logp_2, label, alpha, bias):
    """NumPy float64 reference of the biased CPL loss (the definition, per pair)."""
    a1 = alpha * np.asarray(logp_1, np.float64).sum(-1)
    a2 = alpha * np.asarray(logp_2, np.float64).sum(-1)
    softplus = lambda x: np.logaddexp(0.0, x)
    return label * softplus(-(a2 - bias * a1)) + (1 - label) * softplus(-(a1 - bias * a2))


def inputs(seed=0, scale=1.0):
    rng = np.random.default_rng(seed)
    logp_1 = (-np.abs(rng.normal(size=(B, T))) * scale).astype(np.float32)
    logp_2 = (-np.abs(rng.normal(size=(B, T))) * scale).astype(np.float32)
    label = rng.choice([0.0, 1.0], size=B).astype(np.float32)
    return logp_1, logp_2, label


@pytest.mark.parametrize("eps", [0.05, 0.1, 0.3])
def test_label_smoothing_is_the_cdpo_mixture_of_a_label_and_its_flip(eps):
    logp_1, logp_2, label = inputs(1)
    got = jax.jit(lambda a, b, y: losses.cpl_loss(a, b, y, alpha=0.1, bias=0.5, label_smoothing=eps))(
        logp_1, logp_2, label)
    want = (1 - eps) * np_cpl(logp_1, logp_2, label, 0.1, 0.5) + eps * np_cpl(logp_1, logp_2, 1 - label, 0.1, 0.5)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("eps", [0.1, 0.2, 0.4])
def test_flip_rate_is_robust_dpo_and_unbiased_for_the_clean_loss(eps):
    logp_1, logp_2, label = inputs(2)
    got = jax.jit(lambda a, b, y: losses.cpl_loss(a, b, y, alpha=0.3, bias=0.5, flip_rate=eps))(
        logp_1, logp_2, label)
    clean, flipped = np_cpl(logp_1, logp_2, label, 0.3, 0.5), np_cpl(logp_1, logp_2, 1 - label, 0.3, 0.5)
    np.testing.assert_allclose(got, ((1 - eps) * clean - eps * flipped) / (1 - 2 * eps), rtol=1e-5, atol=1e-5)
    # Unbiased: over a label flipped with probability eps, the expected rDPO loss is the clean one.
    got_flipped = losses.cpl_loss(logp_1, logp_2, 1 - label, alpha=0.3, bias=0.5, flip_rate=eps)
    np.testing.assert_allclose((1 - eps) * np.asarray(got) + eps * np.asarray(got_flipped), clean,
                               rtol=1e-4, atol=1e-5)


def test_label_smoothing_bounds_the_repulsion_of_the_rejected_segment():
    # Segment 2 preferred. Without smoothing, pushing the rejected segment's log-prob down keeps
    # lowering the loss; with smoothing the loss has an interior minimum and rises again.
    logp_2 = jnp.zeros((1, 4))
    loss_at = lambda a1, eps: float(losses.cpl_loss(jnp.full((1, 4), a1), logp_2, jnp.ones(1), alpha=1.0,
                                                    bias=0.5, label_smoothing=eps)[0])
    assert loss_at(-100.0, 0.0) < loss_at(-10.0, 0.0) < loss_at(-1.0, 0.0)
    assert loss_at(-100.0, 0.1) > loss_at(-10.0, 0.1) > loss_at(-2.0, 0.1)


def test_robust_losses_have_correct_gradients():
    logp_1, logp_2, label = inputs(3)
    with jax.enable_x64(True) if hasattr(jax, "enable_x64") else jax.experimental.enable_x64():
        for kwargs in ({"label_smoothing": 0.1}, {"flip_rate": 0.2}):
            f = lambda a, b: losses.cpl_loss(a, b, label, alpha=0.5, bias=0.5, **kwargs)
            check_grads(f, (logp_1.astype(np.float64), logp_2.astype(np.float64)), order=2, modes=("fwd", "rev"))


def test_robust_options_do_not_recompile_on_new_data():
    traces = []

    @jax.jit
    def loss_fn(a, b, y):
        traces.append(1)
        return losses.cpl_loss(a, b, y, label_smoothing=0.1)

    first = loss_fn(*inputs(4))
    second = loss_fn(*inputs(5))
    assert len(traces) == 1 and loss_fn._cache_size() == 1 and not np.allclose(first, second)


@pytest.mark.parametrize("kwargs", [{"label_smoothing": 0.5}, {"flip_rate": -0.1}, {"flip_rate": 0.6},
                                    {"label_smoothing": 0.1, "flip_rate": 0.1}])
def test_bad_noise_rates_are_refused(kwargs):
    with pytest.raises(ValueError):
        losses.noisy_label_targets(jnp.zeros(2), **kwargs)


def np_small_loss_weights(loss, weights, drop_fraction):
    counted = np.flatnonzero(weights > 0)
    num_drop = int(np.floor(drop_fraction * len(counted)))
    out = np.asarray(weights, np.float64).copy()
    drop = counted[np.argsort(-loss[counted], kind="stable")[:num_drop]]
    out[drop] = 0.0
    return out


@pytest.mark.parametrize("drop_fraction", [0.0, 0.1, 0.25, 0.5, 0.9])
def test_small_loss_weights_drop_the_largest_losses_of_counted_pairs(drop_fraction):
    rng = np.random.default_rng(6)
    loss = rng.exponential(size=40).astype(np.float32)
    weights = (rng.uniform(size=40) > 0.3).astype(np.float32) * rng.uniform(0.5, 2.0, size=40).astype(np.float32)
    got = jax.jit(losses.small_loss_weights)(loss, weights, drop_fraction=drop_fraction)
    np.testing.assert_allclose(got, np_small_loss_weights(loss, weights, drop_fraction), rtol=1e-6)
    assert np.all(np.asarray(got)[weights == 0] == 0)  # a dropped pair is never revived


def test_small_loss_selection_has_no_gradient_through_the_ranking():
    loss = jnp.array([0.1, 5.0, 0.3, 2.0])
    grad = jax.grad(lambda l: jnp.sum(losses.small_loss_weights(l, jnp.ones(4), drop_fraction=0.5) * l))(loss)
    np.testing.assert_allclose(grad, [1.0, 0.0, 1.0, 0.0])


# ----------------------------------------------------------------------------- learner options

P, SEG, OBS, ACT = 40, 8, 5, 2
CONFIG = LearnerConfig(hidden_dims=(16,), dropout_rate=0.0, batch_pairs=8, bc_batch_size=32, warmup_steps=10)


def training_data(seed=0):
    rng = np.random.default_rng(seed)
    obs = rng.normal(size=(200, OBS)).astype(np.float32)
    act = rng.uniform(-1, 1, size=(200, ACT)).astype(np.float32)
    rows = rng.integers(0, 200 - SEG, size=(P, 2))[..., None] + np.arange(SEG)
    labels = rng.integers(0, 2, size=P).astype(np.float32)
    return TrainingData(
        observations=obs, actions=act, next_observations=obs, has_next=np.ones(200, bool),
        terminals=np.zeros(200, np.float32), episode_ids=np.zeros(200, np.int32), pair_observations=obs[rows],
        pair_actions=act[rows], labels=labels, weights=np.ones(P, np.float32),
        pair_mask=np.ones((P, 2, SEG), np.float32), pair_rows=rows)


def objective(config, batch, phase_step=0):
    state = learner.start_phase(LearnerState.create(jax.random.key(0), config, OBS, ACT), "cpl")
    state = state.replace(phase_step=jnp.asarray(phase_step, jnp.int32))
    return learner._cpl_objective(state.params, state, batch, None), state


def test_learner_bc_weight_adds_the_bc_term_and_smoothing_reaches_the_loss():
    batch = training_data().preference_data()
    (plain, metrics), state = objective(CONFIG, batch)
    (with_bc, bc_metrics), _ = objective(dataclasses.replace(CONFIG, bc_weight=0.7), batch)
    np.testing.assert_allclose(with_bc, plain - 0.7 * metrics["logp"], rtol=1e-6)
    (smoothed, _), _ = objective(dataclasses.replace(CONFIG, label_smoothing=0.2), batch)
    logp = state.model.log_prob(batch.observations, batch.actions)
    want = np.mean((0.8 * np_cpl(logp[:, 0], logp[:, 1], np.asarray(batch.labels), 0.1, 0.5)
                    + 0.2 * np_cpl(logp[:, 0], logp[:, 1], 1 - np.asarray(batch.labels), 0.1, 0.5)))
    np.testing.assert_allclose(smoothed, want, rtol=1e-5)


def test_learner_small_loss_selection_starts_after_its_warm_up():
    batch = training_data().preference_data()
    config = dataclasses.replace(CONFIG, small_loss_drop=0.25, small_loss_start=100)
    (plain, _), state = objective(CONFIG, batch)
    (before, _), _ = objective(config, batch, phase_step=99)
    (after, _), _ = objective(config, batch, phase_step=100)
    np.testing.assert_allclose(before, plain, rtol=1e-6)
    logp = state.model.log_prob(batch.observations, batch.actions)
    per_pair = np_cpl(logp[:, 0], logp[:, 1], np.asarray(batch.labels), 0.1, 0.5)
    kept = np_small_loss_weights(per_pair, np.ones(P), 0.25)
    np.testing.assert_allclose(after, (per_pair * kept).sum() / kept.sum(), rtol=1e-5)
    assert float(after) < float(plain)  # the dropped pairs were the worst-fitting ones


@pytest.mark.parametrize("kwargs", [{"small_loss_drop": 1.0}, {"small_loss_start": -1}, {"bc_weight": -1.0},
                                    {"label_smoothing": 0.5}])
def test_learner_config_refuses_bad_robust_options(kwargs):
    with pytest.raises(ValueError):
        dataclasses.replace(CONFIG, **kwargs)


# ----------------------------------------------------------------------------- plare-robust

def test_plare_robust_is_registered_beside_plare_with_its_chosen_options():
    assert "plare" in METHODS and "plare-robust" in METHODS
    assert METHODS["plare-robust"].default_options == ROBUST and METHODS["plare"].default_options == CPLOptions()
    state = get_method("plare-robust").create(jax.random.key(0), CONFIG, training_data(), init=None)
    config = (state.learner if isinstance(state, SelectingState) else state).config
    assert config == ROBUST.learner_config(CONFIG)
    # The registered choice is selection on held-out pairs (docs/methods.md): a selecting state.
    assert isinstance(state, SelectingState) and state.select_fraction == ROBUST.select_fraction > 0


def test_method_options_reach_the_cpl_phase_config():
    options = CPLOptions(label_smoothing=0.15, bc_weight=0.5, bias=0.25, alpha=0.2)
    state = get_method("plare").create(jax.random.key(0), CONFIG, training_data(), init=None, options=options)
    assert (state.config.label_smoothing, state.config.bc_weight, state.config.bias, state.config.alpha) == (
        0.15, 0.5, 0.25, 0.2)
    assert state.phase == "cpl"


def test_selection_split_is_a_fixed_share_for_a_number_of_pairs():
    held = selection_split(1000, 0.1)
    assert held.sum() == 100 and np.array_equal(held, selection_split(1000, 0.1))
    assert not selection_split(1000, 0.0).any() and selection_split(5, 0.05).sum() == 1


SELECT = CPLOptions(select_fraction=0.25)


def train_selecting(data, calls, steps_per_call, key=1):
    method = get_method("plare-robust")
    state = method.create(jax.random.key(0), CONFIG, data, init=None, options=SELECT)
    device_data = method.device_data(state, data)
    history = []
    for _ in range(calls):
        state, metrics = method.train(state, device_data, jax.random.key(key), steps_per_call, metrics_every=10)
        history.append(jax.device_get(metrics))
    return method, state, history


def test_selection_split_over_calls_equals_one_call():
    data = training_data()
    _, one, _ = train_selecting(data, 1, 100)
    _, split, _ = train_selecting(data, 10, 10)
    for a, b in ((one.learner.params, split.learner.params), (one.best_params, split.best_params)):
        assert jax.tree.all(jax.tree.map(lambda x, y: bool(jnp.array_equal(x, y)), a, b))
    assert int(one.best_step) == int(split.best_step) and float(one.best_accuracy) == float(split.best_accuracy)


def test_selection_deploys_the_best_held_out_window_and_never_trains_on_held_out_pairs():
    data = training_data()
    method, state, history = train_selecting(data, 1, 100)
    accuracy = history[0]["held_out_accuracy"]
    assert float(state.best_accuracy) >= float(np.max(accuracy))
    # The deployed policy is the learner's policy at the selected step: re-train up to that step.
    steps = int(state.best_step)
    if steps > 0:
        _, replay, _ = train_selecting(data, 1, steps)
        obs = data.observations[:7]
        np.testing.assert_allclose(method.policy_fn(state)(obs), learner.make_policy_fn(replay.learner)(obs),
                                   rtol=1e-6)
    report = method.report(state, data)
    assert report["selection_pairs"] == 10 and report["trained_pairs"] == 30
    # Flipping the held-out labels changes what is selected on, never what is trained.
    held = selection_split(P, SELECT.select_fraction)
    flipped = dataclasses.replace(data, labels=np.where(held, 1 - data.labels, data.labels).astype(np.float32))
    _, other, other_history = train_selecting(flipped, 1, 100)
    assert jax.tree.all(jax.tree.map(lambda x, y: bool(jnp.array_equal(x, y)), state.learner.params,
                                     other.learner.params))
    assert not np.allclose(other_history[0]["held_out_accuracy"], accuracy)
