"""The one pipeline: every stage of a run over any `pipeline.source.DataSource`, resumable.

    checks (all before any work) -> run directory -> per unit: data, pairs, labels (VLM server
    up only for this) -> per unit and seed group: the shared BC phase and every method, evaluated
    as the source evaluates -> results.json after every group -> curves, summary.md

MetaWorld (`pipeline.run`) and recorded data (`pipeline.offline`) are two sources of it.
"""

from __future__ import annotations

import dataclasses
import pathlib

from plare_jax import runs, sharding, tracking
from plare_jax.pipeline.data import prepare_unit
from plare_jax.pipeline.lifecycle import RunGuard, vlm_server
from plare_jax.pipeline.source import DataSource
from plare_jax.pipeline.train import train_seeds

__all__ = ["run_source", "resolve_resume"]


def resolve_resume(config, load_stored, execution_fields: tuple[str, ...]):
    """(config to run, run directory to resume or None): under --resume, the run directory's
    stored config, with the command line's `execution_fields` (how this process runs, not what it
    computes)."""
    if config.resume is None:
        return config, None
    stored = load_stored(config.resume)
    print(f"resuming {config.resume} with its stored config")
    return dataclasses.replace(stored, **{name: getattr(config, name) for name in execution_fields}), config.resume


def run_source(source: DataSource, stop, *, resume_dir: pathlib.Path | None) -> tuple[dict, pathlib.Path]:
    """Runs (or resumes, into `resume_dir`) every stage for `source`; (results.json's content, run dir).

    `stop`: the `interrupts.stop_on_signals` handle: Ctrl-C or SIGTERM stops between collection and
    labeling chunks, training windows, evaluation steps and video frames with `SystemExit` 130 or
    143 and the resume command. A start that fails or is stopped before any training leaves no run
    directory behind (cached data and labels stay).
    """
    config = source.config
    choice = source.check()  # everything that can be wrong with the options or inputs fails here
    mesh = source.training_mesh()
    # Multi-process: every process trains; process 0 alone writes the run directory, collects and
    # labels (the others wait, then read its caches) and renders videos (runs.py: process-0 writes).
    primary = sharding.is_primary()
    runs.check_writable(config.cache_dir)
    tracking.require(source.track)  # a missing tensorboardX/wandb fails here
    stop.check()
    if resume_dir is not None:
        run_dir = resume_dir
    else:
        # Process 0's name on every process (the default holds a timestamp).
        name = sharding.broadcast_string(config.run_name or runs.default_run_name(source.name))
        run_dir = runs.create_run_dir(config.out_dir / name, config)  # process 0 creates it
    sharding.barrier("run directory")
    print(f"run directory: {run_dir}")
    print(f"labeler: {choice.kind} ({choice.reason})")

    units = source.units(run_dir)
    launch_context = vlm_server(config.vlm, choice, run_dir / "vllm.log", enabled=primary)
    tracker = tracking.Tracker()  # --track none: drops everything

    def close_tracker(exit_code: int) -> None:  # the tracker open when the run stops or fails
        tracker.close(exit_code=exit_code)

    with RunGuard(run_dir, source.resume_command.format(run_dir=run_dir), resumed=resume_dir is not None,
                  primary=primary, on_exit=close_tracker) as guard:
        datas, summaries = {}, {}
        with launch_context as base_url:  # the VLM server lives only for the labeling stage
            if not primary:
                sharding.barrier("data stage")
            for unit in units:
                datas[unit] = prepare_unit(source, unit, choice, base_url, should_stop=stop)
                summaries[unit] = datas[unit].summary
                if primary:
                    unit.dir.mkdir(parents=True, exist_ok=True)
                    runs.write_json_atomic(unit.dir / "data_and_labels.json", summaries[unit])
            if primary:
                sharding.barrier("data stage")
        tracker = tracking.open_tracker(source.track if primary else (), run_dir, config,  # process 0 writes
                                        extra_config={"labeler": choice.kind})
        seed_results = {}
        for unit in units:
            seed_results[unit] = {}
            data = datas[unit]
            evaluator = source.evaluator(unit, data.kept, stop)
            for seeds in config.seed_groups:
                with_video = unit.video_dir is not None and seeds[0] == config.seeds[0] and primary
                guard.training_started = True
                trained = train_seeds(
                    config, data, seeds, [unit.seed_dir(s) for s in seeds],
                    video_dir=unit.video_dir if with_video else None, evaluator=evaluator, should_stop=stop,
                    trackers=[tracker.unit(unit.name, unit.data_seed, s) for s in seeds], mesh=mesh,
                    batched=config.batch_seeds)
                for seed, result in zip(seeds, trained):
                    seed_results[unit][seed] = source.finish_seed(unit, data, seed, result) if primary else result
                results = source.results(choice, summaries, seed_results)
                runs.write_json_atomic(run_dir / "results.json", results)
            del datas[unit]  # free device memory before the next one
        curves = source.plot_curves(run_dir, units) if primary else None

    table = source.format_table(results)
    if primary:
        (run_dir / "summary.md").write_text(table + "\n")
    print("\n" + table)
    tracker.log_results(results, table)
    tracker.close()
    print(f"\nresults: {run_dir / 'results.json'}; curves: {curves}")
    return results, run_dir
