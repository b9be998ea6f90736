"""The scripted teacher: preferences from the segments' ground-truth scores.

The standard oracle of preference-based RL, with an optional noise model to simulate an
imperfect labeller (after B-Pref; see `plare_jax.labeling.noise` for the models): pairs whose
scores differ by at most `equal_threshold` are labelled unsure, then one `TeacherNoise` model
(uniform flips, Boltzmann, equal, skip, myopic, hard-pairs, position bias) perturbs the labels.
"""

from __future__ import annotations

import time

import numpy as np

from plare_jax.labeling.base import FIRST, SECOND, UNSURE, LabelResult, PairBatch
from plare_jax.labeling.noise import TeacherNoise, _noisy_labels, label_agreement


def preferences_from_scores(scores, *, equal_threshold: float = 0.0) -> np.ndarray:
    """Noise-free labels from segment scores (progress, returns: any score where more is better).

    Args:
        scores: `[P, 2]` segment scores.
        equal_threshold: Pairs with `|S1 - S2| <= equal_threshold` are unsure. At 0,
            only exact ties are unsure.

    Returns:
        `[P]` int8 labels: 1 if the second score is higher, 0 if the first is, else -1.
    """
    scores = np.asarray(scores, dtype=np.float64)
    if scores.ndim != 2 or scores.shape[1] != 2:
        raise ValueError(f"scores must have shape [P, 2], got {scores.shape}.")
    if equal_threshold < 0:
        raise ValueError(f"equal_threshold must be >= 0, got {equal_threshold}.")
    diff = scores[:, 1] - scores[:, 0]
    prefs = np.where(diff > 0, SECOND, FIRST).astype(np.int8)
    prefs[np.abs(diff) <= equal_threshold] = UNSURE
    return prefs


class ScriptedTeacher:
    """Labels pairs by comparing their ground-truth scores, optionally through a noise model.

    Args:
        equal_threshold: Score gap at or below which a pair is labelled unsure (the clean teacher).
        noise: The noise model and its knob; default noise-free.
        seed: Seed of the noise model's own random stream (`noise.noise_rng`), so a run is
            reproducible; the pipeline passes the data seed, and the stream is independent of the
            pair sampler's `default_rng(seed)`.
        mistake_rate: Legacy spelling of `noise=TeacherNoise("mistake", mistake_rate)`: probability
            in [0, 1] of flipping each sure label. Give `noise` or `mistake_rate`, not both.

    `label()` reads `batch.scores` ([P, 2] scores; any score, e.g. progress) and, for the
    `myopic` model, `batch.step_scores` ([P, 2, T]). Its stats hold, besides labeler/pairs/
    unsure/flipped/wall_s: `noise_model`, `noise_level`, `noise_scale` (the gap scale, for the
    models that use it), `skipped` (pairs the skip rule dropped), `made_unsure` (clean-sure pairs
    the noise made unsure), and `label_agreement(labels, clean labels)`'s entries (agreement,
    both_sure, disagree, unsure_rate, clean_unsure_rate, first, second, first_share).
    """

    name = "scripted"

    def __init__(self, *, equal_threshold: float = 0.0, noise: TeacherNoise | None = None,
                 seed: int = 0, mistake_rate: float | None = None):
        if equal_threshold < 0:
            raise ValueError(f"equal_threshold must be >= 0, got {equal_threshold}.")
        if noise is not None and mistake_rate is not None and mistake_rate != 0:
            raise ValueError("give ScriptedTeacher either noise= or the legacy mistake_rate=, not both.")
        if noise is None:
            noise = TeacherNoise("mistake", 0.0 if mistake_rate is None else mistake_rate)
        elif not isinstance(noise, TeacherNoise):
            raise ValueError(f"noise must be a TeacherNoise, got {type(noise).__name__}.")
        self.equal_threshold = float(equal_threshold)
        self.noise = noise
        self.seed = seed

    @property
    def mistake_rate(self) -> float:
        """The flip probability of the `mistake` model (0 under any other model)."""
        return self.noise.level if self.noise.model == "mistake" else 0.0

    def label(self, batch: PairBatch, *, progress: bool = True) -> LabelResult:
        """Labels `batch` from `batch.scores`; `progress` is ignored (instant)."""
        del progress
        if batch.scores is None:
            raise ValueError("ScriptedTeacher needs PairBatch.scores ([P, 2] ground-truth segment scores).")
        start = time.perf_counter()
        clean = preferences_from_scores(batch.scores, equal_threshold=self.equal_threshold)
        prefs, info = _noisy_labels(clean, batch.scores, self.noise, seed=self.seed,
                                    step_scores=batch.step_scores)
        both_sure = (prefs != UNSURE) & (clean != UNSURE)
        wall_s = time.perf_counter() - start
        stats = {
            "labeler": self.name,
            "pairs": len(prefs),
            "unsure": int((prefs == UNSURE).sum()),
            "flipped": int((both_sure & (prefs != clean)).sum()),
            "made_unsure": int(((prefs == UNSURE) & (clean != UNSURE)).sum()),
            "skipped": info["skipped"],
            "noise_model": self.noise.model,
            "noise_level": self.noise.level,
            "noise_scale": info["scale"],
            **{key: value for key, value in label_agreement(prefs, clean).items() if key not in ("pairs", "unsure")},
            "wall_s": wall_s,
        }
        if "matches_scores" in info:
            stats["myopic_step_sums_match_scores"] = info["matches_scores"]
        return LabelResult(preferences=prefs, stats=stats)
