"""Offline dataset collection: scripted experts mixed with random "stretches", in parallel.

Generation mix (per episode, all randomness from `numpy.random.default_rng([seed, episode])`):
the layout is drawn uniformly from the task's reset space; at every step, if no stretch is
running, one starts with probability `stretch_prob`, replacing the expert's action by uniform
random actions for k ~ U{stretch_min..stretch_max} steps; outside stretches the expert's action
gets Gaussian noise (std `action_noise`) and is clipped to [-1, 1]. The experts shrug off noise
alone, the stretches make them lose time (and often the episode). On tasks whose expert reads
the goal from the observation, a per-episode "decoy" mode (its own random stream
`[seed, episode, 1]`) shows the expert a shifted goal: a consistent, state-dependent mistake
like a half-trained policy's, which BC cannot average away as it does zero-mean stretches.
A second per-episode mode, "misperceived object" (stream `[seed, episode, 2]`), works on tasks
whose expert reads the first object's position (the four paper tasks and most others): for the
whole episode the expert sees it shifted by a fixed offset, so it reaches, grasps or pushes
beside it. The offset is the same in every misperceived episode, as a half-trained policy's bias
is; a direction drawn per episode would be zero-mean, which BC is expected to average away.
Episodes run the full horizon; they do not stop at success, so segments after a success exist.

Determinism: an episode depends only on (config, episode index), never on which worker ran
it, so the same seed gives identical arrays for any worker count.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import multiprocessing
import os
import platform
import signal
import time
from collections.abc import Callable
from importlib import metadata
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from plare_jax.data.dataset import FORMAT_VERSION, DatasetError, OfflineDataset, load_dataset, save_dataset
from plare_jax.envs.sim import MAX_EPISODE_STEPS, SIM_STATE_SPEC, ExpertPolicy, TaskEnv
from plare_jax.envs.tasks import resolve_task
from plare_jax.interrupts import raise_if_stopped

# Per-task generation mix, calibrated at a 250-step horizon on data seed 0 so that roughly 30-60%
# of episodes succeed and BC on the data stays clearly below 1.0 (docs/data_modes.md;
# benchmarks/calibrate_data.py measures both). Each paper task gets about half its episodes from a
# systematic mistake BC cannot average away, and fewer random stretches: sweep-into and
# plate-slide (experts that read the goal) a decoy goal, drawer-open and door-open (experts that
# ignore the goal) a misperceived handle. Other tasks get stretches only.
DEFAULT_STRETCH_PROB: dict[str, float] = {
    "sweep-into-v3": 0.05,
    "drawer-open-v3": 0.03,
    "door-open-v3": 0.04,
    "plate-slide-v3": 0.05,
}
DEFAULT_DECOY_PROB: dict[str, float] = {
    "sweep-into-v3": 0.5,
    "plate-slide-v3": 0.5,
}
# Misperceived-object mode (see CollectionConfig.misperceive_prob): calibrated on data seed 0 only
# (docs/data_modes.md) so that BC on the data stays clearly below 1.0.
# The offset is towards the robot (-y): the expert comes down in front of the handle and pulls
# or pushes at air, a few cm short of it.
DEFAULT_MISPERCEIVE_PROB: dict[str, float] = {
    "drawer-open-v3": 0.5,
    "door-open-v3": 0.5,
}
DEFAULT_MISPERCEIVE_OFFSET: dict[str, tuple[float, float, float]] = {
    "drawer-open-v3": (0.0, -0.05, 0.0),
    "door-open-v3": (0.0, -0.06, 0.0),
}
FALLBACK_MISPERCEIVE_OFFSET = (0.0, -0.05, 0.0)
# Observation entries of the first object's position: current (4:7) and previous frame (22:25).
OBJECT_POS_SLICES = (slice(4, 7), slice(22, 25))
FALLBACK_STRETCH_PROB = 0.1


@dataclasses.dataclass(frozen=True)
class CollectionConfig:
    """What to collect. Every field enters the cache key.

    Attributes:
        task: MetaWorld v3 task, short ("sweep-into") or full ("sweep-into-v3") name.
        num_episodes: number of episodes.
        horizon: steps per episode (MetaWorld allows at most 500).
        seed: root seed of layouts, stretches and noise.
        stretch_prob: per-step probability of starting a random stretch; None = per-task default.
        stretch_min: shortest stretch, in steps.
        stretch_max: longest stretch, in steps (inclusive).
        action_noise: std of Gaussian noise on the expert's actions.
        decoy_prob: per-episode probability that the expert is shown a decoy goal (the true
            goal + `decoy_offset`) instead of the true one: a systematic, state-consistent
            mistake, like a half-trained policy makes. Random stretches are zero-mean and BC
            averages them away; a decoy mode is not, so it separates preference learning from
            BC. Only tasks whose scripted expert reads the goal from the observation
            (e.g. sweep-into, plate-slide, reach, push) are affected; the stored observations
            always hold the true goal.
            None = per-task default (DEFAULT_DECOY_PROB, else 0).
        decoy_offset: xyz offset of the decoy goal from the true goal, in metres.
        misperceive_prob: per-episode probability that, for the whole episode, the expert sees
            the first object's position (the drawer or door handle, the cube, the puck; obs
            4:7 and its previous-frame copy 22:25) shifted by `misperceive_offset`, so it
            reaches and pushes beside it: a systematic, state-consistent mistake on any task.
            The stored observations always hold the true position.
            None = per-task default (DEFAULT_MISPERCEIVE_PROB, else 0).
        misperceive_offset: xyz offset of the perceived object position, in metres; the same
            in every misperceived episode (a bias, not zero-mean noise).
            None = per-task default (DEFAULT_MISPERCEIVE_OFFSET, else FALLBACK_MISPERCEIVE_OFFSET).
    """

    task: str
    num_episodes: int
    horizon: int = 250
    seed: int = 0
    stretch_prob: float | None = None
    stretch_min: int = 10
    stretch_max: int = 30
    action_noise: float = 0.1
    decoy_prob: float | None = None
    decoy_offset: tuple[float, float, float] = (0.15, 0.0, 0.0)
    misperceive_prob: float | None = None
    misperceive_offset: tuple[float, float, float] | None = None

    def __post_init__(self):
        resolve_task(self.task)  # fail early on a bad name
        if self.num_episodes < 1:
            raise ValueError(f"num_episodes must be >= 1, got {self.num_episodes}")
        if not 1 <= self.horizon <= MAX_EPISODE_STEPS:
            raise ValueError(f"horizon must be in 1..{MAX_EPISODE_STEPS} (MetaWorld's limit), got {self.horizon}")
        if self.stretch_prob is not None and not 0.0 <= self.stretch_prob <= 1.0:
            raise ValueError(f"stretch_prob must be in [0, 1] or None, got {self.stretch_prob}")
        if not 1 <= self.stretch_min <= self.stretch_max:
            raise ValueError(f"need 1 <= stretch_min <= stretch_max, got {self.stretch_min}, {self.stretch_max}")
        if self.action_noise < 0:
            raise ValueError(f"action_noise must be >= 0, got {self.action_noise}")
        if self.decoy_prob is not None and not 0.0 <= self.decoy_prob <= 1.0:
            raise ValueError(f"decoy_prob must be in [0, 1], got {self.decoy_prob}")
        if len(self.decoy_offset) != 3:
            raise ValueError(f"decoy_offset must be 3 numbers (x, y, z), got {self.decoy_offset}")
        if self.misperceive_prob is not None and not 0.0 <= self.misperceive_prob <= 1.0:
            raise ValueError(f"misperceive_prob must be in [0, 1] or None, got {self.misperceive_prob}")
        if self.misperceive_offset is not None and len(self.misperceive_offset) != 3:
            raise ValueError(
                f"misperceive_offset must be 3 numbers (x, y, z) in metres or None, got {self.misperceive_offset}")

    @property
    def task_id(self) -> str:
        return resolve_task(self.task)

    @property
    def resolved_stretch_prob(self) -> float:
        if self.stretch_prob is not None:
            return float(self.stretch_prob)
        return DEFAULT_STRETCH_PROB.get(self.task_id, FALLBACK_STRETCH_PROB)

    @property
    def resolved_decoy_prob(self) -> float:
        if self.decoy_prob is not None:
            return float(self.decoy_prob)
        return DEFAULT_DECOY_PROB.get(self.task_id, 0.0)

    @property
    def resolved_misperceive_prob(self) -> float:
        if self.misperceive_prob is not None:
            return float(self.misperceive_prob)
        return DEFAULT_MISPERCEIVE_PROB.get(self.task_id, 0.0)

    @property
    def resolved_misperceive_offset(self) -> tuple[float, float, float]:
        offset = self.misperceive_offset
        if offset is None:
            offset = DEFAULT_MISPERCEIVE_OFFSET.get(self.task_id, FALLBACK_MISPERCEIVE_OFFSET)
        return tuple(float(x) for x in offset)

    def resolved(self) -> dict:
        """The config with the task id and defaults filled in (what the data depends on)."""
        out = dataclasses.asdict(self)
        out.update(task=self.task_id, stretch_prob=self.resolved_stretch_prob,
                   decoy_prob=self.resolved_decoy_prob,
                   decoy_offset=[float(x) for x in self.decoy_offset],  # lists: as JSON gives them back
                   misperceive_prob=self.resolved_misperceive_prob,
                   misperceive_offset=list(self.resolved_misperceive_offset))
        return out

    def cache_key(self) -> str:
        """Hash of the resolved config, file format and simulator versions."""
        payload = dict(self.resolved(), format_version=FORMAT_VERSION, versions=_sim_versions())
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def _sim_versions() -> dict[str, str]:
    return {pkg: metadata.version(pkg) for pkg in ("metaworld", "mujoco")}


Observer = Callable[[int, TaskEnv], None]


def run_episode(
    env: TaskEnv,
    expert: Callable[[np.ndarray], np.ndarray],
    config: CollectionConfig,
    episode_index: int,
    *,
    observer: Observer | None = None,
) -> dict[str, np.ndarray]:
    """Runs one episode of the generation mix.

    Args:
        env: environment of config.task.
        expert: scripted expert, observation [39] -> action [4].
        config: collection config.
        episode_index: selects the episode's random stream.
        observer: optional `observer(t, env)` called whenever the env shows observation t
            (after reset, then after each step but the last); e.g. to render live frames.

    Returns:
        dict of per-step arrays (observations [H, 39], actions [H, 4], rewards [H],
        successes [H], sim_states [H, S]) and the episode's layout [L].
    """
    rng = np.random.default_rng([config.seed, episode_index])
    layout = env.sample_layout(rng)
    obs = env.reset(layout)
    h = config.horizon
    out = {
        "observations": np.empty((h, 39), np.float32),
        "actions": np.empty((h, 4), np.float32),
        "rewards": np.empty(h, np.float32),
        "successes": np.empty(h, bool),
        "sim_states": np.empty((h, env.sim_state_size), np.float64),
        "layout": layout,
    }
    eps = config.resolved_stretch_prob
    goal_shift, object_shift = expert_shifts(config, episode_index)
    stretch_left = 0
    for t in range(h):
        out["observations"][t] = obs
        out["sim_states"][t] = env.get_sim_state()
        if observer is not None:
            observer(t, env)
        # Draw every random number each step, used or not, so streams do not depend on branches.
        start_stretch = rng.random() < eps
        stretch_len = rng.integers(config.stretch_min, config.stretch_max + 1)
        random_action = rng.uniform(-1.0, 1.0, size=4)
        noise = rng.normal(0.0, config.action_noise, size=4)
        if stretch_left == 0 and start_stretch:
            stretch_left = int(stretch_len)
        if stretch_left > 0:
            action = random_action
            stretch_left -= 1
        else:
            expert_obs = obs.copy()
            expert_obs[-3:] += goal_shift  # the last 3 entries are the goal position
            for index in OBJECT_POS_SLICES:
                expert_obs[index] += object_shift
            action = expert(expert_obs) + noise
        action = np.clip(action, -1.0, 1.0).astype(np.float32)
        obs, reward, success = env.step(action)
        out["actions"][t] = action
        out["rewards"][t] = reward
        out["successes"][t] = success
    return out


def episode_modes(config: CollectionConfig, episode_index: int) -> dict[str, bool]:
    """Which systematic modes episode `episode_index` runs: {"decoy": ..., "misperceived": ...}.

    Each mode draws from its own stream ([seed, episode, 1] and [seed, episode, 2]), so adding a
    mode, or changing one's probability, leaves the other's episodes and the main stream as they were.
    """
    return {
        "decoy": bool(np.random.default_rng([config.seed, episode_index, 1]).random() < config.resolved_decoy_prob),
        "misperceived": bool(
            np.random.default_rng([config.seed, episode_index, 2]).random() < config.resolved_misperceive_prob),
    }


def expert_shifts(config: CollectionConfig, episode_index: int) -> tuple[np.ndarray, np.ndarray]:
    """(goal shift [3], first-object shift [3]) the expert sees for the whole episode; zeros if none."""
    modes = episode_modes(config, episode_index)
    goal_shift = np.asarray(config.decoy_offset, np.float64) if modes["decoy"] else np.zeros(3)
    object_shift = np.asarray(config.resolved_misperceive_offset, np.float64) if modes["misperceived"] else np.zeros(3)
    return goal_shift, object_shift


# One environment per worker process, built on first use.
_WORKER_STATE: dict[str, tuple[TaskEnv, ExpertPolicy]] = {}


def _collect_episodes(config: CollectionConfig, episode_indices: list[int]) -> list[dict[str, np.ndarray]]:
    if config.task_id not in _WORKER_STATE:
        _WORKER_STATE.clear()
        _WORKER_STATE[config.task_id] = (TaskEnv(config.task_id), ExpertPolicy(config.task_id))
    env, expert = _WORKER_STATE[config.task_id]
    return [run_episode(env, expert, config, i) for i in episode_indices]


def _ignore_sigint() -> None:
    # Pool workers: the terminal's Ctrl-C reaches the whole process group; the parent decides
    # (it stops between chunks and terminates the pool), so a worker must not die mid-episode.
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _collect_chunk(args: tuple[CollectionConfig, list[int]]) -> tuple[list[int], list[dict[str, np.ndarray]]]:
    config, indices = args
    return indices, _collect_episodes(config, indices)


_RECOLLECT_HINT = ("Run the same command with --recollect to collect the data again (the broken file "
                   "is replaced)")


def collect_dataset(
    config: CollectionConfig,
    *,
    cache_dir: str | os.PathLike,
    workers: int | None = None,
    progress: bool = True,
    recollect: bool = False,
    should_stop: Callable[[], bool] | None = None,
) -> OfflineDataset:
    """Collects (or loads from cache) the offline dataset described by `config`.

    Args:
        config: what to collect.
        cache_dir: folder of cached datasets, one file `<task>-<config hash>.npz` per config.
        workers: processes ("spawn" context; safe when the parent has JAX loaded). None = one
            per CPU core; 1 = in this process.
        progress: show a tqdm bar over episodes.
        recollect: collect again even when a cached file exists (it is replaced; the way out
            of a corrupt or truncated cache file).

    Returns:
        The dataset; its card records the config, counts, success rate and return spread.

    Raises:
        DatasetError: a cached file exists for this config but is corrupt or does not match
            (its `path` names the file; delete it or pass `recollect=True`).
    """
    key = config.cache_key()
    path = Path(cache_dir) / f"{config.task_id}-{key}.npz"
    if path.exists() and not recollect:
        try:
            ds = load_dataset(path, expect_task=config.task_id)
        except DatasetError as e:
            raise DatasetError(f"the cached dataset cannot be used: {e}. {_RECOLLECT_HINT}", path) from e
        if ds.card.get("config_hash") != key:
            raise DatasetError(f"the cached dataset {path} was written for another config. {_RECOLLECT_HINT}", path)
        return ds

    workers = min(workers or os.cpu_count() or 1, config.num_episodes)
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    # Small chunks keep the progress bar moving and the workers balanced.
    chunks = [list(range(i, min(i + 2, config.num_episodes))) for i in range(0, config.num_episodes, 2)]
    episodes: list[dict[str, np.ndarray] | None] = [None] * config.num_episodes
    started = time.perf_counter()
    with tqdm(total=config.num_episodes, desc=f"collect {config.task_id}", unit="ep", disable=not progress) as bar:
        if workers == 1:
            results = map(_collect_chunk, [(config, c) for c in chunks])
            for indices, eps in results:
                for i, ep in zip(indices, eps):
                    episodes[i] = ep
                bar.update(len(indices))
                raise_if_stopped(should_stop)
        else:
            ctx = multiprocessing.get_context("spawn")
            with ctx.Pool(workers, initializer=_ignore_sigint) as pool:  # leaving the block terminates it
                for indices, eps in pool.imap_unordered(_collect_chunk, [(config, c) for c in chunks]):
                    for i, ep in zip(indices, eps):
                        episodes[i] = ep
                    bar.update(len(indices))
                    raise_if_stopped(should_stop)
    elapsed = time.perf_counter() - started
    ds = _assemble(config, episodes, key)
    save_dataset(ds, path)
    if progress:
        tqdm.write(f"collected {ds.num_steps} steps in {elapsed:.1f} s ({ds.num_steps / elapsed:.0f} steps/s) -> {path}")
    return ds


def _assemble(config: CollectionConfig, episodes: list, key: str) -> OfflineDataset:
    def cat(name):
        return np.concatenate([ep[name] for ep in episodes])

    lengths = [len(ep["rewards"]) for ep in episodes]
    episode_ids = np.repeat(np.arange(len(episodes), dtype=np.int32), lengths)
    ds = OfflineDataset(
        observations=cat("observations"),
        actions=cat("actions"),
        rewards=cat("rewards"),
        successes=cat("successes"),
        episode_ids=episode_ids,
        sim_states=cat("sim_states"),
        episode_layouts=np.stack([ep["layout"] for ep in episodes]).astype(np.float64),
        card={},
    )
    returns = ds.episode_returns
    card = {
        "task": config.task_id,
        "seed": config.seed,
        "config": config.resolved(),
        "config_hash": key,
        "generation_mix": (
            "scripted expert + N(0, action_noise) noise, with random stretches: per step, if none is "
            "running, start one with prob stretch_prob; k ~ U{stretch_min..stretch_max} uniform random "
            "actions; with prob decoy_prob per episode the expert is shown the goal shifted by "
            "decoy_offset (a systematic mistake); with prob misperceive_prob per episode the expert sees the "
            "first object's position shifted by misperceive_offset for the whole episode (another "
            "systematic mistake); episodes run the full horizon"
        ),
        "num_episodes": ds.num_episodes,
        "num_steps": ds.num_steps,
        # Episode indices of each systematic mode, so success can be split by mode.
        "decoy_episodes": [i for i in range(ds.num_episodes) if episode_modes(config, i)["decoy"]],
        "misperceived_episodes": [i for i in range(ds.num_episodes) if episode_modes(config, i)["misperceived"]],
        "success_rate": float(ds.episode_success.mean()),
        "step_success_fraction": float(ds.successes.mean()),
        "episode_return": {
            "min": float(returns.min()),
            "q25": float(np.quantile(returns, 0.25)),
            "median": float(np.median(returns)),
            "q75": float(np.quantile(returns, 0.75)),
            "max": float(returns.max()),
            "mean": float(returns.mean()),
        },
        "sim_state_spec": SIM_STATE_SPEC,
        "sim_state_size": int(ds.sim_states.shape[1]),
        "layout": "MetaWorld rand_vec per episode (reset to it before restoring sim states)",
        "versions": dict(_sim_versions(), numpy=np.__version__, python=platform.python_version()),
    }
    return dataclasses.replace(ds, card=card)
