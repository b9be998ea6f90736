"""Whole runs per hour: N training seeds one at a time vs --batch-seeds, side by side in one command.

A "run" is one (task, data seed, training seed) of the experiment: the shared BC phase, every
method's second phase, and every evaluation in MetaWorld (periodic --eval-episodes, final
--final-eval-episodes), exactly what `experiments/metaworld.py` does after its data and labels.
Both modes go through the pipeline's own training stage (`pipeline.train`) on the same cached data
and labels:
- `sequential`: `train_seed` for each seed, one after the other (the default CLI);
- `batched`: `train_seeds(..., batched=True)`, all seeds as one stacked, vmapped program, every
  seed's evaluation episodes stepped in one pass over the workers (`--batch-seeds`).

Each mode runs in a fresh process (its compilations included, as a user's run pays them), into
its own run directory. Reported per mode: wall seconds, runs per hour (N x 3600 / wall), the
batched / sequential ratio, the CPU share other processes took meanwhile (the run's own
evaluation workers count as its own; BUSY above --quiet-threshold: then read the ratio, not the
absolute rates), and each seed's final success rate per method. The two modes start each seed from
the same parameters and keys, but they are not bit-identical runs: the batched matmuls round
differently (1e-8 after 100 updates), and training amplifies that over thousands of updates, so
the per-seed numbers are two draws of the same run, equal in distribution, not in value.

    python benchmarks/runs_per_hour.py                       # sweep-into, 3 seeds, quick preset (~15 min on 2 cores)
    python benchmarks/runs_per_hour.py --tiny                # seconds (tests)
    python benchmarks/runs_per_hour.py --seeds-list 1 8 64   # on a GPU: how runs/hour grows with N
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import sys
import tempfile
import time
from typing import Annotated, Literal

if __package__ in (None, ""):  # run as `python benchmarks/runs_per_hour.py`: make `benchmarks` importable
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))

import tyro

from benchmarks.common import cpu_sample, cpu_share, default_out, machine_info, markdown_table, run_isolated, write_json

MODES = ("sequential", "batched")


@dataclasses.dataclass(frozen=True)
class RunsPerHourConfig:
    """Whole experiment runs (training + evaluation) per hour, seeds one at a time vs batched."""

    env: str = "sweep-into"
    """MetaWorld task of the runs."""
    data_seed: int = 0
    """Data seed of the (cached) data and labels all runs share (a timing, not a result: dev data is fine)."""
    seeds_list: tuple[int, ...] = (3,)
    """Numbers of training seeds N to time in both modes (e.g. 1 8 64 on a GPU)."""
    modes: tuple[Literal["sequential", "batched"], ...] = MODES
    """sequential (train_seed per seed) and/or batched (train_seeds, --batch-seeds)."""
    method: tuple[str, ...] = ("plare", "rlvlmf", "sft", "bc")
    """Methods of every run (default: the quick main job's, `experiments/metaworld.py --method plare rlvlmf sft bc`)."""
    bc_steps: int | None = None
    """BC-phase updates (default: the quick preset's 3000; 20 with --tiny)."""
    method_steps: Annotated[int | None, tyro.conf.arg(aliases=("--cpl-steps",))] = None
    """Second-phase updates of each method (default: the quick preset's 3000; 20 with --tiny)."""
    eval_episodes: int | None = None
    """Episodes of each periodic evaluation (default: the quick preset's 25; 2 with --tiny)."""
    final_eval_episodes: int | None = None
    """Episodes of each method's final evaluation (default 100; 2 with --tiny)."""
    tiny: bool = False
    """A smoke run (reach, 4 episodes of data, 32-wide MLP, 20 + 20 updates, 2-episode evaluations,
    rlvlmf's reward model and critics 50 updates each)."""
    quiet_threshold: float = 0.05
    """A mode is marked BUSY when other processes used more than this share of all CPUs meanwhile."""
    compare_only: bool = False
    """Train nothing: add the policy gaps between the two modes' run directories already in
    --work-dir (from an earlier run of this command) to the JSON at --out."""
    work_dir: pathlib.Path | None = None
    """Where the data cache and both modes' run directories go (default: a temporary folder)."""
    out: pathlib.Path | None = None
    """JSON output path (default benchmarks/out/runs_per_hour.json)."""

    def __post_init__(self):
        if not self.seeds_list or any(n < 1 for n in self.seeds_list):
            raise ValueError(f"--seeds-list needs numbers >= 1, got {self.seeds_list}")
        if not self.modes or not self.method:
            raise ValueError("need at least one mode and one method")


def experiment_config(cfg: RunsPerHourConfig, cache_dir: pathlib.Path, seeds: tuple[int, ...]):
    from plare_jax.methods import rlvlmf
    from plare_jax.pipeline.config import ExperimentConfig, MethodOptions, validate

    sizes = dict(env=(cfg.env,), labeler="scripted", video=False, seeds=seeds, data_seeds=(cfg.data_seed,),
                 method=tuple(cfg.method), cache_dir=cache_dir, batch_seeds=True)
    if cfg.tiny:
        sizes.update(env=("reach",), num_episodes=4, collection_horizon=60, num_pairs=24, segment_length=16,
                     hidden_dims=(32, 32), batch_pairs=8, bc_batch_size=64, bc_steps=20, method_steps=20,
                     metrics_every=10, eval_every=20, eval_episodes=2, final_eval_episodes=2, eval_horizon=30,
                     warmup_steps=5, workers=1,
                     methods=dataclasses.replace(MethodOptions(), rlvlmf=dataclasses.replace(
                         rlvlmf.QUICK, reward_steps=50, critic_pretrain_steps=50, batch_size=32)))
    for name in ("bc_steps", "method_steps", "eval_episodes", "final_eval_episodes"):
        if getattr(cfg, name) is not None:
            sizes[name] = getattr(cfg, name)
    config = dataclasses.replace(ExperimentConfig(), **sizes)
    validate(config)  # refuses unbatchable methods before any work
    return config


def prepare_data(cfg: RunsPerHourConfig, cache_dir: pathlib.Path):
    """The run's data and labels (collected and labelled once, then read from the cache)."""
    from plare_jax.pipeline.run import prepare_task
    from plare_jax.pipeline.labels import choose_labeler

    config = experiment_config(cfg, cache_dir, (0,))
    return prepare_task(config, choose_labeler(config), config.tasks[0], cfg.data_seed, None)


def mode_row(cfg: RunsPerHourConfig, mode: str, n: int, work_dir: pathlib.Path) -> dict:
    """One mode's whole runs of seeds 0..N-1, timed (in its own process unless --tiny)."""
    from plare_jax.pipeline.train import train_seed, train_seeds

    data = prepare_data(cfg, work_dir / "cache")  # cached: seconds
    seeds = tuple(range(n))
    config = experiment_config(cfg, work_dir / "cache", seeds)
    run_dir = work_dir / f"{mode}-{n}"
    units = [run_dir / f"seed{s}" for s in seeds]
    before = cpu_sample()
    t0 = time.perf_counter()
    if mode == "batched":
        results = train_seeds(config, data, seeds, units, batched=True)
    else:
        results = [train_seed(config, data, s, u) for s, u in zip(seeds, units)]
    wall = time.perf_counter() - t0
    share = cpu_share(before, cpu_sample())
    return {
        "mode": mode, "seeds": n, "wall_s": wall, "runs_per_hour": n * 3600.0 / wall,
        "others_cpu_share": share["others_cpu_share"], "own_cores": share["own_cores"],
        "busy": share["others_cpu_share"] is not None and share["others_cpu_share"] > cfg.quiet_threshold,
        "final_success": {m: [r["methods"][m]["success_rate"] for r in results] for m in cfg.method},
    }


def policy_gaps(cfg: RunsPerHourConfig, work_dir: pathlib.Path, n: int) -> dict[str, list[float]]:
    """Per method, per seed: max |batched - sequential| over the final policy parameters, relative to
    the sequential policy's largest |parameter| (0 = the same policy)."""
    import jax
    import numpy as np

    from plare_jax.methods import get_method
    from plare_jax.pipeline.train import restore_final_state

    data = prepare_data(cfg, work_dir / "cache")
    config = experiment_config(cfg, work_dir / "cache", tuple(range(n)))
    gaps: dict[str, list[float]] = {}
    for name in cfg.method:
        method = get_method(name)
        for seed in range(n):
            leaves = [[np.asarray(x) for x in jax.tree.leaves(method.policy_params(
                restore_final_state(config, data, name, seed, work_dir / f"{mode}-{n}" / f"seed{seed}")))]
                for mode in ("sequential", "batched")]
            scale = max(float(np.max(np.abs(x))) for x in leaves[0])
            gaps.setdefault(name, []).append(max(float(np.max(np.abs(x - y))) for x, y in zip(*leaves)) / scale)
    return gaps


def add_policy_gaps(cfg: RunsPerHourConfig, payload: dict, work_dir: pathlib.Path) -> dict:
    """Each batched row gets `policy_gaps` against the sequential row of the same N."""
    modes = {(r["mode"], r["seeds"]) for r in payload["rows"]}
    for row in payload["rows"]:
        if row["mode"] == "batched" and ("sequential", row["seeds"]) in modes:
            row["policy_gaps"] = policy_gaps(cfg, work_dir, row["seeds"])
    return payload


def run(cfg: RunsPerHourConfig) -> dict:
    with tempfile.TemporaryDirectory(prefix="runs-per-hour-") as tmp:
        work_dir = pathlib.Path(cfg.work_dir or tmp)
        prepare_data(cfg, work_dir / "cache")  # collection and labels before any timing
        rows = []
        for n in cfg.seeds_list:
            for mode in cfg.modes:
                row = mode_row(cfg, mode, n, work_dir) if cfg.tiny else run_isolated(
                    mode_row, cfg, mode, n, work_dir, timeout_s=6 * 3600)
                rows.append(row)
        by_key = {(r["mode"], r["seeds"]): r for r in rows}
        for row in rows:
            sequential = by_key.get(("sequential", row["seeds"]))
            row["batched_vs_sequential"] = (row["runs_per_hour"] / sequential["runs_per_hour"]
                                            if row["mode"] == "batched" and sequential else None)
            row["busy_mark"] = "BUSY" if row["busy"] else ""
        payload_rows = add_policy_gaps(cfg, {"rows": rows}, work_dir)["rows"]
    import jax

    device = jax.devices()[0]
    config = {k: (str(v) if isinstance(v, pathlib.Path) else v) for k, v in dataclasses.asdict(cfg).items()}
    return {"benchmark": "runs_per_hour", "config": config,
            "device": {"platform": device.platform, "device_kind": device.device_kind},
            "machine": machine_info(extra_packages=("optax", "mujoco")), "rows": payload_rows}


COLUMNS = [("mode", "mode"), ("seeds", "seeds"), ("wall_s", "wall s"), ("runs_per_hour", "runs/hour"),
           ("batched_vs_sequential", "batched / sequential"), ("own_cores", "own cores"),
           ("others_cpu_share", "others' CPU"), ("busy_mark", "busy")]


def main(cfg: RunsPerHourConfig) -> dict:
    out = pathlib.Path(cfg.out or default_out("runs_per_hour"))
    if cfg.compare_only:
        if cfg.work_dir is None or not out.exists():
            raise SystemExit("--compare-only needs the --work-dir and --out of an earlier run")
        payload = add_policy_gaps(cfg, json.loads(out.read_text()), cfg.work_dir)
    else:
        payload = run(cfg)
    path = write_json(out, payload)
    print(markdown_table(payload["rows"], COLUMNS))
    for row in payload["rows"]:
        print(f"{row['mode']} x{row['seeds']} final success: {row['final_success']}")
        if "policy_gaps" in row:
            print("  final policies, max |batched - sequential| / max |sequential|: "
                  + ", ".join(f"{m} {' '.join(f'{g:.2g}' for g in gaps)}" for m, gaps in row["policy_gaps"].items()))
    print(f"\ndevice: {payload['device']['device_kind']}; JSON: {path}")
    return payload


def parse_args(argv: list[str] | None = None) -> RunsPerHourConfig:
    """The options of this script (argv: None = the command line)."""
    return tyro.cli(RunsPerHourConfig, args=argv, description=__doc__)


if __name__ == "__main__":
    main(parse_args())
