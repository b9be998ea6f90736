"""Tests of the methods beside PLARE: each learns what it should on a synthetic problem.

The problem: the good action is a*(s) = 0.8 * sign(s_0). Each episode takes it with its own
probability q_e at every step and the opposite action otherwise. A segment is preferred when it
took the good action more often; the teacher's episode score is q_e's realised fraction. Behaviour
cloning on all the data averages to ~0 along a*(s); a method that uses the labels (or the oracle
scores) right must move its policy towards a*(s).
"""

import dataclasses

import jax
import numpy as np
import optax
import pytest
from flax import nnx

from plare_jax import iql, reward_model
from plare_jax.checkpoint import make_checkpoint_manager, restore_state, save_state
from plare_jax.learner import LearnerConfig, learning_rate_schedule, start_phase, train
from plare_jax.methods import METHODS, get_method
from plare_jax.methods import pbc as pbc_module
from plare_jax.methods import rlvlmf as rlvlmf_module
from plare_jax.methods import sft as sft_module
from plare_jax.methods.base import TrainingData
from tests.hang_guard import HANG_GUARD_S

O, A = 3, 1
POLICY = LearnerConfig(hidden_dims=(32, 32), dropout_rate=0.0, warmup_steps=10, learning_rate=3e-3,
                       batch_pairs=16, bc_batch_size=128)
SMALL_RLVLMF = rlvlmf_module.RLVLMFOptions(
    reward_steps=300, reward_hidden_dims=(32, 32), reward_lr=3e-3, reward_batch_pairs=16,
    critic_hidden_dims=(32, 32), value_hidden_dims=(32, 32), lr=3e-3,
    schedule_steps=400, batch_size=128, critic_pretrain_steps=0,
)


def good_action(obs: np.ndarray) -> np.ndarray:
    return 0.8 * np.sign(obs[..., :1])


def synthetic_data(seed=0, num_episodes=40, episode_len=32, num_pairs=300, seg_len=8, unsure=0.2,
                   scores=True) -> TrainingData:
    rng = np.random.default_rng(seed)
    obs = rng.normal(size=(num_episodes, episode_len + 1, O)).astype(np.float32)
    quality = rng.uniform(0, 1, size=(num_episodes, 1))
    took_good = rng.uniform(size=(num_episodes, episode_len)) < quality
    actions = np.where(took_good[..., None], 1.0, -1.0) * good_action(obs[:, :-1])
    n = num_episodes * episode_len
    rows = np.arange(n).reshape(num_episodes, episode_len)
    has_next = np.ones((num_episodes, episode_len), bool)
    has_next[:, -1] = False  # the last step's successor is not stored
    next_obs = np.where(has_next[..., None], obs[:, 1:], obs[:, :-1])
    # Pairs of random segments; label = P(second preferred) from the count of good actions.
    episodes = rng.integers(0, num_episodes, size=(num_pairs, 2))
    starts = rng.integers(0, episode_len - seg_len + 1, size=(num_pairs, 2))
    pair_rows = rows[episodes[..., None], starts[..., None] + np.arange(seg_len)]  # [P, 2, T]
    good_count = took_good.reshape(-1)[pair_rows].sum(-1)
    labels = np.where(good_count[:, 1] > good_count[:, 0], 1.0,
                      np.where(good_count[:, 1] < good_count[:, 0], 0.0, 0.5)).astype(np.float32)
    weights = np.ones(num_pairs, np.float32)
    dropped = rng.uniform(size=num_pairs) < unsure
    weights[dropped] = 0.0
    labels[dropped] = np.where(labels[dropped] == 0.5, 0.5, 1.0 - labels[dropped])  # wrong on purpose
    flat_obs = obs[:, :-1].reshape(n, O)
    flat_act = actions.reshape(n, A).astype(np.float32)
    return TrainingData(
        observations=flat_obs,
        actions=flat_act,
        next_observations=next_obs.reshape(n, O),
        has_next=has_next.reshape(n),
        terminals=np.zeros(n, np.float32),
        episode_ids=np.repeat(np.arange(num_episodes, dtype=np.int32), episode_len),
        pair_observations=flat_obs[pair_rows],
        pair_actions=flat_act[pair_rows],
        labels=labels,
        weights=weights,
        pair_mask=np.ones((num_pairs, 2, seg_len), np.float32),
        pair_rows=pair_rows.astype(np.int64),
        episode_scores=took_good.mean(-1).astype(np.float32) if scores else None,
    )


def alignment(policy, seed=1) -> float:
    """Mean of pi(s) * a*(s) / 0.8^2 on fresh states: 1 = always the good action, 0 = no preference."""
    obs = np.random.default_rng(seed).normal(size=(512, O)).astype(np.float32)
    return float(np.mean(policy(obs) * good_action(obs)) / 0.64)


def run(method, data, steps, *, options=None, init=None, key=1, metrics_every=100):
    state = method.create(jax.random.key(0), POLICY, data, init=init, options=options)
    state, metrics = method.train(state, method.device_data(state, data), jax.random.key(key), steps,
                                  metrics_every=metrics_every)
    return state, metrics


def bc_alignment(data, steps=400):
    state, _ = run(get_method("bc"), data, steps)
    return alignment(get_method("bc").policy_fn(state))


def test_registry_has_every_method_with_its_flags():
    assert {"plare", "bc", "rlvlmf", "sft", "pbc"} <= set(METHODS)
    assert get_method("pbc").oracle and not any(get_method(m).oracle for m in ("plare", "bc", "rlvlmf", "sft"))
    assert get_method("sft").starts_from_bc_phase
    assert get_method("rlvlmf").starts_from_bc_phase and not get_method("pbc").starts_from_bc_phase
    assert all(m.description for m in METHODS.values())


def awr_clip_share_numpy(state, data, inverse_temperature):
    """Share of the data's rows with beta * (min(target Q1, Q2) - V) at the log(max_weight) clip."""
    iql_state = state.iql
    q = iql.critic_values(iql_state.critic_graphdef, iql_state.target_critic_params, data.observations,
                          data.actions).min(0)
    v = nnx.merge(iql_state.value_graphdef, iql_state.value_params)(data.observations)
    exponent = inverse_temperature * np.asarray(q - v, np.float32)
    return float(np.mean(exponent >= np.log(np.float32(state.config.max_weight))))


def test_rlvlmf_reward_model_ranks_pairs_and_iql_picks_the_good_action():
    data = synthetic_data()
    method = get_method("rlvlmf")
    state, metrics = run(method, data, 400, options=dataclasses.replace(SMALL_RLVLMF, critic_pretrain_steps=200))
    report = method.report(state, data)
    assert report["reward_model_steps"] == 300 and report["iql_steps"] == 400
    assert report["critic_pretrain_steps"] == 200 and int(state.step) == 400  # critic-only steps not counted
    # It trains on every labelled pair (no held-out split); its accuracy is on those pairs.
    assert report["labelled_pairs"] == data.num_pairs == 300
    assert report["reward_train_pairs"] == data.num_trained_pairs == int(np.count_nonzero(data.weights > 0))
    assert report["reward_train_pairs_scored"] == int(np.count_nonzero((data.weights > 0) & (data.labels != 0.5)))
    assert report["reward_train_accuracy"] > 0.9, report
    assert not any("heldout" in name for name in report)
    # It also ranks pairs of other episodes right (a held-out check made here, not by the method).
    fresh = synthetic_data(seed=11, unsure=0.0)
    assert float(reward_model.pair_accuracy(state.reward, fresh.preference_data())) > 0.9
    # The share of advantage weights at the clip, over every transition, as in NumPy; a hotter
    # inverse temperature puts more rows at the clip.
    assert 0.0 <= report["awr_weight_clip_share"] < 1.0 and report["awr_weight_mean"] > 0
    assert report["awr_weight_clip_share"] == pytest.approx(
        awr_clip_share_numpy(state, data, SMALL_RLVLMF.inverse_temperature), abs=1e-6)
    hot = state.replace(iql=state.iql.replace(config=dataclasses.replace(state.iql.config, inverse_temperature=300.0)))
    hot_share = method.report(hot, data)["awr_weight_clip_share"]
    assert hot_share == pytest.approx(awr_clip_share_numpy(state, data, 300.0), abs=1e-6)
    assert hot_share > report["awr_weight_clip_share"] and hot_share > 0.05
    # Relabelled rewards: standardised, and higher for the good action than for the other one.
    rewards = np.asarray(state.rewards)
    np.testing.assert_allclose([rewards.mean(), rewards.std()], [0.0, 1.0], atol=1e-4)
    took_good = (data.actions[:, 0] * good_action(data.observations)[:, 0]) > 0
    assert rewards[took_good].mean() > rewards[~took_good].mean() + 1.0
    assert set(metrics) >= {"loss", "value_loss", "critic_loss", "actor_loss", "advantage_mean", "learning_rate"}
    assert all(m.shape == (4,) and np.isfinite(np.asarray(m)).all() for m in metrics.values())
    # The critics (pretrained, then trained on) rank the good action above the other one.
    obs = data.observations[:256]
    q_good, q_bad = (iql.critic_values(state.iql.critic_graphdef, state.iql.critic_params, obs, a).min(0)
                     for a in (good_action(obs), -good_action(obs)))
    assert float(np.mean(np.asarray(q_good) > np.asarray(q_bad))) > 0.8
    policy = method.policy_fn(state)
    obs = data.observations[:7]
    np.testing.assert_array_equal(policy(obs), policy(obs))  # deterministic
    assert isinstance(policy(obs), np.ndarray) and policy(obs).shape == (7, A)
    assert alignment(policy) > 0.6, alignment(policy)
    assert bc_alignment(data) < 0.35  # the data alone does not say which action is good


def small_rlvlmf(data, **options):
    """(method, options, fresh state, device data) of a small rlvlmf (batches of 32 rows, 8 pairs)."""
    method = get_method("rlvlmf")
    options = dataclasses.replace(SMALL_RLVLMF, batch_size=32, reward_batch_pairs=8, **options)
    state = method.create(jax.random.key(0), POLICY, data, init=None, options=options)
    return method, options, state, method.device_data(state, data)


def test_rlvlmf_split_calls_and_checkpoint_resume_equal_one_run_without_recompiling(tmp_path):
    data = synthetic_data(seed=2, num_pairs=120)
    method, options, fresh, device_data = small_rlvlmf(data, reward_steps=40, critic_pretrain_steps=30)
    key = jax.random.key(3)
    whole, whole_metrics = method.train(fresh, device_data, key, 60, metrics_every=20)
    first, _ = method.train(fresh, device_data, key, 20, metrics_every=20)
    compiled = (iql.train._cache_size(), reward_model.train._cache_size())
    with make_checkpoint_manager(tmp_path / "ckpt") as manager:
        assert save_state(manager, first)
        target = method.create(jax.random.key(9), POLICY, data, init=None, options=options)
        restored = restore_state(manager, target)
    assert int(restored.step) == 20 and int(restored.reward.step) == 40 and int(restored.iql.pretrain_step) == 30
    np.testing.assert_array_equal(restored.rewards, first.rewards)
    resumed, metrics_2 = method.train(restored, device_data, key, 20, metrics_every=20)
    resumed, metrics_3 = method.train(resumed, device_data, key, 20, metrics_every=20)
    # The resumed calls trained no reward model and compiled nothing new (same shapes and sizes).
    assert (iql.train._cache_size(), reward_model.train._cache_size()) == compiled
    for a, b in zip(jax.tree.leaves(resumed.reward), jax.tree.leaves(first.reward)):  # not trained again
        np.testing.assert_array_equal(a, b)
    for a, b in zip(jax.tree.leaves(resumed.iql.actor_params), jax.tree.leaves(whole.iql.actor_params)):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-6)
    for a, b in zip(jax.tree.leaves(resumed.iql.target_critic_params), jax.tree.leaves(whole.iql.target_critic_params)):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-6)
    np.testing.assert_allclose([metrics_2["loss"][0], metrics_3["loss"][0]], whole_metrics["loss"][1:], rtol=1e-5)


def test_rlvlmf_critic_pretraining_trains_value_and_critics_but_not_the_actor():
    data = synthetic_data(seed=4, num_pairs=120)
    method = get_method("rlvlmf")
    options = dataclasses.replace(SMALL_RLVLMF, reward_steps=50, batch_size=32, critic_pretrain_steps=200)
    state = method.create(jax.random.key(0), POLICY, data, init=None, options=options)
    device_data = method.device_data(state, data)
    key = jax.random.key(1)
    state = rlvlmf_module._train_reward_model(state, device_data, key, None)
    pretrained = rlvlmf_module._pretrain_critics(state, device_data, key, None)
    assert int(pretrained.iql.pretrain_step) == 200 and int(pretrained.step) == int(state.step) == 0
    assert pretrained.critics_pretrained and not state.critics_pretrained
    for before, after in zip(jax.tree.leaves(state.iql.actor_params), jax.tree.leaves(pretrained.iql.actor_params)):
        np.testing.assert_array_equal(before, after)
    for tree in ("critic_params", "target_critic_params", "value_params"):
        changed = [not np.array_equal(a, b) for a, b in
                   zip(jax.tree.leaves(getattr(state.iql, tree)), jax.tree.leaves(getattr(pretrained.iql, tree)))]
        assert all(changed), tree
    # Trained critics rank the good action above the other one on the data's states.
    obs = data.observations[:256]
    critics = pretrained.iql
    q = iql.critic_values(critics.critic_graphdef, critics.critic_params, obs, good_action(obs)).min(0)
    q_bad = iql.critic_values(critics.critic_graphdef, critics.critic_params, obs, -good_action(obs)).min(0)
    assert float(np.mean(np.asarray(q) > np.asarray(q_bad))) > 0.8
    report = method.report(pretrained, data)
    assert report["critic_pretrain_steps"] == 200 and report["iql_steps"] == 0


def test_iql_update_targets_only_rows_with_a_successor_or_a_true_terminal():
    data = synthetic_data(seed=8, num_pairs=20)
    state = get_method("rlvlmf").create(jax.random.key(0), POLICY, data, init=None, options=SMALL_RLVLMF).iql
    rng = np.random.default_rng(0)
    b = 16

    def batch(has_next, terminals, next_scale=1.0):
        return {
            "observations": data.observations[:b], "actions": data.actions[:b],
            "next_observations": (rng.normal(size=(b, O)) * next_scale).astype(np.float32),
            "has_next": np.full(b, has_next, np.float32), "terminals": np.full(b, terminals, np.float32),
            "rewards": rng.normal(size=b).astype(np.float32),
        }

    update = jax.jit(iql.update)
    key = jax.random.key(1)
    same = lambda a, b_: all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b_)))
    # No successor, not terminal: no target, the critics do not move; V and the actor still learn.
    new, metrics = update(state, batch(0.0, 0.0), key)
    assert float(metrics["critic_loss"]) == 0.0 and same(new.critic_params, state.critic_params)
    assert not same(new.value_params, state.value_params) and not same(new.actor_params, state.actor_params)
    # True terminals: the target is the reward alone, whatever next_observations holds.
    rewards_fixed = batch(0.0, 1.0)
    other_next = dict(rewards_fixed, next_observations=rewards_fixed["next_observations"] * 100)
    a, _ = update(state, rewards_fixed, key)
    c, _ = update(state, other_next, key)
    assert not same(a.critic_params, state.critic_params) and same(a.critic_params, c.critic_params)
    # With successors the next state's value enters the target.
    with_next = batch(1.0, 0.0)
    a, _ = update(state, with_next, key)
    c, _ = update(state, dict(with_next, next_observations=with_next["next_observations"] * 100), key)
    assert not same(a.critic_params, c.critic_params)
    # The value loss is the expectile loss of min(target Q1, Q2) - V(s), as in NumPy.
    _, metrics = update(state, with_next, key)
    q = np.asarray(iql.critic_values(state.critic_graphdef, state.target_critic_params,
                                     with_next["observations"], with_next["actions"]), np.float64)
    v = np.asarray(nnx.merge(state.value_graphdef, state.value_params)(with_next["observations"]), np.float64)
    diff = q.min(0) - v
    expected = np.mean(np.where(diff < 0, 0.3, 0.7) * diff**2)
    np.testing.assert_allclose(float(metrics["value_loss"]), expected, rtol=1e-4)
    assert q.shape == (2, b) and not np.allclose(q[0], q[1])  # two independent critics


def test_rlvlmf_rejects_bad_options_and_data_with_clear_errors():
    with pytest.raises(ValueError, match="expectile"):
        rlvlmf_module.RLVLMFOptions(expectile=1.0)
    with pytest.raises(ValueError, match="batch_size must be positive"):
        rlvlmf_module.RLVLMFOptions(batch_size=0)
    with pytest.raises(ValueError, match="critic_pretrain_steps"):
        rlvlmf_module.RLVLMFOptions(critic_pretrain_steps=-1)
    data = synthetic_data(num_pairs=20)
    no_labels = dataclasses.replace(data, weights=np.zeros_like(data.weights))
    method = get_method("rlvlmf")
    state = method.create(jax.random.key(0), POLICY, no_labels, init=None, options=SMALL_RLVLMF)
    with pytest.raises(ValueError, match="no labelled pair"):
        method.device_data(state, no_labels)
    with pytest.raises(ValueError, match="multiple of metrics_every"):
        method.train(state, method.device_data(state, data), jax.random.key(1), 30, metrics_every=20)


def test_rlvlmf_reward_model_trains_on_every_labelled_pair_and_weight_zero_pairs_weigh_nothing():
    data = synthetic_data(seed=3, num_pairs=100)
    method = get_method("rlvlmf")
    options = dataclasses.replace(SMALL_RLVLMF, reward_steps=60)

    def reward_params(data):
        state = method.create(jax.random.key(0), POLICY, data, init=None, options=options)
        device_data = method.device_data(state, data)
        np.testing.assert_array_equal(device_data.reward_pairs.labels, data.labels)  # all P pairs, in order
        np.testing.assert_array_equal(device_data.reward_pairs.weights, data.weights)
        trained = rlvlmf_module._train_reward_model(state, device_data, jax.random.key(1), None)
        return [np.asarray(x) for x in jax.tree.leaves(trained.reward.params)]

    def flipped(rows):
        labels = data.labels.copy()
        labels[rows] = 1.0 - labels[rows]
        return dataclasses.replace(data, labels=labels)

    base = reward_params(data)
    # The 10% of pairs the former split held out (permutation of seed 0): their labels now
    # change the reward model.
    former_holdout = np.random.default_rng(0).permutation(data.num_pairs)[:10]
    former_holdout = former_holdout[data.weights[former_holdout] > 0]
    assert former_holdout.size >= 5
    assert any(not np.array_equal(a, b) for a, b in zip(base, reward_params(flipped(former_holdout))))
    # A dropped pair (weight 0) is in the data but changes nothing, whatever its label.
    dropped = np.flatnonzero((data.weights == 0) & (data.labels != 0.5))
    assert dropped.size >= 5
    for a, b in zip(base, reward_params(flipped(dropped))):
        np.testing.assert_array_equal(a, b)


def test_rlvlmf_actor_schedule_is_the_cpl_warm_up_then_a_cosine_decay():
    policy = dataclasses.replace(POLICY, learning_rate=1e-4, warmup_steps=50)
    options = dataclasses.replace(SMALL_RLVLMF, lr=3e-4, schedule_steps=400)
    schedule = iql.actor_schedule(options.iql_config(), policy)
    cpl = learning_rate_schedule(policy)
    rates = np.array([float(schedule(k)) for k in range(401)])
    # Warm-up: the CPL learner's fraction of the peak at every step, towards rlvlmf's own lr.
    for k in (0, 1, 24, 49):
        assert rates[k] == pytest.approx(float(cpl(k)) / policy.learning_rate * options.lr, rel=1e-6)
    assert rates[0] == pytest.approx(options.lr / 50, rel=1e-6) and rates[49] == pytest.approx(options.lr)
    # Then a cosine from the peak to 0 at schedule_steps.
    assert rates[50] == pytest.approx(options.lr, rel=1e-6)
    assert rates[225] == pytest.approx(options.lr / 2, rel=1e-4)
    assert np.all(np.diff(rates[50:]) <= 0) and rates[400] == pytest.approx(0.0, abs=1e-12)
    # Without a warm-up it is the cosine decay it was before.
    no_warmup = iql.actor_schedule(options.iql_config(), dataclasses.replace(policy, warmup_steps=0))
    cosine = optax.cosine_decay_schedule(options.lr, options.schedule_steps)
    for k in (0, 100, 399):
        assert float(no_warmup(k)) == pytest.approx(float(cosine(k)), rel=1e-5)


def test_rlvlmf_actor_first_update_after_the_switch_uses_the_cpl_warm_up_rate():
    data = synthetic_data(seed=9, num_pairs=100)
    bc_phase, _ = run(get_method("bc"), data, 100)
    assert POLICY.learning_rate == SMALL_RLVLMF.lr and POLICY.warmup_steps == 10  # same peak: equal rates
    # The CPL learner's switch after the same BC phase (plare's): fresh optimizer, warm-up from 0.
    _, cpl_metrics = train(start_phase(bc_phase, "cpl"), data.preference_data(), jax.random.key(1), 12,
                           phase="cpl", metrics_every=1)
    method = get_method("rlvlmf")
    options = dataclasses.replace(SMALL_RLVLMF, reward_steps=20, schedule_steps=100 + 400)
    state = method.create(jax.random.key(0), POLICY, data, init=bc_phase, options=options)
    device_data = method.device_data(state, data)
    first, first_metrics = method.train(state, device_data, jax.random.key(1), 1, metrics_every=1)
    rest, rest_metrics = method.train(first, device_data, jax.random.key(1), 11, metrics_every=1)
    lr = np.concatenate([np.asarray(first_metrics["learning_rate"]), np.asarray(rest_metrics["learning_rate"])])
    # Split inside the warm-up, the run equals an uninterrupted one.
    whole, whole_metrics = method.train(state, device_data, jax.random.key(1), 12, metrics_every=1)
    np.testing.assert_array_equal(lr, np.asarray(whole_metrics["learning_rate"]))
    for a, b in zip(jax.tree.leaves(rest.iql.actor_params), jax.tree.leaves(whole.iql.actor_params)):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-6)
    # The warm-up (10 steps) is the CPL learner's, step for step; then rlvlmf's cosine starts.
    cpl_lr = np.asarray(cpl_metrics["learning_rate"])
    np.testing.assert_array_equal(lr[:10], cpl_lr[:10])
    assert np.all(lr[10:] <= cpl_lr[10:]) and lr[11] == pytest.approx(cpl_lr[11], rel=1e-3)
    assert lr[0] == pytest.approx(POLICY.learning_rate / POLICY.warmup_steps, rel=1e-6)
    assert lr[9] == pytest.approx(POLICY.learning_rate, rel=1e-4) and np.all(np.diff(lr[:10]) > 0)
    # The optimizer really applies it: Adam's first step moves each parameter by ~ the rate
    # (|g| / (|g| + eps)), so the largest move of the actor's parameters is lr[0], not the peak.
    moves = [np.abs(np.asarray(a) - np.asarray(b)) for a, b in
             zip(jax.tree.leaves(first.iql.actor_params), jax.tree.leaves(state.iql.actor_params))]
    assert max(float(m.max()) for m in moves) == pytest.approx(lr[0], rel=1e-3)


def test_sft_clones_only_confident_preferred_segments_and_learns_the_good_action():
    data = synthetic_data(seed=4)
    rows = sft_module.preferred_segment_rows(data)
    confident = (data.weights > 0) & (data.labels != 0.5)
    assert rows.shape == (confident.sum() * data.pair_rows.shape[-1],)
    # The cloned rows are exactly the preferred segments' steps of the trusted pairs.
    second = data.labels[confident] == 1.0
    expected = np.where(second[:, None], data.pair_rows[confident, 1], data.pair_rows[confident, 0]).ravel()
    np.testing.assert_array_equal(np.sort(rows), np.sort(expected))

    bc_phase, _ = run(get_method("bc"), data, 200)
    method = get_method("sft")
    state = method.create(jax.random.key(0), POLICY, data, init=bc_phase)
    assert int(state.step) == 200 and int(state.phase_step) == 0  # continues the BC policy, fresh optimizer
    state, metrics = method.train(state, method.device_data(state, data), jax.random.key(1), 400, metrics_every=100)
    assert int(state.step) == 600
    after = alignment(method.policy_fn(state))
    assert after > alignment(get_method("bc").policy_fn(bc_phase)) + 0.2
    assert after > 0.3, after
    assert method.report(state, data)["cloned_pairs"] == confident.sum()
    no_confident = dataclasses.replace(data, labels=np.full_like(data.labels, 0.5))
    with pytest.raises(ValueError, match="confident label"):
        method.device_data(state, no_confident)


def test_rlvlmf_continues_the_bc_phase_policy_and_counts_only_iql_updates():
    data = synthetic_data(seed=6)
    bc_phase, _ = run(get_method("bc"), data, 200)
    method = get_method("rlvlmf")
    options = dataclasses.replace(SMALL_RLVLMF, schedule_steps=600)  # the run's budget: 200 BC + 400 IQL
    state = method.create(jax.random.key(0), POLICY, data, init=bc_phase, options=options)
    # The actor starts as the BC policy (same actions), the step count continues the BC phase's,
    # and the actor's schedule spans only the IQL updates left.
    obs = data.observations[:16]
    np.testing.assert_array_equal(method.policy_fn(state)(obs), get_method("bc").policy_fn(bc_phase)(obs))
    assert int(state.step) == 200 and int(state.iql.start) == 200 and state.config.schedule_steps == 400
    state, metrics = method.train(state, method.device_data(state, data), jax.random.key(1), 400,
                                  metrics_every=100)
    assert int(state.step) == 600 and method.report(state, data)["iql_steps"] == 400
    lr = np.asarray(metrics["learning_rate"])
    assert lr[0] > 0.9 * options.lr and lr[-1] < 0.1 * options.lr  # one full cosine over the IQL updates
    assert alignment(method.policy_fn(state)) > 0.6


def test_pbc_clones_the_top_episodes_and_needs_episode_scores():
    data = synthetic_data(seed=5)
    rows, episodes = pbc_module.top_episode_rows(data, 0.1)
    assert episodes.size == 4  # 10% of 40
    others = np.setdiff1d(np.arange(40), episodes)
    assert data.episode_scores[episodes].min() >= data.episode_scores[others].max()  # (ties: either may go)
    np.testing.assert_array_equal(np.unique(data.episode_ids[rows]), episodes)
    method = get_method("pbc")
    state, _ = run(method, data, 400, options=pbc_module.PBCOptions(top_fraction=0.1))
    assert int(state.step) == 400
    assert alignment(method.policy_fn(state)) > 0.6
    assert method.report(state, data)["cloned_episode_score_mean"] > 0.85
    with pytest.raises(ValueError, match="episode scores"):
        method.create(jax.random.key(0), POLICY, synthetic_data(scores=False), init=None)
    with pytest.raises(ValueError, match="top_fraction"):
        pbc_module.PBCOptions(top_fraction=0.0)


def test_pbc_state_checkpoints_and_resumes(tmp_path):
    data = synthetic_data(seed=6)
    method = get_method("pbc")
    options = pbc_module.PBCOptions(top_fraction=0.25)
    state, _ = run(method, data, 20, options=options, metrics_every=10)
    with make_checkpoint_manager(tmp_path) as manager:
        save_state(manager, state)
        restored = restore_state(manager, method.create(jax.random.key(5), POLICY, data, options=options))
    assert int(restored.step) == 20 and restored.config == options
    for a, b in zip(jax.tree.leaves(restored.policy.params), jax.tree.leaves(state.policy.params)):
        np.testing.assert_array_equal(a, b)


TWO_DEVICE_SCRIPT = """
import json, sys
import jax, numpy as np
sys.path.insert(0, "tests")
from test_methods import POLICY, SMALL_RLVLMF, synthetic_data
import dataclasses
from plare_jax.methods import get_method
from plare_jax import iql
from plare_jax.sharding import make_data_mesh

assert jax.device_count() == 2, jax.devices()
data = synthetic_data(seed=7, num_pairs=60)
options = dataclasses.replace(SMALL_RLVLMF, reward_steps=6, reward_batch_pairs=8, batch_size=32)
method = get_method("rlvlmf")
fresh = method.create(jax.random.key(0), POLICY, data, init=None, options=options)
out = {}
for name, mesh in [("single", None), ("two", make_data_mesh())]:
    state, metrics = method.train(fresh, method.device_data(fresh, data), jax.random.key(1), 4, metrics_every=2, mesh=mesh)
    jax.block_until_ready(state)
    out[name] = {
        "leaves": [np.asarray(x).ravel().tolist() for x in jax.tree.leaves((state.reward.params, state.iql.actor_params,
                                                                             state.iql.critic_params, state.iql.value_params))],
        "rewards": np.asarray(state.rewards).tolist(),
        "loss": np.asarray(metrics["critic_loss"]).tolist(),
        "devices": len(state.rewards.sharding.device_set),
    }
hlo = iql.train.lower(state.iql, method.device_data(fresh, data).transitions(state.rewards), jax.random.key(1),
                      num_steps=2, metrics_every=2, mesh=make_data_mesh()).compile().as_text()
odd = dataclasses.replace(options, batch_size=31)
try:
    method.train(method.create(jax.random.key(0), POLICY, data, options=odd), method.device_data(fresh, data),
                 jax.random.key(1), 2, metrics_every=2, mesh=make_data_mesh())
    out["odd_error"] = ""
except ValueError as err:
    out["odd_error"] = str(err)
out["all_reduce"] = "all-reduce" in hlo
print("RESULT" + json.dumps(out))
"""


@pytest.mark.slow
def test_rlvlmf_on_two_forced_cpu_devices_matches_one_device():
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    env = dict(os.environ)
    env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=2").strip()
    env["JAX_PLATFORMS"] = "cpu"
    env["PYTHONPATH"] = os.pathsep.join([str(root), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    proc = subprocess.run([sys.executable, "-c", TWO_DEVICE_SCRIPT], env=env, cwd=root, capture_output=True,
                          text=True, timeout=HANG_GUARD_S)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(next(l for l in proc.stdout.splitlines() if l.startswith("RESULT"))[len("RESULT"):])
    assert out["all_reduce"], "the 2-device IQL update should all-reduce its gradients"
    assert out["two"]["devices"] == 2
    assert "rlvlmf batch_size 31 is not divisible by the 2 devices" in out["odd_error"]
    for single, two in zip(out["single"]["leaves"], out["two"]["leaves"]):
        np.testing.assert_allclose(two, single, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(out["two"]["rewards"], out["single"]["rewards"], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(out["two"]["loss"], out["single"]["loss"], rtol=1e-5)


def test_rlvlmf_prepare_stops_between_reward_model_chunks_and_train_equals_prepare_then_train():
    from plare_jax.interrupts import StopRequested

    data = synthetic_data(seed=3, num_pairs=60)
    method, _, state, device_data = small_rlvlmf(data, reward_steps=2500, critic_pretrain_steps=20)
    key = jax.random.key(5)
    checks = []

    def stop_now():
        checks.append(True)
        return True

    # A stop request is seen after the first chunk of 1000 reward-model updates, not after all 2500.
    with pytest.raises(StopRequested):
        method.prepare(state, device_data, key, should_stop=stop_now)
    assert len(checks) == 1
    # prepare then train (the pipeline's order) equals train alone (the library's), bit for bit.
    prepared = method.prepare(state, device_data, key, should_stop=lambda: False)
    assert prepared.reward_trained and prepared.critics_pretrained and int(prepared.step) == 0
    assert method.prepare(prepared, device_data, key) is prepared  # done once
    a, metrics_a = method.train(prepared, device_data, key, 20, metrics_every=10)
    b, metrics_b = method.train(state, device_data, key, 20, metrics_every=10)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_array_equal(x, y)
    np.testing.assert_array_equal(metrics_a["loss"], metrics_b["loss"])
