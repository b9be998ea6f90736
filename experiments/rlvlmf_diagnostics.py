"""What the rlvlmf baseline's reward model and critics learned, from a finished run's checkpoint.

    python experiments/rlvlmf_diagnostics.py --run runs/<run-name> --env sweep-into --data-seed 0 --seed 0

Why: a reward model can rank most labelled segment pairs right and still give per-step rewards
that say little about which actions were good, and IQL's policy only sees the per-step
advantages. This reads the rlvlmf state of one (task, data seed, seed) unit and reports, over
every transition of that unit's dataset:
- how the relabelled reward correlates with the simulator's dense reward and with its per-step
  change (progress, what the scripted teacher's labels measure over a segment);
- how the advantage A = min(Q1, Q2) - V used by the policy extraction correlates with them;
- how concentrated the advantage weights exp(beta * A) are (share of the total weight on the
  top 5% of rows), and what those rows are (successful episodes, action size).
It reads the simulator's rewards, so it is a diagnostic for MetaWorld runs, not part of training.
"""

from __future__ import annotations

import os
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _HERE]

import dataclasses  # noqa: E402
import json  # noqa: E402
import pathlib  # noqa: E402

import numpy as np  # noqa: E402
import tyro  # noqa: E402

import plare_jax.envs  # noqa: E402,F401  (sets MUJOCO_GL before mujoco is imported)


@dataclasses.dataclass(frozen=True)
class DiagnosticsConfig:
    """Reward and advantage diagnostics of one rlvlmf unit of a finished run."""

    run: pathlib.Path
    """Run directory of experiments/metaworld.py that trained rlvlmf."""
    env: str = "sweep-into"
    """Task of that run."""
    data_seed: int = 0
    """Data seed of the unit."""
    seed: int = 0
    """Training seed of the unit."""
    top_fraction: float = 0.05
    """Share of rows with the largest advantage weights to describe."""


def _correlation(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.std() == 0 or b.std() == 0:
        return float("nan")
    return float(np.corrcoef(a, b)[0, 1])


def per_step_progress(rewards: np.ndarray, episode_ids: np.ndarray) -> np.ndarray:
    """r[t+1] - r[t] within an episode (0 at an episode's last step)."""
    progress = np.zeros_like(rewards, dtype=np.float64)
    same_episode = episode_ids[1:] == episode_ids[:-1]
    progress[:-1] = np.where(same_episode, rewards[1:] - rewards[:-1], 0.0)
    return progress


def advantage_diagnostics(relabelled: np.ndarray, advantages: np.ndarray, true_rewards: np.ndarray,
                          episode_ids: np.ndarray, successes: np.ndarray, actions: np.ndarray, *,
                          inverse_temperature: float, max_weight: float, top_fraction: float) -> dict:
    """The numbers this script reports, from per-transition arrays (pure numpy)."""
    progress = per_step_progress(true_rewards, episode_ids)
    weights = np.minimum(np.exp(inverse_temperature * np.asarray(advantages, np.float64)), max_weight)
    successful_episode = (np.bincount(episode_ids, weights=successes.astype(np.float64)) > 0)[episode_ids]
    action_size = np.linalg.norm(actions, axis=-1)
    top = np.argsort(-weights, kind="stable")[: max(1, int(round(top_fraction * len(weights))))]
    return {
        "rows": int(len(weights)),
        "corr_reward_vs_true_reward": _correlation(relabelled, true_rewards),
        "corr_reward_vs_progress": _correlation(relabelled, progress),
        "corr_advantage_vs_progress": _correlation(advantages, progress),
        "corr_advantage_vs_true_reward": _correlation(advantages, true_rewards),
        "advantage_mean": float(np.mean(advantages)),
        "advantage_std": float(np.std(advantages)),
        "weight_mean": float(weights.mean()),
        "top_fraction": top_fraction,
        "weight_share_of_top_rows": float(weights[top].sum() / weights.sum()),
        "top_rows_from_successful_episodes": float(successful_episode[top].mean()),
        "all_rows_from_successful_episodes": float(successful_episode.mean()),
        "weighted_share_from_successful_episodes": float((weights * successful_episode).sum() / weights.sum()),
        "top_rows_action_size": float(action_size[top].mean()),
        "all_rows_action_size": float(action_size.mean()),
    }


def diagnose(config: DiagnosticsConfig) -> dict:
    import jax.numpy as jnp
    from flax import nnx

    from plare_jax import iql
    from plare_jax.envs.collect import collect_dataset
    from plare_jax.envs.tasks import resolve_task
    from plare_jax.pipeline.run import collection_config, prepare_task
    from plare_jax.pipeline.labels import choose_labeler
    from plare_jax.pipeline.run import load_resumed_config, unit_dir
    from plare_jax.pipeline.train import checkpoint_dir, restore_final_state

    run_config = load_resumed_config(config.run)
    task = resolve_task(config.env)
    checkpoints = checkpoint_dir(unit_dir(config.run, task, config.data_seed, config.seed), "rlvlmf")
    if not checkpoints.is_dir():
        raise FileNotFoundError(f"{checkpoints}: no rlvlmf checkpoint (did the run train rlvlmf on this unit?)")
    data = prepare_task(run_config, choose_labeler(run_config), task, config.data_seed, None)
    dataset = collect_dataset(collection_config(run_config, task, config.data_seed),
                              cache_dir=run_config.cache_dir / "datasets", workers=1)
    state = restore_final_state(run_config, data, "rlvlmf", config.seed,
                                unit_dir(config.run, task, config.data_seed, config.seed))
    obs = jnp.asarray(data.training.observations)
    actions = jnp.asarray(data.training.actions)
    critics = state.iql
    q = iql.critic_values(critics.critic_graphdef, critics.target_critic_params, obs, actions).min(0)
    v = nnx.merge(critics.value_graphdef, critics.value_params)(obs)
    report = advantage_diagnostics(
        np.asarray(state.rewards), np.asarray(q - v), dataset.rewards, dataset.episode_ids, dataset.successes,
        data.training.actions, inverse_temperature=state.config.inverse_temperature,
        max_weight=state.config.max_weight, top_fraction=config.top_fraction)
    report.update(task=task, data_seed=config.data_seed, seed=config.seed,
                  reward_train_accuracy=float(state.reward_train_accuracy), iql_steps=int(critics.step - critics.start),
                  critic_pretrain_steps=int(critics.pretrain_step))
    return report


def parse_args(argv: list[str] | None = None) -> DiagnosticsConfig:
    return tyro.cli(DiagnosticsConfig, args=argv, description=__doc__)


def main(argv: list[str] | None = None) -> int:
    config = parse_args(argv)
    try:
        report = diagnose(config)
    except (FileNotFoundError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
