"""Make a recorded dataset (the format experiments/offline.py reads) from data you already have.

    python experiments/import_data.py lerobot --src PATH/TO/LEROBOT_DATASET --out data/recorded/mine
    python experiments/import_data.py minari --dataset D4RL/pen/human-v2 --out data/recorded/pen --task-text "..."
    python experiments/import_data.py metaworld --env drawer-open --num-episodes 40 --out data/recorded/drawer
    python experiments/import_data.py check --path data/recorded/mine

`metaworld` collects (or loads from the cache) a MetaWorld dataset exactly as
experiments/metaworld.py does and exports it with one rendered frame per step, rewards and
success flags included, so the generic path can be checked against the MetaWorld path.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import sys
import time
from typing import Annotated, Literal

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _HERE]

import tyro  # noqa: E402

from plare_jax.data.recorded import load_recorded  # noqa: E402
from plare_jax.errors import exit_on_user_error  # noqa: E402


@dataclasses.dataclass(frozen=True)
class LeRobot:
    """Import a local LeRobot dataset directory (codebase v2.x or v3.0: meta/info.json, data/, videos/)."""

    src: pathlib.Path
    """The LeRobot dataset root (holding meta/info.json)."""
    out: pathlib.Path
    """Output directory (must not exist)."""
    state_key: str = "observation.state"
    """Feature used as the policy observation."""
    action_key: str = "action"
    """Feature used as the action."""
    cameras: tuple[str, ...] | None = None
    """Video/image features to keep (default: all)."""
    task_text: str | None = None
    """Goal text (default: the dataset's task, if it has exactly one)."""
    link_videos: bool = False
    """Symlink the mp4 files instead of copying them."""


@dataclasses.dataclass(frozen=True)
class Minari:
    """Import a Minari dataset (a local dataset id, or the path of its data directory)."""

    dataset: str
    """Dataset id in the local Minari root (see `minari list local`) or a data directory path."""
    out: pathlib.Path
    """Output directory (must not exist)."""
    task_text: str = ""
    """Goal text for the VLM (Minari stores none)."""
    observation_keys: tuple[str, ...] | None = None
    """Dict observations: entries forming the policy observation (default: every non-image entry)."""
    camera_keys: tuple[str, ...] | None = None
    """Dict observations: image entries kept as cameras (default: every uint8 [H, W, 3] entry)."""
    fps: float | None = None
    """Steps per second for the card (Minari does not record it)."""


@dataclasses.dataclass(frozen=True)
class MetaWorld:
    """Export a MetaWorld dataset (collected as experiments/metaworld.py does) with rendered frames."""

    env: str
    """MetaWorld v3 task, e.g. drawer-open."""
    out: pathlib.Path
    """Output directory (must not exist)."""
    num_episodes: int = 120
    """Episodes (the same data as experiments/metaworld.py --num-episodes)."""
    collection_horizon: int = 250
    """Steps per episode."""
    data_seed: int = 0
    """Seed of the data."""
    frames: Literal["npy", "video"] = "npy"
    """npy: lossless frames (keyframe images identical to the MetaWorld path's); video: H.264 mp4
    per episode, like a real recording."""
    cache_dir: pathlib.Path = pathlib.Path("data")
    """Dataset cache shared with experiments/metaworld.py."""
    workers: int | None = None
    """Rendering and collection processes (default: all cores)."""


@dataclasses.dataclass(frozen=True)
class Check:
    """Validate a recorded dataset and print what it holds."""

    path: pathlib.Path
    """The dataset directory."""


Command = (Annotated[LeRobot, tyro.conf.subcommand("lerobot")]
           | Annotated[Minari, tyro.conf.subcommand("minari")]
           | Annotated[MetaWorld, tyro.conf.subcommand("metaworld")]
           | Annotated[Check, tyro.conf.subcommand("check")])


def describe(path: pathlib.Path) -> str:
    ds = load_recorded(path)
    lengths = ds.episode_lengths
    cameras = ", ".join(f"{c.name} ({c.storage} {c.width}x{c.height})" for c in ds.cameras.values()) or "none"
    return (f"{path}: {ds.num_steps} steps in {ds.num_episodes} episodes (length {lengths.min()}-{lengths.max()}), "
            f"observations {ds.observations.shape[1]}, actions {ds.actions.shape[1]}, fps {ds.fps:g}, "
            f"cameras {cameras}, rewards {'yes' if ds.rewards is not None else 'no'}, "
            f"successes {'yes' if ds.successes is not None else 'no'}, task text {ds.task_text!r}")


def main(command: Command) -> pathlib.Path:
    t0 = time.perf_counter()
    if isinstance(command, Check):
        print(describe(command.path))
        return command.path
    if isinstance(command, LeRobot):
        from plare_jax.data.importers import import_lerobot

        out = import_lerobot(command.src, command.out, state_key=command.state_key,
                             action_key=command.action_key, cameras=command.cameras,
                             task_text=command.task_text, link_videos=command.link_videos)
    elif isinstance(command, Minari):
        from plare_jax.data.importers import import_minari

        out = import_minari(command.dataset, command.out, task_text=command.task_text,
                            observation_keys=command.observation_keys, camera_keys=command.camera_keys,
                            fps=command.fps)
    else:
        from plare_jax.envs.collect import CollectionConfig, collect_dataset
        from plare_jax.envs.to_recorded import export_metaworld

        ds = collect_dataset(CollectionConfig(task=command.env, num_episodes=command.num_episodes,
                                              horizon=command.collection_horizon, seed=command.data_seed),
                             cache_dir=command.cache_dir / "datasets", workers=command.workers)
        out = export_metaworld(ds, command.out, frames=command.frames, workers=command.workers)
    print(f"wrote {out} in {time.perf_counter() - t0:.1f} s")
    print(describe(out))
    return out


def parse_args(argv: list[str] | None = None) -> Command:
    """The subcommand and its options (argv: None = the command line)."""
    return tyro.cli(Command, args=argv, description=__doc__)


def cli(argv: list[str] | None = None) -> int:
    command = parse_args(argv)
    return exit_on_user_error(lambda: main(command))


if __name__ == "__main__":
    sys.exit(cli())
