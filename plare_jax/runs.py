"""Run directories: provenance, append-only metrics, atomic result files.

A run directory records what produced it (resolved config, git commit, package
versions, command line) and is never overwritten: creating one at an existing
path fails, and resuming one requires saying so explicitly.

Multi-process runs (`jax.distributed`): only process 0 writes. On the other processes
`create_run_dir` and `write_json_atomic` write nothing, and a `MetricsLog` keeps its
records in memory (starting from the file as it is when the log is opened), so every
process reads the same records while one file is written. The processes must see the
same file system (checkpoints need it too: orbax writes them from process 0).
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import importlib.metadata
import json
import os
import pathlib
import platform
import subprocess
import sys
from typing import Any, Callable, Iterable

from plare_jax.sharding import is_primary
from plare_jax.errors import PlareError

TRACKED_PACKAGES = (
    "plare-jax", "jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "numpy",
    "metaworld", "mujoco", "gymnasium", "tyro", "openai",
)


class RunDirError(PlareError, RuntimeError):
    """The run directory cannot be created, resumed or written."""


def package_versions(names: Iterable[str] = TRACKED_PACKAGES) -> dict[str, str | None]:
    """Installed versions of `names` (None for a package that is not installed)."""
    versions = {}
    for name in names:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def git_commit(repo_dir: str | os.PathLike | None = None) -> str | None:
    """The commit of the checkout holding this package, with "-dirty" if it has changes."""
    repo_dir = pathlib.Path(repo_dir or pathlib.Path(__file__).resolve().parent.parent)
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=repo_dir, capture_output=True, text=True,
            check=True, timeout=10,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], cwd=repo_dir,
            capture_output=True, text=True, check=True, timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return commit + ("-dirty" if dirty else "")


def to_jsonable(value: Any) -> Any:
    """Dataclasses, paths, tuples and numpy scalars/arrays as plain JSON values."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: to_jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if hasattr(value, "tolist"):  # numpy / jax arrays and scalars
        return value.tolist()
    return value


def write_json_atomic(path: str | os.PathLike, value: Any) -> None:
    """Write JSON via a temporary file and rename, so a crash never leaves half a file.

    Only process 0 of a multi-process run writes (the others return at once).
    """
    if not is_primary():
        return
    path = pathlib.Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        json.dump(to_jsonable(value), f, indent=2, sort_keys=False)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def read_json(path: str | os.PathLike) -> Any:
    with open(path) as f:
        return json.load(f)


def default_run_name(prefix: str) -> str:
    return f"{_dt.datetime.now().strftime('%Y%m%d-%H%M%S')}_{prefix}"


def check_writable(directory: str | os.PathLike) -> pathlib.Path:
    """Create `directory` if needed and prove it is writable; fail fast with a clear message."""
    directory = pathlib.Path(directory)
    try:
        directory.mkdir(parents=True, exist_ok=True)
        probe = directory / f".write-probe-{os.getpid()}"
        probe.write_text("ok")
        probe.unlink()
    except OSError as e:
        raise RunDirError(f"output directory {directory} is not writable: {e}") from e
    return directory


def create_run_dir(path: str | os.PathLike, config: Any) -> pathlib.Path:
    """Create a new run directory and record provenance; refuse to reuse an existing one.

    In a multi-process run only process 0 creates it (the others get the path back and must
    wait for process 0, e.g. at `sharding.barrier`, before using it).
    """
    path = pathlib.Path(path)
    if not is_primary():
        return path
    check_writable(path.parent)
    try:
        path.mkdir()
    except FileExistsError as e:
        raise RunDirError(
            f"run directory {path} already exists; choose another --run-name, "
            f"or continue it with --resume {path}"
        ) from e
    write_json_atomic(path / "config.json", config)
    write_json_atomic(path / "provenance.json", {
        "git_commit": git_commit(),
        "packages": package_versions(),
        "python": sys.version,
        "platform": platform.platform(),
        "argv": sys.argv,
        "created": _dt.datetime.now().isoformat(timespec="seconds"),
    })
    return path


class MetricsLog:
    """Append-only JSON-lines metrics; each record is flushed and fsynced as written.

    On the processes other than 0 of a multi-process run the records live in memory (see the
    module docstring): they start from the file's records when the log is opened.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = pathlib.Path(path)
        self._memory: list[dict[str, Any]] | None = None if is_primary() else self._read_file()

    def append(self, record: dict[str, Any]) -> None:
        if self._memory is not None:
            self._memory.append(json.loads(json.dumps(to_jsonable(record))))
            return
        with open(self.path, "a") as f:
            f.write(json.dumps(to_jsonable(record)) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def read(self) -> list[dict[str, Any]]:
        if self._memory is not None:
            return [dict(r) for r in self._memory]
        return self._read_file()

    def _read_file(self) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        records = []
        with open(self.path) as f:
            for line in f:
                line = line.strip()
                if not line:
                    continue
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError:
                    break  # a torn last line from a crash: everything before it is intact
        return records

    def drop(self, predicate: Callable[[dict[str, Any]], bool]) -> None:
        """Remove the records for which `predicate` is true (e.g. ones newer than a restored checkpoint)."""
        kept = [r for r in self.read() if not predicate(r)]
        if self._memory is not None:
            self._memory = kept
            return
        tmp = self.path.with_name(self.path.name + ".tmp")
        with open(tmp, "w") as f:
            for r in kept:
                f.write(json.dumps(r) + "\n")
        os.replace(tmp, self.path)
