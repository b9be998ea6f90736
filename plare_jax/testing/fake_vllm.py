"""A stand-in `vllm` executable for tests of what the launcher passes to `vllm serve`.

`write_fake_vllm(bin_dir)` writes `bin_dir/vllm`, a Python script that records its argv and pid
in the JSON file named by $FAKE_VLLM_RECORD, then behaves as $FAKE_VLLM_MODE says: serve (the
default: the loopback server on the --port it was given, serving the model it was asked for),
die (exit 3 with a CUDA-like error), hang (sleep), or stubborn (sleep, ignoring SIGTERM).
"""

from __future__ import annotations

import os
import pathlib
import stat
import sys

__all__ = ["write_fake_vllm"]

_TEMPLATE = """\
#!{python}
import json, os, signal, sys, time
sys.path.insert(0, {root!r})
args = sys.argv[1:]
with open(os.environ["FAKE_VLLM_RECORD"], "w") as f:
    json.dump({{"argv": args, "pid": os.getpid()}}, f)
mode = os.environ.get("FAKE_VLLM_MODE", "serve")
if mode == "die":
    print("RuntimeError: CUDA out of memory (fake)", flush=True)
    sys.exit(3)
if mode in ("hang", "stubborn"):
    if mode == "stubborn":
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    time.sleep(600)
from plare_jax.testing.loopback_server import main
port = args[args.index("--port") + 1]
main(["--port", port, "--model", args[1]])
"""


def write_fake_vllm(bin_dir: str | os.PathLike) -> pathlib.Path:
    """Writes the executable `bin_dir/vllm` (creating `bin_dir`) and returns its path."""
    bin_dir = pathlib.Path(bin_dir)
    bin_dir.mkdir(parents=True, exist_ok=True)
    exe = bin_dir / "vllm"
    root = str(pathlib.Path(__file__).resolve().parents[2])  # the folder holding plare_jax/
    exe.write_text(_TEMPLATE.format(python=sys.executable, root=root))
    exe.chmod(exe.stat().st_mode | stat.S_IXUSR)
    return exe
