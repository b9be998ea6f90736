"""Results: per-method statistics over runs, the summary table and learning curves."""

from __future__ import annotations

import math
import pathlib

import numpy as np

from plare_jax import runs
from plare_jax.methods import get_method
from plare_jax.pipeline.config import ExperimentConfig
from plare_jax.pipeline.train import method_evals

# Fields of a results.json that must agree for two runs' numbers to be compared side by side
# (one table, one figure): how the labels were made and which data and training seeds ran.
PROTOCOL_FIELDS = ("labeler", "teacher", "teacher_noise", "teacher_noise_level", "teacher_agreement", "preset",
                   "data_seeds", "seeds", "unsure", "final_eval_episodes")


def protocol_fields(results: dict) -> dict:
    """The protocol fields of a results.json, those written before --teacher-noise read as theirs."""
    fields = {field: results.get(field) for field in PROTOCOL_FIELDS}
    if "teacher_mistake_rate" in results and "teacher_noise" not in results:
        rate = results["teacher_mistake_rate"]
        fields.update(teacher_noise="mistake", teacher_noise_level=rate or None)
    return fields


def protocol_difference(ours: dict, theirs: dict) -> str | None:
    """'field (ours vs theirs)' for the first protocol field two results.json differ in, else None."""
    ours, theirs = protocol_fields(ours), protocol_fields(theirs)
    for field in PROTOCOL_FIELDS:
        if ours[field] != theirs[field]:
            return f"{field} ({ours[field]!r} vs {theirs[field]!r})"
    return None

# Two-sided 95% quantiles of Student's t for 1..30 degrees of freedom (beyond: the normal 1.96).
_T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179,
         2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064,
         2.060, 2.056, 2.052, 2.048, 2.045, 2.042)


def t_quantile_975(dof: int) -> float:
    return _T975[dof - 1] if 1 <= dof <= len(_T975) else 1.96


def run_statistics(values) -> dict:
    """Mean, sample std (ddof=1) and a 95% t-interval of the mean over independent runs."""
    values = np.asarray(values, dtype=float)
    n = int(values.size)
    mean = float(values.mean())
    std = float(values.std(ddof=1)) if n > 1 else float("nan")
    half = t_quantile_975(n - 1) * std / math.sqrt(n) if n > 1 else float("nan")
    return {"mean": mean, "std": std, "ci95_low": mean - half, "ci95_high": mean + half,
            "min": float(values.min()), "max": float(values.max()), "num_runs": n,
            "per_run": values.tolist()}


def run_keys(config: ExperimentConfig) -> list[tuple[int, int]]:
    """(data seed, training seed) of every run behind one (task, method) cell, in order."""
    return [(d, s) for d in config.data_seeds for s in config.seeds]


def summarize(config: ExperimentConfig, labeler_kind: str, labeler_reason: str, task_summaries: dict,
              seed_results: dict) -> dict:
    """results.json: per task and method, the statistics over every finished run.

    `task_summaries[task][data_seed]`: the data stage's summary; `seed_results[task][(data_seed,
    seed)]`: one run's per-method results.
    """
    tasks = {}
    for task in config.tasks:
        finished = [k for k in run_keys(config) if k in seed_results.get(task, {})]
        methods = {}
        for name in config.method:
            if not finished:
                continue
            per_run = [seed_results[task][k]["methods"][name] for k in finished]
            method = get_method(name)
            methods[name] = {
                "success": run_statistics([r["success_rate"] for r in per_run]),
                "description": method.description, "oracle": method.oracle,
                "runs": [{"data_seed": d, "seed": s, **r} for (d, s), r in zip(finished, per_run)],
            }
        data = task_summaries.get(task, {})
        tasks[task] = {
            "methods": methods,
            "comparisons": compare_to(methods, "plare"),
            "data": {str(d): summary for d, summary in data.items()},
            "trained_pairs": [summary["labels"].get("trained_pairs") for summary in data.values()],
            "label_accuracy": [summary["labels"].get("accuracy") for summary in data.values()],
            "label_first_share": [summary["labels"].get("first_share") for summary in data.values()],
            "label_unsure_rate": [summary["labels"].get("unsure_rate") for summary in data.values()],
            "training_timings": {f"data{d}-seed{s}": seed_results[task][d, s]["timings"]
                                 for d, s in finished},
        }
    return {"labeler": labeler_kind, "labeler_reason": labeler_reason, "teacher": config.teacher,
            "teacher_noise": config.teacher_noise, "teacher_noise_level": config.teacher_noise_level,
            "teacher_agreement": config.teacher_agreement, "preset": config.preset,
            "final_eval_episodes": config.final_eval_episodes,
            "data_seeds": list(config.data_seeds), "seeds": list(config.seeds),
            "unsure": config.unsure, "tasks": tasks}


def compare_to(methods: dict, reference: str) -> dict:
    """Each other method against `reference`: better/worse only where the 95% intervals separate."""
    if reference not in methods:
        return {}
    ref = methods[reference]["success"]
    out = {}
    for name, m in methods.items():
        if name == reference:
            continue
        s = m["success"]
        if math.isnan(ref["ci95_low"]) or math.isnan(s["ci95_low"]):
            verdict = "too few runs"
        elif ref["std"] == 0 or s["std"] == 0:
            # Identical runs give a zero-width interval: no evidence of a separation either way.
            verdict = "zero spread, not compared"
        elif ref["ci95_low"] > s["ci95_high"]:
            verdict = f"{reference} better"
        elif ref["ci95_high"] < s["ci95_low"]:
            verdict = f"{reference} worse"
        else:
            verdict = "intervals overlap"
        out[name] = verdict
    return out


def format_table(results: dict) -> str:
    """Markdown table of final success per task and method, with what the numbers mean."""
    labels_from_teacher = results["labeler"] == "scripted"
    lines = [
        "Final success rate: share of evaluation episodes that were ever successful within the "
        "horizon; mean ± sample std (ddof=1) over runs (data seeds x training seeds) and a 95% "
        "t-interval of the mean. bc ignores the labels (the baseline every method must beat); "
        "rows marked (oracle) read simulator returns. 'vs plare' says better/worse only where the "
        "intervals separate.",
        "",
        "| task | method | success mean ± std | 95% interval | runs | vs plare | pairs trained on | labels |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for task, info in results["tasks"].items():
        trained = "/".join(str(t) for t in info.get("trained_pairs", []) if t is not None) or "-"
        accs = [a for a in info.get("label_accuracy", []) if a is not None]
        agreement = "acc. vs teacher " + "/".join(f"{a:.3f}" for a in accs) if accs else "-"
        if labels_from_teacher:
            protocol = protocol_fields(results)
            noisy = protocol["teacher_agreement"] not in (None, 1.0) or protocol["teacher_noise_level"] is not None
            level = protocol["teacher_noise_level"]
            noise = (f"{level:.0%} flipped" if protocol["teacher_noise"] == "mistake" and level is not None
                     else f"{protocol['teacher_noise']} noise")
            label_note = f"scripted teacher, {noise}, {agreement}" if noisy else "scripted teacher"
        else:
            label_note = agreement
        for name, m in info["methods"].items():
            s = m["success"]
            std = "n/a" if math.isnan(s["std"]) else f"{s['std']:.2f}"
            interval = ("n/a" if math.isnan(s["ci95_low"]) else "zero spread" if s["std"] == 0
                        else f"[{s['ci95_low']:.2f}, {s['ci95_high']:.2f}]")
            uses_labels = name not in ("bc", "pbc")
            lines.append(
                f"| {task} | {name}{' (oracle)' if m['oracle'] else ''} | {s['mean']:.2f} ± {std} | "
                f"{interval} | {s['num_runs']} | {info['comparisons'].get(name, '-')} | "
                f"{trained if uses_labels else '-'} | {label_note if uses_labels else '-'} |")
    return "\n".join(lines)


def eval_curves(run_dir: pathlib.Path, config: ExperimentConfig) -> dict:
    """task -> method -> per-seed [(step, success)], the shared BC phase included where continued."""
    curves = {}
    for task in config.tasks:
        curves[task] = {m: [] for m in config.method}
        for data_seed, seed in run_keys(config):
            path = run_dir / task / f"data{data_seed}" / f"seed{seed}" / "metrics.jsonl"
            records = runs.MetricsLog(path).read()
            for name in config.method:
                curves[task][name].append(
                    [(r["step"], r["success_rate"]) for r in method_evals(records, get_method(name))])
    return curves
