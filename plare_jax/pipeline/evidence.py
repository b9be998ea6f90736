"""A sweep's evidence: every finished run's final success, kept in one small JSON file that grows.

Why: a held-out table needs more runs than one sitting of a small machine trains, and run
directories (checkpoints, caches, videos) are too big to keep. The evidence file keeps what the
statistics need, per point of a sweep (e.g. `hard-pairs-0.80`), task, method and (data seed,
seed): the final success, the labels' measured agreement per data seed, and where the value came
from. Runs made at different times merge into it only under the same protocol (every option that
can change a number), so one table can be drawn from runs of several sittings without mixing two
experiments. Pure functions on plain dicts; reading and writing the file is `load` / `save`.
"""

from __future__ import annotations

import pathlib
from collections.abc import Iterable, Mapping

from plare_jax import runs
from plare_jax.errors import PlareError
from plare_jax.pipeline.config import RENAMED_FIELDS, ExperimentConfig

VERSION = 1

# Options that say what ran, where or how fast, not what a run's numbers are: runs that differ only
# in these belong in one table. The noise model and agreement are the point's own (its name).
_NOT_PROTOCOL = ("env", "method", "seeds", "data_seeds", "video", "track", "workers", "devices", "distributed",
                 "coordinator_address", "num_processes", "process_id", "out_dir", "run_name", "resume",
                 "cache_dir", "recollect", "teacher_noise", "teacher_noise_level", "teacher_agreement", "vlm",
                 "batch_seeds")


class EvidenceError(PlareError, ValueError):
    """Runs that cannot join an evidence file (another protocol, or a run measured twice differently)."""


def protocol(config: ExperimentConfig) -> dict:
    """The options every run of one evidence file shares (JSON-ready)."""
    values = runs.to_jsonable(config)
    out = {name: value for name, value in values.items() if name not in _NOT_PROTOCOL + ("methods",)}
    # One key per method: a method registered later (a new option group) leaves older runs valid.
    out.update({f"methods.{name}": options for name, options in values["methods"].items()})
    if config.labeler != "scripted":  # which VLM labelled matters; where it was served does not
        out["vlm_model"] = config.vlm.model
    return out


def empty(config: ExperimentConfig) -> dict:
    return {"version": VERSION, "protocol": protocol(config), "points": {}}


def load(path: pathlib.Path, config: ExperimentConfig) -> dict:
    """The evidence at `path` (empty if absent), refused if it was measured under another protocol."""
    if not path.exists():
        return empty(config)
    evidence = runs.read_json(path)
    if not isinstance(evidence, Mapping) or evidence.get("version") != VERSION or "points" not in evidence:
        raise EvidenceError(f"{path}: not an evidence file of version {VERSION}")
    # Protocols written before an option was renamed name it by its old name.
    evidence = {**evidence, "protocol": {RENAMED_FIELDS.get(k, k): v for k, v in evidence["protocol"].items()}}
    check_protocol(evidence, config, where=str(path))
    return evidence


def save(path: pathlib.Path, evidence: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    runs.write_json_atomic(path, evidence)


def check_protocol(evidence: Mapping, config: ExperimentConfig, *, where: str = "the evidence") -> None:
    ours, theirs = protocol(config), evidence["protocol"]
    differing = sorted(k for k in set(ours) | set(theirs) if ours.get(k) != theirs.get(k)
                       and not (k.startswith("methods.") and (k not in ours or k not in theirs)))
    if differing:
        details = "; ".join(f"{k}: stored {theirs.get(k)!r}, now {ours.get(k)!r}" for k in differing)
        raise EvidenceError(f"{where} holds runs of another protocol ({details}): keep these runs in another "
                            "evidence file")


def add_results(evidence: Mapping, point: str, results: Mapping, *, source: str) -> dict:
    """`evidence` with every finished run of one point's results.json added (a new dict).

    A run already there with the same value is kept as it was (a re-run that reproduced it); one
    with another value is refused, naming it: two measurements of one run mean that something
    changed, and the table must not pick one silently.
    """
    out = {**evidence, "points": {name: _copy_point(p) for name, p in evidence["points"].items()}}
    entry = out["points"].setdefault(point, {"tasks": {}})
    for task, info in results["tasks"].items():
        task_entry = entry["tasks"].setdefault(task, {"label_accuracy": {}, "methods": {}})
        for data_seed, summary in (info.get("data") or {}).items():
            accuracy = (summary.get("labels") or {}).get("accuracy")
            if accuracy is not None:
                task_entry["label_accuracy"][str(data_seed)] = accuracy
        for method, cell in (info.get("methods") or {}).items():
            method_entry = task_entry["methods"].setdefault(method, {"oracle": bool(cell.get("oracle")), "runs": []})
            known = {(r["data_seed"], r["seed"]): r for r in method_entry["runs"]}
            for run in cell.get("runs") or []:
                key = (int(run["data_seed"]), int(run["seed"]))
                value = float(run["success_rate"])
                if key in known:
                    if known[key]["success_rate"] != value:
                        raise EvidenceError(
                            f"{point} {task} {method} data seed {key[0]} seed {key[1]}: the evidence has final "
                            f"success {known[key]['success_rate']} ({known[key]['source']}), this run {value} "
                            f"({source}); a run measured twice must agree")
                    continue
                record = {"data_seed": key[0], "seed": key[1], "success_rate": value, "source": source}
                method_entry["runs"].append(record)
                known[key] = record
            method_entry["runs"].sort(key=lambda r: (r["data_seed"], r["seed"]))
    return out


def _copy_point(point: Mapping) -> dict:
    return {"tasks": {task: {"label_accuracy": dict(info["label_accuracy"]),
                             "methods": {m: {"oracle": c["oracle"], "runs": [dict(r) for r in c["runs"]]}
                                         for m, c in info["methods"].items()}}
                      for task, info in point["tasks"].items()}}


def point_results(evidence: Mapping, point: str, *, tasks: Iterable[str], methods: Iterable[str],
                  data_seeds: Iterable[int], seeds: Iterable[int]) -> dict | None:
    """The runs of `point` restricted to these tasks, methods and seeds, in the results.json layout
    that `stats.scores_from_results` reads (None if the point has none of them). Runs of other
    seeds stay in the file and out of the table."""
    entry = evidence["points"].get(point)
    if entry is None:
        return None
    wanted = {(int(d), int(s)) for d in data_seeds for s in seeds}
    data_seeds = [str(d) for d in data_seeds]
    out = {}
    for task in tasks:
        info = entry["tasks"].get(task)
        if info is None:
            continue
        cells = {}
        for method in methods:
            cell = info["methods"].get(method)
            chosen = [r for r in (cell or {}).get("runs", []) if (r["data_seed"], r["seed"]) in wanted]
            if chosen:
                cells[method] = {"oracle": cell["oracle"], "runs": chosen}
        if cells:
            accuracy = [info["label_accuracy"][d] for d in data_seeds if d in info["label_accuracy"]]
            out[task] = {"methods": cells, "label_accuracy": accuracy}
    return {"tasks": out} if out else None

