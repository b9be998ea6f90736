"""Importers: small LeRobot (v2.1 and v3.0 layouts) and Minari datasets built here, then imported."""

import json

import numpy as np
import pytest

from plare_jax.data.recorded import RecordedDataError, load_recorded
from plare_jax.data.video import write_video

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")

FPS = 10
SOURCE_EPISODES = (3, 7)  # LeRobot episode indices (renumbered to 0, 1 on import)
LENGTHS = (6, 8)
H, W = 16, 32


def level_frames(levels, h=H, w=W):
    levels = np.asarray(levels)
    return np.broadcast_to(levels[:, None, None, None], (len(levels), h, w, 3)).astype(np.uint8).copy()


def png(level: int) -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(level_frames([level], 8, 8)[0]).save(buf, format="PNG")
    return buf.getvalue()


def episode_table(episode: int, length: int, first_index: int) -> "pa.Table":
    steps = np.arange(length)
    state = np.stack([np.full(length, episode, np.float32), steps.astype(np.float32), np.ones(length, np.float32)], 1)
    action = np.stack([steps / 10.0, -steps / 10.0], 1).astype(np.float32)
    return pa.table({
        "observation.state": pa.array(list(state), type=pa.list_(pa.float32(), 3)),
        "action": pa.array(list(action), type=pa.list_(pa.float32(), 2)),
        "timestamp": pa.array(steps / FPS, type=pa.float32()),
        "frame_index": pa.array(steps, type=pa.int64()),
        "episode_index": pa.array(np.full(length, episode), type=pa.int64()),
        "index": pa.array(first_index + steps, type=pa.int64()),
        "task_index": pa.array(np.zeros(length, np.int64)),
        "next.reward": pa.array(steps.astype(np.float32) * episode),
        "observation.images.wrist": pa.array(
            [{"bytes": png(int(10 * s + episode)), "path": None} for s in steps],
            type=pa.struct([("bytes", pa.binary()), ("path", pa.string())])),
    })


FEATURES = {
    "observation.state": {"dtype": "float32", "shape": [3], "names": {"motors": ["a", "b", "c"]}},
    "action": {"dtype": "float32", "shape": [2], "names": ["x", "y"]},
    "observation.images.top": {"dtype": "video", "shape": [H, W, 3], "names": ["height", "width", "channel"]},
    "observation.images.wrist": {"dtype": "image", "shape": [8, 8, 3], "names": ["height", "width", "channel"]},
    "timestamp": {"dtype": "float32", "shape": [1]}, "frame_index": {"dtype": "int64", "shape": [1]},
    "episode_index": {"dtype": "int64", "shape": [1]}, "index": {"dtype": "int64", "shape": [1]},
    "task_index": {"dtype": "int64", "shape": [1]}, "next.reward": {"dtype": "float32", "shape": [1]},
}


def top_levels(episode: int, length: int) -> np.ndarray:
    return 20 * np.arange(length) + 3 * episode


def write_lerobot_v21(root):
    (root / "meta").mkdir(parents=True)
    info = {"codebase_version": "v2.1", "fps": FPS, "chunks_size": 1000, "robot_type": "toy",
            "data_path": "data/chunk-{episode_chunk:03d}/episode_{episode_index:06d}.parquet",
            "video_path": "videos/chunk-{episode_chunk:03d}/{video_key}/episode_{episode_index:06d}.mp4",
            "features": FEATURES}
    (root / "meta" / "info.json").write_text(json.dumps(info))
    (root / "meta" / "tasks.jsonl").write_text(json.dumps({"task_index": 0, "task": "pick up the cube"}) + "\n")
    first = 0
    for episode, length in zip(SOURCE_EPISODES, LENGTHS):
        path = root / info["data_path"].format(episode_chunk=0, episode_index=episode)
        path.parent.mkdir(parents=True, exist_ok=True)
        table = episode_table(episode, length, first)
        pq.write_table(table.take(np.random.default_rng(episode).permutation(length)), path)  # rows unsorted
        video = root / info["video_path"].format(episode_chunk=0, video_key="observation.images.top",
                                                 episode_index=episode)
        video.parent.mkdir(parents=True, exist_ok=True)
        write_video(video, level_frames(top_levels(episode, length)), fps=FPS)
        first += length
    return root


def write_lerobot_v30(root):
    """Both episodes in one parquet file and one mp4, located through meta/episodes."""
    (root / "meta" / "episodes" / "chunk-000").mkdir(parents=True)
    info = {"codebase_version": "v3.0", "fps": FPS, "chunks_size": 1000,
            "data_path": "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet",
            "video_path": "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4",
            "features": FEATURES}
    (root / "meta" / "info.json").write_text(json.dumps(info))
    pq.write_table(pa.table({"task_index": [0], "task": ["pick up the cube"]}), root / "meta" / "tasks.parquet")
    tables, frames, episodes, first, offset = [], [], [], 0, 0.0
    for episode, length in zip(SOURCE_EPISODES, LENGTHS):
        tables.append(episode_table(episode, length, first))
        frames.append(level_frames(top_levels(episode, length)))
        episodes.append({"episode_index": episode, "length": length,
                         "videos/observation.images.top/chunk_index": 0,
                         "videos/observation.images.top/file_index": 0,
                         "videos/observation.images.top/from_timestamp": offset,
                         "videos/observation.images.top/to_timestamp": offset + length / FPS})
        first += length
        offset += length / FPS
    data = root / "data" / "chunk-000" / "file-000.parquet"
    data.parent.mkdir(parents=True)
    pq.write_table(pa.concat_tables(tables), data)
    pq.write_table(pa.Table.from_pylist(episodes), root / "meta" / "episodes" / "chunk-000" / "file-000.parquet")
    video = root / "videos" / "observation.images.top" / "chunk-000" / "file-000.mp4"
    video.parent.mkdir(parents=True)
    write_video(video, np.concatenate(frames), fps=FPS)
    return root


@pytest.mark.parametrize("writer", [write_lerobot_v21, write_lerobot_v30])
def test_lerobot_import(tmp_path, writer):
    from plare_jax.data.importers import import_lerobot

    src = writer(tmp_path / "lerobot")
    out = import_lerobot(src, tmp_path / "out", progress=False)
    ds = load_recorded(out, progress=False)
    np.testing.assert_array_equal(ds.episode_lengths, LENGTHS)
    # state column 0 = source episode, column 1 = step: sorted by (episode, frame) and renumbered
    np.testing.assert_array_equal(ds.observations[:, 0], np.repeat(SOURCE_EPISODES, LENGTHS))
    np.testing.assert_array_equal(ds.observations[:, 1], np.concatenate([np.arange(n) for n in LENGTHS]))
    np.testing.assert_allclose(ds.actions[7], [0.1, -0.1])
    np.testing.assert_allclose(ds.rewards[6:9], [0, 7, 14])
    assert ds.task_text == "pick up the cube" and ds.fps == FPS
    assert ds.card["observation_names"] == ["a", "b", "c"] and ds.card["action_names"] == ["x", "y"]
    assert ds.card["source"]["episode_index"] == list(SOURCE_EPISODES)
    assert list(ds.cameras) == ["top", "wrist"]
    assert ds.cameras["top"].storage == "video" and ds.cameras["wrist"].storage == "npy"
    rows = np.array([0, 5, 6, 13])
    expected_top = [top_levels(3, 6)[0], top_levels(3, 6)[5], top_levels(7, 8)[0], top_levels(7, 8)[7]]
    got = ds.camera("top").read(rows).reshape(4, -1).mean(axis=1)
    np.testing.assert_allclose(got, expected_top, atol=3)
    np.testing.assert_array_equal(ds.camera("wrist").read(rows)[:, 0, 0, 0], [3, 53, 7, 77])


def test_lerobot_errors(tmp_path):
    from plare_jax.data.importers import import_lerobot

    src = write_lerobot_v21(tmp_path / "lerobot")
    with pytest.raises(RecordedDataError, match="no feature 'observation.joints' for state_key"):
        import_lerobot(src, tmp_path / "a", state_key="observation.joints", progress=False)
    with pytest.raises(RecordedDataError, match="no meta/info.json"):
        import_lerobot(tmp_path, tmp_path / "b", progress=False)
    # a video shorter than its timestamps fails the final validation, naming the file
    write_video(src / "videos/chunk-000/observation.images.top/episode_000007.mp4",
                level_frames(np.arange(5)), fps=FPS)
    with pytest.raises(RecordedDataError, match="episode_000007.mp4 has 5 frames but frame_index_top asks for frame 7"):
        import_lerobot(src, tmp_path / "c", progress=False)


def test_minari_import(tmp_path, monkeypatch):
    minari = pytest.importorskip("minari")
    gym = pytest.importorskip("gymnasium")
    from minari.data_collector.episode_buffer import EpisodeBuffer

    from plare_jax.data.importers import import_minari

    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path / "minari"))
    obs_space = gym.spaces.Dict({"state": gym.spaces.Box(-10, 10, (3,), np.float32),
                                 "goal": gym.spaces.Box(-10, 10, (2,), np.float32),
                                 "pixels": gym.spaces.Box(0, 255, (8, 8, 3), np.uint8)})
    act_space = gym.spaces.Box(-1, 1, (2,), np.float32)
    buffers = []
    for e, length in enumerate((5, 7)):
        steps = np.arange(length + 1)
        obs = {"state": np.stack([steps, steps * 0 + e, steps * 2], 1).astype(np.float32),
               "goal": np.full((length + 1, 2), 9.0, np.float32),
               "pixels": level_frames(steps * 10 + e, 8, 8)}
        buffers.append(EpisodeBuffer(
            id=e, observations=obs, actions=np.full((length, 2), 0.5 * e, np.float32),
            rewards=np.arange(length, dtype=np.float64), terminations=np.zeros(length, bool),
            truncations=np.r_[np.zeros(length - 1, bool), True],
            infos={"success": np.r_[np.zeros(length, bool), True]}))
    minari.create_dataset_from_buffers("test/toy-v0", buffers, observation_space=obs_space,
                                       action_space=act_space, algorithm_name="scripted", data_format="hdf5")
    out = import_minari("test/toy-v0", tmp_path / "out", task_text="reach the goal", progress=False)
    ds = load_recorded(out, progress=False)
    np.testing.assert_array_equal(ds.episode_lengths, [5, 7])
    # Dict entries in key order: goal (2) then state (3); the final observation of each episode is dropped
    np.testing.assert_array_equal(ds.observations[5], [9, 9, 0, 1, 0])
    np.testing.assert_array_equal(ds.observations[4], [9, 9, 4, 0, 8])
    np.testing.assert_array_equal(ds.actions[5:7], [[0.5, 0.5]] * 2)
    np.testing.assert_array_equal(ds.rewards[:5], np.arange(5))
    np.testing.assert_array_equal(np.flatnonzero(ds.successes), [4, 11])  # success after each last action
    assert list(ds.cameras) == ["pixels"] and ds.task_text == "reach the goal"
    np.testing.assert_array_equal(ds.camera("pixels").read(np.array([0, 6]))[:, 0, 0, 0], [0, 11])
    assert ds.card["source"]["dataset_id"] == "test/toy-v0" and ds.card["source"]["fps_known"] is False
    # the data directory works as well as the id
    out2 = import_minari(tmp_path / "minari" / "test" / "toy-v0" / "data", tmp_path / "out2",
                         observation_keys=["state"], camera_keys=[], progress=False)
    ds2 = load_recorded(out2, progress=False)
    assert ds2.observations.shape == (12, 3) and not ds2.cameras
