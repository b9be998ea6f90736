"""Shared by the importers: lazy optional imports and camera names."""

from __future__ import annotations

import importlib
import re
from types import ModuleType
from plare_jax.errors import PlareError


class MissingExtraError(PlareError, ImportError):
    """An importer's optional dependency is not installed."""


def require(module: str, *, importer: str) -> ModuleType:
    """Imports `module`, or says which extra installs it."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise MissingExtraError(
            f"the {importer} importer needs the Python package {module.split('.')[0]!r}: "
            f"pip install -e \".[import]\" (or pip install \"plare-jax[import]\")") from e


def camera_name(key: str) -> str:
    """A file-safe camera name from a dataset's feature key ("observation.images.top" -> "top")."""
    for prefix in ("observation.images.", "observation.image.", "observations.", "observation."):
        if key.startswith(prefix) and len(key) > len(prefix):
            key = key[len(prefix):]
            break
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", key).strip("._-")
    return name or "camera"
