"""Save at step k, restore, continue: identical to an uninterrupted run."""

import dataclasses
import pathlib
import sys

import jax
import numpy as np
import optax
import pytest

from plare_jax.checkpoint import CheckpointLayoutError, latest_step, make_checkpoint_manager, restore_state, save_state
from plare_jax import learner
from plare_jax.learner import LearnerConfig, LearnerState, PreferenceData, start_phase, train

O, A = 5, 2
CONFIG = LearnerConfig(hidden_dims=(32,), warmup_steps=3, batch_pairs=4, bc_batch_size=32, max_grad_norm=10.0)


@pytest.fixture
def data():
    rng = np.random.default_rng(0)
    return PreferenceData.create(
        rng.normal(size=(16, 2, 8, O)), rng.uniform(-1, 1, size=(16, 2, 8, A)), rng.integers(0, 2, 16)
    )


def test_resume_equals_uninterrupted_run_with_optax_types(tmp_path, data):
    key = jax.random.key(1)
    state = LearnerState.create(jax.random.key(0), CONFIG, O, A)
    state, _ = train(state, data, key, 4, phase="bc", metrics_every=2)
    state = start_phase(state, "cpl")
    uninterrupted, _ = train(state, data, key, 12, phase="cpl", metrics_every=2)
    at_k, _ = train(state, data, key, 6, phase="cpl", metrics_every=2)

    with make_checkpoint_manager(tmp_path / "ckpt") as manager:
        assert save_state(manager, at_k)
    with make_checkpoint_manager(tmp_path / "ckpt") as manager:
        assert latest_step(manager) == 10
        target = LearnerState.create(jax.random.key(42), CONFIG, O, A)  # other init, phase "bc"
        restored = restore_state(manager, target)

    assert restored.phase == "cpl" and int(restored.step) == 10 and int(restored.phase_step) == 6
    assert jax.tree.structure(restored.opt_state) == jax.tree.structure(at_k.opt_state)
    clip_state, (adam_state, schedule_state) = restored.opt_state
    assert isinstance(clip_state, optax.EmptyState)
    assert isinstance(adam_state, optax.ScaleByAdamState)
    assert isinstance(schedule_state, optax.ScaleByScheduleState)
    for a, b in zip(jax.tree.leaves(restored), jax.tree.leaves(at_k)):
        np.testing.assert_array_equal(a, b)

    compiled = learner._train_jit._cache_size()
    resumed, _ = train(restored, data, key, 6, phase="cpl", metrics_every=2)
    assert learner._train_jit._cache_size() == compiled  # restored arrays reuse the compiled step
    for a, b in zip(jax.tree.leaves(resumed.params), jax.tree.leaves(uninterrupted.params)):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-6)


def test_manager_keeps_newest_and_restores_a_chosen_step(tmp_path, data):
    state = LearnerState.create(jax.random.key(0), CONFIG, O, A)
    key = jax.random.key(1)
    saved = {}
    with make_checkpoint_manager(tmp_path, max_to_keep=2) as manager:
        for _ in range(3):
            state, _ = train(state, data, key, 2, phase="bc", metrics_every=2)
            save_state(manager, state)
            saved[int(state.step)] = state
        assert manager.all_steps() == [4, 6]
        restored = restore_state(manager, LearnerState.create(jax.random.key(0), CONFIG, O, A), step=4)
        for a, b in zip(jax.tree.leaves(restored.params), jax.tree.leaves(saved[4].params)):
            np.testing.assert_array_equal(a, b)
        with pytest.raises(FileNotFoundError, match="no checkpoint at step 2"):
            restore_state(manager, state, step=2)


def test_restore_from_empty_directory_is_a_clear_error(tmp_path):
    with make_checkpoint_manager(tmp_path) as manager:
        assert latest_step(manager) is None
        with pytest.raises(FileNotFoundError, match="no checkpoint"):
            restore_state(manager, LearnerState.create(jax.random.key(0), CONFIG, O, A))


def test_a_checkpoint_of_another_state_layout_is_a_clear_user_error(tmp_path):
    from plare_jax.errors import PlareError
    from plare_jax.methods import get_method

    sys.path.insert(0, str(pathlib.Path(__file__).parent))
    from test_methods import POLICY, SMALL_RLVLMF, synthetic_data

    data = synthetic_data(num_pairs=20)
    with make_checkpoint_manager(tmp_path) as manager:
        save_state(manager, get_method("bc").create(jax.random.key(0), POLICY, data, init=None))
        target = get_method("rlvlmf").create(jax.random.key(0), POLICY, data, init=None, options=SMALL_RLVLMF)
        with pytest.raises(CheckpointLayoutError, match="another layout.*--run-name") as caught:
            restore_state(manager, target)
    assert isinstance(caught.value, PlareError) and "RLVLMFState" in str(caught.value)


def test_restoring_into_a_different_loss_config_warns(tmp_path):
    state = LearnerState.create(jax.random.key(0), CONFIG, O, A)
    with make_checkpoint_manager(tmp_path) as manager:
        save_state(manager, state)
        other = LearnerState.create(jax.random.key(0), dataclasses.replace(CONFIG, bias=0.9), O, A)
        with pytest.warns(UserWarning, match=r"\['bias'\]"):
            restored = restore_state(manager, other)
    assert restored.config.bias == 0.9  # the target's config wins
