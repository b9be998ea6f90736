"""The recorded-data format: round trip, keyframe strips from stored frames, and clear errors."""

import json

import numpy as np
import pytest

from plare_jax.data.keyframes import keyframe_offsets, tile_keyframes
from plare_jax.data.recorded import (
    RecordedDataError,
    load_recorded,
    make_card,
    recorded_pair_images,
    save_recorded,
)
from plare_jax.data.segments import gather_segments, sample_segment_pairs
from plare_jax.data.video import write_video

LENGTHS = (12, 9)  # two episodes
H, W = 16, 24


def level_frames(levels) -> np.ndarray:
    """Flat grey frames whose level encodes which frame it is (survives H.264 within a few units)."""
    levels = np.asarray(levels)
    return np.broadcast_to(levels[:, None, None, None], (len(levels), H, W, 3)).astype(np.uint8).copy()


def make_dataset(root, *, video=True):
    """Two episodes with an npy camera "top" and a video camera "front" (one mp4 per episode)."""
    n = sum(LENGTHS)
    rng = np.random.default_rng(0)
    episode_ids = np.repeat(np.arange(len(LENGTHS)), LENGTHS)
    starts = np.r_[0, np.cumsum(LENGTHS)[:-1]]
    step_in_episode = np.arange(n) - starts[episode_ids]
    cameras = {"top": {"storage": "npy", "height": H, "width": W}}
    video_index = {}
    if video:
        files = [f"videos/front/episode_{e}.mp4" for e in range(len(LENGTHS))]
        cameras["front"] = {"storage": "video", "height": H, "width": W, "files": files}
        (root / "videos" / "front").mkdir(parents=True)
        for e, length in enumerate(LENGTHS):
            write_video(root / files[e], level_frames(10 * np.arange(length) + 5), fps=10)
        video_index["front"] = (episode_ids, step_in_episode)
    card = make_card(task_text="stack the cubes", fps=10, cameras=cameras, observation_units="rad",
                     action_units="rad/s")
    save_recorded(root, card=card, observations=rng.normal(size=(n, 5)), actions=rng.uniform(-1, 1, (n, 2)),
                  episode_ids=episode_ids, rewards=rng.normal(size=n).astype(np.float32),
                  frames={"top": level_frames(np.arange(n) * 7 % 250)}, video_index=video_index)
    return root


@pytest.fixture(scope="module")
def dataset_dir(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("recorded") / "ds")


def rewrite_steps(root, **changes):
    with np.load(root / "steps.npz") as z:
        arrays = {k: z[k] for k in z.files}
    for key, value in changes.items():
        if value is None:
            arrays.pop(key)
        else:
            arrays[key] = value
    np.savez(root / "steps.npz", **arrays)


@pytest.fixture
def copy_dir(dataset_dir, tmp_path):
    import shutil

    target = tmp_path / "copy"
    shutil.copytree(dataset_dir, target)
    return target


def test_round_trip(dataset_dir):
    ds = load_recorded(dataset_dir, progress=False)
    assert ds.num_steps == sum(LENGTHS) and ds.num_episodes == 2
    np.testing.assert_array_equal(ds.episode_lengths, LENGTHS)
    assert ds.observations.dtype == np.float32 and ds.observations.shape == (21, 5)
    assert ds.task_text == "stack the cubes" and ds.fps == 10.0
    assert ds.card["num_steps"] == 21 and ds.card["units"] == {"observations": "rad", "actions": "rad/s"}
    assert sorted(ds.cameras) == ["front", "top"] and ds.successes is None


def test_video_frames_follow_the_index(dataset_dir):
    ds = load_recorded(dataset_dir, progress=False)
    rows = np.array([20, 0, 13, 11])  # episode 1 step 8, episode 0 step 0, episode 1 step 1, episode 0 step 11
    frames = ds.camera("front").read(rows)
    expected = np.array([85, 5, 15, 115])
    np.testing.assert_allclose(frames.reshape(4, -1).mean(axis=1), expected, atol=3)


def test_pair_images_tile_stored_frames(dataset_dir):
    ds = load_recorded(dataset_dir, progress=False)
    pairs = sample_segment_pairs(ds, 5, segment_length=8, rng=np.random.default_rng(1))
    images = recorded_pair_images(ds, pairs, camera="top", num_keyframes=3)
    assert images.shape == (5, 2, H, 3 * W, 3)
    rows = pairs.starts[3, 1] + keyframe_offsets(8, 3)
    expected = tile_keyframes(ds.cameras["top"].array[rows], captions=True)
    np.testing.assert_array_equal(images[3, 1], expected)
    # the default camera is the first in the card
    np.testing.assert_array_equal(recorded_pair_images(ds, pairs, num_keyframes=3), images)
    obs, act = gather_segments(ds, pairs.starts, 8)
    np.testing.assert_array_equal(obs[0, 0], ds.observations[pairs.starts[0, 0]:pairs.starts[0, 0] + 8])
    assert np.isfinite(pairs.returns).all()


def test_no_rewards_gives_nan_scores(tmp_path):
    card = make_card(task_text="t", fps=5)
    save_recorded(tmp_path / "d", card=card, observations=np.zeros((20, 2)), actions=np.zeros((20, 1)),
                  episode_ids=np.zeros(20, int))
    ds = load_recorded(tmp_path / "d")
    pairs = sample_segment_pairs(ds, 3, segment_length=4, rng=np.random.default_rng(0))
    assert np.isnan(pairs.returns).all() and np.isnan(pairs.progress).all() and not pairs.successes.any()
    with pytest.raises(RecordedDataError, match="has no camera frames"):
        recorded_pair_images(ds, pairs)


# --- corrupt or inconsistent inputs: each fails at load time with a message naming the problem


def test_missing_directory_and_files(tmp_path, copy_dir):
    with pytest.raises(RecordedDataError, match="no recorded dataset at"):
        load_recorded(tmp_path / "nothing")
    (copy_dir / "frames" / "top.npy").unlink()
    with pytest.raises(RecordedDataError, match=r"camera 'top': its frames file .*top.npy is missing"):
        load_recorded(copy_dir)


def test_missing_video(copy_dir):
    (copy_dir / "videos" / "front" / "episode_1.mp4").unlink()
    with pytest.raises(RecordedDataError, match=r"camera 'front': video .*episode_1.mp4 is missing"):
        load_recorded(copy_dir)


def test_fewer_frames_than_steps(copy_dir):
    np.save(copy_dir / "frames" / "top.npy", level_frames(np.arange(20)))
    with pytest.raises(RecordedDataError, match="has 20 frames but the dataset has 21 steps"):
        load_recorded(copy_dir)


def test_mismatched_lengths(copy_dir):
    rewrite_steps(copy_dir, actions=np.zeros((20, 2), np.float32))
    with pytest.raises(RecordedDataError, match="actions has 20 rows but episode_ids has 21"):
        load_recorded(copy_dir)


def test_nan_in_actions_names_the_step(copy_dir):
    actions = np.zeros((21, 2), np.float32)
    actions[15, 1] = np.nan
    rewrite_steps(copy_dir, actions=actions)
    with pytest.raises(RecordedDataError, match=r"actions has 1 non-finite values \(NaN or inf\), the first at "
                                                r"step 15 \(episode 1, step 3 of the episode\)"):
        load_recorded(copy_dir)


def test_video_shorter_than_its_index(copy_dir):
    with np.load(copy_dir / "steps.npz") as z:
        index = z["frame_index_front"].copy()
    index[12:] += 1  # episode 1 now asks for frames 1..9 of a 9-frame video
    rewrite_steps(copy_dir, frame_index_front=index)
    with pytest.raises(RecordedDataError, match=r"episode_1.mp4 has 9 frames but frame_index_front asks for "
                                                r"frame 9 \(first at step 20 .*shorter than its index"):
        load_recorded(copy_dir)


def test_wrong_dtypes(copy_dir):
    np.save(copy_dir / "frames" / "top.npy", level_frames(np.arange(21)).astype(np.float32))
    with pytest.raises(RecordedDataError, match=r"top.npy must be \[N, H, W, 3\] uint8 \(RGB\), got float32"):
        load_recorded(copy_dir)
    np.save(copy_dir / "frames" / "top.npy", level_frames(np.arange(21)))
    rewrite_steps(copy_dir, episode_ids=np.zeros(21, np.float32))
    with pytest.raises(RecordedDataError, match="episode_ids must be a 1-D integer array, got float32"):
        load_recorded(copy_dir)
    rewrite_steps(copy_dir, episode_ids=np.repeat([0, 1], LENGTHS), observations=np.zeros((21, 5), bool))
    with pytest.raises(RecordedDataError, match="observations must be a numeric"):
        load_recorded(copy_dir)


def test_episode_ids_must_be_contiguous(copy_dir):
    rewrite_steps(copy_dir, episode_ids=np.repeat([0, 2], LENGTHS))
    with pytest.raises(RecordedDataError, match="step 12 has episode id 2 after 0"):
        load_recorded(copy_dir)


def test_bad_card(copy_dir):
    card = json.loads((copy_dir / "card.json").read_text())
    card["fps"] = 0
    (copy_dir / "card.json").write_text(json.dumps(card))
    with pytest.raises(RecordedDataError, match='"fps" must be a positive number'):
        load_recorded(copy_dir)
    card["fps"], card["num_steps"] = 10, 99
    (copy_dir / "card.json").write_text(json.dumps(card))
    with pytest.raises(RecordedDataError, match="num_steps is 99 but steps.npz holds 21"):
        load_recorded(copy_dir)


def test_save_refuses_bad_arrays(tmp_path):
    card = make_card(task_text="t", fps=5)
    with pytest.raises(RecordedDataError, match="observations has 1 non-finite"):
        save_recorded(tmp_path / "d", card=card, observations=np.array([[np.inf]]), actions=np.zeros((1, 1)),
                      episode_ids=np.zeros(1, int))
    assert not (tmp_path / "d").exists()
