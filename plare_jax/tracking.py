"""Optional experiment tracking: TensorBoard (via tensorboardX) and Weights & Biases (offline).

`--track tensorboard`, `--track wandb` or `--track tensorboard wandb` logs, next to the run
directory's own files (which stay the record of the run):

- the resolved config (and the labeler actually used);
- every training metrics record (loss etc. of each branch, every --metrics-every steps);
- every evaluation (success_rate, mean_return, episodes of each branch and step);
- the final results table (per task and method: the final success's mean, std, 95% interval).

Off by default, and then neither library is imported. A backend whose library is missing fails
before any work with `TrackingUnavailableError` (a `ConfigError`: the CLI prints it and exits 2).

Everything is written inside the run directory:

- TensorBoard: `run_dir/tensorboard/<task>/data<D>/seed<S>/<branch>/` per branch (one TensorBoard
  "run" each, so methods and seeds overlay in the same charts; tags `train/<metric>` and
  `eval/<metric>`), and `run_dir/tensorboard/overview/` for the config (text), the results
  (scalars `results/<task>/<method>/success_mean` ...) and the results table (text).
  View with `tensorboard --logdir run_dir/tensorboard`.
- Weights & Biases: always offline (no account, no network): `run_dir/wandb/offline-run-*/`.
  Keys `train/<task>/data<D>/seed<S>/<branch>/<metric>` and `eval/...` against the x-axis
  `train_step`; the results as summary values `results/<task>/<method>/success_mean` ... and the
  markdown table as the summary string `results/table`. Upload later with
  `wandb sync run_dir/wandb/offline-run-*`. (wandb itself still writes its debug logs under
  ~/.cache/wandb unless WANDB_CACHE_DIR says otherwise.)

Resuming (`--resume`) appends: TensorBoard gets new event files in the same folders (steps
redone after the last checkpoint are logged again with the same values; TensorBoard keeps the
newest); wandb writes a new offline run beside the first, in the same group (the run
directory's name), with what that attempt computed. Units (task, data seed, seed) that had
finished before the interruption are not logged again.
"""

from __future__ import annotations

import dataclasses
import importlib
import itertools
import json
import math
import os
import pathlib
from typing import Any, Iterable

from plare_jax import runs
from plare_jax.pipeline.config import ConfigError

BACKENDS = ("tensorboard", "wandb")
OFF = "none"
INSTALL_HINT = 'pip install "plare-jax[track]"'
_MODULES = {"tensorboard": "tensorboardX", "wandb": "wandb"}
# Keys of a metrics record that say where it belongs rather than what was measured.
_RECORD_KEYS = ("branch", "step", "eval")
# Numbers event file names: tensorboardX names them by the second and host only, and opens them
# for writing, so a second attempt in the same second would replace the first one's file.
_EVENT_FILES = itertools.count()


class TrackingUnavailableError(ConfigError):
    """A --track backend whose library is not installed."""


def backends(track: Iterable[str]) -> tuple[str, ...]:
    """The backends `--track` asks for, in order ("none" and repeats dropped)."""
    names = []
    for name in track:
        if name != OFF and name not in names:
            names.append(name)
    return tuple(names)


def require(track: Iterable[str]) -> None:
    """Import each asked backend's library now, so that a missing one fails before any work."""
    for name in backends(track):
        if name not in _MODULES:
            raise ConfigError(f"--track: unknown backend {name!r}; known: {OFF}, {', '.join(BACKENDS)}")
        try:
            importlib.import_module(_MODULES[name])
        except ImportError as e:
            raise TrackingUnavailableError(
                f"--track {name} needs the {_MODULES[name]} package, which is not installed "
                f"({e}); install it with: {INSTALL_HINT}") from None


@dataclasses.dataclass(frozen=True)
class Unit:
    """One training run of the sweep: a task's data seed and training seed."""

    task: str
    data_seed: int
    seed: int

    @property
    def name(self) -> str:
        return f"{self.task}/data{self.data_seed}/seed{self.seed}"


def scalars(record: dict) -> dict[str, float]:
    """The measured numbers of a metrics or evaluation record (flags, names and Nones left out)."""
    return {key: float(value) for key, value in record.items()
            if key not in _RECORD_KEYS and isinstance(value, (int, float)) and not isinstance(value, bool)}


def results_rows(results: dict) -> list[dict]:
    """One row per task and method of a results.json: the final success's statistics."""
    rows = []
    for task, info in results.get("tasks", {}).items():
        for method, m in info.get("methods", {}).items():
            s = m["success"]
            rows.append({"task": task, "method": method, "success_mean": s["mean"], "success_std": s["std"],
                         "ci95_low": s["ci95_low"], "ci95_high": s["ci95_high"], "num_runs": s["num_runs"]})
    return rows


_ROW_NUMBERS = ("success_mean", "success_std", "ci95_low", "ci95_high", "num_runs")


class Tracker:
    """Where the pipeline reports what it computes; this base class drops everything (--track none)."""

    def unit(self, task: str, data_seed: int, seed: int) -> "UnitTracker":
        """The tracker one training run (train_seed) reports its records to; runs go one at a time."""
        unit = Unit(task, int(data_seed), int(seed))
        self.begin_unit(unit)
        return UnitTracker(self, unit)

    def begin_unit(self, unit: Unit) -> None:
        """The training run `unit` starts (the previous one, if any, is done)."""

    def log_record(self, unit: Unit, record: dict) -> None:
        """A metrics record (`{"branch", "step", loss, ...}`) or an evaluation record (`"eval": True`)."""

    def log_results(self, results: dict, table: str) -> None:
        """The final results.json and its markdown table (pipeline.results.format_table)."""

    def close(self, exit_code: int = 0) -> None:
        """Flush and close (exit_code != 0: the run stopped or failed and can be resumed)."""


class UnitTracker:
    """A tracker bound to one training run; what `train_seed` and `run_branch` are handed."""

    def __init__(self, tracker: Tracker, unit: Unit | None):
        self.tracker, self.unit = tracker, unit

    def record(self, record: dict) -> None:
        self.tracker.log_record(self.unit, record)


NO_TRACKING = UnitTracker(Tracker(), None)
"""The default of `train_seed`/`run_branch`: records go to the metrics log only."""


class _Fanout(Tracker):
    def __init__(self, trackers: list[Tracker]):
        self.trackers = trackers

    def begin_unit(self, unit):
        for tracker in self.trackers:
            tracker.begin_unit(unit)

    def log_record(self, unit, record):
        for tracker in self.trackers:
            tracker.log_record(unit, record)

    def log_results(self, results, table):
        for tracker in self.trackers:
            tracker.log_results(results, table)

    def close(self, exit_code=0):
        errors = []
        for tracker in self.trackers:
            try:
                tracker.close(exit_code)
            except Exception as e:  # close the others anyway
                errors.append(e)
        if errors:
            raise errors[0]


def open_tracker(track: Iterable[str], run_dir: pathlib.Path, config: Any, *,
                 extra_config: dict | None = None) -> Tracker:
    """The tracker of `--track` for `run_dir`, with the resolved config already logged.

    `extra_config`: more values to log with the config (e.g. the labeler actually used).
    """
    names = backends(track)
    if not names:
        return Tracker()
    require(names)
    values = {**runs.to_jsonable(config), **(extra_config or {})}
    final_step = getattr(config, "total_steps", 0)
    trackers = []
    try:
        for name in names:
            cls = TensorBoardTracker if name == "tensorboard" else WandbTracker
            trackers.append(cls(pathlib.Path(run_dir), values, final_step=final_step))
    except BaseException:
        _Fanout(trackers).close(exit_code=1)
        raise
    return trackers[0] if len(trackers) == 1 else _Fanout(trackers)


def _as_code(text: str) -> str:
    """Markdown code block by indentation (TensorBoard's text plugin renders markdown)."""
    return "\n".join("    " + line for line in text.splitlines())


class TensorBoardTracker(Tracker):
    """Event files under run_dir/tensorboard (see the module docstring for the layout)."""

    def __init__(self, run_dir: pathlib.Path, config: dict, *, final_step: int = 0):
        from tensorboardX import SummaryWriter

        self._writer_cls = SummaryWriter
        self.root = run_dir / "tensorboard"
        self.final_step = final_step
        self._writers: dict[tuple[Unit, str], Any] = {}
        self.overview = self._open(self.root / "overview")
        self.overview.add_text("config", _as_code(json.dumps(config, indent=2)), global_step=0)
        self.overview.flush()

    def _open(self, logdir: pathlib.Path):
        suffix = f".{os.getpid()}.{next(_EVENT_FILES)}"  # see _EVENT_FILES
        return self._writer_cls(logdir=str(logdir), flush_secs=30, filename_suffix=suffix)

    def begin_unit(self, unit):
        self._close_branches()  # one training run at a time: keep only its writers open

    def log_record(self, unit, record):
        key = (unit, record["branch"])
        if key not in self._writers:
            self._writers[key] = self._open(self.root / unit.task / f"data{unit.data_seed}"
                                            / f"seed{unit.seed}" / record["branch"])
        writer = self._writers[key]
        section = "eval" if record.get("eval") else "train"
        for name, value in scalars(record).items():
            writer.add_scalar(f"{section}/{name}", value, global_step=int(record["step"]))
        if record.get("eval"):
            writer.flush()

    def log_results(self, results, table):
        for row in results_rows(results):
            for name in _ROW_NUMBERS:
                if not math.isnan(row[name]):  # std and interval of a single run
                    self.overview.add_scalar(f"results/{row['task']}/{row['method']}/{name}", float(row[name]),
                                             global_step=self.final_step)
        self.overview.add_text("results", table, global_step=self.final_step)
        self.overview.flush()

    def _close_branches(self):
        for writer in self._writers.values():
            writer.close()
        self._writers.clear()

    def close(self, exit_code=0):
        self._close_branches()
        self.overview.close()


class WandbTracker(Tracker):
    """An offline Weights & Biases run under run_dir/wandb (see the module docstring)."""

    STEP = "train_step"

    def __init__(self, run_dir: pathlib.Path, config: dict, *, final_step: int = 0):
        import wandb

        # An offline run gains nothing from wandb's Weave (LLM tracing) hint, printed because the
        # openai client is imported; WANDB_DISABLE_WEAVE=false brings it back.
        os.environ.setdefault("WANDB_DISABLE_WEAVE", "true")
        self.run = wandb.init(
            dir=str(run_dir), mode="offline", project="plare-jax", group=run_dir.name,
            name=run_dir.name, config=config,
            # console="off": the pipeline's own stdout/stderr stay as they are (no capture).
            settings=wandb.Settings(console="off", silent=True))
        self.run.define_metric(self.STEP)
        for section in ("train", "eval"):
            self.run.define_metric(f"{section}/*", step_metric=self.STEP)
        print(f"wandb: offline run in {pathlib.Path(self.run.dir).parent}; upload it with "
              f"`wandb sync {pathlib.Path(self.run.dir).parent}`")

    def log_record(self, unit, record):
        section = "eval" if record.get("eval") else "train"
        prefix = f"{section}/{unit.name}/{record['branch']}"
        self.run.log({self.STEP: int(record["step"]),
                      **{f"{prefix}/{name}": value for name, value in scalars(record).items()}})

    def log_results(self, results, table):
        for row in results_rows(results):
            for name in _ROW_NUMBERS:
                value = row[name]
                self.run.summary[f"results/{row['task']}/{row['method']}/{name}"] = (
                    None if isinstance(value, float) and math.isnan(value) else value)
        self.run.summary["results/table"] = table

    def close(self, exit_code=0):
        self.run.finish(exit_code=exit_code)
