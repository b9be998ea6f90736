"""The one pipeline over the data-source protocol: the two built-in sources implement all of it,
and a third source (synthetic numpy data, written here in a few lines) runs every stage through
`pipeline.runner.run_source` -- pairs, scripted labels with their report and coverage gate, the
shared BC phase and two methods, its own evaluator, results.json, curves, summary.md -- and a
resume of the finished run reads everything back without training again."""

from __future__ import annotations

import dataclasses
import inspect
import json
import pathlib

import numpy as np
import pytest

from plare_jax.data.dataset import EpisodeRows
from plare_jax.interrupts import stop_on_signals
from plare_jax.pipeline.config import SharedOptions
from plare_jax.pipeline.data import training_data
from plare_jax.pipeline.labels import LabelerChoice, choose_labeler, teacher_scores
from plare_jax.pipeline.offline import RecordedSource
from plare_jax.pipeline.run import MetaWorldSource
from plare_jax.pipeline.runner import run_source
from plare_jax.pipeline.source import DataSource, Unit
from plare_jax.pipeline.train import per_seed_evaluator

PROTOCOL_MEMBERS = sorted(
    {name for name, value in vars(DataSource).items() if not name.startswith("_")
     and (inspect.isfunction(value) or isinstance(value, property))}
    | set(DataSource.__annotations__))


@pytest.mark.parametrize("source_class", [MetaWorldSource, RecordedSource])
def test_both_sources_implement_the_whole_protocol(source_class):
    source = source_class.__new__(source_class)
    source.config = None
    source.track = ()
    missing = [name for name in PROTOCOL_MEMBERS if not hasattr(source_class, name) and name not in vars(source)]
    assert not missing, f"{source_class.__name__} lacks {missing}"
    for name in PROTOCOL_MEMBERS:
        protocol_member = vars(DataSource).get(name)
        if inspect.isfunction(protocol_member):
            ours = inspect.signature(getattr(source_class, name))
            theirs = inspect.signature(protocol_member)
            assert list(ours.parameters)[:len(theirs.parameters)] == list(theirs.parameters), name


@dataclasses.dataclass
class SyntheticSteps(EpisodeRows):
    """Episodes of random observations whose reward is the first action (a ground truth)."""

    observations: np.ndarray
    actions: np.ndarray
    episode_ids: np.ndarray
    rewards: np.ndarray
    successes: np.ndarray | None = None

    @property
    def num_episodes(self) -> int:
        return int(self.episode_ids.max()) + 1

    @property
    def episode_returns(self) -> np.ndarray:
        return np.bincount(self.episode_ids, weights=self.rewards)


FIXED_OBS = np.random.default_rng(7).normal(size=(5, 3)).astype(np.float32)


class SyntheticSource:
    """A third data source: nothing but the protocol, no simulator and no files."""

    resume_command = "resume {run_dir}"
    track = ()

    def __init__(self, config: SharedOptions):
        self.config = config
        self.loaded = 0

    @property
    def name(self) -> str:
        return "synthetic"

    def check(self) -> LabelerChoice:
        return choose_labeler(self.config)

    def training_mesh(self):
        return None

    def units(self, run_dir):
        return [Unit("synthetic", data_seed, run_dir / f"data{data_seed}") for data_seed in (3, 4)]

    def load(self, unit, should_stop=None):
        self.loaded += 1
        rng = np.random.default_rng(unit.data_seed)
        obs = rng.normal(size=(80, 3)).astype(np.float32)
        actions = np.tanh(obs[:, :2] + rng.normal(size=(80, 2))).astype(np.float32)
        return SyntheticSteps(obs, actions, np.repeat(np.arange(4), 20), actions[:, 0].astype(np.float64))

    def goal_text(self, unit, choice):
        return "push the first action up"

    def pair_images(self, dataset):
        return None  # labelled by the scripted teacher only

    def teacher_scores(self, dataset, pairs):
        return teacher_scores(self.config, pairs)

    def training_arrays(self, unit, dataset, pairs, preferences, report):
        return training_data(dataset, pairs, preferences, unsure=self.config.unsure,
                             episode_scores=dataset.episode_returns), None

    def describe(self, dataset, choice, kept):
        return {"dataset": {"steps": dataset.num_steps}}

    def evaluator(self, unit, kept, should_stop):
        def mean_first_action(policy_fn, video_path, *, final=False):
            return {"mean_first_action": float(np.asarray(policy_fn(FIXED_OBS))[:, 0].mean())}

        return lambda seeds: per_seed_evaluator([mean_first_action] * len(seeds))

    def finish_seed(self, unit, data, seed, result):
        return result

    def results(self, choice, summaries, seed_results):
        return {"labeler": choice.kind,
                "units": {f"{u.name}/{u.data_seed}": {
                    "labels": summaries[u]["labels"],
                    "runs": {str(s): r["methods"] for s, r in seed_results.get(u, {}).items()}}
                    for u in summaries}}

    def plot_curves(self, run_dir, units):
        path = run_dir / "curves.json"
        path.write_text(json.dumps([str(u.seed_dir(s)) for u in units for s in self.config.seeds]))
        return path

    def format_table(self, results):
        return "\n".join(f"{unit}: {sorted(entry['runs'])}" for unit, entry in results["units"].items())


def tiny_options(tmp_path: pathlib.Path, **overrides) -> SharedOptions:
    return dataclasses.replace(SharedOptions(), **{
        **dict(method=("plare", "bc"), seeds=(0, 1), labeler="scripted", num_pairs=24, segment_length=5,
               hidden_dims=(8, 8), batch_pairs=4, bc_batch_size=16, warmup_steps=2, bc_steps=20, method_steps=20,
               metrics_every=10, eval_every=20, out_dir=tmp_path / "runs", cache_dir=tmp_path / "cache",
               run_name="toy"),
        **overrides})


def test_a_third_source_runs_every_stage_and_resumes(tmp_path):
    config = tiny_options(tmp_path)
    source = SyntheticSource(config)
    with stop_on_signals() as stop:
        results, run_dir = run_source(source, stop, resume_dir=None)
    assert run_dir == tmp_path / "runs" / "toy"
    assert set(results["units"]) == {"synthetic/3", "synthetic/4"}
    for data_seed in (3, 4):
        unit = results["units"][f"synthetic/{data_seed}"]
        assert unit["labels"]["pairs"] == 24 and unit["labels"]["coverage"]["unlabeled"] == 0
        assert 0.0 < unit["labels"]["first_share"] < 1.0
        stored = json.loads((run_dir / f"data{data_seed}" / "data_and_labels.json").read_text())
        assert stored["data_seed"] == data_seed and stored["dataset"] == {"steps": 80}
        for seed in (0, 1):
            per_method = unit["runs"][str(seed)]
            assert set(per_method) == {"plare", "bc"}
            assert all(np.isfinite(m["mean_first_action"]) and m["step"] == 40 for m in per_method.values())
            records = [json.loads(line) for line in (run_dir / f"data{data_seed}" / f"seed{seed}" /
                                                     "metrics.jsonl").open()]
            assert {r["branch"] for r in records if r.get("eval")} == {"bc_phase", "plare", "bc"}
    # Seeds differ, data seeds differ: the evaluator saw different policies.
    finals = {(u, s): results["units"][u]["runs"][s]["plare"]["mean_first_action"]
              for u in results["units"] for s in ("0", "1")}
    assert len(set(finals.values())) == 4
    assert json.loads((run_dir / "results.json").read_text())["units"].keys() == results["units"].keys()
    assert (run_dir / "summary.md").read_text().strip() == source.format_table(results)
    assert len(json.loads((run_dir / "curves.json").read_text())) == 4

    # A resume of the finished run trains nothing: the results come back from each seed's result.json.
    logs = {p: p.read_bytes() for p in run_dir.rglob("metrics.jsonl")}
    again = SyntheticSource(config)
    with stop_on_signals() as stop:
        resumed, _ = run_source(again, stop, resume_dir=run_dir)
    first = json.loads(json.dumps(results))
    for key, unit in resumed["units"].items():
        assert unit["runs"] == first["units"][key]["runs"]  # every seed's result read back
        timeless = lambda labels: {k: v for k, v in labels.items() if not k.endswith("_s")}  # noqa: E731
        assert timeless(unit["labels"]) == timeless(first["units"][key]["labels"])
    assert {p: p.read_bytes() for p in run_dir.rglob("metrics.jsonl")} == logs
    assert again.loaded == 2


def test_a_failing_source_check_leaves_no_run_directory(tmp_path):
    config = tiny_options(tmp_path, labeler="vlm")  # no endpoint: the labeler check refuses

    with stop_on_signals() as stop, pytest.raises(Exception, match="--labeler vlm needs a VLM"):
        run_source(SyntheticSource(config), stop, resume_dir=None)
    assert not (tmp_path / "runs").exists()
