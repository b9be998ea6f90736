"""experiments/label_noise.py end to end on a tiny task: one run per rate, JSON and figure."""

from __future__ import annotations

import importlib.util
import json
import os
import pathlib
import subprocess
import sys

import pytest

from plare_jax.pipeline.results import run_statistics
from tests.hang_guard import HANG_GUARD_S
from tests.test_experiment import TINY

REPO = pathlib.Path(__file__).resolve().parent.parent
SCRIPT = REPO / "experiments" / "label_noise.py"


def run_sweep(args, cwd):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, str(SCRIPT), *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=HANG_GUARD_S)


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


def load_script():
    spec = importlib.util.spec_from_file_location("label_noise_script", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses and tyro resolve annotations through it
    spec.loader.exec_module(module)
    return module


def sweep_summary(task: str, successes: dict, rates=(0.0, 0.2), **protocol) -> dict:
    """A finished sweep's label_noise.json: per rate, results of the given per-run successes."""
    base = {"labeler": "scripted", "teacher": "progress", "preset": "quick", "data_seeds": [1],
            "seeds": [0, 1, 2], "unsure": "drop"}
    base.update(protocol)
    summary = {"mistake_rates": list(rates), "runs": {}, "points": {task: {}}}
    for rate in rates:
        methods = {}
        for method, per_rate in successes.items():
            stats = run_statistics(per_rate[rate])
            methods[method] = {"success": stats}
            summary["points"][task].setdefault(method, []).append(
                [rate, stats["mean"], stats["ci95_low"], stats["ci95_high"]])
        summary["runs"][f"{rate:.2f}"] = {"run_dir": f"rate{rate:.2f}", "results": {
            **base, "teacher_mistake_rate": rate, "tasks": {task: {"methods": methods}}}}
    return summary


def write_sweep(tmp_path, name, summary) -> pathlib.Path:
    folder = tmp_path / name
    folder.mkdir()
    (folder / "label_noise.json").write_text(json.dumps(summary))
    return folder


def png_size(path) -> tuple[int, int]:
    header = path.read_bytes()[:24]
    assert header[:8] == b"\x89PNG\r\n\x1a\n"
    return int.from_bytes(header[16:20], "big"), int.from_bytes(header[20:24], "big")


def test_combine_draws_finished_sweeps_of_two_tasks_in_one_figure(tmp_path, capsys):
    script = load_script()
    one = write_sweep(tmp_path, "a", sweep_summary("sweep-into-v3", {
        "plare": {0.0: [0.8, 0.9, 0.85], 0.2: [0.7, 0.6, 0.8]}, "bc": {0.0: [0.6] * 3, 0.2: [0.6] * 3}}))
    two = write_sweep(tmp_path, "b", sweep_summary("door-open-v3", {
        "plare": {0.0: [0.5, 0.7, 0.6], 0.2: [0.4, 0.3, 0.5]}}))
    figure = tmp_path / "docs" / "both.png"
    assert script.cli(["--combine", str(one), str(two / "label_noise.json"), "--figure", str(figure)]) == 0
    printed = capsys.readouterr().out
    assert "| sweep-into-v3 | plare | 0.85 [" in printed and "| sweep-into-v3 | bc | 0.60 [0.60, 0.60]" in printed
    assert "| door-open-v3 | plare | 0.60 [" in printed and "| 0.40 [" in printed
    # One panel per task: two panels side by side are twice as wide as one.
    single = tmp_path / "single.png"
    assert script.cli(["--combine", str(one), "--figure", str(single)]) == 0
    (width_two, height_two), (width_one, height_one) = png_size(figure), png_size(single)
    assert height_two == height_one and width_two == 2 * width_one


@pytest.mark.parametrize("second, message", [
    (sweep_summary("door-open-v3", {"plare": {0.0: [0.5] * 3, 0.2: [0.4] * 3}}, seeds=[0, 1]), "differ in seeds"),
    (sweep_summary("door-open-v3", {"plare": {0.0: [0.5] * 3, 0.4: [0.4] * 3}}, rates=(0.0, 0.4)), "same rates"),
    (sweep_summary("sweep-into-v3", {"sft": {0.0: [0.5] * 3, 0.2: [0.4] * 3}}), "in both"),
    ({"mistake_rates": [0.0, 0.2], "runs": {"0.00": {}, "0.20": {}}, "points": {}}, "lacks an expected entry"),
    ({"not": "a sweep"}, "not a label-noise sweep"),
])
def test_combine_refuses_sweeps_that_were_not_measured_alike(tmp_path, capsys, second, message):
    script = load_script()
    one = write_sweep(tmp_path, "a", sweep_summary("sweep-into-v3", {"plare": {0.0: [0.8] * 3, 0.2: [0.7] * 3}}))
    two = write_sweep(tmp_path, "b", second)
    figure = tmp_path / "both.png"
    assert script.cli(["--combine", str(one), str(two), "--figure", str(figure)]) == 2
    assert message in capsys.readouterr().err and not figure.exists()


def test_combine_needs_a_figure_and_a_figure_needs_combine(tmp_path, capsys):
    script = load_script()
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "label_noise.json").write_text('{"mistake_rates": [0.0], "ru')
    assert script.cli(["--combine", str(tmp_path / "broken")]) == 2
    assert "--figure" in capsys.readouterr().err
    assert script.cli(["--combine", str(tmp_path / "broken"), "--figure", str(tmp_path / "f.png")]) == 2
    assert "not readable JSON" in capsys.readouterr().err
    assert script.cli(["--combine", str(tmp_path / "missing"), "--figure", str(tmp_path / "f.png")]) == 2
    assert "no label_noise.json" in capsys.readouterr().err
    assert script.cli(["--figure", str(tmp_path / "f.png"), "--out-dir", str(tmp_path / "runs")]) == 2
    assert "goes with --combine" in capsys.readouterr().err and not (tmp_path / "runs").exists()
