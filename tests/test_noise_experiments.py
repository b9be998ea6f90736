"""experiments/noise_robustness.py and experiments/robust_search.py: refusals, tables, a tiny sweep."""

from __future__ import annotations

import importlib
import json
import os
import pathlib
import subprocess
import sys

import pytest

from tests.hang_guard import HANG_GUARD_S

REPO = pathlib.Path(__file__).resolve().parents[1]
TINY = [
    "--env", "reach", "--num-episodes", "4", "--collection-horizon", "60", "--num-pairs", "60",
    "--segment-length", "16", "--hidden-dims", "32", "32", "--batch-pairs", "8",
    "--bc-batch-size", "64", "--bc-steps", "20", "--method-steps", "20", "--metrics-every", "10",
    "--eval-every", "20", "--eval-episodes", "2", "--final-eval-episodes", "4", "--eval-horizon", "30",
    "--warmup-steps", "5", "--workers", "1",
]


def run_script(name, args, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("PLARE_VLM_BASE_URL", None)
    return subprocess.run([sys.executable, str(REPO / "experiments" / name), *args], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=HANG_GUARD_S)


def load(name):
    sys.path.insert(0, str(REPO))
    return importlib.import_module(f"experiments.{name}")


def test_robust_search_refuses_reported_data_seeds(tmp_path):
    proc = run_script("robust_search.py", ["--data-seeds", "0", "3", "--out-dir", str(tmp_path)], tmp_path)
    assert proc.returncode == 2 and "only development data seeds" in proc.stderr
    assert not any(tmp_path.iterdir())  # nothing was run or written


def test_robust_search_table_compares_each_candidate_with_plare_over_paired_runs():
    module = load("robust_search")
    keys = [("door-open-v3", d, 0) for d in (0, 1, 2)]
    table = {"plare": dict(zip(keys, (0.4, 0.5, 0.3))), "bc": dict(zip(keys, (0.6, 0.5, 0.4))),
             "smooth0.1": dict(zip(keys, (0.7, 0.8, 0.9)))}
    text = module.format_search(table)
    rows = {line.split(" | ")[0].strip("| "): line for line in text.splitlines()[2:]}
    assert "0.70 0.80 0.90" in rows["smooth0.1"] and rows["plare"].endswith("| - |")
    assert "1.00 [" in rows["smooth0.1"]  # better than plare in every run
    with pytest.raises(module.ConfigError, match="lacks runs"):
        module.format_search({**table, "bc": dict(zip(keys[:2], (0.6, 0.5)))})


@pytest.mark.parametrize("argv, match", [
    (["--noise-models", "equal"], "no agreement to sweep"),
    (["--agreements", "0.4"], "outside"),
    (["--teacher-agreement", "0.8"], "sets --teacher-noise"),
])
def test_noise_robustness_refuses_sweeps_it_cannot_run(tmp_path, argv, match):
    proc = run_script("noise_robustness.py", [*argv, "--out-dir", str(tmp_path)], tmp_path)
    assert proc.returncode == 2 and match in proc.stderr, proc.stderr[-2000:]


@pytest.mark.slow
def test_noise_robustness_sweep_reports_aggregate_iqm_and_improvement_at_the_calibrated_agreement(tmp_path):
    args = [*TINY, "--method", "plare", "plare-robust", "bc", "--data-seeds", "3", "--seeds", "0", "1",
            "--noise-models", "hard-pairs", "--agreements", "0.8", "--poi-at", "hard-pairs", "0.8",
            "--out-dir", str(tmp_path / "runs"), "--cache-dir", str(tmp_path / "cache"),
            "--evidence", str(tmp_path / "evidence.json")]
    proc = run_script("noise_robustness.py", args, tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    sweep = tmp_path / "runs" / "noise-robustness"
    summary = json.loads((sweep / "noise_robustness.json").read_text())
    point = summary["points"]["hard-pairs@0.80"]
    assert point["run"] == "hard-pairs-0.80" and abs(point["measured_agreement"] - 0.8) <= 0.02
    assert point["runs"] == [[3, 0], [3, 1]] and set(point["aggregate"]) == {"plare", "plare-robust", "bc"}
    results = json.loads((sweep / "hard-pairs-0.80" / "results.json").read_text())
    assert results["teacher_noise"] == "hard-pairs" and results["teacher_agreement"] == 0.8
    runs = results["tasks"]["reach-v3"]["methods"]["plare"]["runs"]
    for cell in point["aggregate"].values():
        assert cell["num_runs"] == 2 and cell["iqm_ci"][0] <= cell["iqm"] <= cell["iqm_ci"][1]
    assert all(r["episodes"] == 4 for r in runs)  # the reported final evaluation's episodes
    poi = point["probability_of_improvement"]
    assert set(poi) == {"plare > plare-robust", "plare > bc", "plare-robust > plare", "plare-robust > bc"}
    assert (sweep / "noise_robustness.png").stat().st_size > 0
    assert (sweep / "probability_of_improvement.png").stat().st_size > 0
    assert "hard-pairs@0.80" in proc.stdout

    # --summarize-only trains nothing and draws the same summary from the finished runs; a point
    # not started yet is left out and said.
    (sweep / "noise_robustness.json").unlink()
    both = [a if a != "0.8" or args[i - 1] != "--agreements" else "1 0.8" for i, a in enumerate(args)]
    both = [part for a in both for part in a.split(" ")]  # --agreements 1 0.8
    again = run_script("noise_robustness.py", [*both, "--summarize-only"], tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "no run directory with results for clean" in again.stderr
    assert not (sweep / "clean").exists()  # nothing was run
    assert json.loads((sweep / "noise_robustness.json").read_text()) == summary

    # The evidence file kept every finished run's final success: with the run directories gone,
    # it alone gives the same summary.
    stored = json.loads((tmp_path / "evidence.json").read_text())
    kept = stored["points"]["hard-pairs-0.80"]["tasks"]["reach-v3"]["methods"]["plare"]["runs"]
    assert [(r["data_seed"], r["seed"], r["success_rate"]) for r in kept] == [
        (r["data_seed"], r["seed"], r["success_rate"]) for r in runs]
    import shutil

    shutil.rmtree(tmp_path / "runs")
    alone = run_script("noise_robustness.py", [*args, "--summarize-only"], tmp_path)
    assert alone.returncode == 0, alone.stderr[-3000:]
    assert json.loads((sweep / "noise_robustness.json").read_text()) == summary
