"""MetaWorld side of PLARE: task names, offline data collection, rendering, evaluation.

Everything that touches MetaWorld or MuJoCo lives here; `plare_jax.data` stays numpy-only.
No module in this package imports JAX: policies are plain callables on numpy arrays.
"""

import os

# MuJoCo picks its GL backend when it is first imported; without one, offscreen rendering
# fails. EGL works headless with nothing extra installed, so a new user's first command renders.
os.environ.setdefault("MUJOCO_GL", "egl")

from plare_jax.envs.tasks import ALL_TASKS, UnknownTaskError, resolve_task  # noqa: E402

__all__ = ["ALL_TASKS", "UnknownTaskError", "resolve_task"]
