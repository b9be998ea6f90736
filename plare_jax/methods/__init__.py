"""Training methods, one module each, all with the interface of `base.Method`.

Adding a method: write its module with a `METHOD` object and add it to `_ALL` below. That is all,
its options included: a method with options names them in `default_options` (a frozen
dataclass) and `options_help`, and every CLI gets the group `--NAME.*` from this registry
(`plare_jax.pipeline.config.MethodOptions`).
"""

import contextlib
from collections.abc import Iterator

from plare_jax.methods import bc, pbc, plare, rlvlmf, sft
from plare_jax.methods.base import Method, PolicyFn, TrainingData

_ALL = (plare.METHOD, plare.ROBUST_METHOD, bc.METHOD, rlvlmf.METHOD, sft.METHOD, pbc.METHOD)
METHODS: dict[str, Method] = {m.name: m for m in _ALL}

# The shared behaviour-cloning phase that methods with `starts_from_bc_phase` continue from.
BC_PHASE = bc.METHOD


def get_method(name: str) -> Method:
    """The method registered under `name`; a clear error lists the known ones."""
    try:
        return METHODS[name]
    except KeyError:
        raise ValueError(f"unknown method {name!r}; known: {', '.join(METHODS)}") from None


@contextlib.contextmanager
def registered(extra: dict[str, Method]) -> Iterator[None]:
    """`extra` methods known to `get_method` inside the block only (a search's candidates): the
    registry, and with it every CLI's `--method` choices and option groups, is left as it was,
    even when the block fails."""
    clashes = sorted(set(extra) & set(METHODS))
    if clashes:
        raise ValueError(f"methods {clashes} are registered already")
    METHODS.update(extra)
    try:
        yield
    finally:
        for name in extra:
            METHODS.pop(name, None)


__all__ = ["METHODS", "BC_PHASE", "Method", "PolicyFn", "TrainingData", "get_method", "registered"]
