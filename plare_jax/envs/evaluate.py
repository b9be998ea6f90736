"""Policy evaluation: the policy runs here on a batch of observations, the envs in workers.

Each step the caller's policy is called once on all running episodes' observations [B, 39]
(so a jitted JAX policy stays in this process, and no JAX is imported in the workers), and
the actions are sent over pipes to "spawn"ed worker processes that each step a few envs.
Episode e's layout comes from `numpy.random.default_rng([seed, EVAL_STREAM, e])`: the same
seed gives the same layouts for any worker count. `evaluate_policies` runs several policies
(each on its own seed's layouts) in one pass over the same workers.

Stopping: `should_stop` is checked before every step and between video frames; when it
returns true the workers are closed and `StopRequested` is raised. The workers ignore
SIGINT (the terminal sends Ctrl-C to the whole process group): the parent decides.
"""

from __future__ import annotations

import dataclasses
import multiprocessing
import os
import signal
import subprocess
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from plare_jax.envs.sim import MAX_EPISODE_STEPS, ExpertPolicy, TaskEnv
from plare_jax.envs.tasks import resolve_task
from plare_jax.interrupts import raise_if_stopped

EVAL_STREAM = 1  # keeps evaluation layouts apart from collection's default_rng([seed, episode])
VIDEO_SIZE = 224  # divisible by 16, so video encoders need no resize
VIDEO_FPS = 30


@dataclasses.dataclass(frozen=True)
class EvalResult:
    """Outcome of an evaluation.

    Attributes:
        success_rate: fraction of episodes in which success was ever reached.
        mean_return: mean undiscounted episode return.
        episode_successes: [E] bool.
        episode_returns: [E] float64.
    """

    success_rate: float
    mean_return: float
    episode_successes: np.ndarray
    episode_returns: np.ndarray


def _worker(conn, task: str, layouts: list[tuple[int, int]], video: list[bool]) -> None:
    """Steps the envs of `layouts` ((seed, episode) each) on command: ("step", actions [n, 4]) or ("close",)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent stops us (close, then terminate)
    envs = [TaskEnv(task) for _ in layouts]
    renderers = {}
    if any(video):
        from plare_jax.envs.render import RenderConfig, SceneRenderer

        view = RenderConfig(width=VIDEO_SIZE, height=VIDEO_SIZE, captions=False)
        renderers = {i: SceneRenderer(envs[i], view) for i, recorded in enumerate(video) if recorded}
    obs = []
    for env, (seed, e) in zip(envs, layouts):
        obs.append(env.reset(env.sample_layout(np.random.default_rng([seed, EVAL_STREAM, e]))))
    frames = {i: r.render_current() for i, r in renderers.items()}
    conn.send((np.stack(obs), frames))
    while True:
        msg = conn.recv()
        if msg[0] == "close":
            break
        results = [env.step(a) for env, a in zip(envs, msg[1])]
        obs = np.stack([r[0] for r in results])
        rewards = np.array([r[1] for r in results])
        successes = np.array([r[2] for r in results])
        frames = {i: r.render_current() for i, r in renderers.items()}
        conn.send((obs, rewards, successes, frames))
    for r in renderers.values():
        r.close()
    for env in envs:
        env.close()
    conn.close()


def evaluate_policy(
    task: str,
    policy_fn: Callable[[np.ndarray], np.ndarray],
    *,
    num_episodes: int = 25,
    horizon: int = 250,
    seed: int = 0,
    workers: int | None = None,
    video_path: str | os.PathLike | None = None,
    video_episodes: int = 2,
    progress: bool = True,
    should_stop: Callable[[], bool] | None = None,
) -> EvalResult:
    """Success rate and mean return of a policy.

    Args:
        task: MetaWorld v3 task name.
        policy_fn: observations [B, 39] float32 -> actions [B, 4] (clipped to [-1, 1] here).
        num_episodes: episodes, all run side by side for `horizon` steps.
        horizon: steps per episode (at most 500).
        seed: selects the episodes' layouts.
        workers: env processes ("spawn"); None = one per core.
        video_path: if given, a .mp4 or .gif of the first `video_episodes` episodes, one after another.
        video_episodes: number of episodes in the video.
        progress: tqdm bar over steps.
        should_stop: checked before every step and video frame (e.g. a
            `plare_jax.interrupts.StopFlag`); when true, evaluation stops.

    Returns:
        EvalResult; an episode succeeds if info["success"] was ever 1.

    Raises:
        StopRequested: `should_stop()` became true (no video is written then).
    """
    (result,) = evaluate_policies(task, [policy_fn], seeds=[seed], num_episodes=num_episodes, horizon=horizon,
                                  workers=workers, video_path=video_path, video_episodes=video_episodes,
                                  progress=progress, should_stop=should_stop)
    return result


def evaluate_policies(
    task: str,
    policy_fns: Sequence[Callable[[np.ndarray], np.ndarray]],
    *,
    seeds: Sequence[int],
    num_episodes: int = 25,
    horizon: int = 250,
    workers: int | None = None,
    video_path: str | os.PathLike | None = None,
    video_episodes: int = 2,
    progress: bool = True,
    should_stop: Callable[[], bool] | None = None,
) -> list[EvalResult]:
    """`evaluate_policy` of several policies in one pass over the workers (e.g. every training
    seed's, under --batch-seeds): policy i runs `num_episodes` episodes on the layouts of
    `seeds[i]`, all episodes of all policies side by side, so each result equals
    `evaluate_policy(task, policy_fns[i], seed=seeds[i], ...)`.

    Args:
        policy_fns: one per evaluated policy, each called once per step on its own episodes'
            observations [num_episodes, 39].
        seeds: the layouts' seed of each policy (as `evaluate_policy`'s `seed`).
        video_path: a video of policy 0's first `video_episodes` episodes.
        The other arguments are `evaluate_policy`'s.

    Returns:
        One EvalResult per policy, in order.
    """
    task_id = resolve_task(task)
    policy_fns, seeds = list(policy_fns), [int(s) for s in seeds]
    if not policy_fns or len(seeds) != len(policy_fns):
        raise ValueError(f"need one seed per policy and at least one policy, got {len(policy_fns)} policies "
                         f"and {len(seeds)} seeds")
    if num_episodes < 1:
        raise ValueError(f"num_episodes must be >= 1, got {num_episodes}")
    if not 1 <= horizon <= MAX_EPISODE_STEPS:
        raise ValueError(f"horizon must be in 1..{MAX_EPISODE_STEPS}, got {horizon}")
    if video_path is not None and Path(video_path).suffix.lower() not in (".mp4", ".gif"):
        raise ValueError(f"video_path must end in .mp4 or .gif, got {video_path}")
    n_video = min(video_episodes, num_episodes) if video_path is not None else 0
    # Policy-major: episode e of policy i is row i * num_episodes + e.
    layouts = [(seed, e) for seed in seeds for e in range(num_episodes)]
    total = len(layouts)
    workers = max(1, min(workers or os.cpu_count() or 1, total))
    groups = [list(g) for g in np.array_split(np.arange(total), workers)]
    ctx = multiprocessing.get_context("spawn")
    conns, procs = [], []
    try:
        for group in groups:
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=_worker, daemon=True,
                               args=(child, task_id, [layouts[r] for r in group], [r < n_video for r in group]))
            proc.start()
            child.close()
            conns.append(parent)
            procs.append(proc)
        videos: dict[int, list[np.ndarray]] = {e: [] for e in range(n_video)}

        def collect_frames(group, frames):
            for i, frame in frames.items():
                videos[group[i]].append(frame)

        first = [_recv(c, p) for c, p in zip(conns, procs)]
        obs = np.concatenate([o for o, _ in first])
        for group, (_, frames) in zip(groups, first):
            collect_frames(group, frames)
        returns = np.zeros(total)
        successes = np.zeros(total, dtype=bool)
        for _ in tqdm(range(horizon), desc=f"evaluate {task_id}", unit="step", disable=not progress):
            raise_if_stopped(should_stop)
            per_policy = obs.astype(np.float32).reshape(len(policy_fns), num_episodes, -1)
            actions = []
            for policy_fn, policy_obs in zip(policy_fns, per_policy):
                policy_actions = np.asarray(policy_fn(policy_obs), dtype=np.float32)
                if policy_actions.shape != (num_episodes, 4):
                    raise ValueError(f"policy_fn must return actions [{num_episodes}, 4], got {policy_actions.shape}")
                actions.append(policy_actions)
            actions = np.clip(np.concatenate(actions), -1.0, 1.0)
            for conn, group in zip(conns, groups):
                conn.send(("step", actions[group]))
            replies = [_recv(c, p) for c, p in zip(conns, procs)]
            obs = np.concatenate([r[0] for r in replies])
            returns += np.concatenate([r[1] for r in replies])
            successes |= np.concatenate([r[2] for r in replies])
            for group, reply in zip(groups, replies):
                collect_frames(group, reply[3])
    finally:
        for conn in conns:
            try:
                conn.send(("close",))
            except (BrokenPipeError, OSError):
                pass  # worker already gone
        for proc in procs:
            proc.join(timeout=10)
            if proc.is_alive():
                proc.terminate()
    if video_path is not None:
        _write_video(Path(video_path), [f for e in range(n_video) for f in videos[e]], should_stop)
    out = []
    for i in range(len(policy_fns)):
        rows = slice(i * num_episodes, (i + 1) * num_episodes)
        out.append(EvalResult(success_rate=float(successes[rows].mean()), mean_return=float(returns[rows].mean()),
                              episode_successes=successes[rows], episode_returns=returns[rows]))
    return out


def _recv(conn, proc):
    # poll so that a crashed worker gives an error instead of a hang
    while not conn.poll(1.0):
        if not proc.is_alive():
            raise RuntimeError(f"evaluation worker exited with code {proc.exitcode}; see its traceback above")
    try:
        return conn.recv()
    except EOFError:  # the worker died after the poll: its pipe closed
        proc.join(timeout=5)
        raise RuntimeError(f"evaluation worker exited with code {proc.exitcode}; see its traceback above") from None


def _write_video(path: Path, frames: list[np.ndarray], should_stop: Callable[[], bool] | None = None) -> None:
    """Writes `frames` [H, W, 3] uint8 as .gif (Pillow) or .mp4 (H.264 via imageio-ffmpeg's binary).

    The file appears complete or not at all (temporary file, then rename).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp{path.suffix}")
    try:
        if path.suffix.lower() == ".gif":
            import imageio.v2 as imageio

            raise_if_stopped(should_stop)
            imageio.mimsave(tmp, frames, duration=1000 / VIDEO_FPS, loop=0)
        else:
            _write_mp4(tmp, frames, should_stop)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _write_mp4(path: Path, frames: list[np.ndarray], should_stop: Callable[[], bool] | None) -> None:
    import imageio_ffmpeg

    height, width = frames[0].shape[:2]
    command = [
        imageio_ffmpeg.get_ffmpeg_exe(), "-y", "-loglevel", "error",
        "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{width}x{height}", "-r", str(VIDEO_FPS), "-i", "-",
        "-an", "-c:v", "libx264", "-pix_fmt", "yuv420p", "-crf", "23", "-f", "mp4", str(path),
    ]  # fmt: skip
    # Our own ffmpeg pipe instead of imageio's writer: imageio starts ffmpeg with
    # preexec_fn=os.setpgrp, which makes Python fork this multithreaded (JAX) process through
    # its at-fork hooks (JAX's "os.fork() was called" warning). start_new_session keeps ffmpeg
    # out of the terminal's Ctrl-C just the same, without a Python-level fork.
    with tempfile.TemporaryFile() as errors:
        proc = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=errors,
                                start_new_session=True)  # fmt: skip
        try:
            for frame in frames:
                raise_if_stopped(should_stop)
                proc.stdin.write(np.ascontiguousarray(frame, dtype=np.uint8).tobytes())
            proc.stdin.close()
            code = proc.wait()
        except BaseException:
            proc.kill()
            proc.wait()
            raise
        if code != 0:
            errors.seek(0)
            message = errors.read().decode(errors="replace").strip()[-2000:]
            raise RuntimeError(f"ffmpeg could not write {path} (exit code {code}): {message}")


def scripted_expert_policy(task: str) -> Callable[[np.ndarray], np.ndarray]:
    """MetaWorld's scripted expert as a batched policy: observations [B, 39] -> actions [B, 4]."""
    expert = ExpertPolicy(task)

    def policy_fn(observations: np.ndarray) -> np.ndarray:
        return np.stack([expert(o) for o in np.asarray(observations)])

    return policy_fn
