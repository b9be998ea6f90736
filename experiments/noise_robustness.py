"""Every method under labels that err like a VLM's: aggregate IQM over tasks against label agreement.

    python experiments/noise_robustness.py --env sweep-into door-open plate-slide drawer-open \\
        --noise-models mistake hard-pairs --agreements 1 0.9 0.8 0.7 --data-seeds 3 4 5 --seeds 0 1 2

For each noise model of the scripted teacher and each target agreement with the noise-free teacher
(the model's knob is calibrated on each task's pairs, `--teacher-agreement`), the whole MetaWorld
experiment runs on the same data and pairs; agreement 1 is one clean run that every model shares.
Each point is an ordinary run directory under the sweep's folder (resumable; a finished one is
reused). The sweep writes noise_robustness.json and two figures:
- noise_robustness.png: per noise model, the aggregate IQM of final success over all runs x tasks
  against agreement, per method, with stratified-bootstrap 95% intervals (rliable);
- probability_of_improvement.png: at `--poi-at MODEL AGREEMENT`, P(plare > baseline) and
  P(plare-robust > baseline) with paired bootstrap intervals (runs paired by data seed and seed).

Report on data nobody tuned on: the defaults are data seeds 3, 4, 5 (0-2 are development data).

Runs of several sittings make one table through an evidence file (`--evidence`, e.g. the
committed docs/results/noise_robustness.json): each finished point's per-run final successes are
added to it (under the same protocol only), and the summary is drawn from every run it holds for
the asked tasks, methods and seeds. `--summarize-only --evidence FILE` redraws the table and the
figures from the file alone, with no run directory at all.
"""

from __future__ import annotations

import os
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _HERE]

import dataclasses  # noqa: E402
import datetime  # noqa: E402
import pathlib  # noqa: E402
from typing import Annotated, Literal  # noqa: E402

import numpy as np  # noqa: E402
import tyro  # noqa: E402

import plare_jax.envs  # noqa: E402,F401  (sets MUJOCO_GL before mujoco is imported)
from plare_jax import plotting, runs, stats  # noqa: E402
from plare_jax.labeling.noise import NOISE_MODELS  # noqa: E402
from plare_jax.pipeline import evidence as evidence_file  # noqa: E402
from plare_jax.pipeline.config import ConfigError, ExperimentConfig, validate  # noqa: E402
from plare_jax.pipeline.run import run_or_reuse  # noqa: E402
from plare_jax.errors import exit_on_user_error  # noqa: E402

DEFAULT_EXPERIMENT = dataclasses.replace(
    ExperimentConfig(), env=("sweep-into", "door-open", "plate-slide", "drawer-open"),
    method=("plare", "plare-robust", "rlvlmf", "sft", "bc"), data_seeds=(3, 4, 5), seeds=(0, 1, 2),
    labeler="scripted", video=False, eval_every=3000)
COMPARED = ("plare", "plare-robust")


@dataclasses.dataclass(frozen=True)
class NoiseRobustnessConfig:
    """Aggregate IQM of every method against label agreement, per noise model."""

    noise_models: tuple[Literal[tuple(NOISE_MODELS)], ...] = ("mistake", "hard-pairs")  # type: ignore[valid-type]
    """Noise models of the scripted teacher to sweep (each must change agreement, not only unsure)."""
    agreements: tuple[float, ...] = (1.0, 0.9, 0.8, 0.7)
    """Target shares of labels that agree with the noise-free teacher; 1 = the clean labels."""
    poi_at: tuple[str, str] = ("hard-pairs", "0.8")
    """(noise model, agreement) of the probability-of-improvement figure."""
    name: str = "noise-robustness"
    """Folder of the sweep under --out-dir; an existing sweep is continued (finished runs reused)."""
    summarize_only: bool = False
    """Train nothing: draw the summary and figures from the runs finished so far in the sweep's
    folder (each point's results.json holds every finished (data seed, seed) run; the runs must be
    the same for every method of a point). Points not started are left out, and said."""
    evidence: pathlib.Path | None = None
    """Evidence file (JSON) that keeps every finished run's final success across sittings: the
    sweep's finished runs are added to it, and the summary is drawn from all the runs it holds for
    these tasks, methods and seeds. Refused if it holds runs of another protocol."""
    experiment: Annotated[ExperimentConfig, tyro.conf.arg(name="")] = DEFAULT_EXPERIMENT
    """Every option of experiments/metaworld.py (labels from the scripted teacher)."""


def point_run_name(model: str, agreement: float) -> str:
    return "clean" if agreement == 1.0 else f"{model}-{agreement:.2f}"


def check_options(config: NoiseRobustnessConfig) -> None:
    if not config.agreements or not config.noise_models:
        raise ConfigError("--agreements and --noise-models need at least one value each")
    for agreement in config.agreements:
        if not 0.5 < agreement <= 1.0:
            raise ConfigError(f"--agreements: {agreement} is outside (0.5, 1]")
    for model in config.noise_models:
        if model in ("equal", "skip"):
            raise ConfigError(f"--noise-models {model}: it makes labels unsure and never wrong, so it has "
                              "no agreement to sweep")
    if config.experiment.teacher_noise_level is not None or config.experiment.teacher_agreement is not None:
        raise ConfigError("the sweep sets --teacher-noise and --teacher-agreement itself; leave them out")


def points(config: NoiseRobustnessConfig) -> list[tuple[str, float]]:
    out = []
    for model in config.noise_models:
        for agreement in config.agreements:
            out.append((model, agreement))
    return out


def run_sweep(config: NoiseRobustnessConfig) -> dict:
    check_options(config)
    base = dataclasses.replace(config.experiment, labeler="scripted")
    validate(base)
    sweep_dir = base.out_dir / config.name
    sweep_dir.mkdir(parents=True, exist_ok=True)
    evidence = None if config.evidence is None else evidence_file.load(config.evidence, base)
    results = {}
    if config.summarize_only:
        results = finished_results(config, sweep_dir, allow_none=evidence is not None)
        for name, point_results in results.items() if evidence is not None else ():
            evidence = add_to_evidence(config, evidence, name, point_results, sweep_dir)
    else:
        for model, agreement in points(config):
            name = point_run_name(model, agreement)
            if name not in results:
                experiment = dataclasses.replace(
                    base, out_dir=sweep_dir, run_name=name,
                    teacher_noise="mistake" if agreement == 1.0 else model,
                    teacher_agreement=None if agreement == 1.0 else agreement)
                results[name] = run_or_reuse(experiment)
                if evidence is not None:  # kept at once: a later point's failure loses nothing
                    evidence = add_to_evidence(config, evidence, name, results[name], sweep_dir)
    if evidence is not None:
        results = evidence_results(config, evidence, base)
    kept = [(m, a) for m, a in points(config) if point_run_name(m, a) in results]
    if not kept:
        raise ConfigError(f"--summarize-only: no point of this sweep has results yet in {sweep_dir}"
                          + ("" if config.evidence is None else f" or in {config.evidence}"))
    return summarize_sweep(config, results, sweep_dir, only=kept)


def add_to_evidence(config: NoiseRobustnessConfig, evidence: dict, name: str, results: dict, sweep_dir) -> dict:
    source = f"{sweep_dir.name}/{name}, added {datetime.date.today().isoformat()}"
    evidence = evidence_file.add_results(evidence, name, results, source=source)
    evidence_file.save(config.evidence, evidence)
    return evidence


def evidence_results(config: NoiseRobustnessConfig, evidence: dict, base: ExperimentConfig) -> dict:
    """Per point, the evidence's runs of these tasks, methods and seeds (points without any left out)."""
    out = {}
    for model, agreement in points(config):
        name = point_run_name(model, agreement)
        found = evidence_file.point_results(evidence, name, tasks=base.tasks, methods=base.method,
                                            data_seeds=base.data_seeds, seeds=base.seeds)
        if found is not None:
            out[name] = found
    return out


def finished_results(config: NoiseRobustnessConfig, sweep_dir, *, allow_none: bool = False) -> dict:
    """The results.json of every point with results so far in the sweep's folder (finished or
    interrupted runs); points without are said on stderr."""
    results, missing = {}, []
    for model, agreement in points(config):
        name = point_run_name(model, agreement)
        path = sweep_dir / name / "results.json"
        if path.exists():
            results[name] = runs.read_json(path)
        else:
            missing.append(name)
    if not results and not allow_none:
        raise ConfigError(f"--summarize-only: no point of this sweep has results yet in {sweep_dir}")
    if missing:
        print(f"--summarize-only: no run directory with results for {', '.join(missing)} in {sweep_dir}",
              file=sys.stderr)
    return results


def realized_agreement(results: dict) -> float | None:
    """Mean over tasks and data seeds of the labels' measured agreement with the noise-free teacher."""
    values = [a for info in results["tasks"].values() for a in info.get("label_accuracy", []) if a is not None]
    return float(np.mean(values)) if values else None


def summarize_sweep(config: NoiseRobustnessConfig, results: dict, sweep_dir,
                    only: list[tuple[str, float]] | None = None) -> dict:
    summary = {"points": {}}
    curve: dict = {}
    for model, agreement in (points(config) if only is None else only):
        name = point_run_name(model, agreement)
        try:
            table = stats.scores_from_results(results[name])
        except ValueError as error:
            raise ConfigError(f"{name}: {error}") from None
        competing = {m: s for m, s in table.scores.items() if not table.oracle.get(m)}
        aggregates = stats.aggregate(table.scores)
        pairs = [(x, y) for x in COMPARED if x in competing for y in competing if y != x]
        poi = stats.probability_of_improvement(competing, pairs, run_keys=list(table.run_keys)) if pairs else {}
        measured = realized_agreement(results[name])
        summary["points"][f"{model}@{agreement:.2f}"] = {
            "run": name, "target_agreement": agreement, "measured_agreement": measured,
            "tasks": list(table.tasks), "runs": [list(k) for k in table.run_keys],
            "aggregate": aggregates, "probability_of_improvement": {f"{x} > {y}": v for (x, y), v in poi.items()}}
        for method, a in aggregates.items():
            curve.setdefault(model, {}).setdefault(method, []).append(
                (100 * agreement, a["iqm"], a["iqm_ci"][0], a["iqm_ci"][1]))
    runs.write_json_atomic(sweep_dir / "noise_robustness.json", summary)
    plotting.plot_iqm_vs_agreement(curve, sweep_dir / "noise_robustness.png")
    key = f"{config.poi_at[0]}@{float(config.poi_at[1]):.2f}"
    if key in summary["points"] and summary["points"][key]["probability_of_improvement"]:
        poi = {tuple(name.split(" > ")): v for name, v in summary["points"][key]["probability_of_improvement"].items()}
        plotting.plot_probability_of_improvement(poi, sweep_dir / "probability_of_improvement.png")
    print(format_summary(summary))
    print(f"\nsweep: {sweep_dir / 'noise_robustness.json'}; figure: {sweep_dir / 'noise_robustness.png'}")
    return summary


def format_summary(summary: dict) -> str:
    lines = ["| noise @ target agreement (measured) | method | aggregate IQM [95% CI] | P(plare > it) | "
             "P(plare-robust > it) |", "|---|---|---|---|---|"]
    for key, point in summary["points"].items():
        measured = point["measured_agreement"]
        where = f"{key} ({measured:.3f})" if measured is not None else key
        poi = point["probability_of_improvement"]
        for method, a in point["aggregate"].items():
            cells = []
            for x in COMPARED:
                entry = poi.get(f"{x} > {method}")
                cells.append("-" if entry is None else
                             f"{entry['value']:.2f} [{entry['ci'][0]:.2f}, {entry['ci'][1]:.2f}] {entry['verdict']}")
            spread = " (zero spread)" if a["zero_spread"] else ""
            lines.append(f"| {where} | {method} | {a['iqm']:.2f} [{a['iqm_ci'][0]:.2f}, {a['iqm_ci'][1]:.2f}]"
                         f"{spread} | {cells[0]} | {cells[1]} |")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> NoiseRobustnessConfig:
    return tyro.cli(NoiseRobustnessConfig, args=argv, description=__doc__)


def cli(argv: list[str] | None = None) -> int:
    config = parse_args(argv)
    return exit_on_user_error(lambda: run_sweep(config))


if __name__ == "__main__":
    sys.exit(cli())
