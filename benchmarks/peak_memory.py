"""Wall time and peak memory of a whole command: the process and every process it starts.

A job that spawns workers (data collection, rendering, evaluation) holds memory in all of
them at once; the peak of the main process alone understates what the machine needs. This
samples the process tree every `--interval-s` from /proc and reports the peak of the sum:

- PSS (proportional set size, /proc/PID/smaps_rollup): shared pages (libraries, the Python
  runtime) are split between the processes that map them, so the sum is what the tree
  really occupies. Falls back to RSS where smaps_rollup is not readable.
- RSS summed over the tree: counts shared pages once per process (an upper bound).
- the main process's own peak (VmHWM), what a per-process figure would have said.

    python benchmarks/peak_memory.py -- python experiments/metaworld.py --env sweep-into
    python benchmarks/peak_memory.py --tiny       # measures a small Python child (seconds; tests)

Linux only (reads /proc).
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import subprocess
import sys
import tempfile
import time

MIB = 1024.0 * 1024.0


def children_of(pid: int) -> list[int]:
    """Direct children of `pid`, from /proc/PID/task/*/children (Linux >= 3.5)."""
    found = []
    for task in pathlib.Path(f"/proc/{pid}/task").glob("*"):
        try:
            found += [int(c) for c in (task / "children").read_text().split()]
        except (OSError, ValueError):
            continue
    return found


def process_tree(root: int) -> list[int]:
    """`root` and all its descendants alive now."""
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo += children_of(pid)
    return tree


def _status_kib(pid: int, field: str) -> int:
    try:
        for line in pathlib.Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return 0


def _pss_kib(pid: int) -> int | None:
    try:
        for line in pathlib.Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def measure(command: list[str], interval_s: float = 0.2) -> dict:
    """Runs `command` to the end, sampling its process tree; returns wall, exit code and peaks (MiB)."""
    start = time.perf_counter()
    proc = subprocess.Popen(command)
    peak_pss = peak_rss = 0.0
    peak_processes = 1
    main_hwm = 0
    pss_exact = True
    while True:
        exited = proc.poll() is not None
        if not exited:
            tree = process_tree(proc.pid)
            rss = [_status_kib(pid, "VmRSS") for pid in tree]
            pss = [_pss_kib(pid) for pid in tree]
            # a process that exited between the listing and the read shows RSS 0 and no PSS: not a gap
            pss_exact &= all(p is not None for p, r in zip(pss, rss) if r > 0)
            pss_total = sum(p if p is not None else r for p, r in zip(pss, rss))
            peak_pss = max(peak_pss, pss_total / 1024.0)
            peak_rss = max(peak_rss, sum(rss) / 1024.0)
            peak_processes = max(peak_processes, len(tree))
            main_hwm = max(main_hwm, _status_kib(proc.pid, "VmHWM"))
        if exited:
            break
        time.sleep(interval_s)
    return {
        "command": command,
        "exit_code": proc.returncode,
        "wall_s": time.perf_counter() - start,
        "peak_tree_pss_mib": peak_pss,
        "pss_exact": pss_exact,
        "peak_tree_rss_sum_mib": peak_rss,
        "peak_processes": peak_processes,
        "main_process_peak_mib": main_hwm / 1024.0,
        "interval_s": interval_s,
    }


# A child that holds ~100 MiB in itself and ~100 MiB in each of 2 spawned workers, all at once
# for 2 s (the workers wait until the parent has seen both of them holding theirs).
TINY_CHILD = """
import multiprocessing as mp, time

def touched(mib):
    block = bytearray(mib * 1024 * 1024)
    block[::4096] = b"x" * len(block[::4096])  # make the pages resident
    return block

def hold(mib, ready, release):
    block = touched(mib)
    ready.put(1)
    release.wait()

if __name__ == "__main__":
    ctx = mp.get_context("spawn")
    mine = touched(100)
    ready, release = ctx.Queue(), ctx.Event()
    workers = [ctx.Process(target=hold, args=(100, ready, release)) for _ in range(2)]
    for w in workers:
        w.start()
    for _ in workers:
        ready.get()
    time.sleep(2.0)
    release.set()
    for w in workers:
        w.join()
"""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The options of this script (argv: None = the command line)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", nargs=argparse.REMAINDER, help="the command to measure, after --")
    parser.add_argument("--interval-s", type=float, default=0.2, help="sampling interval in seconds")
    parser.add_argument("--tiny", action="store_true", help="measure a small Python child with 2 workers (seconds)")
    parser.add_argument("--out", type=pathlib.Path, default=None, help="also write the result as JSON here")
    args = parser.parse_args(argv)
    if args.command and args.command[0] == "--":
        args.command = args.command[1:]
    if not args.command and not args.tiny:
        parser.error("give the command to measure after --, or --tiny")
    if args.interval_s <= 0:
        parser.error("--interval-s must be > 0")
    return args


def main(argv: list[str] | None = None) -> int:
    if not os.path.isdir("/proc/self/task"):
        print("error: benchmarks/peak_memory.py reads /proc: Linux only", file=sys.stderr)
        return 2
    args = parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        if args.tiny:  # a file, not `python -c`: spawned workers re-import their parent's script
            child = pathlib.Path(tmp) / "tiny_child.py"
            child.write_text(TINY_CHILD)
            args.command = [sys.executable, str(child)]
        result = measure(args.command, args.interval_s)
    print(
        f"exit code {result['exit_code']}, {result['wall_s']:.1f} s; peak memory of the whole process tree "
        f"(up to {result['peak_processes']} processes): {result['peak_tree_pss_mib']:.0f} MiB PSS"
        f"{'' if result['pss_exact'] else ' (RSS where PSS was unreadable)'}, "
        f"{result['peak_tree_rss_sum_mib']:.0f} MiB RSS summed; main process alone: "
        f"{result['main_process_peak_mib']:.0f} MiB"
    )
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
