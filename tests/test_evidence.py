"""plare_jax.pipeline.evidence: runs of several sittings in one file, under one protocol only."""

from __future__ import annotations

import dataclasses
import importlib
import json
import sys

import numpy as np
import pytest

from plare_jax import stats
from plare_jax.pipeline import evidence
from plare_jax.pipeline.config import ExperimentConfig

REPO = __import__("pathlib").Path(__file__).resolve().parents[1]
CONFIG = dataclasses.replace(ExperimentConfig(), env=("door-open",), labeler="scripted", video=False)


def results_json(task, runs_by_method, accuracy_by_data_seed):
    """A results.json as the pipeline writes it, reduced to what the evidence reads."""
    methods = {m: {"oracle": m == "pbc", "runs": [{"data_seed": d, "seed": s, "success_rate": v, "return": 1.0}
                                                  for (d, s), v in runs.items()]}
               for m, runs in runs_by_method.items()}
    data = {str(d): {"labels": {"accuracy": a}} for d, a in accuracy_by_data_seed.items()}
    return {"tasks": {task: {"methods": methods, "data": data}}}


FIRST = results_json("door-open-v3", {"plare": {(3, 0): 0.6, (3, 1): 0.8}, "bc": {(3, 0): 0.5, (3, 1): 0.4},
                                      "pbc": {(3, 0): 1.0, (3, 1): 1.0}}, {3: 0.8})
LATER = results_json("door-open-v3", {"plare": {(5, 0): 0.7}, "bc": {(5, 0): 0.2}, "pbc": {(5, 0): 0.9}}, {5: 0.79})


def test_runs_of_two_sittings_make_one_aligned_table():
    store = evidence.add_results(evidence.empty(CONFIG), "hard-pairs-0.80", FIRST, source="first")
    store = evidence.add_results(store, "hard-pairs-0.80", LATER, source="later")
    results = evidence.point_results(store, "hard-pairs-0.80", tasks=["door-open-v3"], methods=["plare", "bc", "pbc"],
                                     data_seeds=[3, 5], seeds=[0, 1])
    table = stats.scores_from_results(results)
    assert table.run_keys == ((3, 0), (3, 1), (5, 0))
    np.testing.assert_array_equal(table.scores["plare"][:, 0], [0.6, 0.8, 0.7])
    np.testing.assert_array_equal(table.scores["bc"][:, 0], [0.5, 0.4, 0.2])
    assert table.oracle == {"plare": False, "bc": False, "pbc": True}
    assert results["tasks"]["door-open-v3"]["label_accuracy"] == [0.8, 0.79]
    sources = {r["source"] for r in store["points"]["hard-pairs-0.80"]["tasks"]["door-open-v3"]["methods"]["plare"]["runs"]}
    assert sources == {"first", "later"}
    # Seeds not asked for stay in the file and out of the table; unknown points give None.
    only = evidence.point_results(store, "hard-pairs-0.80", tasks=["door-open-v3"], methods=["plare"],
                                  data_seeds=[5], seeds=[0])
    assert only["tasks"]["door-open-v3"]["methods"]["plare"]["runs"][0]["success_rate"] == 0.7
    assert evidence.point_results(store, "clean", tasks=["door-open-v3"], methods=["plare"], data_seeds=[3],
                                  seeds=[0]) is None


def test_a_run_measured_again_must_agree_and_the_input_is_left_alone():
    store = evidence.add_results(evidence.empty(CONFIG), "clean", FIRST, source="first")
    before = json.dumps(store, sort_keys=True)
    again = evidence.add_results(store, "clean", FIRST, source="re-run")  # reproduced: kept as it was
    runs = again["points"]["clean"]["tasks"]["door-open-v3"]["methods"]["plare"]["runs"]
    assert [r["source"] for r in runs] == ["first", "first"]
    changed = results_json("door-open-v3", {"plare": {(3, 1): 0.81}}, {3: 0.8})
    with pytest.raises(evidence.EvidenceError, match=r"data seed 3 seed 1.*0\.8 \(first\).*0\.81"):
        evidence.add_results(store, "clean", changed, source="changed")
    assert json.dumps(store, sort_keys=True) == before


def test_only_runs_of_the_same_protocol_join(tmp_path):
    path = tmp_path / "evidence.json"
    evidence.save(path, evidence.add_results(evidence.empty(CONFIG), "clean", FIRST, source="first"))
    # What ran, where and how fast is no part of the protocol.
    same = dataclasses.replace(CONFIG, env=("sweep-into",), seeds=(4,), data_seeds=(5,), method=("bc",),
                               out_dir=tmp_path / "elsewhere", workers=1, teacher_noise="hard-pairs",
                               teacher_agreement=0.8)
    assert evidence.load(path, same)["points"]["clean"]
    other = dataclasses.replace(CONFIG, method_steps=CONFIG.method_steps + 1, final_eval_episodes=25)
    with pytest.raises(evidence.EvidenceError, match="final_eval_episodes: stored 100, now 25; method_steps: stored 3000, now 3001"):
        evidence.load(path, other)
    robust = dataclasses.replace(CONFIG.methods.plare_robust, bias=0.25)
    with pytest.raises(evidence.EvidenceError, match="methods.plare_robust"):
        evidence.load(path, dataclasses.replace(CONFIG, methods=dataclasses.replace(CONFIG.methods,
                                                                                     plare_robust=robust)))
    # A method registered since (a new option group) leaves the stored runs valid.
    stored = json.loads(path.read_text())
    del stored["protocol"]["methods.rlvlmf"]
    path.write_text(json.dumps(stored))
    assert evidence.load(path, CONFIG)
    path.write_text(json.dumps({"points": {}}))
    with pytest.raises(evidence.EvidenceError, match="not an evidence file"):
        evidence.load(path, CONFIG)


def test_every_option_left_out_of_the_protocol_is_an_option():
    names = {f.name for f in dataclasses.fields(ExperimentConfig)}
    assert set(evidence._NOT_PROTOCOL) <= names
    assert not set(evidence.protocol(CONFIG)) & set(evidence._NOT_PROTOCOL)


def test_the_sweep_summarizes_from_the_evidence_file_alone(tmp_path, capsys):
    sys.path.insert(0, str(REPO))
    sweep = importlib.import_module("experiments.noise_robustness")
    config = dataclasses.replace(sweep.DEFAULT_EXPERIMENT, env=("door-open",), method=("plare", "bc", "pbc"),
                                 data_seeds=(3, 5), seeds=(0, 1), out_dir=tmp_path / "runs")
    path = tmp_path / "evidence.json"
    store = evidence.add_results(evidence.empty(dataclasses.replace(config, labeler="scripted")), "hard-pairs-0.80",
                                 FIRST, source="first")
    evidence.save(path, evidence.add_results(store, "hard-pairs-0.80", LATER, source="later"))
    summary = sweep.run_sweep(sweep.NoiseRobustnessConfig(noise_models=("hard-pairs",), agreements=(1.0, 0.8),
                                                          summarize_only=True, evidence=path, experiment=config))
    point = summary["points"]["hard-pairs@0.80"]
    assert point["runs"] == [[3, 0], [3, 1], [5, 0]] and "hard-pairs@1.00" not in summary["points"]
    assert point["measured_agreement"] == pytest.approx((0.8 + 0.79) / 2)
    assert set(point["probability_of_improvement"]) == {"plare > bc"}  # pbc is the oracle: not compared
    assert (tmp_path / "runs" / "noise-robustness" / "noise_robustness.png").exists()
    assert "hard-pairs@0.80 (0.795) | plare |" in capsys.readouterr().out
    # Another protocol is refused before anything is drawn.
    other = dataclasses.replace(config, method_steps=config.method_steps + 100)
    with pytest.raises(evidence.EvidenceError, match="method_steps"):
        sweep.run_sweep(sweep.NoiseRobustnessConfig(noise_models=("hard-pairs",), agreements=(0.8,),
                                                    summarize_only=True, evidence=path, experiment=other))
