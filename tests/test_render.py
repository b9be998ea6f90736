import io

import numpy as np
import pytest
from PIL import Image

from plare_jax.data.segments import SegmentPairs
from plare_jax.envs.collect import CollectionConfig, collect_dataset, run_episode
from plare_jax.envs.render import (
    RenderConfig,
    SceneRenderer,
    encode_png,
    keyframe_offsets,
    render_pair_images,
    render_rows,
    tile_keyframes,
)
from plare_jax.envs.sim import ExpertPolicy, TaskEnv

CONFIG = CollectionConfig("drawer-open", num_episodes=2, horizon=60, seed=11, stretch_prob=0.1)
LIVE_STEPS = (0, 25, 59)
VIEW = RenderConfig(captions=False)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return collect_dataset(CONFIG, cache_dir=tmp_path_factory.mktemp("cache"), workers=1, progress=False)


@pytest.fixture(scope="module")
def live_frames():
    """Frames rendered during a live run of episode 1 of CONFIG (same stream as the dataset)."""
    env = TaskEnv(CONFIG.task)
    renderer = SceneRenderer(env, VIEW)
    frames = {}

    def observer(t, live_env):
        if t in LIVE_STEPS:
            frames[t] = renderer.render_current()

    run_episode(env, ExpertPolicy(CONFIG.task), CONFIG, 1, observer=observer)
    renderer.close()
    env.close()
    return frames


def wood_fraction(image: np.ndarray) -> float:
    """Fraction of brown table-wood pixels (the table fills the lower part of an upright view)."""
    r, g, b = (image[..., i].astype(int) for i in range(3))
    wood = (r > 50) & (r < 190) & (r - b > 15) & (r - b < 80) & (g - b > 3) & (r - g < 45)
    return float(wood.mean())


def test_rerender_from_stored_state_equals_live_frame(dataset, live_frames):
    start = int(dataset.episode_starts[1])
    rows = np.array([start + t for t in LIVE_STEPS])
    frames = render_rows(dataset, rows, VIEW, workers=1, progress=False)
    for t, row in zip(LIVE_STEPS, rows):
        live, again = live_frames[t].astype(int), frames[int(row)].astype(int)
        assert np.abs(live - again).mean() < 0.5, f"step {t}"
        assert (np.abs(live - again) > 8).mean() < 0.002, f"step {t}"
    # The frames show motion, so equality above is not trivial.
    assert np.abs(live_frames[0].astype(int) - live_frames[59].astype(int)).mean() > 1.0


def test_layout_matters_for_the_frame(dataset):
    """Restoring the state under another episode's layout draws a different scene (the drawer body
    position is a model field set at reset), so the layout must be stored and used."""
    env = TaskEnv(CONFIG.task)
    renderer = SceneRenderer(env, VIEW)
    row = int(dataset.episode_starts[1])
    right = renderer.render_states(dataset.episode_layouts[1], dataset.sim_states[row : row + 1])[0]
    wrong = renderer.render_states(dataset.episode_layouts[0], dataset.sim_states[row : row + 1])[0]
    renderer.close()
    assert np.abs(right.astype(int) - wrong.astype(int)).mean() > 0.5


def test_images_are_upright(dataset):
    frame = render_rows(dataset, np.array([0]), VIEW, workers=1, progress=False)[0]
    h = frame.shape[0]
    lower, upper = wood_fraction(frame[h // 2 :]), wood_fraction(frame[: h // 2])
    assert lower > 0.3 and lower > upper + 0.1, (lower, upper)
    flipped = frame[::-1, ::-1]
    assert wood_fraction(flipped[h // 2 :]) < wood_fraction(flipped[: h // 2])


def test_keyframe_offsets_follow_reference():
    np.testing.assert_array_equal(keyframe_offsets(64, 3), [0, 36, 63])
    np.testing.assert_array_equal(keyframe_offsets(64, 8), np.round(np.linspace(0, 63, 8)))
    assert keyframe_offsets(10, 1).tolist() == [0]
    with pytest.raises(ValueError):
        keyframe_offsets(0, 3)


def test_pair_images_shape_captions_and_workers(dataset):
    ep1 = int(dataset.episode_starts[1])
    pairs = SegmentPairs(
        starts=np.array([[0, ep1], [ep1 + 10, 5]]),
        length=40,
        returns=np.zeros((2, 2), np.float32),
        successes=np.zeros((2, 2), bool),
        progress=np.zeros((2, 2), np.float32),
    )
    config = RenderConfig(width=96, height=80, num_keyframes=3)
    images = render_pair_images(dataset, pairs, config, workers=1, progress=False)
    assert images.shape == (2, 2, 80, 96 * 3, 3) and images.dtype == np.uint8
    plain = render_pair_images(
        dataset, pairs, RenderConfig(width=96, height=80, captions=False), workers=1, progress=False
    )
    # captions change only the top-left corner of each frame
    diff = np.abs(images.astype(int) - plain.astype(int)).sum(-1)
    assert diff[..., :20, :].sum() > 0 and diff[..., 30:, :].sum() == 0
    # the middle keyframe of segment 0 is row 0 + 22 (T=40: subsample rows 0,6,11,17,22,28,33,39; keep 0, 4, 7)
    assert keyframe_offsets(40, 3).tolist() == [0, 22, 39]
    mid = render_rows(dataset, np.array([22]), RenderConfig(width=96, height=80), workers=1, progress=False)[22]
    np.testing.assert_array_equal(plain[0, 0, :, 96:192], mid)
    parallel = render_pair_images(dataset, pairs, config, workers=2, progress=False)
    np.testing.assert_array_equal(parallel, images)


def test_tile_and_png():
    frames = np.stack([np.full((20, 30, 3), v, np.uint8) for v in (10, 20)])
    tiled = tile_keyframes(frames, captions=False)
    assert tiled.shape == (20, 60, 3) and tiled[0, 0, 0] == 10 and tiled[0, 59, 0] == 20
    png = encode_png(tiled)
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(png))), tiled)
    with pytest.raises(ValueError, match="uint8"):
        encode_png(tiled.astype(np.float32))
