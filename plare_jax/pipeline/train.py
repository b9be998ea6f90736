"""The training stage: the shared BC phase, then every method, with evaluations and checkpoints.

Every method goes through `run_branch`, so evaluation episodes, checkpoints, metrics records and
resumption are the same for all of them. Randomness depends only on (seed, step): an interrupted
and resumed run equals an uninterrupted one. A branch trains a `SeedGroup`: one seed, or (under
--batch-seeds) several seeds stacked into one vmapped program, each with its own checkpoints,
metrics log and result.
"""

from __future__ import annotations

import dataclasses
import functools
import pathlib
import time
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
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

EvaluateSeedsFn = Callable[..., list]
"""(policies, one per seed of a `SeedGroup`; video path or None, *, final=False) -> one
`EvaluateFn` result per policy. The video is of the first seed's policy. MetaWorld runs step every
seed's episodes in one pass over the workers (`metaworld_evaluator`); `per_seed_evaluator` makes
one from an `EvaluateFn` per seed."""

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


def metaworld_evaluator(config: ExperimentConfig, task: str, data_seed: int, seeds: Sequence[int],
                        should_stop: Callable[[], bool] | None = None) -> EvaluateSeedsFn:
    """Success rate and mean return in the MetaWorld task of every seed's policy, on that seed's
    episodes (the same at every step; the final evaluation runs --final-eval-episodes, its first
    --eval-episodes being those), all seeds' episodes stepped together by one set of workers.

    `should_stop` is checked before every evaluation step and video frame.
    """
    from plare_jax.envs import evaluate as envs_evaluate  # MetaWorld only: recorded-data runs never import it

    layout_seeds = [evaluation_seed(data_seed, seed) for seed in seeds]

    def evaluate_fn(policies: Sequence[PolicyFn], video_path: pathlib.Path | None, *,
                    final: bool = False) -> list[dict]:
        results = envs_evaluate.evaluate_policies(
            task, policies, seeds=layout_seeds,
            num_episodes=config.final_eval_episodes if final else config.eval_episodes,
            horizon=config.eval_horizon, workers=config.workers, video_path=video_path, progress=False,
            should_stop=should_stop)
        return [{"success_rate": r.success_rate, "mean_return": r.mean_return,
                 "episodes": len(r.episode_successes)} for r in results]

    return evaluate_fn


def per_seed_evaluator(evaluate_fns: Sequence[EvaluateFn]) -> EvaluateSeedsFn:
    """An `EvaluateSeedsFn` that calls seed i's own `EvaluateFn` on its policy, one after another."""

    def evaluate_fn(policies, video_path, *, final=False):
        return [fn(policy, video_path if i == 0 else None, final=final)
                for i, (fn, policy) in enumerate(zip(evaluate_fns, policies, strict=True))]

    return evaluate_fn


@functools.partial(jax.jit, static_argnames=("method", "num_steps", "metrics_every"))
def _train_stacked(method: Method, states, device_data, keys, *, num_steps: int, metrics_every: int):
    # The method's own `train`, traced once and vmapped over the seed axis (the data shared).
    return jax.vmap(lambda state, key: method.train(state, device_data, key, num_steps,
                                                    metrics_every=metrics_every))(states, keys)


@dataclasses.dataclass(frozen=True)
class SeedGroup:
    """The run units (training seeds of one task and data seed) that train together.

    One seed (`stacked=False`): the method's state as it is, its own `train`. Several seeds under
    --batch-seeds (`stacked=True`): one stacked state (every array leaf with a leading seed axis)
    advanced by one jitted program, the method's `train` vmapped over the seeds with seed i's key
    (`jax.random.key(seeds[i])`, as its one-at-a-time run), so each seed computes what its own run
    would (equal up to float rounding). Checkpoints, metrics logs, trackers and results stay per seed.
    """

    seeds: tuple[int, ...]
    unit_dirs: tuple[pathlib.Path, ...]
    logs: tuple[runs.MetricsLog, ...]
    trackers: tuple[tracking.UnitTracker, ...]
    stacked: bool

    def __post_init__(self):
        if not (len(self.seeds) == len(self.unit_dirs) == len(self.logs) == len(self.trackers)) or not self.seeds:
            raise ValueError("a SeedGroup needs one unit directory, metrics log and tracker per seed")
        if not self.stacked and len(self.seeds) != 1:
            raise ValueError(f"{len(self.seeds)} seeds train together only as a stacked group")

    def split(self, state) -> list:
        """The per-seed states of the group's state."""
        if not self.stacked:
            return [state]
        return [jax.tree.map(lambda x, i=i: x[i], state) for i in range(len(self.seeds))]

    def join(self, states: Sequence):
        """The group's state from per-seed states (stacked: leaves stacked on a new leading axis)."""
        states = list(states)
        return jax.tree.map(lambda *xs: jnp.stack(xs), *states) if self.stacked else states[0]

    def keys(self, step: int) -> jax.Array:
        """The training keys of the update call at `step`: fold_in(key(seed), step) per seed."""
        keys = [jax.random.fold_in(jax.random.key(seed), step) for seed in self.seeds]
        return jnp.stack(keys) if self.stacked else keys[0]

    def train(self, method: Method, state, device_data, keys, num_steps: int, *, metrics_every: int, mesh):
        """`num_steps` updates of every seed; metrics per seed, `[name -> [windows]]` each."""
        if self.stacked and mesh is not None:
            raise ValueError("stacked seeds train on one device, without a data mesh")
        if not self.stacked:
            state, metrics = method.train(state, device_data, keys, num_steps, metrics_every=metrics_every,
                                          mesh=mesh)
            return state, [metrics]
        state, metrics = _train_stacked(method, state, device_data, keys, num_steps=num_steps,
                                        metrics_every=metrics_every)
        return state, [{k: v[i] for k, v in metrics.items()} for i in range(len(self.seeds))]


def _restore_group(group: SeedGroup, managers: list, states: list, branch: str) -> tuple[list, int | None]:
    """Every seed's state at the group's latest common checkpoint (None: start from `states`).

    The seeds of a group save at the same steps one after another, so a run killed between two
    saves leaves some seeds one checkpoint ahead; those restart from the step all seeds hold (each
    manager keeps the previous one), and their newer checkpoints are removed.
    """
    latest = [ckpt.latest_step(m) for m in managers]
    if all(step is None for step in latest):
        return states, None
    if any(step is None for step in latest):
        common = None
    else:
        common = min(latest)
        if not all(common in m.all_steps() for m in managers):
            common = None
    if common is None:
        steps = {seed: m.all_steps() for seed, m in zip(group.seeds, managers)}
        raise ckpt.CheckpointLayoutError(
            f"{branch}: the seeds trained together have no checkpoint step in common ({steps}); resume "
            "without --batch-seeds, or remove the branch's checkpoints to retrain it")
    for manager in managers:
        for newer in [s for s in manager.all_steps() if s > common]:
            manager.delete(newer)
    return [ckpt.restore_state(m, s, step=common) for m, s in zip(managers, states)], common


def run_branch(config: SharedOptions, data: TaskData, method: Method, state, *, branch: str,
               start_step: int, num_steps: int, group: SeedGroup,
               video_path: pathlib.Path | None = None, evaluate_fn: EvaluateSeedsFn,
               should_stop: Callable[[], bool] | None = None, reported: bool = True,
               mesh: jax.sharding.Mesh | None = None):
    """Train one branch (the shared BC phase, or a method) of every seed of `group`, with
    evaluations and checkpoints (`state`: the group's, see `SeedGroup`).

    `mesh`: the data mesh every update's batch is split over (`sharding.experiment_mesh`;
    None: one device, no mesh).

    `reported`: the branch's last evaluation is a method's reported result (final=True, with
    --final-eval-episodes); the shared BC phase's is not.

    `video_path`: record the branch's final evaluation of the group's first seed there (no extra
    evaluation episodes).
    `evaluate_fn`: how the seeds' policies are evaluated (`metaworld_evaluator`, `per_seed_evaluator`).
    Resumable: restores the branch's latest checkpoints and continues from there.
    `should_stop`: checked after every `metrics_every` updates and every evaluation step;
    when true, raises `StopRequested` (the last checkpoint is where a resume continues).
    """
    managers = [ckpt.make_checkpoint_manager(checkpoint_dir(unit, branch), max_to_keep=2)
                for unit in group.unit_dirs]
    end_step = start_step + num_steps
    step = start_step
    try:
        restored, latest = _restore_group(group, managers, group.split(state), branch)
        if latest is not None:
            state, step = group.join(restored), latest
        for log in group.logs:  # records written after the last checkpoint (an interrupted attempt) are redone
            log.drop(lambda r: r.get("branch") == branch and r["step"] > step)
        train_data = method.device_data(group.split(state)[0], data.training)
        seeds = "+".join(map(str, group.seeds))
        with tqdm(total=num_steps, initial=step - start_step, desc=f"{data.task} seed {seeds} {branch}",
                  unit="step", leave=False) as bar:
            if step < end_step:  # e.g. rlvlmf's reward model, with the first update call's key(s)
                # A stacked state goes to the method as it is (Method.prepare): rlvlmf's chunked host
                # loop runs once for the group, each chunk vmapped over the seeds.
                state = method.prepare(state, train_data, group.keys(step), mesh=mesh, should_stop=should_stop)
            while step < end_step:
                chunk = min(config.eval_every - (step % config.eval_every), end_step - step)
                keys = group.keys(step)
                # One call per metrics window, with the chunk's key: a method draws step k's randomness
                # from fold_in(key, k) (Method.train's contract), so this equals one call of `chunk`
                # steps, and a stop request is seen within one window instead of one chunk.
                for _ in range(chunk // config.metrics_every):
                    state, per_seed = group.train(method, state, train_data, keys, config.metrics_every,
                                                  metrics_every=config.metrics_every, mesh=mesh)
                    per_seed = jax.device_get(per_seed)
                    step += config.metrics_every
                    for log, tracker, metrics in zip(group.logs, group.trackers, per_seed):
                        record = {"branch": branch, "step": step,
                                  **{k: float(np.asarray(v)[0]) for k, v in metrics.items()}}
                        log.append(record)
                        tracker.record(record)
                    bar.update(config.metrics_every)
                    raise_if_stopped(should_stop)
                last = step == end_step
                states = group.split(state)
                evaluations = evaluate_fn([method.policy_fn(s) for s in states], video_path if last else None,
                                          final=last and reported)
                raise_if_stopped(should_stop)
                for log, tracker, result in zip(group.logs, group.trackers, evaluations):
                    record = {"branch": branch, "step": step, "eval": True, **result}
                    log.append(record)
                    tracker.record(record)
                bar.set_postfix({name: f"{value:.2f}" for name, value in evaluations[0].items()
                                 if isinstance(value, float)})
                for manager, seed_state in zip(managers, states):
                    ckpt.save_state(manager, seed_state, force=True)
    finally:
        for manager in managers:
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
    """One training seed: the shared BC phase (if any method continues it), then each method;
    per-method results. See `train_seeds` (this is it for one seed, not stacked).

    `evaluate_fn`: how a policy is evaluated (default: in the MetaWorld task).
    """
    (result,) = train_seeds(config, data, [seed], [unit_dir], video_dir=video_dir,
                            evaluator=None if evaluate_fn is None else lambda _: per_seed_evaluator([evaluate_fn]),
                            should_stop=should_stop, trackers=None if tracker is None else [tracker],
                            mesh=mesh, batched=False)
    return result


def train_seeds(config: SharedOptions, data: TaskData, seeds: Sequence[int], unit_dirs: Sequence[pathlib.Path], *,
                video_dir: pathlib.Path | None = None,
                evaluator: Callable[[Sequence[int]], EvaluateSeedsFn] | None = None,
                should_stop: Callable[[], bool] | None = None,
                trackers: Sequence[tracking.UnitTracker] | None = None,
                mesh: jax.sharding.Mesh | None = None, batched: bool = True) -> list[dict]:
    """Training seeds of one task and data seed: the shared BC phase (if any method continues it),
    then each method; per seed, its per-method results (each unit's result.json).

    `batched`: all unfinished seeds train as one stacked program (`SeedGroup`, --batch-seeds);
    else `seeds` must be one seed. Seeds whose unit finished before (an interruption) are read back.
    `video_dir`: write a video of each method's final evaluation of the first seed there.
    `evaluator`: given the seeds that still train, their `EvaluateSeedsFn` (a data source's
    `DataSource.evaluator`; `per_seed_evaluator` makes one of per-seed `EvaluateFn`s); default:
    every seed's episodes in one pass over the MetaWorld workers (`metaworld_evaluator`).
    `should_stop`, `mesh`: see `run_branch` (every branch trains on `mesh`); `trackers`: one per seed.
    """
    seeds, unit_dirs = [int(s) for s in seeds], [pathlib.Path(u) for u in unit_dirs]
    trackers = list(trackers) if trackers is not None else [tracking.NO_TRACKING] * len(seeds)
    if not len(seeds) == len(unit_dirs) == len(trackers):
        raise ValueError("train_seeds needs one unit directory (and tracker) per seed")
    results: dict[int, dict] = {}
    todo = []
    for i, (seed, unit) in enumerate(zip(seeds, unit_dirs)):
        unit.mkdir(parents=True, exist_ok=True)
        if (unit / "result.json").exists():  # finished before an interruption: nothing to redo
            results[seed] = runs.read_json(unit / "result.json")
        else:
            todo.append(i)
    if todo:
        if evaluator is not None:
            evaluate_fn = evaluator([seeds[i] for i in todo])
        else:
            evaluate_fn = metaworld_evaluator(config, data.task, data.summary.get("data_seed", 0),
                                              [seeds[i] for i in todo], should_stop)
        group = SeedGroup(seeds=tuple(seeds[i] for i in todo), unit_dirs=tuple(unit_dirs[i] for i in todo),
                          logs=tuple(runs.MetricsLog(unit_dirs[i] / "metrics.jsonl") for i in todo),
                          trackers=tuple(trackers[i] for i in todo), stacked=batched)
        with_video = video_dir is not None and todo[0] == 0  # the video is the first seed's
        for seed, result in zip(group.seeds, _train_group(config, data, group, evaluate_fn, should_stop, mesh,
                                                          video_dir if with_video else None)):
            results[seed] = result
    return [results[seed] for seed in seeds]


def _train_group(config: SharedOptions, data: TaskData, group: SeedGroup, evaluate_fn: EvaluateSeedsFn,
                 should_stop, mesh, video_dir: pathlib.Path | None) -> list[dict]:
    policy_config = learner_config(config)
    methods = [get_method(name) for name in config.method]
    timings = {}

    bc_state = None
    if any(m.starts_from_bc_phase for m in methods):
        t0 = time.perf_counter()
        bc_state = group.join([BC_PHASE.create(jax.random.key(seed), policy_config, data.training, init=None)
                               for seed in group.seeds])
        bc_state = run_branch(config, data, BC_PHASE, bc_state, branch=SHARED_BC_BRANCH, start_step=0,
                              num_steps=config.bc_steps, group=group, evaluate_fn=evaluate_fn,
                              should_stop=should_stop, reported=False, mesh=mesh)
        timings["shared_bc_phase_s"] = time.perf_counter() - t0
    bc_states = group.split(bc_state) if bc_state is not None else [None] * len(group.seeds)

    results = [{} for _ in group.seeds]
    for method in methods:
        t0 = time.perf_counter()
        if method.starts_from_bc_phase:
            start_step, num_steps = config.bc_steps, config.method_steps
        else:
            start_step, num_steps = 0, config.total_steps
        state = group.join([create_state(config, data, method, seed, init=init)
                            for seed, init in zip(group.seeds, bc_states)])
        video_path = None if video_dir is None else video_dir / f"{method.name}_final.mp4"
        state = run_branch(config, data, method, state, branch=method.name, start_step=start_step,
                           num_steps=num_steps, group=group, video_path=video_path, evaluate_fn=evaluate_fn,
                           should_stop=should_stop, mesh=mesh)
        timings[f"{method.name}_s"] = time.perf_counter() - t0
        states = group.split(state)
        missing = [i for i, log in enumerate(group.logs) if not method_evals(log.read(), method)]
        if missing:  # a branch that ran no steps (e.g. --method-steps 0)
            fresh = evaluate_fn([method.policy_fn(s) for s in states], None, final=True)
        for i, (log, seed_state) in enumerate(zip(group.logs, states)):
            evals = method_evals(log.read(), method)
            if evals:
                final = {k: v for k, v in evals[-1].items() if k not in ("branch", "eval")}
            else:
                final = {**fresh[i], "step": int(seed_state.step)}
            results[i][method.name] = {**final, **method.report(seed_state, data.training)}
        if video_path is not None:
            if not video_path.exists():  # branch finished before a resume, or no steps to run
                evaluate_fn([method.policy_fn(s) for s in states], video_path)
            results[0][method.name]["video"] = video_path.name
    out = []
    for seed, unit, per_method in zip(group.seeds, group.unit_dirs, results):
        result = {"seed": seed, "data_seed": data.summary.get("data_seed"), "methods": per_method,
                  "timings": timings}  # under --batch-seeds, the group's: its seeds trained together
        if group.stacked:
            result["trained_with_seeds"] = list(group.seeds)
        runs.write_json_atomic(unit / "result.json", result)
        out.append(result)
    return out
