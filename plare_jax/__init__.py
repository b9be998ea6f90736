"""plare-jax: offline robot policy learning from VLM preference labels (PLARE) in JAX.

The public surface of the core library is re-exported here; the MetaWorld side
(`plare_jax.envs`, `plare_jax.data`) and the labelers (`plare_jax.labeling`) are
imported from their subpackages so that `import plare_jax` stays light.
"""

__version__ = "0.1.0"
