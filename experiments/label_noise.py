"""How each method degrades as preference labels get noisier: final success vs label mistake rate.

    python experiments/label_noise.py --env sweep-into door-open --mistake-rates 0 0.1 0.2 0.3 0.4

For every mistake rate the scripted teacher flips that share of labels (a stand-in for a VLM of
that accuracy), and the whole MetaWorld experiment runs on the same data with those labels. Each
rate is one ordinary run directory under the sweep's folder (resumable the same way); the sweep
writes label_noise.json and label_noise.png (mean and 95% interval per method and rate), the
figure that tells a user how accurate their VLM must be for each method.

Sweeps run at different times (one task each) are drawn in one figure, one panel per task, with
no training:

    python experiments/label_noise.py --combine runs/sweep-a runs/sweep-b --figure label_noise.png

They must share the rates and the protocol (data seeds, training seeds, preset, teacher, unsure
handling); a task found in two of them is refused rather than silently drawn from one.
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

import plare_jax.envs  # noqa: E402,F401  (sets MUJOCO_GL before mujoco is imported)
from plare_jax import plotting, runs  # noqa: E402
from plare_jax.pipeline.config import ConfigError, ExperimentConfig, validate  # noqa: E402
from plare_jax.pipeline.results import protocol_difference  # noqa: E402
from plare_jax.pipeline.run import run_or_reuse  # noqa: E402
from plare_jax.errors import exit_on_user_error  # noqa: E402

DEFAULT_EXPERIMENT = dataclasses.replace(
    ExperimentConfig(), env=("sweep-into",), method=("plare", "rlvlmf", "sft", "bc"), seeds=(0, 1, 2),
    labeler="scripted", video=False)


@dataclasses.dataclass(frozen=True)
class LabelNoiseConfig:
    """Final success of every method against the share of flipped preference labels."""

    mistake_rates: tuple[float, ...] = (0.0, 0.1, 0.2, 0.3, 0.4)
    """Shares of labels the scripted teacher flips, one full experiment each."""
    name: str = "label_noise"
    """Folder of the sweep under --out-dir; an existing sweep is continued, its finished
    rates are reused and an interrupted rate is resumed."""
    combine: tuple[pathlib.Path, ...] = ()
    """Instead of running a sweep: finished sweep folders (or their label_noise.json) to draw in
    one figure, one panel per task; needs --figure. The experiment options are then unused."""
    figure: pathlib.Path | None = None
    """Where --combine writes its PNG."""
    experiment: Annotated[ExperimentConfig, tyro.conf.arg(name="")] = DEFAULT_EXPERIMENT
    """Every option of experiments/metaworld.py (labels always come from the scripted teacher)."""


def rate_run_name(rate: float) -> str:
    return f"rate{rate:.2f}"


def run_sweep(config: LabelNoiseConfig) -> dict:
    if not config.mistake_rates:
        raise ConfigError("--mistake-rates needs at least one rate")
    for rate in config.mistake_rates:
        if not 0.0 <= rate <= 0.5:
            raise ConfigError(f"--mistake-rates: {rate} is outside [0, 0.5] (above 0.5 the labels "
                              "are more often wrong than right)")
    base = dataclasses.replace(config.experiment, labeler="scripted")
    validate(base)
    sweep_dir = base.out_dir / config.name
    sweep_dir.mkdir(parents=True, exist_ok=True)
    summary = {"mistake_rates": list(config.mistake_rates), "runs": {}}
    for rate in config.mistake_rates:
        run_dir = sweep_dir / rate_run_name(rate)
        experiment = dataclasses.replace(base, teacher_noise="mistake", teacher_noise_level=rate, out_dir=sweep_dir,
                                         run_name=rate_run_name(rate))
        results = run_or_reuse(experiment)
        summary["runs"][f"{rate:.2f}"] = {"run_dir": run_dir.name, "results": results}
    points = summary["points"] = points_from_runs(summary["runs"])
    runs.write_json_atomic(sweep_dir / "label_noise.json", summary)
    plotting.plot_label_noise(points, sweep_dir / "label_noise.png")
    print(format_sweep(points))
    print(f"\nsweep: {sweep_dir / 'label_noise.json'}; figure: {sweep_dir / 'label_noise.png'}")
    return summary


def points_from_runs(runs_by_rate: dict) -> dict:
    """task -> method -> [(rate, mean, ci95_low, ci95_high)] from a sweep's {rate: {"results": ...}}."""
    points: dict = {}
    for rate_key, entry in runs_by_rate.items():
        for task, info in entry["results"]["tasks"].items():
            for method, cell in info["methods"].items():
                success = cell["success"]
                points.setdefault(task, {}).setdefault(method, []).append(
                    (float(rate_key), success["mean"], success["ci95_low"], success["ci95_high"]))
    return points


def load_sweep(path: pathlib.Path) -> dict:
    file = path / "label_noise.json" if path.is_dir() else path
    if not file.is_file():
        raise ConfigError(f"{path}: no label_noise.json (is it a finished sweep's folder?)")
    try:
        summary = runs.read_json(file)
    except ValueError as error:  # a truncated or hand-edited file
        raise ConfigError(f"{file}: not readable JSON ({error})") from None
    if not isinstance(summary, dict) or not all(key in summary for key in ("mistake_rates", "runs")):
        raise ConfigError(f"{file}: not a label-noise sweep's summary (needs mistake_rates and runs)")
    return summary


def combine_sweeps(paths: tuple[pathlib.Path, ...], figure: pathlib.Path) -> dict:
    """task -> method -> [(rate, mean, low, high)] of several finished sweeps, drawn to `figure`.

    Refused (nothing written) where the sweeps ran other rates or another protocol at a rate, or
    share a task: either would put numbers in one figure that were not measured alike."""
    if not paths:
        raise ConfigError("--combine needs at least one sweep folder")
    sweeps = [(str(path), load_sweep(path)) for path in paths]
    first_name, first = sweeps[0]
    points: dict = {}
    owner: dict[str, str] = {}
    try:
        for name, sweep in sweeps:
            check_same_protocol(name, sweep, first_name, first)
            for task, methods in points_from_runs(sweep["runs"]).items():
                if task in owner:
                    raise ConfigError(f"{task} is in both {owner[task]} and {name}: give each task once")
                owner[task], points[task] = name, methods
    except ConfigError:
        raise
    except (KeyError, TypeError, AttributeError, ValueError) as error:  # well-formed JSON of another layout
        raise ConfigError(f"a sweep summary lacks an expected entry ({error!r}): is every path a "
                          "finished sweep of experiments/label_noise.py?") from None
    figure.parent.mkdir(parents=True, exist_ok=True)
    plotting.plot_label_noise(points, figure)
    print(format_sweep(points))
    print(f"\nfigure: {figure}")
    return points


def check_same_protocol(name: str, sweep: dict, first_name: str, first: dict) -> None:
    """Refuses a sweep whose rates, or whose protocol at any rate, differ from the first sweep's."""
    if sorted(sweep["runs"]) != sorted(first["runs"]):
        raise ConfigError(f"{name} ran the rates {sorted(sweep['runs'])}, {first_name} ran "
                          f"{sorted(first['runs'])}: give sweeps of the same rates")
    for rate_key, entry in sweep["runs"].items():
        difference = protocol_difference(entry["results"], first["runs"][rate_key]["results"])
        if difference:
            raise ConfigError(f"{name} and {first_name} differ in {difference} at rate {rate_key}: they "
                              "do not belong in one figure")


def format_sweep(points: dict) -> str:
    rates = sorted({r for methods in points.values() for rows in methods.values() for r, *_ in rows})
    lines = ["| task | method | " + " | ".join(f"{r:.0%} flipped" for r in rates) + " |",
             "|---|---|" + "---|" * len(rates)]
    for task, methods in points.items():
        for method, rows in methods.items():
            by_rate = {r: (mean, low, high) for r, mean, low, high in rows}
            cells = [f"{by_rate[r][0]:.2f} [{by_rate[r][1]:.2f}, {by_rate[r][2]:.2f}]" if r in by_rate
                     else "-" for r in rates]
            lines.append(f"| {task} | {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> LabelNoiseConfig:
    return tyro.cli(LabelNoiseConfig, args=argv, description=__doc__)


def cli(argv: list[str] | None = None) -> int:
    config = parse_args(argv)

    def main():
        if config.combine:
            if config.figure is None:
                raise ConfigError("--combine needs --figure PATH (the PNG to write)")
            combine_sweeps(config.combine, config.figure)
        elif config.figure is not None:
            raise ConfigError("--figure goes with --combine; a sweep writes label_noise.png in its folder")
        else:
            run_sweep(config)

    return exit_on_user_error(main)


if __name__ == "__main__":
    sys.exit(cli())
