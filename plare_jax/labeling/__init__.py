"""Labelers: pairs of trajectory segments in, preference labels out.

No training, simulator or jax here: image pairs (PNG bytes) and a task text, or
segment returns for the scripted teacher, go in; labels in {0, 1, -1} come out.
"""

from plare_jax.labeling.answers import parse_choice
from plare_jax.labeling.base import (
    FIRST, PAIR_FAILED, PAIR_MALFORMED, PAIR_OK, PAIR_STATUSES, PAIR_UNSURE, SECOND, UNSURE, Labeler, LabelResult,
    PairBatch, preferences_to_targets,
)  # fmt: skip
from plare_jax.labeling.coverage import LabelCoverageError, check_label_coverage, label_coverage
from plare_jax.labeling.noise import (
    NOISE_MODELS, NOISE_STREAM_ID, TeacherNoise, apply_noise, calibrate_noise, calibrate_unsure_rate, gap_scale,
    label_agreement, noise_free_level,
)  # fmt: skip
from plare_jax.labeling.launcher import VLLMLaunchError, VLLMNotFoundError, launch_vllm, local_gpu_available
from plare_jax.labeling.report import format_report, labeling_report
from plare_jax.labeling.scripted import ScriptedTeacher, preferences_from_scores
from plare_jax.labeling.store import LabelStore, LabelStoreError, label_key
from plare_jax.labeling.vlm import (
    VLMConfig, VLMConfigError, VLMEndpointError, VLMLabeler, check_endpoint, preflight,
)  # fmt: skip

__all__ = [
    "FIRST", "SECOND", "UNSURE", "Labeler", "LabelResult", "PairBatch", "preferences_to_targets",
    "PAIR_OK", "PAIR_UNSURE", "PAIR_MALFORMED", "PAIR_FAILED", "PAIR_STATUSES",
    "LabelCoverageError", "check_label_coverage", "label_coverage",
    "ScriptedTeacher", "preferences_from_scores",
    "NOISE_MODELS", "NOISE_STREAM_ID", "TeacherNoise", "apply_noise", "calibrate_noise", "calibrate_unsure_rate",
    "gap_scale", "label_agreement", "noise_free_level",
    "VLMConfig", "VLMLabeler", "VLMEndpointError", "VLMConfigError", "check_endpoint", "preflight", "parse_choice",
    "LabelStore", "LabelStoreError", "label_key",
    "launch_vllm", "local_gpu_available", "VLLMNotFoundError", "VLLMLaunchError",
    "labeling_report", "format_report",
]  # fmt: skip
