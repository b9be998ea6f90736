"""Smoke runs of the benchmark scripts at tiny sizes, as a user runs them (subprocesses).

Each test runs one script with `--tiny` and checks the JSON it writes: the expected
rows are there and every measured number is positive. The speed targets themselves
are measured by the full-size runs (docs/performance.md), not asserted here.
"""

from __future__ import annotations

import importlib.util
import json
import os
import pathlib
import subprocess
import sys
import time

import pytest

from tests.hang_guard import HANG_GUARD_S

ROOT = pathlib.Path(__file__).resolve().parent.parent


def _has(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        return False


def run_script(script: str, *args: str) -> subprocess.CompletedProcess:
    # As a user runs them: no PYTHONPATH needed for `benchmarks` (the scripts find it themselves);
    # PYTHONPATH is kept only so that this checkout's plare_jax is the one imported.
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / script), *args],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=HANG_GUARD_S,
    )  # fmt: skip
    assert proc.returncode == 0, f"{script} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    return proc


@pytest.mark.parametrize("script", ["training.py", "labeling.py", "methods.py"])
def test_every_option_has_help(script):
    out = run_script(script, "--help").stdout
    for option in ("--tiny", "--out", "--seed"):
        assert option in out
    # tyro prints the attribute docstring under each option; an option without one shows no text.
    assert "Tiny sizes" in out


@pytest.mark.slow
@pytest.mark.skipif(not _has("plare_jax.learner"), reason="needs the core library (plare_jax.learner)")
def test_training_benchmark_tiny(tmp_path):
    impls = ["jax", "torch"] if _has("torch") else ["jax"]
    out = tmp_path / "training.json"
    proc = run_script(
        "training.py", "--tiny", "--presets", "cpu", "--impls", *impls, "--devices", "1", "2",
        "--seconds", "0.2", "--out", str(out),
    )  # fmt: skip
    payload = json.loads(out.read_text())
    rows = payload["rows"]
    peaks = [r for r in rows if r["kind"] == "peak"]
    assert len(peaks) == 2 and all(r["gflops"] > 0 for r in peaks)
    assert payload["matmul_peak_gflops"] == max(r["gflops"] for r in peaks)

    updates = {r["impl"].split(" ")[0]: r for r in rows if r["kind"] == "update"}
    assert set(updates) == ({"jax", "torch-eager"} if "torch" in impls else {"jax"})
    for r in updates.values():
        assert r["preset"] == "cpu" and r["steps_per_s"] > 0 and r["peak_rss_mib"] > 0
        # the quiet-machine check ran around the timed block
        assert 0 <= r["others_cpu_share"] <= 1 and r["own_cores"] > 0
        assert r["busy"] == (r["others_cpu_share"] > payload["config"]["quiet_threshold"])
        assert r["pairs_per_s"] == pytest.approx(r["steps_per_s"] * 8)  # tiny: 8 pairs per step
        assert r["of_peak"] == pytest.approx(r["gflops"] / payload["matmul_peak_gflops"])
    if "torch" in impls:
        jax_row, torch_row = updates["jax"], updates["torch-eager"]
        assert jax_row["vs_torch"] == pytest.approx(jax_row["steps_per_s"] / torch_row["steps_per_s"])
        assert torch_row["torch_threads"] >= 1 and 0 < torch_row["host_sample_share"] < 1

    bound = [r for r in rows if r["kind"] == "matmuls"]
    assert len(bound) == 1 and bound[0]["gflops"] > 0  # the matmuls-only ceiling of the cpu preset
    assert 0 < updates["jax"]["of_peak_paired"]

    scaling = sorted((r for r in rows if r["kind"] == "scaling"), key=lambda r: r["devices"])
    assert [r["devices"] for r in scaling] == [1, 2]
    # XLA_FLAGS reached each child: the 2-device row saw 2 (forced host) devices.
    assert [r["visible_devices"] for r in scaling] == [1, 2]
    assert scaling[0]["vs_1_device"] == pytest.approx(1.0)
    assert all(r["steps_per_s"] > 0 for r in scaling)
    masks = {r["impl"]: r for r in rows if r["kind"] == "mask"}
    assert {"matmul", "bernoulli/rbg", "packed-u8/threefry2x32"} <= set(masks)
    assert all(r["ms"] > 0 and r["shape"] == [8 * 2 * 16, 32] for r in masks.values())
    assert "| row |" in proc.stdout and "steps/s" in proc.stdout and "ms per mask" in proc.stdout


@pytest.mark.slow
@pytest.mark.skipif(not _has("plare_jax.envs.render"), reason="needs the MetaWorld renderer (plare_jax.envs.render)")
def test_labeling_benchmark_tiny(tmp_path):
    out = tmp_path / "labeling.json"
    proc = run_script("labeling.py", "--tiny", "--workers", "1", "2", "--out", str(out))
    payload = json.loads(out.read_text())
    rows = payload["rows"]

    render = {(r["impl"], r["workers"]): r for r in rows if r["kind"] == "render"}
    assert set(render) == {(impl, n) for impl in ("plare-jax", "raw mujoco.Renderer") for n in (1, 2)}
    for (impl, n), r in render.items():
        assert r["keyframes"] == 2 * 3  # tiny: 2 segments x 3 keyframes, split over the processes
        assert r["keyframes_per_s"] > 0 and r["peak_rss_mib"] > 0
        raw = render[("raw mujoco.Renderer", n)]
        assert r["vs_raw"] == pytest.approx(r["keyframes_per_s"] / raw["keyframes_per_s"])

    vlm = [r for r in rows if r["kind"] == "vlm"]
    sequential = [r for r in vlm if r["impl"].startswith("sequential")]
    concurrent = sorted((r for r in vlm if r not in sequential), key=lambda r: r["concurrency"])
    assert len(sequential) == 1 and [r["concurrency"] for r in concurrent] == [1, 8]
    latency = payload["config"]["latency_s"]
    for r in vlm:
        assert r["server"] == "loopback" and r["pairs_per_s"] > 0
        assert r["ideal_pairs_per_s"] == pytest.approx(r["concurrency"] / (2 * latency))
        # Two requests of at least `latency` each per pair: nothing beats the ideal.
        assert r["of_ideal"] <= 1.0 + 1e-6
    assert concurrent[-1]["server_peak_rss_mib"] > 0
    assert "keyframes/s" in proc.stdout and "pairs/s" in proc.stdout


@pytest.mark.slow
def test_both_orders_benchmark_tiny(tmp_path):
    out = tmp_path / "both_orders.json"
    proc = run_script("both_orders.py", "--tiny", "--out", str(out))
    payload = json.loads(out.read_text())
    assert payload["complete"] and payload["notes"] == []
    rows = {(r["position_bias"], r["mode"]): r for r in payload["rows"]}
    biases = (0.0, 0.1, 0.2, 0.35, 0.5)
    assert set(rows) == {(p, m) for p in biases for m in ("one order", "both orders")}
    for (bias, mode), r in rows.items():
        assert r["pairs"] == 24 and r["failed"] == r["malformed"] == 0  # tiny: 24 pairs, no faults injected
        assert r["sure"] + r["unsure"] == r["pairs"] and r["correct"] + r["wrong"] == r["sure"]
        assert r["wrong_share"] == pytest.approx(r["wrong"] / r["pairs"])
        # every request the client counted reached the loopback server, two per query asked
        assert r["requests"] == r["server_requests"] == 2 * (r["queries"] - r["cache_hits"])
        assert r["queries"] == (2 if mode == "both orders" else 1) * r["pairs"]
        assert (r["server_position_biased_answers"] > 0) == (bias > 0)
    for bias in biases:
        one, both = rows[(bias, "one order")], rows[(bias, "both orders")]
        # the bias only ever says "first": with both orders the answers disagree, never agree on a wrong clip
        assert both["wrong"] == 0 and both["accuracy"] == 1.0
        assert both["unsure_share"] >= both["true_ties_share"] >= one["unsure_share"]
        assert one["order_consistency"] is None and both["order_consistency"] is not None
    faithful_one, faithful_both = rows[(0.0, "one order")], rows[(0.0, "both orders")]
    assert faithful_one["wrong"] == 0 and faithful_one["unsure_share"] == faithful_both["unsure_share"]
    assert faithful_both["first_answer_share"] == 0.5 and faithful_both["order_consistency"] == 1.0
    assert sum(rows[(p, "one order")]["wrong"] for p in biases[1:]) > 0  # one order turns the bias into wrong labels
    assert "| position bias |" in proc.stdout and "order consistency" in proc.stdout


def test_training_benchmark_without_torch_skips_its_rows_with_a_note(monkeypatch, tmp_path, capsys):
    from benchmarks import training

    monkeypatch.setattr(training, "torch_available", lambda: False)
    cfg = training.TrainingBenchConfig(
        tiny=True, presets=("cpu",), impls=("jax", "torch"), devices=(), mask_rows=False, seconds=0.05,
        out=tmp_path / "t.json",
    )  # fmt: skip
    assert [row_id for row_id, _, _ in training._plan(cfg)] == ["jax/cpu/default/default", "matmuls/cpu"]
    payload = training.main(cfg)
    assert {r["impl"] for r in payload["rows"] if r["kind"] == "update"} == {"jax"}
    assert any("torch is not installed" in note for note in payload["notes"])
    assert "torch is not installed" in capsys.readouterr().out


def test_cpu_share_sees_another_busy_process():
    """The quiet-machine check: a busy child process shows up as others' CPU share."""
    from benchmarks.common import cpu_sample, cpu_share

    burner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.5)
        before = cpu_sample()
        time.sleep(1.5)
        share = cpu_share(before, cpu_sample())
    finally:
        burner.kill()
        burner.wait()
    # one spinning process is at least a core's worth of one CPU... of however many CPUs there are
    assert share["others_cpu_share"] >= 0.5 / (os.cpu_count() or 1), share
    assert share["own_cores"] < 0.2, share


def test_peak_memory_counts_the_whole_process_tree(tmp_path):
    out = tmp_path / "memory.json"
    run_script("peak_memory.py", "--tiny", "--out", str(out))
    result = json.loads(out.read_text())
    assert result["exit_code"] == 0 and result["peak_processes"] >= 3  # the child and its 2 workers
    # 3 x 100 MiB held at once; the main process alone holds ~100 of them
    assert result["peak_tree_pss_mib"] >= 290, result
    assert result["peak_tree_rss_sum_mib"] >= result["peak_tree_pss_mib"] * 0.99
    assert 100 <= result["main_process_peak_mib"] < 200, result


@pytest.mark.slow
@pytest.mark.skipif(not (_has("pyarrow") and _has("minari")), reason="needs the [import] extra")
def test_recorded_benchmark_tiny(tmp_path):
    out = tmp_path / "recorded.json"
    proc = run_script("recorded.py", "--tiny", "--out", str(out))
    rows = json.loads(out.read_text())["rows"]
    assert [r["row"] for r in rows] == ["import-lerobot", "import-minari", "import-minari",
                                        "keyframes", "keyframes", "keyframes"]
    assert all(r["rate"] > 0 and r["wall_s"] > 0 for r in rows)
    assert rows[0]["steps"] == 2 * 40 and rows[1]["steps"] == rows[2]["steps"] == 2 * 40
    video, baseline, npy = rows[3:]
    assert video["frames"] == npy["frames"] == 6 * 2 * 3 and baseline["frames"] == 2 * 2 * 3
    assert npy["mean_abs_diff_vs_video"] < 8  # the same pictures, up to H.264 loss
    assert "keyframes/s" in proc.stdout and "steps/s" in proc.stdout


@pytest.mark.slow
def test_methods_benchmark_tiny(tmp_path):
    out = tmp_path / "methods.json"
    proc = run_script("methods.py", "--tiny", "--iql-batch", "32", "64", "--out", str(out))
    payload = json.loads(out.read_text())
    rows = {(r["kind"], r["batch"]): r for r in payload["rows"]}
    assert set(rows) == {("bc", 1024), ("plare", 32), ("rlvlmf reward", 32), ("rlvlmf iql", 32), ("rlvlmf iql", 64)}
    assert all(r["steps_per_s"] > 0 and r["peak_rss_mib"] > 0 for r in rows.values())
    assert rows[("plare", 32)]["rows_per_step"] == 32 * 2 * 16  # tiny: 16-step segments
    estimates = {e["method"]: e for e in payload["estimates"]}
    rlvlmf = estimates["rlvlmf (IQL batch 32, 1000 reward steps, 10000 critic-only steps)"]
    assert rlvlmf["seconds"] == pytest.approx(rlvlmf["reward_s"] + rlvlmf["iql_s"])
    assert rlvlmf["iql_s"] == pytest.approx((10_000 + 3000) / rows[("rlvlmf iql", 32)]["steps_per_s"])
    assert "steps/s" in proc.stdout and "training s" in proc.stdout


@pytest.mark.slow
def test_calibrate_data_tiny(tmp_path):
    """Collects a tiny misperceived dataset, trains BC briefly, and appends one JSON record."""
    out = tmp_path / "calibration.jsonl"
    common = ("--task", "drawer-open", "--episodes", "2", "--horizon", "30", "--workers", "1", "--out", str(out))
    run_script("calibrate_data.py", *common, "--misperceive-prob", "1", "--misperceive-offset", "0", "-0.07", "0",
               "--bc", "--bc-steps", "100", "--eval-episodes", "2")
    run_script("calibrate_data.py", *common, "--misperceive-prob", "0")
    first, second = (json.loads(line) for line in out.read_text().splitlines())
    assert first["config"]["misperceive_offset"] == [0.0, -0.07, 0.0]
    assert first["data_success"]["misperceived"]["episodes"] == 2 and first["data_success"]["plain"]["episodes"] == 0
    assert set(first["bc_success"]) == {"0"} and 0.0 <= first["bc_success"]["0"] <= 1.0
    assert second["data_success"]["plain"]["episodes"] == 2 and second["bc_success"] == {}


@pytest.mark.slow
def test_gpu_check_tiny_writes_one_json_with_training_seeds_and_projection(tmp_path):
    """benchmarks/gpu_check.sh --tiny: the GPU check's every step at tiny sizes on CPU, merged into one JSON."""
    out = tmp_path / "gpu_check.json"
    env = {**os.environ, "PYTHON": sys.executable, "OUT": str(tmp_path / "unused")}
    proc = subprocess.run(
        ["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), "--tiny", str(out)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=HANG_GUARD_S,
    )  # fmt: skip
    assert proc.returncode == 0, f"gpu_check.sh failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    payload = json.loads(out.read_text())
    assert not (tmp_path / "unused").exists()  # the path argument wins over $OUT
    assert payload["tiny"] is True and payload["device"]["platform"] == "cpu"
    assert set(payload["steps"]) == {"training", "seeds", "seeds_bc"}
    assert all(s["exit_status"] == 0 for s in payload["steps"].values())

    training = payload["training"]["rows"]
    jax_rows = [r for r in training if r["kind"] == "update" and r["impl"] == "jax"]
    assert [r["preset"] for r in jax_rows] == ["reference"] and jax_rows[0]["steps_per_s"] > 0  # tiny: first preset
    assert all(r["gflops"] > 0 for r in training if r["kind"] == "peak")
    torch_rows = [r for r in training if r["impl"].startswith("torch")]
    if _has("torch"):
        assert torch_rows and all(r["steps_per_s"] > 0 for r in torch_rows)
    else:
        assert not torch_rows and any("torch is not importable" in n for n in payload["notes"])

    def rows(section, phase):
        got = {(r["mode"], r["seeds"]): r for r in payload[section]["rows"]}
        assert all(r["phase"] == phase and r["preset"] == "reference" for r in got.values())
        return got

    cpl, bc = rows("seeds", "cpl"), rows("seeds_bc", "bc")
    assert set(cpl) == {(m, n) for m in ("sequential", "batched") for n in (1, 8, 64)}
    assert set(bc) == {(m, n) for m in ("sequential", "batched") for n in (1, 64)}
    for (mode, n), r in [*cpl.items(), *bc.items()]:
        assert r["steps_per_s_per_seed"] > 0 and r["device_kind"]
        assert r["seed_steps_per_s"] == pytest.approx(n * r["steps_per_s_per_seed"])
        assert r["calls_per_round"] == (1 if mode == "batched" else n)
        assert r["busy"] == (r["others_cpu_share"] > 0.05) and r["busy_mark"] in ("BUSY", "quiet")
        assert r["runs_per_hour"] == pytest.approx(r["seed_steps_per_s"] * 3600 / 500_000)
    for n in (1, 8, 64):
        assert cpl[("batched", n)]["batched_vs_sequential"] == pytest.approx(
            cpl[("batched", n)]["seed_steps_per_s"] / cpl[("sequential", n)]["seed_steps_per_s"])

    projection = payload["projection"]
    assert projection["schedule"] == {"bc_steps": 200_000, "cpl_steps": 300_000}
    runs = {(r["mode"], r["seeds"]): r for r in projection["runs"]}
    assert set(runs) == set(bc)
    for key, r in runs.items():
        expected = (200_000 / bc[key]["steps_per_s_per_seed"] + 300_000 / cpl[key]["steps_per_s_per_seed"]) / 3600
        assert r["wall_hours_all_seeds"] == pytest.approx(expected) and expected > 0
    assert projection["wall_hours_one_seed"] == runs[("sequential", 1)]["wall_hours_all_seeds"]
    assert projection["from_training_benchmark"]["wall_hours_one_seed"] == pytest.approx(
        500_000 / jax_rows[0]["steps_per_s"] / 3600)
    assert "seed-steps/s" in proc.stdout and "paper preset, 64 seed(s) batched" in proc.stdout


@pytest.mark.slow
def test_runs_per_hour_tiny_times_both_modes_on_the_same_runs(tmp_path):
    out = tmp_path / "runs_per_hour.json"
    proc = run_script("runs_per_hour.py", "--tiny", "--seeds-list", "2", "--out", str(out),
                      "--work-dir", str(tmp_path / "work"))
    payload = json.loads(out.read_text())
    rows = {r["mode"]: r for r in payload["rows"]}
    assert set(rows) == {"sequential", "batched"}
    for row in rows.values():
        assert row["seeds"] == 2 and row["wall_s"] > 0
        assert row["runs_per_hour"] == pytest.approx(2 * 3600 / row["wall_s"])
        assert set(row["final_success"]) == {"plare", "rlvlmf", "sft", "bc"}
        assert all(len(v) == 2 for v in row["final_success"].values())
    assert rows["batched"]["batched_vs_sequential"] == pytest.approx(
        rows["batched"]["runs_per_hour"] / rows["sequential"]["runs_per_hour"])
    # both modes trained every seed into its own unit, and the batched ones together
    for seed in (0, 1):
        unit = json.loads((tmp_path / "work" / "batched-2" / f"seed{seed}" / "result.json").read_text())
        assert unit["trained_with_seeds"] == [0, 1]
        assert "trained_with_seeds" not in json.loads(
            (tmp_path / "work" / "sequential-2" / f"seed{seed}" / "result.json").read_text())
    assert "| batched | 2 |" in proc.stdout
    gaps = rows["batched"]["policy_gaps"]
    assert set(gaps) == {"plare", "rlvlmf", "sft", "bc"} and all(len(g) == 2 for g in gaps.values())
    assert all(0 <= g < 1e-2 for v in gaps.values() for g in v)  # 40 updates: float rounding only
