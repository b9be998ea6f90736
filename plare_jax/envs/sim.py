"""A small adapter around one raw MetaWorld v3 environment.

Why not `gymnasium.make("Meta-World/MT1", ...)`: its wrappers draw layouts from a global
pool and can stop at the first success. Here the caller owns the layout: it is drawn with a
seeded `numpy.random.Generator` (`sample_layout`), stored per episode, and replayed exactly
(`reset(layout)`), which is what re-rendering an old frame needs. MetaWorld's resets write
MODEL fields (e.g. `model.body_pos` of the drawer, goal `site_pos`) from this layout vector
("rand_vec"), so layout + per-step physics state reproduce the scene bit for bit.
"""

from __future__ import annotations

import pickle
import warnings

import mujoco
import numpy as np
from metaworld.env_dict import ALL_V3_ENVIRONMENTS, ML1_ARGS_KWARGS
from metaworld.policies import ENV_POLICY_MAP
from metaworld.types import Task

from plare_jax.envs.tasks import resolve_task

# Per-step state stored for re-rendering (and exact re-simulation): time, qpos, qvel, act,
# ctrl, mocap pose, warm start and active equalities. Left out of mjSTATE_INTEGRATION are only
# the applied-force arrays (qfrc/xfrc_applied), which MetaWorld never sets (always zero) and
# which would otherwise make up most of the row.
SIM_STATE_SPEC = int(
    mujoco.mjtState.mjSTATE_FULLPHYSICS
    | mujoco.mjtState.mjSTATE_CTRL
    | mujoco.mjtState.mjSTATE_MOCAP_POS
    | mujoco.mjtState.mjSTATE_MOCAP_QUAT
    | mujoco.mjtState.mjSTATE_WARMSTART
    | mujoco.mjtState.mjSTATE_EQ_ACTIVE
)

MAX_EPISODE_STEPS = 500  # MetaWorld raises after max_path_length steps.


class TaskEnv:
    """One MetaWorld v3 environment with caller-controlled layouts and goal observable.

    Args:
        task: task name, short or with the "-v3" suffix.
    """

    def __init__(self, task: str):
        self.task_id = resolve_task(task)
        self._cls = ALL_V3_ENVIRONMENTS[self.task_id]
        self.env = self._cls()
        kwargs = dict(ML1_ARGS_KWARGS[self.task_id]["kwargs"])
        kwargs.pop("task_id", None)
        self._task_kwargs = kwargs
        self._layout_size = int(np.asarray(self.env._random_reset_space.low).size)
        # Until the first set_task, resets may draw layouts (as metaworld's own task builder does).
        self.env._set_task_called = True
        self.env._set_task_inner(**kwargs)

    @property
    def model(self) -> mujoco.MjModel:
        return self.env.model

    @property
    def data(self) -> mujoco.MjData:
        return self.env.data

    @property
    def layout_size(self) -> int:
        """Length of the layout vector (MetaWorld's "rand_vec") of this task."""
        return self._layout_size

    @property
    def sim_state_size(self) -> int:
        return int(mujoco.mj_stateSize(self.model, SIM_STATE_SPEC))

    @property
    def target_site_names(self) -> list[str]:
        """Names of the goal-marker sites (hidden in rendered images)."""
        return [name for name, _ in self.env._target_site_config]

    def sample_layout(self, rng: np.random.Generator) -> np.ndarray:
        """Draws an object/goal layout [layout_size] float64 as MetaWorld's reset would.

        Several tasks reject layouts inside their reset (e.g. sweep-into redraws while the cube
        starts too near the hole), so a uniform draw of our own could be invalid and make a frozen
        reset loop forever. Instead the env's own reset draws it, from a generator seeded by `rng`.
        This costs one reset.
        """
        env = self.env
        env._freeze_rand_vec = False
        env.seeded_rand_vec = True
        env.np_random = np.random.Generator(np.random.PCG64(rng.integers(0, 2**63)))
        try:
            env.reset()
            layout = np.array(env._last_rand_vec, dtype=np.float64)
        finally:
            env._freeze_rand_vec = True
        return layout

    def reset(self, layout: np.ndarray) -> np.ndarray:
        """Resets to the given layout; returns the first observation [39] float64 (goal observable)."""
        layout = np.asarray(layout, dtype=np.float64)
        if layout.shape != (self.layout_size,):
            raise ValueError(
                f"{self.task_id}: layout must have shape ({self.layout_size},), got {layout.shape}; "
                "use TaskEnv.sample_layout or a layout stored in the dataset of this task"
            )
        data = dict(self._task_kwargs, rand_vec=layout, env_cls=self._cls, partially_observable=False)
        self.env.set_task(Task(env_name=self.task_id, data=pickle.dumps(data)))
        obs, _ = self.env.reset()
        return np.asarray(obs, dtype=np.float64)

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool]:
        """Applies one action [4] in [-1, 1]; returns (observation [39], reward, success)."""
        obs, reward, _, _, info = self.env.step(np.asarray(action, dtype=np.float32))
        return np.asarray(obs, dtype=np.float64), float(reward), bool(info["success"])

    def get_sim_state(self) -> np.ndarray:
        """The current simulator state [sim_state_size] float64 (see SIM_STATE_SPEC)."""
        state = np.empty(self.sim_state_size, dtype=np.float64)
        mujoco.mj_getState(self.model, self.data, state, SIM_STATE_SPEC)
        return state

    def set_sim_state(self, state: np.ndarray) -> None:
        """Restores a state from `get_sim_state` and recomputes positions (for rendering)."""
        state = np.asarray(state, dtype=np.float64)
        if state.shape != (self.sim_state_size,):
            raise ValueError(
                f"{self.task_id}: sim state must have shape ({self.sim_state_size},), got {state.shape}; "
                "was it stored by a different task or MuJoCo version?"
            )
        mujoco.mj_setState(self.model, self.data, state, SIM_STATE_SPEC)
        mujoco.mj_forward(self.model, self.data)

    def close(self) -> None:
        self.env.close()


class ExpertPolicy:
    """MetaWorld's scripted expert for one task, on a single observation [39] -> action [4]."""

    def __init__(self, task: str):
        task_id = resolve_task(task)
        self._policy = ENV_POLICY_MAP[task_id]()

    def __call__(self, observation: np.ndarray) -> np.ndarray:
        with warnings.catch_warnings():
            # The experts warn when their P-gains saturate; the env clips to [-1, 1] anyway.
            warnings.simplefilter("ignore", UserWarning)
            action = self._policy.get_action(np.asarray(observation, dtype=np.float64))
        return np.clip(np.asarray(action, dtype=np.float32), -1.0, 1.0)
