"""experiments/label_noise.py end to end on a tiny task: one run per rate, JSON and figure."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import pytest

from tests.test_experiment import TINY

REPO = pathlib.Path(__file__).resolve().parent.parent
SCRIPT = REPO / "experiments" / "label_noise.py"


def run_sweep(args, cwd):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, str(SCRIPT), *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=900)


def test_rejects_rates_above_one_half(tmp_path):
    proc = run_sweep(["--mistake-rates", "0.7", "--out-dir", str(tmp_path / "runs")], tmp_path)
    assert proc.returncode == 2 and "0.7" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.slow
def test_sweep_runs_each_rate_and_flips_that_share_of_labels(tmp_path):
    args = [*TINY, "--method", "plare", "bc", "--seeds", "0", "--num-pairs", "200",
            "--mistake-rates", "0", "0.3", "--out-dir", str(tmp_path / "runs"),
            "--cache-dir", str(tmp_path / "cache")]
    proc = run_sweep(args, tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    sweep = tmp_path / "runs" / "label_noise"
    summary = json.loads((sweep / "label_noise.json").read_text())
    assert sorted(summary["runs"]) == ["0.00", "0.30"]
    accuracy = {rate: entry["results"]["tasks"]["reach-v3"]["label_accuracy"][0]
                for rate, entry in summary["runs"].items()}
    # Labels are compared with the unflipped teacher: all agree at 0, about 70% at 0.3.
    assert accuracy["0.00"] == pytest.approx(1.0)
    assert 0.6 < accuracy["0.30"] < 0.8
    assert set(summary["points"]["reach-v3"]) == {"plare", "bc"}
    assert (sweep / "label_noise.png").stat().st_size > 1000
    # Running the same sweep again reuses the finished rates instead of training again.
    again = run_sweep(args, tmp_path)
    assert again.returncode == 0 and "resuming" not in again.stdout
    assert json.loads((sweep / "label_noise.json").read_text())["points"] == summary["points"]
    # Continuing it with other seeds would mix two protocols in one figure: refused, nothing run.
    other = run_sweep([*args[:args.index("--seeds")], "--seeds", "0", "1", *args[args.index("--seeds") + 2:]], tmp_path)
    assert other.returncode == 2 and "seeds: stored (0,), asked (0, 1)" in other.stderr and "--name" in other.stderr
    assert not (sweep / "rate0.00" / "reach-v3" / "data0" / "seed1").exists()
