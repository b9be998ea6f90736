"""The scripted teacher: preferences from the segments' ground-truth returns.

The standard oracle of preference-based RL, with an optional noise model to
simulate an imperfect labeller (as in B-Pref): pairs whose returns differ by at
most `equal_threshold` are labelled unsure, and each sure label is flipped with
probability `mistake_rate`.
"""

from __future__ import annotations

import time

import numpy as np

from plare_jax.labeling.base import FIRST, SECOND, UNSURE, LabelResult, PairBatch


def preferences_from_returns(returns, *, equal_threshold: float = 0.0) -> np.ndarray:
    """Noise-free labels from returns.

    Args:
        returns: `[P, 2]` segment returns.
        equal_threshold: Pairs with `|R1 - R2| <= equal_threshold` are unsure. At 0,
            only exact ties are unsure.

    Returns:
        `[P]` int8 labels: 1 if the second return is higher, 0 if the first is, else -1.
    """
    returns = np.asarray(returns, dtype=np.float64)
    if returns.ndim != 2 or returns.shape[1] != 2:
        raise ValueError(f"returns must have shape [P, 2], got {returns.shape}.")
    if equal_threshold < 0:
        raise ValueError(f"equal_threshold must be >= 0, got {equal_threshold}.")
    diff = returns[:, 1] - returns[:, 0]
    prefs = np.where(diff > 0, SECOND, FIRST).astype(np.int8)
    prefs[np.abs(diff) <= equal_threshold] = UNSURE
    return prefs


class ScriptedTeacher:
    """Labels pairs by comparing their ground-truth returns.

    Args:
        equal_threshold: Return gap at or below which a pair is labelled unsure.
        mistake_rate: Probability in [0, 1] of flipping each sure label.
        seed: Seed of the flips, so a run is reproducible.
    """

    name = "scripted"

    def __init__(self, *, equal_threshold: float = 0.0, mistake_rate: float = 0.0, seed: int = 0):
        if equal_threshold < 0:
            raise ValueError(f"equal_threshold must be >= 0, got {equal_threshold}.")
        if not 0.0 <= mistake_rate <= 1.0:
            raise ValueError(f"mistake_rate must be in [0, 1], got {mistake_rate}.")
        self.equal_threshold = float(equal_threshold)
        self.mistake_rate = float(mistake_rate)
        self.seed = seed

    def label(self, batch: PairBatch, *, progress: bool = True) -> LabelResult:
        """Labels `batch` from `batch.returns`; `progress` is ignored (instant)."""
        del progress
        if batch.returns is None:
            raise ValueError("ScriptedTeacher needs PairBatch.returns ([P, 2] ground-truth segment returns).")
        start = time.perf_counter()
        prefs = preferences_from_returns(batch.returns, equal_threshold=self.equal_threshold)
        flipped = 0
        if self.mistake_rate > 0:
            rng = np.random.default_rng(self.seed)
            flip = (rng.random(len(prefs)) < self.mistake_rate) & (prefs != UNSURE)
            prefs[flip] = 1 - prefs[flip]
            flipped = int(flip.sum())
        wall_s = time.perf_counter() - start
        stats = {
            "labeler": self.name,
            "pairs": len(prefs),
            "unsure": int((prefs == UNSURE).sum()),
            "flipped": flipped,
            "wall_s": wall_s,
        }
        return LabelResult(preferences=prefs, stats=stats)
