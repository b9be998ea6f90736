"""Tests of the vLLM launcher with a fake `vllm` executable on PATH (it runs the loopback server)."""

import json
import os
import time
import urllib.request

import numpy as np
import pytest

from plare_jax.labeling import PairBatch, VLMConfig, VLMLabeler, check_endpoint
from plare_jax.labeling.launcher import VLLMLaunchError, VLLMNotFoundError, launch_vllm, local_gpu_available
from plare_jax.testing.fake_vllm import write_fake_vllm
from plare_jax.testing.loopback_server import brightness_png

MODEL = "fake/vlm"

@pytest.fixture
def fake_vllm(tmp_path, monkeypatch):
    bin_dir = tmp_path / "bin"
    write_fake_vllm(bin_dir)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    record = tmp_path / "record.json"
    monkeypatch.setenv("FAKE_VLLM_RECORD", str(record))
    return record


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_missing_vllm_gives_install_hint(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(VLLMNotFoundError, match=r"plare-jax\[vlm\]"):
        with launch_vllm(MODEL):
            pass


def test_launch_serves_labels_and_shuts_down(fake_vllm, tmp_path):
    log = tmp_path / "vllm.log"
    with launch_vllm(
        MODEL, tensor_parallel_size=2, data_parallel_size=3, max_model_len=4096,
        extra_args=("--limit-mm-per-prompt", "image=2"), startup_timeout_s=60, log_path=log,
    ) as base_url:  # fmt: skip
        assert base_url.startswith("http://127.0.0.1:") and base_url.endswith("/v1")
        config = VLMConfig(base_url=base_url, model=MODEL)
        check_endpoint(config)
        images = [(brightness_png(0.1), brightness_png(0.9)), (brightness_png(0.9), brightness_png(0.1))]
        result = VLMLabeler(config).label(PairBatch("open the drawer", images=images), progress=False)
        np.testing.assert_array_equal(result.preferences, [1, 0])
        record = json.loads(fake_vllm.read_text())
    argv = record["argv"]
    assert argv[:2] == ["serve", MODEL]
    for flag, value in [("--tensor-parallel-size", "2"), ("--data-parallel-size", "3"), ("--max-model-len", "4096"),
                        ("--host", "127.0.0.1"), ("--limit-mm-per-prompt", "image=2")]:  # fmt: skip
        assert argv[argv.index(flag) + 1] == value
    assert "--limit-mm-per-prompt" in argv and argv.count("--limit-mm-per-prompt") == 1  # the user's wins
    assert not _pid_alive(record["pid"])
    with pytest.raises(OSError):
        urllib.request.urlopen(base_url.removesuffix("/v1") + "/health", timeout=2)
    assert "loopback VLM server" in log.read_text()


def test_default_allows_two_images_per_prompt(fake_vllm):
    with launch_vllm(MODEL, startup_timeout_s=60):
        argv = json.loads(fake_vllm.read_text())["argv"]
    assert json.loads(argv[argv.index("--limit-mm-per-prompt") + 1]) == {"image": 2}


def test_default_passes_gpu_memory_utilization(fake_vllm):
    with launch_vllm(MODEL, startup_timeout_s=60):
        argv = json.loads(fake_vllm.read_text())["argv"]
    assert argv[argv.index("--gpu-memory-utilization") + 1] == "0.9"


def test_executable_by_path_and_no_gpu_flag_for_cpu_builds(tmp_path, monkeypatch):
    # A vLLM in its own venv (not on PATH), as the CPU build of tests/vllm_cpu is.
    exe = write_fake_vllm(tmp_path / "venv_bin")
    record = tmp_path / "record.json"
    monkeypatch.setenv("FAKE_VLLM_RECORD", str(record))
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with launch_vllm(MODEL, executable=str(exe), gpu_memory_utilization=None, startup_timeout_s=60) as base_url:
        check_endpoint(VLMConfig(base_url=base_url, model=MODEL))
    argv = json.loads(record.read_text())["argv"]
    assert argv[:2] == ["serve", MODEL]
    assert "--gpu-memory-utilization" not in argv


def test_missing_executable_path_names_it(tmp_path):
    missing = tmp_path / "no_venv" / "bin" / "vllm"
    with pytest.raises(VLLMNotFoundError, match="no_venv"):
        with launch_vllm(MODEL, executable=str(missing)):
            pass


def test_server_that_dies_gives_error_with_log_tail(fake_vllm, monkeypatch):
    monkeypatch.setenv("FAKE_VLLM_MODE", "die")
    with pytest.raises(VLLMLaunchError, match="exited with code 3") as err:
        with launch_vllm(MODEL, startup_timeout_s=60):
            pytest.fail("must not yield")
    assert "CUDA out of memory (fake)" in str(err.value)


def test_startup_timeout_kills_server(fake_vllm, monkeypatch):
    monkeypatch.setenv("FAKE_VLLM_MODE", "hang")
    start = time.monotonic()
    with pytest.raises(VLLMLaunchError, match="not healthy after"):
        with launch_vllm(MODEL, startup_timeout_s=1.5):
            pass
    assert time.monotonic() - start < 60  # a hang guard (the fake server never gets healthy), not a speed check
    assert not _pid_alive(json.loads(fake_vllm.read_text())["pid"])


def test_exception_in_block_stops_server_and_sigkill_after_grace(fake_vllm, monkeypatch):
    with pytest.raises(KeyboardInterrupt):
        with launch_vllm(MODEL, startup_timeout_s=60):
            raise KeyboardInterrupt  # Ctrl-C while labeling
    assert not _pid_alive(json.loads(fake_vllm.read_text())["pid"])

    monkeypatch.setenv("FAKE_VLLM_MODE", "stubborn")  # ignores SIGTERM
    start = time.monotonic()
    with pytest.raises(VLLMLaunchError):
        with launch_vllm(MODEL, startup_timeout_s=1.0, shutdown_timeout_s=0.5):
            pass
    assert time.monotonic() - start < 60  # a hang guard (the fake server ignores SIGTERM), not a speed check
    assert not _pid_alive(json.loads(fake_vllm.read_text())["pid"])


def test_local_gpu_available_is_false_without_nvidia_smi(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    assert local_gpu_available() is False
