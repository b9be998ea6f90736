"""PLARE on MetaWorld, end to end.

    python experiments/metaworld.py --env sweep-into

offline data (cached) -> segment pairs -> preference labels (VLM or scripted
teacher; cached) -> behaviour cloning phase -> CPL phase -> periodic and final
evaluation -> run directory with results.json, metrics.jsonl, learning curves
and a video of the final policy.

`--preset quick` (the default) runs on a 2-core laptop in minutes; `--preset
paper` is the reference schedule (500k update steps, 10k pairs) for a GPU.
Any option after the preset overrides it; `--help` shows the preset's values.
"""

from __future__ import annotations

import os
import sys

# Run as a script, this file's folder heads sys.path and its name would shadow the `metaworld`
# package itself: drop the folder before anything imports metaworld.
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _HERE]

import contextlib
import dataclasses
import pathlib
import shutil
import time
from typing import Annotated, Literal

import numpy as np
import tyro

# Rendering needs MUJOCO_GL before mujoco is imported; plare_jax.envs sets it.
from plare_jax.envs import evaluate as envs_evaluate  # noqa: E402  (sets MUJOCO_GL first)
from plare_jax.envs.collect import CollectionConfig, collect_dataset
from plare_jax.envs.render import RenderConfig, encode_png, render_pair_images
from plare_jax.envs.tasks import UnknownTaskError, resolve_task
from plare_jax.data.segments import SegmentPairs, gather_segments, sample_segment_pairs
from plare_jax.labeling.base import PairBatch, preferences_to_targets
from plare_jax.labeling.report import format_report, labeling_report
from plare_jax.labeling.scripted import ScriptedTeacher
from plare_jax.labeling.store import LabelStore
from plare_jax.labeling.vlm import VLMConfig, VLMEndpointError, VLMLabeler, check_endpoint, task_text
from plare_jax.labeling import launcher as vllm_launcher
from plare_jax import plotting, runs

VLM_BASE_URL_ENV = "PLARE_VLM_BASE_URL"


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
    gpu_memory_utilization: float = 0.9
    """vLLM --gpu-memory-utilization when launching."""


@dataclasses.dataclass(frozen=True)
class ExperimentConfig:
    """PLARE (CPL on VLM preference labels) vs behaviour cloning on MetaWorld offline data."""

    env: tuple[str, ...] = ("sweep-into",)
    """MetaWorld v3 task(s), e.g. sweep-into drawer-open door-open plate-slide (any v3 task; the -v3
    suffix is optional)."""
    preset: Literal["quick", "paper"] = "quick"
    """quick: the whole pipeline on a 2-core CPU in minutes. paper: the reference settings (GPU)."""
    method: tuple[Literal["plare", "bc"], ...] = ("plare", "bc")
    """Methods to train. Both share the data and the BC phase; bc continues behaviour cloning where
    plare switches to CPL, so they get the same number of update steps."""
    seeds: Annotated[tuple[int, ...], tyro.conf.arg(aliases=("--seed",))] = (0,)
    """Training/evaluation seeds; results report mean and spread over them."""
    labeler: Literal["auto", "vlm", "scripted"] = "auto"
    """auto: the VLM when an endpoint is configured or vLLM can be launched on a local GPU, else the
    scripted teacher (simulator reward). vlm: require the VLM. scripted: the simulator's teacher."""
    unsure: Literal["drop", "tie"] = "drop"
    """What an unsure (-1) label becomes: drop = weight 0 (PLARE); tie = label 0.5 (RL-VLM-F baseline)."""

    # Offline data and pairs.
    num_episodes: int = 120
    """Episodes of mixed-quality data to collect per task."""
    collection_horizon: int = 250
    """Steps per collected episode."""
    data_seed: int = 0
    """Seed of the offline data and of the pair sampling (shared by all training seeds)."""
    num_pairs: int = 2000
    """Labelled segment pairs per task."""
    segment_length: int = 64
    """Steps per segment."""
    num_keyframes: int = 3
    """Keyframes per segment tiled into each image shown to the VLM."""
    teacher: Literal["progress", "return"] = "progress"
    """What the scripted teacher compares (and what label accuracy is measured against):
    progress = the change of the dense reward over each segment (advantage-like, CPL's preference
    model); return = the segment's reward sum (the classic oracle, but on random pairs it mostly
    ranks the task phase a segment is in rather than how good its actions are)."""
    stretch_prob: float | None = None
    """Offline data: per-step probability of a random-action stretch (None: per-task default)."""
    decoy_prob: float | None = None
    """Offline data: per-episode probability of a decoy-goal expert (None: per-task default)."""
    misperceive_prob: float | None = None
    """Offline data: per-episode probability of an expert that sees the object/handle shifted for the
    whole episode (None: per-task default; see docs/data_modes.md)."""
    teacher_equal_threshold: float = 0.0
    """Scripted teacher: score gaps at or below this are 'unsure'."""
    teacher_mistake_rate: float = 0.0
    """Scripted teacher: probability of flipping a label (simulates an imperfect labeller)."""

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
    cpl_steps: int = 3000
    """CPL update steps (phase 2); the bc method continues BC for as many steps."""
    metrics_every: int = 100
    """Training metrics are averaged and fetched from the device every this many steps."""

    # Evaluation and outputs.
    eval_every: int = 1000
    """Evaluate every this many update steps (and at the end of each phase)."""
    eval_episodes: int = 25
    """Episodes per evaluation (success = ever successful)."""
    eval_horizon: int = 250
    """Steps per evaluation episode (the reference used 250)."""
    video: bool = True
    """Write a short video of the final policy of each method (first seed)."""
    workers: int | None = None
    """Worker processes for collection, rendering and evaluation (default: all cores)."""
    out_dir: pathlib.Path = pathlib.Path("runs")
    """Parent directory of run directories."""
    run_name: str | None = None
    """Run directory name (default: timestamp and task). An existing run is never overwritten."""
    resume: pathlib.Path | None = None
    """Continue an interrupted run directory (its stored config is used; other options are ignored)."""
    cache_dir: pathlib.Path = pathlib.Path("data")
    """Cache of offline datasets and the persistent label store, reused across runs."""
    vlm: VLMOptions = VLMOptions()

    @property
    def total_steps(self) -> int:
        return self.bc_steps + self.cpl_steps

    @property
    def tasks(self) -> tuple[str, ...]:
        return tuple(resolve_task(name) for name in self.env)


QUICK = ExperimentConfig()

PAPER = dataclasses.replace(
    QUICK,
    preset="paper",
    seeds=(0, 1, 2),
    num_episodes=500,
    num_pairs=10_000,
    hidden_dims=(512, 512),
    dropout_rate=0.25,
    learning_rate=1e-4,
    warmup_steps=10_000,
    batch_pairs=96,
    bc_batch_size=96 * 64,
    bc_steps=200_000,
    cpl_steps=300_000,
    metrics_every=1000,
    eval_every=5000,
)

PRESETS = {"quick": QUICK, "paper": PAPER}


class ConfigError(ValueError):
    """An option value that cannot work; raised before any work is done."""


def validate(config: ExperimentConfig) -> None:
    """Fail fast on impossible sizes, before anything is computed."""
    positive = ["num_episodes", "collection_horizon", "num_pairs", "segment_length", "num_keyframes",
                "batch_pairs", "bc_batch_size", "metrics_every", "eval_every", "eval_episodes",
                "eval_horizon"]
    for name in positive:
        if getattr(config, name) <= 0:
            raise ConfigError(f"--{name.replace('_', '-')} must be positive, got {getattr(config, name)}")
    for name in ("bc_steps", "cpl_steps"):
        value = getattr(config, name)
        if value < 0 or value % config.metrics_every:
            raise ConfigError(
                f"--{name.replace('_', '-')} ({value}) must be a non-negative multiple of "
                f"--metrics-every ({config.metrics_every})")
    if config.eval_every % config.metrics_every:
        raise ConfigError(f"--eval-every ({config.eval_every}) must be a multiple of "
                          f"--metrics-every ({config.metrics_every})")
    if config.segment_length > config.collection_horizon:
        raise ConfigError(f"--segment-length ({config.segment_length}) is longer than an episode "
                          f"(--collection-horizon {config.collection_horizon})")
    if config.num_keyframes > config.segment_length:
        raise ConfigError("--num-keyframes cannot exceed --segment-length")
    if not config.env:
        raise ConfigError("--env needs at least one task")
    if not config.seeds:
        raise ConfigError("--seeds needs at least one seed")
    if not config.method:
        raise ConfigError("--method needs at least one method")
    if not 0.0 <= config.teacher_mistake_rate <= 1.0:
        raise ConfigError("--teacher-mistake-rate must be in [0, 1]")
    for name in ("stretch_prob", "decoy_prob", "misperceive_prob"):
        value = getattr(config, name)
        if value is not None and not 0.0 <= value <= 1.0:
            raise ConfigError(f"--{name.replace('_', '-')} must be in [0, 1], got {value}")
    if not 0.0 < config.bias <= 1.0:
        raise ConfigError("--bias must be in (0, 1]")
    if config.vlm.concurrency <= 0:
        raise ConfigError("--vlm.concurrency must be positive")


# ---------------------------------------------------------------------------------------------
# Labeler choice


@dataclasses.dataclass(frozen=True)
class LabelerChoice:
    kind: Literal["vlm", "scripted"]
    reason: str
    base_url: str | None = None
    launch: bool = False


def choose_labeler(config: ExperimentConfig) -> LabelerChoice:
    """Resolve --labeler auto/vlm/scripted to what will run, checking a given endpoint at once."""
    if config.labeler == "scripted":
        return LabelerChoice("scripted", "requested with --labeler scripted")
    base_url = config.vlm.base_url or os.environ.get(VLM_BASE_URL_ENV)
    if base_url:
        vlm_config = _vlm_config(config, base_url)
        check_endpoint(vlm_config)  # raises VLMEndpointError with a clear message
        return LabelerChoice("vlm", f"endpoint {base_url}", base_url=base_url)
    has_vllm = shutil.which("vllm") is not None
    if config.vlm.launch and not has_vllm:
        raise ConfigError("--vlm.launch needs the `vllm` executable: pip install \"plare-jax[vlm]\" "
                          "(CUDA only), or pass --vlm.base-url of a running server")
    if config.vlm.launch or (config.labeler == "auto" and has_vllm
                             and vllm_launcher.local_gpu_available()):
        return LabelerChoice("vlm", f"launching vllm serve {config.vlm.model} locally", launch=True)
    if config.labeler == "vlm":
        raise ConfigError(
            "--labeler vlm needs a VLM: pass --vlm.base-url http://HOST:PORT/v1 (or set "
            f"{VLM_BASE_URL_ENV}) for a running OpenAI-compatible server such as `vllm serve`, or "
            "--vlm.launch on a machine with a GPU and `pip install \"plare-jax[vlm]\"`")
    return LabelerChoice(
        "scripted",
        "no VLM endpoint configured and no local GPU with vLLM: labels come from the simulator's "
        f"reward (scripted teacher). For VLM labels pass --vlm.base-url (or set {VLM_BASE_URL_ENV}) "
        "or run with --vlm.launch on a GPU machine")


def _vlm_config(config: ExperimentConfig, base_url: str) -> VLMConfig:
    return VLMConfig(
        base_url=base_url, model=config.vlm.model, api_key_env=config.vlm.api_key_env,
        concurrency=config.vlm.concurrency, timeout_s=config.vlm.timeout_s,
        max_retries=config.vlm.max_retries,
    )


def teacher_scores(config: ExperimentConfig, pairs: SegmentPairs) -> np.ndarray:
    """[P, 2] ground-truth score per segment that the scripted teacher compares."""
    return pairs.progress if config.teacher == "progress" else pairs.returns


def label_pairs(config, choice, task, dataset, pairs, base_url, label_store_path):
    """Preferences [P] in {0, 1, -1} from the chosen labeler, plus its statistics."""
    goal_text = task_text(task, config.vlm.task_text)
    if choice.kind == "scripted":
        teacher = ScriptedTeacher(equal_threshold=config.teacher_equal_threshold,
                                  mistake_rate=config.teacher_mistake_rate, seed=config.data_seed)
        result = teacher.label(PairBatch(goal_text, returns=teacher_scores(config, pairs)),
                               progress=False)
        return result.preferences, result.stats
    render_config = RenderConfig(num_keyframes=config.num_keyframes)
    labeler_config = _vlm_config(config, base_url)
    preferences, stats_list = [], []
    chunk = 512  # render then label in chunks: bounded memory, and labels are stored as they come
    with LabelStore(label_store_path) as store:
        labeler = VLMLabeler(labeler_config, store=store)
        for begin in range(0, len(pairs.starts), chunk):
            index = np.arange(begin, min(begin + chunk, len(pairs.starts)))
            images = render_pair_images(dataset, pairs.take(index), render_config,
                                        workers=config.workers)
            png_pairs = [(encode_png(a), encode_png(b)) for a, b in images]
            result = labeler.label(PairBatch(goal_text, images=png_pairs))
            preferences.append(result.preferences)
            stats_list.append(result.stats)
    stats = _merge_stats(stats_list)
    return np.concatenate(preferences), stats


_SUMMED_STATS = ("pairs", "queried_pairs", "cache_hits", "requests", "retries", "malformed", "failed",
                 "unsure", "prompt_tokens", "completion_tokens", "wall_s")


def _merge_stats(stats_list: list[dict]) -> dict:
    """One labeling report's statistics from per-chunk statistics.

    Counts and wall time add up and rates are recomputed from them; a latency percentile is the
    largest of the chunks' (an upper bound: chunks cannot be merged exactly); anything else
    (model, prompt version, concurrency) is the same in every chunk.
    """
    merged = dict(stats_list[0])
    for name in _SUMMED_STATS:
        if name in merged:
            merged[name] = sum(stats.get(name) or 0 for stats in stats_list)
    for name in merged:
        if name.startswith("latency_"):
            merged[name] = max(stats[name] for stats in stats_list)
    wall = merged.get("wall_s") or 0.0
    if wall > 0:
        merged["pairs_per_s"] = merged.get("queried_pairs", 0) / wall
        merged["requests_per_s"] = merged.get("requests", 0) / wall
    return merged


# ---------------------------------------------------------------------------------------------
# Training and evaluation (everything that touches JAX is below this line)

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from tqdm.auto import tqdm  # noqa: E402

from plare_jax import checkpoint as ckpt  # noqa: E402
from plare_jax.learner import (  # noqa: E402
    LearnerConfig, LearnerState, PreferenceData, TransitionData, make_policy_fn, start_phase, train,
)


def learner_config(config: ExperimentConfig) -> LearnerConfig:
    return LearnerConfig(
        hidden_dims=tuple(config.hidden_dims), dropout_rate=config.dropout_rate,
        learning_rate=config.learning_rate, warmup_steps=config.warmup_steps,
        batch_pairs=config.batch_pairs, bc_batch_size=config.bc_batch_size,
        alpha=config.alpha, bias=config.bias,
    )


@dataclasses.dataclass
class TaskData:
    """Everything the learner needs for one task, plus what the results report about it."""

    task: str
    transitions: TransitionData
    preference_data: PreferenceData
    summary: dict


def prepare_task(config: ExperimentConfig, choice: LabelerChoice, task: str, base_url: str | None,
                 task_dir: pathlib.Path) -> TaskData:
    """Dataset -> pairs -> labels for one task; cached stages load in seconds."""
    timings = {}
    t0 = time.perf_counter()
    dataset = collect_dataset(
        CollectionConfig(task=task, num_episodes=config.num_episodes,
                         horizon=config.collection_horizon, seed=config.data_seed,
                         stretch_prob=config.stretch_prob, decoy_prob=config.decoy_prob,
                         misperceive_prob=config.misperceive_prob),
        cache_dir=config.cache_dir / "datasets", workers=config.workers)
    timings["data_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    pairs = sample_segment_pairs(dataset, config.num_pairs, segment_length=config.segment_length,
                                 rng=np.random.default_rng(config.data_seed))
    preferences, stats = label_pairs(config, choice, task, dataset, pairs, base_url,
                                     config.cache_dir / "labels.sqlite")
    timings["labels_s"] = time.perf_counter() - t0

    oracle = ScriptedTeacher().label(PairBatch(task, returns=teacher_scores(config, pairs)),
                                     progress=False)
    report = labeling_report(preferences, oracle.preferences, stats)
    print(f"[{task}] labels ({choice.kind}):\n{format_report(report)}")

    labels, weights = preferences_to_targets(preferences, unsure=config.unsure)
    observations, actions = gather_segments(dataset, pairs.starts, config.segment_length)
    preference_data = PreferenceData(
        observations=jnp.asarray(observations, jnp.float32),
        actions=jnp.asarray(actions, jnp.float32),
        labels=jnp.asarray(labels, jnp.float32),
        weights=jnp.asarray(weights, jnp.float32),
        mask=jnp.ones(observations.shape[:3], jnp.float32),
    )
    transitions = TransitionData(observations=jnp.asarray(dataset.observations, jnp.float32),
                                 actions=jnp.asarray(dataset.actions, jnp.float32))
    summary = {"dataset": dataset.card, "labels": report, "timings": timings}
    runs.write_json_atomic(task_dir / "data_and_labels.json", summary)
    return TaskData(task, transitions, preference_data, summary)


def evaluate(config: ExperimentConfig, task: str, state: LearnerState, seed: int,
             video_path: pathlib.Path | None = None):
    return envs_evaluate.evaluate_policy(
        task, make_policy_fn(state), num_episodes=config.eval_episodes, horizon=config.eval_horizon,
        seed=10_000 + seed,  # the same episodes for every method and step: paired comparisons
        workers=config.workers, video_path=video_path, progress=False)


def run_branch(config: ExperimentConfig, data: TaskData, state: LearnerState, *, branch: str,
               phase: str, start_step: int, num_steps: int, seed: int, unit_dir: pathlib.Path,
               log: runs.MetricsLog, video_path: pathlib.Path | None = None) -> LearnerState:
    """Train one branch (shared BC phase, or a method's second phase) with evals and checkpoints.

    `video_path`: record the branch's final evaluation there (no extra evaluation episodes).

    Resumable: restores the branch's latest checkpoint and continues from there; randomness
    depends only on (seed, step), so an interrupted and resumed run equals an uninterrupted one.
    """
    manager = ckpt.make_checkpoint_manager(unit_dir / "checkpoints" / branch, max_to_keep=2)
    end_step = start_step + num_steps
    step = start_step
    latest = ckpt.latest_step(manager)
    if latest is not None:
        state = ckpt.restore_state(manager, state, step=latest)
        step = latest
    # Records written after the last checkpoint (an interrupted attempt) are redone below.
    log.drop(lambda r: r.get("branch") == branch and r["step"] > step)
    train_data = data.preference_data if phase == "cpl" else data.transitions
    base_key = jax.random.key(seed)
    bar = tqdm(total=num_steps, initial=step - start_step, desc=f"{data.task} seed {seed} {branch}",
               unit="step", leave=False)
    try:
        while step < end_step:
            chunk = min(config.eval_every - (step % config.eval_every), end_step - step)
            key = jax.random.fold_in(base_key, step)
            state, metrics = train(state, train_data, key, chunk, phase=phase,
                                   metrics_every=config.metrics_every)
            metrics = jax.device_get(metrics)
            for i in range(chunk // config.metrics_every):
                log.append({"branch": branch, "phase": phase,
                            "step": step + (i + 1) * config.metrics_every,
                            **{k: float(np.asarray(v)[i]) for k, v in metrics.items()}})
            step += chunk
            bar.update(chunk)
            result = evaluate(config, data.task, state, seed,
                              video_path=video_path if step == end_step else None)
            log.append({"branch": branch, "phase": phase, "step": step, "eval": True,
                        "success_rate": result.success_rate, "mean_return": result.mean_return})
            bar.set_postfix(success=f"{result.success_rate:.2f}")
            ckpt.save_state(manager, state, force=True)
    finally:
        bar.close()
        manager.close()
    return state


def method_evals(records: list[dict], method: str) -> list[dict]:
    """Evaluation records of `method`, the shared BC phase included, in step order."""
    evals = [r for r in records if r.get("eval") and r["branch"] in ("bc_phase", method)]
    return sorted(evals, key=lambda r: r["step"])


def train_seed(config: ExperimentConfig, data: TaskData, seed: int, unit_dir: pathlib.Path) -> dict:
    """The shared BC phase, then each method's second phase; returns per-method final results."""
    unit_dir.mkdir(parents=True, exist_ok=True)
    done_path = unit_dir / "result.json"
    if done_path.exists():  # finished before an interruption: nothing to redo
        return runs.read_json(done_path)
    log = runs.MetricsLog(unit_dir / "metrics.jsonl")
    obs_dim = data.transitions.observations.shape[-1]
    act_dim = data.transitions.actions.shape[-1]
    state = LearnerState.create(jax.random.key(seed), learner_config(config), obs_dim, act_dim)
    timings = {}

    t0 = time.perf_counter()
    state = start_phase(state, "bc")
    bc_state = run_branch(config, data, state, branch="bc_phase", phase="bc", start_step=0,
                          num_steps=config.bc_steps, seed=seed, unit_dir=unit_dir, log=log)
    timings["bc_phase_s"] = time.perf_counter() - t0

    results = {}
    for method in config.method:
        t0 = time.perf_counter()
        if method == "plare":  # explicit phase switch: fresh optimizer and warm-up for CPL
            state, phase = start_phase(bc_state, "cpl"), "cpl"
        else:  # the baseline keeps cloning with the same optimizer, for as many steps
            state, phase = bc_state, "bc"
        video_path = (unit_dir.parent / f"{method}_final.mp4"
                      if config.video and seed == config.seeds[0] else None)
        state = run_branch(config, data, state, branch=method, phase=phase,
                           start_step=config.bc_steps, num_steps=config.cpl_steps, seed=seed,
                           unit_dir=unit_dir, log=log, video_path=video_path)
        timings[f"{method}_phase_s"] = time.perf_counter() - t0
        final = method_evals(log.read(), method)[-1]
        results[method] = {"success_rate": final["success_rate"], "mean_return": final["mean_return"],
                           "step": final["step"]}
        if video_path is not None:
            if not video_path.exists():  # branch finished before a resume, or no steps to run
                evaluate(config, data.task, state, seed, video_path=video_path)
            results[method]["video"] = str(video_path.relative_to(unit_dir.parent.parent))
    result = {"seed": seed, "methods": results, "timings": timings}
    runs.write_json_atomic(done_path, result)
    return result


def eval_curves(run_dir: pathlib.Path, config: ExperimentConfig) -> dict:
    """task -> method -> per-seed [(step, success)] including the shared BC phase."""
    curves = {}
    for task in config.tasks:
        curves[task] = {m: [] for m in config.method}
        for seed in config.seeds:
            records = runs.MetricsLog(run_dir / task / f"seed{seed}" / "metrics.jsonl").read()
            for method in config.method:
                curves[task][method].append(
                    [(r["step"], r["success_rate"]) for r in method_evals(records, method)])
    return curves


def summarize(config: ExperimentConfig, choice: LabelerChoice, task_summaries: dict,
              seed_results: dict) -> dict:
    tasks = {}
    for task in config.tasks:
        methods = {}
        for method in config.method:
            rates = np.array([seed_results[task][s]["methods"][method]["success_rate"]
                              for s in config.seeds if s in seed_results.get(task, {})])
            if len(rates) == 0:
                continue
            methods[method] = {
                "success_mean": float(rates.mean()), "success_std": float(rates.std()),
                "success_min": float(rates.min()), "success_max": float(rates.max()),
                "per_seed": rates.tolist(), "num_seeds": int(len(rates)),
            }
        tasks[task] = {"methods": methods, **task_summaries.get(task, {}),
                       "training_timings": {s: r["timings"] for s, r in seed_results.get(task, {}).items()}}
    return {"labeler": choice.kind, "labeler_reason": choice.reason, "teacher": config.teacher,
            "preset": config.preset,
            "unsure": config.unsure, "seeds": list(config.seeds), "tasks": tasks}


def format_table(results: dict) -> str:
    lines = ["| task | method | success (mean ± std) | min-max | seeds | label acc. vs teacher | unsure |",
             "|---|---|---|---|---|---|---|"]
    for task, info in results["tasks"].items():
        labels = info.get("labels", {})
        accuracy = labels.get("accuracy")
        unsure = labels.get("unsure_rate")
        for method, m in info["methods"].items():
            lines.append(
                f"| {task} | {method} | {m['success_mean']:.2f} ± {m['success_std']:.2f} | "
                f"{m['success_min']:.2f}-{m['success_max']:.2f} | {m['num_seeds']} | "
                f"{'-' if accuracy is None else f'{accuracy:.3f}'} | "
                f"{'-' if unsure is None else f'{unsure:.3f}'} |")
    return "\n".join(lines)


def config_from_dict(values: dict) -> ExperimentConfig:
    """Rebuild a stored config.json (lists back to tuples, paths back to Paths)."""
    fields = {f.name: f for f in dataclasses.fields(ExperimentConfig)}
    kwargs = {}
    for name, value in values.items():
        if name not in fields:
            continue
        if name == "vlm":
            value = VLMOptions(**value)
        elif isinstance(value, list):
            value = tuple(value)
        elif name in ("out_dir", "cache_dir", "resume") and value is not None:
            value = pathlib.Path(value)
        kwargs[name] = value
    return ExperimentConfig(**kwargs)


def load_resumed_config(run_dir: pathlib.Path) -> ExperimentConfig:
    if not (run_dir / "config.json").exists():
        raise runs.RunDirError(f"--resume {run_dir}: not a run directory (no config.json)")
    return config_from_dict(runs.read_json(run_dir / "config.json"))


def run(config: ExperimentConfig) -> dict:
    resume_dir = config.resume
    if resume_dir is not None:
        config = load_resumed_config(resume_dir)
        print(f"resuming {resume_dir} with its stored config")
    # Everything that can be wrong with the options fails here, before any work.
    validate(config)
    tasks = config.tasks  # raises UnknownTaskError
    runs.check_writable(config.cache_dir)
    choice = choose_labeler(config)
    if resume_dir is not None:
        run_dir = resume_dir
    else:
        name = config.run_name or runs.default_run_name("-".join(config.env))
        run_dir = runs.create_run_dir(config.out_dir / name, config)
    print(f"run directory: {run_dir}")
    print(f"labeler: {choice.kind} ({choice.reason})")
    if choice.kind == "scripted" and config.labeler == "auto":
        print("NOTICE: " + choice.reason)

    launch_context = (
        vllm_launcher.launch_vllm(
            config.vlm.model, tensor_parallel_size=config.vlm.tensor_parallel_size,
            data_parallel_size=config.vlm.data_parallel_size, max_model_len=config.vlm.max_model_len,
            gpu_memory_utilization=config.vlm.gpu_memory_utilization,
            log_path=run_dir / "vllm.log")
        if choice.launch else contextlib.nullcontext(choice.base_url))
    task_summaries, seed_results = {}, {}
    try:
        datas = {}
        with launch_context as base_url:  # the VLM server lives only for the labeling stage
            for task in tasks:
                task_dir = run_dir / task
                task_dir.mkdir(exist_ok=True)
                datas[task] = prepare_task(config, choice, task, base_url, task_dir)
                task_summaries[task] = datas[task].summary
        for task in tasks:
            seed_results[task] = {}
            for seed in config.seeds:
                seed_results[task][seed] = train_seed(config, datas[task], seed,
                                                      run_dir / task / f"seed{seed}")
                results = summarize(config, choice, task_summaries, seed_results)
                runs.write_json_atomic(run_dir / "results.json", results)
            del datas[task]  # free device memory before the next task
    except KeyboardInterrupt:
        print(f"\ninterrupted: everything finished so far is saved; continue with\n"
              f"  python experiments/metaworld.py --resume {run_dir}", file=sys.stderr)
        raise SystemExit(130)

    plotting.plot_learning_curves(eval_curves(run_dir, config), run_dir / "learning_curves.png",
                                  phase_switch_step=config.bc_steps)
    table = format_table(results)
    (run_dir / "summary.md").write_text(table + "\n")
    print("\n" + table)
    print(f"\nresults: {run_dir / 'results.json'}; curves: {run_dir / 'learning_curves.png'}")
    return results


def parse_args(argv: list[str] | None = None) -> ExperimentConfig:
    """Parse argv with the preset named by --preset supplying the defaults."""
    argv = list(sys.argv[1:] if argv is None else argv)
    preset = "quick"
    for i, arg in enumerate(argv):
        if arg == "--preset" and i + 1 < len(argv):
            preset = argv[i + 1]
        elif arg.startswith("--preset="):
            preset = arg.split("=", 1)[1]
    return tyro.cli(ExperimentConfig, default=PRESETS.get(preset, QUICK), args=argv,
                    description=__doc__)


def cli(argv: list[str] | None = None) -> int:
    config = parse_args(argv)
    try:
        run(config)
    except (ConfigError, UnknownTaskError, runs.RunDirError, VLMEndpointError,
            vllm_launcher.VLLMNotFoundError, vllm_launcher.VLLMLaunchError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(cli())
