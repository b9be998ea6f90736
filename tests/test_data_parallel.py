"""The experiment's training stage on a data mesh (--devices): every branch, the shared BC phase
included, trains on it; one device in all keeps today's numbers; two forced CPU devices each
compute half of every batch and end where one device does.

The 2-device check runs in a subprocess (XLA_FLAGS must be set before jax starts), with few
steps per call and a block after each (run_branch fetches every window's metrics): with forced
host devices on 2 cores, queued all-reduces can abort with an XLA rendezvous timeout.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import re
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest

from plare_jax import iql, learner
from plare_jax.methods.base import TrainingData
from plare_jax.pipeline.config import ConfigError, ExperimentConfig, validate
from plare_jax.pipeline.data import TaskData
from plare_jax.pipeline.run import run, training_mesh
from plare_jax.pipeline.train import train_seed
from plare_jax.sharding import experiment_mesh, make_data_mesh
from tests.hang_guard import HANG_GUARD_S

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
O, A = 4, 2
SEG = 6
# Batch rows that no layer width shares, so the compiled matmuls' row counts identify the batch:
# BC 64 rows (32 per device on 2), CPL 4 pairs x 2 segments x 6 steps = 48 rows (24 per device).
HIDDEN = (20, 20)
FIXED_OBS = np.random.default_rng(123).normal(size=(8, O)).astype(np.float32)


def tiny_task_data(seed: int = 0, num_episodes: int = 6, episode_len: int = 20, num_pairs: int = 24) -> TaskData:
    """A synthetic task: random observations, actions that follow them, labels from the actions."""
    rng = np.random.default_rng(seed)
    n = num_episodes * episode_len
    obs = rng.normal(size=(n, O)).astype(np.float32)
    actions = np.tanh(obs[:, :A] + 0.3 * rng.normal(size=(n, A))).astype(np.float32)
    episode_ids = np.repeat(np.arange(num_episodes, dtype=np.int32), episode_len)
    has_next = np.ones(n, bool)
    has_next[episode_len - 1::episode_len] = False
    next_obs = np.where(has_next[:, None], np.roll(obs, -1, axis=0), obs)
    episodes = rng.integers(0, num_episodes, size=(num_pairs, 2))
    starts = rng.integers(0, episode_len - SEG + 1, size=(num_pairs, 2))
    pair_rows = episodes[..., None] * episode_len + starts[..., None] + np.arange(SEG)
    score = actions[pair_rows, 0].sum(-1)
    training = TrainingData(
        observations=obs, actions=actions, next_observations=next_obs, has_next=has_next,
        terminals=np.zeros(n, np.float32), episode_ids=episode_ids,
        pair_observations=obs[pair_rows], pair_actions=actions[pair_rows],
        labels=(score[:, 1] > score[:, 0]).astype(np.float32), weights=np.ones(num_pairs, np.float32),
        pair_mask=np.ones((num_pairs, 2, SEG), np.float32), pair_rows=pair_rows.astype(np.int64),
        episode_scores=rng.uniform(size=num_episodes).astype(np.float32))
    return TaskData("synthetic", training, {"data_seed": 0})


def tiny_config(**overrides) -> ExperimentConfig:
    base = dict(method=("plare", "bc"), hidden_dims=HIDDEN, batch_pairs=4, bc_batch_size=64, warmup_steps=5,
                learning_rate=1e-3, bc_steps=20, method_steps=20, metrics_every=10, eval_every=20, video=False,
                segment_length=SEG)
    return dataclasses.replace(ExperimentConfig(), **{**base, **overrides})


def mean_action_evaluator(policy_fn, video_path, *, final: bool = False) -> dict:
    """A real evaluation without a simulator: the policy's actions on fixed observations."""
    actions = np.asarray(policy_fn(FIXED_OBS))
    return {"mean_action": float(actions.mean()), "actions": actions.ravel().tolist()}


class TrainCalls:
    """Records every scanned training call the methods make (arguments and resulting state)."""

    def __init__(self, monkeypatch=None):
        self.calls: list[dict] = []
        for module, name in ((learner, "_train_jit"), (iql, "train")):
            self._patch(module, name, monkeypatch)

    def _patch(self, module, name, monkeypatch):
        real = getattr(module, name)

        def spy(state, data, key, **kwargs):
            out = real(state, data, key, **kwargs)
            self.calls.append({"fn": real, "name": name, "args": (state, data, key), "kwargs": kwargs,
                               "state": out[0]})
            return out

        if monkeypatch is not None:
            monkeypatch.setattr(module, name, spy)
        else:
            setattr(module, name, spy)

    def params(self) -> list[list[np.ndarray]]:
        """The policy parameters after each call (rlvlmf's: its actor's)."""
        policies = [c["state"].actor_params if isinstance(c["state"], iql.IQLState) else c["state"].params
                    for c in self.calls]
        return [[np.asarray(x) for x in jax.tree.leaves(policy)] for policy in policies]


def dot_rows(call: dict) -> set[int]:
    """Row counts of the matmuls in the per-device program XLA compiled for a recorded call."""
    hlo = call["fn"].lower(*call["args"], **call["kwargs"]).compile().as_text()
    return {int(m) for m in re.findall(r"= f32\[([0-9]+),[0-9]+\]\{[0-9,]*\} dot\(", hlo)}


def run_stage(config, data, unit_dir, mesh, calls: TrainCalls) -> tuple[dict, list]:
    start = len(calls.calls)
    result = train_seed(config, data, 0, unit_dir, evaluate_fn=mean_action_evaluator, mesh=mesh)
    recorded = calls.calls[start:]
    return result, recorded


def test_one_device_trains_without_a_mesh_and_a_one_device_mesh_changes_no_bit(tmp_path, monkeypatch):
    assert jax.device_count() == 1  # the ordinary test process
    assert experiment_mesh() is None and experiment_mesh(1) is None  # --devices default/1: today's path
    assert training_mesh(tiny_config()) is None
    calls = TrainCalls(monkeypatch)
    data, config = tiny_task_data(), tiny_config(method=("plare", "bc"))
    plain, plain_calls = run_stage(config, data, tmp_path / "plain", None, calls)
    plain_params = calls.params()
    calls.calls.clear()
    meshed, meshed_calls = run_stage(config, data, tmp_path / "mesh", make_data_mesh(jax.devices()[:1]), calls)
    meshed_params = calls.params()
    # shared BC phase, plare (CPL), bc: 2 windows each, and each got the mesh it was given
    assert [c["kwargs"]["phase"] for c in meshed_calls] == ["bc", "bc", "cpl", "cpl", "bc", "bc"]
    assert all(c["kwargs"]["mesh"] is None for c in plain_calls)
    assert all(c["kwargs"]["mesh"] is not None and c["kwargs"]["mesh"].size == 1 for c in meshed_calls)
    assert len(plain_params) == len(meshed_params) == 6
    for a, b in zip(plain_params, meshed_params):
        for x, y in zip(a, b):
            np.testing.assert_array_equal(x, y)  # bit for bit
    for name in ("plare", "bc"):
        assert plain["methods"][name]["actions"] == meshed["methods"][name]["actions"]
    assert plain["methods"]["plare"]["actions"] != plain["methods"]["bc"]["actions"]  # the branches differ


def test_devices_option_is_checked_before_any_work(tmp_path):
    with pytest.raises(ConfigError, match="--devices must be at least 1"):
        validate(tiny_config(devices=0))
    with pytest.raises(ConfigError, match=r"--devices 2: 2 devices per process asked, but this process has only 1"):
        training_mesh(tiny_config(devices=2))
    # run() stops there: no run directory, nothing collected
    config = tiny_config(devices=2, env=("sweep-into",), out_dir=tmp_path / "runs", cache_dir=tmp_path / "cache",
                         run_name="never")
    with pytest.raises(ConfigError, match="--devices 2"):
        run(config)
    assert not (tmp_path / "runs" / "never").exists()


def test_multi_host_options_are_validated(tmp_path):
    with pytest.raises(ConfigError, match="missing --num-processes, --process-id"):
        validate(tiny_config(coordinator_address="127.0.0.1:1234"))
    with pytest.raises(ConfigError, match="HOST:PORT"):
        validate(tiny_config(coordinator_address="127.0.0.1", num_processes=2, process_id=0))
    with pytest.raises(ConfigError, match="--process-id must be in 0 .. --num-processes - 1, got 2"):
        validate(tiny_config(coordinator_address="127.0.0.1:1234", num_processes=2, process_id=2))
    validate(tiny_config(coordinator_address="127.0.0.1:1234", num_processes=2, process_id=1))
    validate(tiny_config(distributed=True))
    # Asked for, but jax.distributed cannot start once JAX runs (this process imported plare_jax):
    with pytest.raises(ConfigError, match="jax.distributed must start before JAX is first used"):
        training_mesh(tiny_config(distributed=True))


TWO_DEVICE_SCRIPT = textwrap.dedent(
    """
    import dataclasses, json, pathlib, sys, tempfile
    import jax, numpy as np
    sys.path.insert(0, "tests")
    from test_data_parallel import TrainCalls, dot_rows, run_stage, tiny_config, tiny_task_data
    from plare_jax.methods import rlvlmf
    from plare_jax.pipeline.config import ConfigError, MethodOptions
    from plare_jax.pipeline.run import training_mesh

    assert jax.device_count() == 2, jax.devices()
    out = {}
    config = tiny_config()
    mesh = training_mesh(config)  # --devices default: all local devices
    out["mesh_devices"] = [d.id for d in mesh.devices.flat]
    calls = TrainCalls()
    data = tiny_task_data()
    tmp = pathlib.Path(tempfile.mkdtemp())
    runs = {}
    for name, m in [("single", None), ("two", mesh)]:
        result, recorded = run_stage(config, data, tmp / name, m, calls)
        runs[name] = {"result": result, "calls": recorded}
    params = calls.params()
    half = len(params) // 2
    out["params"] = {"single": [[p.ravel().tolist() for p in ps] for ps in params[:half]],
                     "two": [[p.ravel().tolist() for p in ps] for ps in params[half:]]}
    out["phases"] = [c["kwargs"]["phase"] for c in runs["two"]["calls"]]
    out["meshes"] = [None if c["kwargs"]["mesh"] is None else c["kwargs"]["mesh"].size
                     for r in ("single", "two") for c in runs[r]["calls"]]
    first = {(r, c["kwargs"]["phase"]): c for r in ("single", "two") for c in reversed(runs[r]["calls"])}
    out["rows"] = {f"{r}_{phase}": sorted(dot_rows(c)) for (r, phase), c in first.items()}
    out["actions"] = {r: {m: runs[r]["result"]["methods"][m]["actions"] for m in ("plare", "bc")} for r in runs}
    out["replicated"] = [bool(x.sharding.is_fully_replicated) and len(x.sharding.device_set) == 2
                         for x in jax.tree.leaves(runs["two"]["calls"][-1]["state"].params)]

    def error(**overrides):
        try:
            training_mesh(tiny_config(**overrides))
            return ""
        except ConfigError as e:
            return str(e)

    out["errors"] = {
        "too_many": error(devices=3),
        "pairs": error(devices=2, batch_pairs=5),
        "rlvlmf": error(method=("rlvlmf",), methods=dataclasses.replace(MethodOptions(), rlvlmf=dataclasses.replace(rlvlmf.QUICK, batch_size=255))),
        "unused_pairs": error(method=("bc",), batch_pairs=5),
        "one_device": error(devices=1, batch_pairs=5, bc_batch_size=63),
    }
    print("RESULT" + json.dumps(out))
    """
)


@pytest.mark.slow
def test_training_stage_on_two_forced_cpu_devices_splits_each_batch_and_matches_one_device():
    env = dict(os.environ)
    env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=2").strip()
    env["JAX_PLATFORMS"] = "cpu"
    env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    proc = subprocess.run([sys.executable, "-c", TWO_DEVICE_SCRIPT], env=env, cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=HANG_GUARD_S)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(next(l for l in proc.stdout.splitlines() if l.startswith("RESULT"))[len("RESULT"):])
    assert out["mesh_devices"] == [0, 1]
    # Every window of every branch (shared BC phase, plare, bc) got the mesh: none in the 1-device run.
    assert out["phases"] == ["bc", "bc", "cpl", "cpl", "bc", "bc"]
    assert out["meshes"] == [None] * 6 + [2] * 6
    # Each device computes half of every batch: BC 64 rows -> 32 per device, CPL 48 -> 24.
    assert 64 in out["rows"]["single_bc"] and 32 not in out["rows"]["single_bc"], out["rows"]
    assert 32 in out["rows"]["two_bc"] and 64 not in out["rows"]["two_bc"], out["rows"]
    assert 48 in out["rows"]["single_cpl"] and 24 not in out["rows"]["single_cpl"], out["rows"]
    assert 24 in out["rows"]["two_cpl"] and 48 not in out["rows"]["two_cpl"], out["rows"]
    assert all(out["replicated"])
    for single, two in zip(out["params"]["single"], out["params"]["two"]):
        for a, b in zip(single, two):
            np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-5)
    for method in ("plare", "bc"):
        np.testing.assert_allclose(out["actions"]["two"][method], out["actions"]["single"][method],
                                   rtol=1e-4, atol=1e-5)
    errors = out["errors"]
    assert "--devices 3: 3 devices per process asked, but this process has only 2 local cpu devices" \
        in errors["too_many"]
    assert "--batch-pairs 5 (use a multiple of 2, e.g. 4 or 6)" in errors["pairs"], errors["pairs"]
    assert "or choose --devices 1" in errors["pairs"]
    assert "--rlvlmf.batch-size 255 (use a multiple of 2, e.g. 254 or 256)" in errors["rlvlmf"], errors["rlvlmf"]
    assert errors["unused_pairs"] == ""  # bc alone never trains on pairs
    assert errors["one_device"] == ""  # one device: no mesh, any batch size
