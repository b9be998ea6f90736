"""VLM client throughput against the loopback server: pairs/s vs concurrency.

Each pair costs 2 requests; with a fixed server latency L and C pairs in flight,
the ideal is C / (2 L) pairs/s. Measures the client's overhead (asyncio, openai,
HTTP), not a model's speed.

    PYTHONPATH=. python benchmarks/vlm_client_throughput.py --latency-s 0.25 --pairs 256 --concurrency 1 32
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import time
import urllib.request

import numpy as np

from plare_jax.labeling import PairBatch, VLMConfig, VLMLabeler
from plare_jax.labeling.launcher import free_port
from plare_jax.labeling.loopback_server import DEFAULT_MODEL, LoopbackBehavior, LoopbackVLMServer, brightness_png


@contextlib.contextmanager
def server_process(latency_s: float):
    """The loopback server in its own process, so it does not share the client's GIL."""
    port = free_port()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([os.getcwd(), os.environ.get("PYTHONPATH", "")])}
    cmd = [sys.executable, "-m", "plare_jax.labeling.loopback_server", "--port", str(port), "--latency-s", str(latency_s)]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1)
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("loopback server process did not start") from None
                time.sleep(0.1)
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@contextlib.contextmanager
def server_thread(latency_s: float):
    with LoopbackVLMServer(behavior=LoopbackBehavior(latency_s=latency_s)) as server:
        yield server.base_url


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--latency-s", type=float, default=0.25, help="server latency per request")
    parser.add_argument("--pairs", type=int, default=256, help="pairs per run at the highest concurrency")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--in-process-server", action="store_true", help="server thread in this process (shares the GIL)")
    args = parser.parse_args()

    rng = np.random.default_rng(args.seed)
    levels = rng.integers(0, 256, size=(args.pairs, 2))
    images = [(brightness_png(a / 255, size=16), brightness_png(b / 255, size=17)) for a, b in levels]
    rows = []
    serve = server_thread if args.in_process_server else server_process
    with serve(args.latency_s) as base_url:
        for c in args.concurrency:
            # at C=1 a full run would take minutes; 4 rounds of C pairs are enough
            n = min(args.pairs, max(4 * c, 8))
            config = VLMConfig(base_url=base_url, model=DEFAULT_MODEL, concurrency=c)
            stats = VLMLabeler(config).label(PairBatch("open the drawer", images=images[:n]), progress=False).stats
            ideal = c / (2 * args.latency_s)
            rows.append({
                "concurrency": c, "pairs": n, "pairs_per_s": round(stats["pairs_per_s"], 2),
                "ideal_pairs_per_s": round(ideal, 2), "fraction_of_ideal": round(stats["pairs_per_s"] / ideal, 3),
                "requests_per_s": round(stats["requests_per_s"], 2), "latency_p50_s": round(stats["latency_p50_s"], 3),
                "latency_p99_s": round(stats["latency_p99_s"], 3), "wall_s": round(stats["wall_s"], 2),
            })  # fmt: skip
            print(json.dumps(rows[-1]), flush=True)
    print(f"{'C':>4} {'pairs/s':>9} {'ideal':>8} {'of ideal':>9} {'p50 s':>7} {'p99 s':>7}")
    for r in rows:
        print(f"{r['concurrency']:>4} {r['pairs_per_s']:>9.2f} {r['ideal_pairs_per_s']:>8.2f} "
              f"{r['fraction_of_ideal']:>9.1%} {r['latency_p50_s']:>7.3f} {r['latency_p99_s']:>7.3f}")  # fmt: skip


if __name__ == "__main__":
    main()
