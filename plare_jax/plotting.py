"""Learning-curve plots (matplotlib, headless Agg backend)."""

from __future__ import annotations

import os
from typing import Mapping, Sequence

import numpy as np


def plot_learning_curves(
    curves: Mapping[str, Mapping[str, Sequence[Sequence[tuple[int, float]]]]],
    path: str | os.PathLike,
    *,
    phase_switch_step: int | None = None,
    ylabel: str = "success rate",
) -> None:
    """One panel per task, one line per method: the mean over seeds with a min-max band.

    Args:
      curves: task -> method -> per-seed list of (step, value) points. Seeds are
        aligned on the steps they share.
      path: where to write the PNG.
      phase_switch_step: step of the BC -> CPL switch, drawn as a dotted line.
      ylabel: label of the y axis.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = list(curves)
    fig, axes = plt.subplots(1, len(tasks), figsize=(4.2 * len(tasks), 3.4), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        for method, seeds in curves[task].items():
            seeds = [dict(points) for points in seeds if points]
            if not seeds:
                continue
            steps = sorted(set.intersection(*(set(s) for s in seeds)))
            values = np.array([[s[step] for step in steps] for s in seeds], dtype=float)
            mean = values.mean(axis=0)
            (line,) = ax.plot(steps, mean, marker="o", markersize=3, label=f"{method} (n={len(seeds)})")
            if len(seeds) > 1:
                ax.fill_between(steps, values.min(axis=0), values.max(axis=0),
                                color=line.get_color(), alpha=0.2)
        if phase_switch_step is not None:
            ax.axvline(phase_switch_step, color="gray", linestyle=":", linewidth=1)
        _style_rate_axes(ax, task, "update step", ylabel)
    _save(fig, path)


def _style_rate_axes(ax, title: str, xlabel: str, ylabel: str) -> None:
    """A panel whose y axis is a rate in [0, 1] (success, accuracy): the shared styling."""
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_ylim(-0.03, 1.03)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")


def _save(fig, path) -> None:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_label_noise(
    points: Mapping[str, Mapping[str, Sequence[tuple[float, float, float, float]]]],
    path: str | os.PathLike,
    *,
    ylabel: str = "final success rate",
) -> None:
    """One panel per task: final success against the share of flipped labels, one line per method.

    Args:
      points: task -> method -> [(mistake_rate, mean, ci95_low, ci95_high)], the interval drawn
        as error bars (NaN bounds, e.g. from a single run, draw no bar).
      path: where to write the PNG.
      ylabel: label of the y axis.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = list(points)
    fig, axes = plt.subplots(1, len(tasks), figsize=(4.4 * len(tasks), 3.6), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        methods = [(method, sorted(rows)) for method, rows in points[task].items() if rows]
        # Each method's points sit slightly beside the others' (at most 1 point of the rate
        # axis either side) so that overlapping intervals stay readable; the rate is the tick.
        offsets = np.linspace(-1.0, 1.0, len(methods)) if len(methods) > 1 else [0.0]
        for (method, rows), offset in zip(methods, offsets):
            rates, means, lows, highs = (np.array(col, dtype=float) for col in zip(*rows))
            errors = np.nan_to_num(np.stack([means - lows, highs - means]), nan=0.0)
            ax.errorbar(100 * rates + offset, means, yerr=np.clip(errors, 0, None), marker="o", markersize=4,
                        capsize=3, label=method)
        ax.set_xticks(sorted({100 * r for _, rows in methods for r, *_ in rows}))
        _style_rate_axes(ax, task, "labels flipped (%)", ylabel)
    _save(fig, path)


def plot_aggregate_intervals(
    aggregates: Mapping[str, Mapping],
    path: str | os.PathLike,
    *,
    metric: str = "iqm",
    xlabel: str = "final success rate",
    xlim: tuple[float, float] = (-0.02, 1.02),
) -> None:
    """rliable's interval-estimate plot of one aggregate metric per method.

    Args:
      aggregates: method -> {metric: value, f"{metric}_ci": (low, high), "zero_spread": bool}, as
        `plare_jax.stats.aggregate` returns. A zero-spread method is labelled so: its bar has no
        width and is no interval.
      path: where to write the PNG.
      metric: "iqm" or "mean".
      xlabel: label of the x axis.
      xlim: range of the x axis (success rates lie in [0, 1]).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from rliable import plot_utils

    labels = {method: method + (" (zero spread)" if a.get("zero_spread") else "") for method, a in aggregates.items()}
    points = {labels[m]: np.array([a[metric]], dtype=float) for m, a in aggregates.items()}
    intervals = {labels[m]: np.array(a[f"{metric}_ci"], dtype=float).reshape(2, 1) for m, a in aggregates.items()}
    title = {"iqm": "IQM over tasks (95% CI)", "mean": "Mean over tasks (95% CI)"}.get(metric, metric)
    fig, ax = plot_utils.plot_interval_estimates(points, intervals, metric_names=[title], algorithms=list(points),
                                                 xlabel="", subfigure_width=4.5,
                                                 row_height=max(0.45, 1.6 / max(len(points), 1)))
    ax.set_xlim(*xlim)
    ax.set_xlabel(xlabel, fontsize="x-large")
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def plot_probability_of_improvement(
    poi: Mapping[tuple[str, str], Mapping],
    path: str | os.PathLike,
) -> None:
    """rliable's probability-of-improvement plot: P(X > Y) with its interval, one row per pair.

    Args:
      poi: (x, y) -> {"value": p, "ci": (low, high)}, as `plare_jax.stats.probability_of_improvement`
        returns.
      path: where to write the PNG.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from rliable import plot_utils

    if not poi:
        raise ValueError("no pairs to draw")
    separator = " > "  # method names carry no such separator; rliable splits the pair name on it
    rows = list(poi.items())[::-1]  # rliable draws the first pair at the bottom: the first pair on top
    estimates = {f"{x}{separator}{y}": float(entry["value"]) for (x, y), entry in rows}
    intervals = {f"{x}{separator}{y}": np.array(entry["ci"], dtype=float) for (x, y), entry in rows}
    fig, ax = plt.subplots(figsize=(4.5, 0.6 + 0.45 * len(poi)))
    plot_utils.plot_probability_of_improvement(estimates, intervals, pair_separator=separator, ax=ax,
                                               xticks=[0.0, 0.25, 0.5, 0.75, 1.0])
    ax.axvline(0.5, color="gray", linestyle=":", linewidth=1)
    ax.set_xlim(-0.02, 1.02)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def plot_iqm_vs_agreement(
    points: Mapping[str, Mapping[str, Sequence[tuple[float, float, float, float]]]],
    path: str | os.PathLike,
    *,
    ylabel: str = "IQM of final success over tasks",
) -> None:
    """One panel per noise model: aggregate IQM against label agreement, one line per method with
    its 95% interval as a band.

    Args:
      points: noise model (e.g. "mistake", "hard pairs") -> method -> [(agreement, iqm, low, high)],
        agreement in percent of labels that agree with the teacher (100, 90, 80, ...). The x axis
        runs from full agreement on the left to the least on the right. NaN bounds draw no band.
      path: where to write the PNG.
      ylabel: label of the y axis.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = list(points)
    if not models:
        raise ValueError("no noise model to draw")
    fig, axes = plt.subplots(1, len(models), figsize=(4.6 * len(models), 3.6), squeeze=False, sharey=True)
    for ax, model in zip(axes[0], models):
        agreements = set()
        for method, rows in points[model].items():
            if not rows:
                continue
            agreement, value, low, high = (np.array(col, dtype=float) for col in zip(*sorted(rows)))
            agreements.update(agreement.tolist())
            (line,) = ax.plot(agreement, value, marker="o", markersize=4, label=method)
            ax.fill_between(agreement, low, high, color=line.get_color(), alpha=0.2, linewidth=0)
        if agreements:
            ax.set_xticks(sorted(agreements))
            ax.set_xlim(max(agreements) + 2, min(agreements) - 2)  # decreasing agreement to the right
        _style_rate_axes(ax, f"noise: {model}", "labels agreeing with the teacher (%)", ylabel)
    _save(fig, path)
