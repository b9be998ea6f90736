"""The labeler interface: pairs of trajectory segments in, preference labels out.

A label says which of the two segments of a pair better achieves the task:
`FIRST` (0), `SECOND` (1) or `UNSURE` (-1). Labelers know nothing about training
or simulation; they take rendered images (PNG bytes) and a task text, or the
segments' ground-truth scores for the scripted teacher.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import numpy as np

FIRST, SECOND, UNSURE = 0, 1, -1
VALID_LABELS = (FIRST, SECOND, UNSURE)
# How each pair's label came about. Only "ok" (0 or 1) and "unsure" (the labeler said -1) are
# answers; "malformed" (no readable choice) and "failed" (no answer after the retries) are -1
# for lack of an answer, are never stored, and are asked again by a re-run.
PAIR_OK, PAIR_UNSURE, PAIR_MALFORMED, PAIR_FAILED = "ok", "unsure", "malformed", "failed"
PAIR_STATUSES = (PAIR_OK, PAIR_UNSURE, PAIR_MALFORMED, PAIR_FAILED)


@dataclasses.dataclass(frozen=True)
class PairBatch:
    """Pairs of segments to label, for one task.

    Attributes:
        task_text: What the robot should achieve, in words (e.g. "open the drawer").
        images: Per pair, the PNG bytes of the two tiled keyframe images
            `(first, second)`; needed by image-based labelers.
        scores: `[P, 2]` ground-truth scores of the two segments of each pair (what the
            scripted teacher compares: their progress or their return); needed by the scripted
            teacher.
        step_scores: Optional `[P, 2, T]` per-step scores of the two segments (e.g. dense
            rewards); needed only by the scripted teacher's `myopic` noise model, which compares
            their discounted sums (see `plare_jax.labeling.noise`).
    """

    task_text: str
    images: Sequence[tuple[bytes, bytes]] | None = None
    scores: np.ndarray | None = None
    step_scores: np.ndarray | None = None

    def __post_init__(self):
        if self.images is None and self.scores is None:
            raise ValueError("PairBatch needs `images` (for a VLM labeler) or `scores` (for the scripted teacher).")
        if self.images is not None:
            for i, pair in enumerate(self.images):
                if len(pair) != 2 or not all(isinstance(im, bytes | bytearray) for im in pair):
                    raise ValueError(f"PairBatch.images[{i}] must be a (bytes, bytes) tuple of PNG data, got {type(pair)}.")
        if self.scores is not None:
            scores = np.asarray(self.scores, dtype=np.float64)
            if scores.ndim != 2 or scores.shape[1] != 2:
                raise ValueError(f"PairBatch.scores must have shape [P, 2], got {scores.shape}.")
            object.__setattr__(self, "scores", scores)
        if self.images is not None and self.scores is not None and len(self.images) != len(self.scores):
            raise ValueError(f"PairBatch has {len(self.images)} image pairs but {len(self.scores)} score pairs; they must match.")
        if self.step_scores is not None:
            steps = np.asarray(self.step_scores, dtype=np.float64)
            if steps.ndim != 3 or steps.shape[1] != 2 or steps.shape[2] < 1:
                raise ValueError(f"PairBatch.step_scores must have shape [P, 2, T], T >= 1, got {steps.shape}.")
            if steps.shape[0] != len(self):
                raise ValueError(f"PairBatch has {len(self)} pairs, step_scores {steps.shape[0]}; they must match.")
            object.__setattr__(self, "step_scores", steps)

    def __len__(self) -> int:
        return len(self.images) if self.images is not None else len(self.scores)


@dataclasses.dataclass
class LabelResult:
    """Labels of a batch and how they were obtained.

    Attributes:
        preferences: `[P]` int8 in {0, 1, -1}.
        stats: Counters and timings of the run (requests, cache_hits, malformed, failed,
            retries, latency percentiles, tokens, wall_s, pairs_per_s, ...).
        status: `[P]` per-pair status in `PAIR_STATUSES`, or None for a labeler that always
            answers (the scripted teacher).
    """

    preferences: np.ndarray
    stats: dict
    status: np.ndarray | None = None


@runtime_checkable
class Labeler(Protocol):
    """Anything that turns a `PairBatch` into preference labels."""

    name: str

    def label(self, batch: PairBatch, *, progress: bool = True) -> LabelResult: ...


def check_preferences(preferences) -> np.ndarray:
    """Returns `preferences` as a 1-D int8 array, or raises ValueError if a value is not 0, 1 or -1."""
    prefs = np.asarray(preferences)
    if prefs.ndim != 1:
        raise ValueError(f"preferences must be 1-D [P], got shape {prefs.shape}.")
    bad = ~np.isin(prefs, VALID_LABELS)
    if bad.any():
        raise ValueError(f"preferences must be in {{0, 1, -1}}; found {np.unique(prefs[bad])[:5]}.")
    return prefs.astype(np.int8)


def preferences_to_targets(preferences, *, unsure: str = "drop") -> tuple[np.ndarray, np.ndarray]:
    """Turns labels into training targets for a preference loss.

    Args:
        preferences: `[P]` labels in {0, 1, -1}.
        unsure: What to do with -1 labels. "drop" (PLARE): weight 0 so they do not
            count in the loss. "tie" (RL-VLM-F-style baseline): label 0.5, weight 1.

    Returns:
        `(labels, weights)`, both `[P]` float32: labels are the probability that
        the SECOND segment is preferred.
    """
    prefs = check_preferences(preferences)
    if unsure not in ("drop", "tie"):
        raise ValueError(f"unsure must be 'drop' (PLARE) or 'tie' (RL-VLM-F baseline), got {unsure!r}.")
    is_unsure = prefs == UNSURE
    labels = np.where(prefs == SECOND, 1.0, 0.0).astype(np.float32)
    weights = np.ones(prefs.shape, np.float32)
    if unsure == "drop":
        weights[is_unsure] = 0.0
    else:
        labels[is_unsure] = 0.5
    return labels, weights
