"""Keyframe images of segments, re-rendered from stored simulator states.

View (the PLARE reference): camera `corner2` moved to (1.5, -0.35, 1.1) with fovy 20, 200x200,
goal marker hidden. Keyframes: the T steps of a segment are subsampled to 8 evenly spaced
frames (round(linspace(0, T-1, 8))), and k of those 8 are kept, evenly spaced again; for T=64
and k=3 that is subsample frames 0, 4, 7 = steps 0, 36, 63. The k frames are tiled left to
right with a caption "Timestep i" each.

Speed: MetaWorld's default visuals (4096^2 shadow map, 4x MSAA) render at a few frames/s in
software GL; shadows, reflections and multisampling are switched off before the first render.
"""

from __future__ import annotations

import dataclasses
import multiprocessing
import os
import signal

import mujoco
import numpy as np
from tqdm.auto import tqdm

from plare_jax.data.dataset import OfflineDataset
# Keyframe choice, tiling and PNG encoding are simulator-free (shared with recorded data);
# re-exported here for the MetaWorld path.
from plare_jax.data.keyframes import SUBSAMPLED_FRAMES, encode_png, keyframe_offsets, tile_keyframes  # noqa: F401
from plare_jax.data.segments import SegmentPairs
from plare_jax.envs.sim import TaskEnv


@dataclasses.dataclass(frozen=True)
class RenderConfig:
    """How segment images look.

    Attributes:
        width: frame width in pixels.
        height: frame height in pixels.
        camera: MetaWorld camera name.
        fovy: vertical field of view of that camera, degrees (None keeps the model's).
        camera_pos: world position of that camera (None keeps the model's).
        num_keyframes: k, frames per segment image.
        captions: draw "Timestep i" on each frame.
        hide_goal: make the goal marker sites transparent.
    """

    width: int = 200
    height: int = 200
    camera: str = "corner2"
    fovy: float | None = 20.0
    camera_pos: tuple[float, float, float] | None = (1.5, -0.35, 1.1)
    num_keyframes: int = 3
    captions: bool = True
    hide_goal: bool = True

    def __post_init__(self):
        if self.width < 16 or self.height < 16:
            raise ValueError(f"image must be at least 16x16, got {self.width}x{self.height}")
        if self.num_keyframes < 1:
            raise ValueError(f"num_keyframes must be >= 1, got {self.num_keyframes}")




class SceneRenderer:
    """Renders frames of one task's environment with fast settings and the configured view.

    Args:
        env: the environment to draw (its model's visual and camera fields are changed).
        config: the view.
    """

    def __init__(self, env: TaskEnv, config: RenderConfig):
        self.env, self.config = env, config
        model = env.model
        # Must be set before the GL context is made: no shadow map, no multisampling.
        model.vis.quality.shadowsize = 0
        model.vis.quality.offsamples = 0
        try:
            self.camera_id = model.camera(config.camera).id
        except KeyError as e:
            names = [model.camera(i).name for i in range(model.ncam)]
            raise ValueError(f"unknown camera {config.camera!r}; this model has {names}") from e
        if config.camera_pos is not None:
            model.cam_pos[self.camera_id] = config.camera_pos
        if config.fovy is not None:
            model.cam_fovy[self.camera_id] = config.fovy
        self._renderer = mujoco.Renderer(model, height=config.height, width=config.width)
        self._renderer.scene.flags[mujoco.mjtRndFlag.mjRND_SHADOW] = 0
        self._renderer.scene.flags[mujoco.mjtRndFlag.mjRND_REFLECTION] = 0
        # The corner cameras are mounted upside down; other cameras come out upright.
        self._flip = config.camera.startswith("corner")

    def render_current(self) -> np.ndarray:
        """Frame of the env's current state, [H, W, 3] uint8, upright."""
        if self.config.hide_goal:
            model = self.env.model
            for name in self.env.target_site_names:
                model.site_rgba[model.site(name).id, 3] = 0.0
        self._renderer.update_scene(self.env.data, camera=self.camera_id)
        image = self._renderer.render()
        return np.ascontiguousarray(image[::-1, ::-1]) if self._flip else image.copy()

    def render_states(self, layout: np.ndarray, sim_states: np.ndarray) -> np.ndarray:
        """Frames of stored states of one episode.

        Args:
            layout: [L] the episode's layout (restores the model fields its reset set).
            sim_states: [n, S] stored states of that episode.

        Returns:
            [n, H, W, 3] uint8.
        """
        self.env.reset(layout)
        frames = []
        for state in sim_states:
            self.env.set_sim_state(state)
            frames.append(self.render_current())
        return np.stack(frames) if frames else np.zeros((0, self.config.height, self.config.width, 3), np.uint8)

    def close(self) -> None:
        self._renderer.close()






_WORKER_RENDERER: dict[tuple, SceneRenderer] = {}


def _worker_renderer(task: str, config: RenderConfig) -> SceneRenderer:
    key = (task, config)
    if key not in _WORKER_RENDERER:
        for old in _WORKER_RENDERER.values():
            old.close()
            old.env.close()
        _WORKER_RENDERER.clear()
        _WORKER_RENDERER[key] = SceneRenderer(TaskEnv(task), config)
    return _WORKER_RENDERER[key]


def _render_episode(args: tuple) -> tuple[np.ndarray, np.ndarray]:
    task, config, rows, layout, states = args
    return rows, _worker_renderer(task, config).render_states(layout, states)


def _ignore_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def iter_rendered_episodes(
    ds: OfflineDataset, rows: np.ndarray, config: RenderConfig, *, workers: int | None = None
):
    """Frames of dataset rows, one episode at a time, spread over processes.

    Yields:
        (rows [n] int64, frames [n, H, W, 3] uint8) per episode that has rows, in any order.
    """
    rows = np.unique(np.asarray(rows, dtype=np.int64))
    task = ds.task
    if not task:
        raise ValueError("dataset card has no task; it was not made by collect_dataset")
    jobs = []
    for episode in np.unique(ds.episode_ids[rows]):
        ep_rows = rows[ds.episode_ids[rows] == episode]
        jobs.append((task, config, ep_rows, ds.episode_layouts[episode], ds.sim_states[ep_rows]))
    workers = min(workers or os.cpu_count() or 1, max(len(jobs), 1))
    if workers == 1:
        yield from map(_render_episode, jobs)
        return
    # workers ignore the terminal's Ctrl-C: the parent stops between chunks and ends the pool
    with multiprocessing.get_context("spawn").Pool(workers, initializer=_ignore_sigint) as pool:
        yield from pool.imap_unordered(_render_episode, jobs)


def render_rows(
    ds: OfflineDataset, rows: np.ndarray, config: RenderConfig, *, workers: int | None = None, progress: bool = True
) -> dict[int, np.ndarray]:
    """Frames of dataset rows, grouped by episode and spread over processes.

    Returns:
        {row: [H, W, 3] uint8} for every distinct row.
    """
    rows = np.unique(np.asarray(rows, dtype=np.int64))
    frames: dict[int, np.ndarray] = {}
    with tqdm(total=len(rows), desc="render keyframes", unit="frame", disable=not progress) as bar:
        for ep_rows, images in iter_rendered_episodes(ds, rows, config, workers=workers):
            frames.update(zip(ep_rows.tolist(), images))
            bar.update(len(ep_rows))
    return frames


def render_pair_images(
    ds: OfflineDataset,
    pairs: SegmentPairs,
    config: RenderConfig = RenderConfig(),
    *,
    workers: int | None = None,
    progress: bool = True,
) -> np.ndarray:
    """One captioned keyframe strip per segment of each pair.

    Args:
        ds: the dataset the pairs index.
        pairs: P pairs of segments.
        config: the view and number of keyframes k.
        workers: rendering processes ("spawn"); None = one per core; 1 = this process.
        progress: show a tqdm bar over frames.

    Returns:
        [P, 2, H, W*k, 3] uint8.
    """
    offsets = keyframe_offsets(pairs.length, config.num_keyframes)
    rows = pairs.starts[..., None] + offsets  # [P, 2, k]
    frames = render_rows(ds, rows.ravel(), config, workers=workers, progress=progress)
    out = np.empty((pairs.num_pairs, 2, config.height, config.width * config.num_keyframes, 3), np.uint8)
    for p in range(pairs.num_pairs):
        for j in range(2):
            strip = np.stack([frames[int(r)] for r in rows[p, j]])
            out[p, j] = tile_keyframes(strip, captions=config.captions)
    return out
