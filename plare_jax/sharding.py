"""Data parallelism over all devices with one `jax.make_mesh` mesh.

Design: the learner state and the (small) dataset are replicated on every device
(`P()`); each training step gathers a minibatch by random indices and constrains it
to `P("data")`, so every device computes the loss of its slice of the batch and XLA
inserts the gradient all-reduce. The same jitted function runs on 1 or N devices;
only the mesh changes. No `pmap`, no `shard_map`.

Multi-host (several processes after `jax.distributed.initialize`): the mesh spans
every process's devices (`jax.devices()`), and `place`/`replicate`/`shard_batch`
build global arrays from each process's host copy with `jax.make_array_from_callback`
(every process must hold the same values: the pipeline derives all data from seeds).
Each process then computes the loss of its devices' slice of every global batch.
`place(tree, None)` brings replicated global arrays back to this process's first
device (e.g. for a local, simulator-driven policy).
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Sequence
from typing import Any, TypeVar

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

__all__ = [
    "DATA_AXIS",
    "make_data_mesh",
    "replicate",
    "place",
    "shard_batch",
    "constrain_batch",
    "check_divisible",
    "num_data_shards",
    "mesh_devices",
    "experiment_mesh",
    "is_primary",
    "barrier",
    "broadcast_string",
    "initialize_distributed",
]

DATA_AXIS = "data"
T = TypeVar("T")


def make_data_mesh(devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A 1-D mesh with axis "data" over `devices` (default: all global devices).

    Args:
      devices: devices to use; None = `jax.devices()` (every host's devices when
        running multi-host after `initialize_distributed`).

    Returns:
      A `Mesh` of shape `(len(devices),)`.
    """
    devices = list(jax.devices() if devices is None else devices)
    if not devices:
        raise ValueError("make_data_mesh needs at least one device")
    # Auto axes: XLA propagates the batch sharding from `constrain_batch` and inserts
    # the gradient all-reduce itself (jax.make_mesh defaults to Explicit axes).
    return jax.make_mesh(
        (len(devices),), (DATA_AXIS,), axis_types=(jax.sharding.AxisType.Auto,), devices=devices
    )


def mesh_devices(local_devices: int | None = None) -> list[jax.Device]:
    """The devices of a data mesh: the first `local_devices` devices of every process.

    Args:
      local_devices: devices per process (None = all of them, `jax.local_device_count()`).

    Returns:
      The devices, process by process (one process: this machine's first N devices).

    Raises:
      ValueError: `local_devices` is below 1 or above this process's device count.
    """
    available = jax.local_device_count()
    count = available if local_devices is None else int(local_devices)
    if count < 1:
        raise ValueError(f"the data mesh needs at least 1 device per process, got {count}")
    if count > available:
        kind = jax.local_devices()[0].platform
        raise ValueError(
            f"{count} devices per process asked, but this process has only {available} local "
            f"{kind} device{'s' if available != 1 else ''} ({', '.join(str(d) for d in jax.local_devices())}); "
            f"use at most {available}"
            + (" (on CPU, XLA_FLAGS=--xla_force_host_platform_device_count=N gives N devices)"
               if kind == "cpu" else ""))
    by_process: dict[int, list[jax.Device]] = {}
    for device in jax.devices():
        by_process.setdefault(device.process_index, []).append(device)
    return [d for p in sorted(by_process) for d in sorted(by_process[p], key=lambda d: d.id)[:count]]


def experiment_mesh(local_devices: int | None = None) -> Mesh | None:
    """The data mesh an experiment trains on, or None when it would have a single device.

    None for one device keeps the single-device runs on exactly the code path (and numbers)
    they had before data parallelism existed; a 1-device mesh gives the same numbers too
    (tests/test_data_parallel.py), None just avoids the extra placement work.

    Args:
      local_devices: devices per process (None = all local devices); see `mesh_devices`.
    """
    devices = mesh_devices(local_devices)
    return None if len(devices) == 1 else make_data_mesh(devices)


def num_data_shards(mesh: Mesh | None) -> int:
    """Number of devices the batch is split over (1 without a mesh)."""
    return 1 if mesh is None else mesh.shape[DATA_AXIS]


def check_divisible(batch_size: int, mesh: Mesh | None, what: str = "batch size") -> None:
    """Raises ValueError unless `batch_size` splits evenly over the mesh's data axis."""
    shards = num_data_shards(mesh)
    if batch_size % shards:
        raise ValueError(
            f"{what} {batch_size} is not divisible by the {shards} devices of the data axis; "
            f"choose a multiple of {shards} (or use fewer devices)"
        )


def _is_key(x: Any) -> bool:
    return isinstance(x, jax.Array) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)


def _to_global(x: Any, sharding: NamedSharding) -> Any:
    """One leaf as a global array of `sharding` (multi-process), from this process's copy."""
    if _is_key(x):
        data = _to_global(jax.random.key_data(x), sharding)
        return jax.random.wrap_key_data(data, impl=jax.random.key_impl(x))
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
        return jax.device_put(x, sharding)  # already global: at most a reshard
    host = np.asarray(x)
    return jax.make_array_from_callback(host.shape, sharding, lambda index: np.asarray(host[index]))


def _to_local(x: Any) -> Any:
    """A replicated global leaf as this process's copy (other leaves unchanged)."""
    if not isinstance(x, jax.Array) or x.is_fully_addressable:
        return x
    if not x.is_fully_replicated:
        raise ValueError(f"cannot bring a sharded global array ({x.sharding}) to one process; "
                         "replicate it first")
    if _is_key(x):
        return jax.random.wrap_key_data(_to_local(jax.random.key_data(x)), impl=jax.random.key_impl(x))
    return x.addressable_data(0)


def _multiprocess(mesh: Mesh) -> bool:
    return any(d.process_index != jax.process_index() for d in mesh.devices.flat)


def _put(tree: T, sharding: NamedSharding) -> T:
    if not _multiprocess(sharding.mesh):
        return jax.device_put(tree, sharding)
    return jax.tree.map(lambda x: _to_global(x, sharding), tree)


def replicate(tree: T, mesh: Mesh | None) -> T:
    """Places every array leaf of `tree` on all devices of `mesh` (no-op without a mesh).

    With a mesh over several processes the leaves become global arrays built from this
    process's values (which must be the same on every process).
    """
    if mesh is None:
        return tree
    return _put(tree, NamedSharding(mesh, PartitionSpec()))


def place(tree: T, mesh: Mesh | None) -> T:
    """Replicates `tree` over `mesh`, or commits it to the default device without one.

    Committing matters for jit's cache: arrays restored from a checkpoint arrive
    committed to a device while freshly created ones do not, and jit compiles once
    per such placement signature. Putting every input in one placement keeps it
    to one compilation. Already-placed arrays are not copied.

    Without a mesh in a multi-process run, replicated global arrays come back as this
    process's copy, on its first local device (the same device as `jax.devices()[0]`
    in a single process).
    """
    if mesh is None:
        if jax.process_count() > 1:
            tree = jax.tree.map(_to_local, tree)
        return jax.device_put(tree, jax.local_devices()[0])
    return replicate(tree, mesh)


def shard_batch(tree: T, mesh: Mesh | None) -> T:
    """Places `tree` (leading axis = batch) split over the data axis (outside jit).

    Multi-process: every process passes the whole global batch and keeps its devices' rows.
    """
    if mesh is None:
        return tree
    return _put(tree, NamedSharding(mesh, PartitionSpec(DATA_AXIS)))


def constrain_batch(tree: T, mesh: Mesh | None) -> T:
    """Inside jit: asks XLA to split the leading (batch) axis of every leaf over "data"."""
    if mesh is None:
        return tree
    sharding = NamedSharding(mesh, PartitionSpec(DATA_AXIS))
    return jax.tree.map(lambda x: jax.lax.with_sharding_constraint(x, sharding), tree)


def is_primary() -> bool:
    """Whether this process writes shared files: always in a single process, else process 0.

    Does not start a JAX backend in a single process (safe before `jax.distributed.initialize`).
    """
    return not jax.distributed.is_initialized() or jax.process_index() == 0


_barriers = itertools.count()


def barrier(name: str, timeout_s: float = 24 * 3600.0) -> None:
    """Waits until every process got here (no-op in a single process).

    Uses the coordination service's barrier (no device collective, so a long wait such as
    process 0 collecting data does not run into a collective's timeout). Every process
    must call the barriers in the same order.
    """
    if not jax.distributed.is_initialized() or jax.process_count() == 1:
        return
    from jax._src import distributed  # the client of jax.distributed.initialize

    barrier_id = f"plare_jax:{next(_barriers)}:{name}"
    client = distributed.global_state.client
    if client is None:  # pragma: no cover - initialised by another mechanism
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(barrier_id)
        return
    client.wait_at_barrier(barrier_id, int(timeout_s * 1000))


def broadcast_string(value: str | None, max_bytes: int = 4096) -> str | None:
    """Process 0's `value` on every process (identity in a single process)."""
    if not jax.distributed.is_initialized() or jax.process_count() == 1:
        return value
    from jax.experimental import multihost_utils

    raw = b"" if value is None else value.encode()
    if len(raw) >= max_bytes:
        raise ValueError(f"broadcast_string: {len(raw)} bytes, at most {max_bytes - 1}")
    buffer = np.zeros(max_bytes + 1, np.uint8)  # last byte: 1 = None
    buffer[:len(raw)] = np.frombuffer(raw, np.uint8)
    buffer[-1] = value is None
    out = np.asarray(multihost_utils.broadcast_one_to_all(buffer))
    if out[-1]:
        return None
    return bytes(out[:-1]).rstrip(b"\0").decode()


def initialize_distributed(force: bool = False, **kwargs: Any) -> bool:
    """Calls `jax.distributed.initialize` for multi-host runs, only when asked.

    It runs when `force` is True or the environment variable
    `PLARE_DISTRIBUTED=1` is set (cluster launchers such as SLURM or a TPU pod then
    let JAX detect the coordinator; pass `coordinator_address`, `num_processes`,
    `process_id` in `kwargs` otherwise). CPU collectives use gloo (set before the
    call; without it a multi-process CPU computation has no cross-process collectives).

    Must be called before any JAX computation starts a backend. Note that importing
    `plare_jax` itself does (its module-level configs run a jnp check), so a program
    that imports `plare_jax` before calling this gets a RuntimeError: start
    `jax.distributed` with plain `jax` first, as experiments/metaworld.py and
    tests/multihost_worker.py do.

    Args:
      force: initialise even without the environment variable.
      **kwargs: forwarded to `jax.distributed.initialize`.

    Returns:
      True if `jax.distributed.initialize` was called.
    """
    if not (force or os.environ.get("PLARE_DISTRIBUTED", "0") == "1"):
        return False
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(**kwargs)
    return True
