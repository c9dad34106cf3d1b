"""Seeded initialisers whose values do not depend on how a parameter is chunked.

A parameter larger than RAM is initialised in row chunks, and the chunk size
depends on the store.  To make a model's initial weights a function of
``(seed, key)`` alone, every element draws from its own position in a
counter-based stream: a Philox generator keyed by a hash of ``(seed, key)`` is
advanced straight to element ``row * row_size``.  Initialising rows 0..n in one
call or in a thousand gives the same bits, in RAM or on disk.
"""

from __future__ import annotations

import hashlib
import math
from typing import Callable

import numpy as np
from scipy.special import ndtri

from .errors import ConfigError, ShapeError


def uniform_rows(seed: int, key: str, shape: tuple[int, ...], start: int, stop: int) -> np.ndarray:
    """U[0, 1) float64 values of rows ``[start, stop)`` of a ``shape`` parameter named ``key``."""
    row = int(math.prod(shape[1:]))
    digest = hashlib.blake2b(f"{int(seed)}\x00{key}".encode(), digest_size=16).digest()
    bitgen = np.random.Philox(key=int.from_bytes(digest, "little"))
    first = start * row
    # Philox yields four 64-bit words per counter step and random() uses one word
    # per double, so advance by whole steps and drop the remainder.
    bitgen.advance(first // 4)
    skip = first % 4
    u = np.random.Generator(bitgen).random(skip + (stop - start) * row)[skip:]
    return u.reshape((stop - start, *shape[1:]))


def _fans(shape: tuple[int, ...]) -> tuple[int, int]:
    if len(shape) == 1:
        return shape[0], shape[0]
    return shape[0], int(math.prod(shape[1:]))


def _glorot_uniform(u, shape):
    fan_in, fan_out = _fans(shape)
    return (2.0 * u - 1.0) * math.sqrt(6.0 / (fan_in + fan_out))


def _he_uniform(u, shape):
    return (2.0 * u - 1.0) * math.sqrt(6.0 / _fans(shape)[0])


def _normal(u, shape):
    # Inverse-CDF keeps one uniform per element, so chunking stays irrelevant.
    eps = np.finfo(np.float64).eps
    return ndtri(u * (1.0 - 2 * eps) + eps) / math.sqrt(_fans(shape)[1])


def _uniform(u, shape):
    # Same variance as "normal" (1/row_size) at a fraction of the cost: ndtri is ~5x slower
    # than the uniform draw itself, which matters for a 10^7-row table.
    return (2.0 * u - 1.0) * math.sqrt(3.0 / _fans(shape)[1])


#: name -> f(u, shape) mapping U[0,1) draws to initial values.
INITIALIZERS: dict[str, Callable | None] = {
    "zeros": None,
    "glorot_uniform": _glorot_uniform,
    "he_uniform": _he_uniform,
    "uniform": _uniform,  # U(-a, a) with variance 1/row_size: embedding rows of unit expected norm
    "normal": _normal,  # N(0, 1/row_size)
}


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


def row_initializer(init, key: str, shape: tuple[int, ...], dtype, seed: int):
    """Turn an ``init=`` argument into the store's ``init(start, stop)`` callback (None = zeros)."""
    dtype = np.dtype(dtype)
    if init is None or (isinstance(init, str) and INITIALIZERS[init] is None):
        return None
    if isinstance(init, str):
        fn = INITIALIZERS[init]
        return lambda a, b: fn(uniform_rows(seed, key, shape, a, b), shape).astype(dtype)
    if callable(init):
        return lambda a, b: np.asarray(init(a, b), dtype=dtype)
    arr = np.asarray(init, dtype=dtype)
    return lambda a, b: arr[a:b]


__all__ = ["INITIALIZERS", "uniform_rows", "row_initializer", "check_init"]
