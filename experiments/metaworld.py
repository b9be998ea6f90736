"""PLARE against its baselines on MetaWorld, end to end.

    python experiments/metaworld.py --env sweep-into
    python experiments/metaworld.py --env sweep-into --method plare rlvlmf sft bc

offline data (cached) -> segment pairs -> preference labels (VLM or scripted teacher; cached)
-> a shared behaviour-cloning phase -> each method (plare = CPL on the labels; bc; and the
baselines) -> periodic and final evaluation -> a run directory with results.json,
metrics.jsonl, learning curves and a video of each final policy.

`--preset quick` (the default) runs on a 2-core laptop in minutes; `--preset paper` is the
reference schedule (500k update steps, 10k pairs) for a GPU. Any option after the preset
overrides it; `--help` shows the preset's values. The stages live in `plare_jax.pipeline`;
this file is the command line and its presets.

Training is data parallel over all local devices (`--devices N` for fewer). On several hosts,
start one process per host with `--coordinator-address HOST:PORT --num-processes N
--process-id I` (or `--distributed` under a cluster launcher such as SLURM); process 0 writes
the run directory, which all of them must see.
"""

from __future__ import annotations

import os
import sys

# Run as a script, this file's folder heads sys.path and its name would shadow the `metaworld`
# package itself: drop the folder before anything imports metaworld.
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _HERE]


def start_distributed(argv: list[str]) -> bool:
    """Starts jax.distributed when the command line asks for it, before anything else uses JAX.

    It must come first: importing plare_jax already starts a JAX backend, after which
    jax.distributed.initialize() refuses to run. So the multi-host options are read here from
    argv (tyro parses them again below, with all the others, and validates them):
    `--distributed` (or PLARE_DISTRIBUTED=1) lets JAX detect the cluster (SLURM, Open MPI, ...);
    `--coordinator-address HOST:PORT --num-processes N --process-id I` gives the settings
    (incomplete ones are left to the options' own error message). CPU collectives use gloo.
    Returns whether jax.distributed was started.
    """
    import argparse

    parser = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    parser.add_argument("--distributed", action="store_true", default=False)
    parser.add_argument("--no-distributed", dest="distributed", action="store_false")
    for name in ("coordinator-address", "num-processes", "process-id"):
        parser.add_argument(f"--{name}", f"--{name.replace('-', '_')}", dest=name.replace("-", "_"))
    known, _ = parser.parse_known_args(argv)
    explicit = {"coordinator_address": known.coordinator_address}
    for name in ("num_processes", "process_id"):
        value = getattr(known, name)
        explicit[name] = int(value) if value is not None and value.lstrip("-").isdigit() else value
    auto = known.distributed or os.environ.get("PLARE_DISTRIBUTED", "0") == "1"
    complete = all(isinstance(v, int) for k, v in explicit.items() if k != "coordinator_address") \
        and explicit["coordinator_address"] is not None
    if not (auto or complete):
        return False
    import jax

    jax.config.update("jax_cpu_collectives_implementation", "gloo")  # before initialize; GPUs ignore it
    try:
        jax.distributed.initialize(**{k: v for k, v in explicit.items() if v is not None})
    except Exception as e:  # an unreachable coordinator, a cluster JAX cannot detect, ...
        print(f"error: jax.distributed.initialize failed: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    print(f"jax.distributed: process {jax.process_index()} of {jax.process_count()}, "
          f"{jax.local_device_count()} local of {jax.device_count()} devices", file=sys.stderr)
    return True


if __name__ == "__main__":
    start_distributed(sys.argv[1:])

import dataclasses  # noqa: E402

import tyro  # noqa: E402

import plare_jax.envs  # noqa: E402,F401  (sets MUJOCO_GL before mujoco is imported)
from plare_jax.pipeline.config import ExperimentConfig  # noqa: E402
from plare_jax.pipeline.run import run  # noqa: E402
from plare_jax.methods import rlvlmf  # noqa: E402
from plare_jax.errors import exit_on_user_error  # noqa: E402

QUICK = ExperimentConfig()

PAPER = dataclasses.replace(
    QUICK,
    preset="paper",
    seeds=(0, 1, 2),
    num_episodes=500,
    num_pairs=10_000,
    hidden_dims=(512, 512),
    dropout_rate=0.25,
    learning_rate=1e-4,
    warmup_steps=10_000,
    batch_pairs=96,
    bc_batch_size=96 * 64,
    bc_steps=200_000,
    method_steps=300_000,
    metrics_every=1000,
    eval_every=5000,
    methods=dataclasses.replace(QUICK.methods, rlvlmf=rlvlmf.PAPER),
)

PRESETS = {"quick": QUICK, "paper": PAPER}


def parse_args(argv: list[str] | None = None) -> ExperimentConfig:
    """Parse argv with the preset named by --preset supplying the defaults."""
    argv = list(sys.argv[1:] if argv is None else argv)
    preset = "quick"
    for i, arg in enumerate(argv):
        if arg == "--preset" and i + 1 < len(argv):
            preset = argv[i + 1]
        elif arg.startswith("--preset="):
            preset = arg.split("=", 1)[1]
    return tyro.cli(ExperimentConfig, default=PRESETS.get(preset, QUICK), args=argv,
                    description=__doc__)


def cli(argv: list[str] | None = None) -> int:
    config = parse_args(argv)
    return exit_on_user_error(lambda: run(config))


if __name__ == "__main__":
    sys.exit(cli())
