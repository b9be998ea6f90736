"""One results table from several runs of experiments/metaworld.py.

    python experiments/results_table.py runs/heldout-sweep-into runs/heldout-rlvlmf

Why: a table is often assembled from runs made at different times (one task per run, or one
method re-run after a change). Each argument is a run directory (or its results.json); for every
task, a method found in a later run replaces the same method from an earlier one (said on
stderr). The runs must share the protocol (data seeds, training seeds, preset, teacher, label
mistake rate, unsure handling): merging runs made under different protocols is refused. The
`vs plare` verdicts are computed again on the merged cells. Prints the markdown table and the
per-run successes; `--out` also writes the merged results.json.
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

from plare_jax import runs  # noqa: E402
from plare_jax.pipeline.results import compare_to, format_table, protocol_difference  # noqa: E402


@dataclasses.dataclass(frozen=True)
class TableConfig:
    """Merge the results.json of several runs into one table (later runs replace earlier methods)."""

    runs: Annotated[tuple[pathlib.Path, ...], tyro.conf.Positional]
    """Run directories (or their results.json), earliest first."""
    out: pathlib.Path | None = None
    """Also write the merged results (results.json layout) here."""
    order: tuple[str, ...] = ("plare", "rlvlmf", "sft", "bc", "pbc")
    """Order of the methods within each task (methods not listed follow in the order found)."""
    curves: pathlib.Path | None = None
    """Also plot the merged learning curves (success at every evaluation, per task and method) to
    this PNG; needs run directories, not bare results.json files."""


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


def parse_args(argv: list[str] | None = None) -> TableConfig:
    return tyro.cli(TableConfig, args=argv)


def main(argv: list[str] | None = None) -> int:
    config = parse_args(argv)
    try:
        merged = merge_results([(str(path), load_results(path)) for path in config.runs],
                               log=lambda message: print(message, file=sys.stderr), order=config.order)
    except (TableError, OSError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(format_table(merged))
    print()
    print("Per run (data seeds separated by /):")
    print(per_run_lines(merged))
    if config.out is not None:
        runs.write_json_atomic(config.out, merged)
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
