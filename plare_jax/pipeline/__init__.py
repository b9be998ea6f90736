"""The stages any experiment needs, shared by the experiment CLIs in experiments/.

- `source`: the `DataSource` protocol the one pipeline reads its data through.
- `runner`: every stage of a run for any data source (`run_source`).
- `run`, `offline`: the two sources (MetaWorld; recorded data) and their entry points.
- `config`: the options (`SharedOptions` for both, each source's own) and their validation.
- `labels`: choose the labeler, label segment pairs (scripted teacher or VLM), report, coverage gate.
- `data`: offline dataset -> pairs -> labels -> `methods.TrainingData`.
- `train`: the shared BC phase and every method, with evaluations, checkpoints and resumption.
- `results`: statistics over runs (mean, sample std, 95% interval), tables, learning curves.
"""

from plare_jax.pipeline.config import ConfigError, ExperimentConfig, VLMOptions, validate
from plare_jax.pipeline.run import run

__all__ = ["ConfigError", "ExperimentConfig", "VLMOptions", "validate", "run"]
