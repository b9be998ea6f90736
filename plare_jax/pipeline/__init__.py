"""The stages any experiment needs, shared by the experiment CLIs in experiments/.

- `config`: the MetaWorld experiment's options and their validation.
- `labels`: choose the labeler and label segment pairs (scripted teacher or VLM).
- `data`: offline dataset -> pairs -> labels -> `methods.TrainingData`.
- `train`: the shared BC phase and every method, with evaluations, checkpoints and resumption.
- `results`: statistics over runs (mean, sample std, 95% interval), tables, learning curves.
- `run`: all of it for one config.
"""

from plare_jax.pipeline.config import ConfigError, ExperimentConfig, VLMOptions, validate
from plare_jax.pipeline.run import run

__all__ = ["ConfigError", "ExperimentConfig", "VLMOptions", "validate", "run"]
