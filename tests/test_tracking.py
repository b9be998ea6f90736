"""--track: TensorBoard event files and offline wandb runs inside the run directory, read back."""

from __future__ import annotations

import json
import os
import pathlib
import struct
import subprocess
import sys
import zlib

import pytest

from tests.hang_guard import HANG_GUARD_S
from tests.test_experiment import REPO, SCRIPT, TINY

# The CLI under a wrapper: `HIDE` names modules made unimportable first (a missing library), and
# the modules of `REPORT` that got imported are printed as the last line (what the run loaded).
_WRAPPER = """
import json, runpy, sys
hide, report, argv = json.loads(sys.argv[1])
for name in hide:
    sys.modules[name] = None  # `import name` now raises ImportError, as if not installed
sys.argv = argv
try:
    runpy.run_path(argv[0], run_name="__main__")
except SystemExit as e:
    code = e.code
else:
    code = 0
print("IMPORTED " + json.dumps(sorted(m for m in report if sys.modules.get(m) is not None)), flush=True)
sys.exit(code)
"""


def run_wrapped(args, tmp_path, *, hide=(), report=("wandb", "tensorboardX"), env=None):
    env = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
    env.pop("PLARE_VLM_BASE_URL", None)
    payload = json.dumps([list(hide), list(report), [str(SCRIPT), *args]])
    proc = subprocess.run([sys.executable, "-c", _WRAPPER, payload], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=HANG_GUARD_S)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("IMPORTED ")]
    imported = json.loads(lines[-1].removeprefix("IMPORTED ")) if lines else None
    return proc, imported


# --- reading TensorBoard event files (TFRecord framing of tensorboardX's Event protos) ----------


def read_events(path: pathlib.Path) -> list:
    from tensorboardX.proto import event_pb2
    from tensorboardX.record_writer import masked_crc32c

    data, pos, events = path.read_bytes(), 0, []
    while pos < len(data):
        header = data[pos:pos + 8]
        (length,) = struct.unpack("<Q", header)
        (header_crc,) = struct.unpack("<I", data[pos + 8:pos + 12])
        assert header_crc == masked_crc32c(header), f"{path}: corrupt record header at {pos}"
        payload = data[pos + 12:pos + 12 + length]
        (payload_crc,) = struct.unpack("<I", data[pos + 12 + length:pos + 16 + length])
        assert payload_crc == masked_crc32c(payload), f"{path}: corrupt record at {pos}"
        event = event_pb2.Event()
        event.ParseFromString(payload)
        events.append(event)
        pos += 16 + length
    return events


def event_files(logdir: pathlib.Path) -> list[pathlib.Path]:
    return sorted(logdir.glob("events.out.tfevents.*"))


def scalars_in(logdir: pathlib.Path) -> dict[str, dict[int, float]]:
    """tag -> step -> value of every scalar in a TensorBoard run folder (all its event files)."""
    out: dict[str, dict[int, float]] = {}
    for path in event_files(logdir):
        for event in read_events(path):
            for value in event.summary.value:
                if value.HasField("simple_value"):
                    out.setdefault(value.tag, {})[event.step] = value.simple_value
    return out


def texts_in(logdir: pathlib.Path) -> dict[str, str]:
    out = {}
    for path in event_files(logdir):
        for event in read_events(path):
            for value in event.summary.value:
                if value.HasField("tensor") and value.tensor.string_val:
                    out[value.tag.split("/text_summary")[0]] = value.tensor.string_val[0].decode()
    return out


# --- reading an offline wandb run (.wandb: LevelDB-log framing of wandb's Record protos) --------

_WANDB_BLOCK = 32 * 1024
_WANDB_FULL, _WANDB_FIRST, _WANDB_MIDDLE, _WANDB_LAST = 1, 2, 3, 4


def read_wandb_records(path: pathlib.Path) -> list:
    """The records of a .wandb file: a 7-byte file header (":W&B", magic 0xBEE1, version 0), then
    32 KiB blocks of chunks, each with a header (crc32 of type + data, length, type); a record
    is one FULL chunk or FIRST, MIDDLE..., LAST; block tails under 7 bytes are padding."""
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    ident, magic, version = struct.unpack("<4sHB", data[:7])
    assert (ident, magic, version) == (b":W&B", 0xBEE1, 0), f"{path}: not a .wandb file this test can read"
    pos, parts, records = 7, [], []
    while pos + 7 <= len(data):
        left = _WANDB_BLOCK - pos % _WANDB_BLOCK
        if left < 7:
            pos += left
            continue
        crc, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if (crc, length, kind) == (0, 0, 0):  # zero padding up to the block's end
            pos += left
            continue
        chunk = data[pos + 7:pos + 7 + length]
        assert crc == zlib.crc32(bytes([kind]) + chunk), f"{path}: corrupt chunk at {pos}"
        pos += 7 + length
        parts.append(chunk)
        if kind in (_WANDB_FULL, _WANDB_LAST):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(b"".join(parts))
            records.append(record)
            parts = []
        else:
            assert kind in (_WANDB_FIRST, _WANDB_MIDDLE), f"{path}: unknown chunk type {kind}"
    return records


def _key(item) -> str:
    return item.key or "/".join(item.nested_key)


def wandb_contents(path: pathlib.Path) -> tuple[dict, list[dict], dict]:
    """(config, history rows, summary) of an offline wandb run file."""
    config, history, summary = {}, [], {}
    for record in read_wandb_records(path):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            config.update({_key(item): json.loads(item.value_json) for item in record.run.config.update})
        elif kind == "config":
            config.update({_key(item): json.loads(item.value_json) for item in record.config.update})
        elif kind == "history":
            history.append({_key(item): json.loads(item.value_json) for item in record.history.item})
        elif kind == "summary":
            summary.update({_key(item): json.loads(item.value_json) for item in record.summary.update})
    return config, history, summary


# --- the tests ---------------------------------------------------------------------------------


def test_tracking_off_imports_neither_library(tmp_path):
    code = """
import pathlib, sys
from plare_jax import tracking
from plare_jax.pipeline.config import ExperimentConfig
from plare_jax.pipeline import run  # noqa: F401  (the pipeline's own imports)

config = ExperimentConfig()
tracking.require(config.track)
tracker = tracking.open_tracker(config.track, pathlib.Path(sys.argv[1]), config)
tracker.unit("reach-v3", 0, 0).record({"branch": "plare", "step": 10, "loss": 1.0})
tracker.log_results({"tasks": {}}, "table")
tracker.close()
print(sorted(m for m in ("wandb", "tensorboardX") if m in sys.modules))
tracking.require(("tensorboard",))  # the check above can see an import
print(sorted(m for m in ("wandb", "tensorboardX") if m in sys.modules))
"""
    proc = subprocess.run([sys.executable, "-c", code, str(tmp_path)], cwd=tmp_path, capture_output=True,
                          text=True, env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=HANG_GUARD_S)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.splitlines()[-2:] == ["[]", "['tensorboardX']"]
    assert list(tmp_path.iterdir()) == []  # --track none writes nothing


@pytest.mark.parametrize("track", [["none", "wandb"], ["wandb", "wandb"]])
def test_bad_track_values_fail_validation(track):
    import dataclasses

    from plare_jax.pipeline.config import ConfigError, ExperimentConfig, validate

    with pytest.raises(ConfigError, match="--track"):
        validate(dataclasses.replace(ExperimentConfig(), track=tuple(track)))


def test_missing_library_is_a_clear_error_before_any_work(tmp_path):
    args = [*TINY, "--labeler", "scripted", "--track", "tensorboard", "wandb", "--run-name", "m",
            "--out-dir", str(tmp_path / "runs"), "--cache-dir", str(tmp_path / "cache")]
    proc, imported = run_wrapped(args, tmp_path, hide=["wandb"])
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-3000:]
    error = proc.stderr.strip().splitlines()[-1]
    assert error.startswith("error: --track wandb needs the wandb package") and 'pip install "plare-jax[track]"' in error
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())
    assert not list((tmp_path / "cache").glob("datasets/*"))  # nothing was collected
    assert imported == ["tensorboardX"]


def metrics_records(unit: pathlib.Path) -> list[dict]:
    return [json.loads(line) for line in (unit / "metrics.jsonl").open()]


@pytest.mark.slow
def test_tensorboard_and_wandb_log_config_metrics_evals_and_results(tmp_path):
    run_dir = tmp_path / "runs" / "tracked"
    # wandb's own user folders (its debug logs, settings) go to tmp_path too, not to ~.
    env = {name: str(tmp_path / "wandb-home") for name in ("WANDB_CACHE_DIR", "WANDB_CONFIG_DIR", "WANDB_DATA_DIR")}
    args = [*TINY, "--labeler", "scripted", "--no-video", "--track", "tensorboard", "wandb",
            "--run-name", "tracked", "--out-dir", str(tmp_path / "runs"), "--cache-dir", str(tmp_path / "cache")]
    proc, imported = run_wrapped(args, tmp_path, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert imported == ["tensorboardX", "wandb"]
    assert "Weave" not in proc.stdout + proc.stderr  # wandb's LLM-tracing hint is off
    assert "NaN or Inf" not in proc.stderr  # a single run's std/interval is left out, not logged as NaN
    results = json.loads((run_dir / "results.json").read_text())
    records = metrics_records(run_dir / "reach-v3" / "data0" / "seed0")
    train = {(r["branch"], r["step"]): r for r in records if not r.get("eval")}
    evals = {(r["branch"], r["step"]): r for r in records if r.get("eval")}
    # TINY: a shared BC phase of 20 steps, then 20 steps of each method; metrics every 10 steps,
    # evaluations every 20.
    assert set(train) == {("bc_phase", 10), ("bc_phase", 20), ("plare", 30), ("plare", 40), ("bc", 30), ("bc", 40)}
    assert set(evals) == {("bc_phase", 20), ("plare", 40), ("bc", 40)}

    # TensorBoard: one folder per branch, its scalars equal to the metrics log's records.
    board = run_dir / "tensorboard"
    for branch in ("bc_phase", "plare", "bc"):
        tags = scalars_in(board / "reach-v3" / "data0" / "seed0" / branch)
        steps = sorted(step for b, step in train if b == branch)
        assert sorted(tags["train/loss"]) == steps, branch
        for step in steps:
            assert tags["train/loss"][step] == pytest.approx(train[branch, step]["loss"], rel=1e-6)
        assert sorted(tags["eval/success_rate"]) == sorted(step for b, step in evals if b == branch)
        for step in tags["eval/success_rate"]:
            for name in ("success_rate", "mean_return"):
                assert tags[f"eval/{name}"][step] == pytest.approx(evals[branch, step][name], rel=1e-6)
    overview = board / "overview"
    results_tags = scalars_in(overview)
    for method in ("plare", "bc"):
        success = results["tasks"]["reach-v3"]["methods"][method]["success"]
        assert results_tags[f"results/reach-v3/{method}/success_mean"] == {40: pytest.approx(success["mean"])}
        assert results_tags[f"results/reach-v3/{method}/num_runs"] == {40: 1.0}
    texts = texts_in(overview)
    assert "| reach-v3 | plare |" in texts["results"] and "| reach-v3 | bc |" in texts["results"]
    assert json.loads("\n".join(line[4:] for line in texts["config"].splitlines()))["env"] == ["reach"]

    # wandb: one offline run in the run directory with the config, every record and the results.
    wandb_files = sorted((run_dir / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(wandb_files) == 1, list((run_dir / "wandb").rglob("*"))
    config, history, summary = wandb_contents(wandb_files[0])
    assert config["env"] == ["reach"] and config["labeler"] == "scripted" and config["track"] == ["tensorboard", "wandb"]
    assert config["bc_steps"] == 20 and isinstance(config["methods"]["plare"], dict)  # nested options stay nested
    logged = {}
    for row in history:
        for key, value in row.items():
            if key.startswith(("train/", "eval/")):
                logged[key, row["train_step"]] = value
    expected = {}
    for (branch, step), r in train.items():
        expected[f"train/reach-v3/data0/seed0/{branch}/loss", step] = r["loss"]
    for (branch, step), r in evals.items():
        expected[f"eval/reach-v3/data0/seed0/{branch}/success_rate", step] = r["success_rate"]
        expected[f"eval/reach-v3/data0/seed0/{branch}/mean_return", step] = r["mean_return"]
    assert {key: logged.get(key) for key in expected} == pytest.approx(expected, rel=1e-9)
    for method in ("plare", "bc"):
        success = results["tasks"]["reach-v3"]["methods"][method]["success"]
        assert summary[f"results/reach-v3/{method}/success_mean"] == pytest.approx(success["mean"])
    assert "| reach-v3 | plare |" in summary["results/table"]
    assert not (tmp_path / "wandb").exists()  # nothing outside the run directory

    # A resume may change --track (the stored choice is the default): here wandb only, which
    # writes a second offline run beside the first; TensorBoard gets nothing new.
    first_events = sorted(board.rglob("events.out.tfevents.*"))
    first_wandb = wandb_files[0].read_bytes()
    resumed, imported = run_wrapped(["--resume", str(run_dir), "--track", "wandb"], tmp_path, env=env)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert imported == ["wandb"]
    assert sorted(board.rglob("events.out.tfevents.*")) == first_events
    wandb_files = sorted((run_dir / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(wandb_files) == 2 and first_wandb in [path.read_bytes() for path in wandb_files]
    second = next(path for path in wandb_files if path.read_bytes() != first_wandb)
    config, history, summary = wandb_contents(second)
    assert config["track"] == ["wandb"]  # the resumed attempt's choice, logged with its config
    # Every unit had finished: this attempt logs the results only.
    assert not [key for row in history for key in row if key.startswith(("train/", "eval/"))]
    for method in ("plare", "bc"):
        success = results["tasks"]["reach-v3"]["methods"][method]["success"]
        assert summary[f"results/reach-v3/{method}/success_mean"] == pytest.approx(success["mean"])


def test_tensorboard_appends_across_attempts(tmp_path):
    """A resumed run opens new event files beside the first attempt's and leaves those as they were."""
    import dataclasses

    from plare_jax import tracking
    from plare_jax.pipeline.config import ExperimentConfig

    config = dataclasses.replace(ExperimentConfig(), track=("tensorboard",))
    branch_dir = tmp_path / "tensorboard" / "reach-v3" / "data0" / "seed0" / "plare"
    for attempt, steps in enumerate([(10, 20), (20, 30)]):
        tracker = tracking.open_tracker(config.track, tmp_path, config)
        unit = tracker.unit("reach-v3", 0, 0)
        for step in steps:
            unit.record({"branch": "plare", "step": step, "loss": float(step), "note": "not a number"})
        unit.record({"branch": "plare", "step": steps[-1], "eval": True, "success_rate": 0.5 + attempt,
                     "mean_return": None})
        tracker.close()
        if attempt == 0:
            first = {path: path.read_bytes() for path in (tmp_path / "tensorboard").rglob("events.out.tfevents.*")}
    assert all(path.read_bytes() == data for path, data in first.items())
    assert len(event_files(branch_dir)) == 2 and len(event_files(tmp_path / "tensorboard" / "overview")) == 2
    tags = scalars_in(branch_dir)
    assert tags["train/loss"] == {10: 10.0, 20: 20.0, 30: 30.0}
    assert set(tags) == {"train/loss", "eval/success_rate"}  # strings and Nones are not scalars
    assert sorted(tags["eval/success_rate"]) == [20, 30]


def test_a_units_event_files_are_complete_when_the_next_unit_starts(tmp_path):
    """Training runs go one at a time: the next one's start closes the last one's writers, with
    two backends at once too (each backend hears of every unit)."""
    from plare_jax import tracking

    tracker = tracking._Fanout([tracking.TensorBoardTracker(tmp_path / name, {}) for name in ("a", "b")])
    first = tracker.unit("reach-v3", 0, 0)
    first.record({"branch": "plare", "step": 10, "loss": 1.0})
    tracker.unit("reach-v3", 0, 1)
    for name in ("a", "b"):
        assert scalars_in(tmp_path / name / "tensorboard" / "reach-v3" / "data0" / "seed0" / "plare") == {
            "train/loss": {10: 1.0}}
    tracker.close()
