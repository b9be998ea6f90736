"""The whole MetaWorld experiment for a resolved config: every stage, resumable, in one call."""

from __future__ import annotations

import contextlib
import dataclasses
import pathlib
import shlex
import shutil
import sys

from plare_jax import plotting, runs
from plare_jax.interrupts import StopRequested, stop_on_signals
from plare_jax.labeling import launcher as vllm_launcher
from plare_jax.labeling.vlm import preflight
from plare_jax.pipeline.config import ConfigError, ExperimentConfig, config_from_dict, validate
from plare_jax.pipeline.data import prepare_task
from plare_jax.pipeline.labels import choose_labeler, vlm_config
from plare_jax.pipeline.results import eval_curves, format_table, summarize
from plare_jax.pipeline.train import train_seed

RESUME_COMMAND = "python experiments/metaworld.py --resume {run_dir}"


def unit_dir(run_dir: pathlib.Path, task: str, data_seed: int, seed: int | None = None) -> pathlib.Path:
    """Where one task's data seed (and one training seed under it) keeps its files."""
    path = run_dir / task / f"data{data_seed}"
    return path if seed is None else path / f"seed{seed}"


def load_resumed_config(run_dir: pathlib.Path) -> ExperimentConfig:
    if not (run_dir / "config.json").exists():
        raise runs.RunDirError(f"--resume {run_dir}: not a run directory (no config.json)")
    return config_from_dict(runs.read_json(run_dir / "config.json"))


# Options that say where a run lives or how it is executed, not what it computes.
_LOCATION_FIELDS = ("out_dir", "run_name", "resume", "cache_dir", "workers")


def check_same_experiment(run_dir: pathlib.Path, experiment: ExperimentConfig) -> None:
    """An existing run is reused (or resumed with its stored options) only if it is the experiment
    asked for: a sweep continued with other tasks, seeds or methods would otherwise silently mix
    two protocols in one table or figure."""
    stored = dataclasses.asdict(load_resumed_config(run_dir))
    asked = dataclasses.asdict(experiment)
    differing = sorted(name for name in asked if name not in _LOCATION_FIELDS and stored.get(name) != asked[name])
    if differing:
        details = "; ".join(f"{name}: stored {stored.get(name)!r}, asked {asked[name]!r}" for name in differing)
        raise ConfigError(f"{run_dir} was run with other options ({details}); continue it with the "
                          "same options, or start another sweep with --name")


def run_or_reuse(experiment: ExperimentConfig) -> dict:
    """The results of `experiment` in out_dir/run_name: read when finished, resumed when interrupted,
    run when new (the run directory must hold the same experiment: `check_same_experiment`)."""
    run_dir = experiment.out_dir / experiment.run_name
    if run_dir.exists():
        check_same_experiment(run_dir, experiment)
    if (run_dir / "results.json").exists() and (run_dir / "summary.md").exists():
        return runs.read_json(run_dir / "results.json")
    if run_dir.exists():
        return run(dataclasses.replace(experiment, resume=run_dir))
    return run(experiment)


def run(config: ExperimentConfig) -> dict:
    """Data and labels per task, then every seed and method; writes the run directory.

    Ctrl-C (SIGINT) or SIGTERM stops within seconds (between training windows, evaluation
    steps, video frames, collection and labeling chunks) with `SystemExit` 130 or 143 and the
    resume command. A start that fails or is stopped before any training leaves no run
    directory behind (the cached data and labels stay).
    """
    with stop_on_signals() as stop:
        return _run(config, stop)


def _run(config: ExperimentConfig, stop) -> dict:
    resume_dir = config.resume
    if resume_dir is not None:
        config = load_resumed_config(resume_dir)
        print(f"resuming {resume_dir} with its stored config")
    # Everything that can be wrong with the options fails here, before any work.
    validate(config)
    tasks = config.tasks  # raises UnknownTaskError
    runs.check_writable(config.cache_dir)
    choice = choose_labeler(config)
    stop.check()
    if resume_dir is not None:
        run_dir = resume_dir
    else:
        name = config.run_name or runs.default_run_name("-".join(config.env))
        run_dir = runs.create_run_dir(config.out_dir / name, config)
    print(f"run directory: {run_dir}")
    print(f"labeler: {choice.kind} ({choice.reason})")

    launch_context = (
        vllm_launcher.launch_vllm(
            config.vlm.model, tensor_parallel_size=config.vlm.tensor_parallel_size,
            data_parallel_size=config.vlm.data_parallel_size, max_model_len=config.vlm.max_model_len,
            gpu_memory_utilization=config.vlm.gpu_memory_utilization,
            executable=config.vlm.executable, extra_args=shlex.split(config.vlm.serve_args),
            log_path=run_dir / "vllm.log")
        if choice.launch else contextlib.nullcontext(choice.base_url))
    task_summaries, seed_results = {}, {}
    training_started = False
    try:
        datas = {}
        with launch_context as base_url:  # the VLM server lives only for the labeling stage
            for task in tasks:
                task_summaries[task] = {}
                for data_seed in config.data_seeds:
                    data = prepare_task(config, choice, task, data_seed, base_url,
                                        unit_dir(run_dir, task, data_seed), should_stop=stop)
                    datas[task, data_seed] = data
                    task_summaries[task][data_seed] = data.summary
        for task in tasks:
            seed_results[task] = {}
            for data_seed in config.data_seeds:
                for seed in config.seeds:
                    first_run = (data_seed, seed) == (config.data_seeds[0], config.seeds[0])
                    training_started = True
                    seed_results[task][data_seed, seed] = train_seed(
                        config, datas[task, data_seed], seed, unit_dir(run_dir, task, data_seed, seed),
                        video_dir=run_dir / task if first_run and config.video else None,
                        should_stop=stop)
                    results = summarize(config, choice.kind, choice.reason, task_summaries,
                                        seed_results)
                    runs.write_json_atomic(run_dir / "results.json", results)
                del datas[task, data_seed]  # free device memory before the next one
        plotting.plot_learning_curves(eval_curves(run_dir, config), run_dir / "learning_curves.png",
                                      phase_switch_step=config.bc_steps)
    except (StopRequested, KeyboardInterrupt) as stopped:
        code = stopped.exit_code if isinstance(stopped, StopRequested) else 130
        if not training_started and resume_dir is None:
            shutil.rmtree(run_dir, ignore_errors=True)
            print(f"\n{stopped or 'interrupted'} before training began: {run_dir} removed, nothing to resume "
                  "(collected data and labels stay cached: run the same command again)", file=sys.stderr)
        else:
            print(f"\n{stopped or 'interrupted'}: everything finished so far is saved; continue with\n  "
                  + RESUME_COMMAND.format(run_dir=run_dir), file=sys.stderr)
        raise SystemExit(code) from None
    except BaseException:
        if not training_started and resume_dir is None:
            shutil.rmtree(run_dir, ignore_errors=True)  # a start that failed leaves no orphan run directory
        raise

    table = format_table(results)
    (run_dir / "summary.md").write_text(table + "\n")
    print("\n" + table)
    print(f"\nresults: {run_dir / 'results.json'}; curves: {run_dir / 'learning_curves.png'}")
    return results
