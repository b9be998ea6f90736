"""The summary table says what its numbers are, and shows no finding where there is none."""

from __future__ import annotations

import pytest

from plare_jax.pipeline.results import format_table, run_statistics


def results(labeler: str, accuracy: float, mistake_rate: float = 0.0) -> dict:
    methods = {
        "plare": {"success": run_statistics([0.8, 0.6, 0.7]), "oracle": False},
        "bc": {"success": run_statistics([0.4, 0.5, 0.45]), "oracle": False},
    }
    task = {"methods": methods, "comparisons": {"bc": "plare better"}, "trained_pairs": [1990],
            "label_accuracy": [accuracy]}  # fmt: skip
    return {"labeler": labeler, "teacher_mistake_rate": mistake_rate, "tasks": {"sweep-into-v3": task}}


def test_table_defines_success_baseline_spread_and_runs():
    table = format_table(results("vlm", 0.87))
    intro = table.split("|")[0]
    assert "ever successful" in intro  # what success means
    assert "bc" in intro and "baseline" in intro  # which row is the baseline
    assert "sample std (ddof=1)" in intro
    plare_row = next(line for line in table.splitlines() if line.startswith("| sweep-into-v3 | plare"))
    assert "0.70 ± 0.10" in plare_row and "| 3 |" in plare_row  # sample std of 0.8/0.6/0.7 is 0.10; 3 runs


def test_scripted_labels_show_no_accuracy_against_themselves():
    table = format_table(results("scripted", 1.0))
    rows = [line for line in table.splitlines() if line.startswith("| sweep-into-v3")]
    assert not any("acc" in row or "1.000" in row for row in rows)  # 1 by construction: not shown
    assert "scripted teacher" in rows[0]
    flipped = format_table(results("scripted", 0.8, mistake_rate=0.2))
    assert "20% flipped" in flipped


def test_vlm_labels_show_their_accuracy_against_the_teacher():
    table = format_table(results("vlm", 0.87))
    assert "acc. vs teacher 0.870" in table


@pytest.mark.parametrize("values", [[0.5], [0.2, 0.4]])
def test_spread_is_the_sample_std(values):
    stats = run_statistics(values)
    if len(values) == 1:
        assert stats["num_runs"] == 1 and stats["std"] != stats["std"]  # NaN: no spread from one run
    else:
        assert stats["std"] == pytest.approx(0.1414, abs=1e-4)  # ddof=1; ddof=0 would give 0.1
