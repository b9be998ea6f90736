"""Results: per-method statistics over runs, the summary table and learning curves."""

from __future__ import annotations

import math
import pathlib

import numpy as np

from plare_jax import runs
from plare_jax.methods import get_method
from plare_jax.pipeline.config import ExperimentConfig
from plare_jax.pipeline.train import method_evals

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


def summarize(config: ExperimentConfig, labeler_kind: str, labeler_reason: str, task_summaries: dict,
              seed_results: dict) -> dict:
    tasks = {}
    for task in config.tasks:
        methods = {}
        for name in config.method:
            per_seed = [seed_results[task][s]["methods"][name] for s in config.seeds
                        if s in seed_results.get(task, {})]
            if not per_seed:
                continue
            method = get_method(name)
            stats = run_statistics([r["success_rate"] for r in per_seed])
            extras = {k: v for k, v in per_seed[0].items()
                      if k not in ("success_rate", "mean_return", "step", "video")}
            methods[name] = {"success": stats, "description": method.description,
                             "oracle": method.oracle, "seeds": [s for s in config.seeds
                                                                if s in seed_results.get(task, {})],
                             "reports": [{k: r.get(k) for k in extras} for r in per_seed]}
        tasks[task] = {"methods": methods, **task_summaries.get(task, {}),
                       "training_timings": {s: r["timings"] for s, r in seed_results.get(task, {}).items()}}
    return {"labeler": labeler_kind, "labeler_reason": labeler_reason, "teacher": config.teacher,
            "preset": config.preset, "data_seed": config.data_seed, "unsure": config.unsure,
            "seeds": list(config.seeds), "tasks": tasks}


def format_table(results: dict) -> str:
    """Markdown table of final success per task and method, with what the numbers mean."""
    labels_from_teacher = results["labeler"] == "scripted"
    lines = [
        "Final success rate: share of evaluation episodes that were ever successful within the "
        "horizon, mean ± sample std (ddof=1) over runs, with a 95% t-interval of the mean. "
        "bc is the baseline that ignores the labels; rows marked (oracle) read simulator returns.",
        "",
        "| task | method | success mean ± std | 95% interval | runs | pairs trained on | labels |",
        "|---|---|---|---|---|---|---|",
    ]
    for task, info in results["tasks"].items():
        labels = info.get("labels", {})
        trained = labels.get("trained_pairs")
        if labels_from_teacher:
            label_note = "scripted teacher"
        else:
            accuracy = labels.get("accuracy")
            label_note = "-" if accuracy is None else f"acc. vs teacher {accuracy:.3f}"
        for name, m in info["methods"].items():
            s = m["success"]
            std = "n/a" if math.isnan(s["std"]) else f"{s['std']:.2f}"
            interval = ("n/a" if math.isnan(s["ci95_low"])
                        else f"[{s['ci95_low']:.2f}, {s['ci95_high']:.2f}]")
            uses_labels = name not in ("bc", "pbc")
            lines.append(
                f"| {task} | {name}{' (oracle)' if m['oracle'] else ''} | {s['mean']:.2f} ± {std} | "
                f"{interval} | {s['num_runs']} | {trained if uses_labels and trained is not None else '-'} | "
                f"{label_note if uses_labels else '-'} |")
    return "\n".join(lines)


def eval_curves(run_dir: pathlib.Path, config: ExperimentConfig) -> dict:
    """task -> method -> per-seed [(step, success)], the shared BC phase included where continued."""
    curves = {}
    for task in config.tasks:
        curves[task] = {m: [] for m in config.method}
        for seed in config.seeds:
            records = runs.MetricsLog(run_dir / task / f"seed{seed}" / "metrics.jsonl").read()
            for name in config.method:
                curves[task][name].append(
                    [(r["step"], r["success_rate"]) for r in method_evals(records, get_method(name))])
    return curves
