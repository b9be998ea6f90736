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
"""

from __future__ import annotations

import os
import sys

# Run as a script, this file's folder heads sys.path and its name would shadow the `metaworld`
# package itself: drop the folder before anything imports metaworld.
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _HERE]

import dataclasses  # noqa: E402

import tyro  # noqa: E402

import plare_jax.envs  # noqa: E402,F401  (sets MUJOCO_GL before mujoco is imported)
from plare_jax.envs.tasks import UnknownTaskError  # noqa: E402
from plare_jax.labeling import launcher as vllm_launcher  # noqa: E402
from plare_jax.labeling.coverage import LabelCoverageError  # noqa: E402
from plare_jax.labeling.vlm import VLMEndpointError  # noqa: E402
from plare_jax import runs  # noqa: E402
from plare_jax.pipeline.config import ConfigError, ExperimentConfig, VLMOptions  # noqa: E402,F401
from plare_jax.pipeline.run import run  # noqa: E402
from plare_jax.methods import rlvlmf  # noqa: E402

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
    cpl_steps=300_000,
    metrics_every=1000,
    eval_every=5000,
    rlvlmf=rlvlmf.PAPER,
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
    try:
        run(config)
    except (ConfigError, UnknownTaskError, runs.RunDirError, VLMEndpointError, LabelCoverageError,
            vllm_launcher.VLLMNotFoundError, vllm_launcher.VLLMLaunchError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(cli())
