"""plare_jax.stats: rliable's IQM, bootstrap intervals and probability of improvement over runs."""

from __future__ import annotations

import json

import numpy as np
import pytest
import scipy.stats

from plare_jax import stats

rliable_library = pytest.importorskip("rliable.library")
rliable_metrics = pytest.importorskip("rliable.metrics")


def trimmed_mean_reference(values) -> float:
    """25% trimmed mean written out: sort, drop int(n / 4) values at each end, average the rest."""
    values = np.sort(np.asarray(values, dtype=float).ravel())
    cut = len(values) // 4
    return float(values[cut:len(values) - cut].mean())


@pytest.mark.parametrize("n", [1, 2, 3, 4, 5, 7, 8, 12])
def test_iqm_is_the_25_percent_trimmed_mean(n):
    values = np.random.default_rng(n).uniform(0, 1, n)
    expected = trimmed_mean_reference(values)
    assert expected == pytest.approx(scipy.stats.trim_mean(values, 0.25))
    assert stats.iqm(values) == pytest.approx(expected, rel=1e-12)
    assert stats.cell_statistics(values, reps=50)["iqm"] == pytest.approx(expected, rel=1e-12)


def test_iqm_ignores_the_outer_quarters_and_matches_rliable_over_runs_and_tasks():
    # 8 runs: the 2 lowest and 2 highest are cut, an outlier does not move the IQM.
    assert stats.iqm([0, 1, 2, 3, 4, 5, 6, 7]) == pytest.approx(3.5)
    assert stats.iqm([0, 1, 2, 3, 4, 5, 6, 700]) == pytest.approx(3.5)
    scores = np.random.default_rng(0).uniform(0, 1, (6, 3))
    assert stats.iqm(scores) == pytest.approx(rliable_metrics.aggregate_iqm(scores), rel=1e-12)
    assert stats.iqm(scores) == pytest.approx(trimmed_mean_reference(scores), rel=1e-12)
    per_task = stats.iqm(scores, axis=0)
    assert per_task == pytest.approx([trimmed_mean_reference(scores[:, t]) for t in range(3)], rel=1e-12)
    assert stats.aggregate({"m": scores}, reps=50)["m"]["iqm"] == pytest.approx(trimmed_mean_reference(scores))


@pytest.mark.parametrize("seed", range(6))
def test_the_bootstrap_statistic_equals_rliables_probability_of_improvement(seed):
    rng = np.random.default_rng(seed)
    runs, tasks = rng.integers(2, 8), rng.integers(1, 4)
    # Success rates over 4 episodes: many ties, as real cells have.
    x, y = rng.integers(0, 5, (runs, tasks)) / 4, rng.integers(0, 5, (runs, tasks)) / 4
    y[:, 0] = x[:, 0]  # one task where both methods are equal: 0.5 by rliable's rule
    assert stats._poi(x, y) == pytest.approx(rliable_metrics.probability_of_improvement(x, y), abs=1e-12)
    assert stats._poi(y, x) == pytest.approx(rliable_metrics.probability_of_improvement(y, x), abs=1e-12)


def test_aggregate_interval_is_rliables_get_interval_estimates():
    scores = np.random.default_rng(1).uniform(0, 1, (5, 3))
    np.random.seed(7)  # rliable 1.2.0 draws the bootstrap indices from NumPy's global state
    point, interval = rliable_library.get_interval_estimates(
        {"m": scores}, lambda s: np.array([rliable_metrics.aggregate_iqm(s), rliable_metrics.aggregate_mean(s)]),
        reps=300)
    ours = stats.aggregate({"m": scores}, reps=300, seed=7)["m"]
    assert ours["iqm"] == pytest.approx(point["m"][0]) and ours["mean"] == pytest.approx(point["m"][1])
    assert ours["iqm_ci"] == pytest.approx(tuple(interval["m"][:, 0]), abs=1e-12)
    assert ours["mean_ci"] == pytest.approx(tuple(interval["m"][:, 1]), abs=1e-12)


def test_intervals_contain_the_estimate_and_shrink_with_more_runs():
    rng = np.random.default_rng(3)
    few, many = rng.beta(4, 3, 6), rng.beta(4, 3, 60)
    widths = {}
    for name, values in (("few", few), ("many", many)):
        cell = stats.cell_statistics(values)
        for metric in ("mean", "iqm"):
            low, high = cell[f"{metric}_ci"]
            assert low < cell[metric] < high
        widths[name] = cell["mean_ci"][1] - cell["mean_ci"][0], cell["iqm_ci"][1] - cell["iqm_ci"][0]
        assert cell["num_runs"] == len(values) and not cell["zero_spread"] and cell["reps"] == stats.BOOTSTRAP_REPS
    # Ten times the runs: about sqrt(10) ~ 3 times narrower; asked for at least 2 times.
    assert widths["many"][0] < widths["few"][0] / 2 and widths["many"][1] < widths["few"][1] / 2
    agg_few = stats.aggregate({"m": rng.beta(4, 3, (5, 3))})["m"]
    agg_many = stats.aggregate({"m": rng.beta(4, 3, (50, 3))})["m"]
    for agg in (agg_few, agg_many):
        assert agg["iqm_ci"][0] < agg["iqm"] < agg["iqm_ci"][1]
        assert agg["mean_ci"][0] < agg["mean"] < agg["mean_ci"][1]
    assert agg_many["iqm_ci"][1] - agg_many["iqm_ci"][0] < (agg_few["iqm_ci"][1] - agg_few["iqm_ci"][0]) / 2


def test_intervals_are_reproducible_and_leave_numpys_global_state_alone():
    values = [0.2, 0.5, 0.4, 0.9, 0.7]
    np.random.seed(123)
    expected_next = np.random.random()
    np.random.seed(123)
    first = stats.cell_statistics(values, seed=5)
    assert np.random.random() == expected_next  # the caller's global stream continues untouched
    assert stats.cell_statistics(values, seed=5) == first
    assert stats.cell_statistics(values, seed=6)["mean_ci"] != first["mean_ci"]


def test_zero_spread_cells_are_marked_and_their_interval_is_the_point():
    equal = stats.cell_statistics([0.6, 0.6, 0.6, 0.6])
    assert equal["zero_spread"] and equal["mean_ci"] == (0.6, 0.6) and equal["iqm_ci"] == (0.6, 0.6)
    assert stats.cell_statistics([0.3])["zero_spread"]  # one run: nothing to resample either
    spread = stats.cell_statistics([0.6, 0.6, 0.6, 0.64])
    assert not spread["zero_spread"] and spread["mean_ci"][1] > spread["mean_ci"][0]
    # Across tasks: zero spread only when every task's runs are equal (the tasks may differ).
    constant_per_task = np.array([[0.2, 0.9]] * 4)
    one_run_differs = constant_per_task + np.array([[0.0, 0.0]] * 3 + [[0.1, 0.0]])
    agg = stats.aggregate({"flat": constant_per_task, "not": one_run_differs})
    assert agg["flat"]["zero_spread"] and agg["flat"]["iqm_ci"] == (agg["flat"]["iqm"],) * 2
    assert not agg["not"]["zero_spread"]


@pytest.mark.parametrize("bad", [[], [0.5, float("nan")], [[0.5, 0.6]]])
def test_a_cell_needs_finite_scores_over_runs(bad):
    with pytest.raises(ValueError, match="scores"):
        stats.cell_statistics(bad)


def test_clearly_better_and_worse_methods_are_separated():
    rng = np.random.default_rng(0)
    good, poor = rng.uniform(0.6, 0.9, (5, 3)), rng.uniform(0.1, 0.4, (5, 3))
    result = stats.probability_of_improvement({"good": good, "poor": poor}, [("good", "poor"), ("poor", "good")])
    better, worse = result["good", "poor"], result["poor", "good"]
    assert better["value"] == pytest.approx(1.0) and better["ci"][0] > 0.5 and better["verdict"] == "better"
    assert worse["value"] == pytest.approx(0.0) and worse["ci"][1] < 0.5 and worse["verdict"] == "worse"
    # Overlapping but better on average: P(X > Y) high, its interval still above 0.5.
    x, y = rng.normal(0.65, 0.1, (10, 2)), rng.normal(0.4, 0.1, (10, 2))
    overlap = stats.probability_of_improvement({"x": x, "y": y}, [("x", "y")])["x", "y"]
    assert 0.8 < overlap["value"] < 1.0 and overlap["ci"][0] > 0.5 and overlap["ci"][0] < overlap["value"]
    assert overlap["verdict"] == "better" and not overlap["degenerate"]


def test_identical_and_equally_good_methods_are_not_separated():
    rng = np.random.default_rng(1)
    scores = rng.uniform(0.3, 0.8, (6, 2))
    same = stats.probability_of_improvement({"a": scores, "b": scores.copy()}, [("a", "b")])["a", "b"]
    assert same["value"] == 0.5 and same["ci"] == (0.5, 0.5) and same["verdict"] == "not separated"
    # Two draws from one distribution: near 0.5, the interval straddles it.
    a, b = rng.normal(0.5, 0.1, (8, 3)), rng.normal(0.5, 0.1, (8, 3))
    alike = stats.probability_of_improvement({"a": a, "b": b}, [("a", "b")])["a", "b"]
    assert abs(alike["value"] - 0.5) < 0.15
    assert alike["ci"][0] < 0.5 < alike["ci"][1] and alike["verdict"] == "not separated"


def test_the_two_methods_are_resampled_with_the_same_runs():
    # A strong per-run effect shared by both methods (same data, labels, episodes) and a small
    # gain: the paired bootstrap resamples the same runs for both, rliable's list form
    # (StratifiedIndependentBootstrap) resamples them independently and is much wider.
    rng = np.random.default_rng(2)
    base = rng.uniform(0.1, 0.8, (8, 2))
    x, y = base + 0.08 + rng.normal(0, 0.02, base.shape), base
    paired = stats.probability_of_improvement({"x": x, "y": y}, [("x", "y")], reps=500, seed=0)["x", "y"]
    np.random.seed(0)
    _, independent = rliable_library.get_interval_estimates(
        {"xy": [x, y]}, rliable_metrics.probability_of_improvement, reps=500)
    paired_width = paired["ci"][1] - paired["ci"][0]
    independent_width = float(independent["xy"][1, 0] - independent["xy"][0, 0])
    assert paired["ci"][0] < paired["value"] < paired["ci"][1]
    assert paired_width < independent_width / 2
    # The resampled statistic is rliable's on the data itself.
    statistic = stats._paired_poi(x, y)
    assert statistic(x, y, stats._run_ids(x.shape)) == pytest.approx(rliable_metrics.probability_of_improvement(x, y))


def test_copies_of_one_resampled_run_are_not_compared_as_different_runs():
    # x beats y on every run (within-run share 1) but only ~60% across runs. rliable's formula on
    # paired resampled rows counts the copies of a run drawn twice as different runs that x
    # beats: every resample lies at or above the estimate and the interval excludes it.
    rng = np.random.default_rng(5)
    base = rng.uniform(0.1, 0.9, (6, 2))
    x, y = base + 0.05, base
    value = rliable_metrics.probability_of_improvement(x, y)
    np.random.seed(0)
    naive = rliable_library.StratifiedBootstrap(x, y)
    naive_ci = naive.conf_int(stats._poi, reps=stats.BOOTSTRAP_REPS, method="percentile")[:, 0]
    assert naive._results.min() >= value - 1e-12 and naive_ci[0] > value  # the defect
    np.random.seed(0)
    paired = rliable_library.StratifiedBootstrap(x, y, stats._run_ids(x.shape))
    paired.conf_int(stats._paired_poi(x, y), reps=stats.BOOTSTRAP_REPS, method="percentile")
    assert paired._results.mean() == pytest.approx(value, abs=0.01)  # centred on the estimate
    result = stats.probability_of_improvement({"x": x, "y": y}, [("x", "y")])["x", "y"]
    assert result["value"] == pytest.approx(value) and result["ci"][0] < value < result["ci"][1]


def test_where_every_run_of_x_beats_every_run_of_y_every_resample_agrees():
    x, y = np.array([[0.9, 0.8], [0.7, 0.9], [0.8, 0.7]]), np.array([[0.2, 0.1], [0.3, 0.2], [0.1, 0.3]])
    result = stats.probability_of_improvement({"x": x, "y": y}, [("x", "y")])["x", "y"]
    assert result["ci"] == (1.0, 1.0) and result["degenerate"] and result["verdict"] == "better"
    one_run = stats.probability_of_improvement({"x": x[:1], "y": y[:1]}, [("x", "y")], reps=50)["x", "y"]
    assert one_run["value"] == 1.0 and one_run["verdict"] == "too few runs"


def test_misaligned_runs_are_refused():
    x, y = np.array([[0.9], [0.1]]), np.array([[0.8], [0.2]])
    keys = {"x": [(1, 0), (1, 1)], "y": [(1, 1), (1, 0)]}
    with pytest.raises(ValueError, match=r"not aligned.*\(data 1, seed 0\)"):
        stats.probability_of_improvement({"x": x, "y": y}, [("x", "y")], run_keys=keys)
    aligned = stats.probability_of_improvement({"x": x, "y": y}, [("x", "y")], run_keys=[(1, 0), (1, 1)], reps=50)
    assert aligned["x", "y"]["value"] == 0.5
    with pytest.raises(ValueError, match="same"):
        stats.probability_of_improvement({"x": x, "y": y[:1]}, [("x", "y")])
    with pytest.raises(ValueError, match="do not match"):
        stats.probability_of_improvement({"x": x, "y": y}, [("x", "y")], run_keys={"x": [(1, 0)], "y": [(1, 0)]})
    with pytest.raises(ValueError, match="no scores for z"):
        stats.probability_of_improvement({"x": x, "y": y}, [("x", "z")])


@pytest.mark.parametrize("ci,runs,verdict", [
    ((0.51, 0.9), 5, "better"), ((0.1, 0.49), 5, "worse"), ((0.4, 0.6), 5, "not separated"),
    ((0.5, 0.8), 5, "not separated"), ((0.5, 0.5), 5, "not separated"), ((1.0, 1.0), 1, "too few runs"),
])
def test_verdict_needs_the_whole_interval_on_one_side_of_one_half(ci, runs, verdict):
    assert stats.poi_verdict(ci, runs) == verdict and verdict in stats.VERDICT_WORDS


def cell(runs, oracle=False):
    return {"oracle": oracle, "runs": [{"data_seed": d, "seed": s, "success_rate": v, "final_return": 1.0}
                                       for d, s, v in runs]}


def synthetic_results() -> dict:
    keys = [(1, 0), (1, 1), (2, 0), (2, 1)]
    return {"data_seeds": [1, 2], "seeds": [0, 1], "tasks": {
        "sweep-into-v3": {"methods": {
            "plare": cell([(d, s, 0.8 + 0.01 * i) for i, (d, s) in enumerate(keys)]),
            # stored in another order: aligned by (data seed, seed), not by position
            "bc": cell([(d, s, 0.5 + 0.01 * i) for i, (d, s) in reversed(list(enumerate(keys)))]),
            "pbc": cell([(d, s, 1.0) for d, s in keys], oracle=True)}},
        "door-open-v3": {"methods": {
            "plare": cell([(d, s, 0.6 + 0.01 * i) for i, (d, s) in enumerate(keys)]),
            "bc": cell([(d, s, 0.3 + 0.01 * i) for i, (d, s) in enumerate(keys)])}},
        "unstarted-v3": {"methods": {}}}}


def test_results_json_loader_aligns_runs_by_data_seed_and_seed(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "results.json").write_text(json.dumps(synthetic_results()))
    with pytest.raises(ValueError, match="pbc has no results on door-open-v3"):
        stats.load_scores(run_dir)
    table = stats.load_scores(run_dir / "results.json", missing="drop")
    assert table.tasks == ("sweep-into-v3", "door-open-v3") and table.skipped_tasks == ("unstarted-v3",)
    assert table.run_keys == ((1, 0), (1, 1), (2, 0), (2, 1))
    assert list(table.scores) == ["plare", "bc"] and table.left_out == {"pbc": "not run on door-open-v3"}
    np.testing.assert_allclose(table.scores["plare"], [[0.80, 0.60], [0.81, 0.61], [0.82, 0.62], [0.83, 0.63]])
    np.testing.assert_allclose(table.scores["bc"], [[0.50, 0.30], [0.51, 0.31], [0.52, 0.32], [0.53, 0.33]])
    assert table.oracle == {"plare": False, "bc": False}
    only = stats.scores_from_results(synthetic_results(), methods=["pbc"], missing="drop")
    assert only.scores == {} and "pbc" in only.left_out
    poi = stats.probability_of_improvement(table.scores, [("plare", "bc")], run_keys=table.run_keys)
    assert poi["plare", "bc"]["value"] == 1.0


@pytest.mark.parametrize("edit, message", [
    (lambda r: r["tasks"]["door-open-v3"]["methods"]["bc"]["runs"].pop(),
     r"door-open-v3: bc lacks run\(s\) \(data 2, seed 1\)"),
    (lambda r: r["tasks"]["door-open-v3"]["methods"]["bc"]["runs"].append(
        {"data_seed": 3, "seed": 0, "success_rate": 0.1}), r"lacks run\(s\) \(data 3, seed 0\)"),
    (lambda r: r["tasks"]["sweep-into-v3"]["methods"]["plare"]["runs"].append(
        {"data_seed": 1, "seed": 0, "success_rate": 0.1}), r"sweep-into-v3: plare has run \(data 1, seed 0\) twice"),
    (lambda r: r["tasks"]["sweep-into-v3"]["methods"]["plare"]["runs"][0].update(success_rate=None), "numeric"),
    (lambda r: r["tasks"]["sweep-into-v3"]["methods"]["plare"]["runs"][0].update(success_rate=float("nan")), "nan"),
    (lambda r: r["tasks"]["sweep-into-v3"]["methods"]["plare"].pop("runs"), "no per-run results"),
])
def test_results_json_loader_refuses_runs_that_do_not_pair(edit, message):
    results = synthetic_results()
    del results["tasks"]["sweep-into-v3"]["methods"]["pbc"]
    edit(results)
    with pytest.raises(ValueError, match=message):
        stats.scores_from_results(results)


def test_loader_refuses_what_is_not_a_results_json():
    with pytest.raises(ValueError, match="no 'tasks'"):
        stats.scores_from_results({"mistake_rates": [0.0]})
    with pytest.raises(ValueError, match="no task with finished methods"):
        stats.scores_from_results({"tasks": {"a": {"methods": {}}}})


def png_size(path) -> tuple[int, int]:
    header = path.read_bytes()[:24]
    assert header[:8] == b"\x89PNG\r\n\x1a\n"
    return int.from_bytes(header[16:20], "big"), int.from_bytes(header[20:24], "big")


def test_iqm_against_agreement_figure_draws_one_panel_per_noise_model(tmp_path):
    from plare_jax import plotting

    rows = {"plare": [(100, 0.8, 0.7, 0.9), (90, 0.6, 0.5, 0.7), (80, 0.4, 0.3, 0.5), (70, 0.3, 0.2, 0.4)],
            "bc": [(100, 0.5, 0.45, 0.55), (90, 0.5, 0.45, 0.55), (80, 0.5, float("nan"), float("nan")),
                   (70, 0.5, 0.45, 0.55)]}
    both, one = tmp_path / "both.png", tmp_path / "one.png"
    plotting.plot_iqm_vs_agreement({"mistake": rows, "hard pairs": rows}, both)
    plotting.plot_iqm_vs_agreement({"mistake": rows}, one)
    (width_two, height_two), (width_one, height_one) = png_size(both), png_size(one)
    assert height_two == height_one and width_two == 2 * width_one
    with pytest.raises(ValueError):
        plotting.plot_iqm_vs_agreement({}, tmp_path / "none.png")


def test_rliable_figures_of_the_aggregate_and_the_probability_of_improvement(tmp_path):
    from plare_jax import plotting

    rng = np.random.default_rng(0)
    scores = {"plare": rng.uniform(0.6, 0.9, (4, 2)), "bc": rng.uniform(0.3, 0.6, (4, 2)), "pbc": np.ones((4, 2))}
    plotting.plot_aggregate_intervals(stats.aggregate(scores, reps=100), tmp_path / "agg.png")
    poi = stats.probability_of_improvement(scores, [("plare", "bc")], reps=100)
    plotting.plot_probability_of_improvement(poi, tmp_path / "poi.png")
    assert min(png_size(tmp_path / "agg.png")) > 50 and min(png_size(tmp_path / "poi.png")) > 50
