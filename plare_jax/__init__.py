"""plare-jax: offline robot policy learning from VLM preference labels (PLARE) in JAX.

The public surface of the core library is re-exported here; the MetaWorld side
(`plare_jax.envs`, `plare_jax.data`) and the labelers (`plare_jax.labeling`) are
imported from their subpackages so that `import plare_jax` stays light.
Checkpointing (orbax) is imported from `plare_jax.checkpoint` on demand for the
same reason.
"""

__version__ = "0.1.0"

from plare_jax.learner import (
    CPU_CONFIG,
    REFERENCE_CONFIG,
    LearnerConfig,
    LearnerState,
    PreferenceData,
    TransitionData,
    make_optimizer,
    make_policy_fn,
    start_phase,
    train,
    update,
)
from plare_jax.losses import (
    bc_loss,
    cpl_loss,
    cpl_rank_loss,
    preference_accuracy,
    segment_scores,
    weighted_mean,
)
from plare_jax.networks import PolicyMLP
from plare_jax.sharding import initialize_distributed, make_data_mesh

__all__ = [
    "__version__",
    # losses
    "cpl_loss",
    "cpl_rank_loss",
    "bc_loss",
    "segment_scores",
    "weighted_mean",
    "preference_accuracy",
    # policy and learner
    "PolicyMLP",
    "LearnerConfig",
    "REFERENCE_CONFIG",
    "CPU_CONFIG",
    "LearnerState",
    "PreferenceData",
    "TransitionData",
    "make_optimizer",
    "start_phase",
    "update",
    "train",
    "make_policy_fn",
    # devices
    "make_data_mesh",
    "initialize_distributed",
]
