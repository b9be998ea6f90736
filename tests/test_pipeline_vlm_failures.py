"""The experiment stops early, with a clear message, when the VLM cannot label (issue 9, item 4).

A subprocess per run of experiments/metaworld.py, as a user runs it, against the loopback server.
"""

from __future__ import annotations

import dataclasses
import sqlite3

import pytest

from plare_jax.testing.loopback_server import LoopbackBehavior, LoopbackVLMServer
from plare_jax.pipeline.config import ConfigError, ExperimentConfig, validate

from tests.test_experiment import run_cli
from tests.test_experiment import TINY as TINY_SCRIPTED

TINY = [*TINY_SCRIPTED, "--no-video", "--labeler", "vlm", "--num-keyframes", "2", "--vlm.max-retries", "1"]


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
    # stopped right after labeling, before any training: no orphan run directory is left
    assert not run_dir.exists() and (tmp_path / "runs").is_dir()
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
