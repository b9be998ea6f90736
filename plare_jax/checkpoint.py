"""Saving and resuming training states with an orbax `CheckpointManager`.

Any method state works: a `flax.struct.PyTreeNode` with an int `step` field. Its array
fields (for `LearnerState`: step, phase_step, params, opt_state) are written, plus a small
JSON record (step, and phase and config where the state has them) next to it. Restoring goes
against the abstract tree of a freshly created target state, so the optax states
come back as their own types (e.g. `optax.ScaleByAdamState`), not as dicts, and
the arrays keep the target's shardings.
"""

from __future__ import annotations

import dataclasses
import os
import warnings
from typing import Any

import jax
import orbax.checkpoint as ocp

from plare_jax.errors import PlareError
from plare_jax.learner import PHASES, LearnerState

__all__ = ["make_checkpoint_manager", "save_state", "restore_state", "latest_step", "CheckpointLayoutError"]


class CheckpointLayoutError(PlareError, ValueError):
    """A checkpoint whose arrays are laid out unlike the state it is restored into (written by
    another method or by an older version of this method's state)."""

_ARRAYS = "state"
_META = "meta"


def make_checkpoint_manager(
    directory: str | os.PathLike,
    *,
    max_to_keep: int | None = 3,
    save_interval_steps: int = 1,
) -> ocp.CheckpointManager:
    """An orbax manager for learner states under `directory` (created if missing).

    Args:
      directory: checkpoint folder; each saved step becomes a subfolder.
      max_to_keep: keep only the newest N checkpoints (None = all).
      save_interval_steps: `save_state` skips steps that are not a multiple of this.

    Returns:
      The manager; close it (or use it as a context manager) when done.
    """
    options = ocp.CheckpointManagerOptions(
        max_to_keep=max_to_keep, save_interval_steps=save_interval_steps, create=True
    )
    return ocp.CheckpointManager(os.path.abspath(os.fspath(directory)), options=options, item_names=(_ARRAYS, _META))


def _arrays(state: Any) -> dict[str, Any]:
    """The state's pytree fields by name (static fields are rebuilt from the target)."""
    return {
        f.name: getattr(state, f.name)
        for f in dataclasses.fields(state)
        if f.metadata.get("pytree_node", True)
    }


def _meta(state: Any) -> dict[str, Any]:
    meta: dict[str, Any] = {"step": int(state.step)}
    if hasattr(state, "phase"):
        meta["phase"] = state.phase
    config = getattr(state, "config", None)
    if dataclasses.is_dataclass(config):
        meta["config"] = dataclasses.asdict(config)
    return meta


def save_state(
    manager: ocp.CheckpointManager, state: Any, *, force: bool = False, wait: bool = True
) -> bool:
    """Saves `state` at its global step.

    Args:
      manager: from `make_checkpoint_manager`.
      state: the learner state (or any method state with a `step` field).
      force: save even if the manager's interval would skip this step.
      wait: block until the (asynchronous) write has finished.

    Returns:
      Whether a checkpoint was written.
    """
    step = int(state.step)
    meta = _meta(state)
    saved = manager.save(
        step,
        args=ocp.args.Composite(**{_ARRAYS: ocp.args.StandardSave(_arrays(state)), _META: ocp.args.JsonSave(meta)}),
        force=force,
    )
    if wait:
        manager.wait_until_finished()
    return saved


def latest_step(manager: ocp.CheckpointManager) -> int | None:
    """The newest saved step, or None if there is no checkpoint."""
    return manager.latest_step()


def restore_state(manager: ocp.CheckpointManager, target: Any, step: int | None = None) -> Any:
    """Restores a saved state into the structure of `target`.

    Args:
      manager: from `make_checkpoint_manager`.
      target: a state created with the same config, obs_dim and act_dim (e.g. a
        fresh `LearnerState.create(...)`); only its structure, dtypes and shardings
        are used.
      step: which checkpoint; None = the latest.

    Returns:
      The restored state, in the saved phase.

    Raises:
      FileNotFoundError: there is no checkpoint (at `step`).
      ValueError: the checkpoint's phase is unknown.
      CheckpointLayoutError: the checkpoint holds a state of another layout.
    """
    step = manager.latest_step() if step is None else step
    if step is None or step not in manager.all_steps():
        raise FileNotFoundError(f"no checkpoint at step {step} in {manager.directory}; saved: {manager.all_steps()}")
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, _arrays(target))
    try:
        restored = manager.restore(
            step,
            args=ocp.args.Composite(**{_ARRAYS: ocp.args.StandardRestore(abstract), _META: ocp.args.JsonRestore()}),
        )
    except ValueError as error:
        if "tree structures do not match" not in str(error):
            raise
        raise CheckpointLayoutError(
            f"the checkpoint at step {step} in {manager.directory} holds a {type(target).__name__} of another "
            "layout (another method's, or one written before this method's state changed, e.g. rlvlmf's before "
            "its reward model and IQL became states of their own); it cannot be continued: start a new run "
            "directory (another --run-name) instead of --resume") from None
    meta = restored[_META]
    if isinstance(target, LearnerState) and meta.get("phase") not in PHASES:
        raise ValueError(f"checkpoint {step} has unknown phase {meta.get('phase')!r}")
    saved_config = meta.get("config", {})
    config = getattr(target, "config", None)
    target_config = dataclasses.asdict(config) if dataclasses.is_dataclass(config) else {}
    differing = sorted(
        k for k in target_config if k in saved_config and _normalise(saved_config[k]) != _normalise(target_config[k])
    )
    if differing:
        # Loss/optimizer settings may legitimately change on resume; architecture may not
        # (orbax would already have failed on shapes). Report rather than refuse.
        warnings.warn(f"restoring checkpoint {step} into a state whose config differs in {differing}", stacklevel=2)
    arrays = restored[_ARRAYS]
    if "phase" in meta and hasattr(target, "phase"):
        return target.replace(phase=meta["phase"], **arrays)
    return target.replace(**arrays)


def _normalise(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value
