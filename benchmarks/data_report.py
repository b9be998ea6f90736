"""Measures collection speed, success rate and return spread of the offline data per task.

Usage: python benchmarks/data_report.py [--episodes 100] [--horizon 250] [--workers 2]
Collects into a temporary cache (so the timing is a real collection), prints one line per task,
with how often return labels agree with progress labels on random 64-step segment pairs.
"""

from __future__ import annotations

import argparse
import tempfile
import time

import numpy as np

from plare_jax.data.segments import sample_segment_pairs
from plare_jax.envs.collect import CollectionConfig, collect_dataset
from plare_jax.labeling.scripted import preferences_from_scores

PAPER_TASKS = ("sweep-into", "drawer-open", "door-open", "plate-slide")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The options of this script (argv: None = the command line)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", nargs="+", default=list(PAPER_TASKS), help="MetaWorld v3 tasks")
    parser.add_argument("--episodes", type=int, default=100, help="episodes per task")
    parser.add_argument("--horizon", type=int, default=250, help="steps per episode")
    parser.add_argument("--workers", type=int, default=2, help="collection processes")
    parser.add_argument("--seed", type=int, default=0, help="data seed")
    parser.add_argument("--stretch-prob", type=float, default=None, help="override the per-task default")
    parser.add_argument("--decoy-prob", type=float, default=None, help="override the per-task default")
    parser.add_argument("--misperceive-prob", type=float, default=None, help="override the per-task default")
    parser.add_argument("--pairs", type=int, default=2000,
                        help="random 64-step segment pairs on which return and progress labels are compared")
    args = parser.parse_args(argv)
    if args.episodes < 1 or args.horizon < 64 or args.workers < 1 or args.pairs < 1:
        parser.error("--episodes, --workers and --pairs must be >= 1, --horizon >= 64 (one segment)")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    print("task          eps  steps/s  success  ret min / q25 / median / q75 / max  stretch decoy misperceive  return~progress")
    with tempfile.TemporaryDirectory() as cache:
        for task in args.tasks:
            config = CollectionConfig(
                task, num_episodes=args.episodes, horizon=args.horizon, seed=args.seed, stretch_prob=args.stretch_prob,
                decoy_prob=args.decoy_prob, misperceive_prob=args.misperceive_prob,
            )
            started = time.perf_counter()
            ds = collect_dataset(config, cache_dir=cache, workers=args.workers, progress=False)
            elapsed = time.perf_counter() - started
            pairs = sample_segment_pairs(ds, args.pairs, segment_length=64, rng=np.random.default_rng(args.seed))
            # How often the classic return teacher agrees with the progress teacher on random pairs.
            agreement = np.mean(preferences_from_scores(pairs.returns) == preferences_from_scores(pairs.progress))
            r = ds.episode_returns
            q = np.quantile(r, [0, 0.25, 0.5, 0.75, 1.0])
            print(
                f"{task:12s} {ds.num_episodes:4d} {ds.num_steps / elapsed:8.0f}  {ds.episode_success.mean():6.2f}"
                f"   {q[0]:6.0f} / {q[1]:6.0f} / {q[2]:6.0f} / {q[3]:6.0f} / {q[4]:6.0f}   {config.resolved_stretch_prob}  {config.resolved_decoy_prob}  "
                f"{config.resolved_misperceive_prob}  {agreement:.2f}",
                flush=True,
            )


if __name__ == "__main__":
    main()
