"""Simulated labellers that err like a VLM: noise models of the scripted teacher (after B-Pref).

A noise model turns the noise-free teacher's labels `clean` (from the `[P, 2]` segment scores
`scores`, see `preferences_from_scores`) into the labels of an imperfect labeller. Each model has
ONE knob, `TeacherNoise.level`, and a noise-free value of it (`noise_free_level`):

| model         | knob (range)      | noise-free | behaviour |
|---------------|-------------------|------------|-----------|
| mistake       | prob. [0, 1]      | 0   | each sure label flipped with probability `level` (uniform flips) |
| boltzmann     | beta (0, inf]     | inf | P(second) = sigmoid(beta * (s2 - s1) / scale); bigger beta: fewer errors |
| equal         | [0, inf)          | 0   | unsure where abs(s2 - s1) < level * scale |
| skip          | quantile [0, 1]   | 0   | unsure ("skipped") where max(s1, s2) < `level` quantile of the 2P scores |
| myopic        | gamma (0, 1]      | 1   | compares sum_t gamma^(T-1-t) r_t of `step_scores` [P, 2, T] (per-step) |
| hard-pairs    | [0, inf)          | 0   | flip prob. 0.5 * exp(-abs(s2 - s1) / (level * scale)): look-alike pairs |
| position-bias | prob. [0, 1]      | 0   | with probability `level` the answer is FIRST whatever the clips |

Conventions shared by all models:
- Pairs the noise-free teacher is unsure about (`clean == -1`: a tie, or a gap within its
  `equal_threshold`) stay unsure under every model; the models act on its sure labels only.
- `scale = gap_scale(scores)`, the median of the nonzero finite gaps abs(s2 - s1) of the batch: the
  knobs of `boltzmann`, `equal` and `hard-pairs` are in units of a typical gap of THIS batch, so
  one level means the same on a `progress` or a `return` teacher. It is a per-batch quantity (as is
  the `skip` quantile): labelling a dataset in chunks gives other labels than labelling it whole
  (the pipeline's scripted teacher labels all pairs at once).
- `myopic` compares the two segments' discounted sums of `step_scores`, not `scores`: it is
  noise-free at gamma = 1 only where `scores` are the sums of `step_scores` over the segment (a
  return teacher). With the project's default "progress" teacher, gamma = 1 gives the plain-return
  ordering, which already disagrees with progress on some pairs; agreement is always measured
  against the clean teacher on `scores`.
- Randomness: a stochastic model draws exactly one uniform per pair (all P of them, sure or not)
  from its own stream, `np.random.default_rng(np.random.SeedSequence([seed, NOISE_STREAM_ID,
  model_number]))` with `model_number = NOISE_MODELS.index(model) + 1`, never from
  `np.random.default_rng(seed)`, which samples the pairs (`pipeline/data.py`). The old flips used
  `default_rng(seed)` with the pair seed: flip uniform i was bit-for-bit the draw that picked the
  first segment of pair 2i + 1. Pair i's draw does not depend on P (the first k draws of a stream
  are the same whatever P), so appending pairs leaves earlier draws unchanged. (The model number
  starts at 1 because SeedSequence treats trailing zero words as absent: [s, id, 0] == [s, id].)
- `calibrate_noise` re-runs `apply_noise` with the same seed, so its realised agreement is
  exactly what `ScriptedTeacher(noise=..., seed=seed)` gives on the same scores.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from plare_jax.labeling.base import FIRST, SECOND, UNSURE, check_preferences

NOISE_MODELS = ("mistake", "boltzmann", "equal", "skip", "myopic", "hard-pairs", "position-bias")
# Entropy word that separates the teacher-noise streams from every other use of the seed (the pair
# sampler uses default_rng(seed) == SeedSequence([seed]); offline.split_pairs uses [seed, 1]).
NOISE_STREAM_ID = 0x6E6F6973  # "nois"

_STOCHASTIC = ("mistake", "boltzmann", "hard-pairs", "position-bias")
_AGREEMENT_MODELS = ("mistake", "boltzmann", "myopic", "hard-pairs", "position-bias")
_UNSURE_MODELS = ("equal", "skip")
_NOISE_FREE = {"mistake": 0.0, "boltzmann": math.inf, "equal": 0.0, "skip": 0.0, "myopic": 1.0,
               "hard-pairs": 0.0, "position-bias": 0.0}
_RANGES = {  # (low, high, low included, high included, text)
    "mistake": (0.0, 1.0, True, True, "a flip probability in [0, 1]"),
    "boltzmann": (0.0, math.inf, False, True, "beta in (0, inf] (inf = noise-free; bigger = fewer mistakes)"),
    "equal": (0.0, math.inf, True, False, "a multiple of the gap scale in [0, inf)"),
    "skip": (0.0, 1.0, True, True, "a quantile of the batch's segment scores in [0, 1]"),
    "myopic": (0.0, 1.0, False, True, "a discount gamma in (0, 1] (1 = noise-free for a return teacher)"),
    "hard-pairs": (0.0, math.inf, True, False, "a multiple of the gap scale in [0, inf) (0 = noise-free)"),
    "position-bias": (0.0, 1.0, True, True, "a probability in [0, 1] of answering 'first'"),
}


def noise_free_level(model: str) -> float:
    """The knob value at which `model` gives the noise-free teacher's labels (see the module table)."""
    _check_model(model)
    return _NOISE_FREE[model]


def _check_model(model: str) -> None:
    if model not in NOISE_MODELS:
        raise ValueError(f"unknown teacher noise model {model!r}; choose one of {', '.join(NOISE_MODELS)}.")


@dataclasses.dataclass(frozen=True)
class TeacherNoise:
    """One noise model of the scripted teacher and its knob.

    Attributes:
        model: One of `NOISE_MODELS`.
        level: The model's knob, in its range (see the module table); `noise_free_level(model)`
            gives the clean labels. The default is noise-free uniform flips.
    """

    model: str = "mistake"
    level: float = 0.0

    def __post_init__(self):
        _check_model(self.model)
        try:
            level = float(self.level)
        except (TypeError, ValueError):
            raise ValueError(f"{self.model} noise level must be a number, got {self.level!r}.") from None
        low, high, low_in, high_in, text = _RANGES[self.model]
        ok = not math.isnan(level) and (low < level or (low_in and level == low)) and (
            level < high or (high_in and level == high))
        if not ok:
            raise ValueError(f"{self.model} noise level must be {text}, got {self.level!r}.")
        object.__setattr__(self, "level", level)

    @property
    def is_noise_free(self) -> bool:
        return self.level == _NOISE_FREE[self.model]


def noise_rng(seed: int, model: str) -> np.random.Generator:
    """The generator of `model`'s draws under `seed`: independent of `default_rng(seed)` (the pair sampler)."""
    _check_model(model)
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
        raise ValueError(f"noise seed must be a non-negative integer, got {seed!r}.")
    return np.random.default_rng(np.random.SeedSequence([int(seed), NOISE_STREAM_ID, NOISE_MODELS.index(model) + 1]))


def gap_scale(scores) -> float:
    """The batch's typical score gap: median of abs(s2 - s1) over pairs with a nonzero finite gap (1.0 if none)."""
    scores = _check_scores(scores)
    gaps = np.abs(scores[:, 1] - scores[:, 0])
    gaps = gaps[np.isfinite(gaps) & (gaps > 0)]
    return float(np.median(gaps)) if gaps.size else 1.0


def _check_scores(scores) -> np.ndarray:
    scores = np.asarray(scores, dtype=np.float64)
    if scores.ndim != 2 or scores.shape[1] != 2:
        raise ValueError(f"scores must have shape [P, 2], got {scores.shape}.")
    return scores


def check_step_scores(step_scores, num_pairs: int) -> np.ndarray:
    """`step_scores` as a float64 `[P, 2, T]` array (T >= 1), or a ValueError naming the shape problem."""
    steps = np.asarray(step_scores, dtype=np.float64)
    if steps.ndim != 3 or steps.shape[1] != 2 or steps.shape[2] < 1:
        raise ValueError(f"step_scores must have shape [P, 2, T] with T >= 1, got {steps.shape}.")
    if steps.shape[0] != num_pairs:
        raise ValueError(f"step_scores has {steps.shape[0]} pairs but there are {num_pairs}; they must match.")
    return steps


def discounted_scores(step_scores, gamma: float) -> np.ndarray:
    """`[P, 2]` sum_t gamma^(T-1-t) step_scores[..., t]: the last step weighs 1, earlier ones less.

    At gamma = 1 the weights are exactly 1.0, so this is bit-for-bit `step_scores.sum(-1)`.
    """
    steps = np.asarray(step_scores, dtype=np.float64)
    length = steps.shape[-1]
    weights = float(gamma) ** np.arange(length - 1, -1, -1, dtype=np.float64)
    return (steps * weights).sum(axis=-1)


def apply_noise(clean_prefs, scores, noise: TeacherNoise, *, seed: int, step_scores=None) -> np.ndarray:
    """The labels of a noisy teacher from the noise-free teacher's.

    Args:
        clean_prefs: `[P]` noise-free labels in {0, 1, -1} (`preferences_from_scores(scores, ...)`).
        scores: `[P, 2]` the scores the clean teacher compared.
        noise: The noise model and its knob.
        seed: Seed of the model's own stream (`noise_rng`); the pipeline passes the data seed.
        step_scores: `[P, 2, T]` per-step scores; needed by `myopic` only (see the module docstring
            for what it compares against).

    Returns:
        `[P]` int8 labels. At the noise-free level they equal `clean_prefs` (for `myopic`: when
        `scores` are `step_scores.sum(-1)`).
    """
    return _noisy_labels(clean_prefs, scores, noise, seed=seed, step_scores=step_scores)[0]


def _noisy_labels(clean_prefs, scores, noise: TeacherNoise, *, seed: int, step_scores=None):
    """(labels, info): info has "skipped" (pairs the skip rule dropped) and "scale"."""
    if not isinstance(noise, TeacherNoise):
        raise ValueError(f"noise must be a TeacherNoise, got {type(noise).__name__}.")
    clean = check_preferences(clean_prefs)
    scores = _check_scores(scores)
    if len(clean) != len(scores):
        raise ValueError(f"clean_prefs has {len(clean)} pairs but scores has {len(scores)}; they must match.")
    model, level = noise.model, noise.level
    steps = None
    if model == "myopic":
        if step_scores is None:
            raise ValueError("the myopic teacher needs per-step scores step_scores [P, 2, T] "
                             "(PairBatch.step_scores, e.g. the segments' per-step dense rewards).")
        steps = check_step_scores(step_scores, len(clean))
        if not np.isfinite(steps).all():
            raise ValueError("the myopic teacher needs finite step_scores.")
    info = {"skipped": 0, "scale": None}
    prefs = clean.copy()
    if noise.is_noise_free and model != "myopic":
        return prefs, info
    sure = clean != UNSURE
    if model in ("boltzmann", "equal", "hard-pairs", "skip") and not np.isfinite(scores).all():
        raise ValueError(f"the {model} teacher needs finite scores (a dataset without rewards has NaN returns).")
    gap = scores[:, 1] - scores[:, 0]
    scale = gap_scale(scores)
    if model in ("boltzmann", "equal", "hard-pairs"):
        info["scale"] = scale
    u = noise_rng(seed, model).random(len(clean)) if model in _STOCHASTIC else None
    if model == "mistake":
        flip = sure & (u < level)
        prefs[flip] = 1 - prefs[flip]
    elif model == "boltzmann":
        with np.errstate(over="ignore"):
            p_second = 1.0 / (1.0 + np.exp(-level * gap / scale))
        prefs[sure] = np.where(u[sure] < p_second[sure], SECOND, FIRST)
    elif model == "hard-pairs":
        p_flip = 0.5 * np.exp(-np.abs(gap) / (level * scale))
        flip = sure & (u < p_flip)
        prefs[flip] = 1 - prefs[flip]
    elif model == "position-bias":
        prefs[sure & (u < level)] = FIRST
    elif model == "equal":
        prefs[np.abs(gap) < level * scale] = UNSURE
    elif model == "skip":
        threshold = np.quantile(scores, level)
        skipped = scores.max(axis=1) < threshold
        prefs[skipped] = UNSURE
        info["skipped"] = int(skipped.sum())
    elif model == "myopic":
        d = discounted_scores(steps, level)
        myopic_gap = d[:, 1] - d[:, 0]
        prefs[sure] = np.where(myopic_gap[sure] > 0, SECOND, np.where(myopic_gap[sure] < 0, FIRST, UNSURE))
        info["matches_scores"] = bool(np.allclose(steps.sum(-1), scores, rtol=1e-4, atol=1e-6 * scale))
    return prefs.astype(np.int8), info


def label_agreement(prefs, clean_prefs) -> dict:
    """How a labeller's labels compare with the noise-free teacher's on the same pairs.

    Returns:
        dict with `pairs`; `both_sure` (pairs where both are sure); `agreement`: among the both-sure
        pairs, the share where the label equals the clean one (None if there are none; the same
        definition as `labeling_report`'s accuracy); `disagree` (both-sure pairs that differ);
        `unsure`, `unsure_rate`, `clean_unsure_rate`; `first`, `second` (counts of sure labels);
        `first_share`: share of the sure labels that say FIRST (None if none is sure).
    """
    prefs = check_preferences(prefs)
    clean = check_preferences(clean_prefs)
    if prefs.shape != clean.shape:
        raise ValueError(f"prefs {prefs.shape} and clean_prefs {clean.shape} must label the same pairs.")
    both = (prefs != UNSURE) & (clean != UNSURE)
    n_both = int(both.sum())
    agree = int((prefs[both] == clean[both]).sum())
    first, second = int((prefs == FIRST).sum()), int((prefs == SECOND).sum())
    n = len(prefs)
    return {
        "pairs": n,
        "both_sure": n_both,
        "agreement": agree / n_both if n_both else None,
        "disagree": n_both - agree,
        "unsure": n - first - second,
        "unsure_rate": (n - first - second) / n if n else 0.0,
        "clean_unsure_rate": float((clean == UNSURE).mean()) if n else 0.0,
        "first": first,
        "second": second,
        "first_share": first / (first + second) if first + second else None,
    }


def _clean(scores, equal_threshold: float) -> np.ndarray:
    from plare_jax.labeling.scripted import preferences_from_scores  # scripted imports this module

    return preferences_from_scores(scores, equal_threshold=equal_threshold)


# Calibration: the knob as a monotone function of a bisection variable x in [0, 1] (x = 0 noise-free,
# bigger x = more noise). Log scales for the unbounded knobs.
def _knob(model: str, x: float) -> float:
    if model in ("mistake", "position-bias", "skip"):
        return x
    if model == "myopic":
        return 1.0 - x * (1.0 - 1e-3)  # gamma from 1 down to 0.001 (about the last step only)
    if x == 0.0:
        return _NOISE_FREE[model]
    if model == "boltzmann":
        return 10.0 ** (6.0 - 9.0 * x)  # beta 1e6 (noise-free in practice) .. 1e-3 (coin flips)
    return 10.0 ** (-6.0 + 12.0 * x)  # hard-pairs, equal: 1e-6 .. 1e6 times the gap scale


def _bisect(measure, target: float, tolerance: float, what: str, model: str) -> float:
    """Smallest-error knob of a bisection on x, assuming `measure` moves from measure(0) to measure(1)."""
    tried = {}

    def at(x):
        level = _knob(model, x)
        tried[level] = measure(level)
        return tried[level]

    lo, hi = 0.0, 1.0
    m_lo, m_hi = at(lo), at(hi)
    reach = (min(m_lo, m_hi), max(m_lo, m_hi))
    if not reach[0] - tolerance <= target <= reach[1] + tolerance:
        raise ValueError(f"{model} noise cannot reach {what} {target:.3f} on these pairs: its knob gives "
                         f"{what} from {reach[0]:.3f} to {reach[1]:.3f}.")
    increasing = m_hi >= m_lo
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        if (at(mid) < target) == increasing:
            lo = mid
        else:
            hi = mid
    level, value = min(tried.items(), key=lambda item: abs(item[1] - target))
    if abs(value - target) > tolerance:
        raise ValueError(f"{model} noise could not be calibrated to {what} {target:.3f} within {tolerance}: "
                         f"closest was {value:.3f} at level {level:.6g} (the {what} jumps past the target).")
    return float(level)


def calibrate_noise(model: str, scores, target_agreement: float, *, seed: int, step_scores=None,
                    equal_threshold: float = 0.0, tolerance: float = 0.02) -> float:
    """The knob of `model` at which the noisy teacher agrees with the clean one on `target_agreement` of the pairs.

    Agreement is `label_agreement`'s (share of equal labels among pairs where both are sure). The
    search is a bisection over the knob that runs `apply_noise` with this `seed`, i.e. on the very
    draws the real labelling will make: `ScriptedTeacher(equal_threshold=equal_threshold,
    noise=TeacherNoise(model, level), seed=seed)` on the same scores (and step scores) realises
    the returned agreement exactly, within `tolerance` of the target.

    `equal` and `skip` only make pairs unsure and never change a sure label, so they cannot be
    calibrated to an agreement: use `calibrate_unsure_rate` for them.

    Raises:
        ValueError: an unknown model, `equal`/`skip`, a target outside (0, 1], or a target the
            model cannot reach on these pairs (e.g. `position-bias` cannot go below the clean
            teacher's share of FIRST labels, about 50%; `hard-pairs` and `boltzmann` not below 50%).
    """
    _check_model(model)
    if model in _UNSURE_MODELS:
        raise ValueError(f"{model} noise makes pairs unsure and never changes a sure label, so its agreement with "
                         f"the clean teacher is always 1: calibrate its unsure rate with calibrate_unsure_rate.")
    if not 0.0 < target_agreement <= 1.0:
        raise ValueError(f"target_agreement must be in (0, 1], got {target_agreement}.")
    scores = _check_scores(scores)
    clean = _clean(scores, equal_threshold)
    if not (clean != UNSURE).any():
        raise ValueError("no pair has a sure clean label: agreement is undefined on these scores.")

    def measure(level):
        prefs = apply_noise(clean, scores, TeacherNoise(model, level), seed=seed, step_scores=step_scores)
        agreement = label_agreement(prefs, clean)["agreement"]
        return 0.0 if agreement is None else agreement

    # agreement falls as the noise grows: bisect on "agreement above target" ~ "measure(x) >= target"
    return _bisect(measure, target_agreement, tolerance, "agreement", model)


def calibrate_unsure_rate(model: str, scores, target_unsure_rate: float, *, equal_threshold: float = 0.0,
                          tolerance: float = 0.02) -> float:
    """The knob of `equal` or `skip` at which `target_unsure_rate` of all pairs are unsure.

    The unsure rate counts every -1 label, the clean teacher's own ties (`equal_threshold`)
    included, so targets below the clean teacher's unsure rate cannot be reached. Both models are
    deterministic (no seed). `skip` at level q drops the pairs whose better segment is below the
    q-quantile of the batch's scores, so its unsure rate moves in steps of ties in the scores.

    Raises:
        ValueError: a model other than `equal`/`skip`, a target outside [0, 1], or one out of reach.
    """
    _check_model(model)
    if model not in _UNSURE_MODELS:
        raise ValueError(f"calibrate_unsure_rate is for equal and skip noise; calibrate {model} with calibrate_noise.")
    if not 0.0 <= target_unsure_rate <= 1.0:
        raise ValueError(f"target_unsure_rate must be in [0, 1], got {target_unsure_rate}.")
    scores = _check_scores(scores)
    clean = _clean(scores, equal_threshold)

    def measure(level):
        prefs = apply_noise(clean, scores, TeacherNoise(model, level), seed=0)
        return float((prefs == UNSURE).mean()) if len(prefs) else 0.0

    return _bisect(measure, target_unsure_rate, tolerance, "unsure rate", model)
