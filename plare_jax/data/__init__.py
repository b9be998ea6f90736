"""Offline dataset format and segment/pair sampling (numpy only: no simulator, no JAX)."""

from plare_jax.data.dataset import DatasetError, OfflineDataset, load_dataset, save_dataset
from plare_jax.data.segments import SegmentPairs, gather_segments, sample_segment_pairs, valid_segment_starts

__all__ = [
    "DatasetError",
    "OfflineDataset",
    "SegmentPairs",
    "gather_segments",
    "load_dataset",
    "sample_segment_pairs",
    "save_dataset",
    "valid_segment_starts",
]
