"""Fixed-length segments inside episodes and seeded pairs of them.

A segment of length T starting at row s covers rows s..s+T-1 of one episode: observation
s+t and action s+t are the same step (the action was taken AT that observation). There is
no off-by-one shift between observations and actions.
"""

from __future__ import annotations

import dataclasses
from typing import Protocol

import numpy as np


class StepData(Protocol):
    """What segments need of a dataset: MetaWorld's `OfflineDataset` and `RecordedDataset` both fit.

    Rows are steps of episodes concatenated in step order; `rewards` and `successes` may be None
    (recorded data without a reward signal), and then pairs carry NaN returns and progress.
    """

    observations: np.ndarray  # [N, O]
    actions: np.ndarray  # [N, A]
    episode_ids: np.ndarray  # [N] int, 0..E-1, contiguous
    rewards: np.ndarray | None  # [N]
    successes: np.ndarray | None  # [N] bool

    @property
    def num_steps(self) -> int: ...

    @property
    def episode_starts(self) -> np.ndarray: ...

    @property
    def episode_lengths(self) -> np.ndarray: ...


@dataclasses.dataclass(frozen=True, eq=False)
class SegmentPairs:
    """P pairs of equal-length segments.

    Attributes:
        starts: [P, 2] int64 row index of each segment's first step.
        length: T, steps per segment.
        returns: [P, 2] float32 ground-truth segment return (sum of rewards over the segment);
            NaN when the dataset has no rewards.
        successes: [P, 2] bool, whether the segment contains a success step (False when the
            dataset has no success flags).
        progress: [P, 2] float32 change of the dense reward over the segment: the mean
            reward of its last `progress_window(T)` steps minus that of its first ones.
            MetaWorld's shaped reward measures how far the task has come, so the return
            mostly says WHERE a segment is (which phase of the task) and progress says
            how much its actions advanced it -- an advantage-like score, the kind of
            preference (regret) model CPL assumes. NaN when the dataset has no rewards.
    """

    starts: np.ndarray
    length: int
    returns: np.ndarray
    successes: np.ndarray
    progress: np.ndarray

    @property
    def num_pairs(self) -> int:
        return int(self.starts.shape[0])

    def take(self, index: np.ndarray) -> "SegmentPairs":
        """The pairs at `index` (every per-pair array indexed alike)."""
        per_pair = {f.name: getattr(self, f.name)[index] for f in dataclasses.fields(self) if f.name != "length"}
        return dataclasses.replace(self, **per_pair)


def progress_window(segment_length: int) -> int:
    """Steps averaged at each end of a segment for its progress score (an eighth of it)."""
    return max(1, segment_length // 8)


def valid_segment_starts(ds: StepData, segment_length: int) -> np.ndarray:
    """All rows where a segment of `segment_length` fits inside one episode.

    Returns:
        [M] int64 start rows, including the last window of each episode (start = end - T).
        Episodes shorter than the segment contribute none.

    Raises:
        ValueError: segment_length < 1, or no episode is long enough.
    """
    if segment_length < 1:
        raise ValueError(f"segment_length must be >= 1, got {segment_length}")
    starts, lengths = ds.episode_starts, ds.episode_lengths
    windows = np.maximum(lengths - segment_length + 1, 0)
    if windows.sum() == 0:
        raise ValueError(
            f"no episode has {segment_length} steps (longest has {int(lengths.max(initial=0))}); "
            "use a shorter segment_length or collect longer episodes"
        )
    # start row of episode e repeated windows[e] times, plus offsets 0..windows[e]-1
    base = np.repeat(starts, windows)
    offsets = np.arange(windows.sum()) - np.repeat(np.cumsum(windows) - windows, windows)
    return (base + offsets).astype(np.int64)


def gather_segments(ds: StepData, starts: np.ndarray, length: int) -> tuple[np.ndarray, np.ndarray]:
    """Observations and actions of segments.

    Args:
        ds: the dataset.
        starts: [...] int start rows (any shape, e.g. [P, 2]).
        length: T.

    Returns:
        (observations [..., T, 39] float32, actions [..., T, 4] float32), where
        observations[..., t, :] = ds.observations[start + t] and likewise for actions.

    Raises:
        ValueError: a segment leaves the dataset or crosses an episode boundary.
    """
    rows = _segment_rows(ds, starts, length)
    return ds.observations[rows], ds.actions[rows]


def _segment_rows(ds: StepData, starts: np.ndarray, length: int) -> np.ndarray:
    starts = np.asarray(starts, dtype=np.int64)
    if length < 1:
        raise ValueError(f"length must be >= 1, got {length}")
    if starts.size and (starts.min() < 0 or starts.max() + length > ds.num_steps):
        raise ValueError(f"segments of length {length} must lie in rows 0..{ds.num_steps - 1}")
    if starts.size and np.any(ds.episode_ids[starts] != ds.episode_ids[starts + length - 1]):
        raise ValueError("a segment crosses an episode boundary; draw starts with valid_segment_starts")
    return starts[..., None] + np.arange(length)


def sample_segment_pairs(
    ds: StepData, num_pairs: int, *, segment_length: int = 64, rng: np.random.Generator
) -> SegmentPairs:
    """Draws pairs of segments uniformly over all valid windows (with replacement).

    The two segments of a pair are distinct windows; they may come from the same episode.

    Args:
        ds: the dataset.
        num_pairs: P.
        segment_length: T (default 64, as in PLARE).
        rng: seeded generator; the same generator state gives the same pairs.

    Returns:
        SegmentPairs with ground-truth returns, progress and success flags per segment.
    """
    if num_pairs < 1:
        raise ValueError(f"num_pairs must be >= 1, got {num_pairs}")
    if not isinstance(rng, np.random.Generator):
        raise ValueError("rng must be a numpy.random.Generator, e.g. np.random.default_rng(seed)")
    candidates = valid_segment_starts(ds, segment_length)
    if candidates.size < 2:
        raise ValueError("need at least two distinct segment windows to form a pair")
    first = rng.integers(0, candidates.size, size=num_pairs)
    # second index uniform over the other candidates: shift by 1..M-1 modulo M
    second = (first + rng.integers(1, candidates.size, size=num_pairs)) % candidates.size
    starts = np.stack([candidates[first], candidates[second]], axis=1)
    rows = _segment_rows(ds, starts, segment_length)
    if ds.successes is None:
        successes = np.zeros(starts.shape, bool)
    else:
        successes = ds.successes[rows].any(axis=-1)
    if ds.rewards is None:
        nan = np.full(starts.shape, np.nan, np.float32)
        return SegmentPairs(starts=starts, length=segment_length, returns=nan, successes=successes,
                            progress=nan.copy())
    rewards = ds.rewards.astype(np.float64)[rows]
    returns = rewards.sum(axis=-1).astype(np.float32)
    k = progress_window(segment_length)
    progress = (rewards[..., -k:].mean(axis=-1) - rewards[..., :k].mean(axis=-1)).astype(np.float32)
    return SegmentPairs(starts=starts, length=segment_length, returns=returns, successes=successes,
                        progress=progress)
