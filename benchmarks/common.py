"""Shared plumbing of the benchmark scripts: isolated runs, memory, machine info, output.

Every benchmark row runs in its own spawned process (`run_isolated`), so that
`ru_maxrss` is the peak host memory of that row alone and environment variables
read at import time (XLA_FLAGS, MUJOCO_GL) can differ per row. The scripts write
one JSON file (rows + machine) and print a markdown table of the same rows.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import datetime
import json
import multiprocessing
import os
import pathlib
import platform
import resource
import subprocess
import time
from collections.abc import Callable, Sequence
from typing import Any

__all__ = [
    "CpuSample",
    "cpu_sample",
    "cpu_share",
    "wait_until_quiet",
    "peak_rss_mib",
    "jax_device_memory",
    "run_isolated",
    "machine_info",
    "markdown_table",
    "write_json",
    "default_out",
    "python_env_with_repo",
]

OUT_DIR = pathlib.Path(__file__).resolve().parent / "out"


def peak_rss_mib() -> float:
    """Peak resident memory of this process so far, in MiB.

    Linux's `ru_maxrss` keeps the high-water mark of the forked copy of the parent across
    exec, so in a spawned child it is at least the parent's size at spawn time; VmHWM in
    /proc/self/status is this process image's own peak. `ru_maxrss` where /proc is missing.
    """
    with contextlib.suppress(OSError, ValueError):
        for line in pathlib.Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


@dataclasses.dataclass(frozen=True)
class CpuSample:
    """Cumulative CPU time of the whole machine and of this process, at one instant.

    Attributes:
        wall: time.perf_counter() at the sample.
        machine_busy_s: CPU seconds all CPUs spent busy since boot (user, nice, system, irq,
            softirq, and steal: time a VM neighbour took), from /proc/stat; None without /proc.
        machine_total_s: the same plus idle and iowait (CPUs x wall since boot).
        own_s: CPU seconds of this process, all threads (user + system), plus those of its
            children that have ended and been waited for (e.g. evaluation workers: the work
            being timed, not a neighbour's).
    """

    wall: float
    machine_busy_s: float | None
    machine_total_s: float | None
    own_s: float


def cpu_sample() -> CpuSample:
    """The CPU counters now (see `CpuSample`); `cpu_share` turns two of them into shares."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    busy = total = None
    with contextlib.suppress(OSError, ValueError, IndexError):
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
        # user nice system idle iowait irq softirq steal (guest time is already inside user)
        user, nice, system, idle, iowait, irq, softirq, steal = (fields + [0] * 8)[:8]
        hz = os.sysconf("SC_CLK_TCK")
        busy = (user + nice + system + irq + softirq + steal) / hz
        total = busy + (idle + iowait) / hz
    return CpuSample(time.perf_counter(), busy, total,
                     usage.ru_utime + usage.ru_stime + children.ru_utime + children.ru_stime)


def cpu_share(before: CpuSample, after: CpuSample) -> dict[str, float | None]:
    """What the machine's CPUs did between two samples.

    Returns:
        others_cpu_share: fraction of all CPUs' time used by everything except this process
            (other processes, the kernel, VM steal): 0 on a quiet machine, 0.5 when other work
            kept one of two cores busy. None without /proc/stat.
        own_cores: CPU seconds of this process per wall second (2.0 = two cores busy).
        load_avg_1m: the 1-minute load average at the end.
    """
    wall = max(after.wall - before.wall, 1e-9)
    own = after.own_s - before.own_s
    others = None
    if before.machine_busy_s is not None and after.machine_busy_s is not None:
        total = max(after.machine_total_s - before.machine_total_s, 1e-9)
        # /proc/stat ticks at 100 Hz: clamp the rounding of short windows into [0, 1].
        others = min(1.0, max(0.0, (after.machine_busy_s - before.machine_busy_s - own) / total))
    return {"others_cpu_share": others, "own_cores": own / wall, "load_avg_1m": round(os.getloadavg()[0], 2)}


def wait_until_quiet(threshold: float, timeout_s: float, window_s: float = 3.0) -> dict[str, float | None]:
    """Waits until other processes use at most `threshold` of the CPUs over `window_s`, or `timeout_s` passed.

    Returns the last window's `cpu_share` plus "waited_s" and "quiet" (whether the threshold was met).
    """
    start = time.perf_counter()
    while True:
        before = cpu_sample()
        time.sleep(window_s)
        share = cpu_share(before, cpu_sample())
        waited = time.perf_counter() - start
        quiet = share["others_cpu_share"] is not None and share["others_cpu_share"] <= threshold
        if quiet or waited >= timeout_s or share["others_cpu_share"] is None:
            return {**share, "waited_s": waited, "quiet": quiet}


def jax_device_memory() -> dict[str, float] | None:
    """Peak / in-use memory of JAX device 0 in MiB, or None where the backend reports none (CPU)."""
    import jax

    stats = jax.devices()[0].memory_stats()
    if not stats:
        return None
    mib = 1024.0**2
    return {
        "peak_mib": stats.get("peak_bytes_in_use", 0) / mib,
        "in_use_mib": stats.get("bytes_in_use", 0) / mib,
    }


@contextlib.contextmanager
def _patched_environ(env: dict[str, str] | None):
    saved = dict(os.environ)
    os.environ.update(env or {})
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


def run_isolated(fn: Callable[..., Any], *args: Any, env: dict[str, str] | None = None, timeout_s: float = 900) -> Any:
    """Runs `fn(*args)` in a fresh spawned process and returns its result.

    The child inherits this process's environment plus `env` (set before the child
    imports anything, so XLA_FLAGS / MUJOCO_GL take effect). `fn` must be a
    module-level function; exceptions in the child are re-raised here.

    Args:
        fn: Picklable function to call.
        *args: Picklable arguments.
        env: Extra environment variables for the child only.
        timeout_s: Wall-clock limit of the call.
    """
    ctx = multiprocessing.get_context("spawn")
    with _patched_environ(env):
        pool = concurrent.futures.ProcessPoolExecutor(max_workers=1, mp_context=ctx)
        future = pool.submit(fn, *args)  # the worker process starts here, with `env`
    with pool:
        return future.result(timeout=timeout_s)


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def _git_commit() -> str | None:
    with contextlib.suppress(OSError, subprocess.CalledProcessError):
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True,
            cwd=pathlib.Path(__file__).resolve().parent,
        )  # fmt: skip
        return out.stdout.strip()
    return None


def machine_info(extra_packages: Sequence[str] = ()) -> dict[str, Any]:
    """CPU, core count, memory, Python, package versions, git commit, UTC time."""
    import importlib.metadata

    try:
        mem_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1024.0**3
    except (ValueError, OSError):
        mem_gib = None
    versions = {}
    for name in ("jax", "jaxlib", "flax", "numpy", *extra_packages):
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return {
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "memory_gib": round(mem_gib, 1) if mem_gib else None,
        "load_avg_1m": round(os.getloadavg()[0], 2),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "packages": versions,
        "git_commit": _git_commit(),
        "utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        if value != value:  # NaN
            return "-"
        return f"{value:.3g}" if abs(value) < 100 else f"{value:.0f}"
    return str(value)


def markdown_table(rows: Sequence[dict[str, Any]], columns: Sequence[tuple[str, str]]) -> str:
    """A markdown table of `rows`, one column per (key, header); missing keys print '-'."""
    lines = ["| " + " | ".join(h for _, h in columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        lines.append("| " + " | ".join(_cell(row.get(k)) for k, _ in columns) + " |")
    return "\n".join(lines)


def default_out(name: str) -> pathlib.Path:
    """benchmarks/out/<name>.json (git-ignored)."""
    return OUT_DIR / f"{name}.json"


def write_json(path: pathlib.Path | str, payload: dict[str, Any]) -> pathlib.Path:
    """Writes `payload` as indented JSON, atomically (temp file + rename); creates the folder."""
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(payload, indent=2, default=float) + "\n")
    tmp.replace(path)
    return path


def python_env_with_repo() -> dict[str, str]:
    """This environment with the repository root on PYTHONPATH (for child `python -m ...`)."""
    root = str(pathlib.Path(__file__).resolve().parent.parent)
    current = os.environ.get("PYTHONPATH", "")
    return {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (root, current) if p)}
