"""Per-step cost of every training method at the quick preset's sizes (to size the preset).

Rows, each in its own process, each timing jitted, scanned updates through the method
interface (`plare_jax.methods`) on synthetic data of the quick preset's shapes (120 episodes of
250 steps, 2000 pairs of 64-step segments, MetaWorld's 39-D observations and 4-D actions):
- `bc`: behaviour-cloning update (also the shared BC phase, `sft` and `pbc`: the same update on
  other rows), `bc_batch_size` rows per step;
- `plare`: the CPL update, `batch_pairs` pairs x 2 x 64 steps per step;
- `rlvlmf reward`: one Bradley-Terry reward-model update, `reward_batch_pairs` pairs;
- `rlvlmf iql`: one IQL update (value, actor, twin critics, target) at each `--iql-batch`.
Then the estimated training time of one task and seed per method for the given step budget
(reward-model and critic-only steps on top for rlvlmf); evaluation and data collection are not included.

    python benchmarks/methods.py                  # ~2 min on 2 cores
    python benchmarks/methods.py --tiny           # seconds (tests)
"""

from __future__ import annotations

import dataclasses
import pathlib
import sys
import time

if __package__ in (None, ""):  # run as `python benchmarks/methods.py`: make `benchmarks` importable
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))

import numpy as np
import tyro
from tqdm.auto import tqdm

from benchmarks.common import default_out, machine_info, markdown_table, peak_rss_mib, run_isolated, write_json


@dataclasses.dataclass(frozen=True)
class MethodsBenchConfig:
    """Per-update cost of plare, bc, rlvlmf (reward model and IQL) at the quick preset's sizes."""

    hidden_dims: tuple[int, ...] = (256, 256)
    """Policy (and, for rlvlmf, reward/critic/value) hidden widths (quick preset: 256, 256)."""
    batch_pairs: int = 32
    """CPL pairs per update (quick preset: 32)."""
    bc_batch_size: int = 1024
    """BC rows per update (quick preset: 1024)."""
    reward_batch_pairs: int = 32
    """Reward-model pairs per update."""
    iql_batch: tuple[int, ...] = (256, 512, 1024)
    """IQL transitions per update, one row each."""
    reward_steps: int = 1000
    """Reward-model steps counted into rlvlmf's estimated time."""
    critic_pretrain_steps: int = 10_000
    """rlvlmf's critic-only updates before policy extraction (quick preset: 10k), counted at the
    full IQL update's rate (an upper bound: they skip the actor)."""
    bc_steps: int = 3000
    """Shared BC-phase steps of the budget (quick preset: 3000)."""
    second_phase_steps: int = 3000
    """Second-phase steps of the budget (quick preset: 3000); from-scratch methods run both, and
    rlvlmf's IQL (its actor continues the BC phase) runs this many after its critic-only updates."""
    steps_per_call: int = 100
    """Updates per jitted call (one host sync each)."""
    seconds: float = 8.0
    """Minimum timed seconds per row (after the compile call)."""
    tiny: bool = False
    """Tiny sizes (16-wide nets, few pairs and rows): a smoke run in seconds."""
    out: pathlib.Path | None = None
    """JSON output path (default benchmarks/out/methods.json)."""
    seed: int = 0
    """Seed of the synthetic data and parameters."""


def synthetic_training_data(num_episodes: int, episode_len: int, num_pairs: int, seg_len: int, seed: int,
                            obs_dim: int = 39, act_dim: int = 4):
    """Random TrainingData of the given sizes (values do not matter for timing)."""
    from plare_jax.methods.base import TrainingData

    rng = np.random.default_rng(seed)
    n = num_episodes * episode_len
    obs = rng.standard_normal((n, obs_dim), np.float32)
    act = rng.uniform(-1, 1, size=(n, act_dim)).astype(np.float32)
    episode_ids = np.repeat(np.arange(num_episodes, dtype=np.int32), episode_len)
    has_next = np.ones(n, bool)
    has_next[episode_len - 1 :: episode_len] = False
    next_obs = np.where(has_next[:, None], np.roll(obs, -1, axis=0), obs)
    episodes = rng.integers(0, num_episodes, size=(num_pairs, 2))
    starts = rng.integers(0, episode_len - seg_len + 1, size=(num_pairs, 2))
    pair_rows = (episodes * episode_len + starts)[..., None] + np.arange(seg_len)
    return TrainingData(
        observations=obs, actions=act, next_observations=next_obs, has_next=has_next,
        terminals=np.zeros(n, np.float32), episode_ids=episode_ids, pair_observations=obs[pair_rows],
        pair_actions=act[pair_rows], labels=rng.integers(0, 2, size=num_pairs).astype(np.float32),
        weights=np.ones(num_pairs, np.float32), pair_mask=np.ones((num_pairs, 2, seg_len), np.float32),
        pair_rows=pair_rows.astype(np.int64), episode_scores=rng.uniform(size=num_episodes).astype(np.float32),
    )  # fmt: skip


def _sizes(cfg: MethodsBenchConfig) -> dict:
    if cfg.tiny:
        return {"num_episodes": 8, "episode_len": 40, "num_pairs": 32, "seg_len": 16}
    return {"num_episodes": 120, "episode_len": 250, "num_pairs": 2000, "seg_len": 64}


def _time_calls(call, state, steps_per_call: int, seconds: float) -> tuple[float, float]:
    """(compile seconds, steps per second) of `call(state) -> (state, metrics)`."""
    import jax

    start = time.perf_counter()
    state, metrics = call(state)
    jax.block_until_ready((state, metrics))
    compile_s = time.perf_counter() - start
    steps, elapsed = 0, 0.0
    while elapsed < seconds or steps < 2 * steps_per_call:
        start = time.perf_counter()
        state, metrics = call(state)
        jax.block_until_ready((state, metrics))
        elapsed += time.perf_counter() - start
        steps += steps_per_call
    return compile_s, steps / elapsed


def method_row(cfg: MethodsBenchConfig, kind: str, batch: int) -> dict:
    """Times one kind of update ("bc", "plare", "rlvlmf reward", "rlvlmf iql") in this process."""
    import jax

    from plare_jax import learner, reward_model
    from plare_jax.methods import get_method, rlvlmf

    data = synthetic_training_data(**_sizes(cfg), seed=cfg.seed)
    policy = learner.LearnerConfig(hidden_dims=cfg.hidden_dims, dropout_rate=0.25, learning_rate=3e-4,
                                   warmup_steps=500, batch_pairs=cfg.batch_pairs, bc_batch_size=cfg.bc_batch_size)
    key, n = jax.random.key(cfg.seed + 1), cfg.steps_per_call
    if kind in ("bc", "plare"):
        method = get_method(kind)
        state = method.create(jax.random.key(cfg.seed), policy, data, init=None)
        device_data = jax.device_put(method.device_data(state, data))
        call = lambda s: method.train(s, device_data, key, n, metrics_every=n)  # noqa: E731
        rows_per_step = batch if kind == "bc" else batch * 2 * data.pair_observations.shape[2]
    else:
        options = rlvlmf.RLVLMFOptions(
            reward_hidden_dims=cfg.hidden_dims, critic_hidden_dims=cfg.hidden_dims, value_hidden_dims=cfg.hidden_dims,
            reward_batch_pairs=cfg.reward_batch_pairs, batch_size=batch, reward_steps=n,
        )  # fmt: skip
        method = get_method("rlvlmf")
        state = method.create(jax.random.key(cfg.seed), policy, data, init=None, options=options)
        device_data = jax.device_put(method.device_data(state, data))
        if kind == "rlvlmf reward":
            state = state.reward
            call = lambda s: reward_model.train(s, device_data.reward_pairs, key, num_steps=n,  # noqa: E731
                                                metrics_every=n)
            rows_per_step = batch * 2 * data.pair_observations.shape[2]
        else:
            # The first call also trains the (n-step) reward model and relabels; it is the compile call.
            call = lambda s: method.train(s, device_data, key, n, metrics_every=n)  # noqa: E731
            rows_per_step = batch
    compile_s, steps_per_s = _time_calls(call, state, n, cfg.seconds)
    return {"kind": kind, "batch": batch, "rows_per_step": rows_per_step, "steps_per_s": steps_per_s,
            "compile_s": compile_s, "device": jax.devices()[0].platform, "peak_rss_mib": peak_rss_mib()}


def _estimates(rows: list[dict], cfg: MethodsBenchConfig) -> list[dict]:
    """Training seconds of one task and seed per method for the step budget (no evaluation)."""
    speed = {(r["kind"], r["batch"]): r["steps_per_s"] for r in rows}
    bc = speed[("bc", cfg.bc_batch_size)]
    phase1 = cfg.bc_steps / bc
    reward_s = cfg.reward_steps / speed[("rlvlmf reward", cfg.reward_batch_pairs)]
    out = [
        {"method": "shared BC phase", "seconds": phase1},
        {"method": "plare (2nd phase)", "seconds": cfg.second_phase_steps / speed[("plare", cfg.batch_pairs)]},
        {"method": "bc / sft (2nd phase)", "seconds": cfg.second_phase_steps / bc},
        {"method": "pbc (from scratch)", "seconds": (cfg.bc_steps + cfg.second_phase_steps) / bc},
    ]
    for b in cfg.iql_batch:
        iql_s = (cfg.critic_pretrain_steps + cfg.second_phase_steps) / speed[("rlvlmf iql", b)]
        out.append({"method": f"rlvlmf (IQL batch {b}, {cfg.reward_steps} reward steps, "
                              f"{cfg.critic_pretrain_steps} critic-only steps)",
                    "seconds": reward_s + iql_s, "reward_s": reward_s, "iql_s": iql_s})
    return out


def main(cfg: MethodsBenchConfig) -> dict:
    plan = [("bc", cfg.bc_batch_size), ("plare", cfg.batch_pairs), ("rlvlmf reward", cfg.reward_batch_pairs)]
    plan += [("rlvlmf iql", b) for b in cfg.iql_batch]
    if cfg.tiny:
        cfg = dataclasses.replace(cfg, hidden_dims=(16, 16), steps_per_call=4, seconds=min(cfg.seconds, 0.2))
    rows = []
    for kind, batch in tqdm(plan, desc="method rows", unit="row", file=sys.stderr):
        rows.append(run_isolated(method_row, cfg, kind, batch))
    estimates = _estimates(rows, cfg)
    payload = {"benchmark": "methods", "config": {k: (str(v) if isinstance(v, pathlib.Path) else v)
                                                  for k, v in dataclasses.asdict(cfg).items()},
               "machine": machine_info(extra_packages=("optax",)), "rows": rows, "estimates": estimates}
    path = write_json(cfg.out or default_out("methods"), payload)
    print(markdown_table(rows, [("kind", "update"), ("batch", "batch (rows or pairs)"), ("rows_per_step", "rows/step"),
                                ("steps_per_s", "steps/s"), ("compile_s", "first call s"),
                                ("peak_rss_mib", "peak RSS MiB")]))
    print()
    print(markdown_table(estimates, [("method", f"method ({cfg.bc_steps} + {cfg.second_phase_steps} steps)"),
                                     ("seconds", "training s"), ("reward_s", "reward model s"), ("iql_s", "IQL s")]))
    print(f"\nJSON: {path}")
    return payload


def parse_args(argv: list[str] | None = None) -> MethodsBenchConfig:
    """The options of this script (argv: None = the command line)."""
    return tyro.cli(MethodsBenchConfig, args=argv)


if __name__ == "__main__":
    main(parse_args())
