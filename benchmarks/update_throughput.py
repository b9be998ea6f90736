"""CPL-phase update throughput of the jitted, scanned learner, against matmul peak.

Times `learner.train` (CPL phase) after a compile warm-up, over several scanned
calls with `block_until_ready`, for the reference configuration (2x512, dropout
0.25, 96 pairs x 64 steps, obs 39, act 4) and a smaller CPU preset, and reports
steps/s, pairs/s and achieved GFLOP/s (6 x params x rows per step: forward 2,
backward 4 flops per parameter per row) next to a jitted 2048^2 float32 matmul
measured in the same run.

A "matmuls only" row times just the forward+backward matmuls of the same MLP
shapes: the utilisation ceiling of these (tall-skinny) shapes on this backend.

Usage:
  PYTHONPATH=. python benchmarks/update_throughput.py
  PYTHONPATH=. python benchmarks/update_throughput.py --presets reference --dropout-prng threefry2x32 rbg
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import jax
import jax.numpy as jnp
import numpy as np

from plare_jax.learner import (
    CPU_CONFIG,
    REFERENCE_CONFIG,
    LearnerConfig,
    LearnerState,
    PreferenceData,
    start_phase,
    train,
)

PRESETS = {"reference": REFERENCE_CONFIG, "cpu": CPU_CONFIG}


def measure_matmul_peak(n: int = 2048, repeats: int = 10) -> float:
    """GFLOP/s of a jitted n x n float32 matmul (best of `repeats`)."""
    rng = np.random.default_rng(0)
    a = jnp.asarray(rng.normal(size=(n, n)), jnp.float32)
    b = jnp.asarray(rng.normal(size=(n, n)), jnp.float32)
    matmul = jax.jit(jnp.matmul)
    matmul(a, b).block_until_ready()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        matmul(a, b).block_until_ready()
        best = min(best, time.perf_counter() - start)
    return 2.0 * n**3 / best / 1e9


def measure_matmul_bound(
    config: LearnerConfig, *, rows: int, obs_dim: int = 39, act_dim: int = 4, steps: int = 5
) -> float:
    """Seconds per step of only the MLP's matmuls (forward + backward, same shapes).

    A lower bound for the update: no bias, activation, dropout, loss or optimizer.
    Tall-skinny shapes (K = obs_dim in the first layer, N = act_dim in the last)
    run below the square-matmul peak, so this bounds the reachable utilisation.
    """
    dims = (obs_dim, *config.hidden_dims, act_dim)
    weights = tuple(jnp.full((d_in, d_out), 1e-3, jnp.float32) for d_in, d_out in zip(dims[:-1], dims[1:]))
    x = jnp.ones((rows, obs_dim), jnp.float32)

    def forward(ws):
        h = x
        for w in ws:
            h = h @ w
        return jnp.sum(h)

    def one_step(_, ws):
        return jax.tree.map(lambda w, g: w - 1e-9 * g, ws, jax.grad(forward)(ws))

    run = jax.jit(lambda ws: jax.lax.fori_loop(0, steps, one_step, ws))
    jax.block_until_ready(run(weights))
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        jax.block_until_ready(run(weights))
        best = min(best, (time.perf_counter() - start) / steps)
    return best


def count_params(state: LearnerState) -> int:
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(state.params))


def measure_update_throughput(
    config: LearnerConfig,
    *,
    seq_len: int = 64,
    obs_dim: int = 39,
    act_dim: int = 4,
    num_pairs: int = 1000,
    steps_per_call: int = 10,
    calls: int = 3,
    seed: int = 0,
) -> dict[str, float]:
    """Times CPL-phase `train` calls on synthetic data resident on device.

    Returns:
      steps_per_s and pairs_per_s (best call), gflops (achieved at that rate,
      6 x params x rows x steps/s), peak_gflops (best matmul sample), of_peak
      (median over calls of achieved / the matmul peak sampled just before the
      call), params, compile_s (first call, including compilation).
    """
    rng = np.random.default_rng(seed)
    data = PreferenceData.create(
        rng.normal(size=(num_pairs, 2, seq_len, obs_dim)).astype(np.float32),
        rng.uniform(-1, 1, size=(num_pairs, 2, seq_len, act_dim)).astype(np.float32),
        rng.integers(0, 2, size=num_pairs),
    )
    state = start_phase(LearnerState.create(jax.random.key(seed), config, obs_dim, act_dim), "cpl")
    key = jax.random.key(seed + 1)
    start = time.perf_counter()
    state, _ = train(state, data, key, steps_per_call, phase="cpl", metrics_every=steps_per_call)
    jax.block_until_ready(state)
    compile_s = time.perf_counter() - start
    params = count_params(state)
    flops_per_step = 6.0 * params * config.batch_pairs * 2 * seq_len
    times, ratios, peaks = [], [], []
    for _ in range(calls):
        # A peak sample right before each call: on a shared machine the load changes
        # from minute to minute, and the ratio of neighbours is what stays comparable.
        peaks.append(measure_matmul_peak(repeats=3))
        start = time.perf_counter()
        state, metrics = train(state, data, key, steps_per_call, phase="cpl", metrics_every=steps_per_call)
        jax.block_until_ready((state, metrics))
        times.append(time.perf_counter() - start)
        ratios.append(flops_per_step * steps_per_call / times[-1] / 1e9 / peaks[-1])
    # Best call: other processes only ever slow a call down.
    steps_per_s = steps_per_call / float(np.min(times))
    return {
        "steps_per_s": steps_per_s,
        "pairs_per_s": steps_per_s * config.batch_pairs,
        "gflops": flops_per_step * steps_per_s / 1e9,
        "peak_gflops": float(np.max(peaks)),
        "of_peak": float(np.median(ratios)),
        "params": float(params),
        "compile_s": compile_s,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--presets", nargs="+", default=list(PRESETS), choices=list(PRESETS))
    parser.add_argument(
        "--dropout-prng", nargs="+", default=["threefry2x32", "rbg", "none"], choices=["threefry2x32", "rbg", "unsafe_rbg", "none"],
        help="PRNG implementation(s) for dropout masks; 'none' = dropout off (the cost of dropout)",
    )
    parser.add_argument(
        "--dropout-mask", nargs="+", default=["packed"], choices=["packed", "bernoulli"],
        help="how dropout masks are drawn (bernoulli = one float uniform per unit, as nnx.Dropout)",
    )
    parser.add_argument("--steps-per-call", type=int, default=10)
    parser.add_argument("--calls", type=int, default=3)
    parser.add_argument("--seq-len", type=int, default=64)
    args = parser.parse_args()

    print(f"jax {jax.__version__} on {jax.devices()[0].platform} x{jax.device_count()}")
    # "peak": best 2048^2 matmul sample; "of peak": median over calls of the achieved
    # rate over the matmul peak sampled right before that call (robust to load drift).
    header = (
        f"{'preset':<10} {'dropout':<22} {'params':>9} {'steps/s':>8} {'pairs/s':>9} {'GFLOP/s':>8} "
        f"{'peak':>7} {'of peak':>8} {'compile s':>9}"
    )
    print(header)
    for preset in args.presets:
        config = PRESETS[preset]
        rows = config.batch_pairs * 2 * args.seq_len
        dims = (39, *config.hidden_dims, 4)
        params = sum(i * o + o for i, o in zip(dims[:-1], dims[1:]))
        samples = []
        for _ in range(args.calls):
            peak = measure_matmul_peak(repeats=3)
            samples.append((measure_matmul_bound(config, rows=rows), peak))
        bound_s = min(t for t, _ in samples)
        ratio = float(np.median([6.0 * params * rows / t / 1e9 / p for t, p in samples]))
        gflops = 6.0 * params * rows / bound_s / 1e9
        print(
            f"{preset:<10} {'matmuls only':<22} {params:>9} {1 / bound_s:>8.2f} {config.batch_pairs / bound_s:>9.1f} "
            f"{gflops:>8.1f} {max(p for _, p in samples):>7.1f} {ratio:>8.0%} {'':>9}",
            flush=True,
        )
        variants = [
            (f"{impl}" if len(args.dropout_mask) == 1 else f"{impl}/{mask}", impl, mask)
            for impl in args.dropout_prng
            for mask in (args.dropout_mask if impl != "none" else ["packed"])
        ]
        for label, impl, mask in variants:
            config = PRESETS[preset]
            if impl == "none":
                config = dataclasses.replace(config, dropout_rate=0.0)
            else:
                config = dataclasses.replace(config, dropout_prng=impl, dropout_mask=mask)
            r = measure_update_throughput(
                config, seq_len=args.seq_len, steps_per_call=args.steps_per_call, calls=args.calls
            )
            print(
                f"{preset:<10} {label:<22} {int(r['params']):>9} {r['steps_per_s']:>8.2f} {r['pairs_per_s']:>9.1f} "
                f"{r['gflops']:>8.1f} {r['peak_gflops']:>7.1f} {r['of_peak']:>8.0%} {r['compile_s']:>9.1f}",
                flush=True,
            )


if __name__ == "__main__":
    main()
