"""PLARE on recorded robot data, with no simulator: the stages behind experiments/offline.py.

recorded dataset (validated first) -> segment pairs -> labels (VLM on keyframes taken from the
stored frames, or the scripted teacher on stored rewards) -> a held-out split of the labelled
pairs -> observation / action normalisation -> the shared BC phase and every method
(`pipeline.train`, the same code as the MetaWorld experiment) -> held-out preference accuracy
(and, optionally, success in a gymnasium environment) at every evaluation -> orbax checkpoints,
results.json, learning curves, and per method a numpy-only export (policy.npz + plare_policy.py).

Everything that can be wrong with the data or the options fails before the first VLM request.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import time
import types
from collections.abc import Callable
from typing import Literal

import numpy as np

from plare_jax import plotting, runs
from plare_jax.data.recorded import RecordedDataset, load_recorded, recorded_pair_images
from plare_jax.data.segments import SegmentPairs, sample_segment_pairs, valid_segment_starts
from plare_jax.export import Normalizer, export_policy
from plare_jax.labeling.base import UNSURE, PairBatch, check_preferences
from plare_jax.labeling.coverage import check_label_coverage
from plare_jax.labeling.report import format_report, labeling_report
from plare_jax.labeling.scripted import ScriptedTeacher
from plare_jax.methods import METHODS, get_method
from plare_jax.interrupts import stop_on_signals
from plare_jax.pipeline.config import ConfigError, SharedOptions, validate_updates
from plare_jax.pipeline.data import TaskData, training_data
from plare_jax.pipeline.labels import LabelerChoice, choose_labeler, label_pairs, teacher_scores
from plare_jax.pipeline.lifecycle import RunGuard, load_stored_config, vlm_server
from plare_jax.pipeline.train import method_evals, restore_final_state, train_seeds

# Methods that read simulator ground truth cannot run on data without it.
_NEEDS_REWARDS = tuple(name for name, m in METHODS.items() if m.oracle)


@dataclasses.dataclass(frozen=True)
class _RecordedOptions:
    """The recorded-data run's own options (the dataset, its labeler and teacher, the held-out
    split, normalisation, an optional gymnasium evaluation and the outputs)."""

    data: pathlib.Path | None = None
    """Recorded dataset directory (card.json + steps.npz + frames; see docs/data_format.md; make one
    with experiments/import_data.py). Required, except with --resume."""
    task_text: str | None = None
    """Goal text for the VLM, e.g. "open the drawer" (default: the dataset card's task_text)."""
    camera: str | None = None
    """Camera whose frames the VLM sees (default: the first in the card)."""
    teacher: Literal["progress", "return"] = "progress"
    """What the scripted teacher compares when the data has rewards (and what VLM label accuracy is
    measured against): progress = change of the reward over a segment; return = its sum."""
    data_seed: int = 0
    """Seed of the pair sampling, the scripted teacher's flips and the held-out split."""
    holdout_fraction: float = 0.1
    """Fraction of the labelled pairs kept out of training to measure preference accuracy on."""
    obs_norm: Literal["zscore", "none"] = "zscore"
    """Observation normalisation (fitted on the data, stored with the exported policy)."""
    action_scaling: Literal["auto", "minmax", "none"] = "auto"
    """Action scaling to the tanh policy's [-1, 1]: auto = min-max only if an action leaves [-1, 1]."""

    # Optional evaluation in an environment.
    eval_env: str | None = None
    """gymnasium environment id to evaluate the policies in (its observations and actions must match
    the data's); none: no environment evaluation."""
    eval_env_kwargs: str = "{}"
    """JSON object of keyword arguments for gymnasium.make(--eval-env, ...)."""
    eval_episodes: int = 10
    """Episodes per environment evaluation."""
    eval_horizon: int = 500
    """Steps per environment evaluation episode."""

    # Outputs.
    run_name: str | None = None
    """Run directory name (default: timestamp and dataset name). An existing run is never overwritten."""
    resume: pathlib.Path | None = None
    """Continue an interrupted run directory (its stored config is used; other options are ignored).
    Labels come back from the label store, training from the last checkpoint of each method."""
    cache_dir: pathlib.Path = pathlib.Path("data")
    """Holds the persistent VLM label store (labels.sqlite), shared with the MetaWorld experiment."""


@dataclasses.dataclass(frozen=True)
class OfflineConfig(SharedOptions, _RecordedOptions):
    """PLARE (CPL on VLM preference labels) and its baselines on recorded robot data, no simulator.

    The labels, pairs, policy, updates, VLM and method options are the MetaWorld experiment's
    (`pipeline.config.SharedOptions`, the same defaults: its quick preset)."""


def validate(config: OfflineConfig) -> None:
    """Impossible options fail here, before the data is read."""
    if config.data is None:
        raise ConfigError("--data PATH is required: a recorded dataset directory (make one with "
                          "experiments/import_data.py), or --resume RUN_DIR to continue a run")
    validate_updates(config)
    if not 0.0 <= config.holdout_fraction < 1.0:
        raise ConfigError(f"--holdout-fraction must be in [0, 1), got {config.holdout_fraction}")
    try:
        kwargs = json.loads(config.eval_env_kwargs)
    except json.JSONDecodeError as e:
        raise ConfigError(f"--eval-env-kwargs is not valid JSON ({e})") from e
    if not isinstance(kwargs, dict):
        raise ConfigError("--eval-env-kwargs must be a JSON object, e.g. '{\"max_episode_steps\": 200}'")


# --------------------------------------------------------------------------------------------
# Data and labels


@dataclasses.dataclass
class PreparedData:
    """A recorded dataset with its labelled pairs, split for training and held-out evaluation."""

    dataset: RecordedDataset
    pairs: SegmentPairs
    preferences: np.ndarray  # [P] in {0, 1, -1}
    train_index: np.ndarray  # [P_train] indices into pairs
    heldout_index: np.ndarray  # [P_held] indices into pairs
    normalizer: Normalizer
    task: TaskData
    summary: dict


def check_inputs(config: OfflineConfig) -> tuple[RecordedDataset, str, LabelerChoice]:
    """Reads and validates the data and resolves labeler, task text, camera and environment.

    Raises (before any labeling): ConfigError, RecordedDataError, VLMEndpointError.
    """
    validate(config)
    dataset = load_recorded(config.data)
    text = config.task_text if config.task_text is not None else dataset.task_text
    try:
        valid_segment_starts(dataset, config.segment_length)
    except ValueError as e:
        raise ConfigError(f"--segment-length {config.segment_length}: {e}") from e
    choice = choose_labeler(config)
    if choice.kind == "scripted":
        if dataset.rewards is None:
            raise ConfigError(
                f"{config.data} has no rewards, so the scripted teacher cannot label it; use a VLM "
                "(--labeler vlm with --vlm.base-url http://HOST:PORT/v1, or --vlm.launch on a GPU)")
        if config.labeler == "auto":
            choice = LabelerChoice("scripted", "no VLM endpoint configured and no local GPU with vLLM: "
                                   "labels come from the dataset's stored rewards (scripted teacher)")
    else:
        dataset.camera(config.camera)  # raises if there are no frames or no such camera
        if not text.strip():
            raise ConfigError(f"the VLM needs a goal text: pass --task-text \"...\" ({config.data}/card.json has "
                              "no task_text)")
    rewards_needed = [m for m in config.method if m in _NEEDS_REWARDS]
    if rewards_needed and dataset.rewards is None:
        raise ConfigError(f"--method {rewards_needed} reads ground-truth rewards, which {config.data} does not have")
    if config.eval_env is not None:
        check_eval_env(config, dataset)
    return dataset, text, choice


def _pair_images_of(config: OfflineConfig, dataset: RecordedDataset):
    """Recorded data's pair images: keyframes taken from the stored frames of --camera (the
    MetaWorld path's keyframes, tiling and prompt)."""
    return lambda pairs: recorded_pair_images(dataset, pairs, camera=config.camera,
                                              num_keyframes=config.num_keyframes, progress=True)


def label_statistics(preferences: np.ndarray, stats: dict) -> dict:
    """Counts and rates of a labeling run with no ground truth to compare against."""
    prefs = check_preferences(preferences)
    report = {"pairs": int(len(prefs)), "accuracy": None,
              "first": int((prefs == 0).sum()), "second": int((prefs == 1).sum()),
              "unsure": int((prefs == UNSURE).sum()),
              "unsure_rate": float((prefs == UNSURE).mean()) if len(prefs) else 0.0}
    for key in ("requests", "retries", "malformed", "failed", "cache_hits", "prompt_tokens",
                "completion_tokens", "latency_p50_s", "latency_p90_s", "latency_p99_s", "wall_s",
                "pairs_per_s", "requests_per_s"):
        report[key] = stats.get(key)
    return report


def split_pairs(num_pairs: int, holdout_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train, held-out) pair indices, each in increasing order; no held-out pairs at fraction 0."""
    held = int(round(holdout_fraction * num_pairs))
    if held == 0:
        return np.arange(num_pairs), np.zeros(0, np.int64)
    order = np.random.default_rng([seed, 1]).permutation(num_pairs)
    return np.sort(order[held:]), np.sort(order[:held])


def prepare_data(config: OfflineConfig, dataset: RecordedDataset, text: str, choice: LabelerChoice,
                 base_url: str | None, should_stop: Callable[[], bool] | None = None) -> PreparedData:
    """Pairs -> labels -> split -> normalisation -> `TrainingData` (the same arrays for every method)."""
    timings = {}
    t0 = time.perf_counter()
    pairs = sample_segment_pairs(dataset, config.num_pairs, segment_length=config.segment_length,
                                 rng=np.random.default_rng(config.data_seed))
    preferences, stats = label_pairs(config, choice, text, dataset, pairs, base_url, config.cache_dir / "labels.sqlite",
                                     data_seed=config.data_seed, pair_images=_pair_images_of(config, dataset),
                                     should_stop=should_stop)
    timings["labels_s"] = time.perf_counter() - t0
    if dataset.rewards is not None:
        teacher = ScriptedTeacher().label(PairBatch(text, scores=teacher_scores(config, pairs)), progress=False)
        report = labeling_report(preferences, teacher.preferences, stats)
        print(f"labels ({choice.kind}):\n{format_report(report)}")
    else:
        report = label_statistics(preferences, stats)
        print(f"labels ({choice.kind}): {report['pairs']} pairs, first {report['first']}, second "
              f"{report['second']}, unsure {report['unsure']} (no rewards stored: accuracy not measurable)")
    if choice.kind == "vlm":  # too many failed/malformed answers: stop before training (says what to do)
        report["coverage"] = check_label_coverage(stats, max_unlabeled_fraction=config.max_unlabeled_fraction)
    train_index, heldout_index = split_pairs(pairs.num_pairs, config.holdout_fraction, config.data_seed)
    normalizer = Normalizer.fit(dataset.observations, dataset.actions, observation=config.obs_norm,
                                action=config.action_scaling)
    normalized = types.SimpleNamespace(
        observations=normalizer.observations(dataset.observations),
        actions=normalizer.actions_to_policy(dataset.actions), episode_ids=dataset.episode_ids)
    episode_returns = (None if dataset.rewards is None else
                       np.bincount(dataset.episode_ids, weights=dataset.rewards.astype(np.float64),
                                   minlength=dataset.num_episodes))
    training = training_data(normalized, pairs.take(train_index), preferences[train_index],
                             unsure=config.unsure, episode_scores=episode_returns)
    report["trained_pairs"] = training.num_trained_pairs
    report["heldout_pairs"] = int(len(heldout_index))
    summary = {"dataset": {k: v for k, v in dataset.card.items() if k != "source"},
               "source": dataset.card.get("source", {}), "task_text": text, "labeler": choice.kind,
               "labeler_reason": choice.reason, "labels": report, "timings": timings,
               "normalization": {"observations": config.obs_norm,
                                 "actions": "minmax" if normalizer.act_low is not None else "none"}}
    name = pathlib.Path(config.data).name or "recorded"
    return PreparedData(dataset, pairs, preferences, train_index, heldout_index, normalizer,
                        TaskData(name, training, summary), summary)


# --------------------------------------------------------------------------------------------
# Evaluation without a simulator


def heldout_preference_accuracy(policy_fn, observations: np.ndarray, actions: np.ndarray,
                                preferences: np.ndarray) -> float | None:
    """CPL-style: does the policy score the preferred segment of each held-out pair higher?

    A segment's score is sum_t log pi(a_t|s_t) = -sum_t ||mu(s_t) - a_t||^2 (the deterministic
    head; alpha > 0 does not change the order). Unsure pairs are skipped.

    Args:
        policy_fn: [B, O] -> [B, A] on normalised observations (the network's own space).
        observations: [H, 2, T, O] normalised.
        actions: [H, 2, T, A] in the network's [-1, 1] range.
        preferences: [H] in {0, 1, -1}.

    Returns:
        Fraction of sure pairs ranked as labelled, or None if there is none.
    """
    sure = preferences != UNSURE
    if not sure.any():
        return None
    obs, act = observations[sure], actions[sure]
    mean = policy_fn(obs.reshape(-1, obs.shape[-1])).reshape(act.shape)
    scores = -np.square(mean - act).sum(axis=(-1, -2))  # [H, 2]
    predicted_second = scores[:, 1] > scores[:, 0]
    return float((predicted_second == (preferences[sure] == 1)).mean())


def make_env(config: OfflineConfig):
    import gymnasium

    try:
        return gymnasium.make(config.eval_env, **json.loads(config.eval_env_kwargs))
    except Exception as e:  # gymnasium raises several error types for unknown ids and bad kwargs
        raise ConfigError(f"--eval-env {config.eval_env!r}: cannot make the environment ({e})") from e


def check_eval_env(config: OfflineConfig, dataset: RecordedDataset) -> None:
    env = make_env(config)
    try:
        obs_shape = env.observation_space.shape
        act_shape = env.action_space.shape
    finally:
        env.close()
    if obs_shape != (dataset.observations.shape[1],) or act_shape != (dataset.actions.shape[1],):
        raise ConfigError(
            f"--eval-env {config.eval_env}: observations {obs_shape} and actions {act_shape} do not match the "
            f"data's ({dataset.observations.shape[1]},) and ({dataset.actions.shape[1]},)")


def evaluate_in_env(config: OfflineConfig, act, seed: int) -> dict:
    """Success rate (info "success"/"is_success" ever true) and mean return over episodes."""
    env = make_env(config)
    successes, returns = [], []
    try:
        for episode in range(config.eval_episodes):
            obs, info = env.reset(seed=10_000 + seed * 1000 + episode)
            total, success = 0.0, False
            for _ in range(config.eval_horizon):
                action = np.clip(act(np.asarray(obs, np.float32)[None])[0], env.action_space.low,
                                 env.action_space.high)
                obs, reward, terminated, truncated, info = env.step(action)
                total += float(reward)
                success = success or bool(info.get("success", info.get("is_success", False)))
                if terminated or truncated:
                    break
            successes.append(success)
            returns.append(total)
    finally:
        env.close()
    return {"success_rate": float(np.mean(successes)), "mean_return": float(np.mean(returns))}


def make_evaluator(config: OfflineConfig, prepared: PreparedData, seed: int):
    """The `pipeline.train.EvaluateFn` of recorded data: held-out accuracy (+ environment success)."""
    held = prepared.heldout_index
    rows = prepared.pairs.starts[held][..., None] + np.arange(prepared.pairs.length)
    heldout_obs = prepared.normalizer.observations(prepared.dataset.observations[rows])
    heldout_act = prepared.normalizer.actions_to_policy(prepared.dataset.actions[rows])
    heldout_prefs = prepared.preferences[held]

    def evaluate_fn(policy_fn, video_path, *, final: bool = False) -> dict:
        del video_path, final  # nothing to film without a simulator; every evaluation is the same
        result = {}
        if len(held):
            result["heldout_accuracy"] = heldout_preference_accuracy(policy_fn, heldout_obs, heldout_act,
                                                                     heldout_prefs)
        if config.eval_env is not None:
            normalizer = prepared.normalizer

            def act(obs):
                return normalizer.actions_from_policy(policy_fn(normalizer.observations(obs)))

            result.update(evaluate_in_env(config, act, seed))
        return result

    return evaluate_fn


# --------------------------------------------------------------------------------------------
# The whole run


RESUME_COMMAND = "python experiments/offline.py --resume {run_dir}"


def load_resumed_config(run_dir: pathlib.Path) -> OfflineConfig:
    config = load_stored_config(run_dir, OfflineConfig)
    if config.data is None:
        raise runs.RunDirError(f"--resume {run_dir}: not a recorded-data run (its config.json has no 'data'; "
                               "MetaWorld runs resume with experiments/metaworld.py --resume)")
    return config


def run_offline(config: OfflineConfig) -> dict:
    """Checks, labels, trains, evaluates and exports; returns results.json's content.

    Ctrl-C (SIGINT) or SIGTERM stops between labeling chunks, training windows and evaluations
    with `SystemExit` 130 or 143 and the resume command (`--resume RUN_DIR`), as on MetaWorld.
    """
    with stop_on_signals() as stop:
        return _run_offline(config, stop)


def _run_offline(config: OfflineConfig, stop) -> dict:
    resume_dir = config.resume
    if resume_dir is not None:
        config = load_resumed_config(resume_dir)
        print(f"resuming {resume_dir} with its stored config")
    dataset, text, choice = check_inputs(config)  # every input error surfaces here
    runs.check_writable(config.cache_dir)
    stop.check()
    if resume_dir is not None:
        run_dir = resume_dir
    else:
        name = config.run_name or runs.default_run_name(pathlib.Path(config.data).name or "recorded")
        run_dir = runs.create_run_dir(config.out_dir / name, config)
    print(f"run directory: {run_dir}")
    print(f"labeler: {choice.kind} ({choice.reason})")
    with RunGuard(run_dir, RESUME_COMMAND.format(run_dir=run_dir), resumed=resume_dir is not None) as guard:
        with vlm_server(config.vlm, choice, run_dir / "vllm.log") as base_url:
            prepared = prepare_data(config, dataset, text, choice, base_url, should_stop=stop)
        runs.write_json_atomic(run_dir / "data_and_labels.json", prepared.summary)
        guard.training_started = True
        results = _train_and_export(config, prepared, dataset, text, run_dir, stop)
    table = format_offline_table(results)
    (run_dir / "summary.md").write_text(table + "\n")
    print("\n" + table)
    print(f"\nresults: {run_dir / 'results.json'}; curves: {run_dir / 'learning_curves.png'}; "
          f"policies: {run_dir}/seed*/export/<method>/policy.npz")
    return results


def _train_and_export(config: OfflineConfig, prepared: PreparedData, dataset: RecordedDataset, text: str,
                      run_dir: pathlib.Path, stop) -> dict:
    """Every seed's BC phase and methods, each method's policy exported; writes results and curves."""
    per_seed, curves = {}, {"held-out preference accuracy": {m: [] for m in config.method}}
    if config.eval_env is not None:
        curves[f"success in {config.eval_env}"] = {m: [] for m in config.method}
    for seeds in config.seed_groups:
        t0 = time.perf_counter()
        trained = train_seeds(config, prepared.task, seeds, [run_dir / f"seed{seed}" for seed in seeds],
                              evaluate_fns=[make_evaluator(config, prepared, seed) for seed in seeds],
                              should_stop=stop, batched=config.batch_seeds)
        for seed, result in zip(seeds, trained):
            per_seed[seed] = {**result, "train_s": time.perf_counter() - t0}
    for seed in config.seeds:
        unit = run_dir / f"seed{seed}"
        records = runs.MetricsLog(unit / "metrics.jsonl").read()
        for method_name in config.method:
            evals = method_evals(records, get_method(method_name))
            for metric, key in (("held-out preference accuracy", "heldout_accuracy"),
                                (f"success in {config.eval_env}", "success_rate")):
                if metric in curves:
                    curves[metric][method_name].append(
                        [(r["step"], r[key]) for r in evals if r.get(key) is not None])
            state = restore_final_state(config, prepared.task, method_name, seed, unit)
            path = export_policy(get_method(method_name).policy_params(state), prepared.normalizer, unit / "export" / method_name, extra_meta={
                "task_text": text, "method": method_name, "seed": seed,
                "observation_names": dataset.card.get("observation_names"),
                "action_names": dataset.card.get("action_names"),
                "units": dataset.card.get("units")})
            per_seed[seed]["methods"][method_name]["export"] = str(path.relative_to(run_dir))

    results = summarize_offline(config, prepared, per_seed)
    runs.write_json_atomic(run_dir / "results.json", results)
    plotting.plot_learning_curves(curves, run_dir / "learning_curves.png", phase_switch_step=config.bc_steps,
                                  ylabel="value")
    return results


def summarize_offline(config: OfflineConfig, prepared: PreparedData, per_seed: dict) -> dict:
    methods = {}
    for name in config.method:
        entries = [per_seed[s]["methods"][name] for s in config.seeds]
        summary = {"per_seed": entries}
        for key in ("heldout_accuracy", "success_rate", "mean_return"):
            values = [e[key] for e in entries if e.get(key) is not None]
            if values:
                summary[key] = {"mean": float(np.mean(values)), "min": float(np.min(values)),
                                "max": float(np.max(values)), "num_seeds": len(values)}
        methods[name] = summary
    return {"data": str(config.data), "labeler": prepared.summary["labeler"],
            "task_text": prepared.summary["task_text"], "labels": prepared.summary["labels"],
            "seeds": list(config.seeds), "methods": methods}


def format_offline_table(results: dict) -> str:
    lines = ["| method | held-out pref. acc. (mean, min-max) | env success | seeds |", "|---|---|---|---|"]
    for name, m in results["methods"].items():
        acc, success = m.get("heldout_accuracy"), m.get("success_rate")
        acc_text = "-" if acc is None else "{mean:.3f} ({min:.3f}-{max:.3f})".format(**acc)
        success_text = "-" if success is None else "{mean:.2f}".format(**success)
        lines.append(f"| {name} | {acc_text} | {success_text} | {len(results['seeds'])} |")
    labels = results["labels"]
    lines.append("")
    lines.append(f"labels ({results['labeler']}): {labels['pairs']} pairs, unsure rate {labels['unsure_rate']:.3f}, "
                 f"{labels['trained_pairs']} trained on, {labels['heldout_pairs']} held out"
                 + (f", accuracy vs stored-reward teacher {labels['accuracy']:.3f}"
                    if labels.get("accuracy") is not None else ""))
    return "\n".join(lines)
