"""Recorded robot trajectories on disk, with no simulator: the format, its validation, its frames.

A recorded dataset is a directory (see docs/data_format.md, "Recorded data"):

    card.json            what the data is: task text, fps, cameras, names and units (FORMAT_NAME)
    steps.npz            per step: observations [N, O], actions [N, A], episode_ids [N], and
                         optionally rewards [N], successes [N], and per video camera
                         video_file_<camera> [N] + frame_index_<camera> [N]
    frames/<camera>.npy  per "npy" camera: [N, H, W, 3] uint8, one frame per step
    videos/...           per "video" camera: mp4 files listed in the card; step i shows frame
                         frame_index_<camera>[i] of file files[video_file_<camera>[i]]

`load_recorded` checks everything that labeling and training rely on (shapes, dtypes, finite
values, contiguous episodes, frames present for every step, videos long enough for their index)
and raises `RecordedDataError` naming the file, the field and the step, so a bad input fails
before any VLM request is paid for.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from plare_jax.data import video as video_io
from plare_jax.data.dataset import DatasetError, EpisodeRows
from plare_jax.data.keyframes import keyframe_offsets, tile_keyframes
from plare_jax.data.segments import SegmentPairs

FORMAT_NAME = "plare-recorded"
FORMAT_VERSION = 1
CARD_FILE = "card.json"
STEPS_FILE = "steps.npz"
STORAGES = ("npy", "video")
_CAMERA_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_REQUIRED_ARRAYS = ("observations", "actions", "episode_ids")
_OPTIONAL_ARRAYS = ("rewards", "successes")


class RecordedDataError(DatasetError):
    """A recorded dataset that is missing, malformed or inconsistent; the message says where."""


@dataclasses.dataclass(frozen=True, eq=False)
class CameraFrames:
    """Where the frames of one camera are.

    Attributes:
        name: camera name (a key of the card's "cameras").
        storage: "npy" (one uint8 array with a frame per step) or "video" (mp4 files).
        height: frame height in pixels.
        width: frame width in pixels.
        array: "npy": [N, H, W, 3] uint8, memory-mapped (frames are read on demand).
        video_files: "video": absolute paths of the files, in the card's order.
        video_file: "video": [N] int32, which file holds step i's frame.
        frame_index: "video": [N] int64, the frame number of step i within that file.
    """

    name: str
    storage: str
    height: int
    width: int
    array: np.ndarray | None = None
    video_files: tuple[Path, ...] = ()
    video_file: np.ndarray | None = None
    frame_index: np.ndarray | None = None

    def read(self, rows: np.ndarray, *, progress: bool = False) -> np.ndarray:
        """Frames of steps `rows` ([n] int), as [n, H, W, 3] uint8 in the order given."""
        rows = np.asarray(rows, dtype=np.int64)
        if self.storage == "npy":
            return np.asarray(self.array[rows])
        out = np.empty((len(rows), self.height, self.width, 3), np.uint8)
        files = self.video_file[rows]
        unique_files = np.unique(files)
        for f in tqdm(unique_files, desc=f"decode {self.name}", unit="video", disable=not progress):
            where = np.flatnonzero(files == f)
            indices = self.frame_index[rows[where]]
            try:
                decoded = video_io.read_frames_at(self.video_files[f], indices.tolist())
            except video_io.VideoError as e:
                raise RecordedDataError(f"camera {self.name!r}: {e}") from e
            for i, index in zip(where, indices.tolist()):
                frame = decoded[index]
                if frame.shape != (self.height, self.width, 3):
                    raise RecordedDataError(
                        f"camera {self.name!r}: {self.video_files[f]} has {frame.shape[1]}x{frame.shape[0]} "
                        f"frames, card.json says {self.width}x{self.height}")
                out[i] = frame
        return out


@dataclasses.dataclass(frozen=True, eq=False)
class RecordedDataset(EpisodeRows):
    """Steps of recorded episodes, concatenated in step order, with their camera frames.

    Row i holds the observation the policy saw and the action taken there (no shift between
    them), like MetaWorld's `OfflineDataset`, so segments and pairs work on either.

    Attributes:
        observations: [N, O] float32 policy observation (state / proprioception).
        actions: [N, A] float32 action taken at observations[i].
        episode_ids: [N] int32, 0..E-1, contiguous and non-decreasing.
        rewards: [N] float32 reward after actions[i], or None (real robots usually have none).
        successes: [N] bool task success after actions[i], or None.
        cameras: name -> `CameraFrames`.
        card: the dataset card (card.json).
        root: the dataset directory.
    """

    observations: np.ndarray
    actions: np.ndarray
    episode_ids: np.ndarray
    rewards: np.ndarray | None
    successes: np.ndarray | None
    cameras: dict[str, CameraFrames]
    card: dict[str, Any]
    root: Path

    @property
    def num_episodes(self) -> int:
        return int(self.episode_ids[-1]) + 1 if self.num_steps else 0

    @property
    def task_text(self) -> str:
        return str(self.card.get("task_text") or "")

    @property
    def fps(self) -> float:
        return float(self.card["fps"])

    def camera(self, name: str | None = None) -> CameraFrames:
        """The named camera, or the first one in the card when `name` is None."""
        if not self.cameras:
            raise RecordedDataError(
                f"{self.root} has no camera frames; image-based labeling (--labeler vlm) needs at least "
                "one camera in card.json (scripted labels from stored rewards need none)")
        if name is None:
            return next(iter(self.cameras.values()))
        if name not in self.cameras:
            raise RecordedDataError(f"{self.root} has no camera {name!r}; it has {sorted(self.cameras)}")
        return self.cameras[name]


# --------------------------------------------------------------------------------------------
# Writing


def make_card(
    *,
    task_text: str,
    fps: float,
    cameras: Mapping[str, Mapping[str, Any]] | None = None,
    observation_names: Sequence[str] | None = None,
    action_names: Sequence[str] | None = None,
    observation_units: str = "unspecified",
    action_units: str = "unspecified",
    source: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """A dataset card (the counts are filled in by `save_recorded`).

    Args:
        task_text: what the robot should achieve, in words (the VLM's goal text).
        fps: control/recording rate in steps per second.
        cameras: name -> {"storage": "npy" | "video", "height": H, "width": W, and for "video"
            "files": [paths relative to the dataset directory]}.
        observation_names, action_names: optional per-dimension names.
        observation_units, action_units: free text, e.g. "joint angles (rad), gripper (0-1)".
        source: where the data came from (importer, original path, ...), free-form.
    """
    return {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "task_text": task_text,
        "fps": float(fps),
        "cameras": {name: dict(spec) for name, spec in (cameras or {}).items()},
        "observation_names": list(observation_names) if observation_names is not None else None,
        "action_names": list(action_names) if action_names is not None else None,
        "units": {"observations": observation_units, "actions": action_units},
        "source": dict(source or {}),
    }


def frames_path(root: str | os.PathLike, camera: str) -> Path:
    """Where the "npy" frames of `camera` live inside a dataset directory."""
    return Path(root) / "frames" / f"{camera}.npy"


def open_frames_for_writing(root: str | os.PathLike, camera: str, num_steps: int, height: int,
                            width: int) -> np.ndarray:
    """A writable memory-mapped [N, H, W, 3] uint8 frames file (fill it, then `flush()`)."""
    path = frames_path(root, camera)
    path.parent.mkdir(parents=True, exist_ok=True)
    return np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=(num_steps, height, width, 3))


def save_recorded(
    root: str | os.PathLike,
    *,
    card: dict[str, Any],
    observations: np.ndarray,
    actions: np.ndarray,
    episode_ids: np.ndarray,
    rewards: np.ndarray | None = None,
    successes: np.ndarray | None = None,
    frames: Mapping[str, np.ndarray] | None = None,
    video_index: Mapping[str, tuple[np.ndarray, np.ndarray]] | None = None,
) -> None:
    """Writes steps.npz, card.json and the "npy" frames given; video files must already be in place.

    Args:
        root: the dataset directory (created).
        card: from `make_card`; counts are added.
        observations, actions, episode_ids, rewards, successes: per-step arrays (see
            `RecordedDataset`).
        frames: camera -> [N, H, W, 3] uint8, written to frames/<camera>.npy (cameras whose
            frames were written with `open_frames_for_writing` are left out here).
        video_index: camera -> (video_file [N], frame_index [N]) for "video" cameras.

    Raises:
        RecordedDataError: the arrays break the format (checked before anything is written).
    """
    root = Path(root)
    arrays = {
        "observations": np.asarray(observations, np.float32),
        "actions": np.asarray(actions, np.float32),
        "episode_ids": np.asarray(episode_ids, np.int32),
    }
    if rewards is not None:
        arrays["rewards"] = np.asarray(rewards, np.float32)
    if successes is not None:
        arrays["successes"] = np.asarray(successes, bool)
    for camera, (video_file, frame_index) in (video_index or {}).items():
        arrays[f"video_file_{camera}"] = np.asarray(video_file, np.int32)
        arrays[f"frame_index_{camera}"] = np.asarray(frame_index, np.int64)
    _check_steps(arrays, root / STEPS_FILE)
    card = dict(card)
    card["num_steps"] = int(arrays["observations"].shape[0])
    card["num_episodes"] = int(arrays["episode_ids"][-1]) + 1 if card["num_steps"] else 0
    root.mkdir(parents=True, exist_ok=True)
    for camera, array in (frames or {}).items():
        path = frames_path(root, camera)
        path.parent.mkdir(parents=True, exist_ok=True)
        np.save(path, np.asarray(array))
    tmp = root / f".{STEPS_FILE}.{os.getpid()}.tmp"
    with open(tmp, "wb") as f:
        np.savez(f, **arrays)
    os.replace(tmp, root / STEPS_FILE)
    (root / CARD_FILE).write_text(json.dumps(card, indent=2) + "\n")


# --------------------------------------------------------------------------------------------
# Loading and validation


def load_recorded(root: str | os.PathLike, *, progress: bool = True) -> RecordedDataset:
    """Reads and validates a recorded dataset directory.

    Everything is checked here, before any labeling: the card, every per-step array, every
    camera's frames (an "npy" array has a frame per step; every video exists and is at least
    as long as the largest frame index pointing into it; its frames are counted, not decoded).

    Args:
        root: the dataset directory.
        progress: show a bar while videos are counted.

    Raises:
        RecordedDataError: what is wrong, with the file, field and (where it applies) step.
    """
    root = Path(root)
    if not root.is_dir():
        raise RecordedDataError(
            f"no recorded dataset at {root}: expected a directory with {CARD_FILE} and {STEPS_FILE} "
            "(see docs/data_format.md, or make one with experiments/import_data.py)")
    card = _read_card(root)
    steps = _read_steps(root)
    _check_steps(steps, root / STEPS_FILE)
    num_steps = steps["observations"].shape[0]
    num_episodes = int(steps["episode_ids"][-1]) + 1
    for key, actual in (("num_steps", num_steps), ("num_episodes", num_episodes)):
        if card.get(key) is not None and card[key] != actual:
            raise RecordedDataError(f"{root / CARD_FILE}: {key} is {card[key]} but {STEPS_FILE} holds {actual}")
    for key, array in (("observation_names", steps["observations"]), ("action_names", steps["actions"])):
        names = card.get(key)
        if names is not None and len(names) != array.shape[1]:
            raise RecordedDataError(
                f"{root / CARD_FILE}: {key} has {len(names)} entries, the data has {array.shape[1]} dimensions")
    cameras = {name: _load_camera(root, name, spec, steps, num_steps, progress=progress)
               for name, spec in card["cameras"].items()}
    known = set(_REQUIRED_ARRAYS) | set(_OPTIONAL_ARRAYS)
    known |= {f"{prefix}_{name}" for name in cameras for prefix in ("video_file", "frame_index")}
    unknown = sorted(set(steps) - known)
    if unknown:
        raise RecordedDataError(
            f"{root / STEPS_FILE} has arrays {unknown} that no camera or field of card.json explains; "
            f"allowed: {sorted(known)}")
    return RecordedDataset(
        observations=steps["observations"], actions=steps["actions"], episode_ids=steps["episode_ids"],
        rewards=steps.get("rewards"), successes=steps.get("successes"), cameras=cameras, card=card, root=root)


def _read_card(root: Path) -> dict[str, Any]:
    path = root / CARD_FILE
    if not path.is_file():
        raise RecordedDataError(f"{root}: no {CARD_FILE}; a recorded dataset needs one (see docs/data_format.md)")
    try:
        card = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise RecordedDataError(f"{path} is not valid JSON ({e})") from e
    if not isinstance(card, dict) or card.get("format") != FORMAT_NAME:
        raise RecordedDataError(f"{path}: \"format\" must be {FORMAT_NAME!r}; this is not a recorded dataset card")
    if card.get("format_version") != FORMAT_VERSION:
        raise RecordedDataError(
            f"{path}: format_version {card.get('format_version')!r}, this code reads {FORMAT_VERSION}")
    fps = card.get("fps")
    if not isinstance(fps, int | float) or isinstance(fps, bool) or not fps > 0:
        raise RecordedDataError(f"{path}: \"fps\" must be a positive number (steps per second), got {fps!r}")
    if not isinstance(card.get("task_text", ""), str):
        raise RecordedDataError(f"{path}: \"task_text\" must be a string")
    cameras = card.get("cameras", {})
    if not isinstance(cameras, dict):
        raise RecordedDataError(f"{path}: \"cameras\" must be an object name -> {{storage, height, width}}")
    for name, spec in cameras.items():
        where = f"{path}: camera {name!r}"
        if not _CAMERA_NAME.match(name):
            raise RecordedDataError(f"{where}: names may hold letters, digits, '_', '.', '-' only")
        if not isinstance(spec, dict) or spec.get("storage") not in STORAGES:
            raise RecordedDataError(f"{where}: \"storage\" must be one of {STORAGES}")
        for key in ("height", "width"):
            if not isinstance(spec.get(key), int) or spec[key] < 1:
                raise RecordedDataError(f"{where}: \"{key}\" must be a positive integer, got {spec.get(key)!r}")
        if spec["storage"] == "video":
            files = spec.get("files")
            if not isinstance(files, list) or not files or not all(isinstance(f, str) for f in files):
                raise RecordedDataError(f"{where}: a video camera needs \"files\", a non-empty list of mp4 paths "
                                        "relative to the dataset directory")
    card["cameras"] = cameras
    return card


def _read_steps(root: Path) -> dict[str, np.ndarray]:
    path = root / STEPS_FILE
    if not path.is_file():
        raise RecordedDataError(f"{root}: no {STEPS_FILE} (per-step observations, actions, episode_ids)")
    try:
        with np.load(path, allow_pickle=False) as z:
            return {key: z[key] for key in z.files}
    except (zipfile.BadZipFile, OSError, ValueError, EOFError, KeyError) as e:
        raise RecordedDataError(f"{path} is not a readable .npz file ({e})") from e


def _first_step(mask: np.ndarray, episode_ids: np.ndarray) -> str:
    """'step i (episode e, step j of the episode)' of the first True row of `mask` [N, ...]."""
    row = int(np.flatnonzero(mask.reshape(mask.shape[0], -1).any(axis=1))[0])
    episode = int(episode_ids[row])
    start = int(np.searchsorted(episode_ids, episode))
    return f"step {row} (episode {episode}, step {row - start} of the episode)"


def _check_steps(arrays: dict[str, np.ndarray], path: Path) -> None:
    """Validates the per-step arrays in place (numeric ones are converted to float32/int32/bool)."""
    for name in _REQUIRED_ARRAYS:
        if name not in arrays:
            raise RecordedDataError(f"{path} lacks the array {name!r} (needs {list(_REQUIRED_ARRAYS)})")
    ids = arrays["episode_ids"]
    if ids.ndim != 1 or not np.issubdtype(ids.dtype, np.integer):
        raise RecordedDataError(f"{path}: episode_ids must be a 1-D integer array, got {ids.dtype} {ids.shape}")
    num_steps = ids.shape[0]
    if num_steps == 0:
        raise RecordedDataError(f"{path}: no steps")
    if ids[0] != 0 or np.any(np.diff(ids) < 0) or np.any(np.diff(ids) > 1):
        bad = 0 if ids[0] != 0 else int(np.flatnonzero((np.diff(ids) < 0) | (np.diff(ids) > 1))[0]) + 1
        raise RecordedDataError(
            f"{path}: episode_ids must run 0, 0, ..., 1, 1, ... contiguously in step order; step {bad} has "
            f"episode id {int(ids[bad])} after {int(ids[bad - 1]) if bad else 'the start'}")
    arrays["episode_ids"] = ids.astype(np.int32)
    for name in ("observations", "actions"):
        value = arrays[name]
        if value.dtype == np.bool_ or not (np.issubdtype(value.dtype, np.floating) or np.issubdtype(value.dtype, np.integer)):
            raise RecordedDataError(f"{path}: {name} must be a numeric (float) array, got dtype {value.dtype}")
        if value.ndim != 2 or value.shape[1] == 0:
            raise RecordedDataError(f"{path}: {name} must be [N, dim] (one row per step), got shape {value.shape}")
    for name in (*_REQUIRED_ARRAYS, *_OPTIONAL_ARRAYS):
        if name in arrays and arrays[name].shape[0] != num_steps:
            raise RecordedDataError(
                f"{path}: {name} has {arrays[name].shape[0]} rows but episode_ids has {num_steps} "
                "(every per-step array needs one row per step)")
    for name in ("observations", "actions"):
        value = arrays[name].astype(np.float32)
        bad = ~np.isfinite(value)
        if bad.any():
            raise RecordedDataError(
                f"{path}: {name} has {int(bad.sum())} non-finite values (NaN or inf), the first at "
                f"{_first_step(bad, arrays['episode_ids'])}; repair or drop those steps")
        arrays[name] = value
    if "rewards" in arrays:
        rewards = arrays["rewards"]
        if rewards.ndim != 1 or not np.issubdtype(rewards.dtype, np.number):
            raise RecordedDataError(f"{path}: rewards must be a 1-D numeric array, got {rewards.dtype} {rewards.shape}")
        rewards = rewards.astype(np.float32)
        if not np.isfinite(rewards).all():
            raise RecordedDataError(f"{path}: rewards has non-finite values, the first at "
                                    f"{_first_step(~np.isfinite(rewards), arrays['episode_ids'])}")
        arrays["rewards"] = rewards
    if "successes" in arrays:
        successes = arrays["successes"]
        if successes.ndim != 1 or successes.dtype != np.bool_:
            raise RecordedDataError(f"{path}: successes must be a 1-D bool array, got {successes.dtype} {successes.shape}")


def _load_camera(root: Path, name: str, spec: dict, steps: dict[str, np.ndarray], num_steps: int, *,
                 progress: bool) -> CameraFrames:
    height, width = spec["height"], spec["width"]
    where = f"camera {name!r}"
    if spec["storage"] == "npy":
        path = frames_path(root, name)
        if not path.is_file():
            raise RecordedDataError(f"{where}: its frames file {path} is missing (card.json lists the camera "
                                    "with storage \"npy\")")
        try:
            array = np.load(path, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError) as e:
            raise RecordedDataError(f"{where}: {path} is not a readable .npy file ({e})") from e
        if array.dtype != np.uint8 or array.ndim != 4 or array.shape[3] != 3:
            raise RecordedDataError(f"{where}: {path} must be [N, H, W, 3] uint8 (RGB), got {array.dtype} {array.shape}")
        if array.shape[0] != num_steps:
            raise RecordedDataError(f"{where}: {path} has {array.shape[0]} frames but the dataset has "
                                    f"{num_steps} steps (one frame per step)")
        if array.shape[1:3] != (height, width):
            raise RecordedDataError(f"{where}: {path} holds {array.shape[2]}x{array.shape[1]} frames, card.json "
                                    f"says {width}x{height}")
        return CameraFrames(name, "npy", height, width, array=array)

    files = tuple(root / f for f in spec["files"])
    for key in (f"video_file_{name}", f"frame_index_{name}"):
        if key not in steps:
            raise RecordedDataError(f"{where}: {STEPS_FILE} lacks {key!r} (which video and frame shows each step)")
        value = steps[key]
        if value.ndim != 1 or not np.issubdtype(value.dtype, np.integer):
            raise RecordedDataError(f"{where}: {key} must be a 1-D integer array, got {value.dtype} {value.shape}")
        if value.shape[0] != num_steps:
            raise RecordedDataError(f"{where}: {key} has {value.shape[0]} rows but the dataset has {num_steps} steps")
        if value.min() < 0:
            raise RecordedDataError(f"{where}: {key} has negative entries, the first at "
                                    f"{_first_step(value < 0, steps['episode_ids'])}")
    video_file = steps[f"video_file_{name}"].astype(np.int32)
    frame_index = steps[f"frame_index_{name}"].astype(np.int64)
    if video_file.max() >= len(files):
        raise RecordedDataError(f"{where}: video_file_{name} points at file {int(video_file.max())}, "
                                f"card.json lists {len(files)} files")
    used = np.unique(video_file)
    for f in used:
        if not files[f].is_file():
            raise RecordedDataError(f"{where}: video {files[f]} is missing (listed in card.json)")
    for f in tqdm(used, desc=f"check videos of {name}", unit="video", disable=not progress or len(used) < 20):
        available = video_io.count_frames(files[f])
        on_file = video_file == f
        needed = int(frame_index[on_file].max())
        if needed >= available:
            bad = on_file & (frame_index >= available)
            raise RecordedDataError(
                f"{where}: video {files[f]} has {available} frames but frame_index_{name} asks for frame "
                f"{needed} (first at {_first_step(bad, steps['episode_ids'])}); the video is shorter than "
                "its index: re-encode it or fix the index")
    return CameraFrames(name, "video", height, width, video_files=files, video_file=video_file,
                        frame_index=frame_index)


# --------------------------------------------------------------------------------------------
# Keyframe images of pairs, from stored frames


def recorded_pair_images(
    ds: RecordedDataset,
    pairs: SegmentPairs,
    *,
    camera: str | None = None,
    num_keyframes: int = 3,
    captions: bool = True,
    progress: bool = False,
) -> np.ndarray:
    """One captioned keyframe strip per segment of each pair, from the stored frames.

    The same keyframes and tiling as the MetaWorld path (`plare_jax.data.keyframes`), so a
    dataset exported from MetaWorld gives byte-identical images.

    Args:
        ds: the dataset the pairs index.
        pairs: P pairs of segments.
        camera: which camera (None: the first in the card).
        num_keyframes: k.
        captions: draw "Timestep i" on each frame.
        progress: show a bar while videos are decoded.

    Returns:
        [P, 2, H, W*k, 3] uint8.
    """
    frames_of = ds.camera(camera)
    rows = pairs.starts[..., None] + keyframe_offsets(pairs.length, num_keyframes)  # [P, 2, k]
    unique_rows, inverse = np.unique(rows.ravel(), return_inverse=True)
    frames = frames_of.read(unique_rows, progress=progress)[inverse]
    frames = frames.reshape(*rows.shape, frames_of.height, frames_of.width, 3)
    out = np.empty((pairs.num_pairs, 2, frames_of.height, frames_of.width * num_keyframes, 3), np.uint8)
    for p in range(pairs.num_pairs):
        for j in range(2):
            out[p, j] = tile_keyframes(frames[p, j], captions=captions)
    return out

