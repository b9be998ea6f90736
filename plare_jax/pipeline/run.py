"""The MetaWorld experiment: MetaWorld as a data source of the one pipeline (`pipeline.runner`),
its data mesh, and reuse of finished runs by sweeps."""

from __future__ import annotations

import dataclasses
import pathlib

import jax

from plare_jax import plotting, runs, sharding
from plare_jax.interrupts import stop_on_signals
from plare_jax.methods import get_method
from plare_jax.methods.plare import PLARE
from plare_jax.pipeline.config import ConfigError, ExperimentConfig, validate
from plare_jax.pipeline.data import TaskData, prepare_unit, training_data
from plare_jax.pipeline.labels import LabelerChoice, PairImages, choose_labeler, teacher_scores
from plare_jax.pipeline.lifecycle import load_stored_config
from plare_jax.pipeline.results import eval_curves, format_table, summarize
from plare_jax.pipeline.runner import resolve_resume, run_source
from plare_jax.pipeline.source import Unit
from plare_jax.pipeline.train import metaworld_evaluator

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


class MetaWorldSource:
    """MetaWorld as a `pipeline.source.DataSource`: per task and data seed, collected offline data
    with simulator states, keyframes re-rendered from them, the simulator's dense reward as the
    scripted teacher's ground truth, and evaluation in the simulator."""

    resume_command = RESUME_COMMAND

    def __init__(self, config: ExperimentConfig):
        self.config = config
        self.track = config.track

    @property
    def name(self) -> str:
        return "-".join(self.config.env)

    def check(self) -> LabelerChoice:
        validate(self.config)
        self.config.tasks  # raises UnknownTaskError
        return choose_labeler(self.config)

    def training_mesh(self) -> jax.sharding.Mesh | None:
        return training_mesh(self.config)

    def units(self, run_dir: pathlib.Path) -> list[Unit]:
        config = self.config
        return [Unit(task, data_seed, unit_dir(run_dir, task, data_seed),
                     video_dir=run_dir / task if config.video and data_seed == config.data_seeds[0] else None)
                for task in config.tasks for data_seed in config.data_seeds]

    def load(self, unit: Unit, should_stop=None):
        # MetaWorld is imported here, not at module level: recorded-data runs never import it.
        from plare_jax.envs.collect import collect_dataset

        config = self.config
        # The other processes read the data process 0 cached, never collect again.
        return collect_dataset(collection_config(config, unit.name, unit.data_seed), cache_dir=config.cache_dir / "datasets",
                               workers=config.workers, recollect=config.recollect and sharding.is_primary(),
                               should_stop=should_stop)

    def goal_text(self, unit: Unit, choice: LabelerChoice) -> str:
        # The scripted teacher reads no text: it gets the task id (asking for the text would warn
        # about tasks without one).
        if choice.kind == "scripted":
            return unit.name
        from plare_jax.envs.tasks import task_text

        return task_text(unit.name, self.config.vlm.task_text)

    def pair_images(self, dataset) -> PairImages:
        """Keyframes re-rendered from the stored simulator states."""
        config = self.config

        def pair_images(pairs):
            from plare_jax.envs.render import RenderConfig, render_pair_images

            return render_pair_images(dataset, pairs, RenderConfig(num_keyframes=config.num_keyframes),
                                      workers=config.workers)

        return pair_images

    def teacher_scores(self, dataset, pairs):
        return teacher_scores(self.config, pairs)

    def training_arrays(self, unit, dataset, pairs, preferences, report):
        # pbc's oracle score per episode: the simulator's return (it reads ground truth by design).
        return training_data(dataset, pairs, preferences, unsure=self.config.unsure,
                             episode_scores=dataset.episode_returns), None

    def describe(self, dataset, choice, kept) -> dict:
        return {"dataset": dataset.card}

    def evaluator(self, unit: Unit, kept, should_stop):
        return lambda seeds: metaworld_evaluator(self.config, unit.name, unit.data_seed, seeds, should_stop)

    def finish_seed(self, unit, data, seed, result) -> dict:
        return result

    def results(self, choice: LabelerChoice, summaries: dict, seed_results: dict) -> dict:
        task_summaries, by_task = {}, {}
        for unit, summary in summaries.items():
            task_summaries.setdefault(unit.name, {})[unit.data_seed] = summary
        for unit, per_seed in seed_results.items():
            by_task.setdefault(unit.name, {}).update(((unit.data_seed, s), r) for s, r in per_seed.items())
        return summarize(self.config, choice.kind, choice.reason, task_summaries, by_task)

    def plot_curves(self, run_dir: pathlib.Path, units) -> pathlib.Path:
        path = run_dir / "learning_curves.png"
        plotting.plot_learning_curves(eval_curves(run_dir, self.config), path, phase_switch_step=self.config.bc_steps)
        return path

    def format_table(self, results: dict) -> str:
        return format_table(results)


def collection_config(config: ExperimentConfig, task: str, data_seed: int):
    """The MetaWorld data collection of one task and data seed under these options."""
    from plare_jax.envs.collect import CollectionConfig

    return CollectionConfig(task=task, num_episodes=config.num_episodes, horizon=config.collection_horizon,
                            seed=data_seed, stretch_prob=config.stretch_prob, decoy_prob=config.decoy_prob,
                            misperceive_prob=config.misperceive_prob)


def prepare_task(config: ExperimentConfig, choice: LabelerChoice, task: str, data_seed: int,
                 base_url: str | None, should_stop=None) -> TaskData:
    """Dataset -> pairs -> labels for one MetaWorld task and data seed (the pipeline's data stage,
    outside a run: diagnostics, benchmarks); cached stages load in seconds."""
    source = MetaWorldSource(config)
    return prepare_unit(source, Unit(task, data_seed, pathlib.Path()), choice, base_url, should_stop)


def run(config: ExperimentConfig) -> dict:
    """Data and labels per task, then every seed and method; writes the run directory.

    Ctrl-C (SIGINT) or SIGTERM stops within seconds (between training windows, evaluation
    steps, video frames, collection and labeling chunks) with `SystemExit` 130 or 143 and the
    resume command. A start that fails or is stopped before any training leaves no run
    directory behind (the cached data and labels stay).
    """
    with stop_on_signals() as stop:
        track = config.track
        config, resume_dir = resolve_resume(config, load_resumed_config, _EXECUTION_FIELDS)
        if resume_dir is not None and track:  # how a run is recorded may change on resume: --resume RUN --track ...
            config = dataclasses.replace(config, track=track)
        results, _ = run_source(MetaWorldSource(config), stop, resume_dir=resume_dir)
        return results
