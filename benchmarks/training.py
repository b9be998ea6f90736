"""CPL update throughput: plare-jax's scanned update vs a PyTorch-eager baseline, side by side.

Rows, each in its own process (peak host memory per row):
- `peak`: a jitted 2048^2 float32 matmul (best of several), GFLOP/s; measured at the
  start and the end of each repeat; "of peak" is relative to the higher of the two rows
  (each the median over repeats). "of peak (paired)": achieved / a matmul sample taken
  right before each timed call, median over calls (robust to load drift).
- `matmuls`: the update's matmuls alone, the utilisation ceiling of this network.
- `mask`: ms per dropout mask of one hidden layer, per PRNG / mask method.
- `update` / jax: `plare_jax.learner.train(phase="cpl")`, device-resident data,
  minibatches drawn with `jax.random` inside `lax.scan`, one host sync per call.
- `update` / torch: the same network, loss and batch written the way the CPL
  reference trains: eager, one optimizer step per Python call, the minibatch
  sampled on the host with numpy and copied in, a host sync per step (`.item()`).
  CUDA when torch sees a GPU, else CPU.
- `scaling` / jax: the same update on a 1-D data mesh of 1, 2, 4 devices (forced
  host devices via XLA_FLAGS on CPU; real devices on a GPU/TPU host).

Achieved FLOP/s = 6 x params x rows x steps/s (forward 2 + backward 4 flops per
parameter per row; rows = pairs x 2 segments x T steps).

Quiet machine: every timed row reads /proc/stat and its own CPU time before and after
its timed block and reports "others' CPU", the share of all CPUs that other processes
(and VM steal) used meanwhile; rows above `--quiet-threshold` are marked busy. Under
contention PyTorch's OpenMP threads lose more than XLA's, so ratios from busy rows
overstate the lead. `--wait-quiet-s` waits (up to that long) for a quiet window before
each row.

    python benchmarks/training.py                 # full run, ~5 min on 2 cores
    python benchmarks/training.py --tiny          # seconds (tests, CI)
    python benchmarks/training.py --presets reference --devices --no-mask-rows --repeats 3 --wait-quiet-s 300
    python benchmarks/training.py --presets reference --impls jax --devices \
        --dropout-prng threefry2x32 rbg none --dropout-mask packed bernoulli     # where the step time goes
"""

from __future__ import annotations

import dataclasses
import importlib.util
import pathlib
import sys
import time
from typing import Literal

if __package__ in (None, ""):  # run as `python benchmarks/training.py`: make `benchmarks` importable
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

DropoutPrng = Literal["default", "threefry2x32", "rbg", "unsafe_rbg", "none"]


@dataclasses.dataclass(frozen=True)
class Workload:
    """One training configuration to time (synthetic data of the right shapes)."""

    name: str
    hidden_dims: tuple[int, ...]
    batch_pairs: int
    seq_len: int = 64
    obs_dim: int = 39
    act_dim: int = 4
    dropout_rate: float = 0.25
    num_pairs: int = 1000
    steps_per_call: int = 10
    """JAX: updates per `train` call (one host sync per call)."""

    @property
    def rows_per_step(self) -> int:
        return self.batch_pairs * 2 * self.seq_len

    @property
    def params(self) -> int:
        dims = (self.obs_dim, *self.hidden_dims, self.act_dim)
        return sum(i * o + o for i, o in zip(dims[:-1], dims[1:]))

    @property
    def flops_per_step(self) -> float:
        return 6.0 * self.params * self.rows_per_step


WORKLOADS = {
    # The CPL/PLARE reference configuration: 2x512, 96 pairs x 64 steps.
    "reference": Workload("reference", (512, 512), 96, steps_per_call=10),
    # The quick CPU preset of the experiment: 2x256, 32 pairs x 64 steps.
    "cpu": Workload("cpu", (256, 256), 32, steps_per_call=50),
}
TINY_WORKLOADS = {
    name: dataclasses.replace(w, hidden_dims=(32, 32), batch_pairs=8, seq_len=16, num_pairs=64, steps_per_call=4)
    for name, w in WORKLOADS.items()
}


@dataclasses.dataclass(frozen=True)
class TrainingBenchConfig:
    """CPL update throughput: plare-jax vs PyTorch eager, matmul peak, device scaling."""

    presets: tuple[Literal["reference", "cpu"], ...] = ("reference", "cpu")
    """Training configurations to time (reference: 2x512, 96 pairs; cpu: 2x256, 32 pairs)."""
    impls: tuple[Literal["jax", "torch"], ...] = ("jax", "torch")
    """Implementations to time side by side."""
    dropout_prng: tuple[DropoutPrng, ...] = ("default",)
    """JAX dropout PRNG implementation(s) (LearnerConfig.dropout_prng; 'default' = the library's);
    'none' = dropout off, to see its cost."""
    dropout_mask: tuple[Literal["default", "packed", "bernoulli"], ...] = ("default",)
    """JAX dropout mask construction(s) (LearnerConfig.dropout_mask; 'default' = the library's):
    'packed' unpacks few bits per unit from 32-bit words, 'bernoulli' draws a float per unit."""
    devices: tuple[int, ...] = (1, 2, 4)
    """Device counts of the scaling rows (empty: no scaling rows)."""
    scaling_preset: Literal["reference", "cpu"] = "reference"
    """Configuration of the scaling rows."""
    mask_rows: bool = True
    """Also time one dropout mask of the first preset's hidden layer per PRNG method (where the step time goes)."""
    seconds: float | None = None
    """Minimum timed seconds per row, after the compile / warm-up call (default 10; 0.2 with --tiny)."""
    repeats: int = 1
    """Run every row this many times, interleaved; the table shows the median."""
    matmul_size: int = 2048
    """Side of the square float32 matmul that measures the peak."""
    tiny: bool = False
    """Tiny sizes (32-wide MLP, 8 pairs x 16 steps, 256^2 matmul; the first preset only, since both shrink to the
    same shapes; at most 2 devices; 0.2 s per row; rows in this process except the 2-device one): a smoke run in seconds."""
    torch_threads: tuple[int, ...] = ()
    """PyTorch intra-op thread counts of the baseline, one torch row each (the first is the baseline of
    "vs torch"); empty: one row with torch's default (one per physical core), which is what a training
    script that does not set it (the CPL reference) gets."""
    quiet_threshold: float = 0.05
    """A timed row is marked busy when other processes used more than this share of all CPUs meanwhile."""
    wait_quiet_s: float = 0.0
    """Before each row, wait up to this many seconds for a 3 s window below --quiet-threshold (0: do not wait;
    ignored with --tiny, whose numbers mean nothing anyway)."""
    out: pathlib.Path | None = None
    """JSON output path (default benchmarks/out/training.json)."""
    seed: int = 0
    """Seed of the synthetic data, parameters and minibatches."""

    def __post_init__(self):
        if (self.seconds is not None and self.seconds <= 0) or self.repeats < 1:
            raise ValueError("--seconds must be > 0 and --repeats >= 1")
        if any(d < 1 for d in self.devices):
            raise ValueError(f"device counts must be >= 1, got {self.devices}")
        if any(n < 1 for n in self.torch_threads):
            raise ValueError(f"--torch-threads must be >= 1, got {self.torch_threads}")
        if not 0 <= self.quiet_threshold <= 1 or self.wait_quiet_s < 0:
            raise ValueError("--quiet-threshold must be in [0, 1] and --wait-quiet-s >= 0")

    @property
    def row_seconds(self) -> float:
        if self.seconds is not None:
            return self.seconds
        return 0.2 if self.tiny else 10.0

    @property
    def run_presets(self) -> tuple[str, ...]:
        return self.presets[:1] if self.tiny else self.presets

    @property
    def scaling_devices(self) -> tuple[int, ...]:
        return tuple(d for d in self.devices if d <= 2) if self.tiny else self.devices

    @property
    def peak_size(self) -> int:
        return 256 if self.tiny else self.matmul_size

    def workload(self, name: str) -> Workload:
        return (TINY_WORKLOADS if self.tiny else WORKLOADS)[name]


# ----------------------------------------------------------------------------- rows (run in child processes)


def matmul_gflops(n: int, repeats: int) -> float:
    """GFLOP/s of a jitted n x n float32 matmul on JAX's default device, best of `repeats`."""
    import jax
    import jax.numpy as jnp

    rng = np.random.default_rng(0)
    a = jnp.asarray(rng.standard_normal((n, n), np.float32))
    b = jnp.asarray(rng.standard_normal((n, n), np.float32))
    matmul = jax.jit(jnp.matmul)
    matmul(a, b).block_until_ready()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        matmul(a, b).block_until_ready()
        best = min(best, time.perf_counter() - start)
    return 2.0 * n**3 / best / 1e9


def matmul_peak_row(n: int, repeats: int = 10) -> dict:
    """The machine's float32 matmul peak as a row (best of `repeats`)."""
    import jax

    return {
        "kind": "peak", "impl": "jax", "preset": f"matmul {n}^2", "device": str(jax.devices()[0].platform),
        "gflops": matmul_gflops(n, repeats), "peak_rss_mib": peak_rss_mib(), "device_memory": jax_device_memory(),
    }  # fmt: skip


def matmul_bound_row(w: Workload, repeats: int = 3, steps: int = 3) -> dict:
    """The update's matmuls alone (forward + backward, same shapes; no bias, activation, dropout, loss, Adam).

    Tall-skinny shapes (K = obs_dim in the first layer, N = act_dim in the last) run below
    the square-matmul peak: this row is the utilisation ceiling of the update on this backend.
    """
    import jax
    import jax.numpy as jnp

    dims = (w.obs_dim, *w.hidden_dims, w.act_dim)
    weights = tuple(jnp.full((i, o), 1e-3, jnp.float32) for i, o in zip(dims[:-1], dims[1:]))
    x = jnp.ones((w.rows_per_step, w.obs_dim), jnp.float32)

    def loss(ws):
        h = x
        for m in ws:
            h = h @ m
        return jnp.sum(h)

    def one_step(_, ws):
        return jax.tree.map(lambda m, g: m - 1e-9 * g, ws, jax.grad(loss)(ws))

    run = jax.jit(lambda ws: jax.lax.fori_loop(0, steps, one_step, ws))
    jax.block_until_ready(run(weights))
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(run(weights))
        best = min(best, (time.perf_counter() - start) / steps)
    return {
        "kind": "matmuls", "impl": "jax (matmuls only)", "preset": w.name, "devices": 1, "params": w.params,
        "rows_per_step": w.rows_per_step, "steps_per_s": 1.0 / best, "pairs_per_s": w.batch_pairs / best,
        "gflops": w.flops_per_step / best / 1e9, "peak_rss_mib": peak_rss_mib(),
    }  # fmt: skip


def dropout_mask_row(w: Workload, method: str, repeats: int = 10) -> dict:
    """ms per dropout mask of one hidden layer's activations [rows, width] (jitted, best of `repeats`).

    Methods: "bernoulli/<impl>": `jax.random.bernoulli` with that PRNG implementation (what
    `nnx.Dropout` does); "packed-u8/threefry2x32": one 32-bit word of threefry gives four
    uint8 thresholds (rate quantised to 1/256, exact for 0.25). Beside it, the layer's
    [rows, width] x [width, width] matmul, for scale.
    """
    import jax
    import jax.numpy as jnp

    shape = (w.rows_per_step, w.hidden_dims[-1])
    keep = 1.0 - w.dropout_rate
    x = jnp.ones(shape, jnp.float32)
    kind, _, impl = method.partition("/")
    key = jax.random.key(0, impl=impl) if impl else None
    if kind == "bernoulli":
        fn = lambda k, x: jnp.where(jax.random.bernoulli(k, keep, shape), x / keep, 0.0)  # noqa: E731
    elif kind == "packed-u8":
        if shape[1] % 4:
            raise ValueError(f"packed-u8 masks need a width divisible by 4, got {shape[1]}")
        threshold = round(w.dropout_rate * 256)

        def fn(k, x):
            words = jax.random.bits(k, (shape[0], shape[1] // 4), jnp.uint32)
            u8 = jax.lax.bitcast_convert_type(words, jnp.uint8).reshape(shape)
            return jnp.where(u8 >= threshold, x / keep, 0.0)
    elif kind == "plare_jax.networks.dropout":
        from plare_jax import networks

        fn = lambda k, x: networks.dropout(x, w.dropout_rate, k)  # noqa: E731
    elif kind == "matmul":
        fn, key = (lambda k, x: x @ k), jnp.ones((shape[1], shape[1]), jnp.float32)  # noqa: E731
    else:
        raise ValueError(f"unknown mask method {method!r}")
    jitted = jax.jit(fn)
    jax.block_until_ready(jitted(key, x))
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(jitted(key, x))
        best = min(best, time.perf_counter() - start)
    return {"kind": "mask", "impl": method, "preset": w.name, "shape": list(shape), "ms": best * 1e3,
            "peak_rss_mib": peak_rss_mib()}  # fmt: skip


MASK_METHODS = ("matmul", "bernoulli/threefry2x32", "bernoulli/rbg", "bernoulli/unsafe_rbg", "packed-u8/threefry2x32")


def dropout_mask_rows(w: Workload) -> list[dict]:
    """`dropout_mask_row` for every method, in one process (they are short)."""
    from plare_jax import learner, networks

    methods = list(MASK_METHODS)
    if hasattr(networks, "dropout"):  # the library's own mask code, with its default PRNG
        methods.append(f"plare_jax.networks.dropout/{learner.LearnerConfig().dropout_prng}")
    return [dropout_mask_row(w, m) for m in methods]


def _synthetic_pairs(w: Workload, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    obs = rng.standard_normal((w.num_pairs, 2, w.seq_len, w.obs_dim), np.float32)
    act = rng.uniform(-1, 1, size=(w.num_pairs, 2, w.seq_len, w.act_dim)).astype(np.float32)
    labels = rng.integers(0, 2, size=w.num_pairs).astype(np.float32)
    return obs, act, labels


def jax_update_row(
    w: Workload, dropout_prng: str, devices: int | None, seconds: float, seed: int, peak_n: int = 0,
    dropout_mask: str = "default",
) -> dict:
    """Times `learner.train(phase="cpl")`: a compile call, then calls until `seconds` have passed.

    `devices` None: no mesh, as a user runs it on one device (an `update` row);
    an int: a data mesh over that many devices (a `scaling` row). `peak_n` > 0: sample the
    `peak_n`^2 matmul peak before every call (`of_peak_paired`: median achieved / neighbouring peak).
    """
    import jax

    from plare_jax.learner import LearnerConfig, LearnerState, PreferenceData, start_phase, train
    from plare_jax.sharding import make_data_mesh

    kind = "update" if devices is None else "scaling"
    base = {
        "kind": kind, "impl": "jax", "preset": w.name, "devices": devices or 1, "dropout_prng": dropout_prng,
        "visible_devices": jax.device_count(),
    }  # fmt: skip
    if (devices or 1) > jax.device_count():
        return {**base, "skipped": f"only {jax.device_count()} devices"}
    config = LearnerConfig(
        hidden_dims=w.hidden_dims, dropout_rate=0.0 if dropout_prng == "none" else w.dropout_rate, batch_pairs=w.batch_pairs
    )
    if dropout_prng not in ("default", "none"):
        config = dataclasses.replace(config, dropout_prng=dropout_prng)
    if dropout_mask != "default":
        config = dataclasses.replace(config, dropout_mask=dropout_mask)
    base["dropout_prng"] = "none" if dropout_prng == "none" else config.dropout_prng
    if dropout_prng != "none":
        base["dropout_prng"] += f" / {getattr(config, 'dropout_mask', 'bernoulli')}"
    mesh = None if devices is None else make_data_mesh(jax.devices()[:devices])
    data = PreferenceData.create(*_synthetic_pairs(w, seed))
    state = start_phase(LearnerState.create(jax.random.key(seed), config, w.obs_dim, w.act_dim), "cpl")
    key = jax.random.key(seed + 1)
    n = w.steps_per_call

    start = time.perf_counter()
    state, metrics = train(state, data, key, n, phase="cpl", metrics_every=n, mesh=mesh)
    jax.block_until_ready((state, metrics))
    compile_s = time.perf_counter() - start

    steps, elapsed, ratios = 0, 0.0, []
    cpu_before = cpu_sample()
    while True:
        # A peak sample right before each call: on a shared machine the load drifts, and
        # the ratio of neighbours in time is what stays comparable (median over calls).
        peak = matmul_gflops(peak_n, repeats=3) if peak_n else None
        start = time.perf_counter()
        # Block on every call: forced host devices can abort on a rendezvous
        # timeout when many collective-running calls are queued (FIELD_NOTES).
        state, metrics = train(state, data, key, n, phase="cpl", metrics_every=n, mesh=mesh)
        jax.block_until_ready((state, metrics))
        call_s = time.perf_counter() - start
        steps, elapsed = steps + n, elapsed + call_s
        if peak:
            ratios.append(w.flops_per_step * n / call_s / 1e9 / peak)
        if elapsed >= seconds and steps >= 2 * n:
            break
    load = cpu_share(cpu_before, cpu_sample())
    if not np.isfinite(float(metrics["loss"][-1])):
        raise FloatingPointError(f"JAX update diverged on {w.name}")
    steps_per_s = steps / elapsed
    return {
        **base, "device": str(jax.devices()[0].platform), "params": w.params, "rows_per_step": w.rows_per_step,
        "steps": steps, "wall_s": elapsed, "compile_s": compile_s, "steps_per_s": steps_per_s,
        "pairs_per_s": steps_per_s * w.batch_pairs, "gflops": w.flops_per_step * steps_per_s / 1e9,
        "of_peak_paired": float(np.median(ratios)) if ratios else None,
        "peak_rss_mib": peak_rss_mib(), "device_memory": jax_device_memory(), **load,
    }  # fmt: skip


def torch_update_row(w: Workload, seconds: float, seed: int, threads: int | None = None) -> dict:
    """Times the PyTorch-eager baseline: host-sampled batch, one step and one `.item()` per Python call.

    `threads`: torch intra-op threads (None: torch's default). The row reports the share of
    the timed wall spent drawing and copying the batch on the host ("host_sample_share").
    """
    import os

    import torch
    from torch import nn

    if threads is not None:
        torch.set_num_threads(threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(seed)
    layers, width = [], w.obs_dim
    for h in w.hidden_dims:
        layers += [nn.Linear(width, h), nn.ReLU(), nn.Dropout(w.dropout_rate)]
        width = h
    actor = nn.Sequential(*layers, nn.Linear(width, w.act_dim), nn.Tanh()).to(device)
    optim = torch.optim.Adam(actor.parameters(), lr=1e-4)
    warmup = 10_000
    sched = torch.optim.lr_scheduler.LambdaLR(optim, lambda k: min(1.0, (k + 1) / warmup))
    obs_all, act_all, labels_all = _synthetic_pairs(w, seed)
    mask_all = np.ones(obs_all.shape[:3], np.float32)
    rng = np.random.default_rng(seed + 1)
    alpha, bias = 0.1, 0.5
    sample_s = [0.0]

    def step() -> float:
        start = time.perf_counter()
        idx = rng.integers(0, w.num_pairs, size=w.batch_pairs)
        obs = torch.from_numpy(obs_all[idx]).to(device)
        act = torch.from_numpy(act_all[idx]).to(device)
        mask = torch.from_numpy(mask_all[idx]).to(device)
        label = torch.from_numpy(labels_all[idx]).to(device)
        sample_s[0] += time.perf_counter() - start
        mu = actor(obs.reshape(-1, w.obs_dim))
        logp = -((mu - act.reshape(-1, w.act_dim)) ** 2).sum(-1).reshape(w.batch_pairs, 2, w.seq_len)
        score = alpha * (logp * mask).sum(-1)  # [B, 2]
        a1, a2 = score[:, 0], score[:, 1]
        nn_f = torch.nn.functional
        loss = (label * nn_f.softplus(-(a2 - bias * a1)) + (1 - label) * nn_f.softplus(-(a1 - bias * a2))).mean()
        optim.zero_grad(set_to_none=True)
        loss.backward()
        optim.step()
        sched.step()
        return loss.item()  # the reference's per-step host sync

    a = torch.randn(2048, 2048, device=device)
    torch.mm(a, a)
    mm_best = float("inf")
    for _ in range(5):
        start = time.perf_counter()
        torch.mm(a, a).sum().item()
        mm_best = min(mm_best, time.perf_counter() - start)
    del a

    actor.train()
    start = time.perf_counter()
    for _ in range(3):
        step()
    warmup_s = time.perf_counter() - start
    sample_s[0] = 0.0
    cpu_before = cpu_sample()
    steps, start = 0, time.perf_counter()
    while True:
        loss = step()
        steps += 1
        elapsed = time.perf_counter() - start
        if elapsed >= seconds and steps >= 3:
            break
    load = cpu_share(cpu_before, cpu_sample())
    if not np.isfinite(loss):
        raise FloatingPointError(f"torch baseline diverged on {w.name}")
    steps_per_s = steps / elapsed
    device_memory = None
    if device.type == "cuda":
        device_memory = {"peak_mib": torch.cuda.max_memory_allocated() / 1024.0**2}
    return {
        "kind": "update", "impl": f"torch-eager ({device.type}, {torch.get_num_threads()} threads)",
        "preset": w.name, "devices": 1, "dropout_prng": "torch", "device": device.type, "params": w.params,
        "rows_per_step": w.rows_per_step, "steps": steps, "wall_s": elapsed, "compile_s": warmup_s,
        "steps_per_s": steps_per_s, "pairs_per_s": steps_per_s * w.batch_pairs,
        "gflops": w.flops_per_step * steps_per_s / 1e9, "peak_rss_mib": peak_rss_mib(), "device_memory": device_memory,
        "torch_matmul_2048_gflops": 2.0 * 2048**3 / mm_best / 1e9, "torch_threads": torch.get_num_threads(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"), "host_sample_share": sample_s[0] / elapsed, **load,
    }  # fmt: skip


# ----------------------------------------------------------------------------- orchestration


def torch_available() -> bool:
    return importlib.util.find_spec("torch") is not None


def _plan(cfg: TrainingBenchConfig) -> list[tuple[str, tuple, dict | None]]:
    """(row id, call, extra env) for every row of one repeat, in run order (no torch rows without torch)."""
    plan = []
    peak_n = cfg.peak_size
    for preset in cfg.run_presets:
        w = cfg.workload(preset)
        for impl in cfg.impls:
            if impl == "torch":
                if torch_available():
                    for threads in cfg.torch_threads or (None,):
                        call = (torch_update_row, w, cfg.row_seconds, cfg.seed, threads)
                        plan.append((f"torch/{preset}/{threads or 'default'}", call, None))
            else:
                for prng in cfg.dropout_prng:
                    for mask in cfg.dropout_mask if prng != "none" else ("default",):
                        call = (jax_update_row, w, prng, None, cfg.row_seconds, cfg.seed, peak_n, mask)
                        plan.append((f"jax/{preset}/{prng}/{mask}", call, None))
        if "jax" in cfg.impls:
            plan.append((f"matmuls/{preset}", (matmul_bound_row, w), None))
    if cfg.mask_rows:
        w = cfg.workload(cfg.presets[0] if cfg.presets else "reference")
        plan.append(("masks", (dropout_mask_rows, w), None))
    w = cfg.workload(cfg.scaling_preset)
    for n in cfg.scaling_devices:
        env = {"XLA_FLAGS": f"--xla_force_host_platform_device_count={n}"}
        if cfg.tiny and n == 1:
            env = None  # one device is what this process has: no process start in a smoke run
        call = (jax_update_row, w, cfg.dropout_prng[0], n, cfg.row_seconds, cfg.seed, peak_n)
        plan.append((f"scaling/{n}", call, env))
    return plan


def _median_row(samples: list[dict]) -> dict:
    """The sample with the median steps/s (or GFLOP/s for peak rows), with all samples attached."""
    metric = {"peak": "gflops", "mask": "ms"}.get(samples[0]["kind"], "steps_per_s")
    valid = [s for s in samples if metric in s]
    if not valid:
        return samples[0]
    ordered = sorted(valid, key=lambda s: s[metric])
    row = dict(ordered[(len(ordered) - 1) // 2])
    if len(samples) > 1:
        row[f"{metric}_samples"] = [s[metric] for s in valid]
        if all(s.get("others_cpu_share") is not None for s in valid):
            row["others_cpu_share_samples"] = [s["others_cpu_share"] for s in valid]
    return row


def run(cfg: TrainingBenchConfig) -> dict:
    """Runs every row (each in its own process) and returns the JSON payload."""
    peak_n = cfg.peak_size
    plan = _plan(cfg)
    samples: dict[str, list[dict]] = {"peak/start": [], "peak/end": []}
    samples.update({row_id: [] for row_id, _, _ in plan})
    waits = []

    def run_row(fn, *args, env=None):
        if cfg.wait_quiet_s > 0 and not cfg.tiny:
            waits.append(wait_until_quiet(cfg.quiet_threshold, cfg.wait_quiet_s))
        if cfg.tiny and env is None:
            return fn(*args)  # tiny: no process start per row (the smoke run takes seconds)
        return run_isolated(fn, *args, env=env)

    with tqdm(total=cfg.repeats * (len(plan) + 2), desc="training rows", unit="row", file=sys.stderr) as bar:
        for _ in range(cfg.repeats):  # interleaved: a disturbance hits every row of a repeat alike
            samples["peak/start"].append(run_row(matmul_peak_row, peak_n))
            bar.update()
            for row_id, (fn, *args), env in plan:
                bar.set_postfix_str(row_id)
                samples[row_id].append(run_row(fn, *args, env=env))
                bar.update()
            samples["peak/end"].append(run_row(matmul_peak_row, peak_n))
            bar.update()
    # The mask rows come back as one list per repeat; regroup them by method.
    for per_repeat in samples.pop("masks", []):
        for row in per_repeat:
            samples.setdefault(f"mask/{row['impl']}", []).append(row)
    rows = [_median_row(s) for s in samples.values()]
    peak = max(r["gflops"] for r in rows if r["kind"] == "peak")
    _derive(rows, peak, cfg.quiet_threshold)
    notes = []
    if "torch" in cfg.impls and not torch_available():
        notes.append('torch is not installed: no PyTorch baseline rows (pip install -e ".[bench]" adds it)')
    busy = [r for r in rows if r.get("busy")]
    if busy:
        notes.append(
            f"{len(busy)} of {sum('others_cpu_share' in r for r in rows)} timed rows ran while other processes used "
            f"more than {cfg.quiet_threshold:.0%} of the CPUs (column others' CPU): not quiet-machine figures; "
            "PyTorch's threads lose more than XLA's under contention, so their ratios overstate the lead"
        )
    return {
        "benchmark": "training",
        "config": {k: (str(v) if isinstance(v, pathlib.Path) else v) for k, v in dataclasses.asdict(cfg).items()},
        "notes": notes,
        "quiet_waits": waits,
        "matmul_peak_gflops": peak,
        "machine": machine_info(extra_packages=("torch", "optax")),
        "rows": rows,
    }


def _derive(rows: list[dict], peak: float, quiet_threshold: float = 0.05) -> None:
    """Adds utilisation (of the run's matmul peak), speed-up vs torch, scaling efficiency, busy marks."""
    torch_by_preset = {}
    for r in rows:  # the first torch row of each preset is the baseline
        if r["impl"].startswith("torch") and "steps_per_s" in r:
            torch_by_preset.setdefault(r["preset"], r)
    scaling_one = next((r for r in rows if r["kind"] == "scaling" and r.get("devices") == 1), None)
    for r in rows:
        if "gflops" in r and r["kind"] != "peak":
            r["of_peak"] = r["gflops"] / peak
        baseline = torch_by_preset.get(r.get("preset"))
        if r["kind"] == "update" and baseline and "steps_per_s" in r:
            r["vs_torch"] = r["steps_per_s"] / baseline["steps_per_s"]
            if "steps_per_s_samples" in r and "steps_per_s_samples" in baseline:
                # Per repeat: both sides ran minutes apart at most, under the same load.
                pairs = zip(r["steps_per_s_samples"], baseline["steps_per_s_samples"])
                r["vs_torch_per_repeat"] = [a / b for a, b in pairs]
        if r["kind"] == "scaling" and scaling_one and "steps_per_s" in r:
            r["vs_1_device"] = r["steps_per_s"] / scaling_one["steps_per_s"]
        if r.get("others_cpu_share") is not None:
            # the median row's share; the worst share over the repeats decides whether the ratio is quotable
            shares = [r["others_cpu_share"], *r.get("others_cpu_share_samples", [])]
            r["busy"] = max(shares) > quiet_threshold


COLUMNS = [
    ("kind", "row"), ("impl", "impl"), ("preset", "config"), ("devices", "devices"), ("dropout_prng", "dropout PRNG / mask"),
    ("steps_per_s", "steps/s"), ("pairs_per_s", "pairs/s"), ("gflops", "GFLOP/s"), ("of_peak", "of peak"),
    ("of_peak_paired", "of peak (paired)"),
    ("vs_torch", "vs torch"), ("vs_1_device", "vs 1 dev"), ("compile_s", "compile/warm-up s"),
    ("peak_rss_mib", "peak RSS MiB"), ("device_peak_mib", "device peak MiB"), ("others_cpu_share", "others' CPU"),
    ("busy_mark", "busy"),
]  # fmt: skip
MASK_COLUMNS = [("impl", "dropout mask method"), ("preset", "config"), ("shape", "mask shape"), ("ms", "ms per mask")]


def main(cfg: TrainingBenchConfig) -> dict:
    payload = run(cfg)
    for r in payload["rows"]:
        r["device_peak_mib"] = (r.get("device_memory") or {}).get("peak_mib")
        if "skipped" in r:
            r["impl"] = f"{r['impl']} (skipped: {r['skipped']})"
        if "busy" in r:
            r["busy_mark"] = "BUSY" if r["busy"] else "quiet"
    path = write_json(cfg.out or default_out("training"), payload)
    print(markdown_table([r for r in payload["rows"] if r["kind"] != "mask"], COLUMNS))
    masks = [r for r in payload["rows"] if r["kind"] == "mask"]
    if masks:
        print("\n" + markdown_table(masks, MASK_COLUMNS))
    print(f"\nmatmul peak {payload['matmul_peak_gflops']:.1f} GFLOP/s; JSON: {path}")
    for note in payload["notes"]:
        print(f"note: {note}")
    return payload


def parse_args(argv: list[str] | None = None) -> TrainingBenchConfig:
    """The options of this script (argv: None = the command line)."""
    return tyro.cli(TrainingBenchConfig, args=argv)


if __name__ == "__main__":
    main(parse_args())
