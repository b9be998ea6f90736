"""Minari datasets (Farama's offline-RL standard) -> the recorded-data format, via `minari`.

A Minari episode of T steps holds T+1 observations (the last one follows the final action), T
actions, rewards, terminations and truncations, and infos with T+1 entries (the reset's, then
one per step). Step t of the recorded dataset takes observation t and action t; the last
observation is dropped. Rewards carry over; successes come from the infos' "success" or
"is_success" entry when there is one (the entry after action t).

Observations: a flat Box is the policy observation as is. A Dict observation is split: image
entries (uint8 [H, W, 3]) become cameras, the others are flattened and concatenated in key order
(or the keys given) into the policy observation.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from plare_jax.data import recorded
from plare_jax.data.importers._common import camera_name, require
from plare_jax.data.recorded import RecordedDataError
from plare_jax.errors import OutputExistsError

SUCCESS_INFO_KEYS = ("success", "is_success")


def import_minari(
    dataset: str | os.PathLike,
    dst: str | os.PathLike,
    *,
    task_text: str = "",
    observation_keys: Sequence[str] | None = None,
    camera_keys: Sequence[str] | None = None,
    fps: float | None = None,
    progress: bool = True,
) -> Path:
    """Converts a Minari dataset into a recorded dataset at `dst`.

    Args:
        dataset: a Minari dataset id in the local Minari root (e.g. "D4RL/pen/human-v2", see
            `minari list local`), or the path of a dataset's data directory (holding
            main_data.hdf5 and metadata.json).
        dst: output directory (must not exist).
        task_text: goal text for the VLM (Minari stores none; the dataset description is kept
            in the card's source).
        observation_keys: Dict observations: the entries that form the policy observation
            (default: every entry that is not an image).
        camera_keys: Dict observations: image entries to keep as cameras (default: all uint8
            [H, W, 3] entries).
        fps: steps per second for the card (Minari does not record it; default 1.0 and the
            card says it is unknown).
        progress: progress bars.

    Returns:
        `dst`, validated with `load_recorded`.

    Raises:
        RecordedDataError: the dataset cannot be read or its observations do not fit.
        MissingExtraError: `minari` (with h5py) is not installed.
    """
    minari = require("minari", importer="Minari")
    dst = Path(dst)
    if dst.exists():
        raise OutputExistsError(f"{dst} exists; choose a new output directory")
    source = Path(dataset)
    try:
        if source.is_dir():
            data = minari.MinariDataset(source)
        else:
            data = minari.load_dataset(str(dataset))
    except (FileNotFoundError, ValueError, OSError, KeyError) as e:
        raise RecordedDataError(
            f"cannot open Minari dataset {dataset!s} ({e}); pass a local dataset id or the path of its "
            "data directory (with main_data.hdf5 and metadata.json)") from e

    observations, actions, episode_ids, rewards, successes = [], [], [], [], []
    frames: dict[str, list[np.ndarray]] = {}
    state_keys = images = None
    for episode in tqdm(data.iterate_episodes(), total=data.total_episodes, desc="read episodes",
                        unit="episode", disable=not progress):
        steps = len(episode)
        if steps == 0:
            continue
        obs = episode.observations
        if isinstance(obs, dict):
            if state_keys is None:
                state_keys, images = _split_keys(obs, observation_keys, camera_keys)
            missing = [k for k in (*state_keys, *images) if k not in obs]
            if missing:
                raise RecordedDataError(f"episode {episode.id}: observation has no entries {missing}")
            state = np.concatenate([np.asarray(obs[k])[:steps].reshape(steps, -1) for k in state_keys], axis=1)
            for key in images:
                frames.setdefault(key, []).append(_image_array(obs[key], steps, key, episode.id))
        elif isinstance(obs, np.ndarray):
            if observation_keys or camera_keys:
                raise RecordedDataError("observation_keys / camera_keys need Dict observations; this dataset's "
                                        f"are arrays of shape {obs.shape[1:]}")
            state = obs[:steps].reshape(steps, -1)
        else:
            raise RecordedDataError(f"unsupported observation type {type(obs).__name__} (Box or Dict expected)")
        act = np.asarray(episode.actions)
        if act.dtype.kind not in "fiu":
            raise RecordedDataError(f"episode {episode.id}: actions of dtype {act.dtype} are not numeric")
        observations.append(state.astype(np.float32))
        actions.append(act.reshape(steps, -1).astype(np.float32))
        episode_ids.append(np.full(steps, len(episode_ids), np.int32))
        rewards.append(np.asarray(episode.rewards, np.float32).reshape(steps))
        key = next((k for k in SUCCESS_INFO_KEYS if k in episode.infos), None)
        successes.append(None if key is None else np.asarray(episode.infos[key])[-steps:].astype(bool))
    if not observations:
        raise RecordedDataError(f"Minari dataset {dataset!s} has no steps")
    has_success = all(s is not None for s in successes)
    cameras = {}
    frame_arrays = {}
    for key, parts in frames.items():
        array = np.concatenate(parts)
        name = camera_name(key)
        cameras[name] = {"storage": "npy", "height": int(array.shape[1]), "width": int(array.shape[2])}
        frame_arrays[name] = array
    spec = data.spec
    metadata = dict(getattr(data.storage, "metadata", {}) or {})
    card = recorded.make_card(
        task_text=task_text, fps=fps or 1.0, cameras=cameras,
        observation_units="as recorded", action_units="as recorded",
        source={"kind": "minari", "dataset_id": spec.dataset_id, "minari_version": minari.__version__,
                "description": metadata.get("description"), "env_spec": str(spec.env_spec),
                "observation_keys": list(state_keys) if state_keys else None,
                "fps_known": fps is not None},
    )
    recorded.save_recorded(
        dst, card=card, observations=np.concatenate(observations), actions=np.concatenate(actions),
        episode_ids=np.concatenate(episode_ids), rewards=np.concatenate(rewards),
        successes=np.concatenate(successes) if has_success else None, frames=frame_arrays)
    recorded.load_recorded(dst, progress=progress)
    return dst


def _is_image(value: np.ndarray) -> bool:
    value = np.asarray(value)
    return value.dtype == np.uint8 and value.ndim == 4 and value.shape[-1] == 3


def _split_keys(obs: dict, observation_keys, camera_keys) -> tuple[list[str], list[str]]:
    for key, value in obs.items():
        if isinstance(value, dict):
            raise RecordedDataError(f"nested Dict observations are not supported (entry {key!r})")
    images = list(camera_keys) if camera_keys is not None else sorted(k for k, v in obs.items() if _is_image(v))
    state = list(observation_keys) if observation_keys is not None else sorted(k for k in obs if k not in images)
    unknown = [k for k in (*state, *images) if k not in obs]
    if unknown:
        raise RecordedDataError(f"observation entries {unknown} do not exist; entries are {sorted(obs)}")
    if not state:
        raise RecordedDataError(f"no state entries left for the policy observation (entries {sorted(obs)})")
    return state, images


def _image_array(value, steps: int, key: str, episode: int) -> np.ndarray:
    value = np.asarray(value)
    if not _is_image(value):
        raise RecordedDataError(f"episode {episode}: camera entry {key!r} must be uint8 [T+1, H, W, 3], "
                                f"got {value.dtype} {value.shape}")
    return value[:steps]
