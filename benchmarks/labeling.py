"""Labeling throughput: keyframe rendering and the VLM client, each side by side with its baseline.

Rows, each measured in its own process (peak host memory per row):
- `render`: keyframes/s of plare-jax's renderer vs a raw `mujoco.Renderer` loop on the
  same scene, camera and size, with 1 and N worker processes.
- `vlm`: pairs/s of `VLMLabeler` against the loopback OpenAI-compatible server (its
  own process, so it does not share the client's GIL) with a fixed latency L per
  request, at concurrency C = 1, 8, 32, 128; a pair is two sequential requests, so the
  ideal is C / (2 L). Beside it, the reference's way: one pair at a time, a plain loop
  of the two-stage query with the synchronous client (no asyncio); ideal 1 / (2 L).
- `vlm-endpoint`: with `--base-url`, pairs/s against a real server (e.g. `vllm serve`).

    python benchmarks/labeling.py                  # full run, ~3 min on 2 cores
    python benchmarks/labeling.py --tiny           # seconds (tests, CI)
    python benchmarks/labeling.py --parts vlm --base-url http://127.0.0.1:8000/v1 --model Qwen/Qwen2.5-VL-7B-Instruct
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import pathlib
import resource
import subprocess
import sys
import time
import urllib.request
from typing import Literal

if __package__ in (None, ""):  # run as `python benchmarks/labeling.py`: make `benchmarks` importable
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))

import numpy as np
import tyro

from benchmarks.common import (
    default_out,
    machine_info,
    markdown_table,
    peak_rss_mib,
    python_env_with_repo,
    run_isolated,
    write_json,
)


@dataclasses.dataclass(frozen=True)
class LabelingBenchConfig:
    """Keyframe rendering and VLM client throughput, side by side with their baselines."""

    parts: tuple[Literal["render", "vlm"], ...] = ("render", "vlm")
    """Which benchmarks to run."""
    concurrency: tuple[int, ...] = (1, 8, 32, 128)
    """VLM client: pairs in flight at once."""
    latency_s: float = 0.25
    """Loopback server: fixed latency of every request, in seconds."""
    rounds: int = 8
    """VLM client: pairs per row = rounds x concurrency (at least 8)."""
    sequential_pairs: int = 8
    """Pairs of the one-at-a-time baseline (the reference's sequential loop)."""
    image_px: int = 200
    """Side of the square test images sent per clip (uniform grey PNGs)."""
    base_url: str | None = None
    """OpenAI-compatible endpoint (e.g. a vLLM server) to measure as well; None: loopback server only."""
    model: str = "Qwen/Qwen2.5-VL-7B-Instruct"
    """Model name served at --base-url."""
    render_task: str = "drawer-open-v3"
    """MetaWorld task whose scene is rendered."""
    render_size: int = 200
    """Rendered frame side in pixels (the reference: 200)."""
    render_segments: int = 80
    """Segments rendered per row (3 keyframes each), split over the processes."""
    render_repeats: int = 2
    """Each rendering row runs this many times, interleaved; the table shows the best."""
    workers: tuple[int, ...] = (1, 2)
    """Worker process counts of the rendering rows."""
    default_visuals_row: bool = True
    """Also time a bare renderer with MetaWorld's default visuals (shadows, MSAA), on a few frames."""
    tiny: bool = False
    """Tiny sizes (latency 20 ms, C up to 8, 64 px frames, few segments): a smoke run in seconds."""
    out: pathlib.Path | None = None
    """JSON output path (default benchmarks/out/labeling.json)."""
    seed: int = 0
    """Seed of the test images and of the rendered segments."""

    def __post_init__(self):
        if self.latency_s < 0 or self.rounds < 1 or any(c < 1 for c in self.concurrency):
            raise ValueError("latency_s must be >= 0, rounds >= 1 and every concurrency >= 1")
        if any(n < 1 for n in self.workers) or self.render_segments < 1 or self.render_repeats < 1:
            raise ValueError("workers, render_segments and render_repeats must be >= 1")

    def effective(self) -> LabelingBenchConfig:
        """The configuration actually run (`--tiny` shrinks the sizes)."""
        if not self.tiny:
            return self
        return dataclasses.replace(
            self, concurrency=tuple(c for c in self.concurrency if c <= 8) or (1,), latency_s=0.02, rounds=4,
            sequential_pairs=4, image_px=32, render_size=64, render_segments=2, render_repeats=1, default_visuals_row=False,
        )  # fmt: skip


# ----------------------------------------------------------------------------- VLM client


def _test_images(n: int, px: int, seed: int) -> list[tuple[bytes, bytes]]:
    """n distinct pairs of uniform grey PNGs (distinct so the labeler's de-duplication does not skip any)."""
    from plare_jax.testing.loopback_server import brightness_png

    rng = np.random.default_rng(seed)
    levels = rng.permutation(256 * 256)[:n]
    # Two images of different sizes per pair: distinct content, and the PNG bytes differ per pair.
    return [(brightness_png((v // 256) / 255, size=px), brightness_png((v % 256) / 255, size=px + 1)) for v in levels]


@contextlib.contextmanager
def loopback_server_process(latency_s: float, model: str):
    """The loopback server in its own process; yields (base_url, pid)."""
    from plare_jax.labeling.launcher import free_port

    port = free_port()
    cmd = [sys.executable, "-m", "plare_jax.testing.loopback_server", "--port", str(port),
           "--latency-s", str(latency_s), "--model", model]  # fmt: skip
    proc = subprocess.Popen(cmd, env=python_env_with_repo(), stdout=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"the loopback server process did not start (exit code {proc.poll()})") from None
                time.sleep(0.1)
        yield f"http://127.0.0.1:{port}/v1", proc.pid
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def _process_peak_rss_mib(pid: int) -> float | None:
    """Peak RSS (VmHWM) of a running process, in MiB; None where /proc is unavailable."""
    with contextlib.suppress(OSError, ValueError):
        for line in pathlib.Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    return None


def _process_cpu_s(pid: int) -> float | None:
    """CPU seconds (user + system, all threads) a running process has used; None without /proc."""
    with contextlib.suppress(OSError, ValueError, IndexError):
        fields = pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return None


def _self_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def vlm_client_row(base_url: str, model: str, concurrency: int, pairs: int, px: int, seed: int, ideal: float | None) -> dict:
    """pairs/s of `VLMLabeler` (asyncio, C pairs in flight) on `pairs` distinct pairs."""
    from plare_jax.labeling import PairBatch, VLMConfig, VLMLabeler

    images = _test_images(pairs, px, seed)
    config = VLMConfig(base_url=base_url, model=model, concurrency=concurrency)
    cpu = _self_cpu_s()
    result = VLMLabeler(config).label(PairBatch("open the drawer", images=images), progress=False)
    stats = result.stats
    client_cores = (_self_cpu_s() - cpu) / stats["wall_s"]
    if stats["failed"] or stats["malformed"]:
        raise RuntimeError(f"{stats['failed']} failed and {stats['malformed']} malformed pairs: not a clean throughput run")
    return {
        "kind": "vlm", "impl": "plare-jax VLMLabeler (asyncio)", "concurrency": concurrency, "pairs": pairs,
        "pairs_per_s": stats["pairs_per_s"], "ideal_pairs_per_s": ideal,
        "of_ideal": stats["pairs_per_s"] / ideal if ideal else None, "requests_per_s": stats["requests_per_s"],
        "latency_p50_s": stats["latency_p50_s"], "latency_p99_s": stats["latency_p99_s"], "wall_s": stats["wall_s"],
        "client_cores": client_cores, "peak_rss_mib": peak_rss_mib(),
    }  # fmt: skip


def vlm_sequential_row(base_url: str, model: str, pairs: int, px: int, seed: int, ideal: float | None) -> dict:
    """The reference's way: one pair at a time, stage 1 then stage 2, synchronous client, no asyncio."""
    import base64

    import openai

    from plare_jax.labeling.vlm import CHOICES, load_prompts, parse_choice

    stage1, stage2 = load_prompts("v1")
    task = "open the drawer"
    client = openai.OpenAI(base_url=base_url, api_key=os.environ.get("OPENAI_API_KEY") or "EMPTY", max_retries=3)

    def url(png: bytes) -> str:
        return "data:image/png;base64," + base64.b64encode(png).decode("ascii")

    images = _test_images(pairs, px, seed)
    cpu, start = _self_cpu_s(), time.perf_counter()
    answers = []
    for first, second in images:
        content = [
            {"type": "text", "text": stage1.replace("{task}", task)},
            {"type": "image_url", "image_url": {"url": url(first)}},
            {"type": "image_url", "image_url": {"url": url(second)}},
        ]
        described = client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": content}], temperature=0.0, max_tokens=1024
        )
        text = stage2.replace("{task}", task).replace("{stage1_answer}", described.choices[0].message.content or "")
        chosen = client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": text}], temperature=0.0, max_tokens=1024,
            extra_body={"guided_choice": list(CHOICES), "structured_outputs": {"choice": list(CHOICES)}},
        )  # fmt: skip
        answers.append(parse_choice(chosen.choices[0].message.content))
    wall = time.perf_counter() - start
    client_cores = (_self_cpu_s() - cpu) / wall
    client.close()
    if any(a is None for a in answers):
        raise RuntimeError("malformed answers in the sequential baseline: not a clean throughput run")
    return {
        "kind": "vlm", "impl": "sequential loop (reference)", "concurrency": 1, "pairs": pairs,
        "pairs_per_s": pairs / wall, "ideal_pairs_per_s": ideal, "of_ideal": pairs / wall / ideal if ideal else None,
        "requests_per_s": 2 * pairs / wall, "wall_s": wall, "client_cores": client_cores, "peak_rss_mib": peak_rss_mib(),
    }  # fmt: skip


def _server_cores(pid: int | None, cpu_before: float | None, row: dict) -> float | None:
    """Cores the loopback server used on average during a row (an upper bound: includes the client's start-up)."""
    if pid is None or cpu_before is None:
        return None
    after = _process_cpu_s(pid)
    return None if after is None else (after - cpu_before) / row["wall_s"]


def vlm_rows(cfg: LabelingBenchConfig, bar) -> list[dict]:
    rows = []
    targets = [("loopback", None)] + ([("endpoint", cfg.base_url)] if cfg.base_url else [])
    for name, url in targets:
        with contextlib.ExitStack() as stack:
            server_pid = None
            if url is None:
                url, server_pid = stack.enter_context(loopback_server_process(cfg.latency_s, cfg.model))
            # The ideal needs a known latency: only for the loopback server.
            ideal_per_slot = 1.0 / (2.0 * cfg.latency_s) if name == "loopback" and cfg.latency_s > 0 else None
            n_seq = cfg.sequential_pairs
            server_cpu = _process_cpu_s(server_pid) if server_pid else None
            row = run_isolated(vlm_sequential_row, url, cfg.model, n_seq, cfg.image_px, cfg.seed, ideal_per_slot)
            rows.append({**row, "server": name, "server_cores": _server_cores(server_pid, server_cpu, row)})
            bar.update()
            for c in cfg.concurrency:
                pairs = max(cfg.rounds * c, 8)
                ideal = c * ideal_per_slot if ideal_per_slot else None
                # A new seed per row: every row sends pairs the server has not seen.
                server_cpu = _process_cpu_s(server_pid) if server_pid else None
                row = run_isolated(vlm_client_row, url, cfg.model, c, pairs, cfg.image_px, cfg.seed + c, ideal)
                rows.append({**row, "server": name, "server_cores": _server_cores(server_pid, server_cpu, row)})
                bar.update()
            if server_pid is not None:
                rows[-1]["server_peak_rss_mib"] = _process_peak_rss_mib(server_pid)
    return rows


VLM_COLUMNS = [
    ("server", "server"), ("impl", "client"), ("concurrency", "C"), ("pairs", "pairs"), ("pairs_per_s", "pairs/s"),
    ("ideal_pairs_per_s", "ideal C/(2L)"), ("of_ideal", "of ideal"), ("latency_p50_s", "p50 s"),
    ("latency_p99_s", "p99 s"), ("client_cores", "client cores"), ("server_cores", "server cores"), ("peak_rss_mib", "client peak RSS MiB"), ("server_peak_rss_mib", "server peak RSS MiB"),
]  # fmt: skip


# ----------------------------------------------------------------------------- rendering


def _segment_states(task: str, segments: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """One layout and the stored simulator states of `segments` x 3 keyframes of a random-action episode.

    Returns:
        layout [L], states [segments * 3, S] (keyframes at steps 0, 36, 63 of consecutive 64-step segments,
        wrapping over an episode of at most 500 steps).
    """
    from plare_jax.envs.sim import MAX_EPISODE_STEPS, TaskEnv

    env = TaskEnv(task)
    rng = np.random.default_rng(seed)
    layout = env.sample_layout(rng)
    env.reset(layout)
    episode = [env.get_sim_state()]
    length = min(MAX_EPISODE_STEPS, 64 * segments)
    for _ in range(length - 1):
        env.step(rng.uniform(-1, 1, size=4))
        episode.append(env.get_sim_state())
    env.close()
    steps = [(64 * s + k) % length for s in range(segments) for k in (0, 36, 63)]
    return layout, np.stack([episode[i] for i in steps])


def _raw_renderer(env, layout, size: int, fast: bool):
    """A bare `mujoco.Renderer` on the env's model: the baseline loop a user would write."""
    import mujoco

    from plare_jax.envs.render import RenderConfig

    view = RenderConfig(width=size, height=size)
    model = env.model
    camera = model.camera(view.camera).id
    model.cam_pos[camera] = view.camera_pos  # the same view as ours
    model.cam_fovy[camera] = view.fovy
    if fast:  # the same speed settings as ours (FIELD_NOTES): no shadow map, no MSAA, no reflections
        model.vis.quality.shadowsize = 0
        model.vis.quality.offsamples = 0
    renderer = mujoco.Renderer(model, height=size, width=size)
    if fast:
        renderer.scene.flags[mujoco.mjtRndFlag.mjRND_SHADOW] = 0
        renderer.scene.flags[mujoco.mjtRndFlag.mjRND_REFLECTION] = 0

    def render(states: np.ndarray) -> int:
        env.reset(layout)  # the same work as ours: the episode's layout first, then its states
        for state in states:
            env.set_sim_state(state)
            renderer.update_scene(env.data, camera=camera)
            renderer.render()
        return len(states)

    return render, renderer.close


def _render_worker(impl: str, task: str, size: int, layout, states, barrier, results) -> None:
    """One rendering process: set up, wait for the others, render its states, report timings."""
    from plare_jax.envs.render import RenderConfig, SceneRenderer
    from plare_jax.envs.sim import TaskEnv

    env = TaskEnv(task)
    env.reset(layout)
    if impl == "plare-jax":
        scene = SceneRenderer(env, RenderConfig(width=size, height=size))
        render, close = (lambda s: len(scene.render_states(layout, s))), scene.close
    else:
        render, close = _raw_renderer(env, layout, size, fast=impl == "raw mujoco.Renderer")
    render(states[:1])  # GL context and first-frame costs stay out of the timing
    barrier.wait()
    cpu, start = _self_cpu_s(), time.time()
    frames = render(states)
    end, cpu = time.time(), _self_cpu_s() - cpu
    close()
    env.close()
    results.put({"frames": frames, "start": start, "end": end, "cpu_s": cpu, "peak_rss_mib": peak_rss_mib()})


def render_row(impl: str, task: str, size: int, layout, states, workers: int) -> dict:
    """keyframes/s of `workers` processes rendering `states` split evenly (wall from first start to last end)."""
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")
    barrier, results = ctx.Barrier(workers), ctx.Queue()
    shares = np.array_split(states, workers)
    procs = [
        ctx.Process(target=_render_worker, args=(impl, task, size, layout, share, barrier, results))
        for share in shares
    ]
    for p in procs:
        p.start()
    try:
        reports = [results.get(timeout=600) for _ in procs]
    finally:
        for p in procs:
            p.join(timeout=30)
            if p.is_alive():
                p.terminate()
    wall = max(r["end"] for r in reports) - min(r["start"] for r in reports)
    frames = sum(r["frames"] for r in reports)
    return {
        "kind": "render", "impl": impl, "workers": workers, "frame_px": f"{size}x{size}", "keyframes": frames,
        "keyframes_per_s": frames / wall, "wall_s": wall, "cores": sum(r["cpu_s"] for r in reports) / wall,
        "peak_rss_mib": max(r["peak_rss_mib"] for r in reports),
    }  # fmt: skip


def render_rows(cfg: LabelingBenchConfig, bar) -> list[dict]:
    layout, states = _segment_states(cfg.render_task, cfg.render_segments, cfg.seed)  # no rendering here
    samples: dict[tuple[str, int], list[dict]] = {}
    for _ in range(cfg.render_repeats):  # interleaved, so a disturbance hits both sides alike
        for workers in cfg.workers:
            for impl in ("plare-jax", "raw mujoco.Renderer"):
                bar.set_postfix_str(f"render {impl} x{workers}")
                row = render_row(impl, cfg.render_task, cfg.render_size, layout, states, workers)
                samples.setdefault((impl, workers), []).append(row)
                bar.update()
    rows = []
    for runs in samples.values():  # best of the repeats: the least disturbed run
        best = dict(max(runs, key=lambda r: r["keyframes_per_s"]))
        best["keyframes_per_s_samples"] = [r["keyframes_per_s"] for r in runs]
        rows.append(best)
    if cfg.default_visuals_row:
        # What a bare renderer gets with MetaWorld's default visuals (4096^2 shadow map, 4x MSAA): a few frames.
        few = states[: max(2, len(states) // 16)]
        rows.append(render_row("raw mujoco.Renderer, default visuals", cfg.render_task, cfg.render_size, layout, few, 1))
        bar.update()
    by_workers = {(r["impl"], r["workers"]): r["keyframes_per_s"] for r in rows}
    for r in rows:
        raw = by_workers.get(("raw mujoco.Renderer", r["workers"]))
        if raw:
            r["vs_raw"] = r["keyframes_per_s"] / raw
        one = by_workers.get((r["impl"], 1))
        if one:
            r["vs_1_worker"] = r["keyframes_per_s"] / one
    return rows


RENDER_COLUMNS = [
    ("impl", "renderer"), ("workers", "processes"), ("frame_px", "frame"), ("keyframes", "keyframes"),
    ("keyframes_per_s", "keyframes/s"), ("vs_raw", "vs raw"), ("vs_1_worker", "vs 1 process"), ("cores", "cores used"),
    ("peak_rss_mib", "peak RSS MiB (per process)"),
]  # fmt: skip


# ----------------------------------------------------------------------------- main


def run(cfg: LabelingBenchConfig) -> dict:
    from tqdm.auto import tqdm

    eff = cfg.effective()
    n_vlm = (1 + len(eff.concurrency)) * (1 + bool(eff.base_url)) if "vlm" in eff.parts else 0
    n_render = 2 * len(eff.workers) * eff.render_repeats + eff.default_visuals_row if "render" in eff.parts else 0
    rows: list[dict] = []
    with tqdm(total=n_vlm + n_render, desc="labeling rows", unit="row", file=sys.stderr) as bar:
        if "render" in eff.parts:
            rows += render_rows(eff, bar)
        if "vlm" in eff.parts:
            rows += vlm_rows(eff, bar)
    config = {k: (str(v) if isinstance(v, pathlib.Path) else v) for k, v in dataclasses.asdict(eff).items()}
    return {
        "benchmark": "labeling",
        "config": config,
        "machine": machine_info(extra_packages=("mujoco", "metaworld", "openai")),
        "rows": rows,
    }


def main(cfg: LabelingBenchConfig) -> dict:
    payload = run(cfg)
    rows = payload["rows"]
    render = [r for r in rows if r["kind"] == "render"]
    vlm = [r for r in rows if r["kind"] == "vlm"]
    if render:
        print(markdown_table(render, RENDER_COLUMNS) + "\n")
    if vlm:
        print(markdown_table(vlm, VLM_COLUMNS) + "\n")
    path = write_json(cfg.out or default_out("labeling"), payload)
    print(f"JSON: {path}")
    return payload


def parse_args(argv: list[str] | None = None) -> LabelingBenchConfig:
    """The options of this script (argv: None = the command line)."""
    return tyro.cli(LabelingBenchConfig, args=argv)


if __name__ == "__main__":
    main(parse_args())
