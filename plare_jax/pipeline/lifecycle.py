"""What every experiment does around its stages, written once for the MetaWorld and the
recorded-data pipelines: the VLM server's lifetime, and how a run ends when it is stopped
(Ctrl-C, SIGTERM) or fails.

    with stop_on_signals() as stop, RunGuard(run_dir, resume_command, resumed=False) as guard:
        ...data and labels...
        guard.training_started = True
        ...training...

A stop before training began removes a new run directory (nothing in it is worth resuming; the
cached data and labels stay); a stop after it keeps everything and prints the resume command;
both exit with 128 + the signal number (130 for Ctrl-C). A failure before training also removes a
new run directory, then propagates.
"""

from __future__ import annotations

import contextlib
import pathlib
import shlex
import shutil
import sys
from collections.abc import Callable

from plare_jax import runs
from plare_jax.interrupts import StopRequested
from plare_jax.labeling import launcher as vllm_launcher

__all__ = ["RunGuard", "load_stored_config", "vlm_server"]


def load_stored_config(run_dir: pathlib.Path, cls: type):
    """The config a run directory was started with (its config.json), as `cls`; what --resume uses."""
    from plare_jax.pipeline.config import config_from_dict

    if not (run_dir / "config.json").exists():
        raise runs.RunDirError(f"--resume {run_dir}: not a run directory (no config.json)")
    return config_from_dict(runs.read_json(run_dir / "config.json"), cls)


def vlm_server(vlm, choice, log_path: pathlib.Path, *, enabled: bool = True):
    """A context manager giving the labeling stage's base URL: `vllm serve` started from the
    --vlm.* launch options (model, parallelism, memory, --vlm.executable, --vlm.serve-args) when
    the labeler choice says to launch, else the configured endpoint (None for a scripted teacher).

    `vlm`: the CLI's `VLMOptions`; `choice`: the `pipeline.labels.LabelerChoice`;
    `enabled`: False on the processes that do not label (multi-host: process 0 alone does).
    """
    if not (choice.launch and enabled):
        return contextlib.nullcontext(choice.base_url)
    return vllm_launcher.launch_vllm(
        vlm.model, tensor_parallel_size=vlm.tensor_parallel_size, data_parallel_size=vlm.data_parallel_size,
        max_model_len=vlm.max_model_len, gpu_memory_utilization=vlm.gpu_memory_utilization,
        executable=vlm.executable, extra_args=shlex.split(vlm.serve_args), log_path=log_path)


class RunGuard:
    """How a run ends when stopped or failing (see the module docstring).

    Attributes:
        training_started: set by the pipeline once the first training stage begins.
        on_exit: called with the exit code before the message, e.g. to close a tracker; if it
            raises, a warning says so and the run still ends as it would have.
    """

    def __init__(self, run_dir: pathlib.Path, resume_command: str, *, resumed: bool, primary: bool = True,
                 on_exit: Callable[[int], None] | None = None):
        self.run_dir = pathlib.Path(run_dir)
        self.resume_command = resume_command
        self.resumed = resumed
        self.primary = primary
        self.on_exit = on_exit
        self.training_started = False

    def __enter__(self) -> RunGuard:
        return self

    def _discard_new_run_dir(self) -> bool:
        if self.training_started or self.resumed:
            return False
        if self.primary:
            shutil.rmtree(self.run_dir, ignore_errors=True)
        return True

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc_type is None:
            return False
        stopped = issubclass(exc_type, (StopRequested, KeyboardInterrupt))
        code = (exc.exit_code if isinstance(exc, StopRequested) else 130) if stopped else 1
        if self.on_exit is not None:
            try:
                self.on_exit(code)
            except Exception as e:  # never hide why the run ended
                print(f"warning: closing the run failed: {e}", file=sys.stderr)
        discarded = self._discard_new_run_dir()
        if not stopped:
            return False  # the failure propagates; a new, untrained run directory is gone
        if discarded:
            print(f"\n{exc or 'interrupted'} before training began: {self.run_dir} removed, nothing to resume "
                  "(collected data and labels stay cached: run the same command again)", file=sys.stderr)
        else:
            print(f"\n{exc or 'interrupted'}: everything finished so far is saved; continue with\n  "
                  + self.resume_command, file=sys.stderr)
        raise SystemExit(code) from None
