"""Seeds as a batch axis (plare_jax.batched): every seed of one batched program is its own run.

The reference of each check is the one-at-a-time path the pipeline uses today
(`LearnerState.create`, `learner.train`, `learner.start_phase`, `make_policy_fn`), run
seed by seed with the same keys.

Tolerance: the batched program computes the same operations on the same numbers, but XLA
may pick other kernels (and so another summation order) for the batched matmuls and
reductions, which changes float32 results in the last bits; Adam divides by sqrt(v), so a
last-bit change in a gradient becomes a change of the same relative size in the update.
After these few dozen steps that stays far below rtol 1e-5 / atol 1e-6: the largest parameter
difference measured on this CPU was 6e-8 (one or two float32 ulps at parameters of size ~0.5-1).
The window metrics get the same tolerance. A wrong key, a shared minibatch or a missed step moves parameters by ~1e-3 or
more (checked below against a neighbouring seed's run and a swapped key).
"""

import dataclasses

import jax
import numpy as np
import pytest

from plare_jax import batched, learner
from plare_jax.learner import LearnerConfig, LearnerState, PreferenceData, TransitionData

O, A = 6, 2
TINY = LearnerConfig(
    hidden_dims=(32,), dropout_rate=0.1, warmup_steps=5, learning_rate=1e-3, batch_pairs=8, bc_batch_size=64
)
RTOL, ATOL = 1e-5, 1e-6
SEEDS = [0, 1, 2]


def random_pairs(rng, num_pairs=24, seg_len=8):
    return PreferenceData.create(
        rng.normal(size=(num_pairs, 2, seg_len, O)),
        rng.uniform(-1, 1, size=(num_pairs, 2, seg_len, A)),
        rng.integers(0, 2, size=num_pairs),
    )


def leaves_close(a, b):
    return all(np.allclose(x, y, rtol=RTOL, atol=ATOL) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def max_abs_diff(a, b):
    return max(float(np.max(np.abs(np.asarray(x) - np.asarray(y)))) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def assert_state_matches(stacked, states):
    """Seed i of `stacked` equals `states[i]`: parameters, Adam moments, counters, static part."""
    per_seed = batched.unstack_states(stacked, len(states))
    for i, (got, want) in enumerate(zip(per_seed, states)):
        assert got.phase == want.phase and got.config == want.config and got.graphdef == want.graphdef
        assert int(got.step) == int(want.step) and int(got.phase_step) == int(want.phase_step)
        assert leaves_close(got.params, want.params), (i, max_abs_diff(got.params, want.params))
        assert leaves_close(got.opt_state, want.opt_state), (i, max_abs_diff(got.opt_state, want.opt_state))


VARIANTS = {
    "reference-like": TINY,
    "gaussian, clipped, small-loss": dataclasses.replace(
        TINY, head="gaussian", state_dependent_std=True, max_grad_norm=1.0, small_loss_drop=0.25, bc_weight=0.5
    ),
}


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_every_seed_equals_its_one_at_a_time_run_in_both_phases(variant):
    config = VARIANTS[variant]
    data = random_pairs(np.random.default_rng(0))
    train_keys = jax.random.split(jax.random.key(42), len(SEEDS))

    # one at a time: the path the pipeline takes for each seed
    singles = [LearnerState.create(jax.random.key(s), config, O, A) for s in SEEDS]
    after_bc, bc_metrics = zip(*(learner.train(s, data, k, 20, phase="bc", metrics_every=10)
                                 for s, k in zip(singles, train_keys)))
    after_cpl, cpl_metrics = zip(*(learner.train(learner.start_phase(s, "cpl"), data, k, 30, phase="cpl",
                                                 metrics_every=10) for s, k in zip(after_bc, train_keys)))

    stacked = batched.create_batched(SEEDS, config, O, A)
    assert_state_matches(stacked, singles)
    stacked, b_bc_metrics = batched.train_batched(stacked, data, train_keys, 20, phase="bc", metrics_every=10)
    assert_state_matches(stacked, after_bc)
    stacked = batched.start_phase_batched(stacked, "cpl")
    assert stacked.phase == "cpl" and np.all(np.asarray(stacked.phase_step) == 0)
    stacked, b_cpl_metrics = batched.train_batched(stacked, data, train_keys, 30, phase="cpl", metrics_every=10)
    assert_state_matches(stacked, after_cpl)

    for got, want in ((b_bc_metrics, bc_metrics), (b_cpl_metrics, cpl_metrics)):
        assert set(got) == set(want[0])
        for name, value in got.items():
            assert value.shape == (len(SEEDS), len(want[0][name]))  # [seeds, windows]
            np.testing.assert_allclose(value, np.stack([m[name] for m in want]), rtol=RTOL, atol=ATOL)

    # The check can fail: seeds are different runs, and seed 0 is not seed 1's run.
    seed0 = batched.unstack_states(stacked)[0]
    assert max_abs_diff(seed0.params, after_cpl[1].params) > 1e-3
    # Nor seed 0's weights trained with seed 1's key (the key is per seed, not shared).
    swapped, _ = learner.train(learner.start_phase(
        learner.train(singles[0], data, train_keys[1], 20, phase="bc", metrics_every=10)[0], "cpl"),
        data, train_keys[1], 30, phase="cpl", metrics_every=10)
    assert max_abs_diff(seed0.params, swapped.params) > 1e-3


def test_bc_on_transitions_matches_per_seed_runs():
    rng = np.random.default_rng(1)
    rows = TransitionData.create(rng.normal(size=(100, O)), rng.uniform(-1, 1, size=(100, A)))
    keys = batched.seed_keys([7, 8])
    singles = [LearnerState.create(jax.random.key(s), TINY, O, A) for s in (3, 4)]
    want = [learner.train(s, rows, k, 8, phase="bc", metrics_every=4)[0] for s, k in zip(singles, keys)]
    got, metrics = batched.train_batched(batched.stack_states(singles), rows, keys, 8, phase="bc", metrics_every=4)
    assert metrics["loss"].shape == (2, 2)
    assert_state_matches(got, want)


def test_split_over_two_calls_equals_one_call_and_does_not_recompile():
    rng = np.random.default_rng(2)
    data = random_pairs(rng)
    stacked = batched.start_phase_batched(batched.create_batched(SEEDS, TINY, O, A), "cpl")
    keys = jax.random.split(jax.random.key(7), len(SEEDS))
    whole, _ = batched.train_batched(stacked, data, keys, 8, phase="cpl", metrics_every=4)
    half, first_metrics = batched.train_batched(stacked, data, keys, 4, phase="cpl", metrics_every=4)
    cache = batched._train_batched_jit._cache_size()
    rest, _ = batched.train_batched(half, data, keys, 4, phase="cpl", metrics_every=4)
    assert batched._train_batched_jit._cache_size() == cache  # same shapes: the second call reuses the program
    train_more, _ = batched.train_batched(rest, random_pairs(rng), jax.random.split(jax.random.key(8), 3), 4,
                                          phase="cpl", metrics_every=4)
    assert batched._train_batched_jit._cache_size() == cache  # new values of the same shapes: no compilation
    assert first_metrics["loss"].shape == (3, 1)
    np.testing.assert_array_equal(np.asarray(rest.step), [8, 8, 8])
    assert leaves_close(whole.params, rest.params) and leaves_close(whole.opt_state, rest.opt_state)
    assert max_abs_diff(whole.params, half.params) > 1e-4  # the second half did train


def test_stack_unstack_round_trip_and_create_batched_equals_per_seed_creates():
    singles = [LearnerState.create(jax.random.key(s), TINY, O, A) for s in SEEDS]
    stacked = batched.stack_states(singles)
    assert batched.num_seeds(stacked) == 3
    assert stacked.params["mean_out"]["kernel"][...].shape == (3, 32, A)
    created = batched.create_batched(jax.random.split(jax.random.key(0), 3), TINY, O, A)  # key-array form
    assert created.graphdef == stacked.graphdef and created.config == stacked.config and created.phase == "bc"
    assert max_abs_diff(batched.create_batched(SEEDS, TINY, O, A).params, stacked.params) == 0.0
    for got, want in zip(batched.unstack_states(stacked, 3), singles):
        assert max_abs_diff(got.params, want.params) == 0.0 and max_abs_diff(got.opt_state, want.opt_state) == 0.0
    with pytest.raises(ValueError, match="holds 3 seeds, not 2"):
        batched.unstack_states(stacked, 2)
    with pytest.raises(ValueError, match="static part"):
        batched.stack_states([singles[0], learner.start_phase(singles[1], "cpl")])
    with pytest.raises(ValueError, match="not a stacked state"):
        batched.num_seeds(singles[0])


def test_policy_fn_batched_equals_each_seeds_policy():
    rng = np.random.default_rng(3)
    data = random_pairs(rng)
    stacked = batched.create_batched(SEEDS, TINY, O, A)
    stacked, _ = batched.train_batched(stacked, data, batched.seed_keys([5, 6, 7]), 8, phase="bc", metrics_every=4)
    obs = rng.normal(size=(3, 5, O)).astype(np.float32)
    actions = batched.policy_fn_batched(stacked)(obs)
    assert isinstance(actions, np.ndarray) and actions.shape == (3, 5, A)
    for s, state in enumerate(batched.unstack_states(stacked)):
        np.testing.assert_allclose(actions[s], learner.make_policy_fn(state)(obs[s]), rtol=RTOL, atol=ATOL)
    # deterministic (no dropout), and seeds really are different policies
    np.testing.assert_array_equal(actions, batched.policy_fn_batched(stacked)(obs))
    assert np.max(np.abs(actions[0] - learner.make_policy_fn(batched.unstack_states(stacked)[1])(obs[0]))) > 1e-3
    with pytest.raises(ValueError, match=r"\[S=3, B, 6\]"):
        batched.policy_fn_batched(stacked)(obs[0])


def test_train_batched_rejects_bad_calls_with_clear_errors():
    data = random_pairs(np.random.default_rng(4))
    stacked = batched.create_batched(SEEDS, TINY, O, A)
    keys = batched.seed_keys([1, 2, 3])
    with pytest.raises(ValueError, match="start_phase_batched"):
        batched.train_batched(stacked, data, keys, 4, phase="cpl", metrics_every=4)
    with pytest.raises(ValueError, match="one key per seed"):
        batched.train_batched(stacked, data, keys[:2], 4, phase="bc", metrics_every=4)
    with pytest.raises(ValueError, match="multiple of metrics_every"):
        batched.train_batched(stacked, data, keys, 6, phase="bc", metrics_every=4)
    with pytest.raises(ValueError, match="obs/act dims"):
        batched.train_batched(stacked, TransitionData.create(np.zeros((4, O + 1)), np.zeros((4, A))), keys, 4,
                              phase="bc", metrics_every=4)
    # rbg's bits under vmap all come from the first seed's key: refused rather than silently not per-seed
    rbg = batched.create_batched(SEEDS, dataclasses.replace(TINY, dropout_prng="rbg"), O, A)
    with pytest.raises(ValueError, match="threefry2x32"):
        batched.train_batched(rbg, data, keys, 4, phase="bc", metrics_every=4)
    no_dropout = batched.create_batched(SEEDS, dataclasses.replace(TINY, dropout_prng="rbg", dropout_rate=0.0), O, A)
    out, _ = batched.train_batched(no_dropout, data, keys, 4, phase="bc", metrics_every=4)  # no masks: fine
    np.testing.assert_array_equal(np.asarray(out.step), [4, 4, 4])
