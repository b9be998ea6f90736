"""The training stage: the shared BC phase, then every method, with evaluations and checkpoints.

Every method goes through `run_branch`, so evaluation episodes, checkpoints, metrics records and
resumption are the same for all of them. Randomness depends only on (seed, step): an interrupted
and resumed run equals an uninterrupted one.
"""

from __future__ import annotations

import pathlib
import time
from collections.abc import Callable

import jax
import numpy as np
from tqdm.auto import tqdm

from plare_jax import checkpoint as ckpt
from plare_jax import runs, tracking
from plare_jax.interrupts import raise_if_stopped
from plare_jax.learner import LearnerConfig
from plare_jax.methods import BC_PHASE, Method, PolicyFn, get_method
from plare_jax.pipeline.config import ExperimentConfig, SharedOptions
from plare_jax.pipeline.data import TaskData

SHARED_BC_BRANCH = "bc_phase"


def checkpoint_dir(unit_dir: pathlib.Path, branch: str) -> pathlib.Path:
    """Where one branch (the shared BC phase or a method) of one run unit keeps its checkpoints:
    the one place that spells the layout (training, restoring and the diagnostics read it)."""
    return pathlib.Path(unit_dir) / "checkpoints" / branch

EvaluateFn = Callable[..., dict]
"""(policy, video path or None, *, final=False) -> the evaluation's numbers, e.g. {"success_rate",
"mean_return"}. `final` marks a method's last evaluation, the one its result reports, which may
use more episodes than the periodic ones (--final-eval-episodes).

MetaWorld runs evaluate in the simulator (`metaworld_evaluator`); recorded-data runs measure
held-out preference accuracy and, if asked, success in a gymnasium environment."""

# The evaluation episodes' layouts come from a stream of their own, keyed by the data seed and
# the training seed: development data seeds (0-2) and reported ones (3+) never share layouts,
# and no other stream (data, pairs, labels, training) draws from it.
_EVAL_LAYOUT_STREAM = 0xE7A1


def evaluation_seed(data_seed: int, seed: int) -> int:
    """Seed of the evaluation layouts of one run (the same for every method and step: paired)."""
    state = np.random.SeedSequence([_EVAL_LAYOUT_STREAM, int(data_seed), int(seed)]).generate_state(1)
    return int(state[0] >> 2)  # 30 bits: room for the per-episode offsets added to it


def learner_config(config: SharedOptions) -> LearnerConfig:
    """The policy network and optimizer settings every method's policy uses."""
    return LearnerConfig(
        hidden_dims=tuple(config.hidden_dims), dropout_rate=config.dropout_rate,
        learning_rate=config.learning_rate, warmup_steps=config.warmup_steps,
        batch_pairs=config.batch_pairs, bc_batch_size=config.bc_batch_size,
        alpha=config.alpha, bias=config.bias,
    )


def evaluate(config: ExperimentConfig, task: str, policy_fn, data_seed: int, seed: int,
             video_path: pathlib.Path | None = None, should_stop: Callable[[], bool] | None = None,
             *, final: bool = False):
    from plare_jax.envs import evaluate as envs_evaluate  # MetaWorld only: recorded-data runs never import it

    return envs_evaluate.evaluate_policy(
        task, policy_fn, num_episodes=config.final_eval_episodes if final else config.eval_episodes,
        horizon=config.eval_horizon, seed=evaluation_seed(data_seed, seed),
        workers=config.workers, video_path=video_path, progress=False, should_stop=should_stop)


def metaworld_evaluator(config: ExperimentConfig, task: str, data_seed: int, seed: int,
                        should_stop: Callable[[], bool] | None = None) -> EvaluateFn:
    """Success rate and mean return in the MetaWorld task (the same episodes at every step; the
    final evaluation runs --final-eval-episodes, its first --eval-episodes being those).

    `should_stop` is checked before every evaluation step and video frame.
    """

    def evaluate_fn(policy_fn: PolicyFn, video_path: pathlib.Path | None, *, final: bool = False) -> dict:
        result = evaluate(config, task, policy_fn, data_seed, seed, video_path=video_path,
                          should_stop=should_stop, final=final)
        return {"success_rate": result.success_rate, "mean_return": result.mean_return,
                "episodes": len(result.episode_successes)}

    return evaluate_fn


def run_branch(config: SharedOptions, data: TaskData, method: Method, state, *, branch: str,
               start_step: int, num_steps: int, seed: int, unit_dir: pathlib.Path,
               log: runs.MetricsLog, video_path: pathlib.Path | None = None,
               evaluate_fn: EvaluateFn | None = None, should_stop: Callable[[], bool] | None = None,
               tracker: tracking.UnitTracker | None = None, reported: bool = True,
               mesh: jax.sharding.Mesh | None = None):
    """Train one branch (the shared BC phase, or a method) with evaluations and checkpoints.

    `mesh`: the data mesh every update's batch is split over (`sharding.experiment_mesh`;
    None: one device, no mesh).

    `reported`: the branch's last evaluation is a method's reported result (final=True, with
    --final-eval-episodes); the shared BC phase's is not.

    `video_path`: record the branch's final evaluation there (no extra evaluation episodes).
    `evaluate_fn`: how a policy is evaluated (default: in the MetaWorld task).
    Resumable: restores the branch's latest checkpoint and continues from there.
    `should_stop`: checked after every `metrics_every` updates and every evaluation step;
    when true, raises `StopRequested` (the last checkpoint is where a resume continues).
    `tracker`: also gets every record the metrics log does (default: none, `--track none`).
    """
    tracker = tracker or tracking.NO_TRACKING
    evaluate_fn = evaluate_fn or metaworld_evaluator(config, data.task, data.summary.get("data_seed", 0), seed,
                                                     should_stop)
    manager = ckpt.make_checkpoint_manager(checkpoint_dir(unit_dir, branch), max_to_keep=2)
    end_step = start_step + num_steps
    step = start_step
    latest = ckpt.latest_step(manager)
    if latest is not None:
        state = ckpt.restore_state(manager, state, step=latest)
        step = latest
    # Records written after the last checkpoint (an interrupted attempt) are redone below.
    log.drop(lambda r: r.get("branch") == branch and r["step"] > step)
    train_data = method.device_data(state, data.training)
    base_key = jax.random.key(seed)
    bar = tqdm(total=num_steps, initial=step - start_step, desc=f"{data.task} seed {seed} {branch}",
               unit="step", leave=False)
    try:
        if step < end_step:  # e.g. rlvlmf's reward model, with the first update call's key
            state = method.prepare(state, train_data, jax.random.fold_in(base_key, step), mesh=mesh,
                                   should_stop=should_stop)
        while step < end_step:
            chunk = min(config.eval_every - (step % config.eval_every), end_step - step)
            key = jax.random.fold_in(base_key, step)
            # One call per metrics window, with the chunk's key: a method draws step k's randomness
            # from fold_in(key, k) (Method.train's contract), so this equals one call of `chunk`
            # steps, and a stop request is seen within one window instead of one chunk.
            for _ in range(chunk // config.metrics_every):
                state, metrics = method.train(state, train_data, key, config.metrics_every,
                                              metrics_every=config.metrics_every, mesh=mesh)
                metrics = jax.device_get(metrics)
                step += config.metrics_every
                record = {"branch": branch, "step": step,
                          **{k: float(np.asarray(v)[0]) for k, v in metrics.items()}}
                log.append(record)
                tracker.record(record)
                bar.update(config.metrics_every)
                raise_if_stopped(should_stop)
            last = step == end_step
            result = evaluate_fn(method.policy_fn(state), video_path if last else None, final=last and reported)
            raise_if_stopped(should_stop)
            record = {"branch": branch, "step": step, "eval": True, **result}
            log.append(record)
            tracker.record(record)
            bar.set_postfix({name: f"{value:.2f}" for name, value in result.items()
                             if isinstance(value, float)})
            ckpt.save_state(manager, state, force=True)
    finally:
        bar.close()
        manager.close()
    return state


def create_state(config: SharedOptions, data: TaskData, method: Method, seed: int, *, init=None):
    """The fresh state a method's branch of one run unit starts from (`init`: the shared BC
    phase's final state, for a method that continues it)."""
    return method.create(jax.random.key(seed), learner_config(config), data.training,
                         init=init if method.starts_from_bc_phase else None,
                         options=config.method_options(method.name))


def restore_final_state(config: SharedOptions, data: TaskData, method_name: str, seed: int,
                        unit_dir: pathlib.Path):
    """A method's state at its branch's last checkpoint in `unit_dir` (its fresh state if none).

    The restore target is the state training created (`create_state`); for a method that
    continues the BC phase, from a BC state at the phase's end step: only the structure is
    restored into, but methods derive static settings from that step (rlvlmf's schedule).
    """
    method = get_method(method_name)
    init = None
    if method.starts_from_bc_phase:
        init = BC_PHASE.create(jax.random.key(seed), learner_config(config), data.training, init=None)
        init = init.replace(step=jax.numpy.asarray(config.bc_steps, jax.numpy.int32))
    target = create_state(config, data, method, seed, init=init)
    manager = ckpt.make_checkpoint_manager(checkpoint_dir(unit_dir, method_name), max_to_keep=2)
    try:
        if ckpt.latest_step(manager) is None:
            return target
        return ckpt.restore_state(manager, target)
    finally:
        manager.close()


def method_evals(records: list[dict], method: Method) -> list[dict]:
    """Evaluation records of `method` in step order, the shared BC phase included if it continues it."""
    branches = {method.name} | ({SHARED_BC_BRANCH} if method.starts_from_bc_phase else set())
    evals = [r for r in records if r.get("eval") and r["branch"] in branches]
    return sorted(evals, key=lambda r: r["step"])


def train_seed(config: SharedOptions, data: TaskData, seed: int, unit_dir: pathlib.Path, *,
               video_dir: pathlib.Path | None = None, evaluate_fn: EvaluateFn | None = None,
               should_stop: Callable[[], bool] | None = None,
               tracker: tracking.UnitTracker | None = None,
               mesh: jax.sharding.Mesh | None = None) -> dict:
    """The shared BC phase (if any method continues it), then each method; per-method results.

    `video_dir`: write a video of each method's final evaluation there (one run per task does).
    `evaluate_fn`: how a policy is evaluated (default: in the MetaWorld task).
    `should_stop`, `tracker`, `mesh`: see `run_branch` (every branch trains on `mesh`).
    """
    evaluate_fn = evaluate_fn or metaworld_evaluator(config, data.task, data.summary.get("data_seed", 0), seed,
                                                     should_stop)
    unit_dir.mkdir(parents=True, exist_ok=True)
    done_path = unit_dir / "result.json"
    if done_path.exists():  # finished before an interruption: nothing to redo
        return runs.read_json(done_path)
    log = runs.MetricsLog(unit_dir / "metrics.jsonl")
    policy_config = learner_config(config)
    methods = [get_method(name) for name in config.method]
    timings = {}

    bc_state = None
    if any(m.starts_from_bc_phase for m in methods):
        t0 = time.perf_counter()
        bc_state = BC_PHASE.create(jax.random.key(seed), policy_config, data.training, init=None)
        bc_state = run_branch(config, data, BC_PHASE, bc_state, branch=SHARED_BC_BRANCH, start_step=0,
                              num_steps=config.bc_steps, seed=seed, unit_dir=unit_dir, log=log,
                              evaluate_fn=evaluate_fn, should_stop=should_stop, tracker=tracker,
                              reported=False, mesh=mesh)
        timings["shared_bc_phase_s"] = time.perf_counter() - t0

    results = {}
    for method in methods:
        t0 = time.perf_counter()
        if method.starts_from_bc_phase:
            start_step, num_steps = config.bc_steps, config.cpl_steps
        else:
            start_step, num_steps = 0, config.total_steps
        state = create_state(config, data, method, seed, init=bc_state)
        video_path = None if video_dir is None else video_dir / f"{method.name}_final.mp4"
        state = run_branch(config, data, method, state, branch=method.name, start_step=start_step,
                           num_steps=num_steps, seed=seed, unit_dir=unit_dir, log=log,
                           video_path=video_path, evaluate_fn=evaluate_fn, should_stop=should_stop,
                           tracker=tracker, mesh=mesh)
        timings[f"{method.name}_s"] = time.perf_counter() - t0
        evals = method_evals(log.read(), method)
        if evals:
            final = {k: v for k, v in evals[-1].items() if k not in ("branch", "eval")}
        else:  # a branch that ran no steps (e.g. --cpl-steps 0)
            final = {**evaluate_fn(method.policy_fn(state), None, final=True), "step": int(state.step)}
        results[method.name] = {**final, **method.report(state, data.training)}
        if video_path is not None:
            if not video_path.exists():  # branch finished before a resume, or no steps to run
                evaluate_fn(method.policy_fn(state), video_path)
            results[method.name]["video"] = video_path.name
    result = {"seed": seed, "data_seed": data.summary.get("data_seed"), "methods": results,
              "timings": timings}
    runs.write_json_atomic(done_path, result)
    return result

