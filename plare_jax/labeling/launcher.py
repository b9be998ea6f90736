"""Start `vllm serve` as a subprocess for the length of a labeling job.

Only the `vllm` executable is needed (vLLM is an optional extra, never imported
here): the one on PATH, or any path, e.g. a CPU build in its own venv. The server
gets a free loopback port; the context manager waits for `/health`, yields the
base URL, and always shuts the server down (SIGTERM to its process group, then
SIGKILL), also on Ctrl-C and exceptions.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from plare_jax.errors import PlareError

INSTALL_HINT = 'pip install "plare-jax[vlm]"  (vLLM needs a CUDA GPU)'


class VLLMNotFoundError(PlareError, RuntimeError):
    """No `vllm` executable on PATH (or at the given path)."""


class VLLMLaunchError(PlareError, RuntimeError):
    """`vllm serve` died or did not become healthy in time."""


def local_gpu_available() -> bool:
    """True if `nvidia-smi` exists and lists at least one GPU."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return False
    try:
        out = subprocess.run([exe, "-L"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return out.returncode == 0 and "GPU" in out.stdout


def find_vllm(executable: str = "vllm") -> str | None:
    """The full path of `executable` (a name looked up on PATH, or a path), or None if it is not there."""
    return shutil.which(os.path.expanduser(executable))


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _tail(path: str, n_chars: int = 4000) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - n_chars))
            return f.read().decode(errors="replace")
    except OSError:
        return "(no log)"


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


def _stop(process: subprocess.Popen, grace_s: float) -> None:
    """SIGTERM the server's process group (vLLM forks workers), then SIGKILL after `grace_s`."""
    if process.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()


@contextlib.contextmanager
def launch_vllm(
    model: str = "Qwen/Qwen2.5-VL-7B-Instruct",
    *,
    tensor_parallel_size: int = 1,
    data_parallel_size: int = 1,
    max_model_len: int | None = None,
    gpu_memory_utilization: float | None = 0.9,
    images_per_prompt: int | None = 2,
    extra_args: Sequence[str] = (),
    startup_timeout_s: float = 900,
    log_path: str | os.PathLike | None = None,
    shutdown_timeout_s: float = 30.0,
    executable: str = "vllm",
) -> Iterator[str]:
    """Serves `model` with `vllm serve` on a free loopback port while the block runs.

    Args:
        model: Hugging Face model id or local path.
        tensor_parallel_size: GPUs per model replica.
        data_parallel_size: Model replicas.
        max_model_len: Context length limit (None: the model's).
        gpu_memory_utilization: Fraction of GPU memory vLLM may take. None leaves the flag
            out, for CPU builds of vLLM, which have no GPU memory to share.
        images_per_prompt: Passed as `--limit-mm-per-prompt '{"image": N}'` (stage 1
            sends 2 images; some vLLM versions default to 1). None, or the flag in
            `extra_args`, leaves it to the user.
        extra_args: More `vllm serve` arguments, passed through unchanged.
        startup_timeout_s: How long to wait for /health (weights download and load).
        log_path: Where the server's stdout/stderr go (default: a temp file).
        shutdown_timeout_s: Grace period between SIGTERM and SIGKILL.
        executable: The `vllm` to run: a name on PATH or a path to the executable.

    Yields:
        The OpenAI-style base URL, e.g. "http://127.0.0.1:PORT/v1".

    Raises:
        VLLMNotFoundError: `executable` not found (with the install hint).
        VLLMLaunchError: the server exited or was not healthy within
            `startup_timeout_s` (with the tail of its log).
    """
    exe = find_vllm(executable)
    if exe is None:
        where = "on PATH" if executable == "vllm" else f"at {executable!r} (not an executable file)"
        raise VLLMNotFoundError(f"no `vllm` executable {where}; install it with: {INSTALL_HINT}, pass "
                                "--vlm.executable PATH of another build, or pass --vlm.base-url URL of a "
                                "running OpenAI-compatible server (VLMConfig.base_url in Python).")  # fmt: skip
    port = free_port()
    cmd = [
        exe, "serve", model,
        "--host", "127.0.0.1", "--port", str(port),
        "--tensor-parallel-size", str(tensor_parallel_size),
        "--data-parallel-size", str(data_parallel_size),
    ]  # fmt: skip
    if gpu_memory_utilization is not None:
        cmd += ["--gpu-memory-utilization", str(gpu_memory_utilization)]
    if max_model_len is not None:
        cmd += ["--max-model-len", str(max_model_len)]
    if images_per_prompt is not None and "--limit-mm-per-prompt" not in extra_args:
        cmd += ["--limit-mm-per-prompt", json.dumps({"image": images_per_prompt})]
    cmd += list(extra_args)
    if log_path is None:
        fd, log_path = tempfile.mkstemp(prefix="vllm-", suffix=".log")
        os.close(fd)
    log_path = os.fspath(log_path)
    base = f"http://127.0.0.1:{port}"
    with open(log_path, "ab") as log:
        # A new session so that SIGTERM/SIGKILL reach vLLM's worker processes too.
        process = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + startup_timeout_s
        while not _healthy(base + "/health"):
            if process.poll() is not None:
                raise VLLMLaunchError(
                    f"`vllm serve {model}` exited with code {process.returncode} before it was healthy. "
                    f"Log {log_path}, last lines:\n{_tail(log_path)}"
                )
            if time.monotonic() > deadline:
                raise VLLMLaunchError(
                    f"`vllm serve {model}` was not healthy after {startup_timeout_s:.0f} s (raise startup_timeout_s "
                    f"for large models). Log {log_path}, last lines:\n{_tail(log_path)}"
                )
            time.sleep(0.5)
        yield base + "/v1"
    finally:
        _stop(process, shutdown_timeout_s)
