"""Calibrates the offline data mix of one task: data success per mode, and optionally BC on it.

Usage (develop on data seed 0 only; seeds 1 and 2 are kept for the reported tables):

    python benchmarks/calibrate_data.py --task drawer-open \\
        --misperceive-prob 0.5 --misperceive-offset 0 0 0.06 --bc --train-seeds 0

Collects `--episodes` episodes with the given generation mix (per-task defaults for anything not
given), prints the success-ever rate overall and split by mode (plain / decoy / misperceived),
and with `--bc` trains behaviour cloning on the data with the quick preset's learner settings
(2x256 MLP, dropout 0.25, lr 3e-4 with 500 warm-up steps, 1024 rows per step; 6,000 steps = the
quick preset's 3k shared + 3k BC steps) and evaluates it the way experiments/metaworld.py does
(evaluation seed 10,000 + training seed, 250 steps, success = ever). One JSON line per run is
appended to `--out` (default benchmarks/out/calibrate_data.jsonl).
"""

from __future__ import annotations

import argparse
import json
import pathlib
import tempfile
import time

import numpy as np

from plare_jax.envs.collect import CollectionConfig, collect_dataset

OUT = pathlib.Path(__file__).resolve().parent / "out" / "calibrate_data.jsonl"


def success_by_mode(dataset) -> dict[str, dict[str, float]]:
    """Success-ever rate and episode count overall and per mode, from the dataset card."""
    success = dataset.episode_success
    decoy = set(dataset.card["decoy_episodes"])
    misperceived = set(dataset.card["misperceived_episodes"])
    groups = {
        "all": range(len(success)),
        "plain": [i for i in range(len(success)) if i not in decoy and i not in misperceived],
        "decoy": sorted(decoy),
        "misperceived": sorted(misperceived),
    }
    return {name: {"episodes": len(index), "success": float(np.mean(success[list(index)])) if len(index) else None}
            for name, index in groups.items()}


def train_and_evaluate_bc(dataset, task: str, *, seed: int, steps: int, eval_episodes: int, workers: int) -> float:
    """Final success rate of BC trained on the dataset with the quick preset's learner settings."""
    import jax  # here, so that collection-only runs do not load JAX

    from plare_jax.envs.evaluate import evaluate_policy
    from plare_jax.learner import LearnerConfig, LearnerState, TransitionData, make_policy_fn, start_phase, train

    config = LearnerConfig(hidden_dims=(256, 256), dropout_rate=0.25, learning_rate=3e-4, warmup_steps=500,
                           bc_batch_size=1024)
    data = TransitionData.create(dataset.observations, dataset.actions)
    state = start_phase(LearnerState.create(jax.random.key(seed), config, obs_dim=39, act_dim=4), "bc")
    state, _ = train(state, data, jax.random.key(seed), steps, phase="bc", metrics_every=100)
    result = evaluate_policy(task, make_policy_fn(state), num_episodes=eval_episodes, horizon=250,
                             seed=10_000 + seed, workers=workers, progress=False)
    return float(result.success_rate)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The options of this script (argv: None = the command line)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", required=True, help="MetaWorld v3 task, e.g. drawer-open")
    parser.add_argument("--episodes", type=int, default=120, help="episodes (the quick preset collects 120)")
    parser.add_argument("--horizon", type=int, default=250, help="steps per episode")
    parser.add_argument("--seed", type=int, default=0, help="data seed (calibrate on 0 only)")
    parser.add_argument("--stretch-prob", type=float, default=None, help="override the per-task default")
    parser.add_argument("--action-noise", type=float, default=None, help="override the default 0.1")
    parser.add_argument("--decoy-prob", type=float, default=None, help="override the per-task default")
    parser.add_argument("--misperceive-prob", type=float, default=None, help="override the per-task default")
    parser.add_argument("--misperceive-offset", type=float, nargs=3, default=None, metavar=("X", "Y", "Z"),
                        help="perceived object offset in metres (override the per-task default)")
    parser.add_argument("--bc", action="store_true", help="also train and evaluate BC on the data")
    parser.add_argument("--train-seeds", type=int, nargs="+", default=[0], help="BC training seeds")
    parser.add_argument("--bc-steps", type=int, default=6000, help="BC update steps (quick preset: 3k + 3k)")
    parser.add_argument("--eval-episodes", type=int, default=25, help="evaluation episodes per BC seed")
    parser.add_argument("--workers", type=int, default=2, help="collection and evaluation processes")
    parser.add_argument("--cache-dir", type=pathlib.Path, default=None,
                        help="dataset cache (default: a temporary folder, removed after the run)")
    parser.add_argument("--out", type=pathlib.Path, default=OUT, help="JSON lines file the result is appended to")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    overrides = {"stretch_prob": args.stretch_prob, "decoy_prob": args.decoy_prob,
                 "misperceive_prob": args.misperceive_prob,
                 "misperceive_offset": None if args.misperceive_offset is None else tuple(args.misperceive_offset)}
    if args.action_noise is not None:
        overrides["action_noise"] = args.action_noise
    config = CollectionConfig(args.task, num_episodes=args.episodes, horizon=args.horizon, seed=args.seed,
                              **overrides)
    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        dataset = collect_dataset(config, cache_dir=args.cache_dir or tmp, workers=args.workers)
        collect_s = time.perf_counter() - started
        by_mode = success_by_mode(dataset)
        resolved = config.resolved()
        print(f"{config.task_id} seed {config.seed}: stretch {resolved['stretch_prob']} "
              f"noise {resolved['action_noise']} decoy {resolved['decoy_prob']} misperceive {resolved['misperceive_prob']} "
              f"offset {resolved['misperceive_offset']} ({collect_s:.0f} s)")
        for name, group in by_mode.items():
            if group["episodes"]:
                print(f"  data success {name:12s} {group['success']:.2f} over {group['episodes']} episodes")
        bc = {}
        if args.bc:
            for seed in args.train_seeds:
                started = time.perf_counter()
                bc[seed] = train_and_evaluate_bc(dataset, config.task_id, seed=seed, steps=args.bc_steps,
                                                 eval_episodes=args.eval_episodes, workers=args.workers)
                print(f"  BC seed {seed}: {bc[seed]:.2f} over {args.eval_episodes} episodes "
                      f"({time.perf_counter() - started:.0f} s)", flush=True)
    record = {"config": resolved, "data_success": by_mode, "bc_success": bc, "bc_steps": args.bc_steps if bc else None,
              "eval_episodes": args.eval_episodes if bc else None,
              "command_args": {k: (str(v) if isinstance(v, pathlib.Path) else v) for k, v in vars(args).items()}}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with args.out.open("a") as f:
        f.write(json.dumps(record) + "\n")


if __name__ == "__main__":
    main()
