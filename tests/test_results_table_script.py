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


# A results.json's teacher_mistake_rate is read as teacher_noise_level by pipeline/results.py's
# protocol_fields (where --teacher-noise exists); either name may be the one the refusal gives.
@pytest.mark.parametrize("field,value,named", [
    ("data_seeds", [0], ("data_seeds",)),
    ("teacher_mistake_rate", 0.2, ("teacher_mistake_rate", "teacher_noise_level")),
    ("preset", "paper", ("preset",))])
def test_runs_of_another_protocol_are_refused(tmp_path, capsys, field, value, named):
    script = load_table_script()
    first = write(tmp_path, "first", results({"plare": cell([0.9, 0.8, 0.9, 0.8])}))
    other = write(tmp_path, "other", results({"rlvlmf": cell([0.1, 0.2, 0.1, 0.2])}, **{field: value}))
    assert script.main([str(first), str(other)]) == 2
    err = capsys.readouterr().err
    assert any(f"differ in {name} " in err for name in named), err


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
        config = ExperimentConfig(env=("reach",), method=(method,), bc_steps=20, method_steps=20)
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


def two_tasks(first: dict, second: dict) -> dict:
    value = results(first)
    value["tasks"]["door-open-v3"] = {"methods": second, "comparisons": {}, "trained_pairs": [10, 10],
                                      "label_accuracy": [None, None]}
    return value


def oracle(successes):
    return {**cell(successes), "oracle": True}


def test_bootstrap_statistics_mark_zero_spread_and_compare_plare_with_the_others(tmp_path, capsys):
    script = load_table_script()
    run = write(tmp_path, "run", two_tasks(
        {"plare": cell([0.9, 0.8, 0.85, 0.95]), "plare-robust": cell([0.9, 0.85, 0.8, 0.9]),
         "rlvlmf": cell([0.1, 0.2, 0.3, 0.2]), "bc": cell([0.5] * 4), "pbc": oracle([1.0] * 4)},
        {"plare": cell([0.6, 0.7, 0.5, 0.6]), "plare-robust": cell([0.7, 0.6, 0.6, 0.5]),
         "rlvlmf": cell([0.2, 0.3, 0.1, 0.2]), "bc": cell([0.4, 0.5, 0.45, 0.5]), "pbc": oracle([0.9] * 4)}))
    out = tmp_path / "merged.json"
    assert script.main([str(run), "--reps", "500", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "| sweep-into-v3 | bc | 0.50 (zero spread, all runs equal: no interval) |" in printed
    assert "| sweep-into-v3 | pbc (oracle) | 1.00 (zero spread" in printed
    assert "[0.50, 0.50]" not in printed.split("Bootstrap statistics")[1]  # never shown as an interval
    bootstrap_section = printed.split("Bootstrap statistics")[1]
    plare_cell = next(line for line in bootstrap_section.splitlines() if line.startswith("| door-open-v3 | plare |"))
    assert plare_cell.startswith("| door-open-v3 | plare | 0.60 [") and plare_cell.endswith("| 4 |")
    assert "Across 2 tasks (sweep-into-v3, door-open-v3)" in printed
    assert "| pbc (oracle) | 0.95 (zero spread, runs equal on every task: no interval)" in printed
    poi_section = printed.split("Probability of improvement P(X > Y)")[1].split("Per run")[0]
    poi_rows = [line for line in poi_section.splitlines() if line.startswith("| ") and "P(X > Y)" not in line]
    pairs = [tuple(cell.strip() for cell in row.split("|")[1:3]) for row in poi_rows]
    assert pairs == [("plare-robust", "plare"), ("plare-robust", "rlvlmf"), ("plare-robust", "bc"),
                     ("plare", "rlvlmf"), ("plare", "bc")]  # each pair once, no oracle compared
    by_pair = dict(zip(pairs, poi_rows))
    assert "| 1.00 [1.00, 1.00] | better: interval entirely above 0.5 (every resample gave 1.00) |" in by_pair[
        "plare", "rlvlmf"]
    assert "not separated: interval straddles 0.5" in by_pair["plare-robust", "plare"]
    assert "Oracle methods (pbc)" in printed
    assert "plare: better than rlvlmf, bc." in printed
    merged = json.loads(out.read_text())["bootstrap"]
    assert merged["reps"] == 500 and merged["run_keys"] == [[1, 0], [1, 1], [2, 0], [2, 1]]
    assert merged["cells"]["sweep-into-v3"]["bc"]["zero_spread"] is True
    records = {(r["x"], r["y"]): r for r in merged["probability_of_improvement"]}
    assert records["plare", "rlvlmf"]["value"] == 1.0 and records["plare", "rlvlmf"]["verdict"] == "better"
    # Same seed, same numbers; the printed cells do not depend on the order the runs were stored in.
    shuffled = two_tasks(*(json.loads((run / "results.json").read_text())["tasks"][t]["methods"]
                           for t in ("sweep-into-v3", "door-open-v3")))
    for info in shuffled["tasks"].values():
        for method in info["methods"].values():
            method["runs"].reverse()
    again = write(tmp_path, "again", shuffled)
    assert script.main([str(again), "--reps", "500"]) == 0
    assert capsys.readouterr().out.split("Bootstrap statistics")[1].split("Per run")[0] == \
        printed.split("Bootstrap statistics")[1].split("Per run")[0]


def test_aggregate_and_improvement_figures(tmp_path, capsys):
    script = load_table_script()
    run = write(tmp_path, "run", results({"plare": cell([0.9, 0.8, 0.85, 0.95]), "bc": cell([0.5, 0.6, 0.4, 0.5]),
                                          "pbc": oracle([1.0] * 4)}))
    aggregate, poi = tmp_path / "figs" / "aggregate.png", tmp_path / "figs" / "poi.png"
    aggregate.parent.mkdir()
    assert script.main([str(run), "--reps", "200", "--aggregate-figure", str(aggregate), "--poi-figure", str(poi)]) == 0
    for png in (aggregate, poi):
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 1000
    capsys.readouterr()
    # Nothing to compare: plare is not there (an oracle is never compared).
    lonely = write(tmp_path, "lonely", results({"bc": cell([0.5, 0.6, 0.4, 0.5]), "pbc": oracle([1.0] * 4)}))
    assert script.main([str(lonely), "--reps", "200"]) == 0
    assert "No probability of improvement: none of plare-robust, plare" in capsys.readouterr().out
    assert script.main([str(lonely), "--reps", "200", "--poi-figure", str(tmp_path / "none.png")]) == 2
    assert "nothing to compare" in capsys.readouterr().err and not (tmp_path / "none.png").exists()


def test_runs_that_do_not_pair_are_refused(tmp_path, capsys):
    script = load_table_script()
    out = tmp_path / "merged.json"
    # rlvlmf lacks the run (data seed 2, seed 1) that plare has: they cannot be compared run by run.
    run = write(tmp_path, "run", results({"plare": cell([0.9, 0.8, 0.9, 0.8]),
                                          "rlvlmf": cell([0.1, 0.2, 0.1], data_seeds=(1, 1, 2))}))
    assert script.main([str(run), "--out", str(out)]) == 2
    captured = capsys.readouterr()
    assert "sweep-into-v3: rlvlmf lacks run(s) (data 2, seed 1)" in captured.err
    assert captured.out == "" and not out.exists()
    assert script.main([str(run), "--reps", "0"]) == 2
    assert "--reps must be positive" in capsys.readouterr().err


def test_a_method_missing_from_a_task_is_shown_but_not_aggregated(tmp_path, capsys):
    script = load_table_script()
    run = write(tmp_path, "run", two_tasks({"plare": cell([0.9, 0.8, 0.85, 0.95]), "sft": cell([0.3, 0.4, 0.3, 0.2]),
                                            "bc": cell([0.5, 0.6, 0.4, 0.5])},
                                           {"plare": cell([0.6, 0.7, 0.5, 0.6]), "bc": cell([0.4, 0.5, 0.45, 0.5])}))
    assert script.main([str(run), "--reps", "200"]) == 0
    printed = capsys.readouterr().out
    assert "| sweep-into-v3 | sft | 0.30 [" in printed
    assert "Not in the aggregate or the comparisons: sft (not run on door-open-v3)." in printed
    assert "| plare | bc |" in printed and "| plare | sft |" not in printed


def test_help_explains_every_option(capsys):
    script = load_table_script()
    with pytest.raises(SystemExit) as exit_info:
        script.main(["--help"])
    assert exit_info.value.code == 0
    text = " ".join(capsys.readouterr().out.split())  # rich wraps lines: compare words
    for option in ("--out", "--order", "--curves", "--aggregate-figure", "--poi-figure", "--reps", "--bootstrap-seed"):
        assert option in text
    for words in ("plot_interval_estimates", "plot_probability_of_improvement", "Bootstrap resamples behind every",
                  "Seed of the bootstrap", "paired bootstrap", "zero spread"):
        assert words in text, words
