"""One process of tests/test_multihost.py: the CPL learner over a mesh spanning 2 processes.

    python tests/multihost_worker.py OUT_DIR PROCESS_ID NUM_PROCESSES PORT

NUM_PROCESSES 1 is the reference: no jax.distributed, one device, the same global batch.
With 2 processes each one starts jax.distributed (gloo CPU collectives, 1 local device),
builds the global data mesh and trains on the same synthetic pairs; the global batch is split
over the processes. Each process writes OUT_DIR/params_<id>.npz (final parameters), the
per-device matmul shapes of the compiled update and a few facts about the run files
(OUT_DIR/report_<id>.json). OUT_DIR/shared is shared by the processes (checkpoints and run files).
"""

from __future__ import annotations

import json
import pathlib
import re
import sys
import time

started = time.perf_counter()
import jax  # noqa: E402

out_dir, process_id, num_processes, port = (pathlib.Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]),
                                            int(sys.argv[4]))
if num_processes > 1:
    # Before anything imports plare_jax: importing it starts a JAX backend.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address=f"127.0.0.1:{port}", num_processes=num_processes,
                               process_id=process_id, initialization_timeout=60)

import numpy as np  # noqa: E402

from plare_jax import checkpoint as ckpt  # noqa: E402
from plare_jax import learner, runs  # noqa: E402
from plare_jax.learner import LearnerConfig, LearnerState, PreferenceData, start_phase, train  # noqa: E402
from plare_jax.sharding import barrier, broadcast_string, experiment_mesh, is_primary, place  # noqa: E402

assert jax.process_count() == num_processes and jax.local_device_count() == 1, jax.devices()
mesh = experiment_mesh()  # every process's devices; None for the 1-device reference
assert (mesh is None) == (num_processes == 1)

rng = np.random.default_rng(0)  # the same data on every process
P, T, O, A = 32, 8, 5, 2
data = PreferenceData.create(rng.normal(size=(P, 2, T, O)), rng.uniform(-1, 1, size=(P, 2, T, A)),
                             rng.integers(0, 2, P))
config = LearnerConfig(hidden_dims=(16, 16), dropout_rate=0.25, warmup_steps=10, learning_rate=1e-3,
                       batch_pairs=8, bc_batch_size=32)
state = start_phase(LearnerState.create(jax.random.key(0), config, O, A), "cpl")
key = jax.random.key(1)
losses, seconds = [], {"start": time.perf_counter() - started}
for _ in range(3):  # 300 CPL updates; blocking on each call's metrics
    state, metrics = train(state, data, key, 100, phase="cpl", metrics_every=50, mesh=mesh)
    losses += np.asarray(jax.device_get(metrics["loss"])).tolist()
    seconds[f"train_{len(seconds)}"] = time.perf_counter() - started
params = [np.asarray(x) for x in jax.tree.leaves(state.params)]
np.savez(out_dir / f"params_{process_id}.npz", *params)

# The per-device program of those updates (the same arguments as train's: no new compilation).
placed = place((state, data, key), mesh)
hlo = learner._train_jit.lower(*placed, num_steps=100, metrics_every=50, phase="cpl", mesh=mesh).compile().as_text()
dot_rows = sorted({int(m) for m in re.findall(r"= f32\[([0-9]+),[0-9]+\]\{[0-9,]*\} dot\(", hlo)})
report = {"losses": losses, "dot_rows": dot_rows, "all_reduce": "all-reduce" in hlo, "primary": is_primary(),
          "seconds": seconds}  # for reading only: the test asserts no timing

if num_processes > 1:
    shared = out_dir / "shared"
    # Checkpoints: every process takes part in orbax's save and restore (it coordinates them).
    manager = ckpt.make_checkpoint_manager(shared / "checkpoints", max_to_keep=2)
    ckpt.save_state(manager, state, force=True)
    target = LearnerState.create(jax.random.key(5), config, O, A)
    restored = ckpt.restore_state(manager, start_phase(target, "cpl"))
    manager.close()
    report["restored_equal"] = all(
        np.array_equal(np.asarray(a), b) for a, b in zip(jax.tree.leaves(restored.params), params))
    report["restored_step"] = int(restored.step)
    # Run files: process 0 writes, the others only keep their records in memory.
    name = broadcast_string(f"run-{process_id}")
    report["run_name"] = name
    run_dir = shared / name
    if is_primary():
        runs.create_run_dir(run_dir, {"writer": process_id})
    barrier("run dir")
    runs.write_json_atomic(run_dir / "results.json", {"writer": process_id})
    log = runs.MetricsLog(run_dir / "metrics.jsonl")
    log.append({"step": 1, "writer": process_id})
    log.append({"step": 2, "writer": process_id})
    log.drop(lambda r: r["step"] > 1)
    report["log_records"] = log.read()
    barrier("files written")
    seconds["files"] = time.perf_counter() - started
(out_dir / f"report_{process_id}.json").write_text(json.dumps(report))
if num_processes > 1:
    jax.distributed.shutdown()
