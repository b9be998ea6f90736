"""Data parallelism over all devices with one `jax.make_mesh` mesh.

Design: the learner state and the (small) dataset are replicated on every device
(`P()`); each training step gathers a minibatch by random indices and constrains it
to `P("data")`, so every device computes the loss of its slice of the batch and XLA
inserts the gradient all-reduce. The same jitted function runs on 1 or N devices;
only the mesh changes. No `pmap`, no `shard_map`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any, TypeVar

import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

__all__ = [
    "DATA_AXIS",
    "make_data_mesh",
    "replicate",
    "place",
    "shard_batch",
    "constrain_batch",
    "check_divisible",
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


def replicate(tree: T, mesh: Mesh | None) -> T:
    """Places every array leaf of `tree` on all devices of `mesh` (no-op without a mesh)."""
    if mesh is None:
        return tree
    return jax.device_put(tree, NamedSharding(mesh, PartitionSpec()))


def place(tree: T, mesh: Mesh | None) -> T:
    """Replicates `tree` over `mesh`, or commits it to the default device without one.

    Committing matters for jit's cache: arrays restored from a checkpoint arrive
    committed to a device while freshly created ones do not, and jit compiles once
    per such placement signature. Putting every input in one placement keeps it
    to one compilation. Already-placed arrays are not copied.
    """
    if mesh is None:
        return jax.device_put(tree, jax.devices()[0])
    return replicate(tree, mesh)


def shard_batch(tree: T, mesh: Mesh | None) -> T:
    """Places `tree` (leading axis = batch) split over the data axis (outside jit)."""
    if mesh is None:
        return tree
    return jax.device_put(tree, NamedSharding(mesh, PartitionSpec(DATA_AXIS)))


def constrain_batch(tree: T, mesh: Mesh | None) -> T:
    """Inside jit: asks XLA to split the leading (batch) axis of every leaf over "data"."""
    if mesh is None:
        return tree
    sharding = NamedSharding(mesh, PartitionSpec(DATA_AXIS))
    return jax.tree.map(lambda x: jax.lax.with_sharding_constraint(x, sharding), tree)


def initialize_distributed(force: bool = False, **kwargs: Any) -> bool:
    """Calls `jax.distributed.initialize` for multi-host runs, only when asked.

    It runs when `force` is True or the environment variable
    `PLARE_DISTRIBUTED=1` is set (cluster launchers such as SLURM or a TPU pod then
    let JAX detect the coordinator; pass `coordinator_address`, `num_processes`,
    `process_id` in `kwargs` otherwise). Must be called before any other JAX call.

    Args:
      force: initialise even without the environment variable.
      **kwargs: forwarded to `jax.distributed.initialize`.

    Returns:
      True if `jax.distributed.initialize` was called.
    """
    if not (force or os.environ.get("PLARE_DISTRIBUTED", "0") == "1"):
        return False
    jax.distributed.initialize(**kwargs)
    return True
