"""--batch-seeds: the training seeds of one (task, data seed) train as one vmapped program over
stacked states, and each seed ends where its one-at-a-time run does (float tolerance), with its
own checkpoints, metrics log and result; resuming works from per-seed checkpoints."""

from __future__ import annotations

import dataclasses
import json

import jax
import numpy as np
import pytest

from plare_jax import checkpoint as ckpt
from plare_jax.interrupts import StopRequested
from plare_jax.methods import Method, get_method, registered, rlvlmf
from plare_jax.methods.bc import BC
from plare_jax.pipeline import train as train_stage
from plare_jax.pipeline.config import ConfigError, MethodOptions, validate
from plare_jax.pipeline.run import training_mesh
from plare_jax.pipeline.train import (checkpoint_dir, per_seed_evaluator, restore_final_state, train_seed,
                                      train_seeds)

from test_data_parallel import mean_action_evaluator, tiny_config, tiny_task_data

SEEDS = (0, 1, 2)
# Every method, the selecting plare-robust, the from-scratch pbc and rlvlmf (reward model and
# critic pretraining in its prepare's host loop, then IQL) included.
METHODS = ("plare", "plare-robust", "rlvlmf", "sft", "bc", "pbc")
# rlvlmf's reward model and critic-only updates in chunks of 1000 (two of each: a group's loop
# runs them chunk by chunk for all seeds).
RLVLMF = dataclasses.replace(rlvlmf.QUICK, reward_steps=1200, critic_pretrain_steps=1100, batch_size=32,
                             reward_batch_pairs=4, reward_hidden_dims=(16,), critic_hidden_dims=(16,),
                             value_hidden_dims=(16,))



def same_evaluator(seeds):
    """Every seed evaluated by `mean_action_evaluator` (the `train_seeds` evaluator factory)."""
    return per_seed_evaluator([mean_action_evaluator] * len(seeds))

def policy_leaves(config, data, method, seed, unit) -> list[np.ndarray]:
    state = restore_final_state(config, data, method, seed, unit)
    return [np.asarray(x) for x in jax.tree.leaves(get_method(method).policy_params(state))]


def assert_same_runs(config, data, units_a, units_b, *, exact: bool):
    for seed, a, b in zip(SEEDS, units_a, units_b):
        for method in config.method:
            for x, y in zip(policy_leaves(config, data, method, seed, a), policy_leaves(config, data, method, seed, b)):
                if exact:
                    np.testing.assert_array_equal(x, y)
                else:  # vmapped matmuls may round differently
                    np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-5)
        records_a = [json.loads(line) for line in (a / "metrics.jsonl").open()]
        records_b = [json.loads(line) for line in (b / "metrics.jsonl").open()]
        assert [(r["branch"], r["step"], bool(r.get("eval"))) for r in records_a] == \
               [(r["branch"], r["step"], bool(r.get("eval"))) for r in records_b]
        for ra, rb in zip(records_a, records_b):
            for name in ("loss", "mean_action"):
                if name in ra:
                    assert rb[name] == pytest.approx(ra[name], rel=1e-3, abs=1e-4), (seed, ra["branch"], name)


def test_batched_seeds_equal_their_one_at_a_time_runs_and_train_as_one_program(tmp_path, monkeypatch):
    data = tiny_task_data()
    config = tiny_config(method=METHODS, seeds=SEEDS, methods=dataclasses.replace(MethodOptions(), rlvlmf=RLVLMF))
    sequential = [tmp_path / "seq" / f"seed{s}" for s in SEEDS]
    for seed, unit in zip(SEEDS, sequential):
        train_seed(config, data, seed, unit, evaluate_fn=mean_action_evaluator)

    calls = []
    real = train_stage._train_stacked

    def spy(method, states, device_data, keys, **kwargs):
        calls.append((method.name, int(np.shape(keys)[0]), jax.tree.leaves(states)[0].shape[0]))
        return real(method, states, device_data, keys, **kwargs)

    monkeypatch.setattr(train_stage, "_train_stacked", spy)
    batched = [tmp_path / "batched" / f"seed{s}" for s in SEEDS]
    results = train_seeds(config, data, SEEDS, batched, evaluator=same_evaluator)

    # One call per metrics window and branch, each advancing all three seeds (stacked leaves [3, ...]).
    windows = config.bc_steps // config.metrics_every
    expected = [("bc", 3, 3)] * windows  # the shared BC phase (BC_PHASE is the bc method)
    for name in METHODS:
        steps = config.total_steps if name == "pbc" else config.method_steps
        expected += [(name, 3, 3)] * (steps // config.metrics_every)
    assert calls == expected
    # rlvlmf's prepare ran once for the group: each seed's reward model and critics fully trained
    for result in results:
        report = result["methods"]["rlvlmf"]
        assert report["reward_model_steps"] == 1200 and report["critic_pretrain_steps"] == 1100
    assert [r["seed"] for r in results] == list(SEEDS)
    assert all(r["trained_with_seeds"] == list(SEEDS) for r in results)
    for seed, unit, result in zip(SEEDS, batched, results):
        assert json.loads((unit / "result.json").read_text()) == result  # per-seed results stay per seed
        assert set(result["methods"]) == set(METHODS)
    assert_same_runs(config, data, sequential, batched, exact=False)


def test_an_interrupted_batched_run_resumes_from_per_seed_checkpoints(tmp_path):
    data = tiny_task_data()
    config = tiny_config(method=("plare", "bc"), seeds=SEEDS, method_steps=40)
    whole = [tmp_path / "whole" / f"seed{s}" for s in SEEDS]
    train_seeds(config, data, SEEDS, whole, evaluator=same_evaluator)

    # Stop in plare's second evaluation chunk (the stop flag is read after every window and every
    # evaluation: 2 + 1 in the BC phase, then plare's windows to 40, its evaluation, one window more).
    resumed = [tmp_path / "resumed" / f"seed{s}" for s in SEEDS]
    checks = []

    def stop_late() -> bool:
        checks.append(1)
        return len(checks) > 6

    with pytest.raises(StopRequested):
        train_seeds(config, data, SEEDS, resumed, evaluator=same_evaluator, should_stop=stop_late)
    saved = [ckpt.latest_step(ckpt.make_checkpoint_manager(checkpoint_dir(u, "plare"))) for u in resumed]
    assert saved == [40, 40, 40]  # every seed's plare checkpoint, none of bc's yet
    assert not any((u / "checkpoints" / "bc").exists() for u in resumed)
    train_seeds(config, data, SEEDS, resumed, evaluator=same_evaluator)
    assert_same_runs(config, data, whole, resumed, exact=True)


def test_seeds_at_different_checkpoints_restart_from_the_step_they_share(tmp_path):
    data = tiny_task_data()
    config = tiny_config(method=("plare",), seeds=SEEDS, method_steps=60)
    whole = [tmp_path / "whole" / f"seed{s}" for s in SEEDS]
    train_seeds(config, data, SEEDS, whole, evaluator=same_evaluator)
    killed = [tmp_path / "killed" / f"seed{s}" for s in SEEDS]
    train_seeds(config, data, SEEDS, killed, evaluator=same_evaluator)
    # As if killed between the saves of plare's last round: seed 1 kept only up to step 60 of 80.
    for unit in killed:
        (unit / "result.json").unlink()
    manager = ckpt.make_checkpoint_manager(checkpoint_dir(killed[1], "plare"), max_to_keep=2)
    assert manager.all_steps() == [60, 80]
    manager.delete(80)
    manager.close()
    train_seeds(config, data, SEEDS, killed, evaluator=same_evaluator)
    for unit in killed:
        manager = ckpt.make_checkpoint_manager(checkpoint_dir(unit, "plare"), max_to_keep=2)
        assert manager.latest_step() == 80
        manager.close()
    assert_same_runs(config, data, whole, killed, exact=True)


def test_batch_seeds_refuses_a_method_that_cannot_batch_and_a_data_mesh_before_any_work():
    validate(tiny_config(method=METHODS, batch_seeds=True))  # every built-in method batches
    assert all(not get_method(name).batch_limitation for name in METHODS)
    host_bound: Method = dataclasses.replace(BC(), name="host-bound", batch_limitation="reads its loss on the host")
    with registered({"host-bound": host_bound}):
        with pytest.raises(ConfigError, match=r"--batch-seeds cannot batch host-bound: host-bound reads its loss"):
            validate(tiny_config(method=("plare", "host-bound"), batch_seeds=True))
        validate(tiny_config(method=("plare", "host-bound")))  # one seed at a time: fine
    with pytest.raises(ConfigError, match="--batch-seeds trains the stacked seeds on one device"):
        training_mesh(tiny_config(batch_seeds=True, devices=2))
    assert training_mesh(tiny_config(batch_seeds=True)) is None  # --devices left out: one device
