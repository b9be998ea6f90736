"""Tests of plare_jax.losses against plain NumPy references."""

import doctest

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from plare_jax import losses
from plare_jax.losses import (
    awr_policy_loss,
    awr_weights,
    bc_loss,
    bradley_terry_loss,
    cpl_loss,
    cpl_rank_loss,
    expectile_loss,
    preference_accuracy,
    segment_scores,
    weighted_mean,
)

B, T = 16, 12


def np_cpl_loss(logp_1, logp_2, label, alpha, bias, mask_1=None, mask_2=None):
    """NumPy float64 reference of the biased CPL loss."""
    logp_1 = np.asarray(logp_1, np.float64)
    logp_2 = np.asarray(logp_2, np.float64)
    mask_1 = np.ones_like(logp_1) if mask_1 is None else np.asarray(mask_1, np.float64)
    mask_2 = np.ones_like(logp_2) if mask_2 is None else np.asarray(mask_2, np.float64)
    a1 = alpha * (mask_1 * logp_1).sum(-1)
    a2 = alpha * (mask_2 * logp_2).sum(-1)
    softplus = lambda x: np.logaddexp(0.0, x)
    return label * softplus(-(a2 - bias * a1)) + (1 - label) * softplus(-(a1 - bias * a2))


def random_inputs(rng, scale=1.0):
    logp_1 = -np.abs(rng.normal(size=(B, T))) * scale
    logp_2 = -np.abs(rng.normal(size=(B, T))) * scale
    label = rng.choice([0.0, 0.5, 1.0], size=B)
    return logp_1.astype(np.float32), logp_2.astype(np.float32), label.astype(np.float32)


@pytest.mark.parametrize("alpha,bias", [(0.1, 0.5), (1.0, 1.0), (0.3, 0.0)])
def test_cpl_loss_matches_numpy_with_ties(alpha, bias):
    rng = np.random.default_rng(0)
    logp_1, logp_2, label = random_inputs(rng)
    assert (label == 0.5).any() and (label == 0).any() and (label == 1).any()
    got = jax.jit(lambda a, b, y: cpl_loss(a, b, y, alpha=alpha, bias=bias))(logp_1, logp_2, label)
    assert got.shape == (B,)
    np.testing.assert_allclose(got, np_cpl_loss(logp_1, logp_2, label, alpha, bias), rtol=1e-5, atol=1e-6)


def test_cpl_loss_mask_forms_agree_and_match_numpy():
    rng = np.random.default_rng(1)
    logp_1, logp_2, label = random_inputs(rng)
    lengths_1 = rng.integers(1, T + 1, size=B)
    lengths_2 = rng.integers(1, T + 1, size=B)
    mask_1 = (np.arange(T)[None] < lengths_1[:, None]).astype(np.float32)
    mask_2 = (np.arange(T)[None] < lengths_2[:, None]).astype(np.float32)
    expected = np_cpl_loss(logp_1, logp_2, label, 0.1, 0.5, mask_1, mask_2)
    pair = cpl_loss(logp_1, logp_2, label, mask=(mask_1, mask_2))
    stacked = cpl_loss(logp_1, logp_2, label, mask=np.stack([mask_1, mask_2], axis=1))
    np.testing.assert_allclose(pair, expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(stacked, expected, rtol=1e-5, atol=1e-6)
    shared = cpl_loss(logp_1, logp_2, label, mask=mask_1)
    np.testing.assert_allclose(shared, np_cpl_loss(logp_1, logp_2, label, 0.1, 0.5, mask_1, mask_1), rtol=1e-5)


def test_masked_steps_cannot_leak_nan_into_loss_or_grad():
    rng = np.random.default_rng(2)
    logp_1, logp_2, label = random_inputs(rng)
    mask = np.ones((B, T), np.float32)
    mask[:, -3:] = 0.0
    poisoned = logp_1.copy()
    poisoned[:, -3:] = np.nan
    loss = cpl_loss(poisoned, logp_2, label, mask=mask)
    np.testing.assert_allclose(loss, cpl_loss(logp_1, logp_2, label, mask=mask), rtol=1e-6)
    grad = jax.grad(lambda a: cpl_loss(a, logp_2, label, mask=mask).sum())(poisoned)
    assert np.isfinite(np.asarray(grad)).all()


@pytest.mark.parametrize("scale", [1e3, 1e4])
def test_cpl_loss_stable_for_huge_scores(scale):
    rng = np.random.default_rng(3)
    logp_1, logp_2, label = random_inputs(rng)
    # |A| = alpha * sum |logp| ~ scale: rescale so each segment's score is about +-scale.
    logp_1 = logp_1 / np.abs(0.1 * logp_1.sum(-1, keepdims=True)) * scale
    logp_2 = logp_2 / np.abs(0.1 * logp_2.sum(-1, keepdims=True)) * scale * 0.5
    loss, grads = jax.value_and_grad(lambda a, b: cpl_loss(a, b, label).sum(), argnums=(0, 1))(logp_1, logp_2)
    per_pair = cpl_loss(logp_1, logp_2, label)
    assert np.isfinite(np.asarray(per_pair)).all() and np.isfinite(float(loss))
    assert all(np.isfinite(np.asarray(g)).all() for g in grads)
    # float32 sums of ~1e4 carry ~1e-7 relative error, so compare with an absolute
    # tolerance proportional to the score scale.
    np.testing.assert_allclose(
        per_pair, np_cpl_loss(logp_1, logp_2, label, 0.1, 0.5), rtol=1e-5, atol=1e-6 * scale
    )
    assert float(np.max(per_pair)) > scale * 0.1  # the loss really saw huge scores


def test_cpl_loss_gradients():
    rng = np.random.default_rng(4)
    logp_1, logp_2, label = random_inputs(rng)
    mask = (rng.uniform(size=(B, T)) > 0.2).astype(np.float64)
    label = np.where(label == 0.5, 0.3, label)
    f = lambda a, b: cpl_loss(a, b, label, alpha=0.5, bias=0.5, mask=mask)
    with jax.enable_x64(True) if hasattr(jax, "enable_x64") else jax.experimental.enable_x64():
        check_grads(f, (logp_1.astype(np.float64), logp_2.astype(np.float64)), order=2, modes=("fwd", "rev"))


def test_cpl_loss_second_call_does_not_recompile():
    traces = []

    @jax.jit
    def loss_fn(a, b, y, m):
        traces.append(1)  # runs once per trace
        return cpl_loss(a, b, y, mask=m)

    rng = np.random.default_rng(5)
    logp_1, logp_2, label = random_inputs(rng)
    mask = np.ones((B, T), np.float32)
    first = loss_fn(logp_1, logp_2, label, mask)
    logp_1b, logp_2b, label_b = random_inputs(rng)
    second = loss_fn(logp_1b, logp_2b, label_b, mask)
    assert len(traces) == 1 and loss_fn._cache_size() == 1
    assert not np.allclose(first, second)


def test_bias_below_one_penalises_raising_the_rejected_segment():
    # With bias < 1 the loss depends on the rejected segment's likelihood too (the
    # conservative regulariser); with bias = 0 it does not.
    logp_1 = jnp.full((1, 4), -1.0)
    label = jnp.array([0.0])  # first preferred
    g_biased = jax.grad(lambda b: cpl_loss(logp_1, b, label, bias=0.5).sum())(jnp.full((1, 4), -2.0))
    g_zero = jax.grad(lambda b: cpl_loss(logp_1, b, label, bias=0.0).sum())(jnp.full((1, 4), -2.0))
    assert float(jnp.abs(g_zero).max()) == 0.0
    assert float(g_biased.min()) > 0.0  # raising logp_2 increases the loss


def test_weighted_mean_matches_numpy_and_zero_weights_are_safe():
    rng = np.random.default_rng(6)
    values = rng.normal(size=B).astype(np.float32)
    weights = (rng.uniform(size=B) > 0.5).astype(np.float32) * rng.uniform(0.5, 2.0, size=B).astype(np.float32)
    np.testing.assert_allclose(
        weighted_mean(values, weights), (values * weights).sum() / weights.sum(), rtol=1e-5
    )
    zero = np.zeros(B, np.float32)
    value, (g_values, g_weights) = jax.value_and_grad(weighted_mean, argnums=(0, 1))(values, zero)
    assert float(value) == 0.0
    assert np.isfinite(np.asarray(g_values)).all() and np.isfinite(np.asarray(g_weights)).all()
    # A loss reduced over all-dropped pairs: finite value and gradient w.r.t. the log-probs.
    logp_1, logp_2, label = random_inputs(rng)
    g = jax.grad(lambda a: weighted_mean(cpl_loss(a, logp_2, label), zero))(logp_1)
    assert np.isfinite(np.asarray(g)).all() and float(jnp.abs(g).max()) == 0.0


def test_weighted_mean_ignores_nan_under_zero_weight_and_reduces_axes():
    values = jnp.array([[1.0, jnp.nan], [2.0, 4.0]])
    weights = jnp.array([[1.0, 0.0], [1.0, 1.0]])
    np.testing.assert_allclose(weighted_mean(values, weights, axis=-1), [1.0, 3.0])
    np.testing.assert_allclose(weighted_mean(values, weights), 7.0 / 3.0, rtol=1e-6)


def test_preference_accuracy_excludes_ties_and_dropped_pairs():
    rng = np.random.default_rng(7)
    logp_1, logp_2, label = random_inputs(rng)
    weights = (rng.uniform(size=B) > 0.3).astype(np.float32)
    a1, a2 = logp_1.sum(-1), logp_2.sum(-1)
    eligible = (label != 0.5) & (weights != 0)
    expected = ((a2 > a1) == (label > 0.5))[eligible].mean()
    got = jax.jit(lambda *x: preference_accuracy(*x[:3], weights=x[3]))(logp_1, logp_2, label, weights)
    np.testing.assert_allclose(got, expected, rtol=1e-6)
    grad = jax.grad(lambda a: preference_accuracy(a, logp_2, label))(logp_1)
    assert float(jnp.abs(grad).max()) == 0.0  # a metric: no gradient flows
    assert float(preference_accuracy(logp_1, logp_2, jnp.full(B, 0.5))) == 0.0


def test_bc_loss_per_row_with_mask():
    rng = np.random.default_rng(8)
    logp = -np.abs(rng.normal(size=(B, T))).astype(np.float32)
    mask = (rng.uniform(size=(B, T)) > 0.4).astype(np.float32)
    mask[0] = 0.0  # a row without valid steps
    expected = np.where(mask.sum(-1) > 0, -(logp * mask).sum(-1) / np.maximum(mask.sum(-1), 1), 0.0)
    np.testing.assert_allclose(bc_loss(logp, mask=mask), expected, rtol=1e-5)
    np.testing.assert_allclose(bc_loss(logp[:, 0]), -logp[:, 0])
    np.testing.assert_allclose(bc_loss(logp), -logp.mean(-1), rtol=1e-6)
    assert np.isfinite(np.asarray(jax.grad(lambda x: bc_loss(x, mask=mask).sum())(logp))).all()


def test_rank_loss_matches_pairwise_and_numpy():
    rng = np.random.default_rng(9)
    logp_1, logp_2, label = random_inputs(rng)
    hard = (label > 0.5).astype(np.float32)
    scores = np.stack([segment_scores(logp_1), segment_scores(logp_2)], axis=1)
    np.testing.assert_allclose(
        cpl_rank_loss(scores, hard.astype(np.int32), bias=0.5), cpl_loss(logp_1, logp_2, hard), rtol=1e-5
    )
    many = rng.normal(size=(B, 5)).astype(np.float32)
    pref = rng.integers(0, 5, size=B)
    logits = np.where(np.arange(5)[None] == pref[:, None], many, 0.5 * many).astype(np.float64)
    expected = -(logits[np.arange(B), pref] - np.log(np.exp(logits).sum(-1)))
    np.testing.assert_allclose(cpl_rank_loss(many, pref, bias=0.5), expected, rtol=1e-5)


def test_bad_shapes_raise_clear_errors():
    a = jnp.zeros((B, T))
    with pytest.raises(ValueError, match="label"):
        cpl_loss(a, a, jnp.zeros(B + 1))
    with pytest.raises(ValueError, match="batch, time"):
        cpl_loss(a, jnp.zeros((B, T + 1)), jnp.zeros(B))
    with pytest.raises(ValueError, match="mask"):
        cpl_loss(a, a, jnp.zeros(B), mask=jnp.ones((B, T + 1)))
    with pytest.raises(ValueError, match="pair"):
        cpl_loss(a, a, jnp.zeros(B), mask=(a, a, a))


def np_bradley_terry(reward_1, reward_2, label, mask_1=None, mask_2=None):
    """NumPy float64 reference: cross-entropy of sigmoid(R_2 - R_1) against the label."""
    reward_1 = np.asarray(reward_1, np.float64)
    reward_2 = np.asarray(reward_2, np.float64)
    mask_1 = np.ones_like(reward_1) if mask_1 is None else np.asarray(mask_1, np.float64)
    mask_2 = np.ones_like(reward_2) if mask_2 is None else np.asarray(mask_2, np.float64)
    margin = (mask_2 * reward_2).sum(-1) - (mask_1 * reward_1).sum(-1)
    log_sigmoid = lambda x: -np.logaddexp(0.0, -x)
    return -label * log_sigmoid(margin) - (1 - label) * log_sigmoid(-margin)


def test_bradley_terry_loss_equals_the_cpl_reference_with_alpha_and_bias_one():
    rng = np.random.default_rng(10)
    reward_1 = rng.normal(size=(B, T)).astype(np.float32)
    reward_2 = rng.normal(size=(B, T)).astype(np.float32)
    label = rng.choice([0.0, 0.5, 1.0], size=B).astype(np.float32)
    mask_1 = (rng.uniform(size=(B, T)) > 0.2).astype(np.float32)
    mask_2 = (rng.uniform(size=(B, T)) > 0.2).astype(np.float32)
    got = jax.jit(lambda *x: bradley_terry_loss(*x[:3], mask=(x[3], x[4])))(reward_1, reward_2, label, mask_1, mask_2)
    assert got.shape == (B,)
    np.testing.assert_allclose(got, np_cpl_loss(reward_1, reward_2, label, 1.0, 1.0, mask_1, mask_2), rtol=1e-5)
    np.testing.assert_allclose(got, np_bradley_terry(reward_1, reward_2, label, mask_1, mask_2), rtol=1e-5)
    # The gradient w.r.t. each step's reward is the label residual sigmoid(R_2 - R_1) - y (sign per segment).
    grad_2 = jax.grad(lambda r: bradley_terry_loss(reward_1, r, label, mask=(mask_1, mask_2)).sum())(reward_2)
    margin = (mask_2 * reward_2).sum(-1) - (mask_1 * reward_1).sum(-1)
    residual = 1.0 / (1.0 + np.exp(-margin)) - label
    np.testing.assert_allclose(grad_2, residual[:, None] * mask_2, rtol=1e-4, atol=1e-6)


def test_expectile_loss_matches_numpy_under_jit_with_gradients():
    rng = np.random.default_rng(11)
    diff = rng.normal(size=(B, 3)).astype(np.float32) * 2.0
    for expectile in (0.5, 0.7, 0.9):
        weight = np.where(diff < 0, 1 - expectile, expectile)
        got = jax.jit(lambda d: expectile_loss(d, expectile=expectile))(diff)
        np.testing.assert_allclose(got, weight * diff.astype(np.float64) ** 2, rtol=1e-6)
        grad = jax.grad(lambda d: expectile_loss(d, expectile=expectile).sum())(diff)
        np.testing.assert_allclose(grad, 2 * weight * diff, rtol=1e-5)
    # Minimising it over a constant v gives the expectile: above the mean for tau > 0.5.
    samples = rng.normal(size=2000).astype(np.float32)
    v = jnp.zeros(())
    for _ in range(500):
        v = v - 0.5 * jax.grad(lambda v: expectile_loss(samples - v, expectile=0.9).mean())(v)
    weight_at_v = np.where(samples < float(v), 0.1, 0.9)
    np.testing.assert_allclose(float(v), (weight_at_v * samples).sum() / weight_at_v.sum(), atol=1e-3)
    assert float(v) > samples.mean() + 0.5
    with pytest.raises(ValueError, match="expectile must be in"):
        expectile_loss(diff, expectile=1.0)


def test_awr_weights_and_policy_loss_match_numpy_and_do_not_train_the_critic():
    rng = np.random.default_rng(12)
    advantages = (rng.normal(size=B) * 3).astype(np.float32)
    advantages[0] = 50.0  # exp(150) overflows float32: must clip to max_weight, not inf
    logp = -np.abs(rng.normal(size=B)).astype(np.float32)
    expected_w = np.minimum(np.exp(3.0 * advantages.astype(np.float64)), 100.0)
    w = jax.jit(lambda a: awr_weights(a, inverse_temperature=3.0))(advantages)
    np.testing.assert_allclose(w, expected_w, rtol=1e-5)
    assert float(w[0]) == 100.0
    loss = jax.jit(lambda lp, a: awr_policy_loss(lp, a, inverse_temperature=3.0))(logp, advantages)
    np.testing.assert_allclose(loss, -expected_w * logp, rtol=1e-5)
    g_logp, g_adv = jax.grad(lambda lp, a: awr_policy_loss(lp, a, inverse_temperature=3.0).sum(), argnums=(0, 1))(
        logp, advantages
    )
    np.testing.assert_allclose(g_logp, -expected_w, rtol=1e-5)
    assert float(jnp.abs(g_adv).max()) == 0.0
    # inverse temperature 0 is plain behaviour cloning.
    np.testing.assert_allclose(awr_policy_loss(logp, advantages, inverse_temperature=0.0), -logp)
    with pytest.raises(ValueError, match="same shape"):
        awr_policy_loss(logp, advantages[:-1], inverse_temperature=1.0)


def test_docstring_examples_run():
    result = doctest.testmod(losses, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0 and result.failed == 0
