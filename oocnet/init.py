"""Seeded initialisers whose values do not depend on how a parameter is chunked.

A parameter larger than RAM is initialised in row chunks, and the chunk size
depends on the store.  To make a model's initial weights a function of
``(seed, key)`` alone, every element draws from its own position in a
counter-based stream (:mod:`oocnet.store.rowinit`): SplitMix64 addressed by
element position.  Initialising rows 0..n in one call or in a thousand, or
computing a scattered set of rows when a disk store first reads them, gives
the same bits, in RAM or on disk.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from .errors import ConfigError, ShapeError
from .store.rowinit import DISTRIBUTIONS, RowInit


#: name -> f(u, shape) mapping U(0, 1) draws to initial values (in place: ``u`` is overwritten).
INITIALIZERS: dict[str, Callable | None] = DISTRIBUTIONS


def check_init(init, shape: tuple[int, ...], what: str):
    """Validate an ``init=`` argument (a name, a callable or an array) before anything is built."""
    if init is None or callable(init):
        return init
    if isinstance(init, str):
        if init not in INITIALIZERS:
            raise ConfigError(
                f"init of {what} must be one of {', '.join(INITIALIZERS)}, a callable or an array, got {init!r}."
            )
        return init
    arr = np.asarray(init)
    if arr.shape != tuple(shape):
        raise ShapeError(f"init array of {what} must have shape {tuple(shape)}, got {arr.shape}.")
    if not np.all(np.isfinite(arr)):
        raise ConfigError(f"init array of {what} contains NaN or inf.")
    return arr


def row_initializer(init, key: str, shape: tuple[int, ...], dtype, seed: int, lazy: bool = False):
    """Turn an ``init=`` argument into the store's ``init(start, stop)`` callback (None = zeros).

    With ``lazy``, a named initializer (zeros included) is a
    :class:`~oocnet.store.rowinit.RowInit`, which a disk store does not write at
    creation: rows read as their initial values until first written.  Worth it for
    the large tables a step touches a few rows of; a dense layer is written whole
    by its first step anyway.
    """
    dtype = np.dtype(dtype)
    if isinstance(init, str) and lazy:
        return RowInit(init, seed, key, shape, dtype)
    if init is None or (isinstance(init, str) and INITIALIZERS[init] is None):
        return None
    if isinstance(init, str):
        return RowInit(init, seed, key, shape, dtype).eager()
    if callable(init):
        return lambda a, b: np.asarray(init(a, b), dtype=dtype)
    arr = np.asarray(init, dtype=dtype)
    return lambda a, b: arr[a:b]


__all__ = ["INITIALIZERS", "row_initializer", "check_init"]
