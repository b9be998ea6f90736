"""PLARE on your own recorded robot data: no simulator needed.

    python experiments/offline.py --data PATH --task-text "open the drawer" --labeler vlm --vlm.base-url URL

recorded dataset (card.json + steps.npz + frames or videos; validated before anything else) ->
segment pairs -> VLM labels on keyframes from the stored frames (or the scripted teacher on
stored rewards) -> a shared behaviour-cloning phase -> each method -> held-out preference
accuracy at every evaluation (optionally success in a gymnasium environment, --eval-env) ->
a run directory with results.json, metrics.jsonl, learning curves, orbax checkpoints and, per
seed and method, export/<method>/policy.npz + plare_policy.py (numpy-only act(obs)).

Make a dataset with experiments/import_data.py (LeRobot, Minari, or exported MetaWorld data).
The stages live in plare_jax.pipeline.offline; this file is the command line.
"""

from __future__ import annotations

import os
import sys

# Run as a script, this file's folder heads sys.path and experiments/metaworld.py would shadow
# the `metaworld` package: drop the folder before anything imports it.
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _HERE]

import tyro  # noqa: E402

from plare_jax.pipeline.offline import OfflineConfig, run_offline  # noqa: E402
from plare_jax.errors import exit_on_user_error  # noqa: E402


def parse_args(argv: list[str] | None = None) -> OfflineConfig:
    """The options of this script (argv: None = the command line)."""
    return tyro.cli(OfflineConfig, args=argv, description=__doc__)


def cli(argv: list[str] | None = None) -> int:
    config = parse_args(argv)
    return exit_on_user_error(lambda: run_offline(config))


if __name__ == "__main__":
    sys.exit(cli())
