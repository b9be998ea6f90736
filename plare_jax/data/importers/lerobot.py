"""LeRobot datasets (parquet steps + mp4 videos) -> the recorded-data format.

Reads LeRobot's documented on-disk layout with pyarrow rather than through the `lerobot`
package (which pulls in torch, datasets, av, opencv, ...):

    meta/info.json      codebase_version, fps, features (dtype, shape, names), data_path and
                        video_path templates, chunks_size
    meta/tasks.jsonl    (2.x) or meta/tasks.parquet (3.0): task_index -> task text
    meta/episodes/...   (3.0) per episode: which video file holds it, from which timestamp
    data/**/*.parquet   one row per step: index, episode_index, frame_index, timestamp,
                        task_index, the state and action features, "image" features as PNG bytes
    videos/**.mp4       "video" features: one file per episode (2.x) or several episodes per
                        file (3.0)

Steps are sorted by (episode_index, frame_index); episodes are renumbered 0..E-1 (the original
indices are kept in the card). Step i of a video camera shows frame round(t * fps) of its file,
where t is the step's timestamp (plus the episode's offset in the file for 3.0). Video files are
copied (or linked) into the new dataset unchanged: nothing is re-encoded.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from plare_jax.data import recorded
from plare_jax.data.importers._common import camera_name, require
from plare_jax.data.recorded import RecordedDataError
from plare_jax.errors import OutputExistsError


def import_lerobot(
    src: str | os.PathLike,
    dst: str | os.PathLike,
    *,
    state_key: str = "observation.state",
    action_key: str = "action",
    cameras: Sequence[str] | None = None,
    task_text: str | None = None,
    reward_key: str = "next.reward",
    success_key: str = "next.success",
    link_videos: bool = False,
    progress: bool = True,
) -> Path:
    """Converts a local LeRobot dataset directory into a recorded dataset at `dst`.

    Args:
        src: the LeRobot dataset root (holding meta/info.json).
        dst: output directory (must not exist).
        state_key: feature used as the policy observation.
        action_key: feature used as the action.
        cameras: "video"/"image" features to keep (default: all of them).
        task_text: goal text for the VLM (default: the dataset's task, if it has exactly one).
        reward_key, success_key: features copied as rewards / successes when present.
        link_videos: symlink the mp4 files instead of copying them.
        progress: progress bars.

    Returns:
        `dst`, validated with `load_recorded`.

    Raises:
        RecordedDataError: the source is not a LeRobot dataset or lacks what was asked for.
        MissingExtraError: pyarrow is not installed.
    """
    pq = require("pyarrow.parquet", importer="LeRobot")
    src, dst = Path(src), Path(dst)
    info = _read_info(src)
    version = str(info.get("codebase_version", ""))
    fps = info.get("fps")
    features = info.get("features", {})
    for key, what in ((state_key, "state_key"), (action_key, "action_key")):
        if key not in features:
            raise RecordedDataError(f"{src}: no feature {key!r} for {what}; the dataset has {sorted(features)}")
    media = [k for k, spec in features.items() if spec.get("dtype") in ("video", "image")]
    cameras = list(media if cameras is None else cameras)
    for key in cameras:
        if key not in media:
            raise RecordedDataError(f"{src}: {key!r} is not a video or image feature; those are {media}")
    names = {key: camera_name(key) for key in cameras}
    if len(set(names.values())) != len(names):
        raise RecordedDataError(f"{src}: cameras {cameras} give clashing names {list(names.values())}")
    if dst.exists():
        raise OutputExistsError(f"{dst} exists; choose a new output directory")

    files = sorted((src / "data").rglob("*.parquet"))
    if not files:
        raise RecordedDataError(f"{src}: no parquet files under data/")
    image_keys = [k for k in cameras if features[k]["dtype"] == "image"]
    wanted = [state_key, action_key, "episode_index", "frame_index", "timestamp", "task_index",
              reward_key, success_key, *image_keys]
    tables = []
    for path in tqdm(files, desc="read parquet", unit="file", disable=not progress):
        schema = pq.read_schema(path)
        tables.append(pq.read_table(path, columns=[c for c in wanted if c in schema.names]))
    table = _concat(tables)
    for key in (state_key, action_key, "episode_index", "frame_index", "timestamp"):
        if key not in table.column_names:
            raise RecordedDataError(f"{src}: the parquet files lack the column {key!r}")
    source_episode = _column(table, "episode_index").ravel().astype(np.int64)
    frame_in_episode = _column(table, "frame_index").ravel().astype(np.int64)
    order = np.lexsort((frame_in_episode, source_episode))
    source_episode, frame_in_episode = source_episode[order], frame_in_episode[order]
    original_ids, episode_ids = np.unique(source_episode, return_inverse=True)
    timestamps = _column(table, "timestamp").ravel().astype(np.float64)[order]
    observations = _column(table, state_key)[order]
    actions = _column(table, action_key)[order]
    rewards = _column(table, reward_key).ravel()[order] if reward_key in table.column_names else None
    successes = (_column(table, success_key).ravel()[order].astype(bool)
                 if success_key in table.column_names else None)

    if task_text is None:
        task_text = _single_task(src, table, order)

    dst.mkdir(parents=True)
    camera_specs, frames, video_index = {}, {}, {}
    for key in cameras:
        name = names[key]
        if features[key]["dtype"] == "image":
            images = _decode_images(table.column(key), order, progress=progress, name=name)
            camera_specs[name] = {"storage": "npy", "height": images.shape[1], "width": images.shape[2]}
            frames[name] = images
            continue
        paths, file_of_step, offset_s = _video_files(src, info, key, original_ids, episode_ids)
        rel_files = sorted(set(paths))
        file_number = {p: i for i, p in enumerate(rel_files)}
        for rel in rel_files:
            source_path, target = src / rel, dst / rel
            if not source_path.is_file():
                raise RecordedDataError(f"{src}: camera {key!r}: video {rel} is missing")
            target.parent.mkdir(parents=True, exist_ok=True)
            if link_videos:
                target.symlink_to(source_path.resolve())
            else:
                shutil.copyfile(source_path, target)
        width, height = _video_size(src / rel_files[0])
        camera_specs[name] = {"storage": "video", "height": height, "width": width, "files": rel_files}
        video_file = np.array([file_number[paths[f]] for f in file_of_step], np.int32)
        frame_index = np.rint((offset_s + timestamps) * float(fps)).astype(np.int64)
        video_index[name] = (video_file, frame_index)

    state_names = _names(features[state_key], observations.shape[1])
    action_names = _names(features[action_key], actions.shape[1])
    card = recorded.make_card(
        task_text=task_text, fps=float(fps), cameras=camera_specs, observation_names=state_names,
        action_names=action_names, observation_units=f"as recorded ({state_key})",
        action_units=f"as recorded ({action_key})",
        source={"kind": "lerobot", "codebase_version": version, "robot_type": info.get("robot_type"),
                "state_key": state_key, "action_key": action_key,
                "cameras": {names[k]: k for k in cameras},
                "episode_index": original_ids.tolist()},
    )
    recorded.save_recorded(dst, card=card, observations=observations, actions=actions,
                           episode_ids=episode_ids, rewards=rewards, successes=successes, frames=frames,
                           video_index=video_index)
    recorded.load_recorded(dst, progress=progress)  # the result must pass its own validation
    return dst


def _read_info(src: Path) -> dict:
    path = src / "meta" / "info.json"
    if not path.is_file():
        raise RecordedDataError(f"{src}: no meta/info.json; not a LeRobot dataset directory")
    try:
        info = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise RecordedDataError(f"{path} is not valid JSON ({e})") from e
    fps = info.get("fps")
    if not isinstance(fps, int | float) or not fps > 0:
        raise RecordedDataError(f"{path}: \"fps\" must be a positive number, got {fps!r}")
    return info


def _concat(tables):
    import pyarrow as pa

    try:
        return pa.concat_tables(tables, promote_options="default")
    except pa.ArrowInvalid as e:
        raise RecordedDataError(f"the parquet files disagree on their columns ({e})") from e


def _column(table, name: str) -> np.ndarray:
    """A column as [N, d] (list / fixed-size-list columns) or [N, 1] (scalars) numpy array."""
    import pyarrow as pa

    column = table.column(name).combine_chunks()
    n = len(column)
    if column.null_count:
        raise RecordedDataError(f"column {name!r} has {column.null_count} missing values")
    if pa.types.is_list(column.type) or pa.types.is_large_list(column.type) or pa.types.is_fixed_size_list(column.type):
        values = column.flatten().to_numpy(zero_copy_only=False)
        if n and values.size % n:
            raise RecordedDataError(f"column {name!r} has rows of different lengths")
        return values.reshape(n, -1)
    return column.to_numpy(zero_copy_only=False).reshape(n, -1)


def _single_task(src: Path, table, order: np.ndarray) -> str:
    tasks = _read_tasks(src)
    if "task_index" in table.column_names:
        used = sorted(set(_column(table, "task_index").ravel()[order].tolist()))
    else:
        used = sorted(tasks)
    texts = [tasks.get(i, "") for i in used]
    if len(texts) == 1 and texts[0]:
        return texts[0]
    raise RecordedDataError(
        f"{src}: the dataset has {len(texts)} tasks ({texts[:5]}); pass the goal text with task_text "
        "(--task-text) so the VLM is asked the right question")


def _read_tasks(src: Path) -> dict[int, str]:
    jsonl, parquet = src / "meta" / "tasks.jsonl", src / "meta" / "tasks.parquet"
    tasks: dict[int, str] = {}
    if jsonl.is_file():
        for line in jsonl.read_text().splitlines():
            if line.strip():
                entry = json.loads(line)
                tasks[int(entry["task_index"])] = str(entry["task"])
    elif parquet.is_file():
        import pyarrow.parquet as pq

        table = pq.read_table(parquet)
        text_column = "task" if "task" in table.column_names else next(
            (c for c in table.column_names if c != "task_index"), None)
        if text_column is not None and "task_index" in table.column_names:
            for index, text in zip(table.column("task_index").to_pylist(), table.column(text_column).to_pylist()):
                tasks[int(index)] = str(text)
    return tasks


def _video_files(src: Path, info: dict, key: str, original_ids: np.ndarray, episode_ids: np.ndarray):
    """(relative path per episode, episode per step, per-step time offset of the episode in its file)."""
    template = info.get("video_path")
    if not template:
        raise RecordedDataError(f"{src}: meta/info.json has no video_path template for video feature {key!r}")
    if str(info.get("codebase_version", "")).startswith("v3"):
        per_episode = _episodes_v3(src)
        paths, offsets = [], []
        for episode in original_ids.tolist():
            if episode not in per_episode:
                raise RecordedDataError(f"{src}: meta/episodes has no entry for episode {episode}")
            row = per_episode[episode]
            try:
                chunk, file, start = (row[f"videos/{key}/chunk_index"], row[f"videos/{key}/file_index"],
                                      row[f"videos/{key}/from_timestamp"])
            except KeyError as e:
                raise RecordedDataError(f"{src}: meta/episodes lacks {e.args[0]!r}") from e
            paths.append(template.format(video_key=key, chunk_index=int(chunk), file_index=int(file)))
            offsets.append(float(start))
        return paths, episode_ids, np.asarray(offsets)[episode_ids]
    chunks_size = int(info.get("chunks_size", 1000))
    paths = [template.format(episode_chunk=int(e) // chunks_size, video_key=key, episode_index=int(e))
             for e in original_ids.tolist()]
    return paths, episode_ids, np.zeros(len(episode_ids))


def _episodes_v3(src: Path) -> dict[int, dict]:
    import pyarrow.parquet as pq

    files = sorted((src / "meta" / "episodes").rglob("*.parquet"))
    if not files:
        raise RecordedDataError(f"{src}: codebase v3 dataset without meta/episodes/*.parquet")
    out = {}
    for path in files:
        for row in pq.read_table(path).to_pylist():
            out[int(row["episode_index"])] = row
    return out


def _video_size(path: Path) -> tuple[int, int]:
    import imageio_ffmpeg

    reader = imageio_ffmpeg.read_frames(os.fspath(path), pix_fmt="rgb24")
    try:
        meta = next(reader)
    except (RuntimeError, OSError, StopIteration) as e:
        raise RecordedDataError(f"{path}: not a readable video ({e})") from e
    finally:
        reader.close()
    return tuple(meta["size"])


def _decode_images(column, order: np.ndarray, *, progress: bool, name: str) -> np.ndarray:
    import io

    from PIL import Image

    rows = column.combine_chunks().to_pylist()
    first = None
    out = None
    for i, j in enumerate(tqdm(order.tolist(), desc=f"decode images {name}", unit="frame", disable=not progress)):
        cell = rows[j]
        data = cell.get("bytes") if isinstance(cell, dict) else cell
        if not data:
            raise RecordedDataError(f"camera {name!r}: step {i} has no image bytes")
        image = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
        if first is None:
            first = image.shape
            out = np.empty((len(order), *first), np.uint8)
        elif image.shape != first:
            raise RecordedDataError(f"camera {name!r}: step {i} is {image.shape}, earlier frames are {first}")
        out[i] = image
    return out


def _names(feature: dict, dim: int) -> list[str] | None:
    names = feature.get("names")
    if isinstance(names, dict) and len(names) == 1:
        names = next(iter(names.values()))
    if isinstance(names, list) and len(names) == dim and all(isinstance(n, str) for n in names):
        return names
    return None
