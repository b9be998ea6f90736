"""experiments/results_table.py: one table from several runs, refusing runs of another protocol."""

import importlib.util
import json
import sys
from pathlib import Path

import pytest

from plare_jax.pipeline.results import run_statistics

ROOT = Path(__file__).resolve().parent.parent


def load_table_script():
    spec = importlib.util.spec_from_file_location("results_table_script", ROOT / "experiments" / "results_table.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses and tyro resolve annotations through it
    spec.loader.exec_module(module)
    return module


def cell(successes, data_seeds=(1, 1, 2, 2)):
    return {"success": run_statistics(successes), "description": "d", "oracle": False,
            "runs": [{"data_seed": d, "seed": i % 2, "success_rate": s}
                     for i, (d, s) in enumerate(zip(data_seeds, successes))]}


def results(methods: dict, **protocol) -> dict:
    base = {"labeler": "scripted", "teacher": "progress", "teacher_mistake_rate": 0.0, "preset": "quick",
            "data_seeds": [1, 2], "seeds": [0, 1], "unsure": "drop"}
    base.update(protocol)
    return {**base, "tasks": {"sweep-into-v3": {"methods": methods, "comparisons": {}, "trained_pairs": [10, 10],
                                                "label_accuracy": [None, None]}}}


def write(tmp_path, name, value) -> Path:
    run_dir = tmp_path / name
    run_dir.mkdir()
    (run_dir / "results.json").write_text(json.dumps(value))
    return run_dir


def test_a_later_run_replaces_a_method_and_the_verdicts_are_recomputed(tmp_path, capsys):
    script = load_table_script()
    first = write(tmp_path, "first", results({"plare": cell([0.9, 0.8, 0.9, 0.8]), "rlvlmf": cell([0, 0, 0, 0.1])}))
    second = write(tmp_path, "second", results({"rlvlmf": cell([0.8, 0.9, 0.9, 0.8])}))
    out = tmp_path / "merged.json"
    assert script.main([str(first), str(second / "results.json"), "--out", str(out)]) == 0
    printed = capsys.readouterr()
    merged = json.loads(out.read_text())
    task = merged["tasks"]["sweep-into-v3"]
    assert task["methods"]["rlvlmf"]["success"]["per_run"] == [0.8, 0.9, 0.9, 0.8]
    assert task["comparisons"] == {"rlvlmf": "intervals overlap"}  # was "plare better" on the first run
    assert "replaces" in printed.err and "| sweep-into-v3 | rlvlmf | 0.85" in printed.out
    assert "rlvlmf 0.80 0.90 / 0.90 0.80" in printed.out
    assert merged["merged_from"] == [str(first), str(second / "results.json")]
    # Methods follow --order whichever run they came from.
    third = write(tmp_path, "third", results({"bc": cell([0.5] * 4), "sft": cell([0.6] * 4)}))
    assert script.main([str(third), str(first), "--out", str(out)]) == 0
    assert list(json.loads(out.read_text())["tasks"]["sweep-into-v3"]["methods"]) == ["plare", "rlvlmf", "sft", "bc"]


@pytest.mark.parametrize("field,value", [("data_seeds", [0]), ("teacher_mistake_rate", 0.2), ("preset", "paper")])
def test_runs_of_another_protocol_are_refused(tmp_path, capsys, field, value):
    script = load_table_script()
    first = write(tmp_path, "first", results({"plare": cell([0.9, 0.8, 0.9, 0.8])}))
    other = write(tmp_path, "other", results({"rlvlmf": cell([0.1, 0.2, 0.1, 0.2])}, **{field: value}))
    assert script.main([str(first), str(other)]) == 2
    assert f"differ in {field}" in capsys.readouterr().err


def test_a_directory_without_results_is_a_clear_error(tmp_path, capsys):
    script = load_table_script()
    (tmp_path / "unfinished").mkdir()
    assert script.main([str(tmp_path / "unfinished")]) == 2
    assert "no results.json" in capsys.readouterr().err


def test_curves_merge_runs_and_need_run_directories(tmp_path, capsys):
    from plare_jax import runs
    from plare_jax.pipeline.config import ExperimentConfig

    script = load_table_script()
    made = []
    for name, method, success in (("first", "plare", 0.6), ("second", "bc", 0.3)):
        run_dir = tmp_path / name
        config = ExperimentConfig(env=("reach",), method=(method,), bc_steps=20, cpl_steps=20)
        runs.create_run_dir(run_dir, config)
        (run_dir / "reach-v3" / "data0" / "seed0").mkdir(parents=True)
        log = runs.MetricsLog(run_dir / "reach-v3" / "data0" / "seed0" / "metrics.jsonl")
        log.append({"branch": "bc_phase", "step": 20, "eval": True, "success_rate": 0.2})
        log.append({"branch": method, "step": 40, "eval": True, "success_rate": success})
        (run_dir / "results.json").write_text(json.dumps(results({method: cell([success] * 4)})))
        made.append(run_dir)
    curves, switch = script.merge_curves(made)
    assert switch == 20
    assert curves["reach-v3"] == {"plare": [[(20, 0.2), (40, 0.6)]], "bc": [[(20, 0.2), (40, 0.3)]]}
    assert list(script.merge_curves(made[::-1], ("plare", "bc"))[0]["reach-v3"]) == ["plare", "bc"]
    png = tmp_path / "curves.png"
    assert script.main([*map(str, made), "--curves", str(png)]) == 0 and png.stat().st_size > 1000
    capsys.readouterr()
    assert script.main([str(made[0] / "results.json"), "--curves", str(png)]) == 2
    assert "needs run directories" in capsys.readouterr().err
