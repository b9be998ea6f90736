"""MetaWorld offline data -> the recorded-data format (plare_jax.data.recorded), frames rendered.

What a lab would record, made from a MetaWorld dataset so the generic (simulator-free) path can
be checked against the MetaWorld path: per step the observation, action, episode id, one camera
frame rendered with the MetaWorld path's view (`RenderConfig`: same camera, size and settings, no
captions: the tiling adds them), and the simulator's rewards and success flags, which let the
scripted teacher's labels carry over.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Literal

import numpy as np
from tqdm.auto import tqdm

from plare_jax.data import recorded
from plare_jax.data.dataset import OfflineDataset
from plare_jax.data.video import write_video
from plare_jax.envs.render import RenderConfig, iter_rendered_episodes
from plare_jax.envs.sim import TaskEnv
from plare_jax.errors import OutputExistsError

# MetaWorld v3's 39-dim observation and 4-dim action, named for the card.
_HALF = ["hand_x", "hand_y", "hand_z", "gripper_distance",
         "obj1_x", "obj1_y", "obj1_z", "obj1_qw", "obj1_qx", "obj1_qy", "obj1_qz",
         "obj2_x", "obj2_y", "obj2_z", "obj2_qw", "obj2_qx", "obj2_qy", "obj2_qz"]
OBSERVATION_NAMES = _HALF + [f"prev_{name}" for name in _HALF] + ["goal_x", "goal_y", "goal_z"]
ACTION_NAMES = ["delta_x", "delta_y", "delta_z", "gripper"]


def export_metaworld(
    ds: OfflineDataset,
    root: str | os.PathLike,
    *,
    render_config: RenderConfig = RenderConfig(),
    frames: Literal["npy", "video"] = "npy",
    task_text: str | None = None,
    workers: int | None = None,
    progress: bool = True,
    overwrite: bool = False,
) -> Path:
    """Writes `ds` as a recorded dataset with one rendered frame per step.

    Args:
        ds: a MetaWorld dataset (`plare_jax.envs.collect.collect_dataset`).
        root: output directory (must not exist unless `overwrite`).
        render_config: the view; the default equals the MetaWorld path's, so keyframe images
            built from the exported frames are identical to re-rendered ones.
        frames: "npy" (lossless uint8 array; exact images) or "video" (one H.264 mp4 per
            episode, lossy, like a real recording).
        task_text: the goal text for the card (default: the MetaWorld path's text for the task).
        workers: rendering processes (None: one per core).
        progress: show a bar over frames.
        overwrite: replace an existing `root`.

    Returns:
        The dataset directory.
    """
    from plare_jax.envs.tasks import task_text as default_task_text

    root = Path(root)
    if root.exists():
        if not overwrite:
            raise OutputExistsError(f"{root} exists; choose another output directory or pass overwrite")
        shutil.rmtree(root)
    root.mkdir(parents=True)
    camera = render_config.camera
    height, width = render_config.height, render_config.width
    n = ds.num_steps
    starts = ds.episode_starts
    env = TaskEnv(ds.task)
    fps = 1.0 / float(env.env.dt)  # MetaWorld's control period (frame_skip x timestep)
    env.close()
    video_index = None
    if frames == "npy":
        spec = {"storage": "npy", "height": height, "width": width}
        array = recorded.open_frames_for_writing(root, camera, n, height, width)
    elif frames == "video":
        files = [f"videos/{camera}/episode_{e:06d}.mp4" for e in range(ds.num_episodes)]
        spec = {"storage": "video", "height": height, "width": width, "files": files}
        (root / "videos" / camera).mkdir(parents=True)
        video_index = {camera: (ds.episode_ids, np.arange(n) - starts[ds.episode_ids])}
    else:
        raise ValueError(f"frames must be 'npy' or 'video', got {frames!r}")
    with tqdm(total=n, desc="export frames", unit="frame", disable=not progress) as bar:
        for rows, images in iter_rendered_episodes(ds, np.arange(n), render_config, workers=workers):
            if frames == "npy":
                array[rows] = images
            else:
                write_video(root / spec["files"][int(ds.episode_ids[rows[0]])], images, fps=fps)
            bar.update(len(rows))
    if frames == "npy":
        array.flush()
        del array
    card = recorded.make_card(
        task_text=task_text or default_task_text(ds.task), fps=fps, cameras={camera: spec},
        observation_names=OBSERVATION_NAMES if ds.observations.shape[1] == len(OBSERVATION_NAMES) else None,
        action_names=ACTION_NAMES if ds.actions.shape[1] == len(ACTION_NAMES) else None,
        observation_units="m (positions), quaternions, gripper opening; current, previous, goal",
        action_units="end-effector position change and gripper effort, each in [-1, 1]",
        source={"kind": "metaworld", "task": ds.task, "render": {"camera": camera, "height": height,
                                                                    "width": width},
                "dataset_card": ds.card},
    )
    recorded.save_recorded(root, card=card, observations=ds.observations, actions=ds.actions,
                           episode_ids=ds.episode_ids, rewards=ds.rewards, successes=ds.successes,
                           video_index=video_index)
    return root
