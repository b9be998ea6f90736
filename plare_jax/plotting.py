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
        ax.set_title(task)
        ax.set_xlabel("update step")
        ax.set_ylabel(ylabel)
        ax.set_ylim(-0.03, 1.03)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="best")
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
        ax.set_title(task)
        ax.set_xlabel("labels flipped (%)")
        ax.set_ylabel(ylabel)
        ax.set_ylim(-0.03, 1.03)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
