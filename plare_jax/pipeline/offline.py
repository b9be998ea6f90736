"""PLARE on recorded robot data, with no simulator: recorded data as a data source of the one
pipeline (`pipeline.runner`), behind experiments/offline.py.

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
import types
from collections.abc import Callable
from typing import Literal

import numpy as np

from plare_jax import plotting, runs
from plare_jax.data.recorded import RecordedDataset, load_recorded, recorded_pair_images
from plare_jax.data.segments import SegmentPairs, valid_segment_starts
from plare_jax.export import Normalizer, export_policy
from plare_jax.interrupts import stop_on_signals
from plare_jax.labeling.base import UNSURE
from plare_jax.methods import METHODS, get_method
from plare_jax.pipeline.config import ConfigError, SharedOptions, validate_updates
from plare_jax.pipeline.data import TaskData, prepare_unit, training_data
from plare_jax.pipeline.labels import LabelerChoice, choose_labeler, teacher_scores
from plare_jax.pipeline.lifecycle import load_stored_config
from plare_jax.pipeline.runner import resolve_resume, run_source
from plare_jax.pipeline.source import Unit
from plare_jax.pipeline.train import method_evals, per_seed_evaluator, restore_final_state

# Methods that read simulator ground truth cannot run on data without it.
_NEEDS_REWARDS = tuple(name for name, m in METHODS.items() if m.oracle)

RESUME_COMMAND = "python experiments/offline.py --resume {run_dir}"
# How this process runs the seeds, not what it computes: always the command line's, on --resume too.
_EXECUTION_FIELDS = ("batch_seeds",)


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
class RecordedSplit:
    """What the recorded source keeps past the data stage for its evaluator and its exports: the
    labelled pairs split into training and held-out ones, and the fitted normaliser."""

    dataset: RecordedDataset
    pairs: SegmentPairs
    preferences: np.ndarray  # [P] in {0, 1, -1}
    heldout_index: np.ndarray  # [P_held] indices into pairs
    normalizer: Normalizer


def split_pairs(num_pairs: int, holdout_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train, held-out) pair indices, each in increasing order; no held-out pairs at fraction 0."""
    held = int(round(holdout_fraction * num_pairs))
    if held == 0:
        return np.arange(num_pairs), np.zeros(0, np.int64)
    order = np.random.default_rng([seed, 1]).permutation(num_pairs)
    return np.sort(order[held:]), np.sort(order[:held])


class RecordedSource:
    """Recorded robot data as a `pipeline.source.DataSource`: one dataset (validated first), the
    VLM shown keyframes of its stored frames, its stored rewards (if any) as the scripted teacher's
    ground truth, a held-out split of the labelled pairs, observation / action normalisation, and
    held-out preference accuracy (plus, optionally, success in a gymnasium environment); each
    method's policy is exported (numpy only) as soon as its seed has trained."""

    resume_command = RESUME_COMMAND
    track: tuple[str, ...] = ()

    def __init__(self, config: OfflineConfig, dataset: RecordedDataset | None = None, text: str | None = None):
        self.config = config
        self._dataset, self._text = dataset, text

    @property
    def name(self) -> str:
        return pathlib.Path(self.config.data).name or "recorded"

    def check(self) -> LabelerChoice:
        """Reads and validates the data and resolves labeler, task text, camera and environment.

        Raises (before any labeling): ConfigError, RecordedDataError, VLMEndpointError.
        """
        config = self.config
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
                raise ConfigError(f"the VLM needs a goal text: pass --task-text \"...\" ({config.data}/card.json "
                                  "has no task_text)")
        rewards_needed = [m for m in config.method if m in _NEEDS_REWARDS]
        if rewards_needed and dataset.rewards is None:
            raise ConfigError(f"--method {rewards_needed} reads ground-truth rewards, which {config.data} does not have")
        if config.eval_env is not None:
            check_eval_env(config, dataset)
        self._dataset, self._text = dataset, text
        return choice

    def training_mesh(self) -> None:
        return None  # recorded data trains on one device

    def units(self, run_dir: pathlib.Path) -> list[Unit]:
        return [Unit(self.name, self.config.data_seed, run_dir)]  # seeds in run_dir/seed<N>

    def load(self, unit: Unit, should_stop=None) -> RecordedDataset:
        return self._dataset

    def goal_text(self, unit: Unit, choice: LabelerChoice) -> str:
        return self._text

    def pair_images(self, dataset: RecordedDataset):
        """Keyframes taken from the stored frames of --camera (the MetaWorld path's keyframes,
        tiling and prompt)."""
        config = self.config
        return lambda pairs: recorded_pair_images(dataset, pairs, camera=config.camera,
                                                  num_keyframes=config.num_keyframes, progress=True)

    def teacher_scores(self, dataset: RecordedDataset, pairs: SegmentPairs):
        return None if dataset.rewards is None else teacher_scores(self.config, pairs)

    def training_arrays(self, unit, dataset, pairs, preferences, report):
        """Split -> normalisation -> the training pairs' `TrainingData` (the same for every method)."""
        config = self.config
        train_index, heldout_index = split_pairs(pairs.num_pairs, config.holdout_fraction, unit.data_seed)
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
        report["heldout_pairs"] = int(len(heldout_index))
        return training, RecordedSplit(dataset, pairs, preferences, heldout_index, normalizer)

    def describe(self, dataset, choice, kept: RecordedSplit) -> dict:
        return {"dataset": {k: v for k, v in dataset.card.items() if k != "source"},
                "source": dataset.card.get("source", {}), "task_text": self._text, "labeler": choice.kind,
                "labeler_reason": choice.reason,
                "normalization": {"observations": self.config.obs_norm,
                                  "actions": "minmax" if kept.normalizer.act_low is not None else "none"}}

    def evaluator(self, unit: Unit, kept: RecordedSplit, should_stop):
        heldout = heldout_arrays(kept)  # once per unit: the held-out segments are the same for every seed
        return lambda seeds: per_seed_evaluator([make_evaluator(self.config, kept, seed, heldout)
                                                 for seed in seeds])

    def finish_seed(self, unit: Unit, data: TaskData, seed: int, result: dict) -> dict:
        """Exports each method's final policy (policy.npz + plare_policy.py, numpy only)."""
        dataset, seed_dir = data.kept.dataset, unit.seed_dir(seed)
        result = {**result, "methods": {name: dict(r) for name, r in result["methods"].items()}}
        for method_name in self.config.method:
            state = restore_final_state(self.config, data, method_name, seed, seed_dir)
            path = export_policy(get_method(method_name).policy_params(state), data.kept.normalizer,
                                 seed_dir / "export" / method_name, extra_meta={
                                     "task_text": self._text, "method": method_name, "seed": seed,
                                     "observation_names": dataset.card.get("observation_names"),
                                     "action_names": dataset.card.get("action_names"),
                                     "units": dataset.card.get("units")})
            result["methods"][method_name]["export"] = str(path.relative_to(unit.dir))
        return result

    def results(self, choice: LabelerChoice, summaries: dict, seed_results: dict) -> dict:
        ((unit, summary),) = summaries.items()
        return summarize_offline(self.config, summary, seed_results.get(unit, {}))

    def plot_curves(self, run_dir: pathlib.Path, units) -> pathlib.Path:
        config = self.config
        curves = {"held-out preference accuracy": {m: [] for m in config.method}}
        if config.eval_env is not None:
            curves[f"success in {config.eval_env}"] = {m: [] for m in config.method}
        (unit,) = units
        for seed in config.seeds:
            records = runs.MetricsLog(unit.seed_dir(seed) / "metrics.jsonl").read()
            for method_name in config.method:
                evals = method_evals(records, get_method(method_name))
                for metric, key in (("held-out preference accuracy", "heldout_accuracy"),
                                    (f"success in {config.eval_env}", "success_rate")):
                    if metric in curves:
                        curves[metric][method_name].append(
                            [(r["step"], r[key]) for r in evals if r.get(key) is not None])
        path = run_dir / "learning_curves.png"
        plotting.plot_learning_curves(curves, path, phase_switch_step=config.bc_steps, ylabel="value")
        return path

    def format_table(self, results: dict) -> str:
        return format_offline_table(results)


def prepare_data(config: OfflineConfig, dataset: RecordedDataset, text: str, choice: LabelerChoice,
                 base_url: str | None, should_stop: Callable[[], bool] | None = None) -> TaskData:
    """The data stage on an already read dataset, outside a run (pairs -> labels -> split ->
    normalisation); `.kept` is the `RecordedSplit`."""
    source = RecordedSource(config, dataset, text)
    return prepare_unit(source, Unit(source.name, config.data_seed, pathlib.Path()), choice, base_url, should_stop)


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


def heldout_arrays(prepared: RecordedSplit) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The held-out pairs' normalised observations [H, 2, T, obs], policy actions and labels."""
    held = prepared.heldout_index
    rows = prepared.pairs.starts[held][..., None] + np.arange(prepared.pairs.length)
    return (prepared.normalizer.observations(prepared.dataset.observations[rows]),
            prepared.normalizer.actions_to_policy(prepared.dataset.actions[rows]),
            prepared.preferences[held])


def make_evaluator(config: OfflineConfig, prepared: RecordedSplit, seed: int,
                   heldout: tuple[np.ndarray, np.ndarray, np.ndarray]):
    """The `pipeline.train.EvaluateFn` of recorded data: held-out accuracy (+ environment success);
    `heldout` is `heldout_arrays(prepared)`, computed once for all seeds."""
    heldout_obs, heldout_act, heldout_prefs = heldout

    def evaluate_fn(policy_fn, video_path, *, final: bool = False) -> dict:
        del video_path, final  # nothing to film without a simulator; every evaluation is the same
        result = {}
        if len(heldout_prefs):
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
        config, resume_dir = resolve_resume(config, load_resumed_config, _EXECUTION_FIELDS)
        results, run_dir = run_source(RecordedSource(config), stop, resume_dir=resume_dir)
    print(f"policies: {run_dir}/seed*/export/<method>/policy.npz")
    return results


def summarize_offline(config: OfflineConfig, data_summary: dict, per_seed: dict) -> dict:
    """results.json of a recorded-data run from the seeds finished so far (`per_seed[seed]`)."""
    methods = {}
    finished = [s for s in config.seeds if s in per_seed]
    for name in config.method:
        entries = [per_seed[s]["methods"][name] for s in finished]
        summary = {"per_seed": entries}
        for key in ("heldout_accuracy", "success_rate", "mean_return"):
            values = [e[key] for e in entries if e.get(key) is not None]
            if values:
                summary[key] = {"mean": float(np.mean(values)), "min": float(np.min(values)),
                                "max": float(np.max(values)), "num_seeds": len(values)}
        methods[name] = summary
    return {"data": str(config.data), "labeler": data_summary["labeler"],
            "task_text": data_summary["task_text"], "labels": data_summary["labels"],
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
