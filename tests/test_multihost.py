"""Multi-host data parallelism on one machine: 2 processes, jax.distributed with gloo CPU
collectives, one device each, train the CPL learner over one global mesh (tests/multihost_worker.py).

Both must end with the same parameters, equal (to float tolerance) to one process training on the
same global batch; each process's compiled update must work on half the batch; orbax checkpoints
are written and read by both together; only process 0 writes run files.
"""

from __future__ import annotations

import json
import os
import pathlib
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from tests.hang_guard import HANG_GUARD_S

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
WORKER = REPO_ROOT / "tests" / "multihost_worker.py"
TIMEOUT_S = HANG_GUARD_S


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start(out_dir: pathlib.Path, process_id: int, num_processes: int, port: int, env: dict) -> subprocess.Popen:
    out_dir.mkdir(parents=True, exist_ok=True)
    with open(out_dir / f"log_{process_id}.txt", "w") as log:  # the child keeps its own copy
        return subprocess.Popen([sys.executable, str(WORKER), str(out_dir), str(process_id),
                                 str(num_processes), str(port)],
                                env=env, cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT)


@pytest.mark.slow
def test_cpl_learner_over_two_processes_matches_one_process(tmp_path):
    env = dict(os.environ)
    env["JAX_PLATFORMS"] = "cpu"
    env["XLA_FLAGS"] = " ".join(f for f in env.get("XLA_FLAGS", "").split()
                                if not f.startswith("--xla_force_host_platform_device_count"))
    env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.pop("PLARE_DISTRIBUTED", None)
    multi, single = tmp_path / "multi", tmp_path / "single"
    port = free_port()
    procs = {("multi", 0): start(multi, 0, 2, port, env), ("multi", 1): start(multi, 1, 2, port, env),
             ("single", 0): start(single, 0, 1, 0, env)}
    deadline = time.monotonic() + TIMEOUT_S
    try:
        for proc in procs.values():
            proc.wait(timeout=max(1.0, deadline - time.monotonic()))
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    for (kind, i), proc in procs.items():
        log = (tmp_path / kind / f"log_{i}.txt").read_text()
        assert proc.returncode == 0, f"{kind} process {i}:\n{log[-3000:]}"

    params = [np.load(multi / f"params_{i}.npz") for i in range(2)]
    reference = np.load(single / "params_0.npz")
    assert len(reference.files) == 6  # 3 layers: kernels and biases
    for name in reference.files:
        np.testing.assert_array_equal(params[0][name], params[1][name])  # one replicated state
        np.testing.assert_allclose(params[0][name], reference[name], rtol=1e-5, atol=1e-6)
    reports = [json.loads((multi / f"report_{i}.json").read_text()) for i in range(2)]
    ref_report = json.loads((single / "report_0.json").read_text())
    assert len(ref_report["losses"]) == 6  # 300 CPL updates, averaged over windows of 50
    assert ref_report["losses"][-1] < ref_report["losses"][0]  # it learned
    for report in reports:
        np.testing.assert_allclose(report["losses"], ref_report["losses"], rtol=1e-5)
        # 8 pairs x 2 segments x 8 steps = 128 rows per update: 64 on each process's device.
        assert 64 in report["dot_rows"] and 128 not in report["dot_rows"], report["dot_rows"]
        assert report["all_reduce"]
        assert report["restored_equal"] and report["restored_step"] == 300
        assert report["run_name"] == "run-0"  # process 0's value, broadcast
    assert 128 in ref_report["dot_rows"] and 64 not in ref_report["dot_rows"], ref_report["dot_rows"]
    assert [r["primary"] for r in reports] == [True, False]

    # Process 0 alone wrote the run files; process 1 kept its metrics records in memory.
    run_dir = multi / "shared" / "run-0"
    assert json.loads((run_dir / "config.json").read_text()) == {"writer": 0}
    assert json.loads((run_dir / "results.json").read_text()) == {"writer": 0}
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert lines == [{"step": 1, "writer": 0}]
    assert reports[0]["log_records"] == [{"step": 1, "writer": 0}]
    assert reports[1]["log_records"] == [{"step": 1, "writer": 1}]
    assert sorted(p.name for p in (multi / "shared").iterdir()) == ["checkpoints", "run-0"]
