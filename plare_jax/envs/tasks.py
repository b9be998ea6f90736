"""MetaWorld v3 task names: short names ("sweep-into") <-> MetaWorld ids ("sweep-into-v3"), and the
goal text a VLM is shown for each task."""

from __future__ import annotations

import difflib
import logging
import re

from metaworld.env_dict import ALL_V3_ENVIRONMENTS
from plare_jax.errors import PlareError

_SUFFIX = "-v3"
logger = logging.getLogger(__name__)

# Task texts of the four tasks of the PLARE paper (MetaWorld names without version suffix).
TASK_TEXTS = {
    "drawer-open": "open the drawer",
    "sweep-into": "place the green cube so that it lies on the square hole",
    "plate-slide": "place the black plate so that it lies inside the goal",
    "door-open": "open the door of the safe",
}

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


def task_text(task: str, override: str | None = None) -> str:
    """The goal text shown to the VLM for a MetaWorld task.

    Args:
        task: Task name, with or without version suffix ("drawer-open", "drawer-open-v3").
        override: If given, returned as is (user-chosen wording).

    Returns:
        The paper's text for its four tasks; otherwise a generic text derived from
        the name (with a logged notice, since wording affects VLM accuracy).
    """
    if override:
        return override
    name = re.sub(r"-v\d+$", "", task.strip())
    if name in TASK_TEXTS:
        return TASK_TEXTS[name]
    generic = "complete the task: " + name.replace("-", " ").replace("_", " ")
    logger.warning("no built-in task text for %r; using %r (pass an override for better labels)", task, generic)
    return generic
