"""The experiment CLI end to end, as a user runs it: a subprocess per call."""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import pytest

from plare_jax.pipeline.config import VLMOptions
from tests.hang_guard import HANG_GUARD_S

REPO = pathlib.Path(__file__).resolve().parent.parent
SCRIPT = REPO / "experiments" / "metaworld.py"

# A pipeline small enough for seconds: every stage runs, nothing is big.
TINY = [
    "--env", "reach", "--num-episodes", "4", "--collection-horizon", "60", "--num-pairs", "24",
    "--segment-length", "16", "--hidden-dims", "32", "32", "--batch-pairs", "8",
    "--bc-batch-size", "64", "--bc-steps", "20", "--method-steps", "20", "--metrics-every", "10",
    "--eval-every", "20", "--eval-episodes", "2", "--eval-horizon", "30", "--warmup-steps", "5",
    "--workers", "1", "--final-eval-episodes", "2",  # the default 100 would cost ~16 s per method
]


def run_cli(args, tmp_path, *, env=None):
    full_env = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
    full_env.pop("PLARE_VLM_BASE_URL", None)
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args], cwd=tmp_path, env=full_env, capture_output=True,
        text=True, timeout=HANG_GUARD_S)


def load_cli_module():
    sys.path.insert(0, str(REPO))
    import importlib

    return importlib.import_module("experiments.metaworld")


def test_help_lists_every_option(tmp_path):
    proc = run_cli(["--help"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    module = load_cli_module()
    for field in dataclasses.fields(module.ExperimentConfig):
        if field.name in ("vlm", "methods"):
            continue
        assert f"--{field.name.replace('_', '-')}" in proc.stdout, field.name
    # Every registered method with options has its group, from the registry.
    from plare_jax.methods import METHODS

    for name, method in METHODS.items():
        if method.default_options is not None:
            for option in dataclasses.fields(method.default_options):
                assert f"--{name}.{option.name.replace('_', '-')}" in proc.stdout, (name, option.name)
    for field in dataclasses.fields(VLMOptions):
        assert f"--vlm.{field.name.replace('_', '-')}" in proc.stdout, field.name
    assert "paper" in proc.stdout and "quick" in proc.stdout


def test_paper_preset_sets_reference_settings():
    module = load_cli_module()
    config = module.parse_args(["--preset", "paper"])
    assert (config.num_pairs, config.segment_length, config.num_keyframes) == (10_000, 64, 3)
    assert (config.bc_steps, config.method_steps, config.batch_pairs) == (200_000, 300_000, 96)
    assert config.hidden_dims == (512, 512)
    assert (config.alpha, config.bias, config.learning_rate, config.warmup_steps) == (0.1, 0.5, 1e-4, 10_000)
    assert (config.eval_episodes, config.eval_every) == (25, 5000)
    # An explicit option still overrides the preset.
    assert module.parse_args(["--preset", "paper", "--num-pairs", "7"]).num_pairs == 7


@pytest.mark.parametrize(
    "args, message",
    [
        (["--env", "sweep-intoo"], "sweep-into"),
        (["--segment-length", "400"], "--segment-length"),
        (["--misperceive-prob", "1.5"], "--misperceive-prob"),
        (["--bc-steps", "150", "--metrics-every", "100"], "--bc-steps"),
        (["--labeler", "vlm"], "--vlm.base-url"),
        (["--labeler", "vlm", "--vlm.base-url", "http://127.0.0.1:9/v1"], "127.0.0.1:9"),
        (["--vlm.launch"], "--vlm.launch needs the `vllm` executable"),
        (["--seeds", "-1"], "--seeds must be non-negative"),
        (["--seeds", "0", "0"], "lists a seed twice"),
        (["--vlm.launch", "--vlm.executable", "no/such/bin/vllm"], "'no/such/bin/vllm' not found"),
        (["--vlm.serve-args=--dtype 'float32"], "--vlm.serve-args"),
        (["--vlm.max-tokens", "0"], "--vlm.max-tokens"),
    ],
)
def test_bad_input_fails_fast_with_clear_message(tmp_path, args, message):
    proc = run_cli([*args, "--out-dir", str(tmp_path / "runs")], tmp_path)  # a hang guard
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_unwritable_output_dir(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    proc = run_cli(["--out-dir", str(blocker / "runs")], tmp_path)
    assert proc.returncode == 2
    assert "not writable" in proc.stderr


@pytest.mark.slow
def test_scripted_pipeline_end_to_end_and_never_overwrites(tmp_path):
    args = [*TINY, "--labeler", "scripted", "--data-seeds", "0", "1", "--run-name", "tiny",
            "--out-dir", str(tmp_path / "runs"), "--cache-dir", str(tmp_path / "cache")]
    proc = run_cli(args, tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    run_dir = tmp_path / "runs" / "tiny"
    results = json.loads((run_dir / "results.json").read_text())
    assert results["labeler"] == "scripted"
    task = results["tasks"]["reach-v3"]
    assert set(task["methods"]) == {"plare", "bc"}
    for name, method in task["methods"].items():
        assert method["success"]["num_runs"] == 2
        # Each run's result is that method's own last evaluation in its metrics log, and the
        # mean is over exactly those runs (a mix-up of methods, seeds or branches fails here).
        for run in method["runs"]:
            log = run_dir / "reach-v3" / f"data{run['data_seed']}" / f"seed{run['seed']}" / "metrics.jsonl"
            evals = [json.loads(l) for l in log.open()]
            evals = [r for r in evals if r.get("eval") and r["branch"] == name]
            assert evals[-1]["success_rate"] == run["success_rate"]
            assert evals[-1]["step"] == run["step"] == 40
        per_run = [run["success_rate"] for run in method["runs"]]
        assert method["success"]["mean"] == pytest.approx(sum(per_run) / len(per_run))
    provenance = json.loads((run_dir / "provenance.json").read_text())
    assert "jax" in provenance["packages"]
    assert (run_dir / "learning_curves.png").stat().st_size > 1000
    assert (run_dir / "reach-v3" / "plare_final.mp4").stat().st_size > 0
    records = [json.loads(l) for l in (run_dir / "reach-v3" / "data0" / "seed0" / "metrics.jsonl").open()]
    assert {r["branch"] for r in records} == {"bc_phase", "plare", "bc"}
    assert "| reach-v3 | plare |" in proc.stdout
    assert proc.stdout.count("labeler:") == 1  # the labeler notice, once
    # the shared BC phase and the bc method's own second phase are timed under distinct keys
    timings = task["training_timings"]["data0-seed0"]
    assert {"shared_bc_phase_s", "plare_s", "bc_s"} <= set(timings) and all(v > 0 for v in timings.values())
    assert "os.fork()" not in proc.stderr  # the videos were written without forking the JAX process

    # The same run name again: refused, and the first run is untouched.
    before = (run_dir / "results.json").read_text()
    again = run_cli(args, tmp_path)
    assert again.returncode == 2 and "already exists" in again.stderr
    assert (run_dir / "results.json").read_text() == before


@pytest.mark.slow
def test_batch_seeds_runs_every_seed_as_one_group_with_per_seed_results(tmp_path):
    args = [*TINY, "--labeler", "scripted", "--seeds", "0", "1", "--batch-seeds", "--method", "plare", "bc", "pbc",
            "rlvlmf", "--rlvlmf.reward-steps", "50", "--rlvlmf.critic-pretrain-steps", "50", "--rlvlmf.batch-size", "32",
            "--run-name", "b", "--out-dir", str(tmp_path / "runs"), "--cache-dir", str(tmp_path / "cache")]
    proc = run_cli(args, tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    run_dir = tmp_path / "runs" / "b"
    task = json.loads((run_dir / "results.json").read_text())["tasks"]["reach-v3"]
    for seed in (0, 1):
        unit = json.loads((run_dir / "reach-v3" / "data0" / f"seed{seed}" / "result.json").read_text())
        assert unit["trained_with_seeds"] == [0, 1] and set(unit["methods"]) == {"plare", "bc", "pbc", "rlvlmf"}
    for method in task["methods"].values():
        assert method["success"]["num_runs"] == 2
    assert (run_dir / "reach-v3" / "plare_final.mp4").stat().st_size > 0  # the first seed's video
    assert "seed 0+1 plare" in proc.stderr  # one progress bar for the group

    refused = run_cli([*args[:-6], "--devices", "2", "--run-name", "r", "--out-dir", str(tmp_path / "runs")],
                      tmp_path)
    assert refused.returncode == 2 and "--batch-seeds trains the stacked seeds on one device" in refused.stderr
    assert not (tmp_path / "runs" / "r").exists()


@pytest.mark.slow
def test_resume_continues_an_interrupted_run(tmp_path):
    args = [*TINY, "--labeler", "scripted", "--run-name", "r", "--out-dir", str(tmp_path / "runs"),
            "--cache-dir", str(tmp_path / "cache"), "--no-video"]
    assert run_cli(args, tmp_path).returncode == 0
    run_dir = tmp_path / "runs" / "r"
    unit = run_dir / "reach-v3" / "data0" / "seed0"
    full = json.loads((unit / "result.json").read_text())
    # Simulate an interruption after the shared BC phase: the methods' progress is gone.
    (unit / "result.json").unlink()
    for branch in ("plare", "bc"):
        for path in sorted((unit / "checkpoints" / branch).glob("*"), reverse=True):
            subprocess.run(["rm", "-rf", str(path)], check=True)
    proc = run_cli(["--resume", str(run_dir)], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    resumed = json.loads((unit / "result.json").read_text())
    for method in ("plare", "bc"):
        assert resumed["methods"][method]["success_rate"] == full["methods"][method]["success_rate"]
    records = [json.loads(l) for l in (unit / "metrics.jsonl").open()]
    steps = [(r["branch"], r["step"], bool(r.get("eval"))) for r in records]
    assert len(steps) == len(set(steps)), "resumed run duplicated metrics records"


@pytest.mark.slow
def test_vlm_pipeline_against_loopback_server(tmp_path):
    from plare_jax.testing.loopback_server import LoopbackVLMServer

    with LoopbackVLMServer() as server:
        args = [*TINY, "--labeler", "vlm", "--vlm.base-url", server.base_url, "--run-name", "vlm", "--out-dir", str(tmp_path / "runs"),
                "--cache-dir", str(tmp_path / "cache"), "--no-video", "--num-keyframes", "2"]
        proc = run_cli(args, tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    results = json.loads((tmp_path / "runs" / "vlm" / "results.json").read_text())
    assert results["labeler"] == "vlm"
    labels = results["tasks"]["reach-v3"]["data"]["0"]["labels"]
    assert labels["pairs"] == 24
    assert (tmp_path / "cache" / "labels.sqlite").exists()
    # CPL trains on the confident labels only: the results say how many there were
    confident = sum(labels["confusion"][row][col] for row in ("first", "second") for col in ("first", "second", "unsure"))
    assert labels["trained_pairs"] == confident and labels["coverage"]["unlabeled"] == 0
    assert "| pairs trained on |" in (tmp_path / "runs" / "vlm" / "summary.md").read_text()


def start_cli(args, tmp_path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1"}
    env.pop("PLARE_VLM_BASE_URL", None)
    return subprocess.Popen([sys.executable, str(SCRIPT), *args], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.mark.slow
@pytest.mark.parametrize("signum, exit_code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)], ids=["SIGINT", "SIGTERM"])
def test_a_signal_during_training_stops_promptly_and_leaves_a_resumable_run(tmp_path, signum, exit_code):
    args = [*TINY, "--bc-steps", "200", "--method-steps", "200", "--eval-every", "100",
            "--labeler", "scripted", "--run-name", "c", "--out-dir", str(tmp_path / "runs"),
            "--cache-dir", str(tmp_path / "cache"), "--no-video"]
    proc = start_cli(args, tmp_path)
    metrics = tmp_path / "runs" / "c" / "reach-v3" / "data0" / "seed0" / "metrics.jsonl"
    deadline = time.monotonic() + 300  # a hang guard, not a speed check
    while time.monotonic() < deadline and not (metrics.exists() and '"eval": true' in metrics.read_text()):
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        time.sleep(0.2)
    proc.send_signal(signum)
    # A run that ignored the signal trains to the end and exits 0: the exit code catches it.
    _, stderr = proc.communicate(timeout=HANG_GUARD_S)  # a hang guard, not a speed check
    assert proc.returncode == exit_code, stderr[-3000:]
    assert "--resume" in stderr and "Traceback" not in stderr and "Exception ignored" not in stderr
    assert not (tmp_path / "runs" / "c" / "results.json").exists()
    if signum == signal.SIGTERM:
        return
    resumed = run_cli(["--resume", str(tmp_path / "runs" / "c")], tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    results = json.loads((tmp_path / "runs" / "c" / "results.json").read_text())
    assert set(results["tasks"]["reach-v3"]["methods"]) == {"plare", "bc"}


@pytest.mark.slow
def test_ctrl_c_before_training_leaves_no_run_directory(tmp_path):
    args = [*TINY, "--num-episodes", "400", "--labeler", "scripted", "--run-name", "early",
            "--out-dir", str(tmp_path / "runs"), "--cache-dir", str(tmp_path / "cache")]
    proc = start_cli(args, tmp_path)
    for line in proc.stdout:  # collection of 400 episodes starts right after this line
        if line.startswith("run directory:"):
            break
    assert (tmp_path / "runs" / "early").is_dir()
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=HANG_GUARD_S)
    assert proc.returncode == 130, stderr[-3000:]
    assert "nothing to resume" in stderr and "Traceback" not in stderr
    assert not (tmp_path / "runs" / "early").exists()
    assert not list((tmp_path / "cache").glob("datasets/*.npz"))  # a stopped collection caches nothing


def tiny_dataset_path(cache: pathlib.Path) -> pathlib.Path:
    """Where the experiment caches the TINY dataset (reach, 4 episodes of 60 steps, data seed 0)."""
    from plare_jax.envs.collect import CollectionConfig
    from plare_jax.pipeline.config import ExperimentConfig

    defaults = ExperimentConfig()
    config = CollectionConfig(task="reach", num_episodes=4, horizon=60, seed=0,
                              stretch_prob=defaults.stretch_prob, decoy_prob=defaults.decoy_prob)
    return cache / "datasets" / f"{config.task_id}-{config.cache_key()}.npz"


@pytest.mark.slow
def test_corrupt_cached_dataset_is_a_short_error_and_recollect_repairs_it(tmp_path):
    path = tiny_dataset_path(tmp_path / "cache")
    path.parent.mkdir(parents=True)
    path.write_bytes(b"PK\x03\x04" + bytes(2000))  # a zip header, then nothing: a truncated file
    args = [*TINY, "--labeler", "scripted", "--out-dir", str(tmp_path / "runs"), "--cache-dir",
            str(tmp_path / "cache"), "--no-video", "--bc-steps", "0", "--method-steps", "0"]
    proc = run_cli(args, tmp_path)
    assert proc.returncode == 2, proc.stderr[-3000:]
    error = proc.stderr.strip().splitlines()[-1]
    assert error.startswith("error: ") and "corrupt or truncated" in error and "--recollect" in error
    assert "Traceback" not in proc.stderr
    assert not any((tmp_path / "runs").iterdir())  # no orphan run directory
    again = run_cli([*args, "--recollect"], tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    from plare_jax.data.dataset import load_dataset

    assert load_dataset(path).num_steps == 4 * 60


@pytest.mark.slow
def test_corrupt_label_store_is_a_short_error_before_training(tmp_path):
    from plare_jax.testing.loopback_server import LoopbackVLMServer

    store = tmp_path / "cache" / "labels.sqlite"
    store.parent.mkdir(parents=True)
    store.write_bytes(b"SQLite format 3\x00" + bytes(100))  # a header, then nothing
    with LoopbackVLMServer() as server:
        args = [*TINY, "--labeler", "vlm", "--vlm.base-url", server.base_url, "--out-dir", str(tmp_path / "runs"),
                "--cache-dir", str(tmp_path / "cache"), "--no-video", "--num-keyframes", "2"]
        proc = run_cli(args, tmp_path)
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-3000:]
    error = proc.stderr.strip().splitlines()[-1]
    assert "label store" in error and "corrupt" in error and "Move" in error and "Traceback" not in proc.stderr
    assert not any((tmp_path / "runs").iterdir())


def test_label_stats_of_chunks_merge_into_one_report():
    module = load_cli_module()
    first = {"labeler": "vlm", "pairs": 10, "queried_pairs": 8, "requests": 16, "wall_s": 2.0,
             "latency_p50_s": 0.2, "concurrency": 32, "pairs_per_s": 4.0}
    second = {"labeler": "vlm", "pairs": 5, "queried_pairs": 5, "requests": 10, "wall_s": 1.0,
              "latency_p50_s": 0.3, "concurrency": 32, "pairs_per_s": 5.0}
    from plare_jax.pipeline.labels import merge_stats

    merged = merge_stats([first, second])
    assert (merged["pairs"], merged["queried_pairs"], merged["requests"]) == (15, 13, 26)
    assert merged["concurrency"] == 32 and merged["latency_p50_s"] == 0.3
    assert merged["pairs_per_s"] == pytest.approx(13 / 3.0)
    assert merged["requests_per_s"] == pytest.approx(26 / 3.0)


# The paper preset with only its update counts, evaluation episodes and seeds cut: its data (500
# episodes), its pairs (10,000, scripted labels), its 2x512 networks, batch 96 (and BC batch
# 6144), and every method. What a GPU user launches first is known to start and finish.
PAPER_SHORTENED = ["--preset", "paper", "--env", "sweep-into", "--labeler", "scripted", "--seeds", "0",
                   "--method", "plare", "plare-robust", "rlvlmf", "sft", "bc", "pbc",
                   "--bc-steps", "200", "--method-steps", "200", "--metrics-every", "100", "--eval-every", "200",
                   "--rlvlmf.reward-steps", "200", "--eval-episodes", "2", "--final-eval-episodes", "2",
                   "--eval-horizon", "50", "--no-video", "--workers", "2"]


@pytest.mark.slow
def test_paper_preset_runs_end_to_end_with_only_its_update_counts_shortened(tmp_path):
    import resource

    proc = run_cli([*PAPER_SHORTENED, "--run-name", "paper", "--out-dir", str(tmp_path / "runs"),
                    "--cache-dir", str(tmp_path / "cache")], tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    run_dir = tmp_path / "runs" / "paper"
    config = json.loads((run_dir / "config.json").read_text())
    # The preset's sizes, not the quick ones.
    assert (config["preset"], config["num_episodes"], config["num_pairs"]) == ("paper", 500, 10_000)
    assert config["hidden_dims"] == [512, 512] and config["batch_pairs"] == 96 and config["bc_batch_size"] == 6144
    assert config["methods"]["rlvlmf"]["reward_hidden_dims"] == [512, 512]
    results = json.loads((run_dir / "results.json").read_text())
    task = results["tasks"]["sweep-into-v3"]
    assert task["data"]["0"]["labels"]["pairs"] == 10_000
    assert set(task["methods"]) == {"plare", "plare-robust", "rlvlmf", "sft", "bc", "pbc"}
    for name, method in task["methods"].items():
        (run,) = method["runs"]
        assert run["step"] == 400, (name, run)  # 200 BC + 200 second-phase updates; pbc 400 from scratch
        assert 0.0 <= run["success_rate"] <= 1.0
    assert task["methods"]["rlvlmf"]["runs"][0]["reward_model_steps"] == 200
    peak_mib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print(f"paper preset (shortened) peak host memory of the run: {peak_mib:.0f} MiB")
