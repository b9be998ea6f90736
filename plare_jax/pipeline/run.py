"""The whole MetaWorld experiment for a resolved config: every stage, resumable, in one call."""

from __future__ import annotations

import dataclasses
import pathlib

import jax

from plare_jax import plotting, runs, sharding, tracking
from plare_jax.interrupts import stop_on_signals
from plare_jax.pipeline.config import ConfigError, ExperimentConfig, validate
from plare_jax.pipeline.data import prepare_task
from plare_jax.pipeline.labels import choose_labeler
from plare_jax.pipeline.lifecycle import RunGuard, load_stored_config, vlm_server
from plare_jax.pipeline.results import eval_curves, format_table, summarize
from plare_jax.methods import get_method
from plare_jax.methods.plare import PLARE
from plare_jax.pipeline.train import train_seeds

RESUME_COMMAND = "python experiments/metaworld.py --resume {run_dir}"


def unit_dir(run_dir: pathlib.Path, task: str, data_seed: int, seed: int | None = None) -> pathlib.Path:
    """Where one task's data seed (and one training seed under it) keeps its files."""
    path = run_dir / task / f"data{data_seed}"
    return path if seed is None else path / f"seed{seed}"


def load_resumed_config(run_dir: pathlib.Path) -> ExperimentConfig:
    return load_stored_config(run_dir, ExperimentConfig)


# Options that say where a run lives or how it is executed, not what it computes.
_LOCATION_FIELDS = ("out_dir", "run_name", "resume", "cache_dir", "workers", "track", "devices",
                    "distributed", "coordinator_address", "num_processes", "process_id", "batch_seeds")
# How this process takes part (devices, jax.distributed, seeds batched or not): always the command
# line's, on --resume too.
_EXECUTION_FIELDS = ("devices", "distributed", "coordinator_address", "num_processes", "process_id",
                     "batch_seeds")


def _check_distributed(config: ExperimentConfig) -> None:
    """jax.distributed is running when the options ask for it (experiments/metaworld.py starts it
    before anything uses JAX: it cannot start later, once a backend exists)."""
    asked = config.distributed or config.coordinator_address is not None
    if not jax.distributed.is_initialized():
        if asked:
            raise ConfigError(
                "--distributed/--coordinator-address: jax.distributed must start before JAX is first used "
                "(importing plare_jax already uses it); run through experiments/metaworld.py, which starts "
                "it first, or call jax.distributed.initialize() (with jax_cpu_collectives_implementation "
                "'gloo' on CPU) before importing plare_jax")
        return
    if config.num_processes is not None and jax.process_count() != config.num_processes:
        raise ConfigError(f"--num-processes {config.num_processes}, but jax.distributed runs "
                          f"{jax.process_count()} processes")


def _batch_sizes(config: ExperimentConfig) -> list[tuple[str, int]]:
    """(option, value) of every batch that training splits over the data mesh."""
    sizes = [("--bc-batch-size", config.bc_batch_size)]  # the shared BC phase, bc, sft, pbc
    if any(isinstance(get_method(name), PLARE) for name in config.method):
        sizes.append(("--batch-pairs", config.batch_pairs))
    if "rlvlmf" in config.method:
        sizes += [("--rlvlmf.batch-size", config.methods.rlvlmf.batch_size),
                  ("--rlvlmf.reward-batch-pairs", config.methods.rlvlmf.reward_batch_pairs)]
    return sizes


def training_mesh(config: ExperimentConfig) -> jax.sharding.Mesh | None:
    """The data mesh of --devices (every process's, multi-host), or None for one device in all.

    Raises `ConfigError` before any work when jax.distributed is asked for but not running, when
    --devices exceeds the local devices, or when a batch size does not split over the mesh.
    """
    _check_distributed(config)
    if config.batch_seeds:
        # Stacked seeds train as one vmapped program on one device (the seed axis is the batch).
        if (config.devices or 1) > 1 or jax.process_count() > 1:
            raise ConfigError(f"--batch-seeds trains the stacked seeds on one device, not a data mesh "
                              f"(--devices {config.devices}, {jax.process_count()} processes): leave out "
                              "--devices (or pass --devices 1), or leave out --batch-seeds")
        return None
    try:
        mesh = sharding.experiment_mesh(config.devices)
    except ValueError as e:
        raise ConfigError(f"--devices {config.devices}: {e}") from None
    shards = sharding.num_data_shards(mesh)
    processes = jax.process_count()
    bad = [(flag, value) for flag, value in _batch_sizes(config) if value % shards]
    if bad:
        per_process = shards // processes
        where = f"{shards} devices" + (f" ({processes} processes x {per_process})" if processes > 1 else "")
        fitting = [k for k in range(1, jax.local_device_count() + 1)
                   if all(value % (k * processes) == 0 for _, value in _batch_sizes(config))]

        def multiples(value: int) -> str:
            below = value // shards * shards
            return f"{below} or {below + shards}" if below else f"{below + shards}"

        problems = "; ".join(f"{flag} {value} (use a multiple of {shards}, e.g. {multiples(value)})"
                             for flag, value in bad)
        raise ConfigError(
            f"the data mesh has {where} and every batch is split evenly over them, but {problems}"
            + (f"; or choose --devices {' or '.join(map(str, fitting))}" if fitting else ""))
    return mesh


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
    execution = {name: getattr(config, name) for name in _EXECUTION_FIELDS}
    resume_dir = config.resume
    if resume_dir is not None:
        track = config.track
        config = load_resumed_config(resume_dir)
        if track:  # how a run is recorded may change on resume: --resume RUN --track ...
            config = dataclasses.replace(config, track=track)
        print(f"resuming {resume_dir} with its stored config")
        config = dataclasses.replace(config, **execution)
    # Everything that can be wrong with the options fails here, before any work.
    validate(config)
    mesh = training_mesh(config)
    # Multi-process: every process trains; process 0 alone writes the run directory, collects and
    # labels (the others wait, then read its caches) and renders videos (runs.py: process-0 writes).
    primary = sharding.is_primary()
    tasks = config.tasks  # raises UnknownTaskError
    runs.check_writable(config.cache_dir)
    tracking.require(config.track)  # a missing tensorboardX/wandb fails here
    choice = choose_labeler(config)
    stop.check()
    if resume_dir is not None:
        run_dir = resume_dir
    else:
        # Process 0's name on every process (the default holds a timestamp).
        name = sharding.broadcast_string(config.run_name or runs.default_run_name("-".join(config.env)))
        run_dir = runs.create_run_dir(config.out_dir / name, config)  # process 0 creates it
    sharding.barrier("run directory")
    print(f"run directory: {run_dir}")
    print(f"labeler: {choice.kind} ({choice.reason})")

    launch_context = vlm_server(config.vlm, choice, run_dir / "vllm.log", enabled=primary)
    task_summaries, seed_results = {}, {}
    tracker = tracking.Tracker()  # --track none: drops everything

    def close_tracker(exit_code: int) -> None:  # the tracker open when the run stops or fails
        tracker.close(exit_code=exit_code)

    with RunGuard(run_dir, RESUME_COMMAND.format(run_dir=run_dir), resumed=resume_dir is not None,
                  primary=primary, on_exit=close_tracker) as guard:
        datas = {}
        # The other processes read the data and labels process 0 cached, never collect again.
        data_config = config if primary else dataclasses.replace(config, recollect=False)
        with launch_context as base_url:  # the VLM server lives only for the labeling stage
            if not primary:
                sharding.barrier("data stage")
            for task in tasks:
                task_summaries[task] = {}
                for data_seed in config.data_seeds:
                    data = prepare_task(data_config, choice, task, data_seed, base_url,
                                        unit_dir(run_dir, task, data_seed), should_stop=stop)
                    datas[task, data_seed] = data
                    task_summaries[task][data_seed] = data.summary
            if primary:
                sharding.barrier("data stage")
        tracker = tracking.open_tracker(config.track if primary else (), run_dir, config,  # process 0 writes
                                        extra_config={"labeler": choice.kind})
        for task in tasks:
            seed_results[task] = {}
            for data_seed in config.data_seeds:
                for seeds in config.seed_groups:
                    first_run = (data_seed, seeds[0]) == (config.data_seeds[0], config.seeds[0])
                    guard.training_started = True
                    seed_results[task].update(zip(((data_seed, s) for s in seeds), train_seeds(
                        config, datas[task, data_seed], seeds, [unit_dir(run_dir, task, data_seed, s) for s in seeds],
                        video_dir=run_dir / task if first_run and config.video and primary else None,
                        should_stop=stop, trackers=[tracker.unit(task, data_seed, s) for s in seeds], mesh=mesh,
                        batched=config.batch_seeds)))
                    results = summarize(config, choice.kind, choice.reason, task_summaries,
                                        seed_results)
                    runs.write_json_atomic(run_dir / "results.json", results)
                del datas[task, data_seed]  # free device memory before the next one
        if primary:
            plotting.plot_learning_curves(eval_curves(run_dir, config), run_dir / "learning_curves.png",
                                          phase_switch_step=config.bc_steps)

    table = format_table(results)
    if primary:
        (run_dir / "summary.md").write_text(table + "\n")
    print("\n" + table)
    tracker.log_results(results, table)
    tracker.close()
    print(f"\nresults: {run_dir / 'results.json'}; curves: {run_dir / 'learning_curves.png'}")
    return results
