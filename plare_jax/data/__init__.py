"""Offline dataset formats and segment/pair sampling (numpy only: no simulator, no JAX).

`dataset`: MetaWorld's offline data (with simulator states). `recorded`: recorded robot data with
camera frames or videos and no simulator. `keyframes`: the keyframe strips a labeler sees.
"""

from plare_jax.data.dataset import DatasetError, OfflineDataset, load_dataset, save_dataset
from plare_jax.data.recorded import (
    RecordedDataError,
    RecordedDataset,
    load_recorded,
    make_card,
    recorded_pair_images,
    save_recorded,
)
from plare_jax.data.segments import SegmentPairs, gather_segments, sample_segment_pairs, valid_segment_starts

__all__ = [
    "DatasetError",
    "OfflineDataset",
    "RecordedDataError",
    "RecordedDataset",
    "SegmentPairs",
    "gather_segments",
    "load_dataset",
    "load_recorded",
    "make_card",
    "recorded_pair_images",
    "sample_segment_pairs",
    "save_dataset",
    "save_recorded",
    "valid_segment_starts",
]
