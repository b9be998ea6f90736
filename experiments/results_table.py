"""One results table from several runs of experiments/metaworld.py.

    python experiments/results_table.py runs/heldout-sweep-into runs/heldout-rlvlmf

Why: a table is often assembled from runs made at different times (one task per run, or one
method re-run after a change). Each argument is a run directory (or its results.json); for every
task, a method found in a later run replaces the same method from an earlier one (said on
stderr). The runs must share the protocol (data seeds, training seeds, preset, teacher, label
mistake rate, unsure handling): merging runs made under different protocols is refused. The
`vs plare` verdicts are computed again on the merged cells. Prints the markdown table and the
per-run successes; `--out` also writes the merged results.json.

Below that table come the statistics of rliable (Agarwal et al. 2021; plare_jax/stats.py), which
can tell methods apart where a t-interval over 3-6 runs cannot:
- per cell, mean and IQM (25% trimmed mean) over runs with 95% bootstrap intervals; a cell whose
  runs are all equal is marked "all runs equal" (zero spread: no interval, no evidence);
- across tasks, each method's IQM and mean over all runs x tasks (stratified bootstrap: runs
  resampled within each task; --aggregate-figure draws the IQM);
- the probability of improvement P(X > Y) of plare and plare-robust (those present) over every
  other method present, except oracle methods such as pbc (reported, not compared), with a
  paired bootstrap interval: both methods are resampled with the same (data seed, seed) runs,
  which share data, labels and evaluation episodes (--poi-figure draws them). "better" /
  "worse": the interval lies entirely above / below 0.5; "not separated": it straddles 0.5.
Paired statistics need every method to have the same (data seed, seed) runs on every task: a
merge where a method lacks a run that another has is refused. A method missing from a whole task
is shown per cell but left out of the aggregate and the comparisons (said in the output).
"""

from __future__ import annotations

import os
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _HERE]

import dataclasses  # noqa: E402
import pathlib  # noqa: E402
from typing import Annotated  # noqa: E402

import tyro  # noqa: E402

from plare_jax import runs, stats  # noqa: E402
from plare_jax.pipeline.results import compare_to, format_table, protocol_difference  # noqa: E402

# Methods whose improvement over the others is asked for, in the order their rows are printed.
COMPARED = ("plare-robust", "plare")


@dataclasses.dataclass(frozen=True)
class TableConfig:
    """Merge the results.json of several runs into one table (later runs replace earlier methods)."""

    runs: Annotated[tuple[pathlib.Path, ...], tyro.conf.Positional]
    """Run directories (or their results.json), earliest first."""
    out: pathlib.Path | None = None
    """Also write the merged results (results.json layout) here."""
    order: tuple[str, ...] = ("plare", "plare-robust", "rlvlmf", "sft", "bc", "pbc")
    """Order of the methods within each task (methods not listed follow in the order found)."""
    curves: pathlib.Path | None = None
    """Also plot the merged learning curves (success at every evaluation, per task and method) to
    this PNG; needs run directories, not bare results.json files."""
    aggregate_figure: pathlib.Path | None = None
    """Also draw each method's IQM over all tasks with its 95% bootstrap interval (rliable's
    plot_interval_estimates) to this PNG."""
    poi_figure: pathlib.Path | None = None
    """Also draw the probability of improvement of plare / plare-robust over the other methods
    with its 95% paired-bootstrap interval (rliable's plot_probability_of_improvement) to this
    PNG; needs plare or plare-robust and another non-oracle method."""
    reps: int = stats.BOOTSTRAP_REPS
    """Bootstrap resamples behind every interval."""
    bootstrap_seed: int = stats.BOOTSTRAP_SEED
    """Seed of the bootstrap resampling (the same seed gives the same intervals)."""


class TableError(ValueError):
    pass


def load_results(path: pathlib.Path) -> dict:
    file = path / "results.json" if path.is_dir() else path
    if not file.is_file():
        raise TableError(f"{path}: no results.json (is it a finished run directory?)")
    results = runs.read_json(file)
    if "tasks" not in results:
        raise TableError(f"{file}: not an experiment's results.json (no 'tasks')")
    return results


def _ordered(methods: dict, order: tuple[str, ...]) -> dict:
    rank = {name: i for i, name in enumerate(order)}
    return dict(sorted(methods.items(), key=lambda item: rank.get(item[0], len(rank))))  # stable


def merge_results(all_results: list[tuple[str, dict]], log=lambda message: None,
                  order: tuple[str, ...] = ()) -> dict:
    """Merged results: protocol from the first run, methods per task in first-seen order."""
    if not all_results:
        raise TableError("give at least one run")
    first_name, merged = all_results[0][0], {k: v for k, v in all_results[0][1].items() if k != "tasks"}
    tasks: dict[str, dict] = {}
    for name, results in all_results:
        difference = protocol_difference(results, merged)
        if difference:
            raise TableError(f"{name} and {first_name} differ in {difference}: their cells do not belong "
                             "in one table")
        for task, info in results["tasks"].items():
            entry = tasks.setdefault(task, {k: v for k, v in info.items() if k not in ("methods", "comparisons")})
            methods = entry.setdefault("methods", {})
            for method, cell in info["methods"].items():
                if method in methods:
                    log(f"{task}: {method} from {name} replaces the earlier run's")
                methods[method] = cell
    for entry in tasks.values():
        entry["methods"] = _ordered(entry["methods"], order)
        entry["comparisons"] = compare_to(entry["methods"], "plare")
    merged["tasks"] = tasks
    merged["merged_from"] = [name for name, _ in all_results]
    return merged


def merge_curves(run_dirs: list[pathlib.Path], order: tuple[str, ...] = ()) -> tuple[dict, int | None]:
    """task -> method -> per-run curves, a later run's method replacing an earlier one's, and the
    BC -> second-phase switch step (None where the runs disagree)."""
    from plare_jax.pipeline.results import eval_curves
    from plare_jax.pipeline.run import load_resumed_config

    merged: dict[str, dict] = {}
    switch_steps = set()
    for run_dir in run_dirs:
        if not run_dir.is_dir():
            raise TableError(f"--curves needs run directories; {run_dir} is not one")
        config = load_resumed_config(run_dir)
        switch_steps.add(config.bc_steps)
        for task, methods in eval_curves(run_dir, config).items():
            for method, per_run in methods.items():
                if any(per_run):  # a task the run did not reach has no evaluations
                    merged.setdefault(task, {})[method] = per_run
    merged = {task: _ordered(methods, order) for task, methods in merged.items()}
    return merged, (switch_steps.pop() if len(switch_steps) == 1 else None)


def per_run_lines(results: dict) -> str:
    lines = []
    for task, info in results["tasks"].items():
        if not info["methods"]:
            continue
        cells = []
        for method, cell in info["methods"].items():
            by_data: dict[int, list[str]] = {}
            for run in cell.get("runs", []):
                by_data.setdefault(run["data_seed"], []).append(f"{run['success_rate']:.2f}")
            cells.append(f"{method} " + " / ".join(" ".join(v) for v in by_data.values()))
        lines.append(f"{task}: " + ", ".join(cells))
    return "\n".join(lines)


def improvement_pairs(table: stats.ScoreTable) -> list[tuple[str, str]]:
    """(x, y) for x in plare-robust, plare (those present) and every other non-oracle method y,
    each unordered pair once (P(y > x) is 1 - P(x > y))."""
    pairs: list[tuple[str, str]] = []
    for x in COMPARED:
        if x not in table.scores:
            continue
        for y in table.scores:
            if y != x and not table.oracle[y] and (y, x) not in pairs:
                pairs.append((x, y))
    return pairs


def bootstrap_statistics(merged: dict, reps: int = stats.BOOTSTRAP_REPS, seed: int = stats.BOOTSTRAP_SEED) -> dict:
    """Per-cell statistics, the aggregate over tasks and the probabilities of improvement of the
    merged results. Raises ValueError (naming task, method and runs) where the methods' runs are
    not the same (data seed, seed) runs."""
    table = stats.scores_from_results(merged, missing="drop")
    cells: dict[str, dict] = {}
    for task, info in merged["tasks"].items():
        for method, cell in info["methods"].items():
            if method in table.scores and task in table.tasks:
                values = table.scores[method][:, table.tasks.index(task)]  # in (data seed, seed) order
            else:  # left out of the aggregate: its own runs, in (data seed, seed) order
                values = list(stats.cell_runs(cell, task=task, method=method).values())
            cells.setdefault(task, {})[method] = stats.cell_statistics(values, reps=reps, seed=seed)
    pairs = improvement_pairs(table)
    return {
        "reps": reps, "seed": seed, "confidence": stats.CONFIDENCE, "tasks": list(table.tasks),
        "run_keys": [list(key) for key in table.run_keys], "cells": cells,
        "aggregate": stats.aggregate(table.scores, reps=reps, seed=seed),
        "probability_of_improvement": stats.probability_of_improvement(
            table.scores, pairs, run_keys=table.run_keys, reps=reps, seed=seed),
        "oracle": {method: any(bool(info["methods"][method].get("oracle")) for info in merged["tasks"].values()
                               if method in info["methods"])
                   for method in dict.fromkeys(m for info in merged["tasks"].values() for m in info["methods"])},
        "left_out": dict(table.left_out),
    }


def _estimate(value: float, ci, zero_spread: bool, num_runs: int, equal: str = "all runs equal") -> str:
    if num_runs == 1:
        return f"{value:.2f} (1 run: no interval)"
    if zero_spread:
        return f"{value:.2f} (zero spread, {equal}: no interval)"
    return f"{value:.2f} [{ci[0]:.2f}, {ci[1]:.2f}]"


def format_bootstrap(report: dict) -> str:
    """Markdown: per-cell bootstrap statistics, the aggregate over tasks and P(improvement)."""
    reps, seed = report["reps"], report["seed"]
    lines = [
        f"Bootstrap statistics (rliable): mean and IQM (interquartile mean, the 25% trimmed mean; with "
        f"fewer than 4 runs it equals the mean) of final success over the runs of each cell, with 95% "
        f"percentile intervals from {reps} bootstrap resamples of the runs (seed {seed}). A cell whose "
        "runs are all equal has zero spread (marked so): its interval would be the point itself, so none is shown.",
        "",
        "| task | method | mean [95% CI] | IQM [95% CI] | runs |",
        "|---|---|---|---|---|",
    ]
    for task, methods in report["cells"].items():
        for method, c in methods.items():
            oracle = " (oracle)" if report["oracle"].get(method) else ""
            lines.append(f"| {task} | {method}{oracle} | "
                         f"{_estimate(c['mean'], c['mean_ci'], c['zero_spread'], c['num_runs'])} | "
                         f"{_estimate(c['iqm'], c['iqm_ci'], c['zero_spread'], c['num_runs'])} | {c['num_runs']} |")
    tasks = report["tasks"]
    lines += [
        "",
        f"Across {len(tasks)} task{'s' if len(tasks) != 1 else ''} ({', '.join(tasks)}): IQM and mean over all "
        "runs x tasks, 95% stratified bootstrap intervals (runs resampled within each task).",
        "",
        "| method | IQM [95% CI] | mean [95% CI] | runs x tasks |",
        "|---|---|---|---|",
    ]
    for method, a in report["aggregate"].items():
        oracle = " (oracle)" if report["oracle"].get(method) else ""
        equal = "runs equal on every task"
        lines.append(f"| {method}{oracle} | "
                     f"{_estimate(a['iqm'], a['iqm_ci'], a['zero_spread'], a['num_runs'], equal)} | "
                     f"{_estimate(a['mean'], a['mean_ci'], a['zero_spread'], a['num_runs'], equal)} | "
                     f"{a['num_runs']} x {a['num_tasks']} |")
    if not report["aggregate"]:
        lines.append("(no method ran on every task: no aggregate)")
    if report["left_out"]:
        lines.append("Not in the aggregate or the comparisons: " +
                     "; ".join(f"{m} ({why})" for m, why in report["left_out"].items()) + ".")
    lines.append("")
    poi = report["probability_of_improvement"]
    oracles = [m for m, is_oracle in report["oracle"].items() if is_oracle]
    oracle_note = (f" Oracle methods ({', '.join(oracles)}) read simulator returns: reported above, not compared."
                   if oracles else "")
    if not poi:
        present = [m for m in COMPARED if m in report["aggregate"]]
        lines.append("No probability of improvement: " + (
            f"{' and '.join(present)} has no other non-oracle method to be compared with." if present
            else f"none of {', '.join(COMPARED)} is in every task of these runs.") + oracle_note)
        return "\n".join(lines)
    lines += [
        "Probability of improvement P(X > Y): the chance that a run of X beats a run of Y on the same task "
        "(Mann-Whitney U / (n_x n_y), ties count half), averaged over tasks; 95% percentile interval from a "
        f"paired bootstrap ({reps} resamples, seed {seed}): both methods are resampled with the same (data seed, "
        "seed) runs, which share data, labels and evaluation episodes, and copies of one resampled run are not "
        "compared as different runs (plare_jax/stats.py). 'better' / 'worse': the interval lies entirely "
        "above / below 0.5; 'not separated': it straddles 0.5." + oracle_note,
        "",
        "| X | Y | P(X > Y) [95% CI] | verdict |",
        "|---|---|---|---|",
    ]
    for (x, y), p in poi.items():
        note = f" (every resample gave {p['value']:.2f})" if p["degenerate"] and p["verdict"] != "too few runs" else ""
        lines.append(f"| {x} | {y} | {p['value']:.2f} [{p['ci'][0]:.2f}, {p['ci'][1]:.2f}] | "
                     f"{p['verdict']}: {stats.VERDICT_WORDS[p['verdict']]}{note} |")
    lines.append("")
    for x in COMPARED:
        by_verdict: dict[str, list[str]] = {}
        for (px, y), p in poi.items():
            if px == x:
                by_verdict.setdefault(p["verdict"], []).append(y)
        if by_verdict:
            words = {"better": "better than", "worse": "worse than", "not separated": "not separated from",
                     "too few runs": "too few runs to compare with"}
            lines.append(f"{x}: " + "; ".join(f"{words[v]} {', '.join(ys)}" for v, ys in by_verdict.items()) + ".")
    return "\n".join(lines)


def _json_ready(report: dict) -> dict:
    """The bootstrap report with its (x, y) keys as {"x", "y", ...} records (JSON has no tuple keys)."""
    poi = [{"x": x, "y": y, **p} for (x, y), p in report["probability_of_improvement"].items()]
    return {**report, "probability_of_improvement": poi}


def parse_args(argv: list[str] | None = None) -> TableConfig:
    return tyro.cli(TableConfig, args=argv, description=__doc__)


def main(argv: list[str] | None = None) -> int:
    config = parse_args(argv)
    try:
        merged = merge_results([(str(path), load_results(path)) for path in config.runs],
                               log=lambda message: print(message, file=sys.stderr), order=config.order)
    except (TableError, OSError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    try:
        if config.reps < 1:
            raise ValueError(f"--reps must be positive, got {config.reps}")
        report = bootstrap_statistics(merged, config.reps, config.bootstrap_seed)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if config.poi_figure is not None and not report["probability_of_improvement"]:
        print("error: --poi-figure: nothing to compare (needs plare or plare-robust and another non-oracle "
              "method on every task)", file=sys.stderr)
        return 2
    print(format_table(merged))
    print()
    print(format_bootstrap(report))
    print()
    print("Per run (data seeds separated by /):")
    print(per_run_lines(merged))
    if config.out is not None:
        runs.write_json_atomic(config.out, {**merged, "bootstrap": _json_ready(report)})
    if config.aggregate_figure is not None or config.poi_figure is not None:
        from plare_jax import plotting

        if config.aggregate_figure is not None:
            plotting.plot_aggregate_intervals(report["aggregate"], config.aggregate_figure)
        if config.poi_figure is not None:
            plotting.plot_probability_of_improvement(report["probability_of_improvement"], config.poi_figure)
    if config.curves is not None:
        from plare_jax import plotting

        try:
            curves, switch_step = merge_curves(list(config.runs), config.order)
        except (TableError, OSError, ValueError) as error:
            print(f"error: {error}", file=sys.stderr)
            return 2
        plotting.plot_learning_curves(curves, config.curves, phase_switch_step=switch_step)
    return 0


if __name__ == "__main__":
    sys.exit(main())
