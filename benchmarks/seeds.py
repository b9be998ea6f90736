"""Seeds per hour: N seeds trained one at a time vs as one batched program, side by side.

Rows, each in its own process (peak host memory per row), for every preset x phase x N:
- `sequential`: N ordinary `LearnerState`s, each advanced by `learner.train` (K updates per call,
  one host sync per call), one seed after the other: what the pipeline does today, seed by seed.
- `batched`: one stacked state of N seeds advanced by `batched.train_batched` (the same scanned
  update vmapped over the seed axis, the data shared): one call and one host sync per K updates
  of all N seeds.

Both modes run the same updates on the same synthetic data (obs 39, act 4, segments of 64 steps,
1000 pairs, as benchmarks/training.py), and both block on every call. A row first runs one call
(the compilation, reported as "compile s") and, sequential, one untimed call of every other seed
(a new state's first call costs extra), then whole rounds (every seed advanced by K updates)
until `--seconds` have passed. Reported: updates per second of each seed ("steps/s per seed"),
updates per second summed over the seeds ("seed-steps/s"), batched / sequential at the same N,
throughput against N = 1 of the same mode, and runs per hour (seed-steps/s x 3600 / the steps of
one run: the quick preset's 6,000 for `cpu`, the paper preset's 500,000 for `reference`; training
updates only, at this phase's rate: no evaluation, no data collection).

Quiet machine: each timed block reads /proc/stat and its own CPU time before and after it
(benchmarks/common.py); rows where other processes used more than `--quiet-threshold` of the
CPUs are marked BUSY: their absolute rates are lower bounds, and since both modes share the
cores with the same neighbours the ratio is the more robust figure (still, read it with care).

    python benchmarks/seeds.py                                   # cpu preset, N = 1 3 8 (minutes on 2 cores)
    python benchmarks/seeds.py --tiny                            # seconds (tests)
    python benchmarks/seeds.py --presets reference --seeds-list 1 8 64 --steps 100   # on a GPU
"""

from __future__ import annotations

import dataclasses
import pathlib
import sys
import time
from typing import Any, Literal

if __package__ in (None, ""):  # run as `python benchmarks/seeds.py`: make `benchmarks` importable
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))

import numpy as np
import tyro
from tqdm.auto import tqdm

from benchmarks.common import (
    cpu_sample,
    cpu_share,
    default_out,
    jax_device_memory,
    machine_info,
    markdown_table,
    peak_rss_mib,
    run_isolated,
    wait_until_quiet,
    write_json,
)
from benchmarks.training import TINY_WORKLOADS, WORKLOADS, Workload, _synthetic_pairs

Mode = Literal["sequential", "batched"]
MODES: tuple[str, ...] = ("sequential", "batched")
# Updates of one run, for runs/hour: the quick preset's 3,000 BC + 3,000 CPL steps
# (plare_jax.pipeline.config.ExperimentConfig) for the CPU preset; the paper preset's
# 200,000 BC + 300,000 CPL steps (experiments/metaworld.py PAPER) for the reference config.
RUN_STEPS = {"cpu": 6_000, "reference": 500_000}


@dataclasses.dataclass(frozen=True)
class SeedsBenchConfig:
    """Training N seeds one at a time vs batched (seeds as a vmapped batch axis): runs per hour."""

    presets: tuple[Literal["cpu", "reference"], ...] = ("cpu",)
    """Learner configurations (cpu: learner.CPU_CONFIG, 2x256, 32 pairs; reference: 2x512, 96 pairs)."""
    seeds_list: tuple[int, ...] = (1, 3, 8)
    """Numbers of seeds N to time (each in both modes); on a GPU e.g. 1 8 64."""
    modes: tuple[Mode, ...] = MODES
    """sequential (learner.train seed after seed) and/or batched (batched.train_batched)."""
    phases: tuple[Literal["bc", "cpl"], ...] = ("cpl",)
    """Training phases to time (cpl: the CPL update on segment pairs; bc: behaviour cloning rows)."""
    steps: int | None = None
    """K, updates per seed per call (one host sync per call); default: the preset's
    benchmarks/training.py value (cpu 50, reference 10; 4 with --tiny)."""
    seconds: float | None = None
    """Minimum timed seconds per row, after the compile call (default 5; 0.1 with --tiny); whole rounds only."""
    repeats: int = 1
    """Run every row this many times, interleaved; the table shows the median."""
    run_steps: int | None = None
    """Updates of one run for the runs/hour column (default: 6,000 for cpu, the quick preset;
    500,000 for reference, the paper preset)."""
    tiny: bool = False
    """Tiny sizes (32-wide MLP, 8 pairs x 16 steps, K = 4, 0.1 s per row, rows in this process): a smoke run."""
    quiet_threshold: float = 0.05
    """A timed row is marked BUSY when other processes used more than this share of all CPUs meanwhile."""
    wait_quiet_s: float = 0.0
    """Before each row, wait up to this many seconds for a 3 s window below --quiet-threshold (0: do not wait;
    ignored with --tiny)."""
    row_timeout_s: float = 900.0
    """Wall-clock limit of one row's process."""
    out: pathlib.Path | None = None
    """JSON output path (default benchmarks/out/seeds.json)."""
    seed: int = 0
    """Seed of the synthetic data; seed i of a row is initialised from seed + i."""

    def __post_init__(self):
        if not self.seeds_list or any(n < 1 for n in self.seeds_list):
            raise ValueError(f"--seeds-list needs numbers >= 1, got {self.seeds_list}")
        if (self.steps is not None and self.steps < 1) or self.repeats < 1:
            raise ValueError("--steps and --repeats must be >= 1")
        if self.seconds is not None and self.seconds <= 0:
            raise ValueError("--seconds must be > 0")
        if self.run_steps is not None and self.run_steps < 1:
            raise ValueError("--run-steps must be >= 1")
        if not self.modes or not self.phases or not self.presets:
            raise ValueError("need at least one preset, phase and mode")
        if not 0 <= self.quiet_threshold <= 1 or self.wait_quiet_s < 0:
            raise ValueError("--quiet-threshold must be in [0, 1] and --wait-quiet-s >= 0")

    @property
    def row_seconds(self) -> float:
        if self.seconds is not None:
            return self.seconds
        return 0.1 if self.tiny else 5.0

    def workload(self, preset: str) -> Workload:
        return (TINY_WORKLOADS if self.tiny else WORKLOADS)[preset]

    def steps_per_call(self, preset: str) -> int:
        return self.steps if self.steps is not None else self.workload(preset).steps_per_call

    def steps_of_a_run(self, preset: str) -> int:
        return self.run_steps if self.run_steps is not None else RUN_STEPS[preset]


def learner_config(preset: str, w: Workload):
    """The library's preset config (learner.CPU_CONFIG / REFERENCE_CONFIG) at the workload's sizes.

    At full size the sizes are the presets' own (cpu: 2x256, 32 pairs, 2048 BC rows; reference:
    2x512, 96 pairs, 6144 BC rows); --tiny shrinks them. BC rows per step = pairs x T.
    """
    from plare_jax import learner

    base = learner.CPU_CONFIG if preset == "cpu" else learner.REFERENCE_CONFIG
    return dataclasses.replace(
        base, hidden_dims=w.hidden_dims, batch_pairs=w.batch_pairs, bc_batch_size=w.batch_pairs * w.seq_len,
        dropout_rate=w.dropout_rate,
    )  # fmt: skip


# ----------------------------------------------------------------------------- a row (child process)


def seeds_row(preset: str, w: Workload, mode: str, n: int, phase: str, k: int, seconds: float, seed: int) -> dict:
    """Times N seeds advanced by K updates per call, one at a time or batched (see the module doc)."""
    import jax

    from plare_jax import batched, learner
    from plare_jax.learner import PreferenceData

    config = learner_config(preset, w)
    data = PreferenceData.create(*_synthetic_pairs(w, seed))
    init_seeds = [seed + i for i in range(n)]
    train_keys = jax.random.split(jax.random.key(seed + 10_000), n)
    key_list = list(train_keys)  # split once, not on every round

    if mode == "batched":
        state: Any = batched.create_batched(init_seeds, config, w.obs_dim, w.act_dim)
        if phase == "cpl":
            state = batched.start_phase_batched(state, "cpl")

        def one_call(state):
            state, metrics = batched.train_batched(state, data, train_keys, k, phase=phase, metrics_every=k)
            jax.block_until_ready((state, metrics))
            return state, metrics["loss"]

        def one_round(state):
            return one_call(state)

        def warm_up(state):  # the compile call already ran every seed once
            return state

    elif mode == "sequential":
        # Each seed an ordinary state (what `LearnerState.create` gives it, bit for bit: tests/test_batched.py),
        # made by one vmapped init (and phase switch) instead of N eager ones so that a row with many seeds starts quickly.
        stacked = batched.create_batched(init_seeds, config, w.obs_dim, w.act_dim)
        state = batched.unstack_states(batched.start_phase_batched(stacked, "cpl") if phase == "cpl" else stacked)

        def one_seed(s, key):
            s, metrics = learner.train(s, data, key, k, phase=phase, metrics_every=k)
            jax.block_until_ready((s, metrics))
            return s, metrics["loss"]

        def one_call(states):  # the compile call: seed 0 alone (every seed runs the same program)
            first, loss = one_seed(states[0], train_keys[0])
            return [first, *states[1:]], loss

        def one_round(states):
            out = [one_seed(s, key) for s, key in zip(states, key_list)]
            return [s for s, _ in out], out[-1][1]

        def warm_up(states):  # a new state's first call costs more (placement): once per seed, untimed
            return [states[0], *(one_seed(s, key)[0] for s, key in zip(states[1:], key_list[1:]))]

    else:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")

    start = time.perf_counter()
    state, loss = one_call(state)
    compile_s = time.perf_counter() - start
    state = warm_up(state)

    rounds, elapsed = 0, 0.0
    cpu_before = cpu_sample()
    while True:
        start = time.perf_counter()
        state, loss = one_round(state)
        elapsed += time.perf_counter() - start
        rounds += 1
        if elapsed >= seconds:
            break
    load = cpu_share(cpu_before, cpu_sample())
    if not np.all(np.isfinite(np.asarray(loss))):
        raise FloatingPointError(f"{mode} training diverged on {preset}/{phase} with {n} seeds")

    rows_per_step = w.rows_per_step if phase == "cpl" else config.bc_batch_size
    per_seed = rounds * k / elapsed
    device = jax.devices()[0]
    return {
        "kind": "seeds", "preset": preset, "phase": phase, "mode": mode, "seeds": n, "steps_per_call": k,
        "calls_per_round": 1 if mode == "batched" else n, "rounds": rounds, "wall_s": elapsed,
        "compile_s": compile_s, "steps_per_s_per_seed": per_seed, "seed_steps_per_s": per_seed * n,
        "params": w.params, "rows_per_step": rows_per_step,
        "gflops": 6.0 * w.params * rows_per_step * per_seed * n / 1e9,
        "platform": device.platform, "device_kind": device.device_kind,
        "peak_rss_mib": peak_rss_mib(), "device_memory": jax_device_memory(), **load,
    }  # fmt: skip


# ----------------------------------------------------------------------------- orchestration


def _plan(cfg: SeedsBenchConfig) -> list[tuple[str, tuple]]:
    """(row id, args of `seeds_row`) for one repeat, in run order (modes alternate at each N)."""
    plan = []
    for preset in cfg.presets:
        w, k = cfg.workload(preset), cfg.steps_per_call(preset)
        for phase in cfg.phases:
            for n in cfg.seeds_list:
                for mode in cfg.modes:
                    plan.append((f"{preset}/{phase}/{n}/{mode}", (preset, w, mode, n, phase, k, cfg.row_seconds, cfg.seed)))
    return plan


def _median_row(samples: list[dict]) -> dict:
    ordered = sorted(samples, key=lambda s: s["seed_steps_per_s"])
    row = dict(ordered[(len(ordered) - 1) // 2])
    if len(samples) > 1:
        row["seed_steps_per_s_samples"] = [s["seed_steps_per_s"] for s in samples]
        if all(s.get("others_cpu_share") is not None for s in samples):
            row["others_cpu_share_samples"] = [s["others_cpu_share"] for s in samples]
    return row


def _derive(rows: list[dict], cfg: SeedsBenchConfig) -> None:
    """Adds batched/sequential, vs 1 seed, runs/hour and BUSY marks to the rows (in place)."""
    by_key = {(r["preset"], r["phase"], r["mode"], r["seeds"]): r for r in rows}
    for r in rows:
        r["run_steps"] = cfg.steps_of_a_run(r["preset"])
        r["runs_per_hour"] = r["seed_steps_per_s"] * 3600.0 / r["run_steps"]
        sequential = by_key.get((r["preset"], r["phase"], "sequential", r["seeds"]))
        if r["mode"] == "batched" and sequential:
            r["batched_vs_sequential"] = r["seed_steps_per_s"] / sequential["seed_steps_per_s"]
            if "seed_steps_per_s_samples" in r and "seed_steps_per_s_samples" in sequential:
                pairs = zip(r["seed_steps_per_s_samples"], sequential["seed_steps_per_s_samples"])
                r["batched_vs_sequential_per_repeat"] = [a / b for a, b in pairs]
        one = by_key.get((r["preset"], r["phase"], r["mode"], 1))
        if one:
            r["vs_1_seed"] = r["seed_steps_per_s"] / one["seed_steps_per_s"]
        if r.get("others_cpu_share") is not None:
            shares = [r["others_cpu_share"], *r.get("others_cpu_share_samples", [])]
            r["busy"] = max(shares) > cfg.quiet_threshold
            r["busy_mark"] = "BUSY" if r["busy"] else "quiet"
        r["device_peak_mib"] = (r.get("device_memory") or {}).get("peak_mib")


def _payload(cfg: SeedsBenchConfig, samples: dict[str, list[dict]], waits: list, complete: bool) -> dict:
    """The JSON payload of the rows measured so far (median over repeats, derived columns, notes)."""
    rows = [_median_row(s) for s in samples.values() if s]
    _derive(rows, cfg)
    notes = ["runs/hour: training updates only, every step at this phase's measured rate "
             "(no evaluation, no data collection)"]
    if not complete:
        notes.append(f"incomplete: {sum(map(len, samples.values()))} of {cfg.repeats * len(samples)} row runs done")
    busy = [r for r in rows if r.get("busy")]
    if busy:
        notes.append(
            f"{len(busy)} of {sum('busy' in r for r in rows)} rows ran while other processes used more than "
            f"{cfg.quiet_threshold:.0%} of the CPUs (column others' CPU, marked BUSY): not quiet-machine figures; "
            "absolute rates are lower bounds"
        )
    device = {"platform": rows[0]["platform"], "device_kind": rows[0]["device_kind"]} if rows else {}
    return {
        "benchmark": "seeds",
        "complete": complete,
        "config": {k: (str(v) if isinstance(v, pathlib.Path) else v) for k, v in dataclasses.asdict(cfg).items()},
        "device": device,
        "notes": notes,
        "quiet_waits": waits,
        "machine": machine_info(extra_packages=("optax",)),
        "rows": rows,
    }


def run(cfg: SeedsBenchConfig, partial_out: pathlib.Path | None = None) -> dict:
    """Runs every row (each in its own process unless --tiny) and returns the JSON payload.

    `partial_out`: rewrite this JSON file after every row ("complete": false until the end), so that
    a run stopped by a time limit still leaves the rows it measured.
    """
    plan = _plan(cfg)
    samples: dict[str, list[dict]] = {row_id: [] for row_id, _ in plan}
    waits = []
    with tqdm(total=cfg.repeats * len(plan), desc="seed rows", unit="row", file=sys.stderr) as bar:
        for _ in range(cfg.repeats):  # interleaved: a disturbance hits every row of a repeat alike
            for row_id, args in plan:
                bar.set_postfix_str(row_id)
                if cfg.wait_quiet_s > 0 and not cfg.tiny:
                    waits.append(wait_until_quiet(cfg.quiet_threshold, cfg.wait_quiet_s))
                if cfg.tiny:
                    samples[row_id].append(seeds_row(*args))  # no process start per row in a smoke run
                else:
                    samples[row_id].append(run_isolated(seeds_row, *args, timeout_s=cfg.row_timeout_s))
                bar.update()
                if partial_out is not None:
                    write_json(partial_out, _payload(cfg, samples, waits, complete=False))
    return _payload(cfg, samples, waits, complete=True)


COLUMNS = [
    ("preset", "config"), ("phase", "phase"), ("mode", "mode"), ("seeds", "seeds"), ("steps_per_call", "K"),
    ("steps_per_s_per_seed", "steps/s per seed"), ("seed_steps_per_s", "seed-steps/s"),
    ("batched_vs_sequential", "batched / sequential"), ("vs_1_seed", "vs 1 seed"), ("runs_per_hour", "runs/hour"),
    ("gflops", "GFLOP/s"), ("compile_s", "compile s"), ("peak_rss_mib", "peak RSS MiB"),
    ("device_peak_mib", "device peak MiB"), ("others_cpu_share", "others' CPU"), ("busy_mark", "busy"),
]  # fmt: skip


def main(cfg: SeedsBenchConfig) -> dict:
    path = pathlib.Path(cfg.out or default_out("seeds"))
    payload = run(cfg, partial_out=path)
    write_json(path, payload)
    print(markdown_table(payload["rows"], COLUMNS))
    device = payload["device"]
    print(f"\ndevice: {device.get('device_kind')} ({device.get('platform')}); JSON: {path}")
    for note in payload["notes"]:
        print(f"note: {note}")
    return payload


def parse_args(argv: list[str] | None = None) -> SeedsBenchConfig:
    """The options of this script (argv: None = the command line)."""
    return tyro.cli(SeedsBenchConfig, args=argv)


if __name__ == "__main__":
    main(parse_args())
