"""Importers from the formats labs already use into the recorded-data format.

`import_lerobot` reads LeRobot's documented on-disk layout (meta/info.json, parquet steps, mp4
videos; codebase versions 2.x and 3.0) with pyarrow; `import_minari` reads Minari datasets with
the `minari` package. Both need the optional `import` extra (`pip install -e ".[import]"`) and
import it lazily, so the rest of the package works without it.
"""

from plare_jax.data.importers._common import MissingExtraError
from plare_jax.data.importers.lerobot import import_lerobot
from plare_jax.data.importers.minari import import_minari

__all__ = ["import_lerobot", "import_minari", "MissingExtraError"]

