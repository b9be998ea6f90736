"""Choose plare-robust's options on development data: every candidate in one run, one table.

    python experiments/robust_search.py --env door-open --teacher-noise hard-pairs --teacher-agreement 0.8

Each candidate (a set of CPL-phase options, `CANDIDATES` below) is registered as a method of its
own (`robust-NAME`, a PLARE learner with those options) and trained beside plare and bc in ONE
run: the same data, labels, shared BC phase (trained once per seed) and evaluation episodes. The
run directory is an ordinary one (resumable; a finished one is reused), and the search prints per
candidate the final success of every run, its mean and IQM with bootstrap intervals, and the
probability that it improves on plare over the runs (paired by data seed and training seed).

Only development data seeds (0, 1, 2) may be searched: a data seed of 3 or more is refused, so
that nothing is ever chosen on the data the results are reported on.
"""

from __future__ import annotations

import os
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _HERE]

import dataclasses  # noqa: E402
from typing import Annotated, Literal  # noqa: E402

import numpy as np  # noqa: E402
import tyro  # noqa: E402

import plare_jax.envs  # noqa: E402,F401  (sets MUJOCO_GL before mujoco is imported)
from plare_jax import runs  # noqa: E402
from plare_jax.methods import registered  # noqa: E402
from plare_jax.methods.plare import PLARE, CPLOptions  # noqa: E402
from plare_jax.pipeline.config import ConfigError, ExperimentConfig, validate  # noqa: E402
from plare_jax.pipeline.run import run_or_reuse  # noqa: E402
from plare_jax.errors import exit_on_user_error  # noqa: E402

DEVELOPMENT_DATA_SEEDS = (0, 1, 2)

# The candidates: each noise-robust option alone at one or two strengths, weaker repulsion
# (a smaller bias lambda) and a combination. Names are run-directory names.
CANDIDATES: dict[str, CPLOptions] = {
    "smooth0.1": CPLOptions(label_smoothing=0.1),
    "bc0.5": CPLOptions(bc_weight=0.5),
    "select0.1": CPLOptions(select_fraction=0.1),
    "bias0.25": CPLOptions(bias=0.25),
    "smallloss0.2": CPLOptions(small_loss_drop=0.2, small_loss_start=500),
    "rdpo0.2": CPLOptions(flip_rate=0.2),
    "smooth0.1-bc0.5": CPLOptions(label_smoothing=0.1, bc_weight=0.5),
    "smooth0.1-select0.1": CPLOptions(label_smoothing=0.1, select_fraction=0.1),
    "bc1.0": CPLOptions(bc_weight=1.0),
    "smooth0.2": CPLOptions(label_smoothing=0.2),
}
CandidateName = Literal[tuple(CANDIDATES)]  # type: ignore[valid-type]
REFERENCE_METHODS = ("plare", "bc")


def candidate_method(name: str) -> PLARE:
    """A candidate as a method of its own, `robust-NAME`: a PLARE learner with its options. Its
    options are fixed (no CLI group): the search registers it only while it runs."""
    method_name = f"robust-{name}"
    return PLARE(name=method_name, description=f"plare-robust candidate {name}", default_options=CANDIDATES[name])

DEFAULT_EXPERIMENT = dataclasses.replace(
    ExperimentConfig(), env=("door-open",), data_seeds=DEVELOPMENT_DATA_SEEDS, seeds=(0,),
    labeler="scripted", video=False, eval_every=3000, teacher_noise="hard-pairs", teacher_agreement=0.8)


@dataclasses.dataclass(frozen=True)
class SearchConfig:
    """plare-robust's candidates against plare on development data."""

    candidates: tuple[CandidateName, ...] = tuple(CANDIDATES)
    """Candidates to run (CANDIDATES in this file says what each sets)."""
    name: str = "robust-search"
    """Folder of the search under --out-dir; an existing search is continued (finished runs reused)."""
    experiment: Annotated[ExperimentConfig, tyro.conf.arg(name="")] = DEFAULT_EXPERIMENT
    """Every option of experiments/metaworld.py (labels from the scripted teacher)."""


def per_run_success(results: dict, method: str) -> dict[tuple[str, int, int], float]:
    """(task, data seed, seed) -> final success of `method` in one results.json."""
    out = {}
    for task, info in results["tasks"].items():
        for r in info["methods"].get(method, {}).get("runs", []):
            out[task, r["data_seed"], r["seed"]] = r["success_rate"]
    return out


def search(config: SearchConfig) -> dict:
    unknown = [c for c in config.candidates if c not in CANDIDATES]
    if unknown:
        raise ConfigError(f"--candidates: unknown {unknown}; known: {', '.join(CANDIDATES)}")
    reported = [d for d in config.experiment.data_seeds if d not in DEVELOPMENT_DATA_SEEDS]
    if reported:
        raise ConfigError(f"--data-seeds {reported}: only development data seeds {list(DEVELOPMENT_DATA_SEEDS)} "
                          "may be searched; data seeds 3+ are for reported results")
    # plare-robust itself is not run here: pin its options so that the choice this search informs
    # (methods.plare.ROBUST) never makes an existing search look like another experiment.
    base = dataclasses.replace(config.experiment, labeler="scripted",
                               methods=dataclasses.replace(config.experiment.methods, plare_robust=CPLOptions()))
    validate(base)
    search_dir = base.out_dir / config.name
    search_dir.mkdir(parents=True, exist_ok=True)
    candidates = {name: candidate_method(name) for name in config.candidates}
    methods = {name: method.name for name, method in candidates.items()}
    with registered({method.name: method for method in candidates.values()}):
        results = run_or_reuse(dataclasses.replace(base, method=REFERENCE_METHODS + tuple(methods.values()),
                                                   out_dir=search_dir, run_name="search"))
    table = {name: per_run_success(results, name) for name in REFERENCE_METHODS}
    table.update({name: per_run_success(results, method) for name, method in methods.items()})
    summary = {"candidates": {name: dataclasses.asdict(CANDIDATES[name]) for name in config.candidates},
               "success": {name: [[*key, value] for key, value in sorted(cells.items())]
                           for name, cells in table.items()}}
    runs.write_json_atomic(search_dir / "robust_search.json", summary)
    print(format_search(table))
    print(f"\nsearch: {search_dir / 'robust_search.json'}")
    return summary


def format_search(table: dict[str, dict]) -> str:
    """Markdown: per candidate the runs' final success, mean, IQM with intervals, and P(> plare)."""
    from plare_jax import stats

    keys = sorted(table["plare"])
    lines = ["| candidate | per run (task, data seed, seed order) | mean [95% CI] | IQM [95% CI] | P(better than plare) [95% CI] |",
             "|---|---|---|---|---|"]
    plare = np.array([table["plare"][k] for k in keys])
    for name, cells in table.items():
        missing = [k for k in keys if k not in cells]
        if missing:
            raise ConfigError(f"{name} lacks runs {missing} that plare has")
        values = np.array([cells[k] for k in keys])
        cell = stats.cell_statistics(values)
        if name == "plare":
            poi = "-"
        else:
            p = stats.probability_of_improvement({"x": values[:, None], "y": plare[:, None]}, [("x", "y")])
            value = p[("x", "y")]
            poi = f"{value['value']:.2f} [{value['ci'][0]:.2f}, {value['ci'][1]:.2f}]"
        lines.append(f"| {name} | {' '.join(f'{v:.2f}' for v in values)} | {cell['mean']:.2f} "
                     f"[{cell['mean_ci'][0]:.2f}, {cell['mean_ci'][1]:.2f}] | {cell['iqm']:.2f} "
                     f"[{cell['iqm_ci'][0]:.2f}, {cell['iqm_ci'][1]:.2f}] | {poi} |")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> SearchConfig:
    return tyro.cli(SearchConfig, args=argv, description=__doc__)


def cli(argv: list[str] | None = None) -> int:
    config = parse_args(argv)
    return exit_on_user_error(lambda: search(config))


if __name__ == "__main__":
    sys.exit(cli())
