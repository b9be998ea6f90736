"""MetaWorld v3 task names: short names ("sweep-into") <-> MetaWorld ids ("sweep-into-v3")."""

from __future__ import annotations

import difflib

from metaworld.env_dict import ALL_V3_ENVIRONMENTS
from plare_jax.errors import PlareError

_SUFFIX = "-v3"

ALL_TASKS: tuple[str, ...] = tuple(sorted(name.removesuffix(_SUFFIX) for name in ALL_V3_ENVIRONMENTS))
"""Short names of every MetaWorld v3 task, e.g. "sweep-into"."""


class UnknownTaskError(PlareError, ValueError):
    """A task name that is not a MetaWorld v3 task."""


def resolve_task(name: str) -> str:
    """Maps a task name to its MetaWorld v3 id.

    Args:
        name: short name ("sweep-into") or full id ("sweep-into-v3"); case and surrounding
            whitespace are ignored, underscores count as dashes.

    Returns:
        The MetaWorld v3 id, e.g. "sweep-into-v3".

    Raises:
        UnknownTaskError: the name is not a v3 task; the message lists the closest valid names.
    """
    if not isinstance(name, str):
        raise UnknownTaskError(f"task name must be a string, got {type(name).__name__}")
    short = name.strip().lower().replace("_", "-").removesuffix(_SUFFIX)
    if short in ALL_TASKS:
        return short + _SUFFIX
    close = difflib.get_close_matches(short, ALL_TASKS, n=5, cutoff=0.4)
    hint = f"closest valid names: {', '.join(close)}" if close else f"valid names: {', '.join(ALL_TASKS)}"
    raise UnknownTaskError(f"unknown MetaWorld v3 task {name!r}; {hint}")
