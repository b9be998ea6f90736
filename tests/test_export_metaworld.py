"""MetaWorld data -> the recorded format: frames equal the MetaWorld path's, rewards carry over."""

import numpy as np
import pytest

from plare_jax.data.recorded import load_recorded, recorded_pair_images
from plare_jax.data.segments import sample_segment_pairs
from plare_jax.envs.collect import CollectionConfig, collect_dataset
from plare_jax.envs.to_recorded import export_metaworld
from plare_jax.envs.render import RenderConfig, render_pair_images


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    config = CollectionConfig("drawer-open", num_episodes=2, horizon=30, seed=5)
    return collect_dataset(config, cache_dir=tmp_path_factory.mktemp("cache"), workers=1, progress=False)


@pytest.mark.slow
def test_export_npy_reproduces_pairs_and_images(dataset, tmp_path):
    out = export_metaworld(dataset, tmp_path / "rec", workers=1, progress=False)
    rec = load_recorded(out, progress=False)
    np.testing.assert_array_equal(rec.observations, dataset.observations)
    np.testing.assert_array_equal(rec.actions, dataset.actions)
    np.testing.assert_array_equal(rec.rewards, dataset.rewards)
    np.testing.assert_array_equal(rec.successes, dataset.successes)
    assert rec.task_text == "open the drawer" and rec.fps == pytest.approx(80.0)
    assert rec.card["source"]["task"] == "drawer-open-v3" and len(rec.card["observation_names"]) == 39
    pairs = sample_segment_pairs(dataset, 4, segment_length=10, rng=np.random.default_rng(2))
    again = sample_segment_pairs(rec, 4, segment_length=10, rng=np.random.default_rng(2))
    np.testing.assert_array_equal(pairs.starts, again.starts)
    np.testing.assert_array_equal(pairs.progress, again.progress)
    rendered = render_pair_images(dataset, pairs, RenderConfig(num_keyframes=3), workers=1, progress=False)
    np.testing.assert_array_equal(recorded_pair_images(rec, pairs, num_keyframes=3), rendered)
    with pytest.raises(FileExistsError, match="exists"):
        export_metaworld(dataset, out, workers=1, progress=False)


@pytest.mark.slow
def test_export_video_is_close_to_the_rendered_frames(dataset, tmp_path):
    out = export_metaworld(dataset, tmp_path / "vid", frames="video", workers=1, progress=False)
    rec = load_recorded(out, progress=False)
    camera = rec.camera()
    assert camera.storage == "video" and len(camera.video_files) == 2
    pairs = sample_segment_pairs(dataset, 3, segment_length=10, rng=np.random.default_rng(3))
    rendered = render_pair_images(dataset, pairs, RenderConfig(num_keyframes=3), workers=1, progress=False)
    decoded = recorded_pair_images(rec, pairs, num_keyframes=3)
    assert np.abs(decoded.astype(int) - rendered).mean() < 4  # H.264 loss only
