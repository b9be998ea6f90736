"""The offline dataset: arrays per step, layouts per episode, a card, and its file format.

File format (one uncompressed `.npz`, see docs/data_format.md): one array per field of
`OfflineDataset`, plus `card_json` (the card as UTF-8 JSON) and `format_version`.
"""

from __future__ import annotations

import dataclasses
import json
import os
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
from plare_jax.errors import PlareError

FORMAT_VERSION = 1
OBS_DIM = 39
ACTION_DIM = 4

# field name -> (dtype, number of dims); the first dim is steps, or episodes for layouts.
_ARRAY_FIELDS: dict[str, tuple[type, int]] = {
    "observations": (np.float32, 2),
    "actions": (np.float32, 2),
    "rewards": (np.float32, 1),
    "successes": (np.bool_, 1),
    "episode_ids": (np.int32, 1),
    "sim_states": (np.float64, 2),
    "episode_layouts": (np.float64, 2),
}


def episode_starts(episode_ids: np.ndarray, num_episodes: int) -> np.ndarray:
    """[E] int64 row index of each episode's first step (ids contiguous and non-decreasing)."""
    return np.searchsorted(episode_ids, np.arange(num_episodes)).astype(np.int64)


def episode_lengths(episode_ids: np.ndarray, num_episodes: int) -> np.ndarray:
    """[E] int64 number of steps per episode."""
    return np.bincount(episode_ids, minlength=num_episodes).astype(np.int64)


class EpisodeRows:
    """Row counts and episode boundaries of a dataset whose `observations` [N, ...] and
    `episode_ids` [N] are stored per step, episode by episode (MetaWorld's and recorded data);
    the dataset says how many episodes it has (`num_episodes`)."""

    observations: np.ndarray
    episode_ids: np.ndarray

    @property
    def num_steps(self) -> int:
        return int(self.observations.shape[0])

    @property
    def episode_starts(self) -> np.ndarray:
        """[E] int64 row index of each episode's first step."""
        return episode_starts(self.episode_ids, self.num_episodes)

    @property
    def episode_lengths(self) -> np.ndarray:
        """[E] int64 number of steps per episode."""
        return episode_lengths(self.episode_ids, self.num_episodes)


class DatasetError(PlareError, ValueError):
    """A dataset that is malformed, corrupt, or not the one that was asked for.

    Attributes:
        path: the file concerned, when the error is about a file (None for in-memory arrays).
    """

    def __init__(self, message: str, path: str | os.PathLike | None = None):
        super().__init__(message)
        self.path = Path(path) if path is not None else None


@dataclasses.dataclass(frozen=True, eq=False)
class OfflineDataset(EpisodeRows):
    """Steps of several episodes, concatenated in step order.

    Row i holds the observation the agent saw, the action it took there, and what followed.

    Attributes:
        observations: [N, 39] float32, observation at step i.
        actions: [N, 4] float32, action taken at observations[i].
        rewards: [N] float32, reward received after actions[i].
        successes: [N] bool, info["success"] after actions[i].
        episode_ids: [N] int32, 0..E-1, contiguous and non-decreasing.
        sim_states: [N, S] float64, simulator state that produced observations[i]
            (MuJoCo `mj_getState` with the spec `card["sim_state_spec"]`); renders frame i.
        episode_layouts: [E, L] float64, per-episode object/goal layout (MetaWorld "rand_vec");
            resetting to it restores the model fields that MetaWorld's reset changes.
        card: JSON-serialisable description (task, seed, generation mix, counts, versions, ...).
    """

    observations: np.ndarray
    actions: np.ndarray
    rewards: np.ndarray
    successes: np.ndarray
    episode_ids: np.ndarray
    sim_states: np.ndarray
    episode_layouts: np.ndarray
    card: dict[str, Any]

    def __post_init__(self):
        _validate(self)

    @property
    def num_episodes(self) -> int:
        return int(self.episode_layouts.shape[0])

    @property
    def episode_success(self) -> np.ndarray:
        """[E] bool, whether success was ever reached in the episode."""
        out = np.zeros(self.num_episodes, dtype=bool)
        np.logical_or.at(out, self.episode_ids, self.successes)
        return out

    @property
    def episode_returns(self) -> np.ndarray:
        """[E] float64, undiscounted sum of rewards per episode."""
        return np.bincount(self.episode_ids, weights=self.rewards.astype(np.float64), minlength=self.num_episodes)

    @property
    def task(self) -> str:
        return str(self.card.get("task", ""))


def _validate(ds: OfflineDataset) -> None:
    for name, (dtype, ndim) in _ARRAY_FIELDS.items():
        value = getattr(ds, name)
        if not isinstance(value, np.ndarray):
            raise DatasetError(f"{name} must be a numpy array, got {type(value).__name__}")
        if value.dtype != dtype or value.ndim != ndim:
            raise DatasetError(
                f"{name} must be {np.dtype(dtype).name} with {ndim} dims, got {value.dtype} with shape {value.shape}"
            )
    n = ds.observations.shape[0]
    for name in ("actions", "rewards", "successes", "episode_ids", "sim_states"):
        if getattr(ds, name).shape[0] != n:
            raise DatasetError(f"{name} has {getattr(ds, name).shape[0]} rows, observations has {n}")
    if ds.observations.shape[1] != OBS_DIM or ds.actions.shape[1] != ACTION_DIM:
        raise DatasetError(
            f"expected observations [N, {OBS_DIM}] and actions [N, {ACTION_DIM}], "
            f"got {ds.observations.shape} and {ds.actions.shape}"
        )
    num_episodes = ds.episode_layouts.shape[0]
    ids = ds.episode_ids
    if n and (ids[0] != 0 or ids[-1] != num_episodes - 1 or np.any(np.diff(ids) < 0) or np.any(np.diff(ids) > 1)):
        raise DatasetError(
            f"episode_ids must run contiguously from 0 to {num_episodes - 1} (one per episode layout) in step order"
        )
    if n == 0 and num_episodes:
        raise DatasetError(f"{num_episodes} episode layouts but no steps")
    if not isinstance(ds.card, dict):
        raise DatasetError(f"card must be a dict, got {type(ds.card).__name__}")


def save_dataset(ds: OfflineDataset, path: str | os.PathLike) -> None:
    """Writes the dataset to `path` (.npz) atomically (a temporary file, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays = {name: getattr(ds, name) for name in _ARRAY_FIELDS}
    arrays["card_json"] = np.frombuffer(json.dumps(ds.card, sort_keys=True).encode("utf-8"), dtype=np.uint8)
    arrays["format_version"] = np.array(FORMAT_VERSION, dtype=np.int64)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        np.savez(f, **arrays)
    os.replace(tmp, path)


def load_dataset(path: str | os.PathLike, *, expect_task: str | None = None) -> OfflineDataset:
    """Reads a dataset written by `save_dataset`.

    Args:
        path: the .npz file.
        expect_task: if given, the MetaWorld id the dataset must hold (e.g. "sweep-into-v3").

    Raises:
        DatasetError: missing, corrupt or truncated file, unknown format version, inconsistent
            arrays, or a task other than `expect_task`. Delete the file and collect again.
    """
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"no dataset file at {path}", path)
    try:
        with np.load(path, allow_pickle=False) as z:
            contents = {key: z[key] for key in z.files}
    except (zipfile.BadZipFile, OSError, ValueError, EOFError, KeyError) as e:
        raise DatasetError(f"{path} is corrupt or truncated, not a readable dataset file ({e}); delete it and collect again", path) from e
    missing = sorted((set(_ARRAY_FIELDS) | {"card_json", "format_version"}) - set(contents))
    if missing:
        raise DatasetError(f"{path} lacks {missing}; it was not written by save_dataset", path)
    try:
        version = int(contents["format_version"])
    except (TypeError, ValueError) as e:
        raise DatasetError(f"{path} has a corrupt format version ({e})", path) from e
    if version != FORMAT_VERSION:
        raise DatasetError(f"{path} has format version {version}, this code reads {FORMAT_VERSION}", path)
    try:
        card = json.loads(contents["card_json"].tobytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DatasetError(f"{path} has a corrupt dataset card ({e})", path) from e
    try:
        ds = OfflineDataset(**{name: contents[name] for name in _ARRAY_FIELDS}, card=card)
    except DatasetError as e:
        raise DatasetError(f"{path} holds inconsistent arrays: {e}", path) from e
    if expect_task is not None and ds.task != expect_task:
        raise DatasetError(f"{path} holds task {ds.task!r}, expected {expect_task!r}", path)
    expected_steps = card.get("num_steps")
    if expected_steps is not None and expected_steps != ds.num_steps:
        raise DatasetError(f"{path}: card says {expected_steps} steps, arrays hold {ds.num_steps}", path)
    return ds
