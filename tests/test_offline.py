"""experiments/offline.py: PLARE on recorded data without a simulator, as a user runs it."""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from plare_jax.data.recorded import make_card, save_recorded
from plare_jax.testing.fake_vllm import write_fake_vllm
from plare_jax.testing.loopback_server import LoopbackVLMServer
from tests.hang_guard import HANG_GUARD_S

REPO = pathlib.Path(__file__).resolve().parent.parent
SCRIPT = REPO / "experiments" / "offline.py"
TINY = ["--num-pairs", "40", "--segment-length", "10", "--hidden-dims", "16", "16", "--batch-pairs", "8",
        "--bc-batch-size", "64", "--bc-steps", "40", "--method-steps", "40", "--metrics-every", "20",
        "--eval-every", "40", "--warmup-steps", "5", "--holdout-fraction", "0.25"]


def toy_dataset(root, *, rewards=True, episodes=6, length=30, seed=0):
    """A 1-D reach: obs (position, goal), action = velocity; half the episodes head the wrong way.

    The frame's brightness grows as the position nears the goal, so brighter clips are better.
    """
    rng = np.random.default_rng(seed)
    obs, act, ids, rew, frames = [], [], [], [], []
    for e in range(episodes):
        pos, goal = rng.uniform(-1, 1), rng.uniform(-1, 1)
        sign = 1.0 if e % 2 == 0 else -1.0
        for _ in range(length):
            a = np.clip(sign * 3.0 * (goal - pos) + rng.normal(0, 0.1), -1, 1)
            obs.append([pos, goal])
            act.append([a])
            ids.append(e)
            pos = pos + 0.1 * a
            rew.append(-abs(goal - pos))
            frames.append(np.full((16, 16, 3), int(250 * np.exp(-abs(goal - pos))), np.uint8))
    card = make_card(task_text="move the slider to the goal", fps=10,
                     cameras={"cam": {"storage": "npy", "height": 16, "width": 16}},
                     observation_names=["position", "goal"], action_names=["velocity"])
    save_recorded(root, card=card, observations=np.array(obs), actions=np.array(act), episode_ids=np.array(ids),
                  rewards=np.array(rew) if rewards else None, frames={"cam": np.stack(frames)})
    return root


def run_cli(args, cwd):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("PLARE_VLM_BASE_URL", None)
    return subprocess.run([sys.executable, str(SCRIPT), *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=HANG_GUARD_S)


def in_process(args):
    sys.path.insert(0, str(REPO))
    import importlib

    return importlib.import_module("experiments.offline").cli(args)


def corrupt_nan_actions(root):
    with np.load(root / "steps.npz") as z:
        arrays = {k: z[k] for k in z.files}
    arrays["actions"][40, 0] = np.nan
    np.savez(root / "steps.npz", **arrays)
    return "actions has 1 non-finite values"


def corrupt_missing_frames(root):
    (root / "frames" / "cam.npy").unlink()
    return "its frames file"


def corrupt_short_frames(root):
    frames = np.load(root / "frames" / "cam.npy")
    np.save(root / "frames" / "cam.npy", frames[:-3])
    return "has 177 frames but the dataset has 180 steps"


@pytest.mark.parametrize("corrupt", [corrupt_nan_actions, corrupt_missing_frames, corrupt_short_frames])
def test_bad_data_fails_before_any_vlm_request(tmp_path, capsys, corrupt):
    data = toy_dataset(tmp_path / "data")
    message = corrupt(data)
    with LoopbackVLMServer() as server:
        code = in_process(["--data", str(data), "--labeler", "vlm", "--vlm.base-url", server.base_url,
                           "--out-dir", str(tmp_path / "runs"), "--cache-dir", str(tmp_path / "cache"), *TINY])
        counts = server.counts
    assert code == 2
    assert message in capsys.readouterr().err
    assert counts["requests"] == 0
    assert not (tmp_path / "runs").exists() and not (tmp_path / "cache" / "labels.sqlite").exists()


@pytest.mark.parametrize("rewards, args, message", [
    (False, ["--labeler", "scripted"], "has no rewards, so the scripted teacher cannot label it"),
    (False, ["--labeler", "auto"], "has no rewards, so the scripted teacher cannot label it"),
    (True, ["--segment-length", "31"], "no episode has 31 steps"),
    (True, ["--holdout-fraction", "1.0"], "--holdout-fraction must be in [0, 1)"),
    # The checks shared with the MetaWorld experiment (pipeline.config.validate_updates).
    (True, ["--bc-steps", "150", "--metrics-every", "100"], "--bc-steps (150) must be a non-negative multiple"),
    (True, ["--bias", "0"], "--bias must be in (0, 1]"),
    (True, ["--batch-pairs", "0"], "--batch-pairs must be positive"),
    (True, ["--eval-env", "Pendulum-v1"], "do not match the data's"),
    (True, ["--eval-env", "NoSuchEnv-v0"], "--eval-env 'NoSuchEnv-v0': cannot make the environment"),
])
def test_bad_options_fail_with_clear_message(tmp_path, capsys, rewards, args, message):
    data = toy_dataset(tmp_path / "data", rewards=rewards)
    code = in_process(["--data", str(data), "--out-dir", str(tmp_path / "runs"), *TINY, *args])
    assert code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


def test_vlm_needs_a_camera_and_a_task_text(tmp_path, capsys):
    data = toy_dataset(tmp_path / "data")
    with LoopbackVLMServer() as server:
        vlm = ["--labeler", "vlm", "--vlm.base-url", server.base_url, "--out-dir", str(tmp_path / "runs")]
        assert in_process(["--data", str(data), *vlm, "--camera", "wrist", *TINY]) == 2
        assert "has no camera 'wrist'; it has ['cam']" in capsys.readouterr().err
        assert in_process(["--data", str(data), *vlm, "--task-text", " ", *TINY]) == 2
        assert "the VLM needs a goal text" in capsys.readouterr().err


@pytest.mark.slow
def test_scripted_run_end_to_end_with_export(tmp_path):
    data = toy_dataset(tmp_path / "data")
    proc = run_cli(["--data", str(data), "--run-name", "toy", "--out-dir", "runs", *TINY], tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    run = tmp_path / "runs" / "toy"
    results = json.loads((run / "results.json").read_text())
    assert results["labeler"] == "scripted" and results["labels"]["heldout_pairs"] == 10
    assert results["labels"]["trained_pairs"] + 10 == 40
    for method in ("plare", "bc"):
        acc = results["methods"][method]["heldout_accuracy"]
        assert 0.0 <= acc["mean"] <= 1.0
        assert (run / "seed0" / "export" / method / "policy.npz").exists()
        assert (run / "seed0" / "export" / method / "plare_policy.py").exists()
    records = [json.loads(line) for line in (run / "seed0" / "metrics.jsonl").open()]
    evals = [r for r in records if r.get("eval")]
    assert {r["branch"] for r in evals} == {"bc_phase", "plare", "bc"}
    assert all("heldout_accuracy" in r for r in evals)
    assert (run / "learning_curves.png").stat().st_size > 0
    assert (run / "summary.md").read_text().startswith("| method |")

    # The exported policy acts in the data's units: it equals the checkpoint's jitted policy,
    # normalised as in training.
    from plare_jax.data.recorded import load_recorded
    from plare_jax.export import load_policy
    from plare_jax.learner import make_policy_fn
    from plare_jax.pipeline.labels import LabelerChoice
    from plare_jax.pipeline.offline import OfflineConfig, prepare_data
    from plare_jax.pipeline.train import restore_final_state

    config = OfflineConfig(data=data, labeler="scripted", num_pairs=40, segment_length=10, hidden_dims=(16, 16),
                           batch_pairs=8, bc_batch_size=64, bc_steps=40, method_steps=40, metrics_every=20,
                           eval_every=40, warmup_steps=5, holdout_fraction=0.25)
    ds = load_recorded(data)
    prepared = prepare_data(config, ds, ds.task_text, LabelerChoice("scripted", "test"), None)
    state = restore_final_state(config, prepared, "plare", 0, run / "seed0")
    norm = prepared.kept.normalizer
    expected = norm.actions_from_policy(make_policy_fn(state)(norm.observations(ds.observations[:5])))
    policy = load_policy(run / "seed0" / "export" / "plare" / "policy.npz")
    np.testing.assert_allclose(policy.act(ds.observations[:5]), expected, rtol=1e-5, atol=1e-5)
    assert int(state.step) == 80 and state.phase == "cpl"


@pytest.mark.slow
def test_vlm_labels_from_stored_frames_and_cache(tmp_path):
    data = toy_dataset(tmp_path / "data", rewards=False)
    args = ["--data", str(data), "--labeler", "vlm", "--out-dir", "runs", "--cache-dir", "cache", *TINY]
    with LoopbackVLMServer() as server:
        first = run_cli([*args, "--vlm.base-url", server.base_url, "--run-name", "a"], tmp_path)
        assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
        asked = server.counts["stage1"]
        second = run_cli([*args, "--vlm.base-url", server.base_url, "--run-name", "b"], tmp_path)
        assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
        # each run sends one stage-1 preflight request; the second sends nothing else: every label
        # came from the store
        assert server.counts["stage1"] == asked + 1
    assert asked == 40 + 1
    first_labels = json.loads((tmp_path / "runs" / "a" / "results.json").read_text())["labels"]
    second_labels = json.loads((tmp_path / "runs" / "b" / "results.json").read_text())["labels"]
    assert first_labels["accuracy"] is None  # no rewards: nothing to compare with
    assert second_labels["cache_hits"] == 40
    assert (first_labels["first"], first_labels["second"]) == (second_labels["first"], second_labels["second"])


@pytest.mark.slow
def test_recorded_path_reproduces_the_metaworld_path(tmp_path):
    sys.path.insert(0, str(REPO))
    import importlib

    equivalence = importlib.import_module("experiments.offline_equivalence")
    config = equivalence.EquivalenceConfig(
        env="drawer-open", num_episodes=4, collection_horizon=80, num_pairs=40, segment_length=16,
        hidden_dims=(32, 32), bc_steps=100, method_steps=100, eval_every=100, eval_episodes=2, image_pairs=5,
        out_dir=tmp_path / "eq", cache_dir=tmp_path / "cache", workers=1)
    summary = equivalence.main(config)
    assert summary["checks"] == {"same_pairs": True, "same_labels": True, "same_training_arrays": True,
                                 "same_keyframe_images": True, "same_trained_params": True}
    for method in ("plare", "bc"):
        assert summary["params"][method]["steps"] == [200, 200]
        evaluation = summary["evaluation_in_metaworld"][method]
        assert evaluation["exported_policy_success"] == evaluation["metaworld_path_success"]
        assert evaluation["exported_policy_mean_return"] == pytest.approx(evaluation["metaworld_path_mean_return"],
                                                                          rel=1e-4)
    shutil.rmtree(tmp_path / "eq")


@pytest.mark.slow
def test_recorded_path_never_imports_the_simulator(tmp_path):
    data = toy_dataset(tmp_path / "data")
    code = ("import sys; sys.path.insert(0, %r); import experiments.offline as o; "
            "rc = o.cli(%r); "
            "loaded = [m for m in sys.modules if m.split('.')[0] in ('mujoco', 'metaworld')]; "
            "assert rc == 0 and not loaded, (rc, loaded)") % (
        str(REPO), ["--data", str(data), "--out-dir", str(tmp_path / "runs"), *TINY])
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=HANG_GUARD_S)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]


@pytest.mark.slow
def test_eval_env_and_action_scaling(tmp_path):
    """Pendulum-shaped data (3-dim observation, torque in [-2, 2]): actions leave [-1, 1], so they
    are scaled for the tanh policy and scaled back when the policy acts in the environment."""
    rng = np.random.default_rng(0)
    n, episodes = 120, 4
    theta = rng.uniform(-np.pi, np.pi, n * episodes)
    observations = np.stack([np.cos(theta), np.sin(theta), rng.normal(size=theta.size)], axis=1)
    actions = np.clip(-2.0 * np.sin(theta)[:, None] + rng.normal(0, 0.3, (theta.size, 1)), -2, 2)
    save_recorded(tmp_path / "data", card=make_card(task_text="swing up", fps=20), observations=observations,
                  actions=actions, episode_ids=np.repeat(np.arange(episodes), n),
                  rewards=-np.abs(theta).astype(np.float32))
    args = ["--data", "data", "--run-name", "pendulum", "--out-dir", "runs", "--eval-env", "Pendulum-v1",
            "--eval-env-kwargs", '{"max_episode_steps": 50}', "--eval-episodes", "2", "--eval-horizon", "50",
            *TINY]
    proc = run_cli(args, tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    run = tmp_path / "runs" / "pendulum"
    results = json.loads((run / "results.json").read_text())
    assert json.loads((run / "data_and_labels.json").read_text())["normalization"]["actions"] == "minmax"
    for method in ("plare", "bc"):
        m = results["methods"][method]
        assert m["success_rate"]["mean"] == 0.0  # Pendulum reports no success
        assert -50 * 16.3 <= m["mean_return"]["mean"] < 0  # Pendulum's reward is in [-16.3, 0] per step
    from plare_jax.export import load_policy

    policy = load_policy(run / "seed0" / "export" / "plare" / "policy.npz")
    assert policy.meta["normalization"] == {"observations": "zscore", "actions": "minmax"}
    acts = policy.act(observations[:50])
    assert acts.min() >= -2.0 - 1e-5 and acts.max() <= 2.0 + 1e-5 and np.abs(acts).max() > 1.0


@pytest.mark.slow
def test_every_registered_method_trains_and_exports(tmp_path):
    """Every method of the registry runs on recorded data, and each export equals its jitted policy."""
    from plare_jax.data.recorded import load_recorded
    from plare_jax.export import load_policy
    from plare_jax.methods import METHODS, get_method
    from plare_jax.pipeline.labels import LabelerChoice
    from plare_jax.pipeline.offline import OfflineConfig, prepare_data
    from plare_jax.pipeline.train import restore_final_state

    data = toy_dataset(tmp_path / "data")
    methods = list(METHODS)
    assert in_process(["--data", str(data), "--out-dir", str(tmp_path / "runs"), "--run-name", "all",
                       "--method", *methods, *TINY]) == 0
    run = tmp_path / "runs" / "all"
    results = json.loads((run / "results.json").read_text())
    assert list(results["methods"]) == methods
    config = OfflineConfig(data=data, method=tuple(methods), num_pairs=40, segment_length=10, hidden_dims=(16, 16),
                           batch_pairs=8, bc_batch_size=64, bc_steps=40, method_steps=40, metrics_every=20,
                           eval_every=40, warmup_steps=5, holdout_fraction=0.25)
    ds = load_recorded(data)
    prepared = prepare_data(config, ds, ds.task_text, LabelerChoice("scripted", "test"), None)
    norm = prepared.kept.normalizer
    for name in methods:
        state = restore_final_state(config, prepared, name, 0, run / "seed0")
        expected = norm.actions_from_policy(get_method(name).policy_fn(state)(norm.observations(ds.observations[:6])))
        exported = load_policy(run / "seed0" / "export" / name / "policy.npz").act(ds.observations[:6])
        np.testing.assert_allclose(exported, expected, rtol=1e-5, atol=1e-5, err_msg=name)
        assert 0.0 <= results["methods"][name]["heldout_accuracy"]["mean"] <= 1.0


@pytest.mark.slow
def test_vlm_launch_options_reach_the_launcher_on_recorded_data(tmp_path):
    # The recorded path launches vLLM with the same options as the MetaWorld one: a fake `vllm`
    # (the loopback server stands in for the model) records the argv it was started with.
    exe = write_fake_vllm(tmp_path / "elsewhere")  # not on PATH: only --vlm.executable finds it
    record = tmp_path / "record.json"
    data = toy_dataset(tmp_path / "data", rewards=False)
    env_args = ["--data", str(data), "--labeler", "vlm", "--vlm.launch", "--vlm.executable", str(exe),
                "--vlm.serve-args=--dtype float32 --enforce-eager", "--vlm.model", "fake/vlm",
                "--out-dir", "runs", "--cache-dir", "cache", "--run-name", "launched", *TINY]
    env = {**os.environ, "PYTHONPATH": str(REPO), "FAKE_VLLM_RECORD": str(record)}
    env.pop("PLARE_VLM_BASE_URL", None)
    proc = subprocess.run([sys.executable, str(SCRIPT), *env_args], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=HANG_GUARD_S)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    argv = json.loads(record.read_text())["argv"]
    assert argv[:2] == ["serve", "fake/vlm"]
    assert argv[-3:] == ["--dtype", "float32", "--enforce-eager"]  # --vlm.serve-args, passed last
    results = json.loads((tmp_path / "runs" / "launched" / "results.json").read_text())
    assert results["labeler"] == "vlm" and results["labels"]["pairs"] == 40
    assert (tmp_path / "runs" / "launched" / "vllm.log").exists()


@pytest.mark.slow
def test_ctrl_c_on_recorded_data_exits_130_and_the_resume_command_finishes_the_run(tmp_path):
    data = toy_dataset(tmp_path / "data")
    args = ["--data", str(data), "--run-name", "c", "--out-dir", "runs", "--cache-dir", "cache", *TINY,
            "--bc-steps", "400", "--method-steps", "400", "--eval-every", "100"]
    env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1"}
    env.pop("PLARE_VLM_BASE_URL", None)
    proc = subprocess.Popen([sys.executable, str(SCRIPT), *args], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    metrics = tmp_path / "runs" / "c" / "seed0" / "metrics.jsonl"
    deadline = time.monotonic() + 300  # a hang guard, not a speed check
    while time.monotonic() < deadline and not (metrics.exists() and '"eval": true' in metrics.read_text()):
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    # A run that ignored the signal trains to the end and exits 0: the exit code catches it.
    _, stderr = proc.communicate(timeout=HANG_GUARD_S)  # a hang guard, not a speed check
    assert proc.returncode == 130, stderr[-3000:]
    assert "python experiments/offline.py --resume runs/c" in stderr
    assert "Traceback" not in stderr and "Exception ignored" not in stderr
    assert not (tmp_path / "runs" / "c" / "results.json").exists()
    resumed = run_cli(["--resume", "runs/c"], tmp_path)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert "resuming runs/c" in resumed.stdout
    results = json.loads((tmp_path / "runs" / "c" / "results.json").read_text())
    assert set(results["methods"]) == {"plare", "bc"}
    records = [json.loads(line) for line in metrics.open()]
    assert max(r["step"] for r in records if r["branch"] == "plare") == 800  # trained to the end
    assert (tmp_path / "runs" / "c" / "seed0" / "export" / "plare" / "policy.npz").exists()


def test_resume_of_a_directory_that_is_not_a_recorded_run_is_a_clear_error(tmp_path, capsys):
    (tmp_path / "mw").mkdir()
    (tmp_path / "mw" / "config.json").write_text(json.dumps({"env": ["reach"]}))
    assert in_process(["--resume", str(tmp_path / "mw")]) == 2
    assert "not a recorded-data run" in capsys.readouterr().err
    assert in_process(["--resume", str(tmp_path / "nothing")]) == 2
    assert "not a run directory" in capsys.readouterr().err


def test_data_is_required_without_resume(tmp_path, capsys):
    assert in_process(["--out-dir", str(tmp_path)]) == 2
    assert "--data PATH is required" in capsys.readouterr().err
