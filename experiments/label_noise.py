"""How each method degrades as preference labels get noisier: final success vs label mistake rate.

    python experiments/label_noise.py --env sweep-into door-open --mistake-rates 0 0.1 0.2 0.3 0.4

For every mistake rate the scripted teacher flips that share of labels (a stand-in for a VLM of
that accuracy), and the whole MetaWorld experiment runs on the same data with those labels. Each
rate is one ordinary run directory under the sweep's folder (resumable the same way); the sweep
writes label_noise.json and label_noise.png (mean and 95% interval per method and rate), the
figure that tells a user how accurate their VLM must be for each method.
"""

from __future__ import annotations

import os
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _HERE]

import dataclasses  # noqa: E402
from typing import Annotated  # noqa: E402

import tyro  # noqa: E402

import plare_jax.envs  # noqa: E402,F401  (sets MUJOCO_GL before mujoco is imported)
from plare_jax import plotting, runs  # noqa: E402
from plare_jax.envs.tasks import UnknownTaskError  # noqa: E402
from plare_jax.pipeline.config import ConfigError, ExperimentConfig, validate  # noqa: E402
from plare_jax.pipeline.run import load_resumed_config, run  # noqa: E402

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
    experiment: Annotated[ExperimentConfig, tyro.conf.OmitArgPrefixes] = DEFAULT_EXPERIMENT
    """Every option of experiments/metaworld.py (labels always come from the scripted teacher)."""


def rate_run_name(rate: float) -> str:
    return f"rate{rate:.2f}"


# Options that say where a run lives or how it is executed, not what it computes.
_LOCATION_FIELDS = ("out_dir", "run_name", "resume", "cache_dir", "workers")


def check_same_experiment(run_dir, experiment: ExperimentConfig) -> None:
    """An existing rate's run is reused (or resumed with its stored options) only if it is the
    experiment asked for: a sweep continued with other tasks, seeds or methods would otherwise
    silently mix two protocols in one figure."""
    stored = dataclasses.asdict(load_resumed_config(run_dir))
    asked = dataclasses.asdict(experiment)
    differing = sorted(name for name in asked if name not in _LOCATION_FIELDS and stored.get(name) != asked[name])
    if differing:
        details = "; ".join(f"{name}: stored {stored.get(name)!r}, asked {asked[name]!r}" for name in differing)
        raise ConfigError(f"{run_dir} was run with other options ({details}); continue it with the "
                          "same options, or start another sweep with --name")


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
        experiment = dataclasses.replace(base, teacher_mistake_rate=rate, out_dir=sweep_dir,
                                         run_name=rate_run_name(rate))
        if run_dir.exists():
            check_same_experiment(run_dir, experiment)
        if (run_dir / "results.json").exists() and (run_dir / "summary.md").exists():
            results = runs.read_json(run_dir / "results.json")  # finished before
        elif run_dir.exists():
            results = run(dataclasses.replace(experiment, resume=run_dir))
        else:
            results = run(experiment)
        summary["runs"][f"{rate:.2f}"] = {"run_dir": run_dir.name, "results": results}
    points = {}
    for rate_key, entry in summary["runs"].items():
        for task, info in entry["results"]["tasks"].items():
            for method, m in info["methods"].items():
                s = m["success"]
                points.setdefault(task, {}).setdefault(method, []).append(
                    (float(rate_key), s["mean"], s["ci95_low"], s["ci95_high"]))
    summary["points"] = points
    runs.write_json_atomic(sweep_dir / "label_noise.json", summary)
    plotting.plot_label_noise(points, sweep_dir / "label_noise.png")
    print(format_sweep(points))
    print(f"\nsweep: {sweep_dir / 'label_noise.json'}; figure: {sweep_dir / 'label_noise.png'}")
    return summary


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
    try:
        run_sweep(config)
    except (ConfigError, UnknownTaskError, runs.RunDirError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(cli())
