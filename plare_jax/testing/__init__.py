"""Test tooling that ships with the package because users' tests need it too, kept out of the
library proper (nothing in plare_jax imports it):

- `loopback_server`: a deterministic OpenAI-compatible chat server on 127.0.0.1 that stands in
  for the VLM (the one edge a test cannot reach here), with answer modes for every failure a real
  server shows; `python -m plare_jax.testing.loopback_server` serves it.
- `fake_vllm`: a stand-in `vllm` executable that records how it was started and serves the
  loopback server, to test what the launcher passes to `vllm serve`.
"""
