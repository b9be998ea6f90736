"""Data-parallel training on 2 forced CPU devices equals 1-device training.

The 2-device check runs in a subprocess because XLA_FLAGS must be set before jax
is imported. It is kept short and blocks between calls: with forced host devices
on 2 cores, queuing many all-reduce steps asynchronously can abort with an XLA
rendezvous timeout.
"""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import numpy as np
import pytest

from plare_jax.learner import LearnerConfig, LearnerState, PreferenceData, start_phase, train
from plare_jax.sharding import (
    check_divisible,
    constrain_batch,
    make_data_mesh,
    replicate,
)
from tests.hang_guard import HANG_GUARD_S

REPO_ROOT = Path(__file__).resolve().parents[1]

TWO_DEVICE_SCRIPT = textwrap.dedent(
    """
    import json, os, re
    import jax, numpy as np
    from plare_jax.sharding import place
    from plare_jax import learner
    from plare_jax.learner import LearnerConfig, LearnerState, PreferenceData, start_phase, train
    from plare_jax.sharding import make_data_mesh

    assert jax.device_count() == 2, jax.devices()
    rng = np.random.default_rng(0)
    P, T, O, A = 24, 8, 6, 2
    data = PreferenceData.create(
        rng.normal(size=(P, 2, T, O)), rng.uniform(-1, 1, size=(P, 2, T, A)), rng.integers(0, 2, P)
    )
    config = LearnerConfig(hidden_dims=(32, 32), dropout_rate=0.25, warmup_steps=2, learning_rate=1e-3,
                           batch_pairs=8, bc_batch_size=64)
    initial = LearnerState.create(jax.random.key(0), config, O, A)
    key = jax.random.key(1)
    results, metrics = {}, {}
    for name, mesh in [("single", None), ("two", make_data_mesh())]:
        state, _ = train(initial, data, key, 4, phase="bc", metrics_every=2, mesh=mesh)
        jax.block_until_ready(state)
        state = start_phase(state, "cpl")
        state, m = train(state, data, key, 4, phase="cpl", metrics_every=2, mesh=mesh)
        jax.block_until_ready(state)
        results[name] = [np.asarray(x).ravel().tolist() for x in jax.tree.leaves(state.params)]
        metrics[name] = np.asarray(m["loss"]).tolist()
        sharding = jax.tree.leaves(state.params)[0].sharding
    mesh = make_data_mesh()
    odd = start_phase(LearnerState.create(jax.random.key(0), LearnerConfig(hidden_dims=(8,), batch_pairs=7), O, A), "cpl")
    try:
        train(odd, data, key, 2, phase="cpl", metrics_every=2, mesh=mesh)
        odd_error = ""
    except ValueError as err:
        odd_error = str(err)
    def compiled_hlo(mesh):
        s, d, k = place((start_phase(initial, "cpl"), data, key), mesh)
        return learner._train_jit.lower(s, d, k, num_steps=2, metrics_every=2, phase="cpl",
                                        mesh=mesh).compile().as_text()

    def dot_shapes(hlo):
        # result shapes of every matmul of the per-device program XLA compiled
        return sorted(set(re.findall(r"= f32\\[([0-9,]+)\\]\\{[0-9,]*\\} dot\\(", hlo)))

    hlo = compiled_hlo(mesh)
    print("RESULT" + json.dumps({
        "dots_two": dot_shapes(hlo), "dots_single": dot_shapes(compiled_hlo(None)),
        "params": results, "loss": metrics, "all_reduce": "all-reduce" in hlo,
        "replicated": sharding.is_fully_replicated, "odd_error": odd_error, "num_devices": len(sharding.device_set),
    }))
    """
)


@pytest.mark.slow
def test_two_forced_cpu_devices_match_one_device():
    env = dict(os.environ)
    env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=2").strip()
    env["JAX_PLATFORMS"] = "cpu"
    env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    proc = subprocess.run(
        [sys.executable, "-c", TWO_DEVICE_SCRIPT], env=env, capture_output=True, text=True, timeout=HANG_GUARD_S
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = next(l for l in proc.stdout.splitlines() if l.startswith("RESULT"))
    out = json.loads(line[len("RESULT") :])
    assert out["all_reduce"], "the 2-device program should all-reduce the gradients"
    # Each device must compute its half of the batch: 8 pairs x 2 segments x 8 steps = 128 rows
    # on one device, 64 per device on two. A program where every device ran the whole batch
    # (and all-reduced anyway) would show 128-row matmuls here.
    rows_single = {int(shape.split(",")[0]) for shape in out["dots_single"]}
    rows_two = {int(shape.split(",")[0]) for shape in out["dots_two"]}
    assert 128 in rows_single and 64 not in rows_single, out["dots_single"]
    assert 64 in rows_two and 128 not in rows_two, out["dots_two"]
    assert {"64,32", "64,2"} <= set(out["dots_two"]), out["dots_two"]
    assert out["replicated"] and out["num_devices"] == 2
    assert "batch_pairs 7 is not divisible by the 2 devices" in out["odd_error"]
    for single, two in zip(out["params"]["single"], out["params"]["two"]):
        np.testing.assert_allclose(two, single, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(out["loss"]["two"], out["loss"]["single"], rtol=1e-5)


def test_one_device_mesh_runs_the_same_code_path():
    rng = np.random.default_rng(0)
    data = PreferenceData.create(
        rng.normal(size=(12, 2, 4, 5)), rng.uniform(-1, 1, size=(12, 2, 4, 2)), rng.integers(0, 2, 12)
    )
    config = LearnerConfig(hidden_dims=(16,), warmup_steps=1, batch_pairs=4, bc_batch_size=16)
    state = start_phase(LearnerState.create(jax.random.key(0), config, 5, 2), "cpl")
    mesh = make_data_mesh(jax.devices()[:1])
    meshed, _ = train(state, data, jax.random.key(1), 4, phase="cpl", metrics_every=2, mesh=mesh)
    plain, _ = train(state, data, jax.random.key(1), 4, phase="cpl", metrics_every=2)
    for a, b in zip(jax.tree.leaves(meshed.params), jax.tree.leaves(plain.params)):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    assert jax.tree.leaves(meshed.params)[0].sharding.mesh.axis_names == ("data",)


def test_helpers_are_no_ops_without_mesh_and_check_divisibility():
    tree = {"x": np.ones((4, 3))}
    assert replicate(tree, None) is tree
    assert constrain_batch(tree, None) is tree
    check_divisible(7, None)  # one device: anything goes
    mesh = make_data_mesh()
    if mesh.shape["data"] > 1:
        with pytest.raises(ValueError, match="divisible"):
            check_divisible(mesh.shape["data"] + 1, mesh)


def test_batch_not_divisible_by_devices_is_a_clear_error():
    # A fake 3-device "mesh" shape is enough to exercise the check used by train().
    class FakeMesh:
        shape = {"data": 3}

    with pytest.raises(ValueError, match="batch_pairs 8 is not divisible by the 3 devices"):
        check_divisible(8, FakeMesh(), "batch_pairs")


DISTRIBUTED_SCRIPT = textwrap.dedent(
    """
    import socket, sys
    import jax
    from plare_jax.sharding import initialize_distributed

    sock = socket.socket(); sock.bind(("127.0.0.1", 0)); port = sock.getsockname()[1]; sock.close()
    called = initialize_distributed(coordinator_address=f"127.0.0.1:{port}", num_processes=1, process_id=0)
    print("RESULT", called, jax.distributed.is_initialized())
    if called:
        jax.distributed.shutdown()
    """
)


@pytest.mark.parametrize("flag,expected", [(None, "False False"), ("1", "True True")])
def test_initialize_distributed_only_when_the_environment_asks(flag, expected):
    # A real single-process jax.distributed run with a local coordinator, in a
    # subprocess because initialisation must precede any other JAX call.
    env = dict(os.environ)
    env.pop("PLARE_DISTRIBUTED", None)
    if flag is not None:
        env["PLARE_DISTRIBUTED"] = flag
    env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    proc = subprocess.run(
        [sys.executable, "-c", DISTRIBUTED_SCRIPT], env=env, capture_output=True, text=True, timeout=HANG_GUARD_S
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"RESULT {expected}" in proc.stdout
