"""Label order end to end: segment 0 -> image 0 -> the model's answer "0" -> training label 0.

The data stage of the experiment runs for real (collection, pair sampling, rendering, the VLM
client, the label store, answer parsing, training targets) against the loopback server, a test
double of the model that prefers the brighter of the two images. The expected label of every
pair is computed here from the images of its two segments, in the order the training data
holds them: a swap anywhere in the chain (pairs, images, request, answer, store, targets) fails.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from plare_jax.data.segments import sample_segment_pairs
from plare_jax.envs.collect import CollectionConfig, collect_dataset
from plare_jax.envs.render import RenderConfig, encode_png, render_pair_images
from plare_jax.testing.loopback_server import LoopbackBehavior, LoopbackVLMServer
from plare_jax.pipeline.config import ExperimentConfig, VLMOptions
from plare_jax.pipeline.run import prepare_task
from plare_jax.pipeline.labels import LabelerChoice


def brightness(png: bytes) -> float:
    with Image.open(io.BytesIO(png)) as image:
        return float(np.asarray(image.convert("L"), np.float64).mean())


@pytest.mark.slow
def test_segment_order_survives_rendering_the_vlm_and_the_training_targets(tmp_path):
    # tie_margin 0: the fake model always names the brighter clip (exact ties only are unsure).
    with LoopbackVLMServer(behavior=LoopbackBehavior(tie_margin=0.0)) as server:
        config = ExperimentConfig(
            env=("reach",), labeler="vlm", num_episodes=4, collection_horizon=60, num_pairs=24,
            segment_length=16, num_keyframes=2, workers=1, cache_dir=tmp_path / "cache",
            vlm=VLMOptions(base_url=server.base_url, model=server.model),
        )  # fmt: skip
        choice = LabelerChoice("vlm", "loopback test server", base_url=server.base_url)
        data = prepare_task(config, choice, "reach-v3", 0, server.base_url)
    training = data.training

    dataset = collect_dataset(
        CollectionConfig(task="reach-v3", num_episodes=4, horizon=60, seed=0), cache_dir=tmp_path / "cache" / "datasets",
        workers=1, progress=False,
    )  # fmt: skip
    pairs = sample_segment_pairs(dataset, 24, segment_length=16, rng=np.random.default_rng(0))
    # The training pairs are these pairs, segment 0 first: its rows start at pairs.starts[:, 0].
    np.testing.assert_array_equal(training.pair_rows[:, :, 0], pairs.starts)
    np.testing.assert_array_equal(training.pair_observations[:, 0, 0], dataset.observations[pairs.starts[:, 0]])

    images = render_pair_images(dataset, pairs, RenderConfig(num_keyframes=2), workers=1)
    first, second = (np.array([brightness(encode_png(pair[k])) for pair in images]) for k in (0, 1))
    first_preferred = first > second
    sure = first != second
    assert first_preferred[sure].any() and (~first_preferred[sure]).any()  # both answers occur
    # label = probability that the SECOND segment is preferred; unsure answers get weight 0
    np.testing.assert_array_equal(training.weights, sure.astype(np.float32))
    np.testing.assert_array_equal(training.labels[sure], np.where(first_preferred, 0.0, 1.0)[sure])
