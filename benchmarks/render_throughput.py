"""Keyframes/s of the renderer vs a raw `mujoco.Renderer` loop on the same scene and size.

Usage: PYTHONPATH=. python benchmarks/render_throughput.py [--frames 300]
Raw loop: MetaWorld's default visuals (shadow map, multisampling), same camera and 200x200.
Ours: `render_rows` (fast visuals, state restore per frame, flip), 1 process and 2 processes.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

os.environ.setdefault("MUJOCO_GL", "egl")

import mujoco  # noqa: E402
import numpy as np  # noqa: E402

from plare_jax.envs.collect import CollectionConfig, collect_dataset  # noqa: E402
from plare_jax.envs.render import RenderConfig, render_rows  # noqa: E402
from plare_jax.envs.sim import TaskEnv  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--task", default="sweep-into")
    parser.add_argument("--frames", type=int, default=300)
    args = parser.parse_args()
    config = RenderConfig(captions=False)
    with tempfile.TemporaryDirectory() as cache:
        ds = collect_dataset(
            CollectionConfig(args.task, num_episodes=4, horizon=250), cache_dir=cache, workers=2, progress=False
        )
    rows = np.random.default_rng(0).choice(ds.num_steps, size=args.frames, replace=False)

    env = TaskEnv(args.task)
    env.reset(ds.episode_layouts[0])
    cam = env.model.camera(config.camera).id
    env.model.cam_pos[cam], env.model.cam_fovy[cam] = config.camera_pos, config.fovy
    raw = mujoco.Renderer(env.model, config.height, config.width)
    raw.update_scene(env.data, camera=cam)
    raw.render()  # warm-up
    n_raw = min(args.frames, 60)  # default visuals are slow
    started = time.perf_counter()
    for row in rows[:n_raw]:
        env.set_sim_state(ds.sim_states[row])
        raw.update_scene(env.data, camera=cam)
        raw.render()
    raw_fps = n_raw / (time.perf_counter() - started)
    raw.close()
    print(f"raw mujoco.Renderer, default visuals, 1 process: {raw_fps:7.1f} frames/s")

    for workers in (1, 2):
        render_rows(ds, rows[:8], config, workers=workers, progress=False)  # warm-up (process start)
        started = time.perf_counter()
        render_rows(ds, rows, config, workers=workers, progress=False)
        fps = len(rows) / (time.perf_counter() - started)
        print(f"plare_jax render_rows, fast visuals, {workers} process(es): {fps:7.1f} frames/s (incl. process start)")


if __name__ == "__main__":
    main()
