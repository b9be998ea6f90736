"""Proof on data we can check: the recorded-data path reproduces the MetaWorld path exactly.

    python experiments/offline_equivalence.py --env drawer-open

1. Runs the MetaWorld experiment (plare_jax.pipeline.run: collect, pairs, scripted-teacher labels,
   BC phase, plare and bc, evaluation in MetaWorld).
2. Exports the same MetaWorld dataset to the recorded format (one rendered frame per step, rewards
   and success flags carried over) and runs the recorded-data pipeline on it (run_offline) with
   the scripted teacher on the stored rewards, no held-out split and no normalisation.
3. Checks that both produce the same pairs, the same labels, the same training arrays and the same
   keyframe images (so the same VLM label keys), and -- same seed, same steps -- bit-identical
   trained parameters for every method.
4. Evaluates the exported numpy policy (policy.npz via plare_policy.load_policy) in MetaWorld on
   the MetaWorld path's evaluation episodes.

Prints and writes OUT_DIR/equivalence.json.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import sys
import time
from typing import Annotated

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _HERE]

import numpy as np  # noqa: E402
import tyro  # noqa: E402

import plare_jax.envs  # noqa: E402,F401  (sets MUJOCO_GL before mujoco is imported)


@dataclasses.dataclass(frozen=True)
class EquivalenceConfig:
    """Run the MetaWorld path and the recorded-data path on the same data and compare them."""

    env: str = "drawer-open"
    """MetaWorld v3 task."""
    num_episodes: int = 40
    """Episodes of offline data."""
    collection_horizon: int = 250
    """Steps per episode."""
    num_pairs: int = 500
    """Labelled segment pairs."""
    segment_length: int = 64
    """Steps per segment."""
    num_keyframes: int = 3
    """Keyframes per segment image (compared between the two paths)."""
    image_pairs: int = 20
    """Pairs whose keyframe images are compared byte for byte."""
    hidden_dims: tuple[int, ...] = (256, 256)
    """Policy MLP widths."""
    bc_steps: int = 1500
    """Shared BC-phase steps."""
    method_steps: Annotated[int, tyro.conf.arg(aliases=("--cpl-steps",))] = 1500
    """Second-phase steps."""
    eval_every: int = 1500
    """Evaluation period (steps)."""
    eval_episodes: int = 10
    """MetaWorld evaluation episodes."""
    seed: int = 0
    """Training seed (data seed 0)."""
    out_dir: pathlib.Path = pathlib.Path("runs/offline_equivalence")
    """Where both runs and the exported dataset go (must not exist)."""
    cache_dir: pathlib.Path = pathlib.Path("data")
    """Dataset cache shared with experiments/metaworld.py."""
    workers: int | None = None
    """Processes for collection, rendering and evaluation (default: all cores)."""


def main(cfg: EquivalenceConfig) -> dict:
    from plare_jax.data.recorded import load_recorded, recorded_pair_images
    from plare_jax.envs.collect import collect_dataset
    from plare_jax.envs.evaluate import evaluate_policy
    from plare_jax.pipeline.train import evaluation_seed
    from plare_jax.envs.to_recorded import export_metaworld
    from plare_jax.envs.render import RenderConfig, render_pair_images
    from plare_jax.export import load_policy
    from plare_jax.pipeline.config import ExperimentConfig
    from plare_jax.pipeline.labels import LabelerChoice
    from plare_jax.pipeline.offline import OfflineConfig, prepare_data, run_offline
    from plare_jax.pipeline.train import restore_final_state
    from plare_jax.pipeline.run import collection_config, prepare_task
    from plare_jax.pipeline.run import run as run_metaworld
    from plare_jax.pipeline.run import unit_dir
    from plare_jax.envs.tasks import resolve_task

    if cfg.out_dir.exists():
        raise FileExistsError(f"{cfg.out_dir} exists; choose another --out-dir")
    task = resolve_task(cfg.env)
    methods = ("plare", "bc")
    shared = dict(method=methods, seeds=(cfg.seed,), labeler="scripted", num_pairs=cfg.num_pairs,
                  segment_length=cfg.segment_length, num_keyframes=cfg.num_keyframes,
                  hidden_dims=cfg.hidden_dims, bc_steps=cfg.bc_steps, method_steps=cfg.method_steps,
                  eval_every=cfg.eval_every, cache_dir=cfg.cache_dir, out_dir=cfg.out_dir)
    timings = {}

    t0 = time.perf_counter()
    mw_config = ExperimentConfig(env=(cfg.env,), num_episodes=cfg.num_episodes,
                                 collection_horizon=cfg.collection_horizon, data_seeds=(0,),
                                 eval_episodes=cfg.eval_episodes, final_eval_episodes=cfg.eval_episodes,
                                 video=False, run_name="metaworld",
                                 workers=cfg.workers, **shared)
    mw_results = run_metaworld(mw_config)
    timings["metaworld_path_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    # The MetaWorld run's own collection (same options, data seed 0), so both paths see one dataset.
    dataset = collect_dataset(collection_config(mw_config, task, 0),
                              cache_dir=cfg.cache_dir / "datasets", workers=cfg.workers)
    recorded_dir = export_metaworld(dataset, cfg.out_dir / "data", workers=cfg.workers)
    timings["export_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    off_config = OfflineConfig(data=recorded_dir, holdout_fraction=0.0, obs_norm="none",
                               action_scaling="none", run_name="recorded", **shared)
    run_offline(off_config)
    timings["recorded_path_s"] = time.perf_counter() - t0

    # The data stage of both paths, side by side (both are cached or instant now).
    scripted = LabelerChoice("scripted", "equivalence check")
    mw_data = prepare_task(mw_config, scripted, task, 0, None)
    recorded = load_recorded(recorded_dir)
    off_data = prepare_data(off_config, recorded, recorded.task_text, scripted, None)
    a, b = mw_data.training, off_data.training
    checks = {
        "same_pairs": bool(np.array_equal(a.pair_rows[:, :, 0], off_data.kept.pairs.starts)),
        "same_labels": bool(np.array_equal(a.labels, b.labels) and np.array_equal(a.weights, b.weights)),
        "same_training_arrays": all(
            np.array_equal(getattr(a, f.name), getattr(b, f.name))
            for f in dataclasses.fields(a) if f.name != "episode_scores"),
    }
    some = off_data.kept.pairs.take(np.arange(min(cfg.image_pairs, off_data.kept.pairs.num_pairs)))
    rendered = render_pair_images(dataset, some, RenderConfig(num_keyframes=cfg.num_keyframes),
                                  workers=1, progress=False)
    stored = recorded_pair_images(recorded, some, num_keyframes=cfg.num_keyframes)
    checks["same_keyframe_images"] = bool(np.array_equal(rendered, stored))

    params = {}
    for method in methods:
        mw_state = restore_final_state(off_config, off_data, method, cfg.seed,
                                       unit_dir(cfg.out_dir / "metaworld", task, 0, cfg.seed))
        off_state = restore_final_state(off_config, off_data, method, cfg.seed,
                                        cfg.out_dir / "recorded" / f"seed{cfg.seed}")
        leaves_a = [np.asarray(x) for x in _leaves(mw_state.params)]
        leaves_b = [np.asarray(x) for x in _leaves(off_state.params)]
        params[method] = {
            "identical": all(np.array_equal(x, y) for x, y in zip(leaves_a, leaves_b)),
            "max_abs_difference": float(max(np.abs(x - y).max() for x, y in zip(leaves_a, leaves_b))),
            "steps": [int(mw_state.step), int(off_state.step)],
        }
    checks["same_trained_params"] = all(p["identical"] for p in params.values())

    t0 = time.perf_counter()
    evaluation = {}
    for method in methods:
        policy = load_policy(cfg.out_dir / "recorded" / f"seed{cfg.seed}" / "export" / method / "policy.npz")
        # The episodes the MetaWorld path's reported evaluation ran (its layout stream and count).
        result = evaluate_policy(task, policy.act, num_episodes=mw_config.final_eval_episodes,
                                 horizon=mw_config.eval_horizon, seed=evaluation_seed(0, cfg.seed),
                                 workers=cfg.workers, progress=False)
        mw_final = mw_results["tasks"][task]["methods"][method]["runs"][0]
        evaluation[method] = {"exported_policy_success": result.success_rate,
                              "metaworld_path_success": mw_final["success_rate"],
                              "exported_policy_mean_return": result.mean_return,
                              "metaworld_path_mean_return": mw_final["mean_return"]}
    timings["evaluation_s"] = time.perf_counter() - t0
    summary = {"task": task, "checks": checks, "params": params, "evaluation_in_metaworld": evaluation,
               "config": {k: (str(v) if isinstance(v, pathlib.Path) else v)
                          for k, v in dataclasses.asdict(cfg).items()},
               "timings": timings, "all_equal": all(checks.values())}
    (cfg.out_dir / "equivalence.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps({"checks": checks, "params": params, "evaluation_in_metaworld": evaluation}, indent=2))
    return summary


def _leaves(tree):
    import jax

    return jax.tree.leaves(tree)


def parse_args(argv: list[str] | None = None) -> EquivalenceConfig:
    """The options of this script (argv: None = the command line)."""
    return tyro.cli(EquivalenceConfig, args=argv, description=__doc__)


if __name__ == "__main__":
    result = main(parse_args())
    sys.exit(0 if result["all_equal"] else 1)
