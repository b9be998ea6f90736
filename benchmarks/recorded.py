"""Recorded-data throughput: importing LeRobot and Minari datasets, keyframes from mp4 video.

Rows, each in its own process:
- `import-lerobot`: steps/s of `import_lerobot` on a LeRobot v2.1 dataset built here (parquet
  per episode, one H.264 mp4 per episode and camera): parquet read, video copy, validation
  (every video's frames counted) included.
- `import-minari`: steps/s of `import_minari` on a Minari dataset built here with minari's own
  API; beside it, minari's `iterate_episodes` alone (the floor: the importer reads through it).
- `keyframes`: frames/s of `recorded_pair_images` (decode the keyframes of P pairs from the mp4
  videos, one pass per video, and tile them) vs the baseline a user would write, imageio's
  ffmpeg reader fetching each keyframe with `get_data(index)`; and from npy frames.

    python benchmarks/recorded.py            # ~2-4 min on 2 cores
    python benchmarks/recorded.py --tiny     # seconds (tests)
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import shutil
import sys
import tempfile
import time

import numpy as np
import tyro

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))

from benchmarks.common import default_out, machine_info, markdown_table, peak_rss_mib, run_isolated, write_json  # noqa: E402


@dataclasses.dataclass(frozen=True)
class Options:
    """Sizes of the synthetic datasets and of the keyframe job."""

    episodes: int = 20
    """Episodes per dataset."""
    steps: int = 200
    """Steps per episode."""
    size: int = 224
    """Video frame height and width (pixels)."""
    fps: int = 30
    """Frame rate of the videos."""
    pairs: int = 200
    """Segment pairs whose keyframes are extracted."""
    segment_length: int = 64
    """Steps per segment."""
    baseline_pairs: int = 20
    """Pairs for the per-frame imageio baseline (it is slow)."""
    tiny: bool = False
    """Seconds-long sizes (for tests)."""
    out: pathlib.Path = default_out("recorded")
    """JSON output path."""

    def resolved(self) -> Options:
        if not self.tiny:
            return self
        return dataclasses.replace(self, episodes=2, steps=40, size=32, pairs=6, segment_length=16,
                                   baseline_pairs=2)


def _frames(episode: int, steps: int, size: int) -> np.ndarray:
    """A moving gradient (compresses like a smooth scene, not like noise)."""
    y, x = np.mgrid[0:size, 0:size]
    t = np.arange(steps)[:, None, None]
    base = (x[None] + 2 * t + 7 * episode) % 256
    return np.stack([base, (y[None] + t) % 256, np.broadcast_to((x + y)[None] % 256, base.shape)],
                    axis=-1).astype(np.uint8)


def write_lerobot(root: pathlib.Path, opts: Options) -> int:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from plare_jax.data.video import write_video

    key = "observation.images.top"
    info = {"codebase_version": "v2.1", "fps": opts.fps, "chunks_size": 1000,
            "data_path": "data/chunk-{episode_chunk:03d}/episode_{episode_index:06d}.parquet",
            "video_path": "videos/chunk-{episode_chunk:03d}/{video_key}/episode_{episode_index:06d}.mp4",
            "features": {"observation.state": {"dtype": "float32", "shape": [14]},
                         "action": {"dtype": "float32", "shape": [14]},
                         key: {"dtype": "video", "shape": [opts.size, opts.size, 3]}}}
    (root / "meta").mkdir(parents=True)
    (root / "meta" / "info.json").write_text(json.dumps(info))
    (root / "meta" / "tasks.jsonl").write_text(json.dumps({"task_index": 0, "task": "fold the towel"}) + "\n")
    rng = np.random.default_rng(0)
    for e in range(opts.episodes):
        n = opts.steps
        table = pa.table({
            "observation.state": pa.array(list(rng.normal(size=(n, 14)).astype(np.float32)), type=pa.list_(pa.float32(), 14)),
            "action": pa.array(list(rng.normal(size=(n, 14)).astype(np.float32)), type=pa.list_(pa.float32(), 14)),
            "timestamp": pa.array(np.arange(n) / opts.fps, type=pa.float32()),
            "frame_index": pa.array(np.arange(n)), "episode_index": pa.array(np.full(n, e)),
            "task_index": pa.array(np.zeros(n, np.int64)),
        })
        path = root / info["data_path"].format(episode_chunk=0, episode_index=e)
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(table, path)
        video = root / info["video_path"].format(episode_chunk=0, video_key=key, episode_index=e)
        video.parent.mkdir(parents=True, exist_ok=True)
        write_video(video, _frames(e, n, opts.size), fps=opts.fps)
    return opts.episodes * opts.steps


def row_import_lerobot(opts: Options) -> list[dict]:
    from plare_jax.data.importers import import_lerobot

    with tempfile.TemporaryDirectory() as tmp:
        tmp = pathlib.Path(tmp)
        steps = write_lerobot(tmp / "src", opts)
        t0 = time.perf_counter()
        import_lerobot(tmp / "src", tmp / "out", progress=False)
        wall = time.perf_counter() - t0
    return [{"row": "import-lerobot", "what": f"import_lerobot ({opts.size}px mp4, 14-dim state)",
             "steps": steps, "wall_s": wall, "rate": steps / wall, "unit": "steps/s",
             "peak_rss_mib": peak_rss_mib()}]


def row_import_minari(opts: Options) -> list[dict]:
    import gymnasium as gym
    import minari
    from minari.data_collector.episode_buffer import EpisodeBuffer

    from plare_jax.data.importers import import_minari

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = pathlib.Path(tmp)
        os.environ["MINARI_DATASETS_PATH"] = str(tmp / "minari")
        rng = np.random.default_rng(0)
        n = opts.steps
        buffers = [EpisodeBuffer(
            id=e, observations=rng.normal(size=(n + 1, 39)).astype(np.float32),
            actions=rng.uniform(-1, 1, (n, 4)).astype(np.float32), rewards=rng.normal(size=n),
            terminations=np.zeros(n, bool), truncations=np.r_[np.zeros(n - 1, bool), True],
            infos={"success": np.zeros(n + 1, bool)}) for e in range(opts.episodes)]
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            minari.create_dataset_from_buffers(
                "bench/synthetic-v0", buffers, observation_space=gym.spaces.Box(-10, 10, (39,), np.float32),
                action_space=gym.spaces.Box(-1, 1, (4,), np.float32), algorithm_name="random",
                data_format="hdf5")
        steps = opts.episodes * n
        t0 = time.perf_counter()
        for _ in minari.load_dataset("bench/synthetic-v0").iterate_episodes():
            pass
        floor = time.perf_counter() - t0
        t0 = time.perf_counter()
        import_minari("bench/synthetic-v0", tmp / "out", progress=False)
        wall = time.perf_counter() - t0
    rows.append({"row": "import-minari", "what": "minari iterate_episodes alone (floor)", "steps": steps,
                 "wall_s": floor, "rate": steps / floor, "unit": "steps/s"})
    rows.append({"row": "import-minari", "what": "import_minari (39-dim obs, hdf5)", "steps": steps,
                 "wall_s": wall, "rate": steps / wall, "unit": "steps/s", "peak_rss_mib": peak_rss_mib()})
    return rows


def row_keyframes(opts: Options) -> list[dict]:
    import imageio

    from plare_jax.data.importers import import_lerobot
    from plare_jax.data.keyframes import keyframe_offsets
    from plare_jax.data.recorded import load_recorded, recorded_pair_images, save_recorded
    from plare_jax.data.segments import sample_segment_pairs

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = pathlib.Path(tmp)
        write_lerobot(tmp / "src", opts)
        ds = load_recorded(import_lerobot(tmp / "src", tmp / "video", progress=False), progress=False)
        pairs = sample_segment_pairs(ds, opts.pairs, segment_length=opts.segment_length,
                                     rng=np.random.default_rng(0))
        frames = opts.pairs * 2 * 3
        t0 = time.perf_counter()
        video_images = recorded_pair_images(ds, pairs, num_keyframes=3)
        wall = time.perf_counter() - t0
        rows.append({"row": "keyframes", "what": "recorded_pair_images, mp4 (one decode pass per video)",
                     "frames": frames, "wall_s": wall, "rate": frames / wall, "unit": "keyframes/s"})

        camera = ds.camera()
        few = pairs.take(np.arange(opts.baseline_pairs))
        rows_needed = (few.starts[..., None] + keyframe_offsets(opts.segment_length, 3)).ravel()
        t0 = time.perf_counter()
        for row in rows_needed.tolist():
            reader = imageio.get_reader(camera.video_files[camera.video_file[row]], "ffmpeg")
            reader.get_data(int(camera.frame_index[row]))
            reader.close()
        base_wall = time.perf_counter() - t0
        rows.append({"row": "keyframes", "what": "baseline: imageio ffmpeg reader, get_data(i) per keyframe",
                     "frames": len(rows_needed), "wall_s": base_wall, "rate": len(rows_needed) / base_wall,
                     "unit": "keyframes/s"})

        all_frames = camera.read(np.arange(ds.num_steps))
        card = dict(ds.card)
        card["cameras"] = {"top": {"storage": "npy", "height": opts.size, "width": opts.size}}
        save_recorded(tmp / "npy", card=card, observations=ds.observations, actions=ds.actions,
                      episode_ids=ds.episode_ids, frames={"top": all_frames})
        npy = load_recorded(tmp / "npy", progress=False)
        t0 = time.perf_counter()
        npy_images = recorded_pair_images(npy, pairs, num_keyframes=3)
        wall = time.perf_counter() - t0
        rows.append({"row": "keyframes", "what": "recorded_pair_images, npy frames", "frames": frames,
                     "wall_s": wall, "rate": frames / wall, "unit": "keyframes/s"})
        # the same pictures either way, up to H.264 loss
        rows[-1]["mean_abs_diff_vs_video"] = float(np.abs(npy_images.astype(int) - video_images).mean())
        shutil.rmtree(tmp / "npy")
    return rows


def main(opts: Options) -> dict:
    opts = opts.resolved()
    rows = []
    for fn in (row_import_lerobot, row_import_minari, row_keyframes):
        rows.extend(run_isolated(fn, opts))
    payload = {"options": {k: str(v) if isinstance(v, pathlib.Path) else v
                           for k, v in dataclasses.asdict(opts).items()},
               "machine": machine_info(("pyarrow", "minari", "imageio-ffmpeg")), "rows": rows}
    write_json(opts.out, payload)
    print(markdown_table(rows, [("row", "row"), ("what", "what"), ("rate", "rate"), ("unit", "unit"),
                                ("wall_s", "wall s"), ("peak_rss_mib", "peak MiB")]))
    print(f"\n{opts.out}")
    return payload


def parse_args(argv: list[str] | None = None) -> Options:
    """The options of this script (argv: None = the command line)."""
    return tyro.cli(Options, args=argv, description=__doc__)


if __name__ == "__main__":
    main(parse_args())
