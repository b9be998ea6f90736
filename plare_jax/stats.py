"""Statistics over runs that can tell methods apart: rliable's IQM, bootstrap intervals and
probability of improvement (Agarwal et al., "Deep RL at the Edge of the Statistical Precipice",
NeurIPS 2021; PyPI `rliable`).

Scores are final success rates, one per run; a run is one (data seed, training seed) pair.
Arrays are shaped [runs, tasks] as rliable expects, with the rows of every method in the same
(data seed, seed) order: the runs of two methods with the same key share the data, the labels
and the evaluation episodes, so they are *paired*.

What is computed, and how:

- Point estimates are rliable's own: `rliable.metrics.aggregate_mean`, `aggregate_iqm` (the
  25% trimmed mean over all runs x tasks, scipy's `trim_mean`) and `probability_of_improvement`
  (Mann-Whitney U / (n_x n_y) per task, averaged over tasks; 0.5 where both columns are equal).
- Intervals of means and IQMs are 95% percentile intervals of rliable's `StratifiedBootstrap` (arch's
  `IIDBootstrap.conf_int`): runs are resampled with replacement within each task, tasks are
  kept. This is exactly what `rliable.library.get_interval_estimates` does for one array; it is
  called directly so that two methods' arrays can share one bootstrap (below). `BOOTSTRAP_REPS`
  (2000) resamples, seed `BOOTSTRAP_SEED` (0) unless told otherwise.
- Pairing. `get_interval_estimates` given a *list* of arrays (the form rliable's documentation
  uses for probability of improvement) builds a `StratifiedIndependentBootstrap`, which draws
  fresh run indices for each array: the two methods' runs are resampled independently, as if
  they were unrelated. Here they are not, so `probability_of_improvement` passes both arrays to
  one `StratifiedBootstrap`, whose single set of indices (one per run and task) indexes every
  positional array alike: each resample keeps the same (data seed, seed) runs for both methods,
  a paired bootstrap, without any resampling loop of our own.
- Paired resampling and the Mann-Whitney statistic. U / (n_x n_y) averages all n^2 comparisons
  of a run of x with a run of y, n of them within one run (x_i against y_i, same data). rliable's
  formula applied to paired resampled rows compares the copies of a run drawn m times with each
  other m^2 times as if they were different runs, so every resample leans towards the within-run
  share D: its mean is U + (D - U) / n, not U. With a strong per-run effect D is far from U (1
  where x beats y on every run) and the interval shifts towards "better", even past the estimate
  (a constant gain on top of a shared per-run effect: all 2000 resamples >= U, percentile
  interval excluding it; arch's bias-corrected "bc" interval then fails or collapses to a point).
  So a third array of run ids travels with the scores through the same resampling, and the
  resampled statistic (`_paired_poi`) compares copies of one run only as that one run, within
  it: equal to rliable's value on the data, the mean of its resamples is that value. In a one-off
  simulation (not part of the tests: 6 or 10 normal runs x 2 tasks, a per-run effect shared by
  both methods, 4 settings, 150 experiments each) its 95% percentile interval covered P(X > Y)
  of independent runs 89-92% of the time (the percentile interval of a mean over 6 normal runs
  covers about 88%), with the estimate always inside; the naive paired interval (rliable's
  formula on the resampled rows) 84-94%, up to 1.4x wider and shifted; rliable's independent
  bootstrap 93-100% and 1.2-2.2x wider (it ignores that the runs share data, and so separates
  fewer methods than the data allow).
- Seeds. rliable 1.2.0's bootstrap classes draw their indices from NumPy's *global* random
  state (`np.random.choice`); the `random_state` they accept is not used for the indices (and
  arch warns that it is deprecated). Each interval is therefore computed under the global
  state seeded with the given seed, and the caller's global state is restored afterwards; the
  seed is also handed to arch, so a later rliable that uses arch's generator stays seeded. The
  global state makes these functions unsafe to call from several threads at once.
- Speed. Inside the bootstrap the statistics are NumPy code: `iqm`, equal to rliable's
  `aggregate_iqm`, and `_paired_poi`, equal to rliable's `probability_of_improvement` on the data
  (`_poi` is the same without run ids; tests check all three against rliable). rliable's scipy
  versions cost about 0.5-1 ms per call in scipy's axis/NaN-policy wrapper and Mann-Whitney test,
  most of a 2000-resample interval.
- A cell whose runs are all equal (or that has one run) has no spread: every resample is the
  same and its interval is the point itself. It is reported with `zero_spread: True` and such
  an interval must never be presented as a separated one.

The bootstrap treats the runs as exchangeable: it does not model that runs sharing a data
seed share the data (a hierarchical resampling of data seeds, then seeds, would).

This module needs only NumPy and rliable (imported when first used, so that this module
imports even where rliable cannot).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
from typing import Iterable, Literal, Mapping, Sequence

import numpy as np

BOOTSTRAP_REPS = 2000
"""Bootstrap resamples per interval (rliable's default is 50,000; 2000 puts the 2.5% and 97.5%
percentiles on 50 resamples each, enough for two decimals)."""
BOOTSTRAP_SEED = 0
CONFIDENCE = 0.95

RunKey = tuple[int, int]
"""(data seed, training seed) of one run."""

VERDICT_WORDS = {
    "better": "interval entirely above 0.5",
    "worse": "interval entirely below 0.5",
    "not separated": "interval straddles 0.5",
    "too few runs": "fewer than 2 paired runs: no spread to resample",
}


def _rliable():
    """rliable's library and metrics modules, with a clear error where they cannot be imported."""
    try:
        from rliable import library, metrics
    except ImportError as error:
        raise ImportError("plare_jax.stats needs rliable: pip install 'rliable>=1.2' 'pandas<3'") from error
    except TypeError as error:  # arch (imported by rliable) under pandas 3: deprecate_kwarg() ...
        raise ImportError(f"rliable failed to import inside arch ({error}); this is arch under pandas 3: "
                          "install 'pandas<3'") from error
    return library, metrics


@contextlib.contextmanager
def _global_numpy_seed(seed: int):
    """NumPy's global random state seeded with `seed` inside, the caller's state restored after."""
    saved = np.random.get_state()
    np.random.seed(seed)
    try:
        yield
    finally:
        np.random.set_state(saved)


def _bootstrap_interval(func, *arrays: np.ndarray, reps: int, seed: int, confidence: float) -> np.ndarray:
    """[2, k] percentile interval of `func(*arrays)` (k values) from one rliable StratifiedBootstrap
    over all `arrays` (same shape [runs, tasks]; one set of run indices per resample, shared)."""
    if reps < 1:
        raise ValueError(f"reps must be positive, got {reps}")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    library, _ = _rliable()
    with _global_numpy_seed(seed):
        bootstrap = library.StratifiedBootstrap(*arrays, seed=seed)
        return np.asarray(bootstrap.conf_int(func, reps=reps, method="percentile", size=confidence))


def iqm(scores, axis: int | None = None):
    """Interquartile mean: the 25% trimmed mean, int(n / 4) values cut from each end (as
    `scipy.stats.trim_mean(scores, 0.25, axis)`; with axis None over all values, as rliable's
    `aggregate_iqm`)."""
    values = np.asarray(scores, dtype=float)
    if axis is None:
        values, axis = values.ravel(), 0
    n = values.shape[axis]
    cut = int(0.25 * n)
    return np.take(np.sort(values, axis=axis), np.arange(cut, n - cut), axis=axis).mean(axis=axis)


def _poi(x: np.ndarray, y: np.ndarray) -> float:
    """rliable's probability_of_improvement(x, y), vectorized: per task #(x > y) + #(x = y) / 2
    over all n_x n_y pairs of runs (Mann-Whitney U / (n_x n_y)), 0.5 where the columns are equal,
    averaged over tasks."""
    greater = (x[:, None, :] > y[None, :, :]).mean(axis=(0, 1))
    equal = (x[:, None, :] == y[None, :, :]).mean(axis=(0, 1))
    per_task = greater + 0.5 * equal
    if x.shape == y.shape:
        per_task = np.where(np.all(x == y, axis=0), 0.5, per_task)
    return float(per_task.mean())


def _run_ids(shape: tuple[int, ...]) -> np.ndarray:
    """[runs, tasks] array whose entries name their run (row): resampled with the scores, it says
    which resampled rows are copies of one run."""
    return np.broadcast_to(np.arange(shape[0])[:, None], shape).copy()


def _paired_poi(x0: np.ndarray, y0: np.ndarray):
    """The statistic the paired bootstrap resamples: f(x, y, run_ids), equal to rliable's
    probability_of_improvement(x0, y0) on the data itself (all run ids distinct).

    Per task, U / n^2 = (1 - 1/n) * A + D / n, with A the share of wins over pairs of *different*
    runs and D = the share of within-run wins (x_i against y_i). In a resample, A is taken over
    the pairs of rows that are copies of different runs and D over the rows' own within-run
    comparisons, so that copies of one run are not compared with each other as if they were
    different runs (counted as they are by U on the resampled rows, they pull every resample
    towards D). A resample made of copies of a single run has no pair of different runs: A is
    then the data's own (it carries no information about A)."""
    n = x0.shape[0]

    def parts(x, y, ids):
        wins = (x[:, None, :] > y[None, :, :]) + 0.5 * (x[:, None, :] == y[None, :, :])
        different = ids[:, None, :] != ids[None, :, :]
        pairs = different.sum(axis=(0, 1))
        within = np.einsum("aat->t", wins) / n
        across = np.where(pairs > 0, (wins * different).sum(axis=(0, 1)) / np.maximum(pairs, 1), np.nan)
        return within, across

    _, across_data = parts(x0, y0, _run_ids(x0.shape))

    def statistic(x, y, ids):
        within, across = parts(x, y, ids)
        across = np.where(np.isnan(across), across_data, across)
        per_task = (1.0 - 1.0 / n) * across + within / n if n > 1 else within
        per_task = np.where(np.all(x == y, axis=0), 0.5, per_task)  # rliable: equal columns give 0.5
        return float(per_task.mean())

    return statistic


def _runs_array(scores, name: str = "scores", ndim: int = 1) -> np.ndarray:
    values = np.asarray(scores, dtype=float)
    if values.ndim != ndim or values.shape[0] == 0 or (ndim == 2 and values.shape[1] == 0):
        shape = "[runs]" if ndim == 1 else "[runs, tasks]"
        raise ValueError(f"{name}: expected a non-empty array shaped {shape}, got shape {values.shape}")
    if not np.all(np.isfinite(values)):
        raise ValueError(f"{name}: scores must be finite, got {values.tolist()}")
    return values


def _zero_spread(values: np.ndarray) -> bool:
    """Every column (task) constant over runs: each resample is the data itself."""
    return bool(np.all(values == values[:1]))


def cell_statistics(scores: Sequence[float], *, reps: int = BOOTSTRAP_REPS, seed: int = BOOTSTRAP_SEED,
                    confidence: float = CONFIDENCE) -> dict:
    """One (task, method) cell: mean and IQM over its runs, each with a bootstrap interval.

    Returns {"mean", "mean_ci": (low, high), "iqm", "iqm_ci": (low, high), "num_runs",
    "per_run", "zero_spread", "reps", "seed", "confidence"}. One bootstrap (shared resamples)
    gives both intervals. `zero_spread` is True when all runs are equal (one run included): both
    intervals are then the degenerate (value, value), which is no evidence of a separation.
    """
    values = _runs_array(scores)
    _, metrics = _rliable()
    column = values[:, None]
    mean, middle = float(metrics.aggregate_mean(column)), float(metrics.aggregate_iqm(column))
    zero = _zero_spread(values)
    if zero:
        mean_ci = iqm_ci = (mean, mean)  # no bootstrap needed: every resample is the data itself
    else:
        ci = _bootstrap_interval(lambda s: np.array([s.mean(), iqm(s)]), column, reps=reps, seed=seed,
                                 confidence=confidence)
        mean_ci, iqm_ci = (float(ci[0, 0]), float(ci[1, 0])), (float(ci[0, 1]), float(ci[1, 1]))
    return {"mean": mean, "mean_ci": mean_ci, "iqm": middle, "iqm_ci": iqm_ci, "num_runs": int(values.size),
            "per_run": values.tolist(), "zero_spread": zero, "reps": reps, "seed": seed,
            "confidence": confidence}


def aggregate(score_dict: Mapping[str, np.ndarray], *, reps: int = BOOTSTRAP_REPS, seed: int = BOOTSTRAP_SEED,
              confidence: float = CONFIDENCE) -> dict[str, dict]:
    """Per method, IQM and mean over all runs x tasks with stratified bootstrap intervals.

    `score_dict`: method -> scores [runs, tasks]. Returns method -> {"iqm", "iqm_ci", "mean",
    "mean_ci", "num_runs", "num_tasks", "zero_spread"}. Each method gets its own bootstrap seeded
    with `seed`, so its interval does not depend on which other methods are in the dict.
    `zero_spread`: every task's runs are equal, the intervals are the degenerate (value, value).
    """
    _, metrics = _rliable()
    out = {}
    for method, scores in score_dict.items():
        values = _runs_array(scores, name=method, ndim=2)
        point_iqm, point_mean = float(metrics.aggregate_iqm(values)), float(metrics.aggregate_mean(values))
        zero = _zero_spread(values)
        if zero:
            iqm_ci, mean_ci = (point_iqm, point_iqm), (point_mean, point_mean)
        else:
            ci = _bootstrap_interval(lambda s: np.array([iqm(s), s.mean(axis=0).mean()]), values, reps=reps,
                                     seed=seed, confidence=confidence)
            iqm_ci, mean_ci = (float(ci[0, 0]), float(ci[1, 0])), (float(ci[0, 1]), float(ci[1, 1]))
        out[method] = {"iqm": point_iqm, "iqm_ci": iqm_ci, "mean": point_mean, "mean_ci": mean_ci,
                       "num_runs": int(values.shape[0]), "num_tasks": int(values.shape[1]),
                       "zero_spread": zero}
    return out


def poi_verdict(ci: tuple[float, float], num_runs: int) -> str:
    """'better' / 'worse' where the interval of P(X > Y) lies entirely above / below 0.5, else
    'not separated'; 'too few runs' with fewer than 2 runs (nothing to resample). See
    VERDICT_WORDS."""
    low, high = ci
    if num_runs < 2 or math.isnan(low) or math.isnan(high):
        return "too few runs"
    if low > 0.5:
        return "better"
    if high < 0.5:
        return "worse"
    return "not separated"


def probability_of_improvement(score_dict: Mapping[str, np.ndarray], pairs: Iterable[tuple[str, str]], *,
                               run_keys: Mapping[str, Sequence[RunKey]] | Sequence[RunKey] | None = None,
                               reps: int = BOOTSTRAP_REPS, seed: int = BOOTSTRAP_SEED,
                               confidence: float = CONFIDENCE) -> dict[tuple[str, str], dict]:
    """P(X > Y) for each pair (x, y), with a paired bootstrap interval.

    `score_dict`: method -> scores [runs, tasks], row i of every method being the same run
    (data seed, seed). `run_keys`, where given (method -> keys, or one key list shared by all),
    is checked: x's and y's keys must be equal and in the same order, else ValueError. Without
    it the rows are taken to be aligned; a different number of runs or tasks is always refused.

    The interval is the percentile interval of a paired bootstrap (one StratifiedBootstrap over
    both arrays and their run ids) of `_paired_poi`; the module docstring says why.

    Returns (x, y) -> {"value" (rliable's probability_of_improvement), "ci": (low, high),
    "verdict" (poi_verdict), "degenerate" (every resample gave one value, low == high),
    "num_runs", "num_tasks"}. Every pair is resampled with the same seed: equal shapes give the
    same resampled runs for every pair.
    """
    _, metrics = _rliable()
    out = {}
    for x, y in pairs:
        for name in (x, y):
            if name not in score_dict:
                raise ValueError(f"probability of improvement of {x} over {y}: no scores for {name} "
                                 f"(have {sorted(score_dict)})")
        if x == y:
            raise ValueError(f"probability of improvement of {x} over itself")
        scores_x = _runs_array(score_dict[x], name=x, ndim=2)
        scores_y = _runs_array(score_dict[y], name=y, ndim=2)
        if scores_x.shape != scores_y.shape:
            raise ValueError(f"{x} has {scores_x.shape[0]} runs x {scores_x.shape[1]} tasks, {y} "
                             f"{scores_y.shape[0]} x {scores_y.shape[1]}: a paired comparison needs the same "
                             "(data seed, seed) runs on the same tasks for both")
        if run_keys is not None:
            keys_x, keys_y = _keys_of(run_keys, x), _keys_of(run_keys, y)
            if len(keys_x) != scores_x.shape[0] or len(keys_y) != scores_y.shape[0]:
                raise ValueError(f"run_keys of {x} or {y} do not match their number of runs "
                                 f"({len(keys_x)}/{len(keys_y)} keys, {scores_x.shape[0]} runs)")
            if keys_x != keys_y:
                raise ValueError(f"runs of {x} and {y} are not aligned: {x} has (data seed, seed) "
                                 f"{_format_keys(keys_x)}, {y} has {_format_keys(keys_y)}; row i of both must "
                                 "be the same run")
        value = float(metrics.probability_of_improvement(scores_x, scores_y))
        ci = _bootstrap_interval(_paired_poi(scores_x, scores_y), scores_x, scores_y, _run_ids(scores_x.shape),
                                 reps=reps, seed=seed, confidence=confidence)
        low, high = float(ci[0, 0]), float(ci[1, 0])
        num_runs = int(scores_x.shape[0])
        out[(x, y)] = {"value": value, "ci": (low, high), "verdict": poi_verdict((low, high), num_runs),
                       "degenerate": low == high, "num_runs": num_runs, "num_tasks": int(scores_x.shape[1])}
    return out


def _keys_of(run_keys, method: str) -> list[RunKey]:
    keys = run_keys[method] if isinstance(run_keys, Mapping) else run_keys
    return [tuple(int(v) for v in key) for key in keys]


def _format_keys(keys: Iterable[RunKey]) -> str:
    return ", ".join(f"(data {d}, seed {s})" for d, s in keys) or "none"


@dataclasses.dataclass(frozen=True)
class ScoreTable:
    """Per-run scores of a results.json, aligned across methods and tasks.

    `scores[method]` is [runs, tasks]: row i is the run `run_keys[i]` (sorted (data seed, seed)),
    column j the task `tasks[j]`. `left_out`: methods found but not in `scores`, with why;
    `skipped_tasks`: tasks with no finished method at all.
    """

    tasks: tuple[str, ...]
    run_keys: tuple[RunKey, ...]
    scores: dict[str, np.ndarray]
    oracle: dict[str, bool]
    left_out: dict[str, str] = dataclasses.field(default_factory=dict)
    skipped_tasks: tuple[str, ...] = ()


def scores_from_results(results: Mapping, *, methods: Sequence[str] | None = None, metric: str = "success_rate",
                        missing: Literal["raise", "drop"] = "raise") -> ScoreTable:
    """Aligned [runs, tasks] arrays from a results.json's `tasks[task]["methods"][name]["runs"]`.

    `methods`: which methods (default: every method found, in first-seen order). A method absent
    from a task raises ValueError, or with `missing="drop"` is left out (named in `left_out`; if
    every method is, `scores` is empty).
    Every kept (task, method) cell must have the same set of (data seed, seed) runs: a cell that
    lacks a run another cell has, a run found twice, or a missing / non-finite score raises a
    ValueError naming the task, the method and the runs. Tasks with no methods are skipped.
    """
    if not isinstance(results, Mapping) or not isinstance(results.get("tasks"), Mapping):
        raise ValueError("not an experiment's results.json: no 'tasks'")
    tasks = {task: info.get("methods") or {} for task, info in results["tasks"].items()}
    skipped = tuple(task for task, found in tasks.items() if not found)
    tasks = {task: found for task, found in tasks.items() if found}
    if not tasks:
        raise ValueError("results have no task with finished methods")
    if methods is None:
        methods = list(dict.fromkeys(name for found in tasks.values() for name in found))
    kept, left_out = [], {}
    for method in methods:
        absent = [task for task, found in tasks.items() if method not in found]
        if not absent:
            kept.append(method)
        elif missing == "drop":
            left_out[method] = f"not run on {', '.join(absent)}"
        else:
            raise ValueError(f"{method} has no results on {', '.join(absent)}: an aggregate over tasks needs every "
                             "method on every task")
    if not kept:
        if missing == "drop":  # nothing to align: every method is left out
            return ScoreTable(tasks=tuple(tasks), run_keys=(), scores={}, oracle={}, left_out=left_out,
                              skipped_tasks=skipped)
        raise ValueError("no method given")
    cells: dict[tuple[str, str], dict[RunKey, float]] = {}
    for task, found in tasks.items():
        for method in kept:
            cells[task, method] = cell_runs(found[method], task=task, method=method, metric=metric)
    every_key = set().union(*(set(c) for c in cells.values()))
    for (task, method), cell in cells.items():
        lacking = sorted(every_key - set(cell))
        if lacking:
            raise ValueError(f"{task}: {method} lacks run(s) {_format_keys(lacking)} that other methods or tasks "
                             "have; paired statistics need every method to have the same (data seed, seed) runs "
                             "on every task (finish or re-run the missing runs, or merge runs of one protocol)")
    run_keys = tuple(sorted(every_key))
    scores = {method: np.array([[cells[task, method][key] for task in tasks] for key in run_keys], dtype=float)
              for method in kept}
    oracle = {method: any(bool(found[method].get("oracle", False)) for found in tasks.values()) for method in kept}
    return ScoreTable(tasks=tuple(tasks), run_keys=run_keys, scores=scores, oracle=oracle, left_out=left_out,
                      skipped_tasks=skipped)


def cell_runs(cell: Mapping, *, task: str = "?", method: str = "?",
              metric: str = "success_rate") -> dict[RunKey, float]:
    """(data seed, seed) -> score of one results.json cell's runs, sorted by key; ValueError
    (naming `task` and `method`) for a cell without runs, a run found twice or a bad score."""
    runs = cell.get("runs") if isinstance(cell, Mapping) else None
    if not runs:
        raise ValueError(f"{task}: {method} has no per-run results ('runs'); results.json files written before "
                         "per-run results were stored cannot be bootstrapped")
    out: dict[RunKey, float] = {}
    for run in runs:
        try:
            key = (int(run["data_seed"]), int(run["seed"]))
            value = float(run[metric])
        except (KeyError, TypeError, ValueError) as error:
            raise ValueError(f"{task}: {method} has a run without a numeric data_seed, seed and {metric} "
                             f"({error!r}): {run!r}") from None
        if key in out:
            raise ValueError(f"{task}: {method} has run {_format_keys([key])} twice")
        if not math.isfinite(value):
            raise ValueError(f"{task}: {method} run {_format_keys([key])} has {metric} {value}")
        out[key] = value
    return dict(sorted(out.items()))


def load_scores(path: str | os.PathLike, **kwargs) -> ScoreTable:
    """`scores_from_results` of one results.json (or the run directory holding it). To combine
    several runs, merge them first with experiments/results_table.py (which checks that they
    share the protocol) and load its `--out` file."""
    file = os.path.join(path, "results.json") if os.path.isdir(path) else os.fspath(path)
    with open(file, encoding="utf-8") as handle:
        results = json.load(handle)
    try:
        return scores_from_results(results, **kwargs)
    except ValueError as error:
        raise ValueError(f"{file}: {error}") from None
