"""The experiment stops early, with a clear message, when the VLM cannot label (issue 9, item 4).

A subprocess per run of experiments/metaworld.py, as a user runs it, against the loopback server.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import sqlite3
import subprocess
import sys

import pytest

from plare_jax.labeling.loopback_server import LoopbackBehavior, LoopbackVLMServer
from plare_jax.pipeline.config import ConfigError, ExperimentConfig, validate

REPO = pathlib.Path(__file__).resolve().parent.parent
SCRIPT = REPO / "experiments" / "metaworld.py"
TINY = [
    "--env", "reach", "--num-episodes", "4", "--collection-horizon", "60", "--num-pairs", "24",
    "--segment-length", "16", "--hidden-dims", "32", "32", "--batch-pairs", "8",
    "--bc-batch-size", "64", "--bc-steps", "20", "--cpl-steps", "20", "--metrics-every", "10",
    "--eval-every", "20", "--eval-episodes", "2", "--eval-horizon", "30", "--warmup-steps", "5",
    "--workers", "1", "--no-video", "--labeler", "vlm", "--num-keyframes", "2", "--vlm.max-retries", "1",
]  # fmt: skip


def run_cli(args, cwd):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("PLARE_VLM_BASE_URL", None)
    return subprocess.run([sys.executable, str(SCRIPT), *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=600)  # fmt: skip


def dirs(tmp_path):
    return ["--out-dir", str(tmp_path / "runs"), "--cache-dir", str(tmp_path / "cache"), "--run-name", "r"]


@pytest.mark.slow
def test_every_pair_unlabelled_stops_before_training(tmp_path):
    # The server answers the preflight (stage 1) but never gives a readable choice in stage 2.
    with LoopbackVLMServer(behavior=LoopbackBehavior(malformed_fraction=1.0)) as server:
        proc = run_cli([*TINY, *dirs(tmp_path), "--vlm.base-url", server.base_url], tmp_path)
        stage2 = server.counts["stage2"]
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert "24 of 24 pairs (100.0%) got no label" in proc.stderr and "24 malformed" in proc.stderr
    assert "--max-unlabeled-fraction" in proc.stderr
    assert stage2 == 24 * 2  # each pair asked, re-asked once, then given up
    run_dir = tmp_path / "runs" / "r"
    assert run_dir.is_dir() and list(run_dir.rglob("data_and_labels.json")) == []  # stopped right after labeling
    assert list(run_dir.rglob("metrics.jsonl")) == [] and not (run_dir / "results.json").exists()  # no training
    with sqlite3.connect(tmp_path / "cache" / "labels.sqlite") as conn:
        assert conn.execute("SELECT COUNT(*) FROM labels").fetchone()[0] == 0  # a re-run asks again


@pytest.mark.slow
def test_text_only_model_stops_the_run_before_any_data_work(tmp_path):
    behavior = LoopbackBehavior(reject_images_message="Qwen2ForCausalLM is not a multimodal model")
    with LoopbackVLMServer(behavior=behavior) as server:
        proc = run_cli([*TINY, *dirs(tmp_path), "--vlm.base-url", server.base_url], tmp_path)
        requests = server.counts["requests"]
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert "not a multimodal model" in proc.stderr and "vision-language model" in proc.stderr
    assert requests == 1  # the preflight request, nothing after it
    assert not (tmp_path / "cache" / "datasets").exists() and not (tmp_path / "runs").exists()


def test_max_unlabeled_fraction_is_validated():
    with pytest.raises(ConfigError, match="--max-unlabeled-fraction"):
        validate(dataclasses.replace(ExperimentConfig(), max_unlabeled_fraction=1.5))
    validate(dataclasses.replace(ExperimentConfig(), max_unlabeled_fraction=0.0))


def test_failure_reasons_of_chunks_add_up():
    from plare_jax.pipeline.labels import merge_stats

    first = {"pairs": 4, "failed": 3, "wall_s": 1.0, "failure_reasons": {"HTTP 400: too long": 2, "TimeoutError": 1}}
    second = {"pairs": 4, "failed": 2, "wall_s": 1.0, "failure_reasons": {"HTTP 400: too long": 2}}
    merged = merge_stats([first, second])
    assert merged["failed"] == 5 and merged["failure_reasons"] == {"HTTP 400: too long": 4, "TimeoutError": 1}
